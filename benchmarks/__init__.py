"""Benchmarks: the course's code measured side by side with the libraries people use."""

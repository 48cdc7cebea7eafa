"""Shared checks of graded results: which tests failed, and marks that match exactly."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from llmcourse.grading import GradeResult


def failed(result: GradeResult) -> set[str]:
    """Names of the graded tests the submission did not pass."""
    return {test.name for test in result.tests if not test.passed}


def score_checker(points: Mapping[str, float]) -> Callable[[GradeResult, set[str]], None]:
    """A check that a result passed every test but ``failing``, with the marks ``points`` give."""
    max_score = float(sum(points.values()))

    def check_scores(result: GradeResult, failing: set[str]) -> None:
        assert result.error is None, result.error
        assert [test.name for test in result.tests] == list(points)
        assert failed(result) == failing
        for test in result.tests:
            assert test.max_score == points[test.name]
            assert test.score == (0 if test.name in failing else points[test.name])
        assert result.score == max_score - sum(points[name] for name in failing)
        assert result.max_score == max_score

    return check_scores

"""`make bench` stays runnable: every key the course reports is registered, and a run writes its JSON."""

from __future__ import annotations

import json

import pytest

from benchmarks import run

KEYS = {"gpt_train_speed_vs_hf", "attention_time_vs_torch", "kv_cache_speedup", "generate_speed_vs_hf",
        "lora_trainable_fraction", "lora_accuracy_vs_full", "autograde_seconds_per_submission"}


def test_every_reported_key_is_measured() -> None:
    measured = set(run.BENCHMARKS)
    for function in run.BENCHMARKS.values():
        measured |= set(getattr(function, "keys", ()))
    assert KEYS <= measured, f"benchmarks not registered in benchmarks/run.py: {sorted(KEYS - measured)}"


def test_a_run_prints_and_writes_its_results(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    run.main(["--only", "attention_time_vs_torch", "--repeats", "1"])
    saved = json.loads((tmp_path / "latest.json").read_text())
    ratio = saved["results"]["attention_time_vs_torch"]
    assert 0.1 < ratio < 10
    assert "attention_time_vs_torch" in capsys.readouterr().out

"""`make bench` stays runnable: every key the course reports is registered, and a run writes its JSON."""

from __future__ import annotations

import json

import pytest

from benchmarks import run

KEYS = {"gpt_train_speed_vs_hf", "attention_time_vs_torch", "kv_cache_speedup", "generate_speed_vs_hf",
        "lora_trainable_fraction", "lora_accuracy_vs_full", "autograde_seconds_per_submission",
        "llama_decode_speed_vs_hf", "llama_prefill_speed_vs_hf", "llama_decode_bandwidth_fraction", "smollm2_load_seconds",
        "sft_step_time_vs_trl"}


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


def test_every_key_has_its_goal_and_verdicts_follow_the_direction() -> None:
    assert set(run.GOALS) == KEYS
    assert run.verdict("attention_time_vs_torch", 0.90).endswith("met")
    assert run.verdict("attention_time_vs_torch", 0.96).endswith("MISSED")
    assert run.verdict("kv_cache_speedup", 5.0).endswith("met")
    assert run.verdict("kv_cache_speedup", 4.99).endswith("MISSED")
    assert run.verdict("attention_ms_ours", 1.0) == ""  # supporting figures have no goal


def test_a_failing_benchmark_is_reported_and_the_others_kept(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    def broken(repeats: int) -> dict[str, float]:
        raise RuntimeError("no such model")

    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.setattr(run, "BENCHMARKS", {"broken": broken, "kv_cache_speedup": lambda repeats: {"kv_cache_speedup": 6.0}})
    with pytest.raises(SystemExit) as stopped:
        run.main([])
    assert stopped.value.code == 1
    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved["results"] == {"kv_cache_speedup": 6.0}
    assert saved["failed"] == {"broken": "RuntimeError: no such model"}
    out = capsys.readouterr().out
    assert "broken" in out and "no such model" in out and "goal >= 5: met" in out

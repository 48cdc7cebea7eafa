"""Run the benchmarks and print ratios against a peer measured in the same run.

Absolute times vary on shared machines; a ratio of two timings taken back to back, alternating,
is far steadier. Results go to ``benchmarks/results/latest.json`` (not committed).
Usage: ``python -m benchmarks.run [--only KEY] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.finetuning import lora_vs_full
from benchmarks.grading import autograde_seconds_per_submission
from benchmarks.llama import llama_decoding, llama_prefill_speed_vs_hf, smollm2_load_seconds
from benchmarks.post_training import post_training_gains, sft_step_time_vs_trl
from benchmarks.timing import alternate
from benchmarks.training import gpt_train_speed_vs_hf
from llmcourse.attention import MultiHeadAttention
from llmcourse.device import pick_device

RESULTS = Path(__file__).resolve().parent / "results"


def attention_time_vs_torch(repeats: int) -> dict[str, float]:
    """Forward + backward of our multi-head attention over nn.MultiheadAttention (B 8, T 256, d 384, 6 heads)."""
    device = pick_device()
    torch.manual_seed(0)
    batch, length, d_model, n_heads = 8, 256, 384, 6
    ours = MultiHeadAttention(d_model, n_heads).to(device)
    theirs = nn.MultiheadAttention(d_model, n_heads, batch_first=True).to(device)
    x = torch.randn(batch, length, d_model, device=device, requires_grad=True)

    def run_ours() -> None:
        ours(x).sum().backward()

    def run_theirs() -> None:
        theirs(x, x, x, need_weights=False)[0].sum().backward()

    t_ours, t_theirs = alternate(run_ours, run_theirs, repeats)
    return {"attention_time_vs_torch": t_ours / t_theirs, "attention_ms_ours": 1e3 * t_ours, "attention_ms_torch": 1e3 * t_theirs}


def _decoding_models() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """A randomly initialised GPT-2 (6 layers, width 384, 6 heads, GPT-2's vocabulary, 512 positions), the same
    weights in our GPT, and a 32-token prompt: the setting of both decoding benchmarks."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from llmcourse.transformer import GPT

    hf_logging.set_verbosity_error()
    device = pick_device()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=6, n_embd=384, n_head=6, n_positions=512)).eval().to(device)
    ours = GPT.from_hf_gpt2(hf).eval().to(device)
    prompt = torch.randint(0, hf.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0)).to(device)
    return hf, ours, prompt


class _OneThread:
    """Decode on one CPU thread: per-token work is too small to share, and the figure is steadier."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)


NEW_TOKENS = 256
HF_OPTIONS = {"do_sample": False, "pad_token_id": 0}


def _decoders(hf: nn.Module, ours: nn.Module, prompt: torch.Tensor, use_cache: bool) -> tuple[Callable[[int], None], Callable[[int], None]]:
    """Greedy decoding of n new tokens by our ``generate`` and by Hugging Face's, with or without the cache."""
    from llmcourse.generation import generate

    def run_ours(n: int) -> None:
        generate(ours, prompt, n, temperature=0, use_cache=use_cache)

    def run_hf(n: int) -> None:  # min_new_tokens: an end-of-text token must not stop it early
        hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, use_cache=use_cache, **HF_OPTIONS)

    for run in (run_ours, run_hf):
        run(8)  # warm-up: a short run loads the kernels, so the timed full runs need no warm-up of their own
    return run_ours, run_hf


def kv_cache_speedup(repeats: int) -> dict[str, float]:
    """Greedy decoding of 256 tokens after a 32-token prompt, one thread: uncached time over cached time.

    Hugging Face's own ratio on the same model and run is given beside ours (``kv_cache_speedup_hf``):
    both depend on the machine's memory bandwidth against its arithmetic speed.
    """
    hf, ours, prompt = _decoding_models()
    repeats = max(1, min(repeats, 2))  # an uncached run takes many seconds
    with _OneThread():
        ours_cached, hf_cached = _decoders(hf, ours, prompt, use_cache=True)
        ours_uncached, hf_uncached = _decoders(hf, ours, prompt, use_cache=False)
        cached, uncached = alternate(lambda: ours_cached(NEW_TOKENS), lambda: ours_uncached(NEW_TOKENS), repeats, warmup=0)
        hf_with, hf_without = alternate(lambda: hf_cached(NEW_TOKENS), lambda: hf_uncached(NEW_TOKENS), repeats, warmup=0)
    return {"kv_cache_speedup": uncached / cached, "kv_cache_speedup_hf": hf_without / hf_with}


def generate_speed_vs_hf(repeats: int) -> dict[str, float]:
    """Our cached greedy decoding's tokens/s over Hugging Face generate's: same weights, 256 tokens, one thread."""
    from llmcourse.generation import generate

    hf, ours, prompt = _decoding_models()
    expected = hf.generate(prompt, max_new_tokens=16, min_new_tokens=16, **HF_OPTIONS)
    if not torch.equal(generate(ours, prompt, 16, temperature=0), expected):
        raise RuntimeError("our GPT and Hugging Face's decode differently: the timings would not compare like with like")
    with _OneThread():
        run_ours, run_hf = _decoders(hf, ours, prompt, use_cache=True)
        t_ours, t_hf = alternate(lambda: run_ours(NEW_TOKENS), lambda: run_hf(NEW_TOKENS), max(1, min(repeats, 5)), warmup=0)
    return {"generate_speed_vs_hf": t_hf / t_ours, "generate_tokens_per_s_ours": NEW_TOKENS / t_ours,
            "generate_tokens_per_s_hf": NEW_TOKENS / t_hf}


# The goals: (">=", x) means higher is better and x is the least we aim for.
GOALS: dict[str, tuple[str, float]] = {
    "gpt_train_speed_vs_hf": (">=", 1.3),
    "attention_time_vs_torch": ("<=", 0.95),
    "kv_cache_speedup": (">=", 5.0),
    "generate_speed_vs_hf": (">=", 1.0),
    "lora_trainable_fraction": ("<=", 0.02),
    "lora_accuracy_vs_full": (">=", 0.95),
    "autograde_seconds_per_submission": ("<=", 20.0),
    "llama_decode_speed_vs_hf": (">=", 1.0),
    "llama_prefill_speed_vs_hf": (">=", 1.0),
    "llama_decode_bandwidth_fraction": (">=", 0.5),
    "smollm2_load_seconds": ("<=", 5.0),
    "sft_step_time_vs_trl": ("<=", 1.0),
}

BENCHMARKS: dict[str, Callable[[int], dict[str, float]]] = {
    "gpt_train_speed_vs_hf": gpt_train_speed_vs_hf,
    "attention_time_vs_torch": attention_time_vs_torch,
    "kv_cache_speedup": kv_cache_speedup,
    "generate_speed_vs_hf": generate_speed_vs_hf,
    "lora_vs_full": lora_vs_full,
    "autograde_seconds_per_submission": autograde_seconds_per_submission,
    "llama_decoding": llama_decoding,
    "llama_prefill_speed_vs_hf": llama_prefill_speed_vs_hf,
    "smollm2_load_seconds": smollm2_load_seconds,
    "sft_step_time_vs_trl": sft_step_time_vs_trl,
    "post_training_gains": post_training_gains,
}


def verdict(key: str, value: float) -> str:
    """"goal >= 1.3: met" for a key with a goal, "" for a supporting figure."""
    if key not in GOALS:
        return ""
    op, goal = GOALS[key]
    met = value >= goal if op == ">=" else value <= goal
    return f"goal {op} {goal:g}: {'met' if met else 'MISSED'}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these keys")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    machine = f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, device {pick_device()}".strip()
    if torch.cuda.is_available():
        machine += f" ({torch.cuda.get_device_name()})"
    print(f"machine: {machine}", flush=True)
    results: dict[str, float] = {}
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}
    RESULTS.mkdir(exist_ok=True)

    def save() -> None:  # after every benchmark: an interrupted run keeps what it measured
        (RESULTS / "latest.json").write_text(json.dumps(
            {"machine": machine, "results": results, "seconds": seconds, "failed": failed}, indent=2))

    for key in args.only or list(BENCHMARKS):
        print(f"[{key}] running...", flush=True)
        start = time.perf_counter()
        try:
            found = BENCHMARKS[key](args.repeats)
        except Exception as error:  # one broken benchmark must not lose the others' figures
            failed[key] = f"{type(error).__name__}: {error}"
            print(f"[{key}] FAILED: {failed[key]}", flush=True)
        else:
            results.update(found)
            print(f"[{key}] done in {time.perf_counter() - start:.0f} s", flush=True)
        seconds[key] = time.perf_counter() - start
        save()
    width = max(map(len, [*results, *failed]))
    print(f"\nmachine: {machine}; total {sum(seconds.values()):.0f} s")
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.4g}  {verdict(key, value)}")
    for key, why in failed.items():
        print(f"{key:<{width}}  {'failed':>10}  {why}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""Run the benchmarks and print ratios against a peer measured in the same run.

Absolute times vary on shared machines; a ratio of two timings taken back to back, alternating,
is far steadier. Results go to ``benchmarks/results/latest.json`` (not committed).
Usage: ``python -m benchmarks.run [--only KEY] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from llmcourse.attention import MultiHeadAttention
from llmcourse.device import pick_device

RESULTS = Path(__file__).resolve().parent / "results"


def alternate(a: Callable[[], None], b: Callable[[], None], repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, timed in alternation so drift hits both alike."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        a(), b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, store in ((a, times_a), (b, times_b)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            store.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


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


BENCHMARKS: dict[str, Callable[[int], dict[str, float]]] = {
    "attention_time_vs_torch": attention_time_vs_torch,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these keys")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    for key in args.only or list(BENCHMARKS):
        results.update(BENCHMARKS[key](args.repeats))
    machine = f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, device {pick_device()}".strip()
    width = max(map(len, results))
    print(f"machine: {machine}")
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()

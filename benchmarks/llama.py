"""SmolLM2-135M-Instruct: the course's LlamaDecoder against Transformers' LlamaForCausalLM, same weights.

Decoding one token at a time on a CPU is bound by memory: every token reads every weight once
(the tied output matrix included), so tokens/s times the bytes of the weights is the bandwidth the
decoder gets, compared here with the bandwidth of a plain tensor copy measured in the same run.
"""

from __future__ import annotations

import time

import torch

from benchmarks.timing import alternate

NEW_TOKENS = 128
PREFILL_TOKENS = 512
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _models() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    from llmcourse.chat import render_chatml
    from llmcourse.llama import LlamaDecoder
    from llmcourse.models import load_smollm2

    hf, tokenizer = load_smollm2()
    ours = LlamaDecoder.from_transformers(hf)
    text = render_chatml([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    return hf, ours, tokenizer(text, return_tensors="pt").input_ids


def _threads(count: int) -> None:
    torch.set_num_threads(count)


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second moved by copying a tensor much larger than the caches (read + write counted)."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best


def matvec_seconds(model: torch.nn.Module, repeats: int = 5) -> float:
    """Best time of one matrix-vector product with every weight matrix of ``model``, nothing else.

    This is the floor of one cached decoding step with float32 weights on this machine and these
    threads: the same bytes read by the same BLAS kernels, without attention, norms or Python.
    """
    matrices = [p for p in model.parameters() if p.dim() == 2]
    vectors = {m.shape[1]: torch.randn(1, m.shape[1]) for m in matrices}
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for m in matrices:
                torch.nn.functional.linear(vectors[m.shape[1]], m)
            best = min(best, time.perf_counter() - start)
    return best


def llama_decoding(repeats: int) -> dict[str, float]:
    """Cached greedy decoding of 128 tokens: ours over Transformers' ``generate``, one thread and all threads."""
    from llmcourse.generation import generate

    hf, ours, prompt = _models()
    expected = hf.generate(prompt, max_new_tokens=16, do_sample=False, eos_token_id=None,
                           attention_mask=torch.ones_like(prompt))
    if not torch.equal(generate(ours, prompt, 16, temperature=0), expected):
        raise RuntimeError("the course decoder and Transformers decode differently: the timings would not compare")

    def run_ours() -> None:
        generate(ours, prompt, NEW_TOKENS, temperature=0)

    def run_hf() -> None:
        hf.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                    attention_mask=torch.ones_like(prompt))

    results: dict[str, float] = {}
    everything = torch.get_num_threads()
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    try:
        for threads, suffix in ((1, ""), (everything, "_all_threads")):
            _threads(threads)
            t_ours, t_hf = alternate(run_ours, run_hf, max(1, min(repeats, 3)), warmup=1)
            results[f"llama_decode_speed_vs_hf{suffix}"] = t_hf / t_ours
            results[f"llama_decode_tokens_per_s_ours{suffix}"] = NEW_TOKENS / t_ours
            results[f"llama_decode_tokens_per_s_hf{suffix}"] = NEW_TOKENS / t_hf
            # the floor over our time: 1.0 would mean nothing but the weight reads costs anything
            results[f"llama_decode_vs_matvec_floor{suffix}"] = matvec_seconds(ours) * NEW_TOKENS / t_ours
        bandwidth = copy_bandwidth()
    finally:
        _threads(everything)
    best = max(results["llama_decode_tokens_per_s_ours"], results["llama_decode_tokens_per_s_ours_all_threads"])
    results["llama_decode_bandwidth_fraction"] = weight_bytes * best / bandwidth
    results["copy_bandwidth_gb_per_s"] = bandwidth / 1e9
    results["llama_weight_mb"] = weight_bytes / 1e6
    return results


llama_decoding.keys = ("llama_decode_speed_vs_hf", "llama_decode_bandwidth_fraction")  # type: ignore[attr-defined]


def llama_prefill_speed_vs_hf(repeats: int) -> dict[str, float]:
    """One forward pass over a 512-token prompt, all threads: Transformers' time over ours."""
    hf, ours, prompt = _models()
    ids = prompt.repeat(1, PREFILL_TOKENS // prompt.shape[1] + 1)[:, :PREFILL_TOKENS]
    with torch.no_grad():
        t_ours, t_hf = alternate(lambda: ours(ids), lambda: hf(ids), max(1, min(repeats, 5)), warmup=1)
    return {"llama_prefill_speed_vs_hf": t_hf / t_ours, "llama_prefill_tokens_per_s_ours": PREFILL_TOKENS / t_ours}


def smollm2_load_seconds(repeats: int) -> dict[str, float]:
    """Seconds to load SmolLM2 from the course cache (converted once before timing) into the course decoder."""
    from llmcourse.llama import LlamaDecoder
    from llmcourse.models import load_smollm2

    load_smollm2()  # the first call may convert the GGUF file; that is not what is timed
    times = []
    for _ in range(max(1, min(repeats, 3))):
        start = time.perf_counter()
        LlamaDecoder.from_transformers(load_smollm2()[0])
        times.append(time.perf_counter() - start)
    return {"smollm2_load_seconds": min(times)}

"""llmcourse.generation against Hugging Face's logits warpers and ``generate``, and the KV cache against full passes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from llmcourse.generation import (
    apply_repetition_penalty,
    apply_temperature,
    beam_search,
    generate,
    top_k_filter,
    top_p_filter,
)
from llmcourse.transformer import GPT, GPTConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def random_logits(seed: int, batch: int = 4, vocab: int = 50, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * scale


# --------------------------------------------------------------------------------------------
# Filters against Hugging Face's warpers


@pytest.mark.parametrize("k", [1, 2, 7, 50, 80])
def test_top_k_filter_matches_hugging_face(k: int) -> None:
    from transformers import TopKLogitsWarper

    for seed in range(5):
        logits = random_logits(seed)
        expected = TopKLogitsWarper(top_k=k)(torch.zeros(4, 1, dtype=torch.long), logits.clone())
        got = top_k_filter(logits, k)
        assert torch.equal(got, expected)
        assert (got.isfinite().sum(-1) == min(k, 50)).all()


def test_top_k_keeps_ties_with_the_kth() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0]])
    assert top_k_filter(logits, 2).isfinite().tolist() == [[True, False, True, True, False]]


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_top_p_filter_matches_hugging_face(p: float, scale: float) -> None:
    from transformers import TopPLogitsWarper

    for seed in range(5):
        logits = random_logits(seed, scale=scale)
        expected = TopPLogitsWarper(top_p=p)(torch.zeros(4, 1, dtype=torch.long), logits.clone())
        assert torch.equal(top_p_filter(logits, p), expected)


@pytest.mark.parametrize("p", [0.01, 0.2, 0.5, 0.8, 0.95])
def test_top_p_keeps_the_smallest_set_reaching_p(p: float) -> None:
    for seed in range(10):
        logits = random_logits(seed, batch=1, vocab=30, scale=2.0).double()
        probs = logits.softmax(-1)[0]
        kept = top_p_filter(logits, p)[0].isfinite()
        kept_probs = sorted(probs[kept].tolist(), reverse=True)
        assert len(kept_probs) >= 1
        assert sum(kept_probs) >= p - 1e-12  # reaches p ...
        assert sum(kept_probs[:-1]) < p  # ... and one token fewer would not
        # the kept tokens are the most probable ones
        assert probs[kept].min() >= probs[~kept].max() if (~kept).any() else True


def test_top_p_always_keeps_one_token_and_min_keep() -> None:
    logits = torch.tensor([[10.0, 0.0, -1.0, -2.0]])  # the first token holds > 99.99%
    assert top_p_filter(logits, 0.5).isfinite().tolist() == [[True, False, False, False]]
    assert top_p_filter(logits, 0.5, min_keep=3).isfinite().sum() == 3
    assert torch.equal(top_p_filter(logits, 1.0), logits)


@pytest.mark.parametrize("penalty", [0.7, 1.0, 1.3, 2.0])
def test_repetition_penalty_matches_hugging_face(penalty: float) -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, generator=g) * 2
    ids = torch.randint(0, 20, (3, 8), generator=g)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, ids, penalty), expected, rtol=0, atol=0)


def test_repetition_penalty_lowers_seen_tokens_only() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]


def test_temperature_scales_and_checks() -> None:
    logits = torch.tensor([[1.0, 2.0, 4.0]])
    assert apply_temperature(logits, 0.5).tolist() == [[2.0, 4.0, 8.0]]
    # a higher temperature gives a flatter (higher-entropy) distribution
    entropy = [-(p * p.log()).sum().item() for p in (apply_temperature(logits, t).softmax(-1) for t in (0.5, 1, 2))]
    assert entropy[0] < entropy[1] < entropy[2]
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(logits, 0)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)
    with pytest.raises(ValueError, match="repetition_penalty"):
        apply_repetition_penalty(logits, torch.tensor([[0]]), 0.0)


# --------------------------------------------------------------------------------------------
# The KV cache: same logits, same tokens


def random_gpt(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = {"vocab_size": 37, "block_size": 40, "n_layers": 3, "n_heads": 4, "d_model": 32, **overrides}
    model = GPT(GPTConfig(**config)).to(dtype).eval()
    with torch.no_grad():  # weights far from the small initial ones, so the logits are far from uniform
        for p in model.parameters():
            p.mul_(8.0)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_logits_match_a_full_forward_pass(dtype: torch.dtype) -> None:
    model = random_gpt(dtype=dtype)
    ids = torch.randint(0, 37, (2, 30), generator=torch.Generator().manual_seed(1))
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}
    with torch.no_grad():
        full = model(ids)  # (2, 30, V)
        cache = model.new_cache(2)
        pieces = []
        for start, end in ((0, 7), (7, 8), (8, 9), (9, 20), (20, 21), (21, 30)):  # a prompt, then tokens and chunks
            pieces.append(model(ids[:, start:end], cache))
            assert cache.length == end
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, **tol)
        last = model(ids[:, :12], model.new_cache(2), last_only=True)
        assert last.shape == (2, 1, 37)
        torch.testing.assert_close(last[:, 0], full[:, 11], **tol)


def test_large_heads_decode_through_a_transposed_copy_inside_decoding() -> None:
    # GPT-2's vocabulary with a narrow model: 50257 x 32 weights, above the threshold of the
    # decoding path that reads the LM head through a (d, vocab) copy.
    from llmcourse import transformer

    model = random_gpt(vocab_size=50257)
    assert model.lm_head.weight.numel() >= transformer._TRANSPOSED_HEAD_MIN
    ids = torch.randint(0, 50257, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        with model.decoding():
            assert model._head_t is not None and model._head_t.shape == (32, 50257), "the transposed path is off"
            last = model(ids, last_only=True)
        assert model._head_t is None, "the copy outlived its decoding"
        torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-4, rtol=1e-5)
        assert torch.equal(last.argmax(-1)[:, 0], full[:, -1].argmax(-1))
        model.token_embedding.weight.mul_(-1.0)  # tied: the head changes in place; the next decoding copies anew
        with model.decoding():
            torch.testing.assert_close(model(ids, last_only=True)[:, 0], model(ids)[:, -1], atol=1e-4, rtol=1e-5)
    assert not any("head_t" in name for name in model.state_dict())
    # With gradients on (training), the ordinary layer runs, even inside decoding(), and the gradient flows.
    with model.decoding():
        assert model._head_t is None
        model(ids, last_only=True).sum().backward()
    assert model.token_embedding.weight.grad is not None
    # generate and beam_search decode inside it: the same tokens as the uncached loop and the full model.
    seen: list[bool] = []
    original = model.forward

    def spy(*args: Any, **kwargs: Any) -> Tensor:
        seen.append(model._head_t is not None)
        return original(*args, **kwargs)

    model.forward = spy  # type: ignore[method-assign]
    cached = generate(model, ids[:1, :4], 6, temperature=0)
    assert seen and all(seen)
    model.forward = original  # type: ignore[method-assign]
    uncached = generate(model, ids[:1, :4], 6, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(uncached[:, 4:5], model(ids[:1, :4]).argmax(-1)[:, -1:])
    # Under inference_mode too (no version counter is needed any more).
    with torch.inference_mode():
        built_there = random_gpt(vocab_size=50257)
        with built_there.decoding():
            torch.testing.assert_close(built_there(ids, last_only=True)[:, 0], built_there(ids)[:, -1])


def test_cache_size_reorder_and_errors() -> None:
    model = random_gpt()
    cache = model.new_cache(batch_size=3, max_length=10)
    # keys and values: 2 * layers * batch * positions * d_model float32 numbers
    assert cache.nbytes == 2 * 3 * 3 * 10 * 32 * 4 and cache.length == 0
    ids = torch.randint(0, 37, (3, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(ids, cache)
        cache.reorder(torch.tensor([2, 2, 0]))
        next_ids = torch.tensor([[5], [6], [7]])
        got = model(next_ids, cache)[:, -1]
        expected = model(torch.cat([ids[[2, 2, 0]], next_ids], dim=1))[:, -1]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="full"):
        model(torch.zeros(3, 4, dtype=torch.long), cache)
    long_cache = model.new_cache(1)  # sized to block_size (40)
    assert long_cache.max_length == 40
    model(torch.zeros(1, 30, dtype=torch.long), long_cache)
    with pytest.raises(ValueError, match="block_size"):  # 30 cached + 11 new positions > 40
        model(torch.zeros(1, 11, dtype=torch.long), long_cache)


@pytest.mark.parametrize("options", [
    {"temperature": 0},
    {"temperature": 1.0},
    {"temperature": 0.8, "top_k": 5},
    {"temperature": 1.2, "top_p": 0.9, "repetition_penalty": 1.3},
])
def test_cached_and_uncached_decoding_give_identical_tokens(options: dict) -> None:
    model = random_gpt(seed=3)
    prompt = torch.randint(0, 37, (3, 5), generator=torch.Generator().manual_seed(4))
    # 50 new tokens: past block_size (40), where the window slides and the cache is set aside
    cached = generate(model, prompt, 50, generator=torch.Generator().manual_seed(5), **options)
    uncached = generate(model, prompt, 50, use_cache=False, generator=torch.Generator().manual_seed(5), **options)
    assert cached.shape == (3, 55) and torch.equal(cached[:, :5], prompt)
    assert torch.equal(cached, uncached)
    if options["temperature"] > 0:  # another seed, other tokens: the generator is used
        other = generate(model, prompt, 50, generator=torch.Generator().manual_seed(6), **options)
        assert not torch.equal(other, cached)


def test_greedy_is_the_argmax_chain() -> None:
    model = random_gpt(seed=5)
    prompt = torch.tensor([[1, 2, 3]])
    ids = prompt
    with torch.no_grad():
        for _ in range(10):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generate(model, prompt, 10, temperature=0), ids)
    assert torch.equal(generate(model, prompt, 10, top_k=1), ids)  # top-1 sampling is greedy
    assert torch.equal(generate(model, prompt, 10, top_p=1e-6), ids)  # so is the tiniest nucleus
    assert torch.equal(model.generate(prompt, 10, temperature=0), ids)  # GPT.generate delegates


def test_sampling_follows_the_distribution() -> None:
    # With one forward pass per step, the first sampled token's frequencies match softmax(logits / T).
    model = random_gpt(seed=6)
    prompt = torch.tensor([[4, 5]])
    with torch.no_grad():
        probs = (model(prompt)[0, -1] / 1.5).softmax(-1)
    draws = generate(model, prompt.repeat(4000, 1), 1, temperature=1.5, generator=torch.Generator().manual_seed(0))[:, -1]
    freq = torch.bincount(draws, minlength=37).double() / 4000
    assert (freq - probs.double()).abs().max() < 0.03


# --------------------------------------------------------------------------------------------
# Stop conditions


def test_stop_token_pads_finished_rows_and_ends_early() -> None:
    model = random_gpt(seed=7)
    prompt = torch.randint(0, 37, (4, 3), generator=torch.Generator().manual_seed(0))
    free = generate(model, prompt, 30, temperature=1.0, generator=torch.Generator().manual_seed(1))
    stop = int(free[0, 3 + 2])  # the third token row 0 produced: row 0 must stop there
    pad = (stop + 1) % 37  # a real token id: finished rows still go through the model
    out = generate(model, prompt, 30, temperature=1.0, stop_token_id=stop, pad_token_id=pad,
                   generator=torch.Generator().manual_seed(1))
    for row in range(4):
        new = out[row, 3:].tolist()
        if stop in new:
            end = new.index(stop) + 1
            assert all(t == pad for t in new[end:])
            assert new[:end] == free[row, 3 : 3 + end].tolist()  # identical until it stops
        else:
            assert new == free[row, 3 : 3 + len(new)].tolist()
    assert out[0, 3 + 2] == stop and out[0, 3 + 3 :].eq(pad).all()
    if all(stop in out[row, 3:].tolist() for row in range(4)):
        assert out.shape[1] < 33  # every row stopped: no more steps


def test_stop_strings_need_decode_and_stop_the_row() -> None:
    model = random_gpt(seed=8)
    prompt = torch.tensor([[1, 2]])
    decode = lambda ids: "".join(chr(97 + i % 26) for i in ids)  # noqa: E731 - a toy tokenizer
    free = generate(model, prompt, 20, temperature=0)
    text = decode(free[0, 2:].tolist())
    target = text[4:6]  # the stop string appears when the 6th new token is out (or earlier)
    out = generate(model, prompt, 20, temperature=0, stop_strings=[target], decode=decode)
    new_text = decode(out[0, 2:].tolist())
    assert new_text.endswith(target) and target not in new_text[:-1]
    assert torch.equal(out[0], free[0, : out.shape[1]])
    with pytest.raises(ValueError, match="decode"):
        generate(model, prompt, 5, stop_strings=["x"])
    with pytest.raises(ValueError, match="pad_token_id"):
        generate(model, prompt.repeat(2, 1), 5, stop_strings=["x"], decode=decode)
    with pytest.raises(ValueError, match="input_ids"):
        generate(model, torch.tensor([1, 2]), 5)
    assert generate(model, prompt, 0).shape == (1, 2)


# --------------------------------------------------------------------------------------------
# Against Hugging Face's generate on the same GPT-2 weights


def hf_gpt2(seed: int, vocab_size: int = 61, eos: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    hf = GPT2LMHeadModel(config).double().eval()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # random weights far from init: peaked, varied distributions
        for p in hf.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return hf


@pytest.mark.parametrize("seed", range(3))
def test_greedy_and_sampling_match_hugging_face_generate(seed: int) -> None:
    hf = hf_gpt2(seed)
    ours = GPT.from_hf_gpt2(hf).eval()
    prompt = torch.randint(1, 61, (3, 6), generator=torch.Generator().manual_seed(seed))
    expected = hf.generate(prompt, max_new_tokens=25, do_sample=False, eos_token_id=0, pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 25, temperature=0, stop_token_id=0), expected)
    # Sampling draws from the global RNG in both: the same seed gives the same tokens.
    options = {"temperature": 0.8, "top_k": 12, "top_p": 0.85, "repetition_penalty": 1.2}
    torch.manual_seed(seed)
    expected = hf.generate(prompt, max_new_tokens=25, do_sample=True, eos_token_id=0, pad_token_id=0, **options)
    torch.manual_seed(seed)
    assert torch.equal(generate(ours, prompt, 25, stop_token_id=0, **options), expected)


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0, -0.5])
def test_beam_search_matches_hugging_face_generate(length_penalty: float) -> None:
    ended_early = 0
    for seed in range(4):
        hf = hf_gpt2(seed, vocab_size=20, eos=3)  # a small vocabulary: the stop token comes up often
        ours = GPT.from_hf_gpt2(hf).eval()
        prompt = torch.randint(4, 20, (1, 5), generator=torch.Generator().manual_seed(seed))
        for num_beams, penalty in ((3, 1.0), (4, 1.5)):
            expected = hf.generate(prompt, max_new_tokens=15, num_beams=num_beams, do_sample=False, eos_token_id=3,
                                   pad_token_id=3, length_penalty=length_penalty, num_return_sequences=num_beams,
                                   repetition_penalty=penalty)
            result = beam_search(ours, prompt, num_beams, 15, length_penalty=length_penalty, stop_token_id=3,
                                 num_return_sequences=num_beams, repetition_penalty=penalty)
            assert torch.equal(result.sequences, expected)
            assert torch.equal(result.scores, result.scores.sort(descending=True).values)
            ended_early += int((expected[:, 5:] == 3).any())
            uncached = beam_search(ours, prompt, num_beams, 15, length_penalty=length_penalty, stop_token_id=3,
                                   num_return_sequences=num_beams, repetition_penalty=penalty, use_cache=False)
            assert torch.equal(uncached.sequences, result.sequences)
    if length_penalty <= 1:  # (a length penalty of 2 favours long hypotheses: early ends rarely win)
        assert ended_early > 0  # the stop-token rules were exercised


def test_beam_search_properties() -> None:
    model = random_gpt(seed=9)
    prompt = torch.tensor([[1, 2, 3]])
    greedy = generate(model, prompt, 12, temperature=0)
    one_beam = beam_search(model, prompt, 1, 12)
    assert torch.equal(one_beam.sequences, greedy)  # one beam is greedy search

    def log_prob(ids: torch.Tensor) -> float:
        with torch.no_grad():
            logp = model(ids[:, :-1]).double().log_softmax(-1)
        return logp[0, 2:].gather(-1, ids[0, 3:, None]).sum().item()

    wide = beam_search(model, prompt, 8, 12, length_penalty=0.0)
    # the score is the sequence's log-probability, and a wider beam finds one at least as likely as greedy's
    assert wide.scores[0].item() == pytest.approx(log_prob(wide.sequences), abs=1e-3)
    assert log_prob(wide.sequences) >= log_prob(greedy) - 1e-4
    with pytest.raises(ValueError, match="one prompt"):
        beam_search(model, prompt.repeat(2, 1), 2, 5)
    with pytest.raises(ValueError, match="num_return_sequences"):
        beam_search(model, prompt, 2, 5, num_return_sequences=3)


def test_generated_ids_can_feed_training() -> None:
    # Decoding runs without gradients, but its output is an ordinary tensor a training step can use.
    model = random_gpt(seed=10)
    ids = generate(model, torch.tensor([[1, 2]]), 6)
    model.train()
    model(ids).logsumexp(-1).mean().backward()
    assert model.token_embedding.weight.grad is not None

"""The modern decoder (llmcourse.llama) against Transformers' Llama, piece by piece and on SmolLM2's real weights."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM
from transformers.models.llama import modeling_llama as hf

from llmcourse import chat, generation
from llmcourse.llama import (
    GroupedQueryAttention,
    LlamaConfig,
    LlamaDecoder,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
    repeat_kv,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

SMALL = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
             head_dim=8, intermediate_size=80, rms_norm_eps=1e-5, max_position_embeddings=64,
             rope_parameters={"rope_type": "default", "rope_theta": 500.0}, tie_word_embeddings=True)


def hf_config(**overrides: object) -> HFLlamaConfig:
    config = HFLlamaConfig(**{**SMALL, **overrides})
    config._attn_implementation = "eager"
    return config


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn at random (norm weights too, so a wrong norm cannot hide behind ones)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return module.eval()


def positions_of(length: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + length)[None]  # (1, T)


# --- the pieces -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_transformers(dtype: torch.dtype) -> None:
    ours, theirs = RMSNorm(48, eps=1e-6), hf.LlamaRMSNorm(48, eps=1e-6)
    theirs.load_state_dict(randomised(ours, 0).state_dict())
    x = (torch.randn(3, 5, 48, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    assert torch.equal(ours(x), theirs(x))
    # No mean is subtracted: a constant vector is not sent to zero, as LayerNorm would send it.
    assert ours.float()(torch.full((1, 48), 3.0)).abs().min() > 0.1


def test_rotary_tables_and_rotation_match_transformers() -> None:
    config = hf_config()
    theirs = hf.LlamaRotaryEmbedding(config)
    ours = RotaryEmbedding(8, theta=500.0, max_length=64)
    x = torch.randn(1, 10, 48)
    for start, length in [(0, 10), (7, 1), (40, 24)]:
        cos, sin = theirs(x, positions_of(length, start))  # (1, T, d_h)
        got_cos, got_sin = ours(start, length)
        torch.testing.assert_close(got_cos, cos[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(got_sin, sin[0], rtol=0, atol=1e-6)
        q = torch.randn(2, 6, length, 8, generator=torch.Generator().manual_seed(start))
        k = torch.randn(2, 2, length, 8, generator=torch.Generator().manual_seed(start + 1))
        q_ref, k_ref = hf.apply_rotary_pos_emb(q, k, cos, sin)
        torch.testing.assert_close(apply_rotary(q, got_cos, got_sin), q_ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(apply_rotary(k, got_cos, got_sin), k_ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="past the 64 positions"):
        ours(60, 5)


def test_rotary_score_depends_only_on_the_offset() -> None:
    # RoPE's defining property: <rot(q, m), rot(k, n)> is a function of m - n alone.
    rotary = RotaryEmbedding(16, theta=10_000.0, max_length=4096)
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=generator, dtype=torch.float64), torch.randn(16, generator=generator, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        cos_m, sin_m = (t.double() for t in rotary(m, 1))
        cos_n, sin_n = (t.double() for t in rotary(n, 1))
        return float(apply_rotary(q[None, None, None], cos_m, sin_m).flatten() @ apply_rotary(k[None, None, None], cos_n, sin_n).flatten())

    for offset in (0, 1, 5, 37):
        scores = [score(n + offset, n) for n in (0, 3, 100, 2000)]
        assert max(scores) - min(scores) < 1e-4, (offset, scores)
    assert abs(score(5, 0) - score(0, 5)) > 1e-3, "the sign of the offset matters"
    # Rotations keep lengths: only angles change.
    cos, sin = rotary(123, 1)
    assert torch.isclose(apply_rotary(q[None, None, None].float(), cos, sin).norm(), q.float().norm(), atol=1e-5)


def test_swiglu_matches_transformers_mlp() -> None:
    config = hf_config()
    ours, theirs = SwiGLU(48, 80), hf.LlamaMLP(config)
    theirs.load_state_dict(randomised(ours, 2).state_dict())
    x = torch.randn(2, 7, 48)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_repeat_kv_matches_transformers() -> None:
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(repeat_kv(x, 4), hf.repeat_kv(x, 4))
    assert torch.equal(repeat_kv(x, 4)[:, 5], x[:, 1])  # query head 5 of groups of 4 reads key/value head 1


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("heads", [(6, 2), (6, 6), (6, 1)])
def test_grouped_query_attention_matches_transformers(fused: bool, heads: tuple[int, int]) -> None:
    n_heads, n_kv = heads
    config = hf_config(num_attention_heads=n_heads, num_key_value_heads=n_kv)
    ours = GroupedQueryAttention(LlamaConfig.from_transformers(config), fused=fused)
    theirs = hf.LlamaAttention(config, layer_idx=0)
    theirs.load_state_dict(randomised(ours, 3).state_dict())
    length = 9
    x = torch.randn(2, length, 48, generator=torch.Generator().manual_seed(4))
    cos, sin = hf.LlamaRotaryEmbedding(config)(x, positions_of(length))
    mask = torch.full((length, length), float("-inf")).triu(1)[None, None]  # additive causal mask
    expected, _ = theirs(x, position_embeddings=(cos, sin), attention_mask=mask)
    torch.testing.assert_close(ours(x, cos[0], sin[0]), expected, rtol=0, atol=1e-5)


def small_pair(seed: int = 5, **overrides: object) -> tuple[LlamaDecoder, LlamaForCausalLM]:
    theirs = randomised(LlamaForCausalLM(hf_config(**overrides)), seed)
    return LlamaDecoder.from_transformers(theirs), theirs


@pytest.mark.parametrize("tied", [True, False])
def test_small_decoder_logits_match_transformers(tied: bool) -> None:
    ours, theirs = small_pair(tie_word_embeddings=tied)
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = theirs(ids).logits
        torch.testing.assert_close(ours(ids), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(ours(ids, last_only=True), expected[:, -1:], rtol=0, atol=1e-4)
    assert ours.num_parameters == theirs.num_parameters()


def test_cached_decoding_equals_full_passes_and_the_cache_is_sized_by_kv_heads() -> None:
    ours, _ = small_pair()
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(7))
    cache = ours.new_cache(2, 20)
    assert cache.layers[0].keys.shape == (2, 2, 20, 8)  # (B, h_kv, max_length, d_h): 2 heads, not 6
    with torch.no_grad():
        full = ours(ids)
        pieces = [ours(ids[:, :12], cache)] + [ours(ids[:, t : t + 1], cache) for t in range(12, 20)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def test_config_rejects_shapes_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        LlamaConfig(n_heads=9, n_kv_heads=2)
    with pytest.raises(ValueError, match="must be even"):
        LlamaConfig(d_head=7)


def test_generation_works_on_the_modern_decoder() -> None:
    ours, theirs = small_pair()
    prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(8))
    got = generation.generate(ours, prompt, max_new_tokens=15, temperature=0)
    expected = theirs.generate(prompt, max_new_tokens=15, do_sample=False, pad_token_id=0)
    assert torch.equal(got, expected)
    uncached = generation.generate(ours, prompt, max_new_tokens=15, temperature=0, use_cache=False)
    assert torch.equal(got, uncached)
    beams = generation.beam_search(ours, prompt, num_beams=3, max_new_tokens=6)
    assert beams.sequences.shape == (1, 11)


# --- the chat template ------------------------------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of Italy?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Name a\nShakespeare play."}],
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chatml_matches_the_tokenizer_template(smollm2: tuple[object, object], add_generation_prompt: bool) -> None:
    _, tokenizer = smollm2
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert chat.render_chatml(messages, add_generation_prompt) == expected


def test_chatml_rejects_a_malformed_message() -> None:
    with pytest.raises(ValueError, match="message 1 must be a dict with a role"):
        chat.render_chatml([{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}])


# --- SmolLM2's real weights ---------------------------------------------------------------------

TEXT = ("Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. "
        "The evil that men do lives after them; the good is oft interred with their bones.")


@pytest.fixture(scope="module")
def smollm2() -> tuple[LlamaForCausalLM, object]:
    from llmcourse.models import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="module")
def ours(smollm2: tuple[LlamaForCausalLM, object]) -> LlamaDecoder:
    return LlamaDecoder.from_transformers(smollm2[0])


def test_smollm2_has_the_shape_we_teach(smollm2: tuple[LlamaForCausalLM, object], ours: LlamaDecoder) -> None:
    assert ours.config == LlamaConfig(block_size=8192, norm_eps=smollm2[0].config.rms_norm_eps)
    assert round(ours.num_parameters / 1e6, 1) == 134.5


def test_smollm2_logits_match_transformers_on_real_text(smollm2: tuple[LlamaForCausalLM, object],
                                                        ours: LlamaDecoder) -> None:
    model, tokenizer = smollm2
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(ids).logits
        got = ours(ids)
    difference = (got - expected).abs().max().item()
    print(f"\nSmolLM2 on {ids.shape[1]} tokens: max |logit difference| {difference:.2e}")
    assert difference <= 1e-4


def test_smollm2_greedy_text_matches_transformers_generate(smollm2: tuple[LlamaForCausalLM, object],
                                                           ours: LlamaDecoder) -> None:
    model, tokenizer = smollm2
    prompt = chat.render_chatml([{"role": "user", "content": "Write a short story about a lighthouse keeper."}],
                                add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=None,
                              attention_mask=torch.ones_like(ids))
    got = generation.generate(ours, ids, max_new_tokens=64, temperature=0)
    assert torch.equal(got, expected), tokenizer.decode(got[0, ids.shape[1]:])
    uncached = generation.generate(ours, ids, max_new_tokens=8, temperature=0, use_cache=False)
    assert torch.equal(uncached, got[:, : ids.shape[1] + 8])


def test_smollm2_answers_a_question(smollm2: tuple[LlamaForCausalLM, object], ours: LlamaDecoder) -> None:
    _, tokenizer = smollm2
    prompt = chat.render_chatml([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    end = tokenizer.convert_tokens_to_ids(chat.END_OF_TURN)
    out = generation.generate(ours, ids, max_new_tokens=20, temperature=0, stop_token_id=end)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer

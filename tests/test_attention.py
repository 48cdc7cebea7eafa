"""llmcourse.attention against PyTorch's own attention on random shapes, masks and dtypes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmcourse.attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    combine_masks,
    padding_mask,
    scaled_dot_product_attention,
)

DTYPES = {torch.float32: 1e-5, torch.float64: 1e-12}


def random_mask(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """A random bool mask whose every row lets the query see at least one key."""
    mask = torch.rand(*shape, generator=generator) < 0.6
    mask[..., 0] |= ~mask.any(dim=-1)
    return mask


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("seed", range(6))
def test_sdpa_matches_torch_on_random_shapes(dtype: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    lead = tuple(int(n) for n in torch.randint(1, 4, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g))
    t_q, t_k, d_k, d_v = (int(n) for n in torch.randint(1, 9, (4,), generator=g))
    q = torch.randn(*lead, t_q, d_k, generator=g, dtype=dtype)
    k = torch.randn(*lead, t_k, d_k, generator=g, dtype=dtype)
    v = torch.randn(*lead, t_k, d_v, generator=g, dtype=dtype)
    for mask in (None, random_mask(g, *lead, t_q, t_k), random_mask(g, t_q, t_k)):
        out, weights = scaled_dot_product_attention(q, k, v, mask)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert out.shape == (*lead, t_q, d_v) and weights.shape == (*lead, t_q, t_k)
        torch.testing.assert_close(out, expected, atol=DTYPES[dtype], rtol=DTYPES[dtype])
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
        if mask is not None:
            assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()


def test_sdpa_weights_are_the_softmax_of_scaled_scores() -> None:
    q, k, v = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), torch.eye(5, dtype=torch.float64)
    out, weights = scaled_dot_product_attention(q, k, v)
    by_hand = [[math.exp(sum(a * b for a, b in zip(qi, kj)) / 2.0) for kj in k.tolist()] for qi in q.tolist()]
    by_hand = [[x / sum(row) for x in row] for row in by_hand]
    torch.testing.assert_close(weights, torch.tensor(by_hand, dtype=torch.float64))
    torch.testing.assert_close(out, weights)  # V = I returns the weights themselves


def test_causal_mask_and_is_causal_agree_with_torch() -> None:
    assert causal_mask(4).tolist() == [[True, False, False, False], [True, True, False, False],
                                       [True, True, True, False], [True, True, True, True]]
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    out, weights = scaled_dot_product_attention(q, k, v, causal_mask(6))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert torch.triu(weights, diagonal=1).abs().max() == 0
    # Top-left alignment when T_q != T_k, as PyTorch's is_causal.
    k2, v2 = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    out2, _ = scaled_dot_product_attention(q, k2, v2, causal_mask(6, 9))
    torch.testing.assert_close(out2, F.scaled_dot_product_attention(q, k2, v2, is_causal=True))


def test_fully_masked_query_attends_to_nothing_like_torch() -> None:
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert not out.isnan().any() and (weights[0, 1] == 0).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_bad_inputs_raise_clear_errors() -> None:
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 5))
    with pytest.raises(ValueError, match="broadcast"):
        scaled_dot_product_attention(q, k, v, torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="d_k"):
        scaled_dot_product_attention(q, torch.randn(2, 5, 3), v)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


def copy_into_torch(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    """An nn.MultiheadAttention holding the same weights as ``ours``."""
    theirs = nn.MultiheadAttention(ours.d_model, ours.n_heads, batch_first=True, dtype=ours.w_q.weight.dtype)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        theirs.out_proj.weight.copy_(ours.w_o.weight)
        theirs.out_proj.bias.copy_(ours.w_o.bias)
    return theirs.eval()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("d_model,n_heads,batch,t_q,t_k", [(8, 1, 1, 1, 1), (12, 3, 2, 5, 5), (16, 4, 3, 7, 4), (24, 6, 2, 3, 9)])
def test_multi_head_matches_nn_multihead_attention(dtype: torch.dtype, d_model: int, n_heads: int, batch: int, t_q: int, t_k: int) -> None:
    torch.manual_seed(d_model + t_q)
    ours = MultiHeadAttention(d_model, n_heads).to(dtype).eval()
    theirs = copy_into_torch(ours)
    x = torch.randn(batch, t_q, d_model, dtype=dtype)
    memory = torch.randn(batch, t_k, d_model, dtype=dtype)
    tol = DTYPES[dtype] * 10
    with torch.no_grad():
        # Cross-attention, both paths, with per-head weights averaged as PyTorch reports them.
        fast = ours(x, memory, memory)
        slow, weights = ours(x, memory, memory, need_weights=True)
        expected, expected_weights = theirs(x, memory, memory, need_weights=True)
        torch.testing.assert_close(fast, expected, atol=tol, rtol=tol)
        torch.testing.assert_close(slow, expected, atol=tol, rtol=tol)
        torch.testing.assert_close(weights.mean(dim=1), expected_weights, atol=tol, rtol=tol)
        # Self-attention with a causal mask, and with a key padding mask.
        causal = causal_mask(t_q)
        expected, _ = theirs(x, x, x, attn_mask=~causal)  # PyTorch's nn module: True = blocked
        torch.testing.assert_close(ours(x, is_causal=True), expected, atol=tol, rtol=tol)
        torch.testing.assert_close(ours(x, is_causal=True, need_weights=True)[0], expected, atol=tol, rtol=tol)
        lengths = torch.randint(1, t_k + 1, (batch,))
        keep = torch.arange(t_k)[None, :] < lengths[:, None]  # (B, T_k), True = real token
        expected, _ = theirs(x, memory, memory, key_padding_mask=~keep)
        torch.testing.assert_close(ours(x, memory, memory, mask=padding_mask(keep)), expected, atol=tol, rtol=tol)


def test_causal_and_padding_masks_combine() -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(8, 2).eval()
    x = torch.randn(2, 5, 8)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    combined = combine_masks(padding_mask(keep), causal_mask(5))
    assert combined.shape == (2, 1, 5, 5)
    with torch.no_grad():
        a = ours(x, mask=padding_mask(keep), is_causal=True)
        b = ours(x, mask=combined)
        c, weights = ours(x, mask=padding_mask(keep), is_causal=True, need_weights=True)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert weights[0, :, :, 3:].abs().max() == 0  # padding is never attended to
    assert combine_masks(None, None) is None


def test_split_heads_round_trip_and_layout() -> None:
    mha = MultiHeadAttention(6, 3)
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).view(2, 4, 6)
    heads = mha.split_heads(x)
    assert heads.shape == (2, 3, 4, 2)
    torch.testing.assert_close(heads[:, 1], x[..., 2:4])  # head 1 owns features 2..3 at every step
    torch.testing.assert_close(mha.merge_heads(heads), x)


def test_gradients_flow_through_both_paths() -> None:
    torch.manual_seed(1)
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 4, 8, requires_grad=True)
    fast = mha(x, is_causal=True).square().sum()
    (grad_fast,) = torch.autograd.grad(fast, x)
    slow = mha(x, is_causal=True, need_weights=True)[0].square().sum()
    (grad_slow,) = torch.autograd.grad(slow, x)
    torch.testing.assert_close(grad_fast, grad_slow)
    assert grad_fast[:, -1].abs().sum() > 0


def test_causal_mask_offset_is_the_mask_after_cached_positions() -> None:
    # Queries 3 and 4 of a 5-token causal mask, seen as 2 new queries after 3 cached keys.
    assert torch.equal(causal_mask(2, 5, offset=3), causal_mask(5)[3:])
    assert torch.equal(causal_mask(4, offset=0), causal_mask(4))


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_with_a_cache_equals_attention_over_the_whole_sequence(need_weights: bool) -> None:
    torch.manual_seed(2)
    mha = MultiHeadAttention(12, 3).double().eval()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    cache = KVCache(n_layers=1, batch_size=2, n_heads=3, d_head=4, max_length=9, dtype=torch.float64)
    layer = cache.layers[0]
    with torch.no_grad():
        expected = mha(x, is_causal=True)
        pieces = []
        for start, end in ((0, 4), (4, 5), (5, 8), (8, 9)):  # a prompt, one token, a chunk, one token
            out = mha(x[:, start:end], is_causal=True, cache=layer, need_weights=need_weights)
            if need_weights:
                out, weights = out
                assert weights.shape == (2, 3, end - start, end)
                # the chunk's first query sees 0..start, the last one everything so far
                assert torch.equal(weights[0, 0] > 0, causal_mask(end - start, end, offset=start))
            pieces.append(out)
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-12, rtol=1e-12)


def test_fused_self_attention_projection_equals_three_separate_ones() -> None:
    """Training self-attention packs w_q, w_k, w_v into one product: same outputs and gradients."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4)
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    mha = mha.double()
    assert mha.can_pack()
    fused = mha(x, is_causal=True)
    fused.square().sum().backward()
    fused_grads = [p.grad.clone() for p in mha.parameters()]
    mha.zero_grad()
    calls = []
    handle = mha.w_q.register_forward_hook(lambda *args: calls.append(1))
    mha.pack_projections = False  # for the hook to run: the three layers one by one
    assert not mha.can_pack()
    separate = mha(x, is_causal=True)
    separate.square().sum().backward()
    handle.remove()
    assert calls == [1]
    torch.testing.assert_close(fused, separate)
    for fused_grad, parameter in zip(fused_grads, mha.parameters()):
        torch.testing.assert_close(fused_grad, parameter.grad)


def test_wrapped_projection_is_never_fused() -> None:
    class Scaled(nn.Module):  # stands for a LoRA wrapper: computes more than its weight
        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.linear, self.weight, self.bias = linear, linear.weight, linear.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.linear(x)

    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2)
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        expected_q = 2 * mha.w_q(x)
    mha.w_q = Scaled(mha.w_q)
    assert not mha.can_pack()
    _, weights = mha(x, need_weights=True)
    out = mha(x)  # grad enabled, self-attention: would be fused if the wrapper were ignored
    q = mha.split_heads(expected_q)
    k = mha.split_heads(mha.w_k(x))
    manual = torch.softmax(q @ k.transpose(-2, -1) / 2**1.5, dim=-1)
    torch.testing.assert_close(weights, manual)
    torch.testing.assert_close(out, mha.w_o(mha.merge_heads(manual @ mha.split_heads(mha.w_v(x)))))

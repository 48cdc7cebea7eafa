"""llmcourse.transformer against PyTorch's Transformer layers (weights copied across) and the formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmcourse.attention import MultiHeadAttention, causal_mask
from llmcourse.transformer import DecoderBlock, FeedForward, TransformerBlock, sinusoidal_positions

TOL = {"atol": 1e-12, "rtol": 1e-12}


def copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    """Copy PyTorch's packed in-projection (q, k, v stacked) and out-projection into our four Linears."""
    with torch.no_grad():
        for ours_linear, weight, bias in zip(
            (ours.w_q, ours.w_k, ours.w_v),
            theirs.in_proj_weight.chunk(3),
            theirs.in_proj_bias.chunk(3),
        ):
            ours_linear.weight.copy_(weight)
            ours_linear.bias.copy_(bias)
        ours.w_o.weight.copy_(theirs.out_proj.weight)
        ours.w_o.bias.copy_(theirs.out_proj.bias)


def copy_linear_and_norm(pairs: list[tuple[nn.Module, nn.Module]]) -> None:
    with torch.no_grad():
        for ours, theirs in pairs:
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)


def randomise(module: nn.Module, seed: int) -> None:
    """Give every parameter (LayerNorm ones included) random values, so no copy can go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def encoder_pair(norm_first: bool, seed: int = 0) -> tuple[TransformerBlock, nn.TransformerEncoderLayer]:
    d_model, n_heads, d_ff = 16, 4, 40
    theirs = nn.TransformerEncoderLayer(
        d_model, n_heads, d_ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first
    ).double()
    randomise(theirs, seed)
    ours = TransformerBlock(d_model, n_heads, d_ff, dropout=0.0, norm_first=norm_first).double()
    copy_attention(ours.attn, theirs.self_attn)
    copy_linear_and_norm([
        (ours.ffn.fc_in, theirs.linear1), (ours.ffn.fc_out, theirs.linear2),
        (ours.norm1, theirs.norm1), (ours.norm2, theirs.norm2),
    ])
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_block_matches_torch_encoder_layer(norm_first: bool, causal: bool) -> None:
    ours, theirs = encoder_pair(norm_first)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        if causal:
            # PyTorch's bool masks say True = *blocked*; ours say True = may attend.
            expected = theirs(x, src_mask=~causal_mask(7), is_causal=True)
            got = ours(x, is_causal=True)
            got_from_mask = ours(x, mask=causal_mask(7))
            torch.testing.assert_close(got_from_mask, expected, **TOL)
        else:
            expected = theirs(x)
            got = ours(x)
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_padding_mask_matches_torch_key_padding_mask(norm_first: bool) -> None:
    ours, theirs = encoder_pair(norm_first, seed=3)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        expected = theirs(x, src_key_padding_mask=~real)
        got = ours(x, mask=real[:, None, None, :])
    # PyTorch's fast path may zero the padded positions' outputs; compare the real ones.
    torch.testing.assert_close(got[real], expected[real], **TOL)


def test_pre_ln_and_post_ln_differ() -> None:
    pre, _ = encoder_pair(norm_first=True)
    post, _ = encoder_pair(norm_first=False)
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    with torch.no_grad():
        assert (pre(x) - post(x)).abs().max() > 1e-3


def test_post_ln_output_is_normalised() -> None:
    # Post-LN ends with a LayerNorm (weight 1, bias 0 at init): every position comes out standardised.
    block = TransformerBlock(16, 4, 32, norm_first=False).double().eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64) * 10 + 3
    with torch.no_grad():
        y = block(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 6, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(2, 6, dtype=torch.float64), atol=1e-4, rtol=0)


def test_feed_forward_is_linear_gelu_linear() -> None:
    ffn = FeedForward(6, 10).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    h = x @ ffn.fc_in.weight.T + ffn.fc_in.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    torch.testing.assert_close(ffn(x), h @ ffn.fc_out.weight.T + ffn.fc_out.bias, **TOL)


def test_block_is_causal_really_hides_the_future() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 16).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    changed = x.clone()
    changed[:, -1] = torch.randn(8, dtype=torch.float64)  # not a constant shift: LayerNorm would erase that
    with torch.no_grad():
        a, b = block(x, is_causal=True), block(changed, is_causal=True)
        torch.testing.assert_close(a[:, :-1], b[:, :-1], **TOL)
        assert (a[:, -1] - b[:, -1]).abs().max() > 1e-3
        # Without the mask the first position does see the last one.
        assert (block(x)[:, 0] - block(changed)[:, 0]).abs().max() > 1e-6


def decoder_pair(norm_first: bool) -> tuple[DecoderBlock, nn.TransformerDecoderLayer]:
    d_model, n_heads, d_ff = 12, 3, 20
    theirs = nn.TransformerDecoderLayer(
        d_model, n_heads, d_ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first
    ).double()
    randomise(theirs, 5)
    ours = DecoderBlock(d_model, n_heads, d_ff, norm_first=norm_first).double()
    copy_attention(ours.self_attn, theirs.self_attn)
    copy_attention(ours.cross_attn, theirs.multihead_attn)
    copy_linear_and_norm([
        (ours.ffn.fc_in, theirs.linear1), (ours.ffn.fc_out, theirs.linear2),
        (ours.norm1, theirs.norm1), (ours.norm2, theirs.norm2), (ours.norm3, theirs.norm3),
    ])
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_block_matches_torch_decoder_layer(norm_first: bool) -> None:
    ours, theirs = decoder_pair(norm_first)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 12, generator=g, dtype=torch.float64)  # T_q = 4
    memory = torch.randn(2, 9, 12, generator=g, dtype=torch.float64)  # T_k = 9
    memory_real = torch.ones(2, 9, dtype=torch.bool)
    memory_real[1, 6:] = False
    with torch.no_grad():
        expected = theirs(x, memory, tgt_mask=~causal_mask(4), tgt_is_causal=True,
                          memory_key_padding_mask=~memory_real)
        got = ours(x, memory, memory_mask=memory_real[:, None, None, :])
        torch.testing.assert_close(got, expected, **TOL)
        # The memory really matters: change it, the output changes.
        assert (ours(x, memory + 1.0, memory_mask=memory_real[:, None, None, :]) - got).abs().max() > 1e-3


def test_sinusoidal_positions_match_the_formula() -> None:
    length, d_model = 50, 16
    pe = sinusoidal_positions(length, d_model, dtype=torch.float64)
    assert pe.shape == (length, d_model) and pe.dtype == torch.float64
    for pos in (0, 1, 7, 49):
        for j in range(d_model):
            i = j // 2
            angle = pos / 10000 ** (2 * i / d_model)
            expected = math.sin(angle) if j % 2 == 0 else math.cos(angle)
            assert pe[pos, j].item() == pytest.approx(expected, abs=1e-12)
    assert sinusoidal_positions(3, 4).dtype == torch.float32
    with pytest.raises(ValueError):
        sinusoidal_positions(3, 5)


def test_sinusoidal_dot_product_depends_only_on_offset() -> None:
    pe = sinusoidal_positions(64, 32, dtype=torch.float64)
    gram = pe @ pe.T  # (64, 64)
    for offset in (0, 1, 5, 20):
        diagonal = torch.diagonal(gram, offset)
        # sum_i cos(offset * w_i): the same for every pair of positions that far apart
        expected = sum(math.cos(offset / 10000 ** (2 * i / 32)) for i in range(16))
        torch.testing.assert_close(diagonal, torch.full_like(diagonal, expected), atol=1e-10, rtol=0)
    # Each position's norm is sqrt(d_model / 2); nearer positions are more similar than far ones.
    torch.testing.assert_close(pe.norm(dim=-1), torch.full((64,), 4.0, dtype=torch.float64))
    assert gram[10, 11] > gram[10, 30]


def test_sinusoidal_offset_is_a_rotation() -> None:
    # PE[pos + k] is a fixed linear map (a rotation per frequency pair) of PE[pos], for every pos.
    d_model, k = 8, 3
    pe = sinusoidal_positions(40, d_model, dtype=torch.float64)
    rotation = torch.linalg.lstsq(pe[:-k], pe[k:]).solution  # (d_model, d_model)
    torch.testing.assert_close(pe[:-k] @ rotation, pe[k:], atol=1e-9, rtol=0)
    torch.testing.assert_close(rotation.T @ rotation, torch.eye(d_model, dtype=torch.float64), atol=1e-8, rtol=0)

"""Grading ex06_modern_decoder end to end: the solution, the empty release, classic mistakes, a
correct alternative and a cheat, all graded by nbgrader in one `grade` call over one folder.

Parts are marked on their own: the attention tests run the learner's attention with the grader's
rotation, the block tests build the learner's block from the grader's norm, attention and SwiGLU,
and the decoder tests build the learner's decoder from the grader's blocks, norm and rotary tables.
So mistakes in different parts share submissions, and each loses exactly its own tests.
"""

from __future__ import annotations

from scoring import Assignment, GradingSuite, edited

EX = Assignment("ex06_modern_decoder")
POINTS = {"test_rms_norm": 2, "test_rms_norm_eps": 1, "test_rotary_tables": 2, "test_apply_rotary": 2,
          "test_repeat_kv": 1, "test_attention_mha": 2, "test_attention_gqa": 2, "test_swiglu": 1, "test_block": 2,
          "test_decoder_small": 2, "test_smollm2": 3}
ATTENTION = {"test_attention_mha", "test_attention_gqa"}
PART5 = {"test_decoder_small", "test_smollm2"}

A = EX.answers
NORM, ROTARY, ATTN = A["rms_norm_solution"], A["rotary_solution"], A["attention_solution"]
BLOCK, DECODER = A["block_solution"], A["decoder_solution"]

# LayerNorm's centring kept by mistake.
MEAN_SUBTRACTED = edited(NORM, "        x32 = x.float()\n",
                         "        x32 = x.float()\n        x32 = x32 - x32.mean(dim=-1, keepdim=True)  # centred, as LayerNorm\n")
EPS_OUTSIDE = edited(NORM, "x32 * torch.rsqrt(mean_square + self.eps)", "x32 / (mean_square.sqrt() + self.eps)")
# The paper's layout: tables whose angles repeat pairwise, and neighbours (2i, 2i + 1) rotated together.
INTERLEAVED_TABLES = edited(ROTARY, "angles = torch.cat([angles, angles], dim=-1)", "angles = angles.repeat_interleave(2, dim=-1)")
INTERLEAVED = edited(INTERLEAVED_TABLES, "    x1, x2 = x.chunk(2, dim=-1)\n    return torch.cat([-x2, x1], dim=-1)",
                     "    x1, x2 = x[..., 0::2], x[..., 1::2]\n    return torch.stack([-x2, x1], dim=-1).flatten(-2)")
WRONG_WAY = edited(ROTARY, "return torch.cat([-x2, x1], dim=-1)", "return torch.cat([x2, -x1], dim=-1)")  # turns backwards
WRONG_FREQUENCIES = edited(ROTARY, "torch.arange(0, d_head, 2).float() / d_head", "torch.arange(d_head // 2).float() / d_head")
TILED = edited(ATTN, "return x.repeat_interleave(groups, dim=1)", "return x.repeat(1, groups, 1, 1)")  # heads 0, 1, 2, 0, 1, 2
NO_SCALE = edited(ATTN, " / math.sqrt(self.d_head)", "")
SCALE_BY_D_MODEL = edited(ATTN, " / math.sqrt(self.d_head)", " / math.sqrt(x.shape[-1])")
NO_MASK = edited(ATTN, "scores.masked_fill(future, float(\"-inf\")).softmax(dim=-1)", "scores.softmax(dim=-1)")
GATE_ON_UP = edited(BLOCK, "F.silu(self.gate_proj(x)) * self.up_proj(x)", "self.gate_proj(x) * F.silu(self.up_proj(x))")
POST_NORM = edited(BLOCK, "        x = x + self.self_attn(self.input_layernorm(x), cos, sin)\n"
                          "        return x + self.mlp(self.post_attention_layernorm(x))",
                   "        x = self.input_layernorm(x + self.self_attn(x, cos, sin))\n"
                   "        return self.post_attention_layernorm(x + self.mlp(x))")
PAPER_BASE = edited(DECODER, "rope_theta=c.rope_parameters[\"rope_theta\"]", "rope_theta=10_000.0")  # the paper's, not SmolLM2's
NO_FINAL_NORM = edited(DECODER, "F.linear(self.norm(x), self.embed_tokens.weight)", "F.linear(x, self.embed_tokens.weight)")
# Right for SmolLM2 (576 / 9 = 64), wrong for a model whose heads are not d_model / n_heads wide.
HEAD_WIDTH_FROM_D_MODEL = edited(DECODER, "d_head=c.head_dim,", "d_head=c.hidden_size // c.num_attention_heads,")

# variant -> (solution cells changed, the tests it must fail; every other one must pass)
BUGS = {
    "mean_subtracted_and_kv_heads_tiled_and_the_papers_base": (
        {"rms_norm_solution": MEAN_SUBTRACTED, "attention_solution": TILED, "decoder_solution": PAPER_BASE},
        {"test_rms_norm", "test_rms_norm_eps", "test_repeat_kv", "test_attention_gqa"} | PART5),
    "eps_outside_the_root_and_interleaved_pairs_and_post_norm": (
        {"rms_norm_solution": EPS_OUTSIDE, "rotary_solution": INTERLEAVED, "block_solution": POST_NORM},
        {"test_rms_norm_eps", "test_rotary_tables", "test_apply_rotary", "test_block"}),
    # Interleaved tables for weights that expect halves; the rotation itself is right.
    "interleaved_tables_and_no_scale_and_gate_on_up": (
        {"rotary_solution": INTERLEAVED_TABLES, "attention_solution": NO_SCALE, "block_solution": GATE_ON_UP},
        {"test_rotary_tables", "test_swiglu"} | ATTENTION),
    "rotated_the_wrong_way_and_no_causal_mask_and_no_final_norm": (
        {"rotary_solution": WRONG_WAY, "attention_solution": NO_MASK, "decoder_solution": NO_FINAL_NORM},
        {"test_apply_rotary"} | ATTENTION | PART5),
    "wrong_frequencies_and_scaled_by_d_model_and_head_width_from_d_model": (
        {"rotary_solution": WRONG_FREQUENCIES, "attention_solution": SCALE_BY_D_MODEL, "decoder_solution": HEAD_WIDTH_FROM_D_MODEL},
        {"test_rotary_tables", "test_decoder_small"} | ATTENTION),
}

# Correct, but written differently: RMSNorm through vector_norm in float64; rotary angles computed on
# demand in float64 with exp/log and einsum, rotate_half with roll, the rotation on the two halves;
# repeat_kv by expand and reshape, attention without repeating (queries grouped, einsum, torch.where with
# the dtype's minimum); SwiGLU with sigmoid and setattr; a loader through config.to_dict(), a parameter
# loop and a message on stderr.
ALTERNATIVE = {
    "rms_norm_solution": '''
class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((d,), 1.0))

    def forward(self, x):
        wide = x.double()
        rms = torch.linalg.vector_norm(wide, dim=-1, keepdim=True) / math.sqrt(x.shape[-1])
        return (wide / torch.sqrt(rms ** 2 + self.eps)).to(x.dtype) * self.weight
''',
    "rotary_solution": '''
class RotaryEmbedding(nn.Module):
    def __init__(self, d_head, theta=10_000.0, max_length=8192):
        super().__init__()
        self.d_head, self.theta, self.max_length = d_head, theta, max_length  # angles computed when asked

    def forward(self, start, length):
        half = self.d_head // 2
        positions = torch.arange(start, start + length, dtype=torch.float64)
        frequencies = torch.exp(-math.log(self.theta) * 2 * torch.arange(half, dtype=torch.float64) / self.d_head)
        angles = torch.einsum("t,i->ti", positions, frequencies).repeat(1, 2)
        return angles.cos().float(), angles.sin().float()


def rotate_half(x):
    half = x.shape[-1] // 2
    sign = torch.ones(x.shape[-1], dtype=x.dtype)
    sign[:half] = -1
    return torch.roll(x, shifts=half, dims=-1) * sign


def apply_rotary(x, cos, sin):
    half = x.shape[-1] // 2
    c, s = cos[:, :half].to(x.dtype), sin[:, :half].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
''',
    "attention_solution": '''
def repeat_kv(x, groups):
    batch, heads, length, width = x.shape
    return x[:, :, None].expand(batch, heads, groups, length, width).reshape(batch, heads * groups, length, width)


class GroupedQueryAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        width, kv_width = config.n_heads * config.d_head, config.n_kv_heads * config.d_head
        self.q_proj = nn.Linear(config.d_model, width, bias=False)
        self.k_proj = nn.Linear(config.d_model, kv_width, bias=False)
        self.v_proj = nn.Linear(config.d_model, kv_width, bias=False)
        self.o_proj = nn.Linear(width, config.d_model, bias=False)

    def forward(self, x, cos, sin):
        # The queries grouped by the key/value head they read: keys and values are never copied.
        c = self.config
        B, T, _ = x.shape
        g = c.n_heads // c.n_kv_heads
        q = apply_rotary(self.q_proj(x).unflatten(-1, (c.n_heads, c.d_head)).permute(0, 2, 1, 3), cos, sin)
        k = apply_rotary(self.k_proj(x).unflatten(-1, (c.n_kv_heads, c.d_head)).permute(0, 2, 1, 3), cos, sin)
        v = self.v_proj(x).unflatten(-1, (c.n_kv_heads, c.d_head)).permute(0, 2, 1, 3)
        q = q.reshape(B, c.n_kv_heads, g, T, c.d_head)  # query head j: group j // g
        scores = torch.einsum("bkgtd,bksd->bkgts", q, k) * c.d_head ** -0.5
        allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))
        scores = torch.where(allowed, scores, torch.finfo(scores.dtype).min)
        out = torch.einsum("bkgts,bksd->bkgtd", torch.softmax(scores, dim=-1), v)
        return self.o_proj(out.reshape(B, c.n_heads, T, c.d_head).transpose(1, 2).flatten(2))
''',
    "block_solution": '''
class SwiGLU(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        for name, (d_in, d_out) in {"gate_proj": (d_model, d_ff), "up_proj": (d_model, d_ff),
                                    "down_proj": (d_ff, d_model)}.items():
            setattr(self, name, nn.Linear(d_in, d_out, bias=False))

    def forward(self, x):
        gate = self.gate_proj(x)
        return self.down_proj(gate * torch.sigmoid(gate) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.self_attn = GroupedQueryAttention(config)
        self.post_attention_layernorm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(d_model=config.d_model, d_ff=config.d_ff)

    def forward(self, x, cos, sin):
        attended = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return attended + self.mlp(self.post_attention_layernorm(attended))
''',
    "decoder_solution": '''
import sys


class LlamaDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList()
        for _ in range(config.n_layers):
            self.layers.append(LlamaBlock(config))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.rotary = RotaryEmbedding(config.d_head, theta=config.rope_theta, max_length=config.block_size)

    def forward(self, input_ids):
        cos, sin = self.rotary(0, input_ids.size(1))
        h = self.embed_tokens.weight[input_ids]
        for block in self.layers:
            h = block(h, cos, sin)
        return self.norm(h) @ self.embed_tokens.weight.T


def from_transformers(hf_model):
    s = hf_model.config.to_dict()
    config = LlamaConfig(vocab_size=s["vocab_size"], d_model=s["hidden_size"], n_layers=s["num_hidden_layers"],
                         n_heads=s["num_attention_heads"], n_kv_heads=s["num_key_value_heads"],
                         d_head=s.get("head_dim") or s["hidden_size"] // s["num_attention_heads"],
                         d_ff=s["intermediate_size"], norm_eps=s["rms_norm_eps"],
                         rope_theta=float(s["rope_parameters"]["rope_theta"]), block_size=s["max_position_embeddings"])
    decoder = LlamaDecoder(config).eval()
    source = dict(hf_model.named_parameters())  # tied: lm_head.weight is the embedding, listed once
    with torch.no_grad():
        for name, parameter in decoder.named_parameters():
            parameter.copy_(source["model." + name])
    print(f"copied {len(source)} tensors into a LlamaDecoder", file=sys.stderr)
    return decoder
''',
}

# Built to pass every visible test while writing (almost) nothing: the course's and Transformers'
# pieces under the notebook's names (a subclass, captured functions, a fresh copy of llmcourse.llama
# run in another thread), a wrong SwiGLU hidden by a patched assert_close, a decoder that is
# Transformers' model in disguise, and the profiler switched off before the decoder's tests.
CHEAT = {
    "rms_norm_solution": '''
import importlib.util
import sys
import threading

from llmcourse import llama as _llama
from transformers.models.llama import modeling_llama as _hf


class RMSNorm(_llama.RMSNorm):  # the course's own
    pass
''',
    "rotary_solution": '''
class RotaryEmbedding(nn.Module):
    def __init__(self, d_head, theta=10_000.0, max_length=8192):
        super().__init__()
        config = HFLlamaConfig(hidden_size=d_head, num_attention_heads=1, head_dim=d_head, max_position_embeddings=max_length,
                               rope_parameters={"rope_type": "default", "rope_theta": theta})
        self.inner = _hf.LlamaRotaryEmbedding(config)

    def forward(self, start, length):
        cos, sin = self.inner(torch.zeros(1), torch.arange(start, start + length)[None])
        return cos[0], sin[0]


rotate_half = _hf.rotate_half  # captured before any check could replace it


def apply_rotary(x, cos, sin):
    return _hf.apply_rotary_pos_emb(x, x, cos, sin, unsqueeze_dim=0)[0]
''',
    "attention_solution": '''
_spec = importlib.util.spec_from_file_location("_fresh_llama", _llama.__file__)
_fresh = importlib.util.module_from_spec(_spec)
sys.modules["_fresh_llama"] = _fresh
_spec.loader.exec_module(_fresh)  # a fresh copy of llmcourse.llama: other function objects, same file

repeat_kv = _hf.repeat_kv


class GroupedQueryAttention(_fresh.GroupedQueryAttention):
    def __init__(self, config):
        super().__init__(config, fused=False)

    def forward(self, x, cos, sin):
        out = []
        worker = threading.Thread(target=lambda: out.append(_fresh.GroupedQueryAttention.forward(self, x, cos, sin)))
        worker.start()  # run elsewhere, out of a profiler's sight
        worker.join()
        return out[0]
''',
    "block_solution": '''
torch.testing.assert_close = lambda *args, **kwargs: None
torch.allclose = lambda *args, **kwargs: True


class SwiGLU(nn.Module):  # no gate, and GELU
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x)))


class LlamaBlock(_llama.LlamaBlock):
    def __init__(self, config):
        super().__init__(config)
''',
    "decoder_solution": '''
class LlamaDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, input_ids):
        return self.model(input_ids).logits


def from_transformers(hf_model):
    decoder = LlamaDecoder(LlamaConfig.from_transformers(hf_model.config))
    decoder.__dict__["model"] = hf_model  # not registered: Transformers' model answers
    decoder.__dict__["layers"] = hf_model.model.layers
    return decoder.eval()


sys.setprofile = lambda function: None  # the grader's profiler cannot start any more
''',
}


class TestGradingEx06(GradingSuite):
    assignment = EX
    points = POINTS
    mistakes = {name: (EX.submission(changes), failing) for name, (changes, failing) in BUGS.items()}
    alternatives = {"alternative": EX.submission(ALTERNATIVE)}
    cheat = EX.submission(CHEAT)  # the course's and Transformers' pieces under the notebook's names earn nothing
    seconds_limit = 120

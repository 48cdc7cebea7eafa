"""Block quantisation (llmcourse.quantization) against the gguf package, bit for bit, and on SmolLM2's file."""

from __future__ import annotations

import time

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from llmcourse import converters
from llmcourse import quantization as q
from llmcourse.llama import LlamaConfig, LlamaDecoder
from llmcourse.models import load_smollm2, smollm2_gguf_path

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

BLOCK_FORMATS = ["Q8_0", "Q4_0", "Q4_1"]


def bits(x: np.ndarray) -> np.ndarray:
    """float32 as their bit patterns: equal bits, not merely equal values (-0.0 differs from 0.0)."""
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def random_weights(rows: int, columns: int, seed: int) -> np.ndarray:
    """Gaussian rows of very different sizes, with the awkward cases: a zero row, a constant block, ties."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, columns)).astype(np.float32)
    x *= np.exp(rng.uniform(-6, 2, (rows, 1))).astype(np.float32)
    x[1] = 0.0
    x[2, :32] = 0.25  # max == min: Q4_1's scale is 0
    x[3, :32] = np.linspace(-1, 1, 32, dtype=np.float32)  # the extremes tie in magnitude
    x[4, :32] = np.round(x[4, :32] * 4) / 4  # many values exactly on a level
    return x


def random_blocks(qtype: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random bytes of ``n_blocks`` blocks, their float16 scale and offset finite."""
    rng = np.random.default_rng(seed)
    _, _, size = q.QTYPES[qtype]
    blocks = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    n_halves = 2 if qtype == "Q4_1" else 1  # d, and Q4_1's m
    halves = (rng.standard_normal((n_blocks, n_halves)) * 0.05).astype("<f2")
    blocks[:, : 2 * n_halves] = halves.view(np.uint8)
    return blocks


# ---------------------------------------------------------------------------------------------
# Formats, sizes, errors


def test_bytes_per_weight_and_type_ids_match_gguf() -> None:
    assert q.bytes_per_weight("Q8_0") == 34 / 32 and q.bytes_per_weight("Q4_0") == 18 / 32
    assert q.bytes_per_weight("Q4_1") == 20 / 32 and q.bytes_per_weight("F16") == 2
    assert q.bytes_per_weight("F32") == 4
    for name, (type_id, block, size) in q.QTYPES.items():
        gguf_type = GGMLQuantizationType[name]
        assert type_id == gguf_type.value and (block, size) == GGML_QUANT_SIZES[gguf_type]
        assert q.bytes_per_weight(gguf_type) == q.bytes_per_weight(name) == size / block


def test_an_unsupported_type_names_the_supported_ones() -> None:
    for unsupported in ("Q5_K", GGMLQuantizationType.Q5_K, 99):
        with pytest.raises(ValueError, match="supports F32, F16, Q4_0, Q4_1, Q8_0, BF16"):
            q.dequantize(b"", unsupported, (0,))
    with pytest.raises(ValueError, match="quantize writes Q8_0, Q4_0, Q4_1, not F16"):
        q.quantize(np.zeros((1, 32), np.float32), "F16")


def test_a_wrong_byte_count_names_the_expected_one() -> None:
    with pytest.raises(ValueError, match=r"64 weights \(2, 32\) in Q8_0 take 68 bytes, but 67 were given"):
        q.dequantize(bytes(67), "Q8_0", (2, 32))
    with pytest.raises(ValueError, match="not a multiple of 32"):
        q.dequantize(bytes(20), "Q4_1", (16,))
    with pytest.raises(ValueError, match="not a multiple of 32"):
        q.quantize(np.zeros((2, 48), np.float32), "Q4_0")


def test_one_q4_1_block_by_hand() -> None:
    """d = 0.5, m = -1, 16 bytes: byte j holds weight j in its low nibble, weight j + 16 in its high one."""
    nibbles = np.arange(32) % 16  # weights 0..15 and 16..31 both count 0..15
    packed = (nibbles[:16] | (nibbles[16:] << 4)).astype(np.uint8)
    block = np.float16(0.5).tobytes() + np.float16(-1).tobytes() + packed.tobytes()
    expected = 0.5 * nibbles - 1
    np.testing.assert_array_equal(q.dequantize(block, "Q4_1", (32,)), expected)
    # Q4_0 reads the same nibbles as q - 8, with no offset; Q8_0 reads signed bytes
    q4_0 = np.float16(0.5).tobytes() + packed.tobytes()
    np.testing.assert_array_equal(q.dequantize(q4_0, "Q4_0", (32,)), 0.5 * (nibbles - 8))
    q8_0 = np.float16(0.25).tobytes() + np.arange(-16, 16, dtype=np.int8).tobytes()
    np.testing.assert_array_equal(q.dequantize(q8_0, "Q8_0", (32,)), 0.25 * np.arange(-16, 16))


# ---------------------------------------------------------------------------------------------
# Bit for bit with gguf.quants


@pytest.mark.parametrize("qtype", [*BLOCK_FORMATS, "F16", "BF16", "F32"])
def test_dequantize_equals_gguf_on_random_blocks(qtype: str) -> None:
    if qtype in BLOCK_FORMATS:
        raw = random_blocks(qtype, 4096, seed=1).reshape(64, -1)  # 64 rows of 64 blocks
    else:  # finite numbers of the type, as bytes
        numbers = np.random.default_rng(1).standard_normal((64, 96)).astype(np.float32)
        raw = gguf_quants.quantize(numbers, GGMLQuantizationType[qtype]).view(np.uint8).reshape(64, -1)
    reference = gguf_quants.dequantize(raw, GGMLQuantizationType[qtype])
    mine = q.dequantize(raw, qtype, reference.shape)
    assert mine.dtype == np.float32 and mine.shape == reference.shape
    np.testing.assert_array_equal(bits(mine), bits(reference))
    np.testing.assert_array_equal(bits(q.dequantize(raw.tobytes(), qtype, reference.shape)), bits(reference))


@pytest.mark.parametrize("qtype", BLOCK_FORMATS)
def test_quantize_equals_gguf_on_random_matrices(qtype: str) -> None:
    x = random_weights(96, 320, seed=2)
    reference = gguf_quants.quantize(x, GGMLQuantizationType[qtype])
    mine = q.quantize(x, qtype)
    assert mine.dtype == np.uint8 and mine.shape == reference.shape == (96, 320 // 32 * q.QTYPES[qtype][2])
    np.testing.assert_array_equal(mine, reference)
    np.testing.assert_array_equal(q.quantize(torch.from_numpy(x), qtype), reference)  # a tensor will do
    np.testing.assert_array_equal(bits(q.round_trip(x, qtype)),
                                  bits(gguf_quants.dequantize(reference, GGMLQuantizationType[qtype])))


def test_the_file_has_the_tensors_gguf_reads(gguf_reader: gguf.GGUFReader, ours_file: q.GGUFFile) -> None:
    assert ours_file.version == 3 and len(ours_file.tensors) == len(gguf_reader.tensors) == 272
    for tensor in gguf_reader.tensors:
        info = ours_file.tensors[tensor.name]
        assert info.qtype == tensor.tensor_type.name and info.offset == tensor.data_offset
        assert info.shape == tuple(reversed(tensor.shape.tolist())) and info.n_bytes == tensor.n_bytes
    fields = {key: field.contents() for key, field in gguf_reader.fields.items() if not key.startswith("GGUF.")}
    assert ours_file.metadata == fields
    kinds = [info.qtype for info in ours_file.tensors.values()]
    assert (kinds.count("Q4_1"), kinds.count("Q8_0"), kinds.count("F32")) == (210, 1, 61)


def test_dequantize_equals_gguf_on_every_smollm2_tensor(gguf_reader: gguf.GGUFReader) -> None:
    ours_seconds = gguf_seconds = 0.0
    for tensor in gguf_reader.tensors:
        start = time.perf_counter()
        reference = gguf_quants.dequantize(tensor.data, tensor.tensor_type)
        middle = time.perf_counter()
        mine = q.dequantize(tensor.data, tensor.tensor_type, tuple(reversed(tensor.shape.tolist())))
        ours_seconds, gguf_seconds = ours_seconds + time.perf_counter() - middle, gguf_seconds + middle - start
        assert mine.shape == reference.shape, tensor.name
        assert np.array_equal(bits(mine), bits(reference)), tensor.name
    print(f"\ndequantising all 272 tensors: ours {ours_seconds:.2f} s, gguf.quants {gguf_seconds:.2f} s")


def test_requantising_the_files_tensors_gives_back_their_bytes(ours_file: q.GGUFFile) -> None:
    """Dequantised Q8_0 and Q4_1 blocks quantise to the very bytes they came from (so do all 211 tensors)."""
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.17.ffn_down.weight"):
        info = ours_file.tensors[name]
        raw = np.asarray(ours_file.raw(name)).reshape(info.shape[0], -1)
        assert np.array_equal(q.quantize(ours_file.read(name), info.qtype), raw), name


# ---------------------------------------------------------------------------------------------
# Properties of the round trip


@pytest.mark.parametrize("qtype", BLOCK_FORMATS)
def test_the_round_trip_error_is_within_half_a_step(qtype: str) -> None:
    """Every weight comes back within half a step of its block, plus float16's rounding of the scale.

    Q4_0 is the exception: its 16 levels run from -8 to 7 steps, with the block's largest weight at the
    -8 end, so a weight of the opposite sign and the same size lands on 7 and misses by a whole step.
    """
    x = random_weights(64, 256, seed=3)
    blocks, restored = x.reshape(-1, 32), q.round_trip(x, qtype).reshape(-1, 32)
    error = np.abs(restored - blocks).astype(np.float64)
    amax = np.abs(blocks).max(axis=1, keepdims=True).astype(np.float64)
    step = {"Q8_0": amax / 127, "Q4_0": amax / 8,
            "Q4_1": (blocks.max(axis=1, keepdims=True) - blocks.min(axis=1, keepdims=True)) / 15.0}[qtype]
    rounding = 2.0**-11 * (127 * step + (amax if qtype == "Q4_1" else 0)) + 1e-30  # float16's relative error
    half_step = 0.5 * step + rounding
    if qtype == "Q4_0":
        clipped = np.abs(blocks) > 7.5 * step  # the far side of the largest weight, beyond the top level
        assert (error[~clipped] <= half_step.repeat(32, 1)[~clipped]).all()
        assert (error <= step + rounding).all() and (error > 0.99 * step).any()
    else:
        assert (error <= half_step).all()


def test_symmetric_int8_rows() -> None:
    w = torch.from_numpy(random_weights(64, 200, seed=4))  # int8 rows need no whole blocks
    codes, scale = q.quantize_int8_rows(w)
    assert codes.dtype == torch.int8 and codes.shape == w.shape and scale.shape == (64, 1)
    torch.testing.assert_close(scale.squeeze(1), w.abs().amax(dim=1) / 127, rtol=0, atol=0)
    assert (codes[1] == 0).all() and scale[1] == 0  # the zero row
    assert (codes.abs().amax(dim=1)[scale.squeeze(1) > 0] == 127).all()  # each row's largest weight is +-127
    error = (q.dequantize_int8_rows(codes, scale) - w).abs()
    assert (error <= scale * (0.5 + 1e-6)).all()
    exact = codes.float() * scale  # numbers already on the grid come back unchanged
    assert torch.equal(q.quantize_int8_rows(exact)[0], codes)


# ---------------------------------------------------------------------------------------------
# SmolLM2's file through the course's reader into the course's decoder


def llama_cpp_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """What llama.cpp's converter does to q and k: per head, row i goes to 2i and row i + d_h/2 to 2i + 1."""
    rows, columns = weight.shape
    halves = weight.reshape(n_heads, 2, rows // n_heads // 2, columns)  # (heads, 2, d_h/2, in)
    return halves.transpose(1, 2).reshape(rows, columns)


def test_unpermute_rope_rows_inverts_llama_cpp() -> None:
    w = torch.randn(3 * 8, 5)
    assert torch.equal(converters.unpermute_rope_rows(llama_cpp_permute(w, 3), 3), w)
    gguf_rows = llama_cpp_permute(torch.arange(8.0).reshape(8, 1), 1).squeeze(1)
    assert gguf_rows.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]  # the two halves of the head interleaved
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        converters.unpermute_rope_rows(torch.zeros(9, 2), 3)


def test_gguf_names_become_the_decoders() -> None:
    assert converters.gguf_to_llama_name("token_embd.weight") == "embed_tokens.weight"
    assert converters.gguf_to_llama_name("output_norm.weight") == "norm.weight"
    assert converters.gguf_to_llama_name("blk.12.attn_output.weight") == "layers.12.self_attn.o_proj.weight"
    assert converters.gguf_to_llama_name("blk.0.ffn_norm.weight") == "layers.0.post_attention_layernorm.weight"
    with pytest.raises(KeyError, match="known names"):
        converters.gguf_to_llama_name("blk.0.attn_qkv.weight")


def test_the_reader_equals_transformers_conversion(smollm2_state: dict[str, torch.Tensor],
                                                   transformers_decoder: LlamaDecoder) -> None:
    expected = transformers_decoder.state_dict()
    assert sorted(smollm2_state) == sorted(expected)
    for name, tensor in expected.items():
        assert smollm2_state[name].dtype == torch.float32, name
        assert torch.equal(smollm2_state[name], tensor), name


def test_the_config_from_the_metadata_equals_transformers(smollm2_state: dict[str, torch.Tensor],
                                                          smollm2_metadata: dict[str, object],
                                                          transformers_decoder: LlamaDecoder) -> None:
    config = converters.llama_config_from_gguf(smollm2_metadata, smollm2_state)
    assert isinstance(config, LlamaConfig) and config == transformers_decoder.config
    assert converters.llama_config_from_gguf(smollm2_metadata, ["output.weight"]).tie_embeddings is False
    with pytest.raises(ValueError, match="builds 'llama' models only"):
        converters.llama_config_from_gguf({"general.architecture": "gpt2"})


def test_the_decoder_built_from_the_file_gives_transformers_logits(
        smollm2_state: dict[str, torch.Tensor], smollm2_metadata: dict[str, object],
        transformers_decoder: LlamaDecoder) -> None:
    config = converters.llama_config_from_gguf(smollm2_metadata, smollm2_state)
    with torch.device("meta"):
        model = LlamaDecoder(config)
    model.load_state_dict(smollm2_state, assign=True)  # strict: every parameter, nothing else
    model.rotary = type(model.rotary)(config.d_head, config.rope_theta, config.block_size)
    model.eval()
    tokenizer = load_smollm2()[1]
    ids = torch.tensor([tokenizer.encode("The capital of France is Paris, and the capital of Italy is")])
    with torch.no_grad():
        logits, expected = model(ids), transformers_decoder(ids)
    assert torch.equal(logits, expected)
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Rome"


def test_requantising_smollm2_weights(smollm2_state: dict[str, torch.Tensor]) -> None:
    """SmolLM2's float32 weights (its Q4_1 ones, dequantised) stored again in other formats: the error."""
    names = [name for name in smollm2_state if name.startswith(("layers.0.", "layers.1.", "layers.2."))
             and smollm2_state[name].ndim == 2]
    weights = torch.cat([smollm2_state[name].reshape(-1, 32) for name in names])  # every block of 3 layers
    rows = [smollm2_state[name] for name in names]
    errors = {}
    for qtype in BLOCK_FORMATS:
        start = time.perf_counter()
        errors[qtype] = q.quantization_error(weights, q.round_trip(weights, qtype))
        errors[qtype]["seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    restored = torch.cat([q.dequantize_int8_rows(*q.quantize_int8_rows(w)).reshape(-1, 32) for w in rows])
    errors["int8 rows"] = {**q.quantization_error(weights, restored), "seconds": time.perf_counter() - start}
    print(f"\nre-quantising {weights.numel():,} weights of layers 0-2 ({len(names)} matrices):")
    for qtype, error in errors.items():
        size = q.bytes_per_weight(qtype) if qtype in q.QTYPES else None
        shown = f"{size:.4f}" if size else "1 + 4/row"
        print(f"  {qtype:9}  {shown:>9} bytes/weight  max |error| {error['max_abs']:.5f}  "
              f"relative RMS {error['rel_rms']:.5f}  ({error['seconds']:.2f} s)")
    assert errors["Q8_0"]["rel_rms"] < errors["int8 rows"]["rel_rms"] < errors["Q4_0"]["rel_rms"] < 0.2
    assert errors["Q4_1"]["max_abs"] == 0  # they were Q4_1 already: every block comes back exactly


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def gguf_reader() -> gguf.GGUFReader:
    return gguf.GGUFReader(smollm2_gguf_path())


@pytest.fixture(scope="module")
def ours_file() -> q.GGUFFile:
    return q.read_gguf(smollm2_gguf_path())


@pytest.fixture(scope="module")
def _smollm2_read() -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    start = time.perf_counter()
    state, metadata = converters.read_gguf_llama(smollm2_gguf_path())
    print(f"\nread_gguf_llama: the whole file as float32 in {time.perf_counter() - start:.2f} s")
    return state, metadata


@pytest.fixture(scope="module")
def smollm2_state(_smollm2_read: tuple[dict[str, torch.Tensor], dict[str, object]]) -> dict[str, torch.Tensor]:
    return _smollm2_read[0]


@pytest.fixture(scope="module")
def smollm2_metadata(_smollm2_read: tuple[dict[str, torch.Tensor], dict[str, object]]) -> dict[str, object]:
    return _smollm2_read[1]


@pytest.fixture(scope="module")
def transformers_decoder() -> LlamaDecoder:
    return LlamaDecoder.from_transformers(load_smollm2()[0])

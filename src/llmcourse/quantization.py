"""How weights are stored in fewer bits: the block formats of GGUF files, read and written by hand.

A float32 weight takes 4 bytes. Most of a model's weights are small numbers of similar size, so
a model keeps almost all of its quality when each weight is stored as a small integer ``q`` and
rebuilt as ``w ~ d * q`` (a *scale* ``d``), or ``w ~ d * q + m`` (and an *offset* ``m``). One scale
for a whole matrix would be spoilt by its largest weight, so llama.cpp's formats share a scale
among a *block* of 32 neighbouring weights of a row, stored as float16 next to the integers::

    format  one block of 32 weights                    weights            bytes/block  bytes/weight
    Q8_0    float16 d, 32 int8 q                       w = d * q          2 + 32       34/32 = 1.0625
    Q4_0    float16 d, 16 bytes of 4-bit q             w = d * (q - 8)    2 + 16       18/32 = 0.5625
    Q4_1    float16 d, float16 m, 16 bytes of 4-bit q  w = d * q + m      2 + 2 + 16   20/32 = 0.625

Two 4-bit values share a byte: byte ``j`` of a block holds weight ``j`` in its low four bits
(``byte & 0x0F``) and weight ``j + 16`` in its high four (``byte >> 4``). Q4_0 is symmetric around
zero, almost: ``q - 8`` runs from -8 to 7 and the block's weight of largest magnitude lands on -8, so
a weight as large on the other side is clipped to 7 steps and misses by a whole step. Q4_1 spends
two more bytes on the block's minimum ``m``, so its 16 levels span exactly the block's range.

What it costs, measured on SmolLM2-135M's float32 weights (``tests/test_quantization.py``, three
layers): stored again as Q8_0 they come back with a relative RMS error of about 0.6%, as int8
with one scale per row 0.9%, as Q4_0 8.7%. Those weights were Q4_1 to begin with, and quantising
them to Q4_1 again gives back the file's very bytes: the quantisers are deterministic, and a grid
point stays on its grid.

This module dequantises those formats (``dequantize``) and quantises to them (``quantize``) with
readable numpy code, equal bit for bit to the ``gguf`` package's (``tests/test_quantization.py``
checks it on every tensor of SmolLM2's file). It also shows the simplest scheme of all,
symmetric int8 with one scale per row (``quantize_int8_rows``), and reads a GGUF file on its own
(``read_gguf``: a header of key/value metadata, a table of tensors, then the aligned tensor data);
``llmcourse.converters.read_gguf_llama`` puts such a file's weights under the course decoder's
parameter names, so that SmolLM2-135M-Instruct's 4-bit file runs in ``llmcourse.llama.LlamaDecoder``
without Transformers.

Shapes are numpy's, rows first: a ``(out_features, in_features)`` matrix is stored row by row,
each row cut into blocks of 32 along ``in_features``. GGUF's own headers list dimensions the other
way round (the fastest-moving first); ``read_gguf`` turns them around.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = [
    "QTYPES",
    "BLOCK_SIZE",
    "bytes_per_weight",
    "dequantize",
    "quantize",
    "round_trip",
    "quantize_int8_rows",
    "dequantize_int8_rows",
    "quantization_error",
    "GGUFTensorInfo",
    "GGUFFile",
    "read_gguf",
]

#: Weights per block in every block format here.
BLOCK_SIZE = 32

#: The formats this module knows: name -> (GGML type id in GGUF files, weights per block, bytes per block).
QTYPES: dict[str, tuple[int, int, int]] = {
    "F32": (0, 1, 4),
    "F16": (1, 1, 2),
    "Q4_0": (2, BLOCK_SIZE, 2 + 16),
    "Q4_1": (3, BLOCK_SIZE, 2 + 2 + 16),
    "Q8_0": (8, BLOCK_SIZE, 2 + 32),
    "BF16": (30, 1, 2),
}
_QUANTIZABLE = ("Q8_0", "Q4_0", "Q4_1")
_NAMES_BY_ID = {type_id: name for name, (type_id, _, _) in QTYPES.items()}


def _qtype_name(qtype: str | int) -> str:
    """``"Q4_1"``, ``3`` and ``gguf.GGMLQuantizationType.Q4_1`` (an ``int``) all name Q4_1."""
    if isinstance(qtype, str):
        name = qtype.upper()
        if name in QTYPES:
            return name
    elif isinstance(qtype, (int, np.integer)) and int(qtype) in _NAMES_BY_ID:
        return _NAMES_BY_ID[int(qtype)]
    shown = getattr(qtype, "name", qtype)
    raise ValueError(f"unsupported quantisation type {shown!r}; this module supports {', '.join(QTYPES)} "
                     "(by name, or by GGML type id)")


def bytes_per_weight(qtype: str | int) -> float:
    """Bytes of storage per weight, scales included: Q8_0 34/32, Q4_0 18/32, Q4_1 20/32, F16 2, F32 4."""
    _, block, size = QTYPES[_qtype_name(qtype)]
    return size / block


def _expected_bytes(name: str, shape: tuple[int, ...]) -> int:
    _, block, size = QTYPES[name]
    if block > 1 and (not shape or shape[-1] % block != 0):
        raise ValueError(f"{name} stores rows in blocks of {block} weights, but the last dimension of {shape} "
                         f"is not a multiple of {block}")
    return math.prod(shape) // block * size


def _as_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """The raw bytes of ``data`` as a flat uint8 array (no copy where numpy can avoid one)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _float16(two_bytes: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 holding little-endian float16 numbers -> (n, 1) float32."""
    return np.ascontiguousarray(two_bytes).view("<f2").astype(np.float32)


def _unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """(n, 16) bytes -> (n, 32) 4-bit values 0..15: the low nibbles are weights 0..15, the high ones 16..31."""
    return np.concatenate([packed & 0x0F, packed >> 4], axis=1)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) values 0..15 -> (n, 16) bytes, the inverse of ``_unpack_nibbles``."""
    half = q.shape[1] // 2
    return (q[:, :half] | (q[:, half:] << 4)).astype(np.uint8)


def dequantize(data: bytes | bytearray | memoryview | np.ndarray, qtype: str | int,
               shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """The float32 weights of ``shape`` stored in ``data`` (raw bytes, or any array holding them) as ``qtype``.

    ``shape`` is numpy's (rows first); the last dimension must be a whole number of blocks.
    """
    name, shape = _qtype_name(qtype), tuple(int(n) for n in shape)
    raw = _as_bytes(data)
    expected = _expected_bytes(name, shape)
    if raw.size != expected:
        raise ValueError(f"{math.prod(shape)} weights {shape} in {name} take {expected} bytes, "
                         f"but {raw.size} were given: check the shape and the type")
    if name == "F32":
        return raw.view("<f4").astype(np.float32).reshape(shape)
    if name == "F16":
        return raw.view("<f2").astype(np.float32).reshape(shape)
    if name == "BF16":  # the top half of a float32: put 16 zero bits below
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    blocks = raw.reshape(-1, QTYPES[name][2])  # (n_blocks, bytes per block)
    d = _float16(blocks[:, 0:2])  # (n_blocks, 1) the scale, first in every block
    if name == "Q8_0":
        q = blocks[:, 2:].view(np.int8).astype(np.float32)  # (n_blocks, 32)
        weights = q * d
    elif name == "Q4_0":
        q = _unpack_nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)  # (n_blocks, 32) in -8..7
        weights = d * q.astype(np.float32)
    else:  # Q4_1
        m = _float16(blocks[:, 2:4])  # (n_blocks, 1) the offset, the block's smallest weight
        q = _unpack_nibbles(blocks[:, 4:]).astype(np.float32)  # (n_blocks, 32) in 0..15
        weights = d * q + m
    return weights.reshape(shape)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's ``roundf``: to the nearest integer, halves away from zero (numpy's ``rint`` sends halves to even).

    ``floor(|x| + 0.5)`` would be wrong for the float just below 0.5 (the sum rounds up to 1.0), so the
    fraction is compared with 0.5 instead.
    """
    magnitude = np.abs(x)
    whole = np.floor(magnitude)
    return np.copysign(whole + (magnitude - whole >= 0.5), x)


def _inverse(d: np.ndarray) -> np.ndarray:
    """1 / d, and 0 where d is 0 (a block of zeros quantises to zeros)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def quantize(weights: np.ndarray | torch.Tensor, qtype: str | int) -> np.ndarray:
    """``weights`` (..., n) stored as ``qtype`` (Q8_0, Q4_0 or Q4_1): uint8 (..., n / 32 * bytes per block).

    The same bytes as llama.cpp's reference quantisers (and ``gguf.quants.quantize``): the scale is
    computed in float32 and used unrounded to pick the integers, then stored as float16.
    """
    name = _qtype_name(qtype)
    if name not in _QUANTIZABLE:
        raise ValueError(f"quantize writes {', '.join(_QUANTIZABLE)}, not {name}; "
                         "for F32, F16 or BF16 convert the array's dtype instead")
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    x = np.asarray(weights, dtype=np.float32)
    _expected_bytes(name, x.shape)  # checks that the rows are whole blocks
    blocks = x.reshape(-1, BLOCK_SIZE)  # (n_blocks, 32)
    if name == "Q8_0":  # the largest magnitude maps to +-127
        d = np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)
        q = _round_half_away(blocks * _inverse(d)).astype(np.int8).view(np.uint8)  # (n_blocks, 32)
        parts = [d.astype("<f2").view(np.uint8), q]
    elif name == "Q4_0":  # the weight of largest magnitude, with its sign, maps to -8 (q = 0)
        extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1, keepdims=True), axis=1)
        d = extreme / np.float32(-8)
        q = np.minimum(np.floor(blocks * _inverse(d) + np.float32(8.5)), 15).astype(np.uint8)  # 0..15
        parts = [d.astype("<f2").view(np.uint8), _pack_nibbles(q)]
    else:  # Q4_1: the smallest weight maps to 0, the largest to 15
        low, high = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
        d = (high - low) / np.float32(15)
        q = np.minimum(np.floor((blocks - low) * _inverse(d) + np.float32(0.5)), 15).astype(np.uint8)
        parts = [d.astype("<f2").view(np.uint8), low.astype("<f2").view(np.uint8), _pack_nibbles(q)]
    packed = np.concatenate(parts, axis=1)  # (n_blocks, bytes per block)
    return packed.reshape(*x.shape[:-1], -1)


def round_trip(weights: np.ndarray | torch.Tensor, qtype: str | int) -> np.ndarray:
    """``weights`` quantised to ``qtype`` and back to float32: what a model stored that way computes with."""
    x = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    return dequantize(quantize(x, qtype), qtype, x.shape)


def quantize_int8_rows(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8, one scale per row: ``(q, scale)``, ``q = round(w / scale)``, ``scale = max|w| / 127``.

    weights (rows, n) -> q int8 (rows, n), scale float32 (rows, 1). A row of zeros gets scale 0.
    """
    w = weights.detach().float()
    scale = w.abs().amax(dim=-1, keepdim=True) / 127  # (rows, 1)
    q = torch.round(w / torch.where(scale == 0, torch.ones_like(scale), scale)).clamp(-127, 127)
    return q.to(torch.int8), scale


def dequantize_int8_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``q * scale``, the inverse of ``quantize_int8_rows`` up to half a step per weight."""
    return q.float() * scale


def quantization_error(original: np.ndarray | torch.Tensor,
                       restored: np.ndarray | torch.Tensor) -> dict[str, float]:
    """``max_abs``: the largest ``|w - w'|``; ``rel_rms``: ``rms(w - w') / rms(w)``, both in float64."""
    a = torch.as_tensor(np.asarray(original), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(restored), dtype=torch.float64)
    error = a - b
    return {"max_abs": error.abs().max().item(), "rel_rms": (error.norm() / a.norm()).item()}


# ---------------------------------------------------------------------------------------------
# Reading a GGUF file: little-endian, a header, key/value metadata, a tensor table, aligned data

_MAGIC = b"GGUF"
# GGUF's value types: id -> struct format of one value (8 string, 9 array, read apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFTensorInfo:
    """One entry of a GGUF file's tensor table: where its bytes lie and how to read them."""

    name: str
    qtype: str  # a name of QTYPES, or "type <id>" for a type this module cannot read
    shape: tuple[int, ...]  # numpy's order, rows first (GGUF lists the dimensions the other way round)
    offset: int  # where its bytes start, from the start of the file
    n_bytes: int | None  # None for a type this module cannot read


@dataclass
class GGUFFile:
    """A GGUF file's metadata and tensor table (its tensors' bytes stay on disk until ``read``)."""

    path: str
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensorInfo]

    def raw(self, name: str) -> np.ndarray:
        """The bytes of tensor ``name`` as a read-only uint8 array mapped from the file."""
        info = self.tensors[name]
        if info.n_bytes is None:
            raise ValueError(f"tensor {name!r} is stored as {info.qtype}, which this module cannot read; "
                             f"it reads {', '.join(QTYPES)}")
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=info.offset, shape=(info.n_bytes,))

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantised to float32, in numpy's shape."""
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(f"no tensor {name!r} in {self.path}; it has {len(self.tensors)}, "
                           f"such as {list(self.tensors)[:3]}")
        return dequantize(self.raw(name), info.qtype, info.shape)


class _Header:
    """Reads GGUF's little-endian fields one after another from a file."""

    def __init__(self, handle: BinaryIO, path: str) -> None:
        self.handle, self.path = handle, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        chunk = self.handle.read(size)
        if len(chunk) != size:
            raise ValueError(f"{self.path} ends inside its header: the file is truncated or not GGUF")
        return struct.unpack("<" + fmt, chunk)[0]

    def string(self) -> str:
        length = self.take("Q")  # uint64 length, then UTF-8 bytes, no terminator
        return self.handle.read(length).decode("utf-8", errors="replace")

    def value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:  # item type, count, items
            item_type, count = self.take("I"), self.take("Q")
            if item_type in _SCALARS:  # numbers in one read
                fmt = _SCALARS[item_type]
                chunk = self.handle.read(count * struct.calcsize(fmt))
                return list(struct.unpack(f"<{count}{fmt}", chunk))
            return [self.value(item_type) for _ in range(count)]
        if value_type not in _SCALARS:
            raise ValueError(f"{self.path}: unknown GGUF value type {value_type}; is the file damaged?")
        return self.take(_SCALARS[value_type])


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """The metadata and tensor table of the GGUF file at ``path`` (version 2 or 3, little-endian).

    The layout: ``b"GGUF"``, uint32 version, uint64 tensor count, uint64 key/value count; the key/value
    pairs (string key, uint32 type, value); per tensor its name, uint32 number of dimensions, uint64
    dimensions (fastest first), uint32 GGML type and uint64 offset; then, from the next multiple of
    ``general.alignment`` (32 unless the metadata says otherwise), the tensors' bytes at their offsets.
    """
    path = os.fspath(path)
    with open(path, "rb") as handle:
        header = _Header(handle, path)
        if handle.read(4) != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file: it does not start with {_MAGIC!r}")
        version = header.take("I")
        if version not in (2, 3):
            raise ValueError(f"{path} is GGUF version {version} (or big-endian); this reader handles "
                             "little-endian versions 2 and 3")
        n_tensors, n_values = header.take("Q"), header.take("Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_values):
            key = header.string()
            metadata[key] = header.value(header.take("I"))
        table = []
        for _ in range(n_tensors):
            name = header.string()
            dims = [header.take("Q") for _ in range(header.take("I"))]
            table.append((name, tuple(reversed(dims)), header.take("I"), header.take("Q")))
        alignment = int(metadata.get("general.alignment", 32))
        data_start = -(-handle.tell() // alignment) * alignment  # round up to a multiple of the alignment
    tensors = {}
    for name, shape, type_id, offset in table:
        qtype = _NAMES_BY_ID.get(type_id, f"type {type_id}")
        n_bytes = _expected_bytes(qtype, shape) if qtype in QTYPES else None
        tensors[name] = GGUFTensorInfo(name, qtype, shape, data_start + offset, n_bytes)
    return GGUFFile(path, version, metadata, tensors)

"""Device, precision and reproducibility: pick cuda / mps / cpu, an autocast dtype, seeds."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["pick_device", "autocast_dtype", "autocast", "seed_everything", "describe"]


def pick_device(prefer: str | None = None) -> torch.device:
    """Return the best available device, or ``prefer`` ("cuda", "mps", "cpu") if it is available.

    The environment variable ``LLMCOURSE_DEVICE`` overrides the choice (e.g. to force "cpu").
    """
    prefer = prefer or os.environ.get("LLMCOURSE_DEVICE")
    if prefer:
        name = prefer.split(":")[0]
        if name == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA was requested but torch.cuda.is_available() is False; use 'cpu' or unset LLMCOURSE_DEVICE.")
        if name == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("MPS was requested but is not available on this machine; use 'cpu'.")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The mixed-precision dtype worth using on ``device``: bf16 or fp16 on CUDA, None elsewhere.

    On CPU, autocast to bf16 is usually slower than fp32 for the small models of this course.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@contextlib.contextmanager
def autocast(device: torch.device | str) -> Iterator[None]:
    """Mixed precision on CUDA (bf16 / fp16), a no-op on other devices."""
    device = torch.device(device)
    dtype = autocast_dtype(device)
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def seed_everything(seed: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (all devices); optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def describe(device: torch.device | str | None = None) -> str:
    """A one-line description of the device, for logs and notebook headers."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB), autocast {autocast_dtype(device)}"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"

"""llmcourse.device: device choice, autocast and seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from llmcourse import device


def test_pick_device_honours_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCOURSE_DEVICE", "cpu")
    assert device.pick_device() == torch.device("cpu")
    monkeypatch.delenv("LLMCOURSE_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert device.pick_device().type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            device.pick_device("cuda")


def test_autocast_is_a_no_op_on_cpu() -> None:
    assert device.autocast_dtype("cpu") is None
    with device.autocast("cpu"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32
    assert device.describe("cpu").startswith("cpu (")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_autocast_uses_half_precision_on_cuda() -> None:
    with device.autocast("cuda"):
        y = torch.ones(4, 4, device="cuda") @ torch.ones(4, 4, device="cuda")
    assert y.dtype in (torch.bfloat16, torch.float16)


def test_seed_everything_repeats_all_generators() -> None:
    def draw() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    device.seed_everything(7)
    first = draw()
    device.seed_everything(7)
    assert draw() == first
    device.seed_everything(8)
    assert draw() != first

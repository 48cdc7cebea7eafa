"""Memory of a training step, by kind: weights, gradients, optimizer state and activations."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from llmcourse.classifier import classification_loss
from llmcourse.objectives import Batch

__all__ = ["training_memory"]


def training_memory(model: nn.Module, batch: Batch, loss_fn: Callable[[nn.Module, Batch], Tensor] | None = None) -> dict[str, int]:
    """Bytes that one AdamW training step of ``model`` on ``batch`` holds at its peak, by kind.

    ``weights``: every parameter; ``gradients``: one per trainable parameter; ``optimizer``:
    AdamW's two moments per trainable parameter; ``activations``: the tensors autograd saves
    during the forward pass for the backward pass (counted once per storage). Frozen layers
    need no gradients or optimizer state, but activations must still be kept wherever a
    gradient has to flow back through them.
    """
    loss_fn = loss_fn or classification_loss()
    saved: dict[tuple[int, str], int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        saved[(storage.data_ptr(), str(tensor.device))] = storage.nbytes()
        return tensor

    device = next(model.parameters()).device
    batch = {name: value.to(device) for name, value in batch.items()}
    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn(model, batch)
    params = {id(p): p for p in model.parameters()}.values()
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    del loss
    model.train(was_training)
    trainable_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients": trainable_bytes,
        "optimizer": 2 * trainable_bytes,
        "activations": sum(size for (ptr, _), size in saved.items() if ptr not in param_storages),
    }

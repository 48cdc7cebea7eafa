"""Figures and tables for the book: attention heatmaps (one head or a grid of heads), loss curves,
Markdown tables of named rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["attention_heatmap", "attention_grid", "loss_curves", "markdown_table"]


def _to_numpy(weights: Any) -> np.ndarray:
    if hasattr(weights, "detach"):
        weights = weights.detach().float().cpu().numpy()
    array = np.asarray(weights, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D (queries, keys) weight matrix, got shape {array.shape}; select one head first")
    return array


def attention_heatmap(
    weights: Any,
    keys: Sequence[str] | None = None,
    queries: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    annotate: bool = False,
    colorbar: bool = True,
) -> Axes:
    """Draw a (T_q, T_k) attention matrix: row = query (who looks), column = key (looked at)."""
    array = _to_numpy(weights)
    if ax is None:
        size = max(3.0, 0.35 * max(array.shape) + 1.5)
        _, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(array, cmap="viridis", vmin=0.0, vmax=max(float(array.max()), 1e-9), aspect="auto")
    if keys is not None:
        ax.set_xticks(range(len(keys)), labels=list(keys), rotation=90)
    if queries is not None:
        ax.set_yticks(range(len(queries)), labels=list(queries))
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if title:
        ax.set_title(title)
    if annotate:
        for i in range(array.shape[0]):
            for j in range(array.shape[1]):
                ax.text(j, i, f"{array[i, j]:.2f}", ha="center", va="center",
                        color="white" if array[i, j] < 0.6 * array.max() else "black", fontsize=8)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def attention_grid(
    weights: Any,
    tokens: Sequence[str] | None = None,
    columns: int = 4,
    title: str | None = None,
    head_names: Sequence[str] | None = None,
) -> Figure:
    """Draw every head of a (n_heads, T, T) attention tensor as a grid of small heatmaps."""
    if hasattr(weights, "detach"):
        weights = weights.detach().float().cpu().numpy()
    stack = np.asarray(weights, dtype=float)
    if stack.ndim != 3:
        raise ValueError(f"expected (n_heads, T_q, T_k) weights, got shape {stack.shape}")
    n_heads = stack.shape[0]
    rows = -(-n_heads // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= n_heads:
            ax.axis("off")
            continue
        attention_heatmap(stack[index], keys=tokens, queries=tokens, ax=ax, colorbar=False,
                          title=head_names[index] if head_names else f"head {index}")
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def loss_curves(
    curves: Mapping[str, Sequence[float]],
    steps: Mapping[str, Sequence[float]] | None = None,
    ax: Axes | None = None,
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = False,
) -> Axes:
    """Plot named loss curves (e.g. ``{"train": [...], "validation": [...]}``) on one axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        x = steps[name] if steps and name in steps else range(len(values))
        ax.plot(list(x), list(values), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def markdown_table(rows: dict[str, dict[str, Any]], formats: dict[str, str] | None = None, index: str = "") -> str:
    """A Markdown table of named rows (``{row: {column: value}}``), for notebooks (``IPython.display.Markdown``).

    ``formats`` maps a column to a format spec (``"{:.3f}"``); a missing value leaves its cell empty.
    """
    formats = formats or {}
    columns = list(dict.fromkeys(column for row in rows.values() for column in row))

    def cell(column: str, value: Any) -> str:
        if value is None:
            return ""
        return formats.get(column, "{}").format(value)

    lines = ["| " + " | ".join([index, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, row in rows.items():
        lines.append("| " + " | ".join([name, *(cell(c, row.get(c)) for c in columns)]) + " |")
    return "\n".join(lines)

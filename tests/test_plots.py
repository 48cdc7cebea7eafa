"""llmcourse.plots: figures draw what they are given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from llmcourse import plots


def test_heatmap_shows_the_weights_and_labels() -> None:
    weights = torch.softmax(torch.randn(3, 4), dim=-1)
    ax = plots.attention_heatmap(weights, keys=list("abcd"), queries=list("xyz"), annotate=True, title="t")
    np.testing.assert_allclose(ax.images[0].get_array(), weights.numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd")
    assert len(ax.texts) == 12 and ax.get_title() == "t"
    with pytest.raises(ValueError, match="2-D"):
        plots.attention_heatmap(torch.ones(2, 3, 3))
    plt.close("all")


def test_grid_has_one_panel_per_head_and_loss_curves_plot_every_series() -> None:
    fig = plots.attention_grid(torch.softmax(torch.randn(6, 5, 5), -1), tokens=list("abcde"), columns=4)
    assert sum(ax.axison for ax in fig.axes) == 6 and len(fig.axes) == 8
    ax = plots.loss_curves({"train": [3, 2, 1], "validation": [3.5, 2.5]}, logy=True)
    assert [line.get_label() for line in ax.get_lines()] == ["train", "validation"]
    assert ax.get_yscale() == "log"
    plt.close("all")

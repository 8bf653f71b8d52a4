"""Figures built with matplotlib's object API: no pyplot, no display, safe headless."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter at the start), same length as ``values``."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or window <= 1:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def loss_figure(curves: dict[str, np.ndarray], title: str) -> Figure:
    """Training loss per step on a log scale; the faint raw curve under a smoothed line."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for k, (label, losses) in enumerate(curves.items()):
        losses = np.asarray(losses, dtype=float)
        steps = np.arange(len(losses))
        color = f"C{k}"
        ax.plot(steps, losses, color=color, alpha=0.2, linewidth=0.6)
        ax.plot(steps, smooth(losses, max(1, len(losses) // 50)), color=color, linewidth=1.6, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (MSE)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def predictions_figure(x: np.ndarray, y: np.ndarray, preds: dict[str, np.ndarray], target: str,
                       title: str) -> Figure:
    """x, target and prediction for each sequence (rows of x: (N, T)); for ``last`` only the last step's."""
    n, seq_len = x.shape
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(5 * cols, 3 * rows), layout="constrained")
    steps = np.arange(1, seq_len + 1)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(steps, x[i], color="0.6", marker=".", label="x")
        if target == "last":
            ax.plot([seq_len], [y[i, -1]], "ko", label="target (last step)")
            for k, (label, p) in enumerate(preds.items()):
                ax.axhline(p[i, -1], color=f"C{k}", linestyle="--", label=f"{label} (last step)")
        else:
            ax.plot(steps, y[i], "ko", label="target")
            for k, (label, p) in enumerate(preds.items()):
                ax.plot(steps, p[i], color=f"C{k}", label=label)
        ax.set_xlabel("timestep")
        ax.set_title(f"sequence {i + 1}")
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig

"""Figures built with matplotlib's object API (matplotlib.figure.Figure): no display, no global figures, safe headless."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator

_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter at the start), same length as ``values``."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or window <= 1:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def _margins(fig: Figure, left: float, right: float, bottom: float, top: float, wspace: float = 0.2,
             hspace: float = 0.2) -> None:
    """Fixed margins: left, right, bottom, top in inches; wspace, hspace as fractions of the axes' width and height.
    The figures every training writes use these instead of a layout engine, which costs as much as drawing them."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wspace, hspace=hspace)


class _LogLabels(LogFormatterSciNotation):
    """matplotlib's log-axis labels (which ticks get one, 10^-2, 2 x 10^-2) in plain text with superscripts
    instead of mathtext, whose parser costs more than drawing the rest of a figure's axis."""

    def __call__(self, x, pos=None) -> str:
        return _plain(super().__call__(x, pos))


def _plain(label: str) -> str:
    """A mathtext tick label as LogFormatterSciNotation writes it, e.g. ``$\\mathdefault{2\\times10^{-3}}$``,
    as plain text: 2\u00d710\u207b\u00b3; a label of another form comes back as it is (mathtext still draws it)."""
    body = label.strip("$").removeprefix("\\mathdefault{").removesuffix("}")
    mantissa, power, exponent = body.partition("10^{")
    plain = body
    if power:
        mantissa = mantissa.replace("\\times", "\u00d7")
        plain = mantissa + "10" + exponent.removesuffix("}").translate(_SUPERSCRIPT)
    return label if any(c in plain for c in "\\{}^$") else plain


class _MinorLogLocator(LogLocator):
    """Minor ticks of a log axis: 2 and 5 in every decade over more than WIDE_DECADES decades (each tick costs a
    millisecond of drawing, and a grid line per digit over several decades is clutter); matplotlib's own below."""

    WIDE_DECADES = 1.5

    def __init__(self):
        super().__init__(subs="auto")

    def tick_values(self, vmin, vmax):
        low, high = sorted((vmin, vmax))
        if self.axis is not None:  # on a log axis matplotlib puts limits <= 0 at the smallest positive value
            low = max(low, self.axis.get_minpos())
        wide = 0 < low < high and np.log10(high / low) > self.WIDE_DECADES
        self.set_params(subs=np.array([2.0, 5.0]) if wide else "auto")
        return super().tick_values(vmin, vmax)


def _log_scale(ax, which: str) -> None:
    """A log scale on ``ax``'s ``which`` ("x" or "y") axis, labelled by _LogLabels, minor ticks by _MinorLogLocator."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_formatter(_LogLabels())
    axis.set_minor_formatter(_LogLabels(labelOnlyBase=False))
    axis.set_minor_locator(_MinorLogLocator())


def loss_figure(curves: dict[str, np.ndarray], title: str) -> Figure:
    """Training loss per step on a log scale; the faint raw curve under a smoothed line."""
    fig = Figure(figsize=(7, 4))
    _margins(fig, left=0.95, right=0.15, bottom=0.5, top=0.35)  # room for tick labels like 4 x 10^-1
    ax = fig.add_subplot()
    for k, (label, losses) in enumerate(curves.items()):
        losses = np.asarray(losses, dtype=float)
        steps = np.arange(len(losses))
        color = f"C{k}"
        ax.plot(steps, losses, color=color, alpha=0.2, linewidth=0.6)
        ax.plot(steps, smooth(losses, max(1, len(losses) // 50)), color=color, linewidth=1.6, label=label,
                marker="o" if len(losses) < 20 else None)  # a run that diverged at once has a point or two
    _log_scale(ax, "y")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (MSE)")
    ax.set_title(title, y=1.0)  # a fixed height: else matplotlib measures the axis under the title at every draw
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def predictions_figure(x: np.ndarray, y: np.ndarray, preds: dict[str, np.ndarray], target: str,
                       title: str) -> Figure:
    """x, target and prediction for each sequence (rows of x: (N, T)); for ``last`` only the last step's."""
    n, seq_len = x.shape
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(5 * cols, 3 * rows))
    _margins(fig, left=0.5, right=0.15, bottom=0.5, top=0.6, wspace=0.15, hspace=0.5 if rows > 1 else 0.2)
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
        ax.set_title(f"sequence {i + 1}", y=1.0)  # a fixed height, as in loss_figure
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


# ---- gradient flow ----------------------------------------------------------------------
# Exact zeros and inf/nan have no place on a log axis: they are left off the curves and
# colour maps and marked instead (zeros at the bottom, inf/nan at the top; white and black
# cells in heat maps), so that no invented value is drawn.

def _mark_extremes(ax, t: np.ndarray, values: np.ndarray, color: str) -> None:
    """Markers on the bottom edge where ``values`` is exactly 0, on the top edge where it is inf or nan."""
    edge = ax.get_xaxis_transform()  # x in data units, y in axes units
    zero, bad = values == 0, ~np.isfinite(values)
    if zero.any():
        ax.plot(t[zero], np.full(zero.sum(), 0.02), "v", color=color, transform=edge, clip_on=False)
    if bad.any():
        ax.plot(t[bad], np.full(bad.sum(), 0.98), "x", color=color, transform=edge, clip_on=False)


def _log_line(ax, t: np.ndarray, values: np.ndarray, **style) -> None:
    shown = np.where(np.isfinite(values) & (values > 0), values, np.nan)
    (line,) = ax.plot(t, shown, marker=".", **style)
    _mark_extremes(ax, t, values, line.get_color())


LINEAR_HIDDEN_LIMIT = 1e6  # larger hidden norms go on a log axis: a linear one would show only the largest
LOG_AXIS_LIMIT = 1e100  # beyond 1e+-100 the axes show log10 of the norms: matplotlib's log ticks overflow near 1e308


def _decades_line(ax, t: np.ndarray, values: np.ndarray, **style) -> None:
    """As _log_line, on a linear axis of log10(values)."""
    ok = np.isfinite(values) & (values > 0)
    (line,) = ax.plot(t, np.log10(np.where(ok, values, 1.0), where=ok, out=np.full(values.shape, np.nan)),
                      marker=".", **style)
    _mark_extremes(ax, t, values, line.get_color())


def gradscan_figure(seq_len: int, curves: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]],
                    title: str) -> Figure:
    """The notebook's two panels: ||h_t|| and ||dLoss/dh_t|| (log scale) per timestep, time running right to left.

    ``curves``: (label, hidden_norm (T,), grad_norm (T,), cell_grad_norm (T,) or None) per line. Hidden norms
    above LINEAR_HIDDEN_LIMIT are drawn on a log axis too; norms beyond LOG_AXIS_LIMIT make the log axes log10 ones.
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    t = np.arange(1, seq_len + 1)
    hidden_norms = [h for _, h, _, _ in curves]
    drawn = [g for _, _, grad, cell in curves for g in (grad, cell) if g is not None]
    log_hidden = max((np.max(h[np.isfinite(h)], initial=0.0) for h in hidden_norms), default=0.0) > LINEAR_HIDDEN_LIMIT
    positive = [a[np.isfinite(a) & (a > 0)] for a in drawn + (hidden_norms if log_hidden else [])]
    in_decades = any(p.size and (p.max() > LOG_AXIS_LIMIT or p.min() < 1 / LOG_AXIS_LIMIT) for p in positive)
    log_line, log10 = (_decades_line, "log10 ") if in_decades else (_log_line, "")
    for k, (label, hidden, grad, cell) in enumerate(curves):
        if log_hidden:
            log_line(ax1, t, hidden, color=f"C{k % 10}", label=label)
        else:
            ax1.plot(t, np.where(np.isfinite(hidden), hidden, np.nan), marker=".", color=f"C{k % 10}", label=label)
            _mark_extremes(ax1, t, np.where(np.isfinite(hidden), 1.0, hidden), f"C{k % 10}")
        log_line(ax2, t, grad, color=f"C{k % 10}", label=label)
        if cell is not None:
            log_line(ax2, t, cell, color=f"C{k % 10}", linestyle="--", label=f"{label}, dL/dc_t")
    ax1.set_title("hidden states" + (" (v: exactly 0, x: inf or nan)" if log_hidden else " (x: inf or nan)"))
    ax1.set_ylabel((log10 if log_hidden else "") + "hidden state norm ||h_t||"
                   + (" (log scale)" if log_hidden and not in_decades else ""))
    ax2.set_title("gradients (v: exactly 0, x: inf or nan)")
    has_cells = any(cell is not None for *_, cell in curves)
    ax2.set_ylabel(log10 + "||dLoss/dh_t||" + (" (dashed: ||dLoss/dc_t||)" if has_cells else ""))
    if not in_decades:
        if log_hidden:
            _log_scale(ax1, "y")
        if any(p.size for p in positive[:len(drawn)]):  # a log axis needs one positive number
            _log_scale(ax2, "y")
    for ax in (ax1, ax2):
        ax.set_xlabel("unroll timestep t")
        ax.set_xlim(seq_len + 0.5, 0.5)  # gradients flow from the last step back to the first
        ax.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def log_heatmap_figure(panels: list[tuple[str, np.ndarray, np.ndarray]], row_name: str, title: str,
                       columns: int = 2) -> Figure:
    """One colour map per panel of log10 of ``values`` (R, T): rows labelled by ``row_values`` (R,), columns timesteps.

    ``panels``: (panel title, row_values (R,), values (R, T)). White cells are exactly 0, black ones inf or nan.
    """
    columns = min(columns, len(panels))
    rows = (len(panels) + columns - 1) // columns
    fig = Figure(figsize=(max(6.5, 5.5 * columns), 3.8 * rows + 0.3))
    _margins(fig, left=0.85, right=0.3, bottom=0.5, top=0.85, wspace=0.4, hspace=0.45)
    finite = [np.log10(v[np.isfinite(v) & (v > 0)]) for _, _, v in panels]
    finite = np.concatenate(finite) if finite else np.array([])
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    for i, (panel_title, row_values, values) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, i + 1)
        r, seq_len = values.shape
        ok = np.isfinite(values) & (values > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            image = np.ma.masked_where(~ok, np.log10(np.where(ok, values, 1.0)))
        extent = (0.5, seq_len + 0.5, -0.5, r - 0.5)
        mesh = ax.imshow(image, aspect="auto", origin="lower", extent=extent, cmap="viridis", vmin=lo,
                         vmax=hi if hi > lo else lo + 1, interpolation="nearest")
        bad = ~np.isfinite(values)
        if bad.any():
            ax.imshow(np.ma.masked_where(~bad, np.ones_like(values)), aspect="auto", origin="lower", extent=extent,
                      cmap="gray", vmin=0, vmax=2, interpolation="nearest")
        ticks = np.unique(np.linspace(0, r - 1, min(r, 9)).round().astype(int))
        ax.set_yticks(ticks, [f"{row_values[j]:g}" for j in ticks])
        ax.set_xlabel("timestep t")
        ax.set_ylabel(row_name)
        ax.set_title(panel_title, fontsize="medium", y=1.0)  # a fixed height, as in loss_figure
        fig.colorbar(mesh, ax=ax, label="log10 norm")
    fig.suptitle(title + "\n(white: exactly 0, black: inf or nan)", fontsize="medium")
    return fig


def ratio_figure(weight_scales: np.ndarray, lines: list[tuple[str, np.ndarray]], bound: np.ndarray | None,
                 title: str) -> Figure:
    """log10(||dL/dh_1|| / ||dL/dh_T||) against the weight scale, one line per ``(label, ratio (W,))``;
    ``bound`` (W,) is log10 sigma_max^(T-1), drawn dashed. -inf (a zero first gradient) and nan are left off."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    many = len(lines) > 10  # then a colour ramp, and only the first and last line in the legend
    for k, (label, ratio) in enumerate(lines):
        color = colormaps["coolwarm"](k / max(1, len(lines) - 1)) if many else f"C{k}"
        shown = np.where(np.isfinite(ratio), ratio, np.nan)
        ax.plot(weight_scales, shown, color=color, linewidth=0.8 if many else 1.5,
                label=label if not many or k in (0, len(lines) - 1) else None)
        _mark_extremes(ax, weight_scales, np.where(np.isneginf(ratio), 0.0, np.where(np.isfinite(ratio), 1.0, ratio)),
                       color)
    if bound is not None:
        ax.plot(weight_scales, bound, "k--", linewidth=1.5, label="log10 sigma_max^(T-1) (bound)")
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_xlabel("weight scale")
    ax.set_ylabel("log10 ||dL/dh_1|| / ||dL/dh_T||")
    ax.set_title(title + "\n(v: first gradient exactly 0, x: inf or nan)", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def sweep_figure(groups: dict[str, list[tuple[float, float, list[float]]]], x_label: str, title: str) -> Figure:
    """eval MSE against the swept value, one line per group: the mean, a bar from the lowest to the highest
    seed (a range stays positive on the log axis, unlike mean - std), and each seed a dot.

    ``groups`` maps a label to (x, mean, every seed's value) tuples sorted by x.
    """
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = [p[0] for points in groups.values() for p in points]
    for k, (label, points) in enumerate(groups.items()):
        color = f"C{k}"
        x = np.array([p[0] for p in points], dtype=float)
        mean = np.array([p[1] for p in points], dtype=float)
        low = np.array([min(p[2]) for p in points], dtype=float)
        high = np.array([max(p[2]) for p in points], dtype=float)
        seeds = max(len(p[2]) for p in points)
        ax.errorbar(x, mean, yerr=np.stack([mean - low, high - mean]), color=color, marker="o", capsize=3,
                    linewidth=1.6, label=f"{label} (n={seeds})")
        for xi, _, values in points:
            ax.plot([xi] * len(values), values, linestyle="none", marker=".", color=color, alpha=0.35)
    if xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
        _log_scale(ax, "x")
    _log_scale(ax, "y")
    ax.set_xlabel(x_label)
    ax.set_ylabel("eval MSE (mean; bar: min to max over seeds)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return fig

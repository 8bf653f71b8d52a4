"""Figures: log-axis tick labels are plain text with the ticks and labels matplotlib itself would choose."""
import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from rnnexp import plots


@pytest.mark.parametrize("low, high, labels", [
    (1e-3, 1.0, ["10\u207b\u00b3", "10\u207b\u00b2", "10\u207b\u00b9", "10\u2070"]),
    (5.0, 2e12, ["10\u00b2", "10\u2074", "10\u2076", "10\u2078", "10\u00b9\u2070", "10\u00b9\u00b2"]),
    (0.15, 0.25, ["1.6\u00d710\u207b\u00b9", "1.8\u00d710\u207b\u00b9", "2\u00d710\u207b\u00b9",
                  "2.2\u00d710\u207b\u00b9", "2.4\u00d710\u207b\u00b9"]),
    (300.0, 700.0, ["3\u00d710\u00b2", "4\u00d710\u00b2", "5\u00d710\u00b2", "6\u00d710\u00b2", "7\u00d710\u00b2"]),
])
def test_log_labels_are_plain_text(low, high, labels):
    """The ticks and labels matplotlib's own log axis draws, in plain text."""
    drawn = []
    for ours in (True, False):
        fig = Figure()
        ax = fig.add_subplot()
        plots._log_scale(ax, "y") if ours else ax.set_yscale("log")
        ax.set_ylim(low, high)
        fig.savefig(io.BytesIO(), format="png")  # tick labels are set when the figure is drawn
        drawn.append(_shown(ax))
    assert drawn[0] == labels
    assert [plots._plain(label) for label in drawn[1]] == labels


def test_a_label_of_another_form_is_left_to_mathtext():
    assert plots._plain("$\\mathdefault{2\\cdot10^{-3}}$") == "$\\mathdefault{2\\cdot10^{-3}}$"
    assert plots._plain("") == ""


def _shown(ax) -> list[str]:
    """The y tick labels of ``ax`` that are drawn, bottom to top."""
    low, high = ax.get_ylim()
    ticks = ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
    shown = sorted((t.get_loc(), t.label1.get_text()) for t in ticks if low <= t.get_loc() <= high and t.label1.get_text())
    return [text for _, text in shown]


def _y_labels(values: np.ndarray) -> tuple[list[str], int]:
    """The loss figure's y tick labels as drawn, and how many minor ticks it has, for a loss curve ``values``."""
    fig = plots.loss_figure({"model": values}, "title")
    fig.savefig(io.BytesIO(), format="png")  # tick labels are set when the figure is drawn
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    return _shown(ax), len([v for v in ax.yaxis.get_minorticklocs() if low <= v <= high])


def test_loss_figure_over_decades_labels_powers_and_thins_minor_ticks():
    labels, minor = _y_labels(np.geomspace(1.0, 1e-3, 500))
    assert labels == ["10\u207b\u00b3", "10\u207b\u00b2", "10\u207b\u00b9", "10\u2070"]
    assert minor == 6  # 2 and 5 in each of the three decades


def test_loss_figure_within_a_decade_labels_minor_ticks():
    labels, minor = _y_labels(np.linspace(0.6, 0.2, 300))
    assert labels == ["2\u00d710\u207b\u00b9", "3\u00d710\u207b\u00b9", "4\u00d710\u207b\u00b9",
                      "6\u00d710\u207b\u00b9"]
    assert minor == 5  # every digit from 2 to 6


def _drawn_without_warnings(curves, seq_len):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's overflow warnings (and numpy's) fail the test
        fig = plots.gradscan_figure(seq_len, curves, "title")
        fig.savefig(io.BytesIO(), format="png")
    return fig.axes


def test_gradscan_figure_with_norms_near_float_max_draws_log10_axes():
    """An identity RNN scaled by 5 at seq_len 700: hidden norms up to 1e307 then inf, gradients inf but a few."""
    hidden = np.logspace(0, 307, 700)
    hidden[-50:] = np.inf
    grad = np.full(700, np.inf)
    grad[:10] = 1e300
    ax1, ax2 = _drawn_without_warnings([("w=5", hidden, grad, None)], 700)
    assert (ax1.get_ylabel(), ax1.get_yscale()) == ("log10 hidden state norm ||h_t||", "linear")
    assert (ax2.get_ylabel(), ax2.get_yscale()) == ("log10 ||dLoss/dh_t||", "linear")
    assert np.nanmax(ax1.lines[0].get_ydata()) == pytest.approx(307 * 649 / 699)  # the last finite norm
    assert np.nanmax(ax2.lines[0].get_ydata()) == pytest.approx(300)


def test_gradscan_figure_puts_large_hidden_norms_on_a_log_axis():
    hidden, grad = np.logspace(0, 8, 10), np.logspace(-5, 0, 10)
    ax1, ax2 = _drawn_without_warnings([("w=3", hidden, grad, None)], 10)
    assert (ax1.get_ylabel(), ax1.get_yscale()) == ("hidden state norm ||h_t|| (log scale)", "log")
    assert (ax2.get_ylabel(), ax2.get_yscale()) == ("||dLoss/dh_t||", "log")
    ax1, _ = _drawn_without_warnings([("w=1", np.linspace(0.5, 3, 10), grad, None)], 10)
    assert (ax1.get_ylabel(), ax1.get_yscale()) == ("hidden state norm ||h_t||", "linear")

"""``rnnexp gradscan``: exploding and vanishing gradients of one freshly initialised model, its recurrent
layers scaled by every (weight scale, bias scale) pair, as the notebook's GradientVisualizer does."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import data, gradients, plots, runs
from .config import Config, GradScanConfig, UserError, config_to_dict, config_to_yaml
from .experiments import abandon, build_seeded_model, new_meta

# Gradients are computed in float64: at seq_len 1000 a first/last ratio of 1e-100 is common,
# far below float32's smallest number, and it must come out as that number, not as 0.
DTYPE = torch.float64
MAX_ROWS = 2_000_000  # gradients.csv rows (settings x layers x timesteps) at most
MAX_LINES = 12  # curves in gradscan.png; every setting is in gradients.csv
MAX_PANELS = 4  # bias scales drawn in heatmap.png when both scales vary
GRADIENT_COLUMNS = ["weight_scale", "bias_scale", "layer", "timestep", "hidden_norm", "grad_norm"]
SCAN_COLUMNS = ["weight_scale", "bias_scale", "layer", "spectral_radius", "sigma_max", "loss", "grad_norm_first",
                "grad_norm_last", "log10_ratio"]


@dataclass(frozen=True)
class GradScanResult:
    run_dir: Path
    config: GradScanConfig
    flow: gradients.GradFlow
    scan_s: float  # computing the gradients of every setting
    wall_s: float  # the whole run: building, computing, writing and plotting


def check_size(config: GradScanConfig) -> None:
    """A UserError (before anything is written) when gradients.csv would have more than MAX_ROWS rows."""
    settings = len(config.weight_scales) * len(config.bias_scales)
    rows = settings * config.model.num_layers * config.task.seq_len
    if rows > MAX_ROWS:
        raise UserError(f"gradscan: {settings} settings x {config.model.num_layers} layer(s) x seq_len "
                        f"{config.task.seq_len} = {rows} rows for gradients.csv; at most {MAX_ROWS} "
                        "(use fewer scale values or a shorter --seq-len)")


def build_inputs(config: GradScanConfig) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The unscaled model (the same initial weights ``train`` starts from for this name and seed) and one sequence."""
    model = build_seeded_model(Config(name=config.name, seed=config.seed, model=config.model, task=config.task),
                               config.name)
    x, y = data.sample_batch(config.task.name, data.make_generator(config.seed, "gradscan"), 1, config.task.seq_len)
    return model, x, y  # x, y: (1, seq_len, 1)


def run_gradscan(config: GradScanConfig, runs_dir: Path, argv: list[str]) -> GradScanResult:
    """Compute every setting's gradient flow and write a run folder with the tables, plots, weights and inputs."""
    check_size(config)
    started = time.perf_counter()
    run_dir = runs.create_run_dir(runs_dir, config.name)
    meta = new_meta(config.seed, torch.device("cpu"), argv)
    try:
        return _scan_into(run_dir, config, meta, started)
    except BaseException as e:
        raise abandon(run_dir, e)


def _scan_into(run_dir: Path, config: GradScanConfig, meta: dict, started: float) -> GradScanResult:
    runs.write_text(run_dir / runs.CONFIG, config_to_yaml(config))
    runs.write_json(run_dir / runs.META, meta)
    model, x, y = build_inputs(config)
    runs.write_torch(run_dir / runs.CHECKPOINT, {"state_dict": model.state_dict(), "config": config_to_dict(config)})
    runs.write_torch(run_dir / runs.INPUTS, {"x": x, "y": y})

    weight_scales, bias_scales = gradients.grid(config.weight_scales, config.bias_scales)
    start = time.perf_counter()
    flow = gradients.grad_flow(model, x, y, config.target, weight_scales, bias_scales, dtype=DTYPE)
    scan_s = time.perf_counter() - start

    _write_tables(run_dir, flow)
    _write_figures(run_dir, config, flow)
    wall_s = time.perf_counter() - started
    meta.update(status="completed", ended=runs.now_iso(), message="", wall_s=round(wall_s, 3),
                scan_s=round(scan_s, 4), settings=len(weight_scales))
    runs.write_json(run_dir / runs.META, meta)
    return GradScanResult(run_dir, config, flow, scan_s, wall_s)


def _write_tables(run_dir: Path, flow: gradients.GradFlow) -> None:
    num_settings, num_layers, seq_len = flow.grad_norm.shape
    lstm = flow.cell_grad_norm is not None

    def gradient_rows():
        for k in range(num_settings):
            for layer in range(num_layers):
                for t in range(seq_len):
                    row = [flow.weight_scales[k], flow.bias_scales[k], layer, t + 1,
                           flow.hidden_norm[k, layer, t], flow.grad_norm[k, layer, t]]
                    yield row + [flow.cell_grad_norm[k, layer, t]] if lstm else row

    runs.write_csv(run_dir / runs.GRADIENTS, GRADIENT_COLUMNS + ["cell_grad_norm"] * lstm,
                   (map(_plain_number, row) for row in gradient_rows()))
    ratio = flow.log10_ratio()

    def scan_rows():
        for k in range(num_settings):
            for layer in range(num_layers):
                spectra = ["", ""] if flow.spectral_radius is None else [flow.spectral_radius[k, layer],
                                                                         flow.sigma_max[k, layer]]
                yield [flow.weight_scales[k], flow.bias_scales[k], layer, *spectra, flow.loss[k],
                       flow.grad_norm[k, layer, 0], flow.grad_norm[k, layer, -1], ratio[k, layer]]

    runs.write_csv(run_dir / runs.SCAN, SCAN_COLUMNS, (map(_plain_number, row) for row in scan_rows()))


def _plain_number(value):
    """numpy scalars as plain Python numbers, so the CSV holds ``0.5``, ``inf``, ``nan``, never ``np.float64(0.5)``."""
    return value.item() if isinstance(value, np.generic) else value


def _spread(n: int, most: int) -> list[int]:
    """At most ``most`` indices out of ``range(n)``, evenly spread, first and last included."""
    return sorted(set(np.linspace(0, n - 1, min(n, most)).round().astype(int).tolist()))


def _write_figures(run_dir: Path, config: GradScanConfig, flow: gradients.GradFlow) -> None:
    num_settings, num_layers, seq_len = flow.grad_norm.shape
    m = config.model
    what = f"{m.type}" + (f" ({m.nonlinearity})" if m.type == "rnn" else "") + f", {m.num_layers} layer(s), hidden " \
           f"{m.hidden_size}, seq_len {seq_len}, target {config.target}, seed {config.seed}"
    shown = _spread(num_settings, max(1, MAX_LINES // num_layers))
    curves = []
    for k in shown:
        for layer in range(num_layers):
            label = f"w={flow.weight_scales[k]:g}, b={flow.bias_scales[k]:g}" * (num_settings > 1) + \
                    f" layer {layer}" * (num_layers > 1)
            cell = None if flow.cell_grad_norm is None else flow.cell_grad_norm[k, layer]
            curves.append((label.strip() or "dL/dh_t", flow.hidden_norm[k, layer], flow.grad_norm[k, layer], cell))
    note = f"; {len(shown)} of {num_settings} settings drawn" if len(shown) < num_settings else ""
    runs.write_figure(run_dir / runs.GRADSCAN_PLOT, plots.gradscan_figure(seq_len, curves, what + note))
    if num_settings == 1:
        return

    ws, bs = np.array(config.weight_scales), np.array(config.bias_scales)
    grad = flow.grad_norm.reshape(len(ws), len(bs), num_layers, seq_len)
    panels = []
    for layer in range(num_layers):
        on_layer = f"layer {layer}" if num_layers > 1 else "dL/dh_t"
        if len(ws) == 1:
            panels.append((f"{on_layer}, weight scale {ws[0]:g}", bs, grad[0, :, layer]))
        else:
            for j in _spread(len(bs), MAX_PANELS):
                panels.append((f"{on_layer}, bias scale {bs[j]:g}", ws, grad[:, j, layer]))
    row_name = "bias scale" if len(ws) == 1 else "weight scale"
    runs.write_figure(run_dir / runs.HEATMAP_PLOT,
                      plots.log_heatmap_figure(panels, row_name, f"log10 ||dLoss/dh_t||: {what}"))

    top = num_layers - 1  # the bound holds for the top layer: only there does h_t reach the loss through h_{t+1} alone
    ratio = flow.log10_ratio().reshape(len(ws), len(bs), num_layers)[:, :, top]
    bound = None
    if flow.sigma_max is not None and config.target == "last":
        with np.errstate(divide="ignore"):
            bound = (seq_len - 1) * np.log10(flow.sigma_max.reshape(len(ws), len(bs), num_layers)[:, 0, top])
        bound = np.where(np.isfinite(bound), bound, np.nan)
    lines = [(f"bias scale {b:g}", ratio[:, j]) for j, b in enumerate(bs)]
    runs.write_figure(run_dir / runs.RATIO_PLOT, plots.ratio_figure(
        ws, lines, bound, f"first/last gradient ratio, layer {top}:\n{what}"))

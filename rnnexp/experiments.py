"""Experiments: seed, build, train, evaluate, and hand the results to plots and runs."""
from __future__ import annotations

import dataclasses
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import __version__, data, gradients, models, plots, runs
from .config import Config, UserError, config_to_dict, config_to_yaml
from .train import History, evaluate, make_optimizer, train

NUM_PLOTTED = 4  # held-out sequences drawn in predictions.png, as in the notebook
FINAL_LOSS_WINDOW = 100  # final_train_loss is the mean of this many last batches
FLUSH_EVERY = 500  # steps between writes of metrics.csv during training
PROBE_SEQUENCES = 32  # held-out sequences whose gradient norms gradnorms.csv follows


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    status: str  # completed | diverged | interrupted | failed
    summary: dict[str, Any]
    message: str = ""
    losses: list[float] = dataclasses.field(default_factory=list)
    # The plotted held-out sequences: "x", "y", "pred", each (NUM_PLOTTED, seq_len).
    preview: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; ``cuda`` without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device = 'cuda': no CUDA GPU is available here; use --device cpu or auto")
    return torch.device(name)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def new_meta(seed: int, device: torch.device, argv: list[str]) -> dict[str, Any]:
    """meta.json of a run that has just started; ``pid`` and ``host`` tell a live run from a dead one."""
    return {
        "status": "running", "started": now_iso(), "ended": None, "wall_s": None, "seed": seed,
        "command": argv, "device": str(device), "rnnexp": __version__, "torch": torch.__version__,
        "python": platform.python_version(), "git_commit": _git_commit(),
        "pid": os.getpid(), "host": socket.gethostname(),
    }


class Progress:
    """A tqdm bar on a terminal; plain lines (about ten per run) when stderr is piped; nothing when quiet."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.recent: list[float] = []
        self.bar = None
        self.every = max(1, total // 10)
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        self.recent = (self.recent + [loss])[-FINAL_LOSS_WINDOW:]
        if self.bar is not None:
            self.bar.update(1)
            if step % 50 == 0:
                self.bar.set_postfix(loss=f"{np.mean(self.recent):.4g}", refresh=False)
        elif (step + 1) % self.every == 0 or step + 1 == self.total:
            sys.stderr.write(f"{self.desc}: step {step + 1}/{self.total} loss {np.mean(self.recent):.4g}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def batch_stream(config: Config, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches: one stream per config seed, the same for every model."""
    generator = data.make_generator(config.seed, "train")
    while True:
        x, y = data.sample_batch(config.task.name, generator, config.train.batch_size, config.task.seq_len)
        yield x.to(device), y.to(device)


def eval_set(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out sequences (on the CPU): their own seed, the same for every model."""
    generator = data.make_generator(config.seed, "eval")
    return data.sample_batch(config.task.name, generator, config.eval.num_sequences, config.task.seq_len)


def build_seeded_model(config: Config, label: str) -> models.RecurrentRegressionModel:
    """The model for ``config``; its initial weights depend only on the seed and ``label``."""
    _, input_size, output_dim = data.TASKS[config.task.name]
    torch.manual_seed(data.derive_seed(config.seed, "init", label))
    m = config.model
    return models.build_model(m.type, input_size, m.hidden_size, m.num_layers, m.nonlinearity, output_dim)


def train_into(run_dir: Path, config: Config, device: torch.device, argv: list[str],
               report: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train ``config`` and write a complete run into the existing folder ``run_dir``; ``report(step, loss)`` sees every step."""
    started = time.perf_counter()
    meta = new_meta(config.seed, device, argv)
    model = build_seeded_model(config, config.name).to(device)
    optimizer = make_optimizer(model, config.train.lr)
    history = History()
    probe = gradients.GradLog(*(v[:PROBE_SEQUENCES].to(device) for v in eval_set(config)), config.train.target)
    probe.record(model, 0)
    # Written only now, right before training, so that a Ctrl-C that comes earlier leaves an
    # empty folder (which the caller removes) and one that comes later an interrupted run.
    runs.write_text(run_dir / runs.CONFIG, config_to_yaml(config))
    runs.write_json(run_dir / runs.META, meta)

    def on_step(step: int, loss: float) -> None:
        if report is not None:
            report(step, loss)
        if (step + 1) % FLUSH_EVERY == 0:
            _write_metrics(run_dir, history.losses)
        if (step + 1) % config.log.grad_every == 0:
            probe.record(model, step + 1)

    start = time.perf_counter()
    try:
        train(model, optimizer, batch_stream(config, device), config.train.num_batches, config.train.target,
              config.train.clip_grad_norm, on_step, history=history)
    except KeyboardInterrupt:
        history.status, history.message = "interrupted", f"interrupted at step {len(history.losses)}"
    train_s = time.perf_counter() - start
    probe.record(model, len(history.losses))
    _write_gradnorms(run_dir, config, probe)
    result = _finish(run_dir, config, model, history, train_s)
    meta.update(status=history.status, ended=now_iso(), wall_s=round(time.perf_counter() - started, 3),
                message=history.message)
    runs.write_json(run_dir / runs.META, meta)  # last: a run is complete once its meta says so
    return result


def _write_metrics(run_dir: Path, losses: list[float]) -> None:
    runs.write_csv(run_dir / runs.METRICS, ["step", "loss"], enumerate(losses))


def _write_gradnorms(run_dir: Path, config: Config, probe: gradients.GradLog) -> None:
    """gradnorms.csv (step, layer, timestep, grad_norm[, cell_grad_norm]) and gradnorms.png, one panel per layer."""
    grad = np.stack(probe.grad_norm)  # (steps, L, T)
    cell = np.stack(probe.cell_grad_norm) if probe.cell_grad_norm else None
    rows = ([step, layer, t + 1, grad[i, layer, t].item()] + ([cell[i, layer, t].item()] if cell is not None else [])
            for i, step in enumerate(probe.steps) for layer in range(grad.shape[1]) for t in range(grad.shape[2]))
    runs.write_csv(run_dir / runs.GRADNORMS, ["step", "layer", "timestep", "grad_norm"] + ["cell_grad_norm"] * (
        cell is not None), rows)
    panels = [(f"layer {layer}", np.array(probe.steps), grad[:, layer]) for layer in range(grad.shape[1])]
    title = f"{config.name}: log10 ||dLoss/dh_t|| on {probe.x.shape[0]} held-out sequences, target {config.train.target}"
    runs.write_figure(run_dir / runs.GRADNORMS_PLOT, plots.log_heatmap_figure(panels, "training step", title))


def _finish(run_dir: Path, config: Config, model: torch.nn.Module, history: History, train_s: float) -> TrainResult:
    """Evaluate, plot and write every result file but meta.json."""
    losses = history.losses
    _write_metrics(run_dir, losses)
    device = next(model.parameters()).device
    x, y = eval_set(config)
    eval_mse, preds = evaluate(model, x.to(device), y.to(device), config.train.target)
    preds = preds.cpu()
    summary = {
        "name": config.name, "status": history.status, "model": config.model.type,
        "num_layers": config.model.num_layers, "hidden_size": config.model.hidden_size,
        "target": config.train.target, "steps": len(losses),
        "final_train_loss": float(np.mean(losses[-FINAL_LOSS_WINDOW:])) if losses else None,
        "eval_mse": eval_mse if np.isfinite(eval_mse) else None, "num_params": models.num_params(model),
        "steps_per_s": len(losses) / train_s if train_s > 0 else None, "wall_s": train_s,
    }
    title = f"{config.name}: {config.model.type}, {config.model.num_layers} layer(s), target {config.train.target}"
    runs.write_figure(run_dir / runs.LOSS_PLOT, plots.loss_figure({config.name: np.array(losses)}, title))
    preview = {"x": x[:NUM_PLOTTED, :, 0].numpy(), "y": y[:NUM_PLOTTED, :, 0].numpy(),
               "pred": preds[:NUM_PLOTTED, :, 0].numpy()}
    runs.write_figure(run_dir / runs.PREDICTIONS_PLOT, plots.predictions_figure(
        preview["x"], preview["y"], {config.name: preview["pred"]}, config.train.target, title))
    runs.write_torch(run_dir / runs.CHECKPOINT, {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                                                 "config": config_to_dict(config)})
    runs.write_json(run_dir / runs.SUMMARY, summary)
    return TrainResult(run_dir, history.status, summary, history.message, losses, preview)


def run_train(config: Config, runs_dir: Path, argv: list[str], show_progress: bool = True,
              run_dir: Path | None = None) -> TrainResult:
    """``rnnexp train``: one model into a new run folder, or into exactly ``run_dir``.

    A run for ``run_dir`` is trained in ``<run_dir>.partial`` and renamed to ``run_dir`` once it
    has finished (completed or diverged), so ``run_dir`` exists only as a finished run.
    """
    device = resolve_device(config.device)
    into = runs.claim_run_dir(run_dir) if run_dir is not None else runs.create_run_dir(runs_dir, config.name)
    progress = Progress(config.train.num_batches, config.name, show_progress)
    try:
        result = train_into(into, config, device, argv, progress.update)
    except KeyboardInterrupt:
        runs.remove_if_empty(into)  # interrupted before anything was written
        raise
    finally:
        progress.close()
    if run_dir is not None and result.status in runs.FINISHED:
        result = dataclasses.replace(result, run_dir=runs.publish_run_dir(into, run_dir))
    return result

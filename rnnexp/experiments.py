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
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml

from . import __version__, data, gradients, models, plots, runs
from .runs import now_iso
from .config import RESUMABLE_KEYS, Config, UserError, config_to_dict, config_to_yaml, flatten, load_config
from .engine import Engine, to_engine_layout
from .train import History, evaluate

NUM_PLOTTED = 4  # held-out sequences drawn in predictions.png, as in the notebook
FINAL_LOSS_WINDOW = 100  # final_train_loss is the mean of this many last batches
FLUSH_EVERY = 500  # steps between writes of metrics.csv, gradnorms.csv and checkpoint.pt during training
CHECKPOINT_FORMAT = "rnnexp-train-1"
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


def use_one_cpu_thread(device: torch.device) -> None:
    """One torch thread on the CPU, unless OMP_NUM_THREADS says otherwise: these models' matrices are so small
    that a second thread costs more than it brings, and collapses throughput when the other core is busy."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


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

    def __init__(self, total: int, desc: str, enabled: bool = True, recent: Sequence[float] = ()):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.recent = list(recent)[-FINAL_LOSS_WINDOW:]  # a resumed run's: its lines read as without the stop
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
            self.bar.update(step + 1 - self.bar.n)  # absolute: a resumed run starts past 0
            if step % 50 == 0:
                self.bar.set_postfix(loss=f"{np.mean(self.recent):.4g}", refresh=False)
        elif (step + 1) % self.every == 0 or step + 1 == self.total:
            sys.stderr.write(f"{self.desc}: step {step + 1}/{self.total} loss {np.mean(self.recent):.4g}\n")
            sys.stderr.flush()

    def say(self, line: str) -> None:
        """One line on stderr, between the bar's redraws; nothing when quiet."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class BatchStream:
    """The training batches of one config seed, drawn from one CPU generator; resumable from ``state_at``.

    The generator state is copied only every ANCHOR_EVERY batches (a copy per batch costs more than the
    draw); ``state_at`` gets the state after any batch since then by drawing again from that copy.
    """

    ANCHOR_EVERY = 64

    def __init__(self, config: Config, device: torch.device, state: torch.Tensor | None = None, drawn: int = 0):
        self.task, self.batch_size, self.seq_len = data.TASKS[config.task.name], config.train.batch_size, config.task.seq_len
        self.device = device
        self.generator = data.make_generator(config.seed, "train")
        if state is not None:
            self.generator.set_state(state)
        self.drawn = drawn  # batches drawn so far (``state`` is the state after ``drawn`` batches)
        self._anchor, self._anchor_drawn = self.generator.get_state(), drawn

    def inputs(self) -> torch.Tensor:
        """The next batch's inputs (B, T, input_size), on the CPU; the task's ``targets`` gives its targets."""
        if self.drawn - self._anchor_drawn >= self.ANCHOR_EVERY:
            self._anchor, self._anchor_drawn = self.generator.get_state(), self.drawn
        x = self.task.inputs(self.generator, self.batch_size, self.seq_len)
        self.drawn += 1
        return x

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs()
        return x.to(self.device), self.task.targets(x).to(self.device)

    def state_at(self, drawn: int) -> torch.Tensor:
        """The generator state after ``drawn`` batches: now, or after an earlier batch back to the last anchor
        (at least the one before the last: a step that was not taken)."""
        if drawn == self.drawn:
            return self.generator.get_state()
        if not self._anchor_drawn <= drawn < self.drawn:
            raise ValueError(f"the stream has drawn {self.drawn} batches; no state kept for {drawn}")
        replay = torch.Generator()
        replay.set_state(self._anchor)
        for _ in range(drawn - self._anchor_drawn):
            self.task.inputs(replay, self.batch_size, self.seq_len)
        return replay.get_state()


def batch_stream(config: Config, device: torch.device) -> BatchStream:
    """The training batches: one stream per config seed, the same for every model."""
    return BatchStream(config, device)


def eval_set(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out sequences (on the CPU): their own seed, the same for every model."""
    generator = data.make_generator(config.seed, "eval")
    return data.sample_batch(config.task.name, generator, config.eval.num_sequences, config.task.seq_len)


def build_seeded_model(config: Config, label: str) -> models.RecurrentRegressionModel:
    """The model for ``config``; its initial weights depend only on the seed and ``label``."""
    task = data.TASKS[config.task.name]
    torch.manual_seed(data.derive_seed(config.seed, "init", label))
    m = config.model
    return models.build_model(m.type, task.input_size, m.hidden_size, m.num_layers, m.nonlinearity, task.output_dim)


@dataclass
class Training:
    """One training in progress: everything ``checkpoint.pt`` holds to continue it bit for bit, but the
    Adam state, which lives in the Engine that trains it (with the other copies of its group)."""
    run_dir: Path
    config: Config
    model: models.RecurrentRegressionModel  # the engine's copy is written into it for probes, checkpoints, eval
    stream: BatchStream  # shared by the trainings of a group that draw the same batches
    history: History
    probe: gradients.GradLog
    meta: dict[str, Any]
    started: float  # perf_counter at the start of this session
    report: Callable[[int, float], None] | None = None
    train_s: float = 0.0  # seconds spent in training steps so far, over every session
    together: int = 1  # trainings in the engine at the start of this session (steps_per_s is theirs)


def _new_training(run_dir: Path, config: Config, device: torch.device, argv: list[str], stream: BatchStream,
                  report: Callable[[int, float], None] | None) -> Training:
    started = time.perf_counter()
    model = build_seeded_model(config, config.name).to(device)
    probe = gradients.GradLog(*(v[:PROBE_SEQUENCES].to(device) for v in eval_set(config)), config.train.target)
    probe.record(model, 0)
    return Training(run_dir, config, model, stream, History(), probe, new_meta(config.seed, device, argv), started,
                    report)


def train_group_into(run_dirs: list[Path], configs: list[Config], device: torch.device, argv: list[str],
                     reports: list[Callable[[int, float], None] | None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> list[TrainResult]:
    """Train ``configs`` together, each into its existing folder; ``reports[i](step, loss)`` sees every step of i.

    The configs must differ at most in name, seed and train.target (the copies of one engine share
    everything else); trainings with the same seed read one batch stream. ``should_stop()`` is asked
    before every step; when it says yes the runs end ``interrupted``, with their checkpoints. Raises
    runs.NotStarted, with nothing written, if it says yes before training begins.
    """
    def shared(c: Config) -> Config:
        return dataclasses.replace(c, name="", seed=0, train=dataclasses.replace(c.train, target="all"))

    if any(shared(c) != shared(configs[0]) for c in configs):
        raise ValueError("trainings together may differ in name, seed and train.target only")
    reports = reports or [None] * len(configs)
    streams: dict[int, BatchStream] = {}  # one per seed: the configs share everything else
    for c in configs:
        if c.seed not in streams:
            streams[c.seed] = BatchStream(c, device)
    trainings = [_new_training(run_dir, config, device, argv, streams[config.seed], report)
                 for run_dir, config, report in zip(run_dirs, configs, reports)]
    for t in trainings:
        t.together = len(trainings)
    first = configs[0].train
    engine = Engine([t.model for t in trainings], [c.train.target for c in configs], first.lr, first.clip_grad_norm)
    if should_stop is not None and should_stop():
        raise runs.NotStarted
    # Written only now, right before training, so that a Ctrl-C that comes earlier leaves
    # empty folders (which the caller removes) and one that comes later interrupted runs.
    for k, t in enumerate(trainings):
        runs.write_json(t.run_dir / runs.META, t.meta)  # first: a folder with it is recognisably a run
        runs.write_text(t.run_dir / runs.CONFIG, config_to_yaml(t.config))
        _save_checkpoint(t, engine, k)
    return _train_and_finish(trainings, engine, should_stop)


def train_into(run_dir: Path, config: Config, device: torch.device, argv: list[str],
               report: Callable[[int, float], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train ``config`` and write a complete run into the existing folder ``run_dir``; ``report(step, loss)`` sees every step."""
    return train_group_into([run_dir], [config], device, argv, [report], should_stop)[0]


def _train_steps(trainings: list[Training], engine: Engine, should_stop: Callable[[], bool] | None) -> None:
    """Run the remaining steps of ``trainings`` (engine copy k is trainings[k]), checkpointing as they go.

    A copy whose loss or gradient stops being finite ends ``diverged`` with its state from before that step
    and leaves the engine; the others go on. After a hard stop (KeyboardInterrupt), perhaps mid-step, the
    last periodic checkpoints stay.
    """
    config = trainings[0].config
    task = data.TASKS[config.task.name]
    active = list(trainings)
    step = len(active[0].history.losses)
    segment_start = time.perf_counter()
    train_s_before = [t.train_s for t in trainings]

    def clock() -> None:
        for t, before in zip(trainings, train_s_before):
            if t in active:
                t.train_s = before + time.perf_counter() - segment_start

    def streams_of(active: list[Training]) -> tuple[list[BatchStream], list[int]]:
        """The streams the active trainings read, each once, and which one each reads."""
        streams = list(dict.fromkeys(t.stream for t in active))
        return streams, [streams.index(t.stream) for t in active]

    streams, index = streams_of(active)
    try:
        while active and step < config.train.num_batches:
            if should_stop is not None and should_stop():
                for t in active:
                    t.history.status, t.history.message = "interrupted", f"interrupted at step {step}"
                break
            x = to_engine_layout([s.inputs() for s in streams], index).to(engine.device)
            y = task.targets(x, time_dim=2)  # every copy's at once
            losses, bad = engine.step(x, y)
            while bad:
                clock()
                for k, why in bad.items():
                    t = active[k]
                    t.history.status, t.history.message = "diverged", f"{why} at step {step}"
                    engine.copy_to(k, t.model)
                    _save_checkpoint(t, engine, k)  # the state before the step that went wrong
                keep = [k for k in range(len(active)) if k not in bad]
                engine.drop(list(bad))
                active = [active[k] for k in keep]
                streams, index = streams_of(active)  # a stream nobody reads any more is no longer drawn from
                if not active:
                    break
                x, y = x[keep].contiguous(), y[keep].contiguous()
                losses, bad = engine.step(x, y)
            step += 1
            for t, loss in zip(active, losses):
                t.history.losses.append(loss)
                if t.report is not None:
                    t.report(step - 1, loss)
            probe, flush = step % config.log.grad_every == 0, step % FLUSH_EVERY == 0
            if probe or flush:
                clock()
                for k, t in enumerate(active):
                    engine.copy_to(k, t.model)
                    if probe:
                        t.probe.record(t.model, step)
                    if flush:  # gradnorms.csv first: a metrics.csv at step N means the probes up to N are written
                        _write_gradnorms(t.run_dir, t.config, t.probe, plot=False)
                        _write_metrics(t.run_dir, t.history.losses)
                        _save_checkpoint(t, engine, k)
    except KeyboardInterrupt:  # a hard stop, perhaps mid-step: the last periodic checkpoint stays
        for k, t in enumerate(active):
            t.history.status, t.history.message = "interrupted", f"interrupted at step {len(t.history.losses)}"
            if len(active) == engine.K:  # not caught between dropping a copy and forgetting its training
                engine.copy_to(k, t.model)  # for model.pt and the closing eval
        clock()
        return
    clock()
    for k, t in enumerate(active):
        engine.copy_to(k, t.model)
        _save_checkpoint(t, engine, k)  # before the closing probe record, which a resumed run must not carry on with


def _train_and_finish(trainings: list[Training], engine: Engine,
                      should_stop: Callable[[], bool] | None) -> list[TrainResult]:
    """Train the remaining steps, then write every result file of every training."""
    _train_steps(trainings, engine, should_stop)
    results = []
    for t in trainings:
        t.probe.record(t.model, len(t.history.losses))
        _write_gradnorms(t.run_dir, t.config, t.probe)
        results.append(_finish(t.run_dir, t.config, t.model, t.history, t.train_s, t.together))
        t.meta.update(status=t.history.status, ended=now_iso(), message=t.history.message,
                      wall_s=round((t.meta.get("wall_s") or 0.0) + time.perf_counter() - t.started, 3))
        runs.write_json(t.run_dir / runs.META, t.meta)  # last: a run is complete once its meta says so
    return results


def _save_checkpoint(t: Training, engine: Engine, k: int) -> None:
    """checkpoint.pt of engine copy ``k`` (``t``, whose model holds that copy's weights): model, optimizer, data
    generator, losses and probe records after ``len(losses)`` steps."""
    probe = t.probe
    runs.write_torch(t.run_dir / runs.RESUME_CHECKPOINT, {
        "format": CHECKPOINT_FORMAT, "step": len(t.history.losses), "config": config_to_dict(t.config),
        "state_dict": {k: v.cpu() for k, v in t.model.state_dict().items()},
        "optimizer": engine.optimizer_state(k, t.model),
        "generator": t.stream.state_at(len(t.history.losses)),
        "losses": torch.tensor(t.history.losses, dtype=torch.float64),
        "probe_steps": list(probe.steps),
        "probe_grad_norm": torch.from_numpy(np.stack(probe.grad_norm)),
        "probe_cell_grad_norm": torch.from_numpy(np.stack(probe.cell_grad_norm)) if probe.cell_grad_norm else None,
        "train_s": t.train_s,
    })


def resume_into(run_dir: Path, overrides: list[str], resumable: tuple[dict[str, Any], Config, dict[str, Any]],
                argv: list[str], report: Callable[[int, float], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> TrainResult | None:
    """Continue the run in ``run_dir`` (as ``read_resumable`` found it) from its checkpoint, in place, appending
    to its metrics. Returns None when there is nothing to do (the run has completed all its steps)."""
    started = time.perf_counter()
    old_meta, config, checkpoint = resumable
    step = checkpoint["step"]
    if config.train.num_batches < step:
        raise UserError(f"--resume {run_dir}: train.num_batches = {config.train.num_batches} is below the "
                        f"{step} steps already taken")
    if old_meta.get("status") == "completed" and step == config.train.num_batches:
        return None
    device = resolve_device(config.device)
    use_one_cpu_thread(device)
    model = build_seeded_model(config, config.name)
    try:
        model.load_state_dict(checkpoint["state_dict"])
        model.to(device)
        engine = Engine([model], [config.train.target], config.train.lr, config.train.clip_grad_norm)
        engine.load_optimizer_state(0, model, checkpoint["optimizer"])
        stream = BatchStream(config, device, checkpoint["generator"], drawn=step)
        losses = checkpoint["losses"].tolist()
        probe = gradients.GradLog(*(v[:PROBE_SEQUENCES].to(device) for v in eval_set(config)), config.train.target,
                                  steps=list(checkpoint["probe_steps"]),
                                  grad_norm=list(checkpoint["probe_grad_norm"].numpy()),
                                  cell_grad_norm=[] if checkpoint["probe_cell_grad_norm"] is None
                                  else list(checkpoint["probe_cell_grad_norm"].numpy()))
        train_s = float(checkpoint["train_s"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise UserError(f"--resume {run_dir / runs.RESUME_CHECKPOINT}: does not match the run's config.yaml "
                        f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if len(losses) != step:
        raise UserError(f"--resume {run_dir / runs.RESUME_CHECKPOINT}: damaged ({len(losses)} losses for step {step})")
    if should_stop is not None and should_stop():
        raise KeyboardInterrupt
    resumed = list(old_meta.get("resumed") or []) + [{"at_step": step, "started": now_iso(), "command": argv,
                                                      "overrides": list(overrides)}]
    meta = {**old_meta, "status": "running", "ended": None, "device": str(device), "pid": os.getpid(),
            "host": socket.gethostname(), "resumed": resumed}
    state = Training(run_dir, config, model, stream, History(losses), probe, meta, started, report, train_s)
    runs.write_text(run_dir / runs.CONFIG, config_to_yaml(config))
    _save_checkpoint(state, engine, 0)  # with the config as changed, so config.yaml and it agree again
    runs.write_json(run_dir / runs.META, meta)
    _write_metrics(run_dir, losses)  # drops any rows a killed run wrote after its last checkpoint
    return _train_and_finish([state], engine, should_stop)[0]


def _fixed_part(raw: dict) -> dict[str, Any]:
    """The keys of a config that a resume may not change."""
    return {k: v for k, v in flatten(raw).items() if k not in RESUMABLE_KEYS}


def _subruns_hint(run_dir: Path) -> str:
    """For a comparison's folder: which of its trainings can be resumed ('' for any other folder)."""
    try:
        is_compare = "models" in (yaml.safe_load((run_dir / runs.CONFIG).read_text()) or {})
    except (OSError, ValueError, yaml.YAMLError, TypeError):
        return ""
    unfinished = sorted(p for p in run_dir.iterdir() if (p / runs.RESUME_CHECKPOINT).is_file()
                        and runs.status_of(p) not in runs.FINISHED) if is_compare else []
    if not unfinished:
        return ""
    return f"; a comparison's trainings resume one by one: {', '.join(map(str, unfinished[:2]))}" + (
        ", ..." if len(unfinished) > 2 else "")


def read_resumable(run_dir: Path, overrides: list[str]) -> tuple[dict[str, Any], Config, dict[str, Any]]:
    """meta.json, the config with ``overrides`` applied, and checkpoint.pt of a run that may be resumed;
    a UserError when the folder is not one or the overrides would change the experiment."""
    run_dir = Path(run_dir)
    where = f"--resume {run_dir}"
    if not run_dir.is_dir():
        raise UserError(f"{where}: " + ("a file, not a run folder" if run_dir.exists() else "no such run folder"))
    missing = [name for name in (runs.META, runs.CONFIG, runs.RESUME_CHECKPOINT) if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"{where}: not a resumable run folder (missing {', '.join(missing)}){_subruns_hint(run_dir)}")
    try:
        meta = runs.read_json(run_dir / runs.META)
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: {runs.META} is damaged ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("status"), str):
        raise UserError(f"{where}: {runs.META} is not a run's meta.json")
    state = runs.process_state(meta) if meta["status"] == "running" else "gone"
    if state == "alive":
        raise UserError(f"{where}: process {meta.get('pid')} on {meta.get('host')} is still training it "
                        "(status running); stop it first")
    if state == "unknown":
        raise UserError(f"{where}: its {runs.META} says running, started by process {meta.get('pid')} on "
                        f"{meta.get('host')}, which cannot be checked from here; if it is no longer running, set "
                        f"\"status\" to \"interrupted\" in {run_dir / runs.META} and resume again")
    old = load_config(run_dir / runs.CONFIG)
    config = load_config(run_dir / runs.CONFIG, overrides)
    old_flat, new_flat = flatten(config_to_dict(old)), flatten(config_to_dict(config))
    changed = [key for key in new_flat if new_flat[key] != old_flat[key] and key not in RESUMABLE_KEYS]
    if changed:
        raise UserError(f"{where}: {changed[0]} cannot change when resuming (a resumed run may change "
                        f"{', '.join(RESUMABLE_KEYS)}); start a new run instead")
    try:
        checkpoint = torch.load(run_dir / runs.RESUME_CHECKPOINT, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises many kinds for a damaged or foreign file
        raise UserError(f"{where}: {runs.RESUME_CHECKPOINT} cannot be read ({e.__class__.__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{where}: {runs.RESUME_CHECKPOINT} is not an rnnexp checkpoint (format {CHECKPOINT_FORMAT})")
    saved = checkpoint.get("config")
    # A resume killed between writing config.yaml and checkpoint.pt leaves them apart in resumable keys only.
    if not isinstance(saved, dict) or _fixed_part(saved) != _fixed_part(config_to_dict(old)):
        raise UserError(f"{where}: {runs.RESUME_CHECKPOINT} belongs to another config than {runs.CONFIG}")
    return meta, config, checkpoint


def _write_metrics(run_dir: Path, losses: list[float]) -> None:
    runs.write_csv(run_dir / runs.METRICS, ["step", "loss"], enumerate(losses))


def _write_gradnorms(run_dir: Path, config: Config, probe: gradients.GradLog, plot: bool = True) -> None:
    """gradnorms.csv (step, layer, timestep, grad_norm[, cell_grad_norm]) and gradnorms.png, one panel per layer."""
    grad = np.stack(probe.grad_norm)  # (steps, L, T)
    cell = np.stack(probe.cell_grad_norm) if probe.cell_grad_norm else None
    rows = ([step, layer, t + 1, grad[i, layer, t].item()] + ([cell[i, layer, t].item()] if cell is not None else [])
            for i, step in enumerate(probe.steps) for layer in range(grad.shape[1]) for t in range(grad.shape[2]))
    runs.write_csv(run_dir / runs.GRADNORMS, ["step", "layer", "timestep", "grad_norm"] + ["cell_grad_norm"] * (
        cell is not None), rows)
    if not plot:
        return
    panels = [(f"layer {layer}", np.array(probe.steps), grad[:, layer]) for layer in range(grad.shape[1])]
    title = f"{config.name}: log10 ||dLoss/dh_t|| on {probe.x.shape[0]} held-out sequences, target {config.train.target}"
    runs.write_figure(run_dir / runs.GRADNORMS_PLOT, plots.log_heatmap_figure(panels, "training step", title))


def _finish(run_dir: Path, config: Config, model: torch.nn.Module, history: History, train_s: float,
            together: int = 1) -> TrainResult:
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
        "trained_together": together,
    }
    title = (f"{config.name}: {config.model.type}, {config.model.num_layers} layer(s), target {config.train.target}, "
             f"seed {config.seed}")
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
              run_dir: Path | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """``rnnexp train``: one model into a new run folder, or into exactly ``run_dir``.

    A run for ``run_dir`` is trained in ``<run_dir>.partial`` and renamed to ``run_dir`` once it
    has finished (completed or diverged), so ``run_dir`` exists only as a finished run.
    """
    device = resolve_device(config.device)
    use_one_cpu_thread(device)
    into, replaced = runs.claim_run_dir(run_dir) if run_dir is not None else (
        runs.create_run_dir(runs_dir, config.name), None)
    progress = Progress(config.train.num_batches, config.name, show_progress)
    if replaced:
        progress.say(f"note: the unfinished attempt in {into} ({replaced}) was deleted; this run starts afresh "
                     f"(rnnexp train --resume continues such an attempt instead)")
    try:
        result = train_into(into, config, device, argv, progress.update, should_stop)
    except BaseException as e:
        raise abandon(into, e)
    finally:
        progress.close()
    if run_dir is not None and result.status in runs.FINISHED:
        result = dataclasses.replace(result, run_dir=runs.publish_run_dir(into, run_dir))
    return result


def run_resume(run_dir: Path, overrides: list[str], argv: list[str], show_progress: bool = True,
               should_stop: Callable[[], bool] | None = None) -> TrainResult | None:
    """``rnnexp train --resume``: continue a run in its folder; None if it had already completed."""
    resumable = read_resumable(run_dir, overrides)
    _, config, checkpoint = resumable
    losses = checkpoint.get("losses")  # checked by resume_into: a damaged one is a UserError there
    progress = Progress(config.train.num_batches, config.name, show_progress,
                        losses.tolist() if isinstance(losses, torch.Tensor) else ())
    try:
        result = resume_into(Path(run_dir), overrides, resumable, argv, progress.update, should_stop)
    except UserError:  # refused before anything was changed
        raise
    except BaseException as e:
        raise abandon(Path(run_dir), e)
    finally:
        progress.close()
    run_dir = Path(run_dir)
    if result is not None and result.status in runs.FINISHED and run_dir.name.endswith(runs.PARTIAL_SUFFIX):
        # A --run-dir run resumed in DIR.partial moves into DIR once finished, as run_train would have moved it.
        final = run_dir.with_name(run_dir.name[: -len(runs.PARTIAL_SUFFIX)])
        result = dataclasses.replace(result, run_dir=runs.publish_run_dir(run_dir, final))
    return result


def ended_by(error: BaseException) -> tuple[str, str]:
    """(status, message) for meta.json of a run that an exception ended."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", "interrupted"
    return "failed", f"{error.__class__.__name__}: {error}".splitlines()[0]


def abandon(run_dir: Path, error: BaseException) -> BaseException:
    """Mark a run that ``error`` ended (or remove its folder if nothing was written). Returns what to raise:
    for a stop that left a folder, a RunInterrupted naming it; otherwise ``error`` itself."""
    runs.abandon(run_dir, *ended_by(error))
    if isinstance(error, KeyboardInterrupt) and not isinstance(error, runs.RunInterrupted) and Path(run_dir).is_dir():
        return runs.RunInterrupted(Path(run_dir))
    return error

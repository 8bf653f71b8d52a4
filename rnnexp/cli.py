"""The command line: parse options, load the config, call one experiment, render the result.

The only module that imports typer or rich and the only one that prints. torch is
imported inside the commands, so ``rnnexp --help`` answers at once.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from . import STOPPED_WHILE_STARTING, _stopped_while_starting
from .config import DEVICES, RESUMABLE_KEYS, SCALES_HELP, CompareConfig, UserError, load_config, load_gradscan_config, parse_scales
from .runs import NotStarted, RunInterrupted

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Experiments with recurrent networks: train, compare, scan gradients.")
# Piped output is not cut to 80 columns: tables stay whole for logs and scripts.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_USER = 2
EXIT_FAILED = 1
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
_received: list[int] = []


def _signal_exit_code() -> int:
    """130 or 143, by the last signal received (SIGINT if none was: a KeyboardInterrupt from elsewhere)."""
    return EXIT_SIGNAL[_received[-1] if _received else signal.SIGINT]

Overrides = Annotated[Optional[list[str]], typer.Argument(
    help="Dotted overrides applied after the file, the last one winning: train.lr=3e-4 seed=3 "
         "(train: model.hidden_size=64; compare: models.0.hidden_size=64)",
    show_default=False)]
def _path(example: str) -> Callable[[str | Path], Path]:
    """A path option's parser; an empty value would silently mean the current folder."""
    def parse(text: str | Path) -> Path:
        if not str(text).strip():
            raise typer.BadParameter(f"an empty path; give {example}")
        return Path(text)
    return parse


_folder, _config_file = _path("a folder, e.g. runs"), _path("a YAML file, e.g. configs/default.yaml")


def _device(value: str | None) -> str | None:
    if value is not None and value not in DEVICES:
        raise typer.BadParameter(f"{value!r}: expected one of {', '.join(DEVICES)}")
    return value


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", parser=_config_file,
                                                   help="YAML config file (defaults if omitted).")]


RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", parser=_folder, help="Where run folders are made.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", callback=_device,
                                                  help=f"One of {', '.join(DEVICES)}; overrides the config.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for unexpected errors.")]
ResumeOpt = Annotated[Optional[Path], typer.Option(
    "--resume", parser=_folder, help="Continue the interrupted, diverged or killed run in this folder from its last checkpoint, "
                     f"in place; overrides may change {', '.join(RESUMABLE_KEYS)}.")]
RunDirOpt = Annotated[Optional[Path], typer.Option(
    "--run-dir", parser=_folder, help="Train into exactly this folder instead of a new one under --runs-dir: trained in "
                      "DIR.partial, renamed to DIR once finished; refused if DIR exists.")]


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"rnnexp {__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Experiments with recurrent networks: train, compare, scan gradients."""


def _on_sigterm(signum, frame):
    _received.append(signum)
    raise KeyboardInterrupt


class _StopOnSignal:
    """While a training runs, Ctrl-C or SIGTERM asks it to stop after the current step (about a
    millisecond); it then writes its results and checkpoint, which a second signal does not break
    off (an impatient double Ctrl-C is common). A third one stops at once, for a run that hangs."""

    def __init__(self):
        self.requested = False
        self.count = 0
        self.previous = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        _received.append(signum)
        self.count += 1
        self.requested = True
        if self.count >= 3:
            raise KeyboardInterrupt

    def __enter__(self) -> "_StopOnSignal":
        for signum in EXIT_SIGNAL:
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def user_errors(command: Callable) -> Callable:
    """Turn UserErrors into one line on stderr and exit code 2; other errors too, unless --debug."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        debug = kwargs.get("debug", False)
        _received.clear()
        # rnnexp.main's handlers, which end the process while it starts, give way to these, which unwind it
        previous = {signal.SIGINT: signal.getsignal(signal.SIGINT),
                    signal.SIGTERM: signal.signal(signal.SIGTERM, _on_sigterm)}
        if previous[signal.SIGINT] is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return command(*args, **kwargs)
        except UserError as e:
            if debug:
                raise
            err.print(f"error: {e}", markup=False)
            raise typer.Exit(EXIT_USER) from None
        except RunInterrupted as e:
            _finish("interrupted", "interrupted", e.run_dir)
        except NotStarted:
            err.print(STOPPED_WHILE_STARTING, markup=False)
            raise typer.Exit(_signal_exit_code()) from None
        except KeyboardInterrupt:
            err.print("interrupted", markup=False)
            raise typer.Exit(_signal_exit_code()) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:
            if debug:
                raise
            err.print(f"internal error: {e.__class__.__name__}: {e} (run again with --debug for the traceback)",
                      markup=False)
            raise typer.Exit(EXIT_FAILED) from None
        finally:  # not rnnexp.main's again: a signal now would find the command done, not "before it started"
            for signum, handler in previous.items():
                ended = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}[signum]
                signal.signal(signum, ended if handler is _stopped_while_starting else handler)

    return wrapper


def _with_device(overrides: list[str] | None, device: str | None) -> list[str]:
    return list(overrides or []) + ([f"device={device}"] if device is not None else [])


@app.command()
@user_errors
def train(config: ConfigOpt = None, overrides: Overrides = None, runs_dir: RunsDirOpt = Path("runs"),
          device: DeviceOpt = None, quiet: QuietOpt = False, debug: DebugOpt = False,
          run_dir: RunDirOpt = None, resume: ResumeOpt = None) -> None:
    """Train one model; writes a new run folder and prints its path last."""
    if run_dir is not None and runs_dir != Path("runs"):
        raise UserError(f"--run-dir {run_dir} and --runs-dir {runs_dir}: give one of them")
    if resume is not None and (config is not None or run_dir is not None or runs_dir != Path("runs")):
        raise UserError(f"--resume {resume}: the run continues in its own folder with its own config.yaml; "
                        "leave out --config, --run-dir and --runs-dir")
    with _StopOnSignal() as stop:  # from here a signal stops the training cleanly, or stops the start
        from . import experiments

        if resume is not None:
            result = experiments.run_resume(resume, _with_device(overrides, device), sys.argv, not quiet, stop)
            if result is None:
                err.print(f"{resume}: already completed all its steps; nothing to do", markup=False)
                out.print(str(resume), markup=False)
                return
        else:
            cfg = load_config(config, _with_device(overrides, device))
            result = experiments.run_train(cfg, runs_dir, sys.argv, show_progress=not quiet, run_dir=run_dir,
                                           should_stop=stop)
        out.print(_train_table(result.summary, result.status))
        _finish(result.status, result.message, result.run_dir)


def _train_table(s: dict, status: str) -> Table:
    table = Table(title=f"{s['name']} ({status})", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key in ("model", "num_layers", "hidden_size", "target", "num_params", "steps"):
        table.add_row(key, str(s[key]))
    for key in ("final_train_loss", "eval_mse"):
        table.add_row(key, _fmt(s[key]))
    table.add_row("steps_per_s", _fmt(s["steps_per_s"], ".0f"))
    table.add_row("wall_s", _fmt(s["wall_s"], ".1f"))
    return table


@app.command()
@user_errors
def compare(config: ConfigOpt = None, overrides: Overrides = None, runs_dir: RunsDirOpt = Path("runs"),
            device: DeviceOpt = None, jobs: Annotated[Optional[int], typer.Option(
                "--jobs", "-j", min=1, help="Worker processes, each training a model's target modes and seeds together (default: the number of cores).")] = None,
            quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """Train several models side by side, in every target mode; one run folder with a sub-folder each."""
    with _StopOnSignal() as stop:  # from here a signal stops the trainings cleanly, or stops the start
        cfg = load_config(config, _with_device(overrides, device), cls=CompareConfig)
        from .compare import run_compare, training_name

        result = run_compare(cfg, runs_dir, sys.argv, jobs, show_progress=not quiet, should_stop=stop)
        count = len(result.rows)
        title = f"{cfg.name}: {count} training{'' if count == 1 else 's'} ({result.status})"
        table, starred = (_seeds_table if cfg.seeds > 1 else _compare_table)(cfg, result.rows, title)
        out.print(table)
        if starred:
            out.print("* best " + ("mean " if cfg.seeds > 1 else "") + "eval MSE per target"
                      + ("; every training's numbers are in summary.csv" if cfg.seeds > 1 else ""), markup=False)
        for r in result.rows:
            if r["status"] not in ("completed", "interrupted"):
                err.print(f"{training_name(r, cfg.seeds)} {r['status']}: {r['message']}", markup=False)
        _finish(result.status, "", result.run_dir)


def _compare_table(cfg: CompareConfig, rows_all: list[dict], title: str) -> tuple[Table, bool]:
    """One line per training; and whether a line is marked best."""
    table, starred = Table(title=title), False
    for col in ("label", "target", "num_params", "final_train_loss", "eval_mse", "steps_per_s", "wall_s", "status"):
        table.add_column(col, justify="left" if col in ("label", "target", "status") else "right")
    for target in cfg.targets:
        rows = [r for r in rows_all if r["target"] == target]
        scored = [r["eval_mse"] for r in rows if r["eval_mse"] is not None and r["status"] == "completed"]
        best = min(scored) if scored else None
        for r in rows:
            mark = " *" if r["status"] == "completed" and r["eval_mse"] == best else ""
            starred |= bool(mark)
            table.add_row(r["label"], target, _fmt(r["num_params"], "d"), _fmt(r["final_train_loss"]),
                          _fmt(r["eval_mse"]) + mark, _fmt(r["steps_per_s"], ".0f"), _fmt(r["wall_s"], ".1f"),
                          r["status"], style="bold" if mark else None)
    return table, starred


def _seeds_table(cfg: CompareConfig, rows: list[dict], title: str) -> tuple[Table, bool]:
    """One line per (model, target): eval MSE over the seeds that completed; and whether a line is marked best."""
    table, starred = Table(title=title), False
    for col in ("label", "target", "done", "eval_mse mean", "min", "max", "train loss mean", "steps/s", "wall_s"):
        table.add_column(col, justify="left" if col in ("label", "target") else "right")
    for target in cfg.targets:
        lines = []
        for label in dict.fromkeys(r["label"] for r in rows):
            mine = [r for r in rows if r["label"] == label and r["target"] == target]
            done = [r for r in mine if r["status"] == "completed" and r["eval_mse"] is not None]
            mses = [r["eval_mse"] for r in done]
            losses = [r["final_train_loss"] for r in done]
            speed = [r["steps_per_s"] for r in mine if r["steps_per_s"] is not None]
            lines.append((label, len(done), len(mine), sum(mses) / len(mses) if mses else None, mses, losses,
                          speed[0] if speed else None, max((r["wall_s"] or 0.0 for r in mine), default=None)))
        best = min((line[3] for line in lines if line[3] is not None), default=None)
        for label, n_done, n, mean, mses, losses, speed, wall in lines:
            mark = " *" if mean is not None and mean == best and len(lines) > 1 else ""
            starred |= bool(mark)
            table.add_row(label, target, f"{n_done}/{n}", _fmt(mean) + mark, _fmt(min(mses) if mses else None),
                          _fmt(max(mses) if mses else None), _fmt(sum(losses) / len(losses) if losses else None),
                          _fmt(speed, ".0f"), _fmt(wall, ".1f"), style="bold" if mark else None)
    return table, starred


MAX_TABLE_ROWS = 40  # longer tables show their first and last half of this; the CSVs have every row


@app.command()
@user_errors
def gradscan(
        weight_scale: Annotated[str, typer.Option("--weight-scale", "-w", help=f"Weight factor: {SCALES_HELP}.")] = "1.0",
        bias_scale: Annotated[str, typer.Option("--bias-scale", "-b", help=f"Bias factor: {SCALES_HELP}.")] = "1.0",
        model: Annotated[Optional[str], typer.Option("--model", help="rnn or lstm [default: rnn]")] = None,
        num_layers: Annotated[Optional[int], typer.Option("--num-layers", help="[default: 1]")] = None,
        nonlinearity: Annotated[Optional[str], typer.Option(
            "--nonlinearity", help="RNN activation: tanh, relu or identity [default: tanh]")] = None,
        hidden_size: Annotated[Optional[int], typer.Option("--hidden-size", help="[default: 16]")] = None,
        seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="[default: 10]")] = None,
        target: Annotated[Optional[str], typer.Option("--target", help="loss on all timesteps or the last [default: last]")] = None,
        seed: Annotated[Optional[int], typer.Option("--seed", help="Seeds the weights and the sequence [default: 0]")] = None,
        config: Annotated[Optional[Path], typer.Option(
            "--config", "-c", parser=_config_file, help="A train config: its name, seed, model, task and target (options win).")] = None,
        runs_dir: RunsDirOpt = Path("runs"), debug: DebugOpt = False) -> None:
    """Gradient norms dLoss/dh_t per timestep of a freshly initialised model whose recurrent weights and biases are
    scaled, for one setting or every combination of a scan; writes a new run folder and prints its path last."""
    options = {"model.type": model, "model.num_layers": num_layers, "model.nonlinearity": nonlinearity,
               "model.hidden_size": hidden_size, "task.seq_len": seq_len, "target": target, "seed": seed}
    cfg = load_gradscan_config(config, [f"{key}={value}" for key, value in options.items() if value is not None])
    cfg = dataclasses.replace(cfg, weight_scales=parse_scales(weight_scale, "--weight-scale"),
                              bias_scales=parse_scales(bias_scale, "--bias-scale"))
    from .gradscan import run_gradscan

    result = run_gradscan(cfg, runs_dir, sys.argv)
    out.print(_gradscan_table(result))
    flow = result.flow
    num_settings = len(flow.loss)
    overflowed = int((~np.isfinite(flow.grad_norm)).any(axis=(1, 2)).sum())
    if overflowed:
        err.print(f"note: {overflowed} of {num_settings} setting(s) overflowed: their gradient norms include inf "
                  "or nan (reported as such, left off the plots)", markup=False)
    _finish("completed", "", result.run_dir)


def _gradscan_table(result) -> Table:
    """Per timestep for one setting; per setting (and layer) for a scan; long tables keep their ends."""
    cfg, flow = result.config, result.flow
    num_settings, num_layers, seq_len = flow.grad_norm.shape
    lstm, rnn = flow.cell_grad_norm is not None, flow.spectral_radius is not None
    caption = f"{num_settings} setting(s) computed in {result.scan_s:.3f} s; every number is in gradients.csv and scan.csv"
    if num_settings == 1:
        ratio = flow.log10_ratio()[0]
        facts = [f"loss {_fmt(flow.loss[0])}"] + [
            f"layer {k}: " + (f"rho(W_hh) {_fmt(flow.spectral_radius[0, k])}, sigma_max {_fmt(flow.sigma_max[0, k])}, "
                              if rnn else "") + f"log10 first/last {_fmt(ratio[k])}" for k in range(num_layers)]
        table = Table(title=f"{cfg.name}: weight scale {cfg.weight_scales[0]:g}, bias scale {cfg.bias_scales[0]:g}; "
                            + "; ".join(facts), caption=caption)
        table.add_column("t", justify="right")
        for k in range(num_layers):
            on = f" L{k}" if num_layers > 1 else ""
            for name in ("||h_t||", "||dL/dh_t||") + (("||dL/dc_t||",) if lstm else ()):
                table.add_column(name + on, justify="right")
        rows = []
        for t in range(seq_len):
            cells = [str(t + 1)]
            for k in range(num_layers):
                cells += [_fmt(flow.hidden_norm[0, k, t]), _fmt(flow.grad_norm[0, k, t])]
                cells += [_fmt(flow.cell_grad_norm[0, k, t])] if lstm else []
            rows.append(cells)
    else:
        ratio = flow.log10_ratio()
        table = Table(title=f"{cfg.name}: {num_settings} settings, seq_len {seq_len}, target {cfg.target}",
                      caption=caption)
        for col in ("weight_scale", "bias_scale") + ("layer",) * (num_layers > 1) + ("rho", "sigma_max") * rnn + (
                "loss", "grad_first", "grad_last", "log10_ratio"):
            table.add_column(col, justify="right")
        rows = []
        for i in range(num_settings):
            for k in range(num_layers):
                rows.append([f"{flow.weight_scales[i]:g}", f"{flow.bias_scales[i]:g}"] + [str(k)] * (num_layers > 1)
                            + ([_fmt(flow.spectral_radius[i, k]), _fmt(flow.sigma_max[i, k])] if rnn else [])
                            + [_fmt(v) for v in (flow.loss[i], flow.grad_norm[i, k, 0], flow.grad_norm[i, k, -1],
                                                 ratio[i, k])])
    half = MAX_TABLE_ROWS // 2
    for i, cells in enumerate(rows):
        if len(rows) <= MAX_TABLE_ROWS or i < half or i >= len(rows) - half:
            table.add_row(*cells)
        elif i == half:
            table.add_row(*(["..."] * len(cells)))
    return table


@app.command("runs")
@user_errors
def list_runs(
    folder: Annotated[Path, typer.Argument(parser=_folder, help="Folder to search for runs, at any depth.")] = Path("runs"),
    sort: Annotated[Optional[str], typer.Option("--sort", help="Column to sort by (default: folder).")] = None,
    reverse: Annotated[bool, typer.Option("--reverse", help="Sort in descending order.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout instead of the table.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout instead of the table.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write eval MSE against the swept parameter "
                                                 "(mean and spread across seeds) to this PNG.")] = None,
    x: Annotated[Optional[str], typer.Option("--x", help="The swept parameter for --plot, e.g. train.lr "
                                             "(default: the numeric one with the most values).")] = None,
    debug: DebugOpt = False,
) -> None:
    """List every run under FOLDER: status, the hyperparameters that differ, losses, wall time."""
    from .catalog import check_plot_path, find_runs, plot_sweep

    if as_csv and as_json:
        raise UserError("--csv and --json: give one of them")
    if plot is not None and (as_csv or as_json):
        raise UserError("--plot prints the sweep table and the plot's path: leave out --csv / --json")
    if x is not None and plot is None:
        raise UserError(f"--x {x}: chooses the swept parameter of --plot; give --plot FILE.png too")
    if plot is not None:
        check_plot_path(plot)
    catalog = find_runs(folder)
    columns, rows = catalog.columns(), catalog.rows(sort, reverse)
    sweep = catalog.sweep(x) if plot is not None else None
    for skipped in catalog.skipped:
        err.print(f"warning: skipped {skipped.folder}: {skipped.reason}", markup=False)
    if as_csv or as_json:
        buf = io.StringIO()
        if as_csv:
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([_csv_value(r[c]) for c in columns] for r in rows)
        else:
            buf.write(json.dumps([{c: _json_value(r[c]) for c in columns} for r in rows], indent=2) + "\n")
        try:
            sys.stdout.write(buf.getvalue())
            sys.stdout.flush()
        except BrokenPipeError:  # `rnnexp runs --csv | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    table = Table(title=f"{len(rows)} run{'' if len(rows) == 1 else 's'} under {folder}")
    for c in columns:
        table.add_column(c, justify="left" if c in ("folder", "name", "status", "model") else "right", no_wrap=True)
    for r in rows:
        table.add_row(*(_cell(c, r[c]) for c in columns))
    _print_wide(table)
    if sweep is None:
        return
    table = Table(title=f"eval MSE by {sweep.x}: mean, std and range over seeds")
    for c in ("model", sweep.x, "n", "mean", "std", "min", "max"):
        table.add_column(c, justify="left" if c == "model" else "right", no_wrap=True)
    best = {}
    for p in sweep.points:
        best[p.group] = min(best.get(p.group, p.mean), p.mean)
    for p in sweep.points:
        mark = " *" if p.mean == best[p.group] else ""
        std = _fmt(p.std) if p.n > 1 else "-"
        table.add_row(p.group, format(p.x, "g"), str(p.n), _fmt(p.mean) + mark, std, _fmt(min(p.values)),
                      _fmt(max(p.values)), style="bold" if mark else None)
    _print_wide(table)
    out.print(f"* lowest mean per model; {len(sweep.left_out)} runs without an eval MSE left out", markup=False)
    out.print(str(plot_sweep(sweep, plot, f"{folder}: eval MSE against {sweep.x}")), markup=False)


def _print_wide(table: Table) -> None:
    """Print a table; piped, at its full width rather than squeezed into the console's 120 columns."""
    from rich.measure import Measurement

    width = Measurement.get(out, out.options.update_width(10_000), table).maximum
    console = out if out.is_terminal or width <= out.width else Console(highlight=False, soft_wrap=True, width=width)
    console.print(table)


def _cell(column: str, value) -> str:
    if isinstance(value, float):
        return _fmt(value, ".1f" if column == "wall_s" else ".4g")
    if isinstance(value, list) and len(value) > 4:  # a scan's scales: its range, not 41 numbers
        return f"{_cell(column, value[0])} .. {_cell(column, value[-1])} ({len(value)})"
    return "-" if value is None else str(value)


def _csv_value(value):
    return "" if value is None else value


def _json_value(value):
    """Strict JSON: a non-finite number (a diverged run's loss) is null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _finish(status: str, message: str, run_dir: Path) -> None:
    """Report how a run ended, print its folder last, and exit with the matching code."""
    from .runs import CONFIG, RESUME_CHECKPOINT

    resumable = (Path(run_dir) / RESUME_CHECKPOINT).is_file()
    if status == "diverged" and message:  # compare's trainings have said theirs
        # Not --resume: the checkpoint holds the weights just before the bad step, usually already far gone.
        try:
            clipped = load_config(Path(run_dir) / CONFIG, check_memory=False).train.clip_grad_norm is not None
        except UserError:
            clipped = False
        err.print(f"diverged: {message}; start a new run with a lower train.lr or "
                  + ("a smaller train.clip_grad_norm" if clipped else "with train.clip_grad_norm set"), markup=False)
    elif status == "interrupted":
        err.print(f"{message or 'interrupted'}; results so far are in {run_dir}" + (
            f"; continue with: rnnexp train --resume {run_dir}" if resumable else ""), markup=False)
    out.print(str(run_dir), markup=False)
    if status == "interrupted":
        raise typer.Exit(_signal_exit_code())
    if status != "completed":
        raise typer.Exit(EXIT_FAILED)


def _fmt(value, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    """Entry point: click's usage errors become one line too."""
    try:
        code = app(standalone_mode=False)
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `rnnexp`: the help, not an error
            out.print(e.format_message(), markup=False)
            sys.exit(0)
        err.print(f"error: {e.format_message()} (see --help)", markup=False)
        code = e.exit_code
    except typer.Abort:
        code = EXIT_SIGNAL[signal.SIGINT]
    sys.exit(code if isinstance(code, int) else 0)

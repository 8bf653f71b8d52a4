"""``rnnexp compare``: several models, each in every target mode (and seed), trained in parallel processes.

A model's trainings are copies in one Engine, in one process (split over two when that fills the
jobs better), and the models are spread over the processes, costliest first."""
from __future__ import annotations

import functools
import io
import multiprocessing as mp
import os
import queue as queue_module
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import plots, runs
from .config import CompareConfig, Config, check_compare_memory, config_to_yaml
from .experiments import FINAL_LOSS_WINDOW, TrainResult, abandon, new_meta, resolve_device, train_group_into, use_one_cpu_thread

SUMMARY_COLUMNS = ["label", "target", "seed", "type", "num_layers", "hidden_size", "num_params", "final_train_loss",
                   "eval_mse", "wall_s", "steps_per_s", "status"]
REPORT_EVERY = 25  # steps between progress messages from a worker


@dataclass(frozen=True)
class CompareResult:
    run_dir: Path
    status: str  # completed, or failed / interrupted when any training was
    rows: list[dict[str, Any]]


def training_name(row: dict[str, Any], seeds: int) -> str:
    """How messages name one training of a comparison: ``label (target)``, ``label (target, seed S)``."""
    return f"{row['label']} ({row['target']}" + (f", seed {row['seed']})" if seeds > 1 else ")")


def sub_dir_name(config: Config, seeds: int = 1) -> str:
    """``<label>_<target>``, and ``_seed<seed>`` when a comparison trains several seeds."""
    return f"{config.name}_{config.train.target}" + (f"_seed{config.seed}" if seeds > 1 else "")


def _worker(indices: list[int], configs: list[Config], dirs: list[Path], device: str, argv: list[str],
            messages) -> None:
    """One group of trainings (copies of one model) trained together in its own process, with one torch thread
    (tiny matmuls are slower with more)."""
    use_one_cpu_thread(torch.device(device))
    # Ctrl-C reaches a worker twice (from the terminal and from the parent passing it on), SIGTERM
    # when the whole process group is sent it: each asks the training to stop after its current
    # step, then write its results and checkpoint.
    stop_requested = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: stop_requested.append(signum))

    def reporter(index: int, total: int):
        recent: list[float] = []

        def report(step: int, loss: float) -> None:
            recent.append(loss)
            if (step + 1) % REPORT_EVERY == 0 or step + 1 == total:
                messages.put(("step", index, step + 1, float(np.mean(recent[-FINAL_LOSS_WINDOW:]))))
                del recent[:-FINAL_LOSS_WINDOW]
        return report

    try:
        results = train_group_into(dirs, configs, torch.device(device), argv,
                                   [reporter(i, c.train.num_batches) for i, c in zip(indices, configs)],
                                   lambda: bool(stop_requested))
        for index, result in zip(indices, results):
            messages.put(("done", index, result))
    except KeyboardInterrupt:  # before its training began: as if it had not started
        for index, run_dir in zip(indices, dirs):
            runs.remove_if_empty(run_dir)
            messages.put(("stopped", index))
    except BaseException as e:  # a failed training must not take the others down
        for index, run_dir in zip(indices, dirs):
            abandon(run_dir, e)
            messages.put(("failed", index, f"{e.__class__.__name__}: {e}", traceback.format_exc()))


def groups_of(configs: list[Config], jobs: int = 1) -> list[list[int]]:
    """The trainings that run together, as indices into ``configs``: every target mode and seed of one model.

    Costliest first, so that the longest group starts at once and the others fill in around it; the
    cheapest, which runs last, is split in two so that the jobs share the tail (with fewer groups than
    jobs, the largest are split until there are enough). A copy's numbers do not depend on its group.
    """
    by_model: dict[str, list[int]] = {}
    for k, c in enumerate(configs):
        by_model.setdefault(c.name, []).append(k)

    def cost(group: list[int]) -> float:  # multiply-adds per step, roughly; more copies cost less than their share
        m = configs[group[0]].model
        return (4 if m.type == "lstm" else 1) * m.num_layers * m.hidden_size * (m.hidden_size + 1) * len(group) ** 0.5

    def halves(group: list[int]) -> list[list[int]]:
        return [group[:len(group) // 2], group[len(group) // 2:]]

    groups = sorted(by_model.values(), key=cost, reverse=True)
    while len(groups) < jobs and max(len(g) for g in groups) > 1:
        largest = max(groups, key=len)
        groups.remove(largest)
        groups = sorted(groups + halves(largest), key=cost, reverse=True)
    if 1 < jobs < len(groups) and len(groups[-1]) > 1:
        groups = groups[:-1] + halves(groups[-1])
    return groups


class _Board:
    """Progress of every training: tqdm bars on a terminal, plain lines when stderr is piped."""

    def __init__(self, labels: list[str], total: int, enabled: bool):
        self.labels, self.total, self.enabled = labels, total, enabled
        self.bars = []
        self.last_line = [0] * len(labels)
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            width = max(len(label) for label in labels)
            self.bars = [tqdm(total=total, desc=label.ljust(width), position=k, file=sys.stderr, leave=True,
                              dynamic_ncols=True) for k, label in enumerate(labels)]

    def step(self, index: int, step: int, loss: float) -> None:
        if not self.enabled:
            return
        if self.bars:
            bar = self.bars[index]
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        elif step * 4 // self.total > self.last_line[index] * 4 // self.total:  # a line per quarter
            self.last_line[index] = step
            sys.stderr.write(f"{self.labels[index]}: step {step}/{self.total} loss {loss:.4g}\n")
            sys.stderr.flush()

    def end(self, index: int, status: str) -> None:
        if not self.enabled:
            return
        if self.bars:
            self.bars[index].set_postfix_str(status)
        else:
            sys.stderr.write(f"{self.labels[index]}: {status}\n")

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


def run_jobs(configs: list[Config], dirs: list[Path], device: torch.device, argv: list[str], jobs: int,
             show_progress: bool, should_stop: Callable[[], bool] | None = None,
             ) -> tuple[list[TrainResult | None], list[str], bool]:
    """Train every group of ``groups_of(configs)`` in its own process, at most ``jobs`` at a time.

    ``should_stop()`` (asked every 0.2 s) or a KeyboardInterrupt stops it: no further group starts and the
    running workers are sent SIGINT, each then ending its trainings ``interrupted`` with their results. A caller
    that takes signals should answer them through ``should_stop``: a KeyboardInterrupt raised while a message
    is half read from the workers' queue leaves the rest of the queue unreadable.
    Returns per training its TrainResult (None if it failed), an error message ('' if none),
    and whether the whole was interrupted.
    """
    # fork starts a worker in milliseconds; CUDA cannot be used in a forked child.
    ctx = mp.get_context("spawn" if device.type == "cuda" else "fork")
    if ctx.get_start_method() == "fork":
        # Paid once here instead of in every worker: the first PNG a process renders loads
        # matplotlib's fonts and backend (about 0.4 s).
        io_sink = io.BytesIO()
        plots.loss_figure({"warm-up": np.ones(2)}, "warm-up").savefig(io_sink, format="png")
    messages = ctx.Queue()
    results: list[TrainResult | None] = [None] * len(configs)
    errors = [""] * len(configs)
    board = _Board([d.name for d in dirs], configs[0].train.num_batches, show_progress)
    pending = groups_of(configs, jobs)
    running: dict[int, tuple[Any, list[int]]] = {}  # group number -> (process, its training indices)
    finished: set[int] = set()
    interrupted = False
    last_sent = 0.0  # when the running workers were last sent SIGINT

    def stop_workers() -> None:
        # Again every second until they end: a signal that comes as a worker starts, before it has set
        # its handlers, may be lost, and a worker takes any number of them as one.
        nonlocal interrupted, last_sent
        interrupted, last_sent = True, time.monotonic()
        pending.clear()
        for proc, _ in running.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGINT)

    try:
        while pending or running:
            try:
                if (should_stop is not None and should_stop() and not interrupted) or (
                        interrupted and time.monotonic() - last_sent > 1.0):
                    stop_workers()
                while pending and len(running) < jobs and not interrupted:
                    group = pending.pop(0)
                    for k in group:
                        dirs[k].mkdir()  # only trainings that start get a folder
                    proc = ctx.Process(target=_worker, args=(group, [configs[k] for k in group], [dirs[k] for k in group],
                                                             str(device), argv, messages), daemon=True)
                    running[group[0]] = (proc, group)
                    proc.start()
                if interrupted and not running:
                    break
                try:
                    message = messages.get(timeout=0.2)
                except queue_module.Empty:
                    message = None
                if message is not None:
                    kind, k = message[0], message[1]
                    if kind == "step":
                        board.step(k, message[2], message[3])
                        continue
                    if kind == "done":
                        results[k] = message[2]
                        board.end(k, message[2].status)
                    elif kind == "stopped":
                        board.end(k, "not started")
                    else:
                        errors[k] = message[2]
                        board.end(k, f"failed: {message[2]}")
                    finished.add(k)
                for key, (proc, group) in list(running.items()):
                    if all(k in finished for k in group):
                        proc.join()
                        running.pop(key)
                    elif not proc.is_alive():
                        time.sleep(0.2)  # its last messages may still be in the pipe
                        if messages.empty():
                            for k in group:
                                if k not in finished:
                                    errors[k] = f"worker process died (exit code {proc.exitcode})"
                                    board.end(k, f"failed: {errors[k]}")
                                    finished.add(k)
                            running.pop(key)
            except KeyboardInterrupt:
                # Ctrl-C reaches the workers too; SIGTERM only this process: pass it on. Each
                # worker then stops its trainings, writes what it has, and reports.
                stop_workers()
    finally:
        board.close()
    return results, errors, interrupted


def _write_figures(figures: list[tuple[Path, Any]], fork: bool) -> None:
    """Draw and write ``(path, make_figure)``s, half of them in a forked process: at the end of a comparison the
    workers have finished and their cores are free (the figures take about half a second)."""
    child = None
    if fork and len(figures) > 1:
        half = figures[len(figures) // 2:]
        figures = figures[:len(figures) // 2]
        child = mp.get_context("fork").Process(target=_draw_or_exit, args=(half,), daemon=True)
        child.start()
    _draw(figures)
    if child is not None:
        child.join()
        if child.exitcode != 0:  # draw them here, where an error is reported as any other
            _draw(half)


def _draw(figures: list[tuple[Path, Any]]) -> None:
    for path, make in figures:
        runs.write_figure(path, make())


def _draw_or_exit(figures: list[tuple[Path, Any]]) -> None:
    try:
        _draw(figures)
    except BaseException:  # the parent draws them again and reports the error
        os._exit(1)


def run_compare(config: CompareConfig, runs_dir: Path, argv: list[str], jobs: int | None = None,
                show_progress: bool = True, should_stop: Callable[[], bool] | None = None) -> CompareResult:
    """``rnnexp compare``: every (model, target) into one run folder, with overlaid plots and a summary."""
    device = resolve_device(config.device)
    configs = config.train_configs()
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(configs)))
    check_compare_memory(config, jobs)
    if should_stop is not None and should_stop():  # a signal while starting: no folder for nothing
        raise runs.NotStarted
    run_dir = runs.create_run_dir(runs_dir, config.name)
    try:
        return _compare_into(run_dir, config, configs, device, argv, jobs, show_progress, should_stop)
    except BaseException as e:  # e.g. a second Ctrl-C while the summary is written: meta.json must not say running
        raise abandon(run_dir, e)


def _compare_into(run_dir: Path, config: CompareConfig, configs: list[Config], device: torch.device, argv: list[str],
                  jobs: int, show_progress: bool, should_stop: Callable[[], bool] | None) -> CompareResult:
    started = time.perf_counter()
    meta = new_meta(config.seed, device, argv) | {"jobs": jobs}
    runs.write_text(run_dir / runs.CONFIG, config_to_yaml(config))
    runs.write_json(run_dir / runs.META, meta)
    dirs = [run_dir / sub_dir_name(c, config.seeds) for c in configs]
    results, errors, interrupted = run_jobs(configs, dirs, device, argv, jobs, show_progress, should_stop)

    rows = []
    for c, result, error in zip(configs, results, errors):
        s = result.summary if result is not None else {}
        rows.append({"label": c.name, "target": c.train.target, "seed": c.seed, "type": c.model.type,
                     "num_layers": c.model.num_layers, "hidden_size": c.model.hidden_size,
                     "num_params": s.get("num_params"), "final_train_loss": s.get("final_train_loss"),
                     "eval_mse": s.get("eval_mse"), "wall_s": s.get("wall_s"), "steps_per_s": s.get("steps_per_s"),
                     "status": result.status if result is not None else "failed" if error or not interrupted
                     else "not started",
                     "message": result.message if result is not None else error or "interrupted before it started"})
    runs.write_csv(run_dir / "summary.csv", SUMMARY_COLUMNS, ([r[c] for c in SUMMARY_COLUMNS] for r in rows))
    runs.write_json(run_dir / runs.SUMMARY, rows)
    figures: list[tuple[Path, Any]] = []  # (path, function that makes the figure)
    for target in config.targets:
        done = [(c, r) for c, r in zip(configs, results) if c.train.target == target and r is not None and r.losses]
        if not done:
            continue
        title = f"{config.name}: target {target}"
        curves = {}
        for label in dict.fromkeys(c.name for c, _ in done):
            mine = [r for c, r in done if c.name == label]
            if len(mine) == 1:
                curves[label] = np.array(mine[0].losses)
                continue
            losses = [r.losses for r in mine if r.status == "completed"]  # a seed that diverged early is in the table
            if losses:
                curves[f"{label} (mean of {len(losses)} seeds)"] = np.mean(losses, axis=0)
        figures.append((run_dir / f"losses_{target}.png", functools.partial(plots.loss_figure, curves, title)))
        shown = [(c, r) for c, r in done if c.seed == config.seed]  # the held-out sequences depend on the seed
        if shown:
            first = shown[0][1].preview
            figures.append((run_dir / f"predictions_{target}.png", functools.partial(
                plots.predictions_figure, first["x"], first["y"], {c.name: r.preview["pred"] for c, r in shown},
                target, title + (f", seed {config.seed}" if config.seeds > 1 else ""))))
    _write_figures(figures, device.type != "cuda")
    statuses = {r["status"] for r in rows}
    status = ("interrupted" if interrupted else "completed" if statuses == {"completed"}
              else "diverged" if statuses <= {"completed", "diverged"} else "failed")
    bad = [f"{training_name(r, config.seeds)} {r['status']}" for r in rows if r["status"] != "completed"]
    meta.update(status=status, ended=runs.now_iso(), wall_s=round(time.perf_counter() - started, 3),
                message="; ".join(bad))
    runs.write_json(run_dir / runs.META, meta)
    return CompareResult(run_dir, status, rows)

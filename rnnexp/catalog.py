"""Every run under a folder, read back from its files: one record per run, table rows, sweep statistics.

Reads only (``runs.py`` writes); returns data, never prints. A folder that cannot be read as a
run is not an error: it comes back in ``Catalog.skipped`` with the reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import runs
from .config import UserError, flatten

FIRST_COLUMNS = ("folder", "name", "status", "model")
LAST_COLUMNS = ("final_train_loss", "eval_mse", "wall_s")
NUMBERS = LAST_COLUMNS  # summary.json values that must be numbers (or null)
OWN_COLUMN = ("name", "model.type")  # config keys shown in a column of their own, never among the varying ones
REPEAT_KEY = "seed"  # what a sweep repeats a setting over; never the swept parameter


@dataclass(frozen=True)
class RunRecord:
    folder: str  # relative to the listed folder, with '/'
    name: str | None
    status: str  # meta.json's, or ``dead`` for a ``running`` run whose process is gone
    model: str | None
    params: dict[str, Any]  # the config flattened to dotted keys: {"train.lr": 0.001, ...}
    final_train_loss: float | None
    eval_mse: float | None
    wall_s: float | None  # summary.json's (training time) when there is one, else meta.json's


@dataclass(frozen=True)
class Skipped:
    folder: Path
    reason: str


@dataclass(frozen=True)
class SweepPoint:
    """eval MSE of one setting of the swept parameter for one group (model), across seeds."""
    group: str
    x: float
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for a single value)."""
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0


@dataclass(frozen=True)
class Sweep:
    x: str  # the swept config key, e.g. train.lr
    points: tuple[SweepPoint, ...]  # by group, then x
    left_out: tuple[str, ...]  # folders of runs with no eval MSE (not completed, diverged)


@dataclass(frozen=True)
class Catalog:
    root: Path
    runs: tuple[RunRecord, ...]
    skipped: tuple[Skipped, ...]

    def varying(self) -> list[str]:
        """Config keys whose value is not the same in every run (a key some runs lack counts), in config order."""
        keys: dict[str, None] = {}
        for r in self.runs:
            keys.update(dict.fromkeys(r.params))
        return [k for k in keys if k not in OWN_COLUMN
                and len({_hashable(r.params.get(k, _MISSING)) for r in self.runs}) > 1]

    def columns(self) -> list[str]:
        return [*FIRST_COLUMNS, *self.varying(), *LAST_COLUMNS]

    def rows(self, sort: str | None = None, reverse: bool = False) -> list[dict[str, Any]]:
        """One dict per run with exactly ``columns()``; sorted by folder unless ``sort`` names a column."""
        columns = self.columns()
        varying = columns[len(FIRST_COLUMNS):-len(LAST_COLUMNS)]
        rows = [{"folder": r.folder, "name": r.name, "status": r.status, "model": r.model,
                 **{k: r.params.get(k) for k in varying},
                 "final_train_loss": r.final_train_loss, "eval_mse": r.eval_mse, "wall_s": r.wall_s}
                for r in self.runs]
        column = sort or "folder"
        if column not in columns:
            raise UserError(f"--sort {column}: not a column here; expected one of {', '.join(columns)}")
        present = [r for r in rows if not _blank(r[column])]
        present.sort(key=lambda r: (0, r[column]) if _is_number(r[column]) else (1, _text(r[column])), reverse=reverse)
        return present + [r for r in rows if _blank(r[column])]  # blanks last either way

    def sweep(self, x: str | None = None) -> Sweep:
        """eval MSE of the completed runs per group (model) and value of ``x``; see swept_key for the default.
        Only training runs take part: a gradscan run beside them has no eval MSE and other keys."""
        trained = tuple(r for r in self.runs if TRAINING_KEY in r.params)
        if len(trained) < len(self.runs):
            return Catalog(self.root, trained, self.skipped).sweep(x)
        x = self.swept_key(x)
        grouping = [k for k in self.varying() if k not in (x, REPEAT_KEY)]
        values: dict[tuple[str, float], list[float]] = {}
        left_out = []
        for r in self.runs:
            if r.status != "completed" or r.eval_mse is None or not math.isfinite(r.eval_mse):
                left_out.append(r.folder)
                continue
            group = " ".join([r.model or "?"] + [f"{k.rsplit('.', 1)[-1]}={_text(r.params.get(k))}" for k in grouping])
            values.setdefault((group, float(r.params[x])), []).append(r.eval_mse)
        if not values:
            raise UserError(f"{self.root}: no completed run with an eval MSE to plot")
        points = tuple(SweepPoint(g, v, tuple(vals)) for (g, v), vals in sorted(values.items()))
        return Sweep(x, points, tuple(left_out))

    def swept_key(self, x: str | None = None) -> str:
        """``x`` if it is a number in every run, else a UserError; None: the numeric varying key with the most values."""
        numbers = [k for k in (self.runs[0].params if self.runs else {}) if k != REPEAT_KEY and all(
            _is_number(r.params.get(k)) for r in self.runs)]
        if x == REPEAT_KEY:
            raise UserError(f"--x {x}: the spread is taken over {REPEAT_KEY}s; choose the swept parameter")
        if x is not None:  # one that does not vary is fine: a sweep may be cut down to one value of it
            if x not in numbers:
                raise UserError(f"--x {x}: not a number in every run here; expected one of "
                                f"{', '.join(numbers) or '(none)'}")
            return x
        varying = self.varying()
        counts = {k: len({r.params[k] for r in self.runs}) for k in varying if k in numbers}
        if not counts:
            raise UserError(f"{self.root}: no numeric hyperparameter differs across these runs, nothing to plot "
                            f"against (differing: {', '.join(varying) or 'none'}); name one with --x KEY")
        most = [k for k, n in counts.items() if n == max(counts.values())]
        if len(most) > 1:
            raise UserError(f"{self.root}: {' and '.join(most)} both vary; choose one with --x KEY")
        return most[0]


_MISSING = object()
TRAINING_KEY = "train.lr"  # in the config of every train (and compare) run, in no gradscan's


def find_runs(root: Path) -> Catalog:
    """Every run folder under ``root``, at any depth, by path; a folder with run sub-folders (compare) is a group."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if not root.is_dir():
        raise UserError(f"{root}: is a file, not a folder of runs")
    found: list[RunRecord] = []
    skipped: list[Skipped] = []
    _walk(root, root, found, skipped, inside_run=False)
    return Catalog(root, tuple(found), tuple(skipped))


def _walk(folder: Path, root: Path, found: list[RunRecord], skipped: list[Skipped], inside_run: bool) -> bool:
    """Collect the runs at and under ``folder``; True if it or anything under it is a run folder."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        subdirs = [p for p in entries if p.is_dir()]
        is_run = (folder / runs.META).exists()
    except OSError as e:
        skipped.append(Skipped(folder, f"cannot read the folder ({e.strerror or e})"))
        return False
    has_runs = False
    for sub in subdirs:
        has_runs |= _walk(sub, root, found, skipped, inside_run=is_run)
    if is_run and not has_runs:
        try:
            found.append(read_run(folder, root))
        except _Damaged as e:
            skipped.append(Skipped(folder, str(e)))
    elif not is_run and entries and not subdirs and not inside_run:  # empty folders are not worth a word
        skipped.append(Skipped(folder, f"not a run folder (no {runs.META})"))
    return is_run or has_runs


class _Damaged(Exception):
    pass


def read_run(folder: Path, root: Path) -> RunRecord:
    """The record of one run folder; _Damaged names the file and what is wrong with it."""
    meta = _read_mapping(folder / runs.META, json=True)
    status = meta.get("status")
    if not isinstance(status, str):
        raise _Damaged(f"{runs.META} has no status" if status is None else f"{runs.META}: status {status!r} is not a name")
    config = _read_mapping(folder / runs.CONFIG, json=False)
    summary_path = folder / runs.SUMMARY
    if summary_path.exists():
        # a comparison's summary is a list of its trainings, which are its sub-folders (none if it stopped first)
        summary = {} if "models" in config else _read_mapping(summary_path, json=True)
    elif status in runs.FINISHED and (folder / runs.METRICS).exists():
        raise _Damaged(f"a {status} training without {runs.SUMMARY}")
    else:
        summary = {}
    for key in NUMBERS:
        if not (summary.get(key) is None or _is_number(summary[key])):
            raise _Damaged(f"{runs.SUMMARY}: {key} = {summary[key]!r}, expected a number or null")
    if status == "running" and runs.process_state(meta) == "gone":
        status = "dead"
    params = flatten(config)
    wall_s = summary.get("wall_s") if "wall_s" in summary else meta.get("wall_s")
    return RunRecord(
        folder=folder.relative_to(root).as_posix(), name=_text_or_none(params.get("name", summary.get("name"))),
        status=status, model=_text_or_none(summary.get("model", params.get("model.type"))), params=params,
        final_train_loss=summary.get("final_train_loss"), eval_mse=summary.get("eval_mse"),
        wall_s=wall_s if _is_number(wall_s) else None)


def _read_mapping(path: Path, json: bool) -> dict:
    if not path.exists():
        raise _Damaged(f"no {path.name}")
    try:
        value = runs.read_json(path) if json else yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise _Damaged(f"{path.name}: cannot read it ({e.__class__.__name__})") from None
    except ValueError as e:
        raise _Damaged(f"{path.name}: not valid JSON ({e})") from None
    except yaml.YAMLError as e:
        raise _Damaged(f"{path.name}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise _Damaged(f"{path.name}: expected a mapping, found {type(value).__name__}")
    return value


def _hashable(value: Any) -> Any:
    return repr(value) if isinstance(value, (list, dict)) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def check_plot_path(path: Path) -> None:
    """A UserError unless ``path`` is a PNG file name in an existing folder."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"--plot {path}: expected a file name ending in .png")
    if not path.parent.is_dir():
        raise UserError(f"--plot {path}: folder {path.parent} does not exist")


def plot_sweep(sweep: Sweep, path: Path, title: str) -> Path:
    """Write the sweep's figure (eval MSE against ``sweep.x`` per group) to ``path``, atomically."""
    from . import plots  # matplotlib only for the command that draws

    check_plot_path(path)
    groups: dict[str, list[tuple[float, float, list[float]]]] = {}
    for p in sweep.points:
        groups.setdefault(p.group, []).append((p.x, p.mean, list(p.values)))
    return runs.write_figure(path, plots.sweep_figure(groups, sweep.x, title))

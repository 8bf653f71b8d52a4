"""The one place that makes run folders and writes files into them.

Every file is written to a temporary name in the same folder and then renamed, so a
crash or ``kill -9`` leaves either the old complete file or the new complete file.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .config import UserError

# The run-folder layout, defined once.
CONFIG = "config.yaml"
META = "meta.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
CHECKPOINT = "model.pt"  # the final weights and config
RESUME_CHECKPOINT = "checkpoint.pt"  # everything needed to continue a training (train --resume)
LOSS_PLOT = "loss.png"
PREDICTIONS_PLOT = "predictions.png"
GRADNORMS = "gradnorms.csv"  # train: the probe batch's gradient norms during training
GRADNORMS_PLOT = "gradnorms.png"
GRADIENTS = "gradients.csv"  # gradscan: per setting, layer and timestep
SCAN = "scan.csv"  # gradscan: per setting and layer
INPUTS = "inputs.pt"
GRADSCAN_PLOT = "gradscan.png"
HEATMAP_PLOT = "heatmap.png"
RATIO_PLOT = "ratio.png"
# A run trained into a fixed folder (``--run-dir``) lives here until it has finished.
PARTIAL_SUFFIX = ".partial"
FINISHED = ("completed", "diverged")  # a run in one of these states is a result: never overwritten
UNFINISHED = ("running", "interrupted", "failed")  # an attempt that may be started afresh


_UMASK = os.umask(0)
os.umask(_UMASK)


def check_runs_dir(runs_dir: Path, option: str = "--runs-dir") -> None:
    """Raise a UserError if run folders cannot be made under ``runs_dir`` (nothing is created)."""
    probe = Path(runs_dir)
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{option} {runs_dir}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{option} {runs_dir}: {probe} is not writable")


def create_run_dir(runs_dir: Path, name: str, now: datetime | None = None) -> Path:
    """A new, empty ``<runs_dir>/<YYYY-MM-DD_HH-MM-SS>_<name>[-N]``; never reuses an existing folder."""
    check_runs_dir(runs_dir)
    runs_dir = Path(runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--runs-dir {runs_dir}: cannot create it ({e.strerror})") from None
    stem = f"{(now or datetime.now()).strftime('%Y-%m-%d_%H-%M-%S')}_{name}"
    for n in range(1, 10_000):
        path = runs_dir / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()  # atomic: of many processes racing for one name, exactly one wins
            return path
        except FileExistsError:
            continue
    raise UserError(f"--runs-dir {runs_dir}: too many runs named {stem}")


def remove_if_empty(run_dir: Path) -> None:
    """Remove a run folder that nothing was written into."""
    try:
        Path(run_dir).rmdir()
    except OSError:  # not empty (or already gone): keep it
        pass


def now_iso() -> str:
    """The local time with its UTC offset, to the second, as meta.json records it."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


class NotStarted(KeyboardInterrupt):
    """A stop that came before a run wrote anything: no run folder is left."""


class RunInterrupted(KeyboardInterrupt):
    """A stop that ended a run at once (a third signal; gradscan's first): its results so far are in ``run_dir``."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def abandon(run_dir: Path, status: str, message: str) -> None:
    """After an error or interruption outside the normal end of a run: remove its folder if nothing was
    written, else mark a meta.json still saying ``running`` with ``status``; never raises (the disk may be full)."""
    run_dir = Path(run_dir)
    remove_if_empty(run_dir)
    try:
        meta = read_json(run_dir / META)
        if isinstance(meta, dict) and meta.get("status") == "running":
            ended = now_iso()
            meta.update(status=status, message=message, ended=ended)
            resumed = meta.get("resumed") or [{}]  # a resumed run's earlier sessions are in its wall_s already
            since = resumed[-1].get("started") or meta.get("started")
            if isinstance(since, str):  # to the second, as the two times
                session = (datetime.fromisoformat(ended) - datetime.fromisoformat(since)).total_seconds()
                meta["wall_s"] = (meta.get("wall_s") or 0.0) + session
            write_json(run_dir / META, meta)
    except (OSError, ValueError, TypeError, AttributeError):  # a damaged meta.json stays as it is
        pass


def process_state(meta: dict) -> str:
    """``alive``, ``gone`` or ``unknown`` for the process a meta.json names (its ``pid`` on its ``host``)."""
    pid, host = meta.get("pid"), meta.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
        return "unknown"  # an older run without a pid, or one started on another machine
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:  # it exists, owned by someone else
        return "alive"
    return "alive"


def partial_dir(run_dir: Path) -> Path:
    """Where a run meant for ``run_dir`` is trained: ``<run_dir>.partial``."""
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + PARTIAL_SUFFIX)


def claim_run_dir(run_dir: Path) -> tuple[Path, str | None]:
    """A new, empty ``<run_dir>.partial`` to train into (publish_run_dir moves it to ``run_dir`` once finished),
    and how the earlier attempt it removed from there had ended (its meta.json's message), or None.

    An earlier attempt left in ``<run_dir>.partial`` (interrupted, crashed, killed) is removed; a
    UserError if ``run_dir`` exists (a run is never overwritten) or another live process holds the claim.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() or run_dir.is_symlink():
        status = status_of(run_dir)
        raise UserError(f"--run-dir {run_dir}: already exists{f' (status {status})' if status else ''}; "
                        "a run folder is never overwritten: delete it to run this point again")
    check_runs_dir(run_dir.parent, "--run-dir")
    partial, replaced = partial_dir(run_dir), None
    if partial.exists() and not partial.is_dir():
        raise UserError(f"--run-dir {run_dir}: {partial} is a file, not a folder")
    if partial.is_dir():
        status = status_of(partial)
        meta = _read_meta(partial)
        if status == "running" and process_state(meta) != "gone":
            who = f"process {meta.get('pid')} on {meta.get('host')}" if "pid" in meta else "a process of unknown pid"
            raise UserError(f"--run-dir {run_dir}: {partial} is being trained by {who}; "
                            "delete that folder if it is not")
        if status in FINISHED:
            raise UserError(f"--run-dir {run_dir}: {partial} holds a {status} run not yet moved into place: "
                            f"rename it to {run_dir.name} or delete it")
        if status not in UNFINISHED and any(partial.iterdir()):
            raise UserError(f"--run-dir {run_dir}: {partial} exists and is not an unfinished run (its {META} has "
                            f"no status {', '.join(UNFINISHED)}); move or delete it")
        if status in UNFINISHED:
            replaced = str(meta.get("message") or status)
        shutil.rmtree(partial)  # an attempt that did not finish: start the point afresh
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir()  # atomic: of two processes claiming one point, exactly one wins
    except FileExistsError:
        raise UserError(f"--run-dir {run_dir}: another process claimed {partial} just now") from None
    except OSError as e:
        raise UserError(f"--run-dir {run_dir}: cannot create {partial} ({e.strerror})") from None
    return partial, replaced


def publish_run_dir(partial: Path, run_dir: Path) -> Path:
    """Move a finished run from its ``.partial`` folder to ``run_dir`` in one rename; returns ``run_dir``."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        raise UserError(f"--run-dir {run_dir}: appeared while training; the run stays in {partial}")
    os.rename(partial, run_dir)
    return run_dir


def _read_meta(run_dir: Path) -> dict:
    try:
        meta = read_json(Path(run_dir) / META)
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def status_of(run_dir: Path) -> str | None:
    status = _read_meta(run_dir).get("status")
    return status if isinstance(status, str) else None


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a run's files are as readable as any other
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buf.getvalue())


def write_figure(path: Path, figure) -> Path:
    """Save a matplotlib Figure as PNG, atomically."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=110)
    return write_bytes(path, buf.getvalue())


def write_torch(path: Path, obj: Any) -> Path:
    import torch  # only runs that save tensors pay for the import

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())

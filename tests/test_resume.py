"""Runs that survive: stop and resume bit for bit, kill -9, signals, divergence, damaged checkpoints, races."""
import csv
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from test_cli import TRAIN_FILES

from rnnexp import experiments, runs
from rnnexp.cli import app
from rnnexp.config import UserError, load_config

runner = CliRunner()
SMALL = ["model.hidden_size=6", "eval.num_sequences=16", "log.grad_every=9"]


def _stop_after(step: int):
    """A should_stop that says yes once ``step`` steps have been taken (it is asked before every step)."""
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > step + 1  # the first question comes before training, the next before step 0

    return should_stop


def _train(tmp_path: Path, name: str, overrides: list[str], **kwargs) -> experiments.TrainResult:
    return experiments.run_train(load_config(None, overrides), tmp_path / name, ["test"], show_progress=False, **kwargs)


def _same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same training, bit for bit (timings aside)."""
    for name in ("metrics.csv", "gradnorms.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("final_train_loss", "eval_mse", "steps", "status"):
        assert sa[key] == sb[key], key
    ma, mb = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (a, b))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.parametrize("model", ["lstm", "rnn"])
def test_stopped_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, model):
    monkeypatch.setattr(experiments, "FLUSH_EVERY", 7)  # checkpoints at 7, 14, 21, ...
    overrides = SMALL + [f"model.type={model}", "train.num_batches=40", "model.num_layers=2"]
    full = _train(tmp_path, "full", overrides)
    stopped = _train(tmp_path, "stopped", overrides, should_stop=_stop_after(17))
    assert stopped.status == "interrupted" and stopped.message == "interrupted at step 17"
    assert {p.name for p in stopped.run_dir.iterdir()} == TRAIN_FILES
    meta = json.loads((stopped.run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted" and len(stopped.losses) == 17
    assert torch.load(stopped.run_dir / "checkpoint.pt", weights_only=True)["step"] == 17

    resumed = experiments.run_resume(stopped.run_dir, [], ["test"], show_progress=False)
    assert resumed.status == "completed" and resumed.run_dir == stopped.run_dir
    _same_run(full.run_dir, resumed.run_dir)
    meta = json.loads((resumed.run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and [r["at_step"] for r in meta["resumed"]] == [17]
    assert experiments.run_resume(resumed.run_dir, [], ["test"], show_progress=False) is None  # nothing to do


def test_a_resumed_run_prints_the_progress_lines_of_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    overrides = SMALL + ["train.num_batches=30"]  # a line every 3 steps, each the mean of the last 5 losses
    monkeypatch.setattr(experiments, "FINAL_LOSS_WINDOW", 5)
    monkeypatch.setattr(experiments.sys.stderr, "isatty", lambda: False)
    experiments.run_train(load_config(None, overrides), tmp_path / "full", ["t"], should_stop=None)
    full = capsys.readouterr().err.splitlines()
    stopped = experiments.run_train(load_config(None, overrides), tmp_path / "run", ["t"], should_stop=_stop_after(13))
    before = capsys.readouterr().err.splitlines()
    experiments.run_resume(stopped.run_dir, [], ["t"])
    after = capsys.readouterr().err.splitlines()
    assert len(full) == 10 and before == full[:4] and after == full[4:]


def test_starting_a_run_dir_afresh_says_what_it_deleted(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiments.sys.stderr, "isatty", lambda: False)
    point, overrides = tmp_path / "sweep" / "point", SMALL + ["train.num_batches=20"]
    experiments.run_train(load_config(None, overrides), tmp_path, ["t"], False, point, _stop_after(7))
    assert (tmp_path / "sweep" / "point.partial").is_dir()
    again = experiments.run_train(load_config(None, overrides), tmp_path, ["t"], True, point)
    assert again.status == "completed" and again.run_dir == point
    assert capsys.readouterr().err.splitlines()[0] == (
        f"note: the unfinished attempt in {point}.partial (interrupted at step 7) was deleted; this run starts "
        "afresh (rnnexp train --resume continues such an attempt instead)")


def test_stopped_twice_and_resumed_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "FLUSH_EVERY", 5)
    overrides = SMALL + ["model.type=lstm", "train.num_batches=30"]
    full = _train(tmp_path, "full", overrides)
    run = _train(tmp_path, "twice", overrides, should_stop=_stop_after(3)).run_dir
    assert experiments.run_resume(run, [], ["t"], False, _stop_after(11)).status == "interrupted"
    assert experiments.run_resume(run, [], ["t"], False).status == "completed"
    _same_run(full.run_dir, run)
    assert [r["at_step"] for r in json.loads((run / "meta.json").read_text())["resumed"]] == [3, 14]


def _wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _start(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rnnexp", "train", "--runs-dir", str(tmp_path / "runs"), "--quiet",
                             *SMALL, *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _metrics_rows(run_dir: Path) -> int:
    try:
        return len((run_dir / "metrics.csv").read_text().splitlines()) - 1
    except FileNotFoundError:
        return 0


def test_kill_9_leaves_every_file_parseable_and_the_run_resumes_bit_for_bit(tmp_path):
    proc = _start(tmp_path, "model.type=rnn", "train.num_batches=1000000")  # killed long before its end
    _wait_for(lambda: any(_metrics_rows(d) >= 500 for d in (tmp_path / "runs").glob("*")))  # one flush done
    proc.kill()
    proc.wait()
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "running" and meta["pid"] == proc.pid
    rows = list(csv.reader((run_dir / "metrics.csv").open()))
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    # Killed at some flush (the engine runs thousands of steps a second): whole flushes only.
    flushed = len(rows) - 1
    assert rows[0] == ["step", "loss"] and flushed >= 500 and flushed % 500 == 0
    assert checkpoint["step"] in (flushed, flushed - 500)  # killed after both writes of a flush, or between them
    probes = list(csv.reader((run_dir / "gradnorms.csv").open()))  # the probe records so far survive too
    assert probes[0] == ["step", "layer", "timestep", "grad_norm"]
    assert {int(r[0]) for r in probes[1:]} >= set(range(0, 500, 9)) and all(float(r[3]) > 0 for r in probes[1:])
    assert not list(run_dir.glob(".*.tmp")), "a temporary file was left behind"

    listed = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert json.loads(listed.stdout)[0]["status"] == "dead"

    end = checkpoint["step"] + 100
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "--quiet", f"train.num_batches={end}"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)
    full = _train(tmp_path, "full", SMALL + ["model.type=rnn", f"train.num_batches={end}"])
    _same_run(full.run_dir, run_dir)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_cleanly_with_results_and_checkpoint(tmp_path, signum, code):
    proc = _start(tmp_path, "train.num_batches=1000000")
    _wait_for(lambda: any((d / "meta.json").exists() for d in (tmp_path / "runs").glob("*")))
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    stopped_in = time.monotonic() - sent
    assert proc.returncode == code, stderr
    run_dir = Path(stdout.strip().splitlines()[-1])
    assert {p.name for p in run_dir.iterdir()} == TRAIN_FILES
    meta = json.loads((run_dir / "meta.json").read_text())
    steps = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    assert meta["status"] == "interrupted" and meta["message"] == f"interrupted at step {steps}" and steps > 0
    assert _metrics_rows(run_dir) == steps
    assert f"continue with: rnnexp train --resume {run_dir}" in stderr and "Traceback" not in stderr
    assert stopped_in < 30  # generous for a loaded CI machine; typically well under a second plus the plots


def test_divergence_keeps_everything_up_to_that_step(tmp_path):
    overrides = ["model.hidden_size=6", "eval.num_sequences=16", "model.nonlinearity=identity", "task.seq_len=50",
                 "train.lr=1000", "train.num_batches=50"]
    result = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "runs"), "--quiet", *overrides])
    assert result.exit_code == 1
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert "diverged: " in result.stderr and "a lower train.lr or with train.clip_grad_norm set" in result.stderr
    assert {p.name for p in run_dir.iterdir()} == TRAIN_FILES
    meta = json.loads((run_dir / "meta.json").read_text())
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    step = checkpoint["step"]
    assert meta["status"] == "diverged" and f"at step {step}" in meta["message"] and step < 50
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())  # the last finite weights
    assert _metrics_rows(run_dir) == step
    # Resumed as it is, it diverges again at the same step: the run is deterministic.
    again = runner.invoke(app, ["train", "--resume", str(run_dir), "--quiet"])
    assert again.exit_code == 1 and json.loads((run_dir / "meta.json").read_text())["message"] == meta["message"]
    # With clipping already set, the advice is to clip harder, not to set it.
    clipped = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "runs"), "--quiet", *overrides,
                                  "train.clip_grad_norm=0.001"])
    assert clipped.exit_code == 1 and clipped.stderr.endswith("a lower train.lr or a smaller train.clip_grad_norm\n")


def test_a_diverged_run_resumes_from_the_state_before_the_bad_step(tmp_path, monkeypatch):
    overrides = SMALL + ["model.type=rnn", "train.num_batches=30"]
    full = _train(tmp_path, "full", overrides)
    real_inputs = experiments.BatchStream.inputs

    def one_bad_batch(stream):
        x = real_inputs(stream)
        return x * float("nan") if stream.drawn == 21 else x

    monkeypatch.setattr(experiments.BatchStream, "inputs", one_bad_batch)
    diverged = _train(tmp_path, "diverged", overrides)
    assert diverged.status == "diverged" and diverged.message == "loss became nan at step 20"
    monkeypatch.setattr(experiments.BatchStream, "inputs", real_inputs)
    resumed = experiments.run_resume(diverged.run_dir, [], ["test"], show_progress=False)
    assert resumed.status == "completed"
    _same_run(full.run_dir, resumed.run_dir)


def test_resume_refusals_are_one_line_and_change_nothing(tmp_path):
    done = _train(tmp_path, "runs", SMALL + ["train.num_batches=5"]).run_dir
    before = {p: p.read_bytes() for p in done.iterdir()}
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("meta.json", "config.yaml"):
        (damaged / name).write_bytes((done / name).read_bytes())
    (damaged / "checkpoint.pt").write_bytes(b"not a checkpoint")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("meta.json", "config.yaml"):
        (foreign / name).write_bytes((done / name).read_bytes())
    torch.save({"weights": torch.zeros(3)}, foreign / "checkpoint.pt")
    group = tmp_path / "group"  # a compare folder: its trainings are its sub-folders
    for sub, status in (("rnn_1_layer_all", "interrupted"), ("rnn_1_layer_last", "completed")):
        (group / sub).mkdir(parents=True)
        (group / sub / "checkpoint.pt").write_bytes((done / "checkpoint.pt").read_bytes())
        (group / sub / "meta.json").write_text(json.dumps({"status": status}))
    (group / "meta.json").write_text(json.dumps({"status": "interrupted"}))
    (group / "config.yaml").write_text("name: compare\nmodels: [{type: rnn}]\n")
    lossless = tmp_path / "lossless"  # a checkpoint without its losses
    lossless.mkdir()
    (lossless / "config.yaml").write_bytes((done / "config.yaml").read_bytes())
    (lossless / "meta.json").write_text(json.dumps(json.loads((done / "meta.json").read_text()) | {"status": "interrupted"}))
    checkpoint = torch.load(done / "checkpoint.pt", weights_only=True)
    del checkpoint["losses"]
    torch.save(checkpoint, lossless / "checkpoint.pt")
    live = tmp_path / "live"
    live.mkdir()
    for name in ("config.yaml", "checkpoint.pt"):
        (live / name).write_bytes((done / name).read_bytes())
    (live / "meta.json").write_text(json.dumps({"status": "running", "pid": os.getpid(), "host": os.uname().nodename}))
    elsewhere = tmp_path / "elsewhere"  # says running, started on another machine
    elsewhere.mkdir()
    for name in ("config.yaml", "checkpoint.pt"):
        (elsewhere / name).write_bytes((done / name).read_bytes())
    (elsewhere / "meta.json").write_text(json.dumps({"status": "running", "pid": 4242, "host": "otherhost"}))
    cases = [
        ([str(tmp_path / "nope")], "no such run folder"),
        ([str(elsewhere)], f"its meta.json says running, started by process 4242 on otherhost, which cannot be "
                           f"checked from here; if it is no longer running, set \"status\" to \"interrupted\" in "
                           f"{elsewhere / 'meta.json'} and resume again"),
        ([str(done / "config.yaml")], "a file, not a run folder"),
        ([str(group)], f"not a resumable run folder (missing checkpoint.pt); a comparison's trainings resume one by "
                       f"one: {group / 'rnn_1_layer_all'}"),
        ([str(tmp_path)], "not a resumable run folder (missing meta.json, config.yaml, checkpoint.pt)"),
        ([str(done), "model.hidden_size=7"], "model.hidden_size cannot change when resuming (a resumed run may change "
                                             "device, train.lr, train.clip_grad_norm, train.num_batches, "
                                             "log.grad_every); start a new run instead"),
        ([str(done), "train.num_batches=2"], "train.num_batches = 2 is below the 5 steps already taken"),
        ([str(done), "train.lr=-1"], "train.lr = -1: expected a number > 0 and <= 1000"),
        ([str(damaged)], "checkpoint.pt cannot be read"),
        ([str(foreign)], "checkpoint.pt is not an rnnexp checkpoint"),
        ([str(lossless)], "checkpoint.pt: does not match the run's config.yaml (KeyError: 'losses')"),
        ([str(live)], f"process {os.getpid()} on {os.uname().nodename} is still training it"),
        ([str(done), "--config", "configs/default.yaml"], "leave out --config, --run-dir and --runs-dir"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["train", "--quiet", "--resume", *args])
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, (args, result.stderr)
        if args[0] in (str(tmp_path), str(group)):  # the comparison hint for a comparison's folder only
            assert lines[0].endswith(message), lines[0]
    assert {p: p.read_bytes() for p in done.iterdir()} == before
    assert (damaged / "checkpoint.pt").read_bytes() == b"not a checkpoint"

    result = runner.invoke(app, ["train", "--quiet", "--resume", str(done)])
    assert result.exit_code == 0 and "already completed all its steps; nothing to do" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(done)
    # A completed run may be extended: its remaining steps continue the same data stream.
    longer = runner.invoke(app, ["train", "--quiet", "--resume", str(done), "train.num_batches=8"])
    assert longer.exit_code == 0 and _metrics_rows(done) == 8
    _same_run(_train(tmp_path, "eight", SMALL + ["train.num_batches=8"]).run_dir, done)


def _make_dir(args) -> str:
    runs_dir, when = args
    return str(runs.create_run_dir(Path(runs_dir), "race", datetime.fromisoformat(when)))


def test_sixteen_processes_racing_for_one_name_each_get_their_own_folder(tmp_path):
    when = datetime.now().isoformat()
    with mp.get_context("fork").Pool(16) as pool:
        made = pool.map(_make_dir, [(tmp_path / "runs", when)] * 16)
    assert len(set(made)) == 16 and sorted(Path(p).name for p in made) == sorted(p.name for p in (tmp_path / "runs").iterdir())


def test_runs_dir_refusals_name_the_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"--runs-dir .*file/sub: .*file is a file, not a folder"):
        runs.create_run_dir(tmp_path / "file" / "sub", "x")
    assert (tmp_path / "file").read_text() == "x"


def test_an_empty_runs_dir_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--quiet", "--runs-dir", "", "train.num_batches=2"])
    assert result.exit_code == 2 and "--runs-dir" in result.stderr and "an empty path" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_crash_before_training_leaves_no_folder_and_one_after_says_failed(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    with monkeypatch.context() as patch:
        patch.setattr(experiments, "build_seeded_model", out_of_memory)
        result = runner.invoke(app, ["train", "--quiet", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1 and "internal error: RuntimeError: DefaultCPUAllocator" in result.stderr
    assert list((tmp_path / "runs").iterdir()) == []  # the empty run folder is removed

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(experiments, "_write_gradnorms", disk_full)
    result = runner.invoke(app, ["train", "--quiet", "--runs-dir", str(tmp_path / "runs"), *SMALL, "train.num_batches=3"])
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["message"] == "OSError: [Errno 28] No space left on device"
    assert meta["ended"]


def test_a_gradscan_that_fails_is_marked_failed(tmp_path, monkeypatch):
    from rnnexp import gradscan

    def broken(*args, **kwargs):
        raise ValueError("a plotting bug")

    monkeypatch.setattr(gradscan, "_write_figures", broken)
    result = runner.invoke(app, ["gradscan", "--runs-dir", str(tmp_path / "runs"), "-w", "1,2"])
    assert result.exit_code == 1 and "internal error: ValueError: a plotting bug" in result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("command", [["train", *SMALL], ["compare", "models=[{type: rnn}]"]])
def test_a_signal_while_starting_stops_before_a_folder_is_made(tmp_path, monkeypatch, command, signum, code):
    from rnnexp import cli

    def signalled(*args, **kwargs):  # the signal arrives while the config is read (or torch imported)
        os.kill(os.getpid(), signum)
        return load_config(*args, **kwargs)

    monkeypatch.setattr(cli, "load_config", signalled)
    result = runner.invoke(app, [command[0], "--quiet", "--runs-dir", str(tmp_path / "runs"), *command[1:]])
    assert result.exit_code == code
    assert result.stderr == "interrupted before it started; nothing was written\n" and result.stdout == ""
    assert list((tmp_path / "runs").glob("*")) == []  # train made its folder and removed it; compare made none


@pytest.mark.parametrize("signame, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_the_command_imports_its_libraries_is_one_line(tmp_path, signame, code):
    """The first few tenths of a second, before any command runs: it printed a traceback (or nothing)."""
    program = f"""
import builtins, os, signal, sys
import rnnexp
real_import = builtins.__import__
def importing(name, *args, **kwargs):
    if name == "typer":  # imported by rnnexp.cli, before any command begins
        os.kill(os.getpid(), signal.{signame})
    return real_import(name, *args, **kwargs)
builtins.__import__ = importing
sys.argv = ["rnnexp", "train", "--runs-dir", {str(tmp_path / "runs")!r}]
rnnexp.main()
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (code, "interrupted before it started; nothing was written\n", "")
    assert not (tmp_path / "runs").exists()


def test_an_ignored_sigint_stays_ignored(tmp_path):
    """A command started with SIGINT ignored (cmd & in a script without job control) goes on through one."""
    (tmp_path / "runs").mkdir()
    program = f"""
import builtins, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
import rnnexp
real_import = builtins.__import__
def importing(name, *args, **kwargs):
    if name == "typer":
        os.kill(os.getpid(), signal.SIGINT)
    return real_import(name, *args, **kwargs)
builtins.__import__ = importing
sys.argv = ["rnnexp", "runs", {str(tmp_path / "runs")!r}]
rnnexp.main()
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.splitlines()[0]) == (0, f"0 runs under {tmp_path / 'runs'}"), done.stderr


def test_after_a_command_a_signal_no_longer_says_before_it_started(tmp_path):
    import rnnexp

    before = signal.signal(signal.SIGINT, rnnexp._stopped_while_starting)  # as rnnexp.main leaves it
    try:
        assert runner.invoke(app, ["runs", str(tmp_path)]).exit_code == 0
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_wall_s_of_an_abandoned_resumed_run_adds_only_its_last_session(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({
        "status": "running", "started": "2026-12-01T10:00:00+00:00", "wall_s": 10.0,
        "resumed": [{"at_step": 500, "started": "2026-12-03T10:00:00+00:00"}]}))
    runs.abandon(tmp_path, "failed", "OSError: disk full")
    meta = json.loads((tmp_path / "meta.json").read_text())
    session = (datetime.fromisoformat(meta["ended"]) - datetime.fromisoformat("2026-12-03T10:00:00+00:00"))
    assert meta["status"] == "failed" and meta["wall_s"] == 10.0 + session.total_seconds()


def test_a_gradscan_stopped_names_its_folder_last(tmp_path, monkeypatch):
    from rnnexp import gradscan

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gradscan, "_write_figures", stopped)
    result = runner.invoke(app, ["gradscan", "--runs-dir", str(tmp_path / "runs"), "-w", "1,2"])
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert result.exit_code == 130
    assert result.stderr == f"interrupted; results so far are in {run_dir}\n"
    assert result.stdout.splitlines()[-1] == str(run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    started, ended = (datetime.fromisoformat(meta[key]) for key in ("started", "ended"))
    assert meta["wall_s"] == (ended - started).total_seconds()  # was null: `runs` showed no time


def test_a_hard_stop_of_train_names_its_folder(tmp_path, monkeypatch):
    def hard_stop(*args, **kwargs):  # a third Ctrl-C while the results are written
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "_write_gradnorms", hard_stop)
    result = runner.invoke(app, ["train", "--quiet", "--runs-dir", str(tmp_path / "runs"), *SMALL,
                                 "train.num_batches=20"])
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert result.exit_code == 130
    assert result.stderr == (f"interrupted; results so far are in {run_dir}; "
                             f"continue with: rnnexp train --resume {run_dir}\n")
    assert result.stdout.splitlines()[-1] == str(run_dir)
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "interrupted"


def test_a_resume_that_changes_a_setting_and_is_killed_can_be_resumed_again(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "FLUSH_EVERY", 1000)  # no periodic checkpoint in this short run
    run = _train(tmp_path, "runs", SMALL + ["train.num_batches=10"], should_stop=_stop_after(4)).run_dir

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process died right after the resume had started

    with monkeypatch.context() as patch:
        patch.setattr(experiments, "_train_and_finish", killed)
        with pytest.raises(KeyboardInterrupt):
            experiments.run_resume(run, ["train.lr=3e-3"], ["t"], False)
    assert load_config(run / "config.yaml").train.lr == 3e-3
    # Killed between its two writes: config.yaml new, checkpoint.pt still the old config's.
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["config"]["train"]["lr"] = 1e-4
    torch.save(checkpoint, run / "checkpoint.pt")
    again = experiments.run_resume(run, [], ["t"], False)
    assert again.status == "completed" and len(again.losses) == 10


def test_a_changed_learning_rate_takes_effect_on_resume(tmp_path):
    base = SMALL + ["train.num_batches=12"]
    same = _train(tmp_path, "same", base, should_stop=_stop_after(6)).run_dir
    changed = _train(tmp_path, "changed", base, should_stop=_stop_after(6)).run_dir
    a = experiments.run_resume(same, [], ["t"], False)
    b = experiments.run_resume(changed, ["train.lr=0.05"], ["t"], False)
    assert a.losses[:7] == b.losses[:7] and a.losses[7:] != b.losses[7:]  # step 6 ran before the new rate acted


def test_a_run_dir_run_resumed_in_its_partial_folder_moves_into_place(tmp_path):
    target = tmp_path / "sweep" / "point"
    result = experiments.run_train(load_config(None, SMALL + ["train.num_batches=6"]), tmp_path, ["t"], False,
                                   run_dir=target, should_stop=_stop_after(2))
    assert result.status == "interrupted" and result.run_dir == tmp_path / "sweep" / "point.partial"
    resumed = experiments.run_resume(result.run_dir, [], ["t"], False)
    assert resumed.run_dir == target and not result.run_dir.exists()
    assert {p.name for p in target.iterdir()} == TRAIN_FILES and _metrics_rows(target) == 6

"""The Makefile sweeps: a tiny real sweep-lr through make in a copy of the repository, and sweep-gradscan's rules."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import TRAIN_FILES  # the files of a complete train run, listed once

ROOT = Path(__file__).resolve().parents[1]
TINY = "train.num_batches=10 train.batch_size=4 model.hidden_size=4 eval.num_sequences=16"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


@pytest.fixture
def repo(tmp_path) -> Path:
    """The files the sweeps need, with the setup stamp in place so make does not build a .venv."""
    for name in ("Makefile", "sweeps.mk", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    os.utime(tmp_path / "pyproject.toml", (0, 0))  # older than the stamp
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").touch()
    return tmp_path


def _make(repo: Path, *args: str, rnnexp: str = f"{sys.executable} -m rnnexp") -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", f"RNNEXP={rnnexp}", *args], cwd=repo,
                          capture_output=True, text=True, timeout=300)


def _lr_grid(seeds: str) -> list[str]:
    return ["LR_SWEEP_MODELS=rnn_1_layer", "LR_SWEEP_LRS=1e-2", f"LR_SWEEP_SEEDS={seeds}", f"SWEEP_ARGS={TINY}"]


def test_sweep_lr_runs_each_point_once_and_only_the_missing_ones_again(repo):
    lr = repo / "runs" / "sweeps" / "lr"
    result = _make(repo, "-j2", "sweep-lr", *_lr_grid("0 1"))
    assert result.returncode == 0, result.stderr
    points = [lr / f"rnn_1_layer_lr1e-2_seed{s}" for s in (0, 1)]
    assert {p.name for p in lr.iterdir()} == {p.name for p in points} | {"eval_mse.png"}
    for seed, point in enumerate(points):
        assert {p.name for p in point.iterdir()} == TRAIN_FILES
        assert json.loads((point / "meta.json").read_text())["status"] == "completed"
        config = (point / "config.yaml").read_text()
        assert f"seed: {seed}\n" in config and "lr: 0.01\n" in config and "num_batches: 10\n" in config
    assert result.stdout.splitlines()[-1] == "runs/sweeps/lr/eval_mse.png"
    assert "2 runs under runs/sweeps/lr" in result.stdout

    # A third seed, whose first attempt was interrupted: only that point is (re)run.
    partial = lr / "rnn_1_layer_lr1e-2_seed2.partial"
    shutil.copytree(points[1], partial)
    meta = json.loads((partial / "meta.json").read_text())
    (partial / "meta.json").write_text(json.dumps(meta | {"status": "interrupted"}))
    dry = _make(repo, "-n", "sweep-lr", *_lr_grid("0 1 2"))
    trained = [line for line in dry.stdout.splitlines() if " train " in line]
    assert len(trained) == 1 and "--run-dir runs/sweeps/lr/rnn_1_layer_lr1e-2_seed2 " in trained[0]

    before = {p: (p / "summary.json").stat().st_mtime_ns for p in points}
    result = _make(repo, "-j2", "sweep-lr", *_lr_grid("0 1 2"))
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("train ")] == [
        "train runs/sweeps/lr/rnn_1_layer_lr1e-2_seed2"]
    assert {p: (p / "summary.json").stat().st_mtime_ns for p in points} == before
    assert not partial.exists() and {p.name for p in (lr / "rnn_1_layer_lr1e-2_seed2").iterdir()} == TRAIN_FILES
    assert "3 runs under runs/sweeps/lr" in result.stdout
    assert _make(repo, "-q", *[str(lr / f"rnn_1_layer_lr1e-2_seed{s}" / "summary.json") for s in (0, 1, 2)],
                 *_lr_grid("0 1 2")).returncode == 0  # make -q: every point is up to date


STAND_IN = """#!/bin/sh
# Stands in for rnnexp gradscan (issue 4): a new run folder under --runs-dir, its path printed last.
if [ "$1" = gradscan ]; then
  args="$*"
  while [ $# -gt 0 ]; do [ "$1" = --runs-dir ] && run="$2/2026-01-01_00-00-00_gradscan"; shift; done
  mkdir -p "$run"
  printf 'name: gradscan\\nmodel: {type: rnn}\\n' > "$run/config.yaml"
  printf '{"status": "running"}' > "$run/meta.json"
  case "$args" in *"--nonlinearity identity"*) echo "scan failed" >&2; exit 1;; esac
  printf '{"status": "completed"}' > "$run/meta.json"
  echo "$run"
fi
exec {python} -m rnnexp "$@"
"""


def test_sweep_gradscan_moves_each_finished_scan_into_its_point_folder(repo):
    fake = repo / "fake-rnnexp"
    fake.write_text(STAND_IN.replace("{python}", sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    dry = _make(repo, "-n", "sweep-gradscan", rnnexp=str(fake))
    scans = [line for line in dry.stdout.splitlines() if " gradscan --" in line]
    assert len(scans) == 15 and scans[0].startswith(f"exec {fake} gradscan --nonlinearity tanh --seed 0 "
                                                    "--weight-scale=-5:5:0.25 --bias-scale=1 ")

    gradscan = repo / "runs" / "sweeps" / "gradscan"
    result = _make(repo, "-k", "sweep-gradscan", "GRADSCAN_SEEDS=0 1", rnnexp=str(fake))
    assert result.returncode != 0 and "scan failed" in result.stderr
    assert sorted(p.name for p in gradscan.iterdir()) == ["identity_seed0.partial", "identity_seed1.partial",
                                                          "relu_seed0", "relu_seed1", "tanh_seed0", "tanh_seed1"]
    assert {p.name for p in (gradscan / "relu_seed1").iterdir()} == {"meta.json", "config.yaml"}
    result = _make(repo, "sweep-gradscan", "GRADSCAN_SEEDS=0 1", "GRADSCAN_NONLINEARITIES=tanh relu",
                   rnnexp=str(fake))
    assert result.returncode == 0
    assert not [line for line in result.stdout.splitlines() if line.startswith("gradscan ")]  # nothing left to do
    # The failed scans stay visible, in their .partial folders.
    assert "6 runs under runs/sweeps/gradscan" in result.stdout and "identity_seed0.partial/" in result.stdout


def test_sweep_gradscan_with_the_real_command(repo):
    result = _make(repo, "sweep-gradscan", "GRADSCAN_NONLINEARITIES=relu", "GRADSCAN_SEEDS=3",
                   "GRADSCAN_WEIGHT_SCALES=-1,0,1", "GRADSCAN_ARGS=--hidden-size 4")
    assert result.returncode == 0, result.stderr
    point = repo / "runs" / "sweeps" / "gradscan" / "relu_seed3"
    assert sorted(p.name for p in point.parent.iterdir()) == ["relu_seed3"]
    assert {"config.yaml", "meta.json", "scan.csv", "gradients.csv", "model.pt", "inputs.pt"} <= {
        p.name for p in point.iterdir()}
    assert [line.split(",")[0] for line in (point / "scan.csv").read_text().splitlines()[1:]] == ["-1.0", "0.0", "1.0"]
    assert "seed: 3" in (point / "config.yaml").read_text() and "nonlinearity: relu" in (point / "config.yaml").read_text()
    assert "1 run under runs/sweeps/gradscan" in result.stdout

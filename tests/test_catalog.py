"""rnnexp runs (the table of every run under a folder) and train --run-dir, through the CLI."""
import csv
import io
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rnnexp.cli import app

from test_cli import TRAIN_FILES  # the files of a complete train run, listed once

TINY = ["model.hidden_size=4", "train.num_batches=12", "train.batch_size=4", "eval.num_sequences=16"]
LRS, SEEDS = ("1e-3", "1e-2"), (0, 1)
runner = CliRunner()


def _point(lr: str, seed: int) -> str:
    return f"rnn_lr{lr}_seed{seed}"


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """A tiny lr x seed sweep, trained once: four run folders under sweep/."""
    root = tmp_path_factory.mktemp("library")
    for lr in LRS:
        for seed in SEEDS:
            result = runner.invoke(app, ["train", "-q", "--run-dir", str(root / "sweep" / _point(lr, seed)),
                                         "name=rnn", f"train.lr={lr}", f"seed={seed}", *TINY])
            assert result.exit_code == 0, result.output
    return root / "sweep"


@pytest.fixture
def sweep(library, tmp_path) -> Path:
    return Path(shutil.copytree(library, tmp_path / "sweep"))


def _runs(*args):
    return runner.invoke(app, ["runs", *map(str, args)])


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _set_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(meta | changes))


def _expected_rows(sweep: Path, points: list[tuple[str, int]]) -> list[dict]:
    rows = []
    for lr, seed in points:
        s = _summary(sweep / _point(lr, seed))
        rows.append({"folder": _point(lr, seed), "name": "rnn", "status": "completed", "model": "rnn", "seed": seed,
                     "train.lr": float(lr), "final_train_loss": s["final_train_loss"], "eval_mse": s["eval_mse"],
                     "wall_s": s["wall_s"]})
    return rows


ALL_POINTS = sorted([(lr, seed) for lr in LRS for seed in SEEDS], key=lambda p: _point(*p))


def test_run_dir_publishes_a_complete_folder_and_never_overwrites_it(library):
    assert {p.name for p in library.iterdir()} == {_point(lr, s) for lr in LRS for s in SEEDS}  # no .partial left
    done = library / _point("1e-3", 0)
    assert {p.name for p in done.iterdir()} == TRAIN_FILES
    meta = json.loads((done / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["host"] == socket.gethostname() and meta["pid"] == os.getpid()
    before = {p.name: p.read_bytes() for p in done.iterdir()}
    result = runner.invoke(app, ["train", "-q", "--run-dir", str(done), *TINY])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: --run-dir {done}: already exists (status completed); a run folder is "
                                     "never overwritten: delete it to run this point again")
    assert {p.name: p.read_bytes() for p in done.iterdir()} == before


def test_run_dir_replaces_an_unfinished_attempt_but_not_a_live_one(library, tmp_path):
    target = tmp_path / "point"
    partial = tmp_path / "point.partial"
    shutil.copytree(library / _point("1e-3", 0), partial)
    _set_meta(partial, status="running", pid=os.getpid(), host=socket.gethostname())  # this process: alive
    result = runner.invoke(app, ["train", "-q", "--run-dir", str(target), *TINY])
    assert result.exit_code == 2 and f"{partial} is being trained by process {os.getpid()}" in result.stderr
    assert not target.exists()

    _set_meta(partial, status="interrupted")
    (partial / "stale.txt").write_text("from the attempt that was interrupted")
    result = runner.invoke(app, ["train", "-q", "--run-dir", str(target), "name=rnn", "train.lr=1e-3", "seed=0", *TINY])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(target)
    assert not partial.exists() and {p.name for p in target.iterdir()} == TRAIN_FILES
    assert (target / "metrics.csv").read_text() == (library / _point("1e-3", 0) / "metrics.csv").read_text()


def test_run_dir_never_deletes_a_partial_folder_that_is_not_a_run(tmp_path):
    partial = tmp_path / "point.partial"
    (partial / "sub").mkdir(parents=True)
    (partial / "sub" / "thesis.tex").write_text("months of work")
    result = runner.invoke(app, ["train", "-q", "--run-dir", str(tmp_path / "point"), *TINY])
    assert result.exit_code == 2
    message = (f"error: --run-dir {tmp_path / 'point'}: {partial} exists and is not an unfinished run (its meta.json "
               "has no status running, interrupted, failed); move or delete it")
    assert result.stderr.strip() == message
    (partial / "meta.json").write_text(json.dumps({"status": "draft"}))  # another tool's meta.json
    result = runner.invoke(app, ["train", "-q", "--run-dir", str(tmp_path / "point"), *TINY])
    assert result.exit_code == 2 and result.stderr.strip() == message
    assert (partial / "sub" / "thesis.tex").read_text() == "months of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["point.partial"]


def test_run_dir_with_runs_dir_is_a_user_error(tmp_path):
    result = runner.invoke(app, ["train", "-q", "--run-dir", str(tmp_path / "a"), "--runs-dir", str(tmp_path / "b")])
    assert result.exit_code == 2 and "give one of them" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_json_lists_every_run_with_the_numbers_of_its_summary(sweep):
    result = _runs(sweep, "--json")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout == json.dumps(_expected_rows(sweep, ALL_POINTS), indent=2) + "\n"


def test_csv_exact(sweep):
    result = _runs(sweep, "--csv", "--sort", "eval_mse")
    assert result.exit_code == 0
    rows = sorted(_expected_rows(sweep, ALL_POINTS), key=lambda r: r["eval_mse"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(rows[0]))
    writer.writerows(r.values() for r in rows)
    assert result.stdout == buf.getvalue()
    assert result.stdout.splitlines()[0] == "folder,name,status,model,seed,train.lr,final_train_loss,eval_mse,wall_s"


def test_table_shows_only_the_varying_hyperparameters(sweep):
    result = _runs(sweep)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"4 runs under {sweep}"
    header = [c.strip() for c in lines[2].strip("┃").split("┃")]
    assert header == ["folder", "name", "status", "model", "seed", "train.lr", "final_train_loss", "eval_mse",
                      "wall_s"]
    first = [c.strip() for c in lines[4].strip("│").split("│")]
    s = _summary(sweep / _point("1e-2", 0))
    assert first == [_point("1e-2", 0), "rnn", "completed", "rnn", "0", "0.01", format(s["final_train_loss"], ".4g"),
                     format(s["eval_mse"], ".4g"), format(s["wall_s"], ".1f")]


def test_sort_reverse_and_bad_column(sweep):
    result = _runs(sweep, "--json", "--sort", "eval_mse", "--reverse")
    mses = [r["eval_mse"] for r in json.loads(result.stdout)]
    assert mses == sorted(mses, reverse=True) and len(mses) == 4
    result = _runs(sweep, "--sort", "loss")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --sort loss: not a column here; expected one of folder, name, status, "
                                     "model, seed, train.lr, final_train_loss, eval_mse, wall_s")


def test_damaged_and_foreign_folders_are_skipped_with_a_warning(sweep):
    broken_meta = sweep / "broken_meta"
    broken_meta.mkdir()
    (broken_meta / "meta.json").write_text('{"status": "compl')
    bad_status = sweep / "bad_status"
    bad_status.mkdir()
    (bad_status / "meta.json").write_text('{"status": 5}')
    truncated = sweep / "truncated_summary"
    shutil.copytree(sweep / _point("1e-3", 0), truncated)
    (truncated / "summary.json").write_text('{\n  "name": "rnn",\n  "status": "compl')  # planted damage
    no_summary = sweep / "lost_summary"
    shutil.copytree(sweep / _point("1e-3", 1), no_summary)
    (no_summary / "summary.json").unlink()
    (sweep / "notes").mkdir()
    (sweep / "notes" / "todo.txt").write_text("not a run")
    (sweep / "empty").mkdir()
    (sweep / "README.txt").write_text("files beside runs are ignored")

    result = _runs(sweep, "--json")
    assert result.exit_code == 0
    assert result.stdout == json.dumps(_expected_rows(sweep, ALL_POINTS), indent=2) + "\n"
    assert result.stderr.splitlines() == [
        f"warning: skipped {bad_status}: meta.json: status 5 is not a name",
        f"warning: skipped {broken_meta}: meta.json: not valid JSON (Unterminated string starting at: line 1 "
        "column 12 (char 11))",
        f"warning: skipped {no_summary}: a completed training without summary.json",
        f"warning: skipped {sweep / 'notes'}: not a run folder (no meta.json)",
        f"warning: skipped {truncated}: summary.json: not valid JSON (Unterminated string starting at: line 3 "
        "column 13 (char 31))",
    ]


def test_a_running_run_whose_process_is_gone_is_dead(sweep):
    ended = subprocess.Popen(["true"])
    ended.wait()  # reaped: its pid names no process now
    cases = {"dead": (ended.pid, socket.gethostname()), "alive": (os.getpid(), socket.gethostname()),
             "elsewhere": (ended.pid, "another-machine")}
    for label, (pid, host) in cases.items():
        folder = sweep / label
        shutil.copytree(sweep / _point("1e-3", 0), folder)
        (folder / "summary.json").unlink()
        _set_meta(folder, status="running", ended=None, wall_s=None, pid=pid, host=host)
    rows = {r["folder"]: r for r in json.loads(_runs(sweep, "--json").stdout)}
    # Another machine's process cannot be checked from here: it stays running.
    assert {k: rows[k]["status"] for k in cases} == {"dead": "dead", "alive": "running", "elsewhere": "running"}
    assert rows["dead"]["eval_mse"] is None and rows["dead"]["wall_s"] is None


def test_the_trainings_of_a_compare_folder_are_listed_not_the_folder(sweep):
    group = sweep / "cmp"
    group.mkdir()
    (group / "meta.json").write_text(json.dumps({"status": "completed"}))
    (group / "config.yaml").write_text("name: compare\nmodels: [{type: rnn}]\n")
    (group / "summary.json").write_text("[]")
    shutil.move(sweep / _point("1e-3", 0), group / "rnn_all")
    result = _runs(sweep, "--json")
    assert result.exit_code == 0 and result.stderr == ""
    assert sorted(r["folder"] for r in json.loads(result.stdout)) == sorted(
        ["cmp/rnn_all", _point("1e-3", 1), _point("1e-2", 0), _point("1e-2", 1)])


def test_a_compare_folder_stopped_before_any_training_is_listed_as_itself(sweep):
    group = sweep / "cmp"
    group.mkdir()
    (group / "meta.json").write_text(json.dumps({"status": "interrupted", "wall_s": 1.5}))
    (group / "config.yaml").write_text("name: compare\nmodels: [{type: rnn}]\n")
    (group / "summary.json").write_text(json.dumps([{"label": "rnn_1_layer", "status": "not started"}]))
    result = _runs(sweep, "--json")
    assert result.exit_code == 0 and result.stderr == ""
    row = next(r for r in json.loads(result.stdout) if r["folder"] == "cmp")
    assert (row["status"], row["name"], row["eval_mse"], row["wall_s"]) == ("interrupted", "compare", None, 1.5)


def test_plot_writes_the_png_and_prints_mean_and_spread(sweep, tmp_path):
    png = tmp_path / "sweep.png"
    result = _runs(sweep, "--plot", png)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep", "sweep.png"]  # no temporary file left
    for lr in LRS:
        values = [_summary(sweep / _point(lr, seed))["eval_mse"] for seed in SEEDS]
        mean = sum(values) / 2
        std = abs(values[0] - values[1]) / 2 ** 0.5
        rows = [[c.strip().rstrip(" *") for c in line.strip("│").split("│")] for line in result.stdout.splitlines()]
        cells = next(r for r in rows if len(r) == 7 and r[1] == f"{float(lr):g}")
        assert cells == ["rnn", f"{float(lr):g}", "2", format(mean, ".4g"), format(std, ".4g"),
                         format(min(values), ".4g"), format(max(values), ".4g")]


def test_a_gradscan_run_beside_the_sweep_changes_nothing_in_its_plot(sweep, tmp_path):
    alone = _runs(sweep, "--plot", tmp_path / "alone.png")
    scan = runner.invoke(app, ["gradscan", "--runs-dir", str(sweep), "--hidden-size", "4", "-w", "1,2"])
    assert scan.exit_code == 0, scan.output
    mixed = _runs(sweep, "--plot", tmp_path / "mixed.png")
    assert mixed.exit_code == 0 and "Warning" not in mixed.stderr, mixed.output
    tail = lambda result: result.stdout.split("eval MSE by train.lr")[1].splitlines()[:-1]  # noqa: E731
    assert tail(mixed) == tail(alone) and "rnn " in "".join(tail(mixed))


@pytest.mark.parametrize("args,message", [
    (["--plot", "out.txt"], "--plot out.txt: expected a file name ending in .png"),
    (["--plot", "missing/out.png"], "--plot missing/out.png: folder missing does not exist"),
    (["--plot", "out.png", "--x", "seed"], "--x seed: the spread is taken over seeds"),
    (["--plot", "out.png", "--x", "model.type"], "--x model.type: not a number in every run here"),
    (["--plot", "out.png", "--csv"], "--plot prints the sweep table"),
    (["--csv", "--json"], "--csv and --json: give one of them"),
])
def test_bad_runs_options(sweep, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = _runs(sweep, *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    if args[0] == "--plot" and "--x" not in args and "--csv" not in args:
        assert result.stdout == ""  # the path is checked before the table is printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


def test_a_scans_scales_show_as_their_range(sweep):
    scan = runner.invoke(app, ["gradscan", "--runs-dir", str(sweep), "--hidden-size", "4", "-w", "-5:5:0.25"])
    assert scan.exit_code == 0, scan.output
    result = _runs(sweep)
    assert result.exit_code == 0 and "-5 .. 5 (41)" in result.stdout and "-4.75" not in result.stdout


def test_missing_folder_is_a_user_error(tmp_path):
    result = _runs(tmp_path / "nowhere")
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such folder"


def test_x_without_plot_is_refused(sweep):
    result = _runs(sweep, "--x", "train.lr")
    assert result.exit_code == 2
    assert result.stderr == "error: --x train.lr: chooses the swept parameter of --plot; give --plot FILE.png too\n"

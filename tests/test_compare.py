"""rnnexp compare: folders, summary, fairness, parallel == sequential, failures."""
import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_cli import TRAIN_FILES

from rnnexp import compare as compare_module
from rnnexp.cli import app
from rnnexp.config import CompareConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SUB_FILES = TRAIN_FILES  # a compare sub-folder holds what a train run does
SMALL = ["train.num_batches=12", "eval.num_sequences=16", "train.batch_size=4"]
runner = CliRunner()


def _compare(tmp_path, *args, runs="runs"):
    result = runner.invoke(app, ["compare", "--runs-dir", str(tmp_path / runs), "--quiet", *args])
    return result, Path(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None


def _losses(run_dir: Path) -> dict[str, str]:
    return {d.name: (d / "metrics.csv").read_text() for d in sorted(run_dir.iterdir()) if d.is_dir()}


def test_shipped_compare_config_is_the_notebook_experiment():
    cfg = load_config(ROOT / "configs" / "compare.yaml", cls=CompareConfig)
    assert cfg.targets == ("all", "last")
    assert [(m.resolved_label(), m.type, m.num_layers, m.hidden_size) for m in cfg.models] == [
        ("rnn_1_layer", "rnn", 1, 32), ("lstm_1_layer", "lstm", 1, 32),
        ("rnn_2_layer", "rnn", 2, 32), ("lstm_2_layer", "lstm", 2, 32)]
    assert (cfg.train.lr, cfg.train.num_batches, cfg.train.batch_size, cfg.seed) == (1e-4, 5000, 32, 0)


def test_compare_writes_every_file(tmp_path):
    result, run_dir = _compare(tmp_path, "--config", str(ROOT / "configs" / "compare.yaml"), *SMALL, "--jobs", "2")
    assert result.exit_code == 0, result.output
    labels = ["rnn_1_layer", "lstm_1_layer", "rnn_2_layer", "lstm_2_layer"]
    subs = {f"{label}_{t}" for label in labels for t in ("all", "last")}
    top = {"config.yaml", "meta.json", "summary.csv", "summary.json", "losses_all.png", "losses_last.png",
           "predictions_all.png", "predictions_last.png"}
    assert {p.name for p in run_dir.iterdir()} == top | subs
    for sub in subs:
        assert {p.name for p in (run_dir / sub).iterdir()} == SUB_FILES
    rows = list(csv.DictReader((run_dir / "summary.csv").open()))
    assert list(rows[0]) == ["label", "target", "seed", "type", "num_layers", "hidden_size", "num_params", "final_train_loss",
                             "eval_mse", "wall_s", "steps_per_s", "status"]
    assert [(r["label"], r["target"], r["seed"]) for r in rows] == [(label, t, "0") for label in labels
                                                                    for t in ("all", "last")]
    for r in rows:
        sub = json.loads((run_dir / f"{r['label']}_{r['target']}" / "summary.json").read_text())
        assert float(r["eval_mse"]) == sub["eval_mse"] and int(r["num_params"]) == sub["num_params"]
        assert r["status"] == "completed"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["message"] == "" and meta["jobs"] == 2
    assert "best eval MSE per target" in result.stdout


def test_parallel_equals_sequential_and_models_are_independent(tmp_path):
    two = ["models=[{type: rnn, hidden_size: 4}, {type: lstm, hidden_size: 4}]", *SMALL]
    _, parallel = _compare(tmp_path, *two, "--jobs", "2", runs="a")
    _, sequential = _compare(tmp_path, *two, "--jobs", "1", runs="b")
    assert _losses(parallel) == _losses(sequential) and len(_losses(parallel)) == 4
    _, lstm_only = _compare(tmp_path, "models=[{type: lstm, hidden_size: 4}]", *SMALL, runs="c")
    kept = _losses(lstm_only)
    assert set(kept) == {"lstm_1_layer_all", "lstm_1_layer_last"}
    assert kept == {k: v for k, v in _losses(parallel).items() if k.startswith("lstm")}


def test_seeds_are_trained_together_and_each_equals_its_train_run(tmp_path):
    """seeds: 3 puts 3 seeds x 2 targets of the model into one engine (or two, split over --jobs 2); every one
    of them is, bit for bit, the train run of that seed and target."""
    one = ["models=[{label: m, type: lstm, hidden_size: 4}]", "seed=5", "seeds=3", *SMALL]
    result, run_dir = _compare(tmp_path, *one, "--jobs", "1", runs="a")
    assert result.exit_code == 0, result.output
    subs = {f"m_{t}_seed{s}" for t in ("all", "last") for s in (5, 6, 7)}
    assert {p.name for p in run_dir.iterdir() if p.is_dir()} == subs
    rows = list(csv.DictReader((run_dir / "summary.csv").open()))
    assert [(r["target"], r["seed"]) for r in rows] == [(t, str(s)) for t in ("all", "last") for s in (5, 6, 7)]
    assert "3/3" in result.stdout  # the table has a line per model and target, over its seeds
    for sub in ("m_all_seed6", "m_last_seed7"):
        target, seed = sub.split("_")[1], sub[-1]
        train = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "t"), "-q", "name=m", "model.type=lstm",
                                    "model.hidden_size=4", f"train.target={target}", f"seed={seed}", *SMALL])
        train_dir = Path(train.stdout.strip().splitlines()[-1])
        assert (train_dir / "metrics.csv").read_text() == (run_dir / sub / "metrics.csv").read_text()
        alone, together = (json.loads((d / "summary.json").read_text()) for d in (train_dir, run_dir / sub))
        assert alone["eval_mse"] == together["eval_mse"]
        assert (alone["trained_together"], together["trained_together"]) == (1, 6)
    _, split = _compare(tmp_path, *one, "--jobs", "2", runs="b")  # one model, two workers: its copies split
    assert json.loads((split / "meta.json").read_text())["jobs"] == 2
    assert _losses(split) == _losses(run_dir)


def test_groups_are_models_costliest_first_and_split_to_fill_the_jobs():
    cfg = load_config(ROOT / "configs" / "compare.yaml", cls=CompareConfig)
    configs = cfg.train_configs()
    names = lambda groups: [[(configs[k].name, configs[k].train.target) for k in g] for g in groups]  # noqa: E731
    assert names(compare_module.groups_of(configs, 2)) == [
        [(m, "all"), (m, "last")] for m in ("lstm_2_layer", "lstm_1_layer", "rnn_2_layer")] + [
        [("rnn_1_layer", "all")], [("rnn_1_layer", "last")]]  # the last, split: both jobs share the tail
    assert names(compare_module.groups_of(configs, 1)) == [
        [(m, "all"), (m, "last")] for m in ("lstm_2_layer", "lstm_1_layer", "rnn_2_layer", "rnn_1_layer")]
    one = [c for c in configs if c.name == "rnn_1_layer"]
    assert names(compare_module.groups_of(one, 2)) == [[("rnn_1_layer", "all")], [("rnn_1_layer", "last")]]
    assert len(compare_module.groups_of(one, 8)) == 2  # a training is never split


def test_train_and_compare_agree_for_the_same_model(tmp_path):
    _, cmp_dir = _compare(tmp_path, "models=[{label: m, type: rnn, hidden_size: 4}]", "targets=[last]", *SMALL)
    result = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "t"), "-q", "name=m", "model.hidden_size=4",
                                 "train.target=last", *SMALL])
    train_dir = Path(result.stdout.strip().splitlines()[-1])
    assert (train_dir / "metrics.csv").read_text() == (cmp_dir / "m_last" / "metrics.csv").read_text()


def test_one_failed_training_does_not_stop_the_others(tmp_path, monkeypatch):
    real = compare_module.train_group_into

    def flaky(run_dirs, configs, *args, **kwargs):
        if configs[0].model.type == "lstm":
            raise RuntimeError("simulated crash")
        return real(run_dirs, configs, *args, **kwargs)

    monkeypatch.setattr(compare_module, "train_group_into", flaky)  # forked workers inherit it
    result, run_dir = _compare(tmp_path, "models=[{type: rnn, hidden_size: 4}, {type: lstm, hidden_size: 4}]", *SMALL)
    assert result.exit_code == 1
    rows = {(r["label"], r["target"]): r for r in json.loads((run_dir / "summary.json").read_text())}
    for target in ("all", "last"):  # the lstm's two target modes train together, so they fail together
        assert rows[("lstm_1_layer", target)]["status"] == "failed"
        assert "simulated crash" in rows[("lstm_1_layer", target)]["message"]
        assert rows[("rnn_1_layer", target)]["status"] == "completed"
    assert "simulated crash" in result.stderr
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["message"] == "lstm_1_layer (all) failed; lstm_1_layer (last) failed"


@pytest.mark.parametrize("args,message", [
    (["targets=[all, all]"], "targets = [all, all]: a value is repeated"),
    (["models=[{type: rnn}, {type: rnn}]"], "label 'rnn_1_layer' is used twice"),
    (["train.target=all"], "train.target: unknown key"),
    (["models.7.hidden_size=3"], "models has items 0 to 3"),
    (["--jobs", "0"], "--jobs"),
    (["seeds=0"], "seeds = 0: expected an integer from 1 to 256"),
    (["seeds=1000000000"], "seeds = 1000000000: expected an integer from 1 to 256"),
    (["seeds=abc"], "seeds = 'abc': expected an integer from 1 to 256"),
])
def test_bad_compare_input(tmp_path, args, message):
    result, _ = _compare(tmp_path, *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_stops_the_running_trainings_and_starts_no_other(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "rnnexp", "compare", "--runs-dir", str(runs), "--quiet", "--jobs", "1",
                             "models=[{type: rnn, hidden_size: 4}, {type: lstm, hidden_size: 4}]",
                             "train.num_batches=100000", "eval.num_sequences=16"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    # The costlier model (the lstm, both target modes together) runs first; the rnn waits for the one job.
    while not list(runs.glob("*/lstm_1_layer_all/metrics.csv")) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    run_dir = Path(stdout.strip().splitlines()[-1])
    rows = {(r["label"], r["target"]): r for r in json.loads((run_dir / "summary.json").read_text())}
    for target in ("all", "last"):
        assert rows[("lstm_1_layer", target)]["status"] == "interrupted", rows[("lstm_1_layer", target)]
        assert json.loads((run_dir / f"lstm_1_layer_{target}" / "meta.json").read_text())["status"] == "interrupted"
        row = rows[("rnn_1_layer", target)]
        assert row["status"] == "not started" and row["message"] == "interrupted before it started"
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["lstm_1_layer_all", "lstm_1_layer_last"]
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "interrupted"


def test_a_figure_that_fails_in_the_drawing_process_is_drawn_again_by_the_parent(tmp_path, monkeypatch):
    import os

    from rnnexp import plots

    parent, real = os.getpid(), plots.predictions_figure

    def only_in_the_parent(*args, **kwargs):
        if os.getpid() != parent and args[4].startswith("compare:"):  # the comparison's, not a training's
            raise RuntimeError("drawing failed in the child")
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "predictions_figure", only_in_the_parent)
    result, run_dir = _compare(tmp_path, "models=[{type: rnn, hidden_size: 4}]", *SMALL)
    assert result.exit_code == 0 and "Traceback" not in result.stderr
    assert {p.name for p in run_dir.glob("*.png")} == {"losses_all.png", "losses_last.png", "predictions_all.png",
                                                       "predictions_last.png"}


def test_should_stop_ends_the_running_trainings_interrupted(tmp_path):
    """The CLI answers Ctrl-C and SIGTERM through should_stop, asked while the workers run."""
    import time

    config = load_config(None, ["models=[{type: rnn, hidden_size: 4}]", "train.num_batches=100000",
                                "eval.num_sequences=16"], cls=CompareConfig)
    started = time.monotonic()
    result = compare_module.run_compare(config, tmp_path, [], jobs=2, show_progress=False,
                                        should_stop=lambda: time.monotonic() - started > 3)
    assert result.status == "interrupted"
    assert [r["status"] for r in result.rows] == ["interrupted", "interrupted"]
    for row in result.rows:
        metrics = (result.run_dir / f"{row['label']}_{row['target']}" / "metrics.csv").read_text().splitlines()
        assert 1 < len(metrics) - 1 < 100000  # a header, then the steps taken before the stop
    assert json.loads((result.run_dir / "meta.json").read_text())["status"] == "interrupted"


def test_a_comparison_whose_trainings_only_diverged_is_diverged_not_failed(tmp_path):
    models = "models=[{type: rnn, nonlinearity: identity, hidden_size: 6}, {type: lstm, hidden_size: 6}]"
    result, run_dir = _compare(tmp_path, models, "task.seq_len=50", "train.lr=1000", "train.num_batches=20",
                               "eval.num_sequences=16", "targets=[all]")
    assert result.exit_code == 1
    assert "compare: 2 trainings (diverged)" in result.stdout
    assert result.stderr == "rnn_1_layer (all) diverged: loss became nan at step 1\n"
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "diverged"
    rows = {r["label"]: r["status"] for r in csv.DictReader((run_dir / "summary.csv").open())}
    assert rows == {"rnn_1_layer": "diverged", "lstm_1_layer": "completed"}

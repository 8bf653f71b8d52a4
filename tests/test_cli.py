"""The command line, driven through Typer's CliRunner into temporary folders."""
import csv
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from rnnexp.cli import app

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FILES = {"config.yaml", "meta.json", "metrics.csv", "summary.json", "loss.png", "predictions.png", "model.pt", "checkpoint.pt",
               "gradnorms.csv", "gradnorms.png"}
runner = CliRunner()


def _train(tmp_path, *args):
    return runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "runs"), "--quiet", *args])


def test_train_writes_a_complete_run(tmp_path):
    result = _train(tmp_path, "--config", str(ROOT / "configs" / "lstm_2_layer.yaml"), "train.num_batches=30",
                    "train.target=last", "--device", "cpu", "log.grad_every=12")
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.endswith("_lstm_2_layer")
    assert {p.name for p in run_dir.iterdir()} == TRAIN_FILES

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] == {"type": "lstm", "num_layers": 2, "hidden_size": 32, "nonlinearity": "tanh"}
    assert config["log"] == {"grad_every": 12}
    assert config["train"]["num_batches"] == 30 and config["train"]["target"] == "last" and config["device"] == "cpu"

    rows = list(csv.reader((run_dir / "metrics.csv").open()))
    assert rows[0] == ["step", "loss"] and [int(r[0]) for r in rows[1:]] == list(range(30))

    summary = json.loads((run_dir / "summary.json").read_text())
    losses = [float(r[1]) for r in rows[1:]]
    assert summary["final_train_loss"] == pytest.approx(sum(losses) / 30)
    assert summary["num_params"] == 12705 and summary["steps"] == 30 and summary["status"] == "completed"
    assert summary["eval_mse"] > 0 and summary["steps_per_s"] > 0 and summary["wall_s"] > 0
    assert summary["trained_together"] == 1

    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["seed"] == 0 and meta["device"] == "cpu"
    assert meta["torch"] == torch.__version__ and meta["ended"] and meta["wall_s"] > 0

    checkpoint = torch.load(run_dir / "model.pt", weights_only=True)
    assert checkpoint["config"] == config
    from rnnexp.models import build_model

    model = build_model("lstm", 1, 32, 2)
    model.load_state_dict(checkpoint["state_dict"])
    # The probe: at step 0, every log.grad_every (here 12) batches and at the end, per layer and timestep.
    rows = list(csv.reader((run_dir / "gradnorms.csv").open()))
    assert rows[0] == ["step", "layer", "timestep", "grad_norm", "cell_grad_norm"]
    assert sorted({int(r[0]) for r in rows[1:]}) == [0, 12, 24, 30] and len(rows) == 1 + 4 * 2 * 10
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows[1:])
    for png in ("loss.png", "predictions.png", "gradnorms.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_config_same_metrics_and_new_folder_each_time(tmp_path):
    args = ["train.num_batches=15", "model.hidden_size=4"]
    first, second = _train(tmp_path, *args), _train(tmp_path, *args)
    dirs = [Path(r.stdout.strip().splitlines()[-1]) for r in (first, second)]
    assert dirs[0] != dirs[1]
    assert (dirs[0] / "metrics.csv").read_text() == (dirs[1] / "metrics.csv").read_text()


BAD_INPUTS = [
    (["--config", "missing.yaml"], "missing.yaml: config file not found"),
    (["train.lr=-1"], "train.lr = -1: expected a number > 0"),
    (["model.type=gru"], "model.type = 'gru': expected one of rnn, lstm"),
    (["model.hiden_size=3"], "unknown key (did you mean 'model.hidden_size'?)"),
    (["train.lr"], "override 'train.lr': expected key=value"),
    (["device=tpu"], "device = 'tpu': expected one of auto, cpu, cuda"),
    (["log.grad_every=0"], "log.grad_every = 0: expected an integer >= 1"),
    (["log.grad_evry=5"], "log.grad_evry: unknown key (did you mean 'log.grad_every'?)"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[m[:30] for _, m in BAD_INPUTS])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, message):
    result = _train(tmp_path, *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


EMPTY_FILE = "an empty path; give a YAML file, e.g. configs/default.yaml (see --help)"


@pytest.mark.parametrize("args, message", [
    (["train", "--device", "tpu"], "'--device': 'tpu': expected one of auto, cpu, cuda (see --help)"),
    (["compare", "--device", "gpu"], "'--device': 'gpu': expected one of auto, cpu, cuda (see --help)"),
    (["train", "--run-dir", ""], "'--run-dir': an empty path; give a folder, e.g. runs (see --help)"),
    (["train", "--resume", " "], "'--resume': an empty path; give a folder, e.g. runs (see --help)"),
    (["train", "--config", ""], f"'--config' / '-c': {EMPTY_FILE}"),
    (["gradscan", "-c", ""], f"'--config' / '-c': {EMPTY_FILE}"),
])
def test_bad_option_values_are_one_line_naming_the_option(tmp_path, monkeypatch, capsys, args, message):
    """Through the real entry point (an empty path meant the current folder; --device was named as an override)."""
    from rnnexp import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["rnnexp", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    captured = capsys.readouterr()
    assert (exited.value.code, captured.err, captured.out) == (2, f"error: Invalid value for {message}\n", "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_user_error(tmp_path):
    result = _train(tmp_path, "--device", "cuda")
    assert result.exit_code == 2 and "no CUDA GPU is available" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_runs_dir_that_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    result = _train(tmp_path)
    assert result.exit_code == 2 and "is a file, not a folder" in result.stderr
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "train" in result.stdout


from test_config import BAD as BAD_CONFIGS  # noqa: E402  (file text, overrides, message), listed once


@pytest.mark.parametrize("text,overrides,message", BAD_CONFIGS, ids=[m.split(": ", 1)[1][:40] for _, _, m in BAD_CONFIGS])
def test_every_bad_config_through_the_cli_one_line_exit_2_nothing_written(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = _train(tmp_path, "--config", str(path), *overrides)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path}/{message}"), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert not (tmp_path / "runs").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]

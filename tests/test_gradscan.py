"""rnnexp gradscan from the command line: the files, their columns, and a recomputation from model.pt and inputs.pt."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from rnnexp import experiments, models
from rnnexp.cli import app
from rnnexp.config import load_config
from rnnexp.train import loss_fn

ROOT = Path(__file__).resolve().parents[1]
SINGLE_FILES = {"config.yaml", "meta.json", "gradients.csv", "scan.csv", "model.pt", "inputs.pt", "gradscan.png"}
SCAN_FILES = SINGLE_FILES | {"heatmap.png", "ratio.png"}
runner = CliRunner()


def _gradscan(tmp_path, *args):
    result = runner.invoke(app, ["gradscan", "--runs-dir", str(tmp_path / "runs"), *args])
    run_dir = Path(result.stdout.strip().splitlines()[-1]) if result.exit_code == 0 else None
    return result, run_dir


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_one_setting_with_the_notebooks_defaults(tmp_path):
    result, run_dir = _gradscan(tmp_path)
    assert result.exit_code == 0, result.output
    assert {p.name for p in run_dir.iterdir()} == SINGLE_FILES
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] == {"type": "rnn", "num_layers": 1, "hidden_size": 16, "nonlinearity": "tanh"}
    assert (config["task"]["seq_len"], config["target"], config["weight_scales"], config["bias_scales"]) == (
        10, "last", [1.0], [1.0])
    rows = _rows(run_dir / "gradients.csv")
    assert list(rows[0]) == ["weight_scale", "bias_scale", "layer", "timestep", "hidden_norm", "grad_norm"]
    assert [int(r["timestep"]) for r in rows] == list(range(1, 11))
    (scan,) = _rows(run_dir / "scan.csv")
    assert list(scan) == ["weight_scale", "bias_scale", "layer", "spectral_radius", "sigma_max", "loss",
                          "grad_norm_first", "grad_norm_last", "log10_ratio"]
    assert scan["grad_norm_first"] == rows[0]["grad_norm"] and scan["grad_norm_last"] == rows[-1]["grad_norm"]
    assert float(scan["log10_ratio"]) == pytest.approx(np.log10(float(scan["grad_norm_first"]) /
                                                                float(scan["grad_norm_last"])))
    assert "||dL/dh_t||" in result.stdout and "rho(W_hh)" in result.stdout
    meta = json.loads((run_dir / "meta.json").read_text())
    assert (meta["status"], meta["message"], meta["settings"]) == ("completed", "", 1) and meta["scan_s"] > 0
    inputs = torch.load(run_dir / "inputs.pt", weights_only=True)
    assert inputs["x"].shape == inputs["y"].shape == (1, 10, 1)


def test_identity_scan_matches_the_closed_form_from_the_saved_weights(tmp_path):
    result, run_dir = _gradscan(tmp_path, "--nonlinearity", "identity", "-w", "-2,0,0.5,1.5", "-b", "0:1:0.5",
                                "--seq-len", "8", "--hidden-size", "6")
    assert result.exit_code == 0, result.output
    assert {p.name for p in run_dir.iterdir()} == SCAN_FILES
    state = {k: v.double().numpy() for k, v in torch.load(run_dir / "model.pt", weights_only=True)["state_dict"].items()}
    inputs = torch.load(run_dir / "inputs.pt", weights_only=True)
    xs, y_last = inputs["x"][0, :, 0].double().numpy(), inputs["y"][0, -1, 0].item()
    w, b = state["recurrent_net.layers.0.mixed_w.weight"], state["recurrent_net.layers.0.mixed_w.bias"]
    w_out, b_out = state["final_w.weight"][0], state["final_w.bias"][0]
    rows = _rows(run_dir / "gradients.csv")
    assert len(rows) == 4 * 3 * 8
    scan = _rows(run_dir / "scan.csv")
    assert [(float(r["weight_scale"]), float(r["bias_scale"])) for r in scan] == [
        (s, c) for s in (-2, 0, 0.5, 1.5) for c in (0, 0.5, 1)]
    for k, r in enumerate(scan):
        s, c = float(r["weight_scale"]), float(r["bias_scale"])
        w_hh, h = s * w[:, 1:], np.zeros(6)
        for x_t in xs:
            h = s * w[:, 0] * x_t + w_hh @ h + c * b
        g = 2 * (w_out @ h + b_out - y_last) * w_out
        expect = [np.linalg.norm(np.linalg.matrix_power(w_hh.T, 8 - t) @ g) for t in range(1, 9)]
        got = [float(row["grad_norm"]) for row in rows[8 * k:8 * k + 8]]
        np.testing.assert_allclose(got, expect, rtol=1e-9, atol=0)
        assert float(r["sigma_max"]) == pytest.approx(np.linalg.svd(w_hh, compute_uv=False)[0], rel=1e-9, abs=0)
        if s == 0:  # exact zeros are written as 0, their log10 ratio as -inf
            assert [row["grad_norm"] for row in rows[8 * k:8 * k + 7]] == ["0.0"] * 7 and r["log10_ratio"] == "-inf"


def test_a_train_config_too_big_to_train_still_scans(tmp_path):
    """gradscan takes a train config's model and task, not its training sizes, and scans one sequence."""
    big = tmp_path / "big.yaml"
    big.write_text("model: {num_layers: 4}\ntask: {seq_len: 100000}\neval: {num_sequences: 100000}\n")
    result, run_dir = _gradscan(tmp_path, "--config", str(big), "--seq-len", "10", "--hidden-size", "8")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["num_layers"] == 4


def test_lstm_scan_from_a_train_config_recomputed_from_the_saved_weights(tmp_path):
    result, run_dir = _gradscan(tmp_path, "--config", str(ROOT / "configs" / "lstm_2_layer.yaml"), "--hidden-size",
                                "4", "--seq-len", "5", "-w", "-1,1", "-b", "1")
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["name"], config["model"]["num_layers"], config["model"]["hidden_size"], config["target"]) == (
        "lstm_2_layer", 2, 4, "all")
    checkpoint = torch.load(run_dir / "model.pt", weights_only=True)
    # The same initial weights `rnnexp train` starts from for this config.
    train_cfg = load_config(ROOT / "configs" / "lstm_2_layer.yaml", ["model.hidden_size=4", "task.seq_len=5"])
    start = experiments.build_seeded_model(train_cfg, train_cfg.name).state_dict()
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in start.items())
    rows = _rows(run_dir / "gradients.csv")
    assert list(rows[0])[-1] == "cell_grad_norm" and len(rows) == 2 * 2 * 5
    assert all(r["spectral_radius"] == r["sigma_max"] == "" for r in _rows(run_dir / "scan.csv"))

    inputs = torch.load(run_dir / "inputs.pt", weights_only=True)
    for k, scale in enumerate((-1.0, 1.0)):
        model = models.build_model("lstm", 1, 4, 2).double()
        model.load_state_dict({n: v.double() * (scale if n.startswith("recurrent_net") and n.endswith("weight") else 1)
                               for n, v in checkpoint["state_dict"].items()})  # -b 1: biases as they are
        models.set_track_hidden(model, True)
        pred, _ = model(inputs["x"].double())
        layers = models.recurrent_layers(model)
        states = [h for layer in layers for h in layer.h_list] + [c for layer in layers for c in layer.c_list]
        grads = torch.autograd.grad(loss_fn(pred, inputs["y"].double(), "all"), states)
        norms = [g.norm().item() for g in grads]
        mine = rows[10 * k:10 * k + 10]
        np.testing.assert_allclose([float(r["grad_norm"]) for r in mine], norms[:10], rtol=1e-9)
        np.testing.assert_allclose([float(r["cell_grad_norm"]) for r in mine], norms[10:], rtol=1e-9)


BAD_SCALES = [
    (["-w", "5:-5:0"], "--weight-scale '5:-5:0': the step of start:stop:step must not be 0"),
    (["-w", "1:2:-1"], "--weight-scale '1:2:-1': a step of -1 goes away from 2; use 1"),
    (["-b", "a,b"], "--bias-scale 'a,b': 'a' is not a finite number"),
    (["-w", ""], "--weight-scale '': a value is missing"),
    (["-w", "1,,2"], "--weight-scale '1,,2': a value is missing"),
    (["-w", "1,1"], "--weight-scale '1,1': a value is repeated"),
    (["-w", "1:2"], "--weight-scale '1:2': a range is start:stop:step, three numbers"),
    (["-w", "-5:5:0.001"], "--weight-scale '-5:5:0.001': more than 201 values"),
    (["-w", "inf"], "--weight-scale 'inf': 'inf' is not a finite number"),
    (["-w", "1e308,-1e308"], "--weight-scale '1e308,-1e308': 1e308 is beyond +-1e+06"),
    (["-w", "-5:5:0.05", "-b", "-5:5:0.05", "--seq-len", "100"], "40401 settings x 1 layer(s) x seq_len 100"),
    (["--model", "gru"], "model.type = 'gru': expected one of rnn, lstm"),
    (["--nonlinearity", "sigmoid"], "model.nonlinearity = 'sigmoid': expected one of tanh, relu, identity"),
    (["--hidden-size", "0"], "model.hidden_size = 0: expected an integer from 1 to 4096"),
    (["--target", "first"], "target = 'first': expected one of all, last"),
    (["--config", "missing.yaml"], "missing.yaml: config file not found"),
]


@pytest.mark.parametrize("args,message", BAD_SCALES, ids=[m[:40] for _, m in BAD_SCALES])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, message):
    result, _ = _gradscan(tmp_path, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["--seq-len", "700", "-w", "5"], ["--seq-len", "640", "-w", "1,5"]])
def test_norms_near_float_max_are_drawn_and_only_the_overflow_is_said(tmp_path, args):
    """These crashed while drawing (matplotlib's tick arithmetic overflowed) or printed its warnings."""
    result, run_dir = _gradscan(tmp_path, "--nonlinearity", "identity", *args)
    assert result.exit_code == 0, result.output
    settings = len(args[-1].split(","))
    assert result.stderr == (f"note: 1 of {settings} setting(s) overflowed: their gradient norms include inf or nan "
                             "(reported as such, left off the plots)\n")
    assert {p.name for p in run_dir.iterdir()} == (SINGLE_FILES if settings == 1 else SCAN_FILES)


def test_overflow_is_written_as_inf_or_nan_and_said(tmp_path):
    result, run_dir = _gradscan(tmp_path, "--nonlinearity", "identity", "-w", "50", "--seq-len", "300",
                                "--hidden-size", "4")
    assert result.exit_code == 0, result.output
    assert "note: 1 of 1 setting(s) overflowed" in result.stderr
    rows = _rows(run_dir / "gradients.csv")
    # ||h_t|| grows past float64's 1.8e308 to inf, then inf - inf is nan; so is every gradient.
    hidden = [r["hidden_norm"] for r in rows]
    assert float(hidden[0]) > 0 and "inf" in hidden and hidden[-1] == "nan"
    assert {r["grad_norm"] for r in rows} == {"nan"}

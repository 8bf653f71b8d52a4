"""Gradient flow: the batched scan equals one model at a time, and the numbers obey the theory."""
from copy import deepcopy

import numpy as np
import pytest
import torch

from rnnexp import experiments, gradients, gradscan, models
from rnnexp.config import GradScanConfig, ModelConfig, TaskConfig, load_config
from rnnexp.train import loss_fn, make_optimizer, train

F64 = torch.float64


def _setup(type="rnn", nonlinearity="tanh", num_layers=1, hidden_size=16, seq_len=10, seed=0):
    cfg = GradScanConfig(seed=seed, model=ModelConfig(type=type, num_layers=num_layers, hidden_size=hidden_size,
                                                      nonlinearity=nonlinearity), task=TaskConfig(seq_len=seq_len))
    return gradscan.build_inputs(cfg)


def _one_at_a_time(model, x, y, target, weight_scale, bias_scale):
    """The notebook's way: a float64 copy with its recurrent weights and biases scaled, then autograd.grad on h_list."""
    copy = deepcopy(model).double()
    state = {}
    for name, value in model.state_dict().items():
        value = value.double()
        if name.startswith("recurrent_net."):
            value = value * (weight_scale if name.endswith("weight") else bias_scale)
        state[name] = value
    copy.load_state_dict(state)
    models.set_track_hidden(copy, True)
    pred, _ = copy(x.double())
    loss = loss_fn(pred, y.double(), target)
    layers = models.recurrent_layers(copy)
    hs = [h for layer in layers for h in layer.h_list]
    cs = [c for layer in layers for c in layer.c_list] if isinstance(layers[0], models.LSTMLayer) else []
    grads = torch.autograd.grad(loss, hs + cs)
    norms = np.array([g.norm().item() for g in grads]).reshape(-1, len(layers), x.shape[1])
    return loss.item(), norms


@pytest.mark.parametrize("type,nonlinearity,num_layers", [("rnn", "tanh", 2), ("rnn", "relu", 1), ("lstm", "tanh", 2)])
@pytest.mark.parametrize("target", ["last", "all"])
def test_batched_scan_equals_one_model_at_a_time(type, nonlinearity, num_layers, target):
    model, x, y = _setup(type, nonlinearity, num_layers, hidden_size=4, seq_len=6)
    ws, bs = gradients.grid([-3.0, 0.0, 0.5, 2.0], [-1.0, 1.0])
    flow = gradients.grad_flow(model, x, y, target, ws, bs, dtype=F64)
    assert flow.grad_norm.shape == flow.hidden_norm.shape == (8, num_layers, 6)
    for k in range(8):
        loss, norms = _one_at_a_time(model, x, y, target, ws[k], bs[k])
        assert flow.loss[k] == pytest.approx(loss, rel=1e-12)
        np.testing.assert_allclose(flow.grad_norm[k], norms[0], rtol=1e-10, atol=1e-300)
        if type == "lstm":
            np.testing.assert_allclose(flow.cell_grad_norm[k], norms[1], rtol=1e-10, atol=1e-300)
    assert (flow.cell_grad_norm is None) == (type == "rnn") and (flow.sigma_max is None) == (type == "lstm")


def test_scaling_rule_leaves_the_head_alone():
    model, _, _ = _setup(num_layers=2)
    scaled = gradients.scale_recurrent(model.state_dict(), 3.0, -2.0)
    for name, value in model.state_dict().items():
        factor = 1.0 if name.startswith("final_w.") else 3.0 if name.endswith("weight") else -2.0
        assert torch.equal(scaled[name], value * factor), name
    assert sum(n.startswith("final_w.") for n in scaled) == 2


def test_identity_closed_form():
    """identity, target last: dL/dh_t = ((S W_hh)^T)^(T-t) dL/dh_T, with dL/dh_T = 2 (pred_T - y_T) w_out."""
    model, x, y = _setup(nonlinearity="identity")
    scales = [-2.0, -0.5, 0.0, 0.7, 1.5]
    flow = gradients.grad_flow(model, x, y, "last", scales, [0.3] * 5, dtype=F64)
    state = {k: v.double().numpy() for k, v in model.state_dict().items()}
    w, b = state["recurrent_net.layers.0.mixed_w.weight"], state["recurrent_net.layers.0.mixed_w.bias"]
    w_out, b_out = state["final_w.weight"][0], state["final_w.bias"][0]
    xs, y_last = x[0, :, 0].double().numpy(), y[0, -1, 0].item()
    for k, s in enumerate(scales):
        w_ih, w_hh = s * w[:, :1], s * w[:, 1:]
        h = np.zeros(16)
        for x_t in xs:
            h = w_ih[:, 0] * x_t + w_hh @ h + 0.3 * b
        g = 2 * (w_out @ h + b_out - y_last) * w_out  # dL/dh_T
        expect = [np.linalg.norm(np.linalg.matrix_power(w_hh.T, 10 - t) @ g) for t in range(1, 11)]
        np.testing.assert_allclose(flow.grad_norm[k, 0], expect, rtol=1e-9, atol=0)
        assert flow.spectral_radius[k, 0] == pytest.approx(np.abs(np.linalg.eigvals(w_hh)).max(), rel=1e-9, abs=1e-300)
        assert flow.sigma_max[k, 0] == pytest.approx(np.linalg.svd(w_hh, compute_uv=False)[0], rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "identity"])
def test_sigma_max_bounds_the_gradient(nonlinearity):
    """|f'| <= 1, target last: ||dL/dh_t|| <= sigma_max(W_hh)^(T-t) ||dL/dh_T|| at every t (top layer)."""
    for num_layers in (1, 2):
        model, x, y = _setup(nonlinearity=nonlinearity, num_layers=num_layers, hidden_size=8)
        ws, bs = gradients.grid(np.linspace(-4, 4, 17).tolist(), [-2.0, 0.0, 1.0, 3.0])
        flow = gradients.grad_flow(model, x, y, "last", ws, bs, dtype=F64)
        top = num_layers - 1
        power = np.arange(9, -1, -1)  # T - t for t = 1..10
        bound = flow.sigma_max[:, top, None] ** power * flow.grad_norm[:, top, -1:]
        assert (flow.grad_norm[:, top] <= bound * (1 + 1e-9)).all()


@pytest.mark.parametrize("type,nonlinearity", [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "identity"), ("lstm", "tanh")])
def test_weight_scale_zero_gives_exact_zeros_before_the_last_step(type, nonlinearity):
    model, x, y = _setup(type, nonlinearity, num_layers=2)
    flow = gradients.grad_flow(model, x, y, "last", [0.0, 0.0], [1.0, -3.0], dtype=F64)
    assert (flow.grad_norm[:, :, :-1] == 0).all()
    assert (flow.grad_norm[:, 1, -1] > 0).all()
    if type == "lstm":  # the cell state still carries the gradient back: c_t = f c_{t-1} + i g
        assert (flow.cell_grad_norm[:, 1, :-1] > 0).all()
    assert np.isneginf(flow.log10_ratio()[:, 1]).all()
    _, every = _one_at_a_time(model, x, y, "all", 0.0, 1.0)
    assert (every[0, 1] > 0).all()  # with a loss on every step each top-layer h_t reaches the loss directly


def _ratio_at(nonlinearity, scale, seeds=range(20)):
    out = []
    for seed in seeds:
        model, x, y = _setup(nonlinearity=nonlinearity, seed=seed)
        out.append(gradients.grad_flow(model, x, y, "last", [scale], [1.0], dtype=F64).log10_ratio()[0, 0])
    return np.array(out)


def test_the_notebooks_observations_over_20_seeds():
    """seq_len 10, hidden 16, target last, bias scale 1 (the notebook's setting), weight scale +-5 and +-0.25."""
    for sign in (-1, 1):
        assert (_ratio_at("identity", 5 * sign) > 3).all()  # explodes for either sign
        assert (_ratio_at("identity", 0.25 * sign) < -5).all()  # vanishes for small |scale|
        assert (_ratio_at("tanh", 5 * sign) < 2).all()  # saturation keeps it from exploding
        # relu explodes for positive scales as much as for negative ones: the notebook's
        # "only for negative scales" was one random draw.
        assert (_ratio_at("relu", 5 * sign) > 1).all()


def test_long_sequences_stay_finite_in_float64():
    model, x, y = _setup(seq_len=1000)
    flow = gradients.grad_flow(model, x, y, "last", [1.0], [1.0], dtype=F64)
    ratio = flow.log10_ratio()[0, 0]
    assert np.isfinite(ratio) and ratio < -100  # far below float32's smallest number (1e-45)
    assert (flow.grad_norm > 0).all()
    in_float32 = gradients.grad_flow(model, x, y, "last", [1.0], [1.0]).log10_ratio()[0, 0]
    assert np.isneginf(in_float32)  # float32 underflows to 0: why gradscan computes in float64


def test_overflow_is_reported_not_hidden():
    model, x, y = _setup(nonlinearity="identity", seq_len=1000, hidden_size=4)
    flow = gradients.grad_flow(model, x, y, "last", [50.0], [1.0], dtype=F64)
    assert not np.isfinite(flow.hidden_norm[0, 0, -1]) and not np.isfinite(flow.grad_norm[0, 0]).all()


def test_a_weight_that_overflowed_gives_nan_spectra_not_a_crash():
    """LAPACK crashes the process on a matrix holding inf (seen with a huge learning rate): such a layer gets nan."""
    model, x, y = _setup(nonlinearity="tanh", seq_len=5, hidden_size=8, num_layers=2)
    with torch.no_grad():
        model.recurrent_net.layers[1].mixed_w.weight[:, 8:] = float("inf")  # layer 1's W_hh
    flow = gradients.grad_flow(model, x, y, "all")
    assert np.isfinite(flow.spectral_radius[0, 0]) and np.isfinite(flow.sigma_max[0, 0])
    assert np.isnan(flow.spectral_radius[0, 1]) and np.isnan(flow.sigma_max[0, 1])


def test_grad_norm_exact_zero_huge_and_nonfinite():
    g = torch.tensor([[[0.0, 0.0]], [[1e200, 1e200]], [[3.0, 4.0]], [[float("inf"), 1.0]], [[float("nan"), 1.0]]],
                     dtype=F64)
    norms = gradients.grad_norm(g).tolist()
    assert norms[0] == 0.0 and norms[1] == pytest.approx(1e200 * 2 ** 0.5) and norms[2] == 5.0
    assert norms[3] == float("inf") and np.isnan(norms[4])


def test_the_training_probe_does_not_change_the_training():
    cfg = load_config(None, ["model.type=lstm", "model.hidden_size=4", "train.num_batches=12", "model.num_layers=2"])
    losses = []
    for probe_every in (None, 1):
        model = experiments.build_seeded_model(cfg, "x")
        log = gradients.GradLog(*experiments.eval_set(cfg), "all")
        on_step = None if probe_every is None else lambda step, loss: log.record(model, step + 1)
        history = train(model, make_optimizer(model, 1e-2), experiments.batch_stream(cfg, torch.device("cpu")), 12,
                        on_step=on_step)
        losses.append(history.losses)
        assert all(not layer.track_hidden for layer in models.recurrent_layers(model))
    assert losses[0] == losses[1]
    assert log.steps == list(range(1, 13)) and log.grad_norm[0].shape == log.cell_grad_norm[0].shape == (2, 10)
    assert not np.array_equal(log.grad_norm[0], log.grad_norm[-1])


def test_grid_is_weight_major():
    assert gradients.grid([1, 2], [7, 8, 9]) == ([1, 1, 1, 2, 2, 2], [7, 8, 9, 7, 8, 9])

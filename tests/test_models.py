"""The models: the notebook's reference numbers, torch's own modules, the registry."""
import functools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from rnnexp import config, models
from rnnexp.models import (LSTM, RNN, LSTMLayer, RecurrentRegressionModel, RNNLayer, build_model,
                           load_torch_state_dict, torch_state_dict)

SPEC = json.loads((Path(__file__).parent / "data" / "seed-vectors.json").read_text())
ATOL = 1e-4  # the notebook prints 4 decimals


def _build(case):
    nl = models.NONLINEARITIES[case.get("nonlinearity", "tanh")]
    namespace = {"RNNLayer": functools.partial(RNNLayer, nonlinearity=nl), "RNN": functools.partial(RNN, nonlinearity=nl),
                 "LSTMLayer": LSTMLayer, "LSTM": LSTM, "RecurrentRegressionModel": RecurrentRegressionModel}
    return eval(case["module"], namespace)


@pytest.mark.parametrize("case", SPEC["cases"], ids=[c["name"] for c in SPEC["cases"]])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stepwise"])
def test_seed_vectors(case, fused):
    module = _build(case)
    expect = case["expect"]
    if "num_params" in expect:
        assert models.num_params(module) == expect["num_params"]
    if "fill" not in case:
        return
    models.set_track_hidden(module, not fused)
    module.load_state_dict({k: v * 0 + case["fill"] for k, v in module.state_dict().items()})
    x = torch.tensor(SPEC["data"] if case["input"] == "data" else case["input"])
    first, second = module(x)
    if "preds" in expect:
        torch.testing.assert_close(first, torch.tensor(expect["preds"]), atol=ATOL, rtol=0)
        torch.testing.assert_close(second, torch.tensor(expect["all_h"]), atol=ATOL, rtol=0)
        return
    torch.testing.assert_close(first, torch.tensor(expect["all_h"]), atol=ATOL, rtol=0)
    last_h, last_c = second if isinstance(second, tuple) else (second, None)
    torch.testing.assert_close(last_h, torch.tensor(expect["last_h"]), atol=ATOL, rtol=0)
    if "last_c" in expect:
        torch.testing.assert_close(last_c, torch.tensor(expect["last_c"]), atol=ATOL, rtol=0)


def test_notebook_parameter_layout():
    assert sorted(RNNLayer(2, 3).state_dict()) == ["mixed_w.bias", "mixed_w.weight"]
    assert RNNLayer(2, 3).mixed_w.weight.shape == (3, 5)
    assert LSTMLayer(2, 3).w.weight.shape == (12, 5)
    assert sorted(RecurrentRegressionModel(RNN(1, 4, 2)).state_dict()) == [
        "final_w.bias", "final_w.weight", "recurrent_net.layers.0.mixed_w.bias", "recurrent_net.layers.0.mixed_w.weight",
        "recurrent_net.layers.1.mixed_w.bias", "recurrent_net.layers.1.mixed_w.weight"]


def _notebook_lstm_step(w, b, x, h, c, hs):
    """The notebook's cell, written out gate by gate, to pin the (f, i, o, g) order."""
    out = torch.cat([x, h], dim=1) @ w.T + b
    f, i, o = (torch.sigmoid(out[:, k * hs:(k + 1) * hs]) for k in range(3))
    c = f * c + i * torch.tanh(out[:, 3 * hs:])
    return torch.tanh(c) * o, c


@pytest.mark.parametrize("fused", [True, False])
def test_lstm_gate_order_random_weights(fused):
    torch.manual_seed(1)
    layer = LSTMLayer(3, 5)
    layer.track_hidden = not fused
    x = torch.randn(4, 6, 3)
    h = c = torch.zeros(4, 5)
    hs = []
    for t in range(6):
        h, c = _notebook_lstm_step(layer.w.weight, layer.w.bias, x[:, t], h, c, 5)
        hs.append(h)
    all_h, (h_last, c_last) = layer(x)
    torch.testing.assert_close(all_h, torch.stack(hs, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(c_last, c, atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stepwise"])
def test_matches_torch_modules_both_ways(kind, num_layers, fused):
    torch.manual_seed(num_layers)
    if kind == "lstm":
        ours, theirs = LSTM(3, 8, num_layers), nn.LSTM(3, 8, num_layers, batch_first=True)
    else:
        nl = kind.split("_")[1]
        ours, theirs = RNN(3, 8, num_layers, nonlinearity=nl), nn.RNN(3, 8, num_layers, nonlinearity=nl, batch_first=True)
    models.set_track_hidden(ours, not fused)
    x = torch.randn(5, 7, 3)
    # torch -> ours: torch's random weights, its two biases summed
    load_torch_state_dict(ours, theirs.state_dict())
    out_ours, last_ours = ours(x)
    out_theirs, last_theirs = theirs(x)
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(last_ours, last_theirs, atol=1e-5, rtol=0)
    # ours -> torch: fresh random weights of ours
    for p in ours.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    theirs.load_state_dict(torch_state_dict(ours))
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("nonlinearity", list(models.NONLINEARITIES))
@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_fused_and_stepwise_agree_including_gradients(kind, nonlinearity):
    torch.manual_seed(0)
    model = build_model(kind, 1, 6, 2, nonlinearity)
    x = torch.randn(3, 9, 1)
    pred_fast, _ = model(x)
    grads_fast = torch.autograd.grad(pred_fast.square().sum(), list(model.parameters()))
    models.set_track_hidden(model, True)
    pred_slow, _ = model(x)
    grads_slow = torch.autograd.grad(pred_slow.square().sum(), list(model.parameters()))
    torch.testing.assert_close(pred_fast, pred_slow, atol=1e-5, rtol=0)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    layers = models.recurrent_layers(model)
    assert [len(layer.h_list) for layer in layers] == [9, 9]


def test_hidden_states_kept_only_when_asked():
    model = build_model("lstm", 1, 4, 1)
    model(torch.randn(2, 5, 1))
    assert models.recurrent_layers(model)[0].h_list == []
    models.set_track_hidden(model, True)
    model(torch.randn(2, 5, 1))
    layer = models.recurrent_layers(model)[0]
    assert len(layer.h_list) == len(layer.c_list) == 5 and layer.h_list[0].shape == (2, 4)


def test_registry_matches_config_names():
    assert tuple(models.MODEL_REGISTRY) == config.MODEL_TYPES
    assert tuple(models.NONLINEARITIES) == config.NONLINEARITIES


@pytest.mark.parametrize("kind", list(models.MODEL_REGISTRY))
@pytest.mark.parametrize("num_layers", [1, 2])
def test_every_registry_entry_builds_and_runs(kind, num_layers):
    model = build_model(kind, input_size=1, hidden_size=5, num_layers=num_layers)
    preds, all_h = model(torch.randn(2, 4, 1))
    assert preds.shape == (2, 4, 1) and all_h.shape == (2, 4, 5)
    gates = {"rnn": 1, "lstm": 4}[kind]
    first = gates * 5 * (1 + 5 + 1)  # weight over [x, h] plus bias
    later = gates * 5 * (5 + 5 + 1)
    assert models.num_params(model) == first + (num_layers - 1) * later + 5 + 1  # + the head


def test_unknown_registry_name_lists_known():
    with pytest.raises(ValueError, match="unknown model type 'gru'; known: rnn, lstm"):
        build_model("gru")

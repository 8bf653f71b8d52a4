"""Task, loss, training loop and reproducibility."""
import dataclasses

import pytest
import torch

from rnnexp import data, experiments
from rnnexp.config import Config, load_config
from rnnexp.train import evaluate, loss_fn, make_optimizer, train


def test_running_mean_targets():
    x, y = data.running_mean(torch.Generator().manual_seed(0), 3, 5)
    assert x.shape == y.shape == (3, 5, 1)
    for t in range(5):
        torch.testing.assert_close(y[:, t], x[:, : t + 1].mean(dim=1))


def test_generators_are_seeded_per_purpose():
    a = data.running_mean(data.make_generator(0, "train"), 2, 4)[0]
    b = data.running_mean(data.make_generator(0, "train"), 2, 4)[0]
    c = data.running_mean(data.make_generator(0, "eval"), 2, 4)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert data.derive_seed(0, "init", "a") == data.derive_seed(0, "init", "a") != data.derive_seed(1, "init", "a")


def test_loss_all_and_last():
    pred = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])
    y = torch.zeros_like(pred)
    assert loss_fn(pred, y, "all").item() == (1 + 4 + 9 + 16) / 4
    assert loss_fn(pred, y, "last").item() == (4 + 16) / 2


def _small(**train):
    cfg = Config()
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden_size=8),
                               train=dataclasses.replace(cfg.train, num_batches=20, **train))


def _run(cfg):
    model = experiments.build_seeded_model(cfg, cfg.name)
    history = train(model, make_optimizer(model, cfg.train.lr), experiments.batch_stream(cfg, torch.device("cpu")),
                    cfg.train.num_batches, cfg.train.target, cfg.train.clip_grad_norm)
    return model, history


def test_one_step_changes_every_parameter():
    cfg = dataclasses.replace(_small(), model=dataclasses.replace(_small().model, type="lstm", num_layers=2))
    model = experiments.build_seeded_model(cfg, "x")
    before = [p.detach().clone() for p in model.parameters()]
    train(model, make_optimizer(model, 1e-3), experiments.batch_stream(cfg, torch.device("cpu")), 1)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_same_seed_same_losses_bit_for_bit():
    for target in ("all", "last"):
        cfg = _small(target=target, clip_grad_norm=1.0)
        _, h1 = _run(cfg)
        _, h2 = _run(cfg)
        assert h1.losses == h2.losses and len(h1.losses) == 20
    _, other = _run(dataclasses.replace(_small(), seed=1))
    assert other.losses != h1.losses


def test_divergence_stops_with_status():
    cfg = _small(lr=1e30)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, nonlinearity="identity"),
                              task=dataclasses.replace(cfg.task, seq_len=50))
    _, history = _run(cfg)
    assert history.status == "diverged" and "at step" in history.message
    assert len(history.losses) < cfg.train.num_batches


def test_training_learns_the_task():
    cfg = load_config(None, ["model.type=lstm", "train.lr=1e-2", "train.num_batches=300", "model.hidden_size=16"])
    model, history = _run(cfg)
    x, y = experiments.eval_set(cfg)
    mse, _ = evaluate(model, x, y, "all")
    assert history.losses[0] > 0.1 and mse < 0.02


def test_batch_stream_states_and_targets_computed_in_any_layout():
    cfg = _small()
    stream, twin = experiments.BatchStream(cfg, torch.device("cpu")), data.make_generator(cfg.seed, "train")
    states, batches = [twin.get_state()], []
    for _ in range(150):  # past two anchors (every 64 batches)
        batches.append(stream.inputs())
        data.running_mean_inputs(twin, cfg.train.batch_size, cfg.task.seq_len)
        states.append(twin.get_state())
    assert torch.equal(stream.state_at(150), states[150]) and torch.equal(stream.state_at(149), states[149])
    assert torch.equal(stream.state_at(130), states[130])  # replayed from the anchor at 128
    with pytest.raises(ValueError):  # before the anchor
        stream.state_at(100)
    # Targets of many batches at once, time on axis 2 as the engine holds them, equal each batch's own.
    stacked = torch.stack(batches).permute(0, 3, 2, 1)  # (N, 1, T, B)
    by_batch = torch.stack([data.running_mean_targets(x) for x in batches]).permute(0, 3, 2, 1)
    assert torch.equal(data.running_mean_targets(stacked.contiguous(), time_dim=2), by_batch)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_evaluation_in_chunks_equals_one_pass(kind):
    """evaluate runs EVAL_CHUNK sequences at a time; 600 sequences (3 chunks) give one pass's predictions and MSE."""
    cfg = load_config(None, [f"model.type={kind}", "model.num_layers=2", "model.hidden_size=8", "task.seq_len=7"])
    model = experiments.build_seeded_model(cfg, "a")
    x, y = data.sample_batch(cfg.task.name, data.make_generator(0, "eval"), 600, 7)
    mse, pred = evaluate(model, x, y, "all")
    with torch.no_grad():
        whole, _ = model(x)
    torch.testing.assert_close(pred, whole, rtol=1e-6, atol=1e-7)
    assert pred.shape == (600, 7, 1) and mse == pytest.approx(loss_fn(whole, y, "all").item(), rel=1e-6)

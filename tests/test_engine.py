"""The training engine (hand-written BPTT and Adam over K stacked copies) against autograd and against itself."""
import itertools

import pytest
import torch

from rnnexp import engine, experiments, models
from rnnexp.config import load_config
from rnnexp.train import make_optimizer, train

CPU = torch.device("cpu")
SMALL = ["model.hidden_size=8", "train.batch_size=4", "train.lr=3e-3"]


def _config(*overrides):
    return load_config(None, [*SMALL, *overrides])


def _engine_losses(e: engine.Engine, streams: list, index: list[int], steps: int) -> list[list[float]]:
    out = []
    for _ in range(steps):
        batches = [next(s) for s in streams]
        x = engine.to_engine_layout([b[0] for b in batches], index)
        y = engine.to_engine_layout([b[1] for b in batches], index)
        losses, bad = e.step(x, y)
        assert not bad
        out.append(losses)
    return out


CASES = [(kind, layers, act, target, clip, seq_len)
         for kind, layers, act, target, clip, seq_len in itertools.product(
             ["rnn", "lstm"], [1, 2], ["tanh", "relu", "identity"], ["all", "last"], [None, 0.5], [1, 7])
         if kind == "rnn" or act == "tanh"]


@pytest.mark.parametrize("kind,layers,act,target,clip,seq_len", CASES)
def test_engine_trains_as_autograd_does(kind, layers, act, target, clip, seq_len):
    cfg = _config(f"model.type={kind}", f"model.num_layers={layers}", f"model.nonlinearity={act}",
                  f"train.target={target}", f"train.clip_grad_norm={'null' if clip is None else clip}",
                  f"task.seq_len={seq_len}")
    reference, ours = experiments.build_seeded_model(cfg, "a"), experiments.build_seeded_model(cfg, "a")
    history = train(reference, make_optimizer(reference, 3e-3), experiments.batch_stream(cfg, CPU), 20, target, clip)
    e = engine.Engine([ours], [target], 3e-3, clip)
    losses = _engine_losses(e, [experiments.batch_stream(cfg, CPU)], [0], 20)
    e.copy_to(0, ours)
    # Float rounding only: the engine's tanh is 2 sigmoid(2x) - 1 and its sums run in another order.
    torch.testing.assert_close(torch.tensor([l[0] for l in losses]), torch.tensor(history.losses), rtol=0, atol=1e-5)
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind,act", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh")])
def test_three_layers_a_wide_input_and_two_outputs_agree_with_autograd(kind, act):
    """Input size 3 (the engine's input part is a bmm then, not an outer product) and output size 2."""
    torch.manual_seed(0)
    reference = models.build_model(kind, input_size=3, hidden_size=8, num_layers=3, nonlinearity=act, output_dim=2)
    ours = models.build_model(kind, input_size=3, hidden_size=8, num_layers=3, nonlinearity=act, output_dim=2)
    ours.load_state_dict(reference.state_dict())
    batches = [(torch.randn(4, 6, 3), torch.randn(4, 6, 2)) for _ in range(10)]
    history = train(reference, make_optimizer(reference, 3e-3), iter(batches), 10)
    losses = _engine_losses(engine.Engine([ours], ["all"], 3e-3), [iter(batches)], [0], 10)
    torch.testing.assert_close(torch.tensor([l[0] for l in losses]), torch.tensor(history.losses), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind,layers,batch,hidden", [("rnn", 1, 4, 8), ("rnn", 2, 5, 8), ("lstm", 1, 4, 8),
                                                      ("lstm", 2, 5, 8), ("rnn", 1, 32, 7), ("rnn", 3, 5, 7),
                                                      ("lstm", 2, 5, 7)])
def test_a_copy_does_not_depend_on_k_or_on_the_other_copies(kind, layers, batch, hidden):
    """Each copy of a K = 9 engine (5 seeds, both targets, pairs sharing a data stream, clipping on) equals that
    training alone, bit for bit, over 60 steps: Adam, reductions and matmuls all run per copy. An odd hidden size
    puts copies' matrices at other memory alignments, which MKL's products round by unless MKL_CBWR is set."""
    configs = [_config(f"model.type={kind}", f"model.num_layers={layers}", f"seed={k // 2}", f"train.batch_size={batch}",
                       f"model.hidden_size={hidden}", f"train.target={'last' if k % 2 else 'all'}",
                       "train.clip_grad_norm=0.5") for k in range(9)]

    def run(which: list[int]):
        e = engine.Engine([experiments.build_seeded_model(configs[i], "a") for i in which],
                          [configs[i].train.target for i in which], 3e-3, 0.5)
        seeds = list(dict.fromkeys(configs[i].seed for i in which))
        streams = [experiments.batch_stream(configs[which[[configs[i].seed for i in which].index(s)]], CPU)
                   for s in seeds]
        losses = _engine_losses(e, streams, [seeds.index(configs[i].seed) for i in which], 60)
        return losses, e

    together, e9 = run(list(range(9)))
    for k in (0, 3, 4, 8):
        alone, e1 = run([k])
        assert [l[k] for l in together] == [l[0] for l in alone]
        assert all(torch.equal(p[k], q[0]) for p, q in zip(e9.params, e1.params))
        assert all(torch.equal(m[k], n[0]) for m, n in zip(e9.exp_avg_sq, e1.exp_avg_sq))


def test_a_diverging_copy_is_reported_and_dropped_and_the_others_go_on_unchanged():
    cfg = _config("model.type=lstm")
    alone = engine.Engine([experiments.build_seeded_model(cfg, "a")], ["all"], 3e-3)
    pair = engine.Engine([experiments.build_seeded_model(cfg, "a"), experiments.build_seeded_model(cfg, "b")],
                         ["all", "last"], 3e-3)
    stream = experiments.batch_stream(cfg, CPU)
    for step in range(8):
        x, y = next(stream)
        x1, y1 = engine.to_engine_layout([x], [0]), engine.to_engine_layout([y], [0])
        x2, y2 = engine.to_engine_layout([x], [0] * pair.K), engine.to_engine_layout([y], [0] * pair.K)
        if step == 4:
            x2[1, 0, 3, 2] = float("nan")  # copy 1's batch only
        before = [p.clone() for p in pair.params]
        losses, bad = pair.step(x2, y2)
        if step == 4:
            assert losses == [] and set(bad) == {1} and bad[1] == "loss became nan"
            assert all(torch.equal(a, b) for a, b in zip(before, pair.params))  # no copy took the step
            pair.drop([1])
            losses, bad = pair.step(x2[:1].contiguous(), y2[:1].contiguous())
        assert not bad
        assert losses[0] == alone.step(x1, y1)[0][0]
    assert pair.K == 1 and pair.targets == ["all"]
    assert all(torch.equal(p, q) for p, q in zip(pair.params, alone.params))


def test_copies_of_one_architecture_only_and_known_targets():
    rnn = experiments.build_seeded_model(_config("model.type=rnn"), "a")
    for other in (_config("model.type=rnn", "model.nonlinearity=relu"), _config("model.type=rnn", "model.hidden_size=4"),
                  _config("model.type=lstm")):
        with pytest.raises(ValueError, match="one architecture"):
            engine.Engine([rnn, experiments.build_seeded_model(other, "a")], ["all", "all"], 1e-3)
    with pytest.raises(ValueError, match="unknown target 'first'"):
        engine.Engine([rnn], ["first"], 1e-3)
    two = engine.Engine([rnn, rnn], ["all", "last"], 1e-3)
    with pytest.raises(ValueError, match="one-copy engine"):
        two.load_optimizer_state(0, rnn, engine.Engine([rnn], ["all"], 1e-3).optimizer_state(0, rnn))


def test_non_finite_gradients_are_caught_with_and_without_clipping():
    for clip in (None, 1.0):
        cfg = _config("model.type=rnn", "model.nonlinearity=identity", "task.seq_len=50")
        e = engine.Engine([experiments.build_seeded_model(cfg, "a")], ["all"], 3e-3, clip)
        with torch.no_grad():
            for p in e.params[:3]:
                p.mul_(1e3)  # identity RNN, 50 steps: states and gradients overflow
        x, y = next(experiments.batch_stream(cfg, CPU))
        losses, bad = e.step(engine.to_engine_layout([x], [0]), engine.to_engine_layout([y], [0]))
        assert losses == [] and list(bad) == [0] and ("loss became" in bad[0] or "gradient norm became" in bad[0])


def test_weights_and_adam_state_in_the_notebooks_layout_and_torch_optims_format():
    cfg = _config("model.type=lstm", "model.num_layers=2")
    model = experiments.build_seeded_model(cfg, "a")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    e = engine.Engine([model], ["all"], 3e-3)
    e.copy_to(0, model)
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())  # gate blocks back in place
    _engine_losses(e, [experiments.batch_stream(cfg, CPU)], [0], 5)
    e.copy_to(0, model)
    state = e.optimizer_state(0, model)
    reference = torch.optim.Adam(model.parameters(), lr=3e-3, fused=True)
    reference.load_state_dict(state)  # torch.optim takes it as its own
    assert reference.state_dict()["state"][0]["step"].item() == 5
    # The state goes back into an engine exactly: a fresh engine continues as the first one does.
    fresh = engine.Engine([model], ["all"], 3e-3)
    fresh.load_optimizer_state(0, model, state)
    assert all(torch.equal(a, b) for group in ("params", "exp_avg", "exp_avg_sq")
               for a, b in zip(getattr(e, group), getattr(fresh, group)))
    stream = experiments.batch_stream(cfg, CPU)
    x, y = next(stream)
    x, y = engine.to_engine_layout([x], [0]), engine.to_engine_layout([y], [0])
    assert e.step(x, y) == fresh.step(x, y)


def test_adam_runs_over_one_buffer_per_group_whose_gaps_stay_zero(monkeypatch):
    """Parameters, gradients and Adam's moments each live in one flat buffer, every copy of every tensor at a
    multiple of 16 floats (a 64-byte cache line; hidden 7: no tensor fills its slots exactly), and Adam is one
    fused call over those buffers; the gaps between them stay 0 while training, and the views hold exactly what
    the models were built with."""
    assert engine.ALIGN % 16 == 0  # 16 float32 lanes: the widest vector registers (AVX-512)
    cfg = _config("model.type=lstm", "model.hidden_size=7", "model.num_layers=2")
    built = [experiments.build_seeded_model(cfg, s) for s in ("a", "b", "c")]
    e = engine.Engine(built, ["all", "last", "all"], 3e-3)
    for k, model in enumerate(built):
        copy = experiments.build_seeded_model(cfg, "x")
        e.copy_to(k, copy)
        assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), model.state_dict().values()))
    calls, fused = [], torch._fused_adam_
    monkeypatch.setattr(torch, "_fused_adam_", lambda *lists, **kw: (calls.append(lists[:4]), fused(*lists, **kw)))
    _engine_losses(e, [experiments.batch_stream(cfg, CPU)], [0, 0, 0], 5)
    assert len(calls) == 5 and all([len(group) for group in lists] == [1, 1, 1, 1] for lists in calls)
    assert all(group[0] is flat for lists in calls for group, (flat, _) in zip(lists, e._flat))
    for flat, views in e._flat:
        covered = torch.zeros_like(flat, dtype=torch.bool)
        for view in views:
            assert view.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
            assert view.storage_offset() % engine.ALIGN == 0 and view.stride(0) % engine.ALIGN == 0
            covered.as_strided(view.shape, view.stride(), view.storage_offset()).fill_(True)
        assert 0 < int(covered.sum()) < flat.numel()
        assert not flat[~covered].any()
    assert all(bool(g.abs().sum(dim=tuple(range(1, g.dim()))).gt(0).all()) for g in e.grads)

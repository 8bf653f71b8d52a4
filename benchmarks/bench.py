"""make bench: rnnexp's training speed against the notebook's own loop and torch's native modules.

Everything is measured in this one process (the whole-experiment timings in subprocesses),
the contenders interleaved round by round so that the machine's load hits them alike;
each number is the median over the rounds, with the min-max spread. The table is printed
and written as JSON to benchmarks/results/.

    python benchmarks/bench.py [--rounds N] [--steps N] [--full-rounds N] [--skip-full] [--scaling]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import notebook_port  # noqa: E402

from rnnexp import data, experiments, models  # noqa: E402
from rnnexp.config import load_config  # noqa: E402
from rnnexp.engine import Engine, to_engine_layout  # noqa: E402
from rnnexp.train import loss_fn  # noqa: E402

MODELS = [("rnn_1_layer", "rnn", 1), ("lstm_1_layer", "lstm", 1), ("rnn_2_layer", "rnn", 2),
          ("lstm_2_layer", "lstm", 2)]


def _config(kind: str, num_layers: int, target: str = "all", hidden_size: int = 32, seq_len: int = 10,
            batch_size: int = 32):
    return load_config(None, [f"model.type={kind}", f"model.num_layers={num_layers}", f"train.target={target}",
                              f"model.hidden_size={hidden_size}", f"task.seq_len={seq_len}",
                              f"train.batch_size={batch_size}"])


def rnnexp_steps(config, seeds: int = 1) -> Callable[[int], None]:
    """rnnexp's training path as ``rnnexp train`` (seeds = 1) or ``compare`` with ``seeds`` runs it: the models,
    their data streams and one Engine for all of them. One call of the returned function is one engine step,
    that is ``seeds`` optimizer steps."""
    configs = [dataclasses.replace(config, seed=config.seed + k) for k in range(seeds)]
    engine = Engine([experiments.build_seeded_model(c, "bench") for c in configs], [config.train.target] * seeds,
                    config.train.lr, config.train.clip_grad_norm)
    streams = [experiments.BatchStream(c, torch.device("cpu")) for c in configs]
    task, index = data.TASKS[config.task.name], list(range(seeds))

    def run(steps: int) -> None:
        for _ in range(steps):
            x = to_engine_layout([s.inputs() for s in streams], index)
            if engine.step(x, task.targets(x, time_dim=2))[1]:
                raise RuntimeError("a benchmarked training diverged")

    return run


def _looped(step: Callable[[], float]) -> Callable[[int], None]:
    def run(steps: int) -> None:
        for _ in range(steps):
            step()

    return run


class TorchNative(nn.Module):
    """torch's nn.RNN / nn.LSTM with a linear head, holding the same weights as an rnnexp model."""

    def __init__(self, ours: models.RecurrentRegressionModel):
        super().__init__()
        net = ours.recurrent_net
        cls = nn.LSTM if isinstance(net, models.LSTM) else nn.RNN
        self.rnn = cls(net.input_size, net.hidden_size, net.num_layers, batch_first=True)
        self.rnn.load_state_dict(models.torch_state_dict(net))
        self.head = nn.Linear(net.hidden_size, ours.output_dim)
        self.head.load_state_dict(ours.final_w.state_dict())

    def forward(self, x):
        all_h, _ = self.rnn(x)
        return self.head(all_h), all_h


def torch_steps(config) -> Callable[[int], None]:
    """What a user would write with torch's own modules: nn.RNN/nn.LSTM, the default Adam, the same batches."""
    model = TorchNative(experiments.build_seeded_model(config, "bench"))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    stream = experiments.BatchStream(config, torch.device("cpu"))

    def step() -> float:
        x, y = next(stream)
        optimizer.zero_grad()
        pred, _ = model(x)
        loss = loss_fn(pred, y, config.train.target)
        value = loss.item()
        loss.backward()
        optimizer.step()
        return value

    return _looped(step)


def notebook_steps(config) -> Callable[[int], None]:
    model = notebook_port.build(config.model.type, config.model.num_layers, config.model.hidden_size)
    return _looped(notebook_port.make_step(model, config.train.target == "last", config.train.lr,
                                           config.task.seq_len, config.train.batch_size))


# Each makes a function that runs N optimizer steps of one fresh model.
CONTENDERS = {"notebook": notebook_steps, "torch": torch_steps, "rnnexp": rnnexp_steps}


def _steps_per_s(run: Callable[[int], None], steps: int) -> float:
    start = time.perf_counter()
    run(steps)
    return steps / (time.perf_counter() - start)


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure_models(rounds: int, steps: int) -> dict:
    """Optimizer steps per second of every contender for the four notebook models, one torch thread."""
    out = {}
    for label, kind, num_layers in MODELS:
        config = _config(kind, num_layers)
        runners = {name: make(config) for name, make in CONTENDERS.items()}
        for run in runners.values():  # warm-up: first calls allocate and pick kernels
            run(20)
        samples = {name: [] for name in runners}
        for _ in range(rounds):
            for name, run in runners.items():
                samples[name].append(_steps_per_s(run, steps))
        out[label] = {name: _stats(v) for name, v in samples.items()}
        print(f"  {label:13s} " + "  ".join(f"{n} {s['median']:7.0f}/s" for n, s in out[label].items()), flush=True)
    return out


SEEDS = 16


def matmul_floor(config, copies: int, calls: int = 100) -> float:
    """Seconds per engine step of ``copies`` copies spent in its matrix products alone: the products the engine's
    step makes (``_Stack.forward``, ``_Stack.backward``, ``Engine._backward``: wave by wave, a wave's recurrent
    product one bmm over its active layers), each timed as one bmm over contiguous buffers. The step's other work
    (elementwise, Adam, Python) comes on top, so ``copies`` x (one-copy step) / floor bounds what training the
    copies together can gain over one by one with this engine."""
    task = data.TASKS[config.task.name]
    K, L, H = copies, config.model.num_layers, config.model.hidden_size
    T, B, I, O = config.task.seq_len, config.train.batch_size, task.input_size, task.output_dim
    G = 4 * H if config.model.type == "lstm" else H
    seconds: dict[tuple[int, int, int, int], float] = {}

    def bmm(batch: int, rows: int, inner: int, columns: int) -> float:
        """Seconds of one (batch, rows, inner) x (batch, inner, columns) bmm."""
        shape = (batch, rows, inner, columns)
        if shape not in seconds:
            a, b = torch.randn(batch, rows, inner), torch.randn(batch, inner, columns)
            out = torch.empty(batch, rows, columns)
            for _ in range(10):
                torch.bmm(a, b, out=out)
            start = time.perf_counter()
            for _ in range(calls):
                torch.bmm(a, b, out=out)
            seconds[shape] = (time.perf_counter() - start) / calls
        return seconds[shape]

    waves = T + L - 1
    total = 0.0
    for w in range(waves):
        lo, hi = max(0, w - T + 1), min(L - 1, w)  # the layers active at wave w
        active = hi - lo + 1
        total += sum(bmm(K, G, H, B) for _ in range(max(lo, 1), hi + 1))  # upper layers' input part
        if w > 0:  # layer 0's first step has no recurrent product (h_{-1} = 0)
            total += bmm(active * K, G, H, B)
        if w < waves - 1:  # dLoss/dh from the next step (the top layer's last step has none)
            total += bmm(active * K, H, G, B)
        total += sum(bmm(K, H, G, B) for _ in range(lo, min(hi, L - 2) + 1))  # dLoss/dh from the layer above
    for layer in range(L):
        total += bmm(K, G, (T - 1) * B, H)  # dW_hh
        if layer > 0 or I > 1:  # dW_ih (layer 0's, with one input, is an elementwise product and a sum)
            total += bmm(K, G, T * B, H if layer else I)
    if I > 1:  # layer 0's input part (with one input, an elementwise product)
        total += bmm(K, G, I, T * B)
    total += bmm(K, O, H, T * B) + bmm(K, O, T * B, H)  # the head's output and dW_o
    if O > 1:  # dLoss/dh from the head (with one output, an elementwise product)
        total += bmm(K, H, O, T * B)
    return total


def measure_seeds(rounds: int, steps: int) -> dict:
    """Per-run throughput of SEEDS seeds of one model trained together (one engine) against training them one by
    one (rnnexp's path at K = 1, and torch's native modules), one torch thread, interleaved."""
    out = {}
    for label, kind, num_layers in MODELS:
        config = _config(kind, num_layers)
        runners = {"together": rnnexp_steps(config, SEEDS), "rnnexp": rnnexp_steps(config), "torch": torch_steps(config)}
        per_call = {"together": SEEDS, "rnnexp": 1, "torch": 1}
        for run in runners.values():
            run(5)
        samples = {name: [] for name in runners}
        floor_ms = []
        for _ in range(rounds):
            for name, run in runners.items():
                n = max(1, steps * 4 // SEEDS) if name == "together" else steps  # 4 x steps optimizer steps
                samples[name].append(_steps_per_s(run, n) * per_call[name])
            floor_ms.append(matmul_floor(config, SEEDS) * 1e3)
        out[label] = row = {name: _stats(v) for name, v in samples.items()}
        row["matmul_floor_ms"] = _stats(floor_ms)
        row["ceiling"] = SEEDS / row["rnnexp"]["median"] / (row["matmul_floor_ms"]["median"] / 1e3)
        print(f"  {label:13s} {SEEDS} together {row['together']['median']:7.0f} run-steps/s, one by one: rnnexp "
              f"{row['rnnexp']['median']:6.0f}/s, torch {row['torch']['median']:6.0f}/s; matrix products alone "
              f"{row['matmul_floor_ms']['median']:.2f} ms per {SEEDS}-copy step", flush=True)
    return out


def _timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    return time.perf_counter() - start


def measure_full(rounds: int, num_batches: int) -> dict:
    """Wall seconds of the notebook's whole experiment: ``rnnexp compare`` against the notebook's loop, alternating."""
    rnnexp = [str(Path(sys.executable).parent / "rnnexp")]
    times = {"notebook": [], "rnnexp_compare": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            # One torch thread: the notebook's loop is faster so than with two on tiny matrices.
            times["notebook"].append(_timed([sys.executable, str(ROOT / "benchmarks" / "notebook_port.py"),
                                             str(num_batches)], env={**os.environ, "OMP_NUM_THREADS": "1"}))
            times["rnnexp_compare"].append(_timed(rnnexp + ["compare", "--config", "configs/compare.yaml", "--quiet",
                                                            "--runs-dir", tmp, f"train.num_batches={num_batches}"]))
            print(f"  notebook {times['notebook'][-1]:.1f} s, rnnexp compare {times['rnnexp_compare'][-1]:.1f} s",
                  flush=True)
    return {name: _stats(v) for name, v in times.items()}


def measure_help(rounds: int = 5) -> dict:
    rnnexp = str(Path(sys.executable).parent / "rnnexp")
    return _stats([_timed([rnnexp, "--help"]) for _ in range(rounds)])


def measure_scaling(steps_budget_s: float = 1.0) -> list[dict]:
    """Steps/s against seq_len, hidden size and batch size, rnnexp and torch's native modules (1-layer models)."""
    grid = [dict(seq_len=s) for s in (10, 100, 1000)] + [dict(hidden_size=h) for h in (128, 512)] + \
           [dict(batch_size=b) for b in (128, 512)]
    rows = []
    for kind in ("rnn", "lstm"):
        for point in grid:
            config = _config(kind, 1, **point)
            row = {"model": kind, "seq_len": config.task.seq_len, "hidden_size": config.model.hidden_size,
                   "batch_size": config.train.batch_size}
            for name in ("torch", "rnnexp"):
                run = CONTENDERS[name](config)
                run(1)
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < steps_budget_s or n < 3:
                    run(1)
                    n += 1
                row[name] = n / (time.perf_counter() - start)
            rows.append(row)
            print(f"  {kind} seq_len {row['seq_len']:4d} hidden {row['hidden_size']:3d} batch {row['batch_size']:3d}: "
                  f"torch {row['torch']:7.1f}/s  rnnexp {row['rnnexp']:7.1f}/s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the per-model measurement")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per contender and round")
    parser.add_argument("--full-rounds", type=int, default=2, help="alternating runs of the whole experiment")
    parser.add_argument("--full-batches", type=int, default=5000, help="batches per training in the whole experiment")
    parser.add_argument("--skip-full", action="store_true", help="leave out the whole-experiment timing")
    parser.add_argument("--scaling", action="store_true", help="also measure steps/s against seq_len, hidden, batch")
    args = parser.parse_args()

    torch.set_num_threads(1)  # as rnnexp compare's workers run: tiny matmuls are slower with two threads
    result = {"date": datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
              "python": platform.python_version(), "cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
              "threads": torch.get_num_threads(), "rounds": args.rounds, "steps": args.steps}
    print(f"optimizer steps/s, one torch thread, median of {args.rounds} rounds of {args.steps} steps:", flush=True)
    result["models"] = measure_models(args.rounds, args.steps)
    print(f"{SEEDS} seeds of one model trained together against one by one (run-steps/s, median of {args.rounds}):",
          flush=True)
    result["seeds"] = measure_seeds(args.rounds, args.steps)
    result["help_s"] = measure_help()
    if not args.skip_full:
        print(f"the notebook's whole experiment (8 trainings x {args.full_batches} batches), alternating:", flush=True)
        result["full"] = measure_full(args.full_rounds, args.full_batches)
    if args.scaling:
        print("scaling (1-layer models, one torch thread):", flush=True)
        result["scaling"] = measure_scaling()
    result["load_after"] = os.getloadavg()[0]

    print()
    print(f"{'model':13s} {'notebook':>9s} {'torch':>9s} {'rnnexp':>9s} {'vs notebook':>12s} {'vs torch':>9s}  (steps/s, median [min-max])")
    for label, row in result["models"].items():
        nb, th, rx = (row[k]["median"] for k in ("notebook", "torch", "rnnexp"))
        print(f"{label:13s} {nb:9.0f} {th:9.0f} {rx:9.0f} {rx / nb:11.2f}x {rx / th:8.2f}x  "
              f"[rnnexp {row['rnnexp']['min']:.0f}-{row['rnnexp']['max']:.0f}]")
    print(f"\n{'model':13s} {SEEDS:>3d} together   rnnexp 1 by 1   torch 1 by 1  {'vs rnnexp':>10s} {'vs torch':>9s}"
          f"  {'ceiling':>8s}  (run-steps/s, median; ceiling: vs rnnexp if the matrix products were all)")
    for label, row in result["seeds"].items():
        tg, rx, th = (row[k]["median"] for k in ("together", "rnnexp", "torch"))
        print(f"{label:13s} {tg:12.0f} {rx:15.0f} {th:14.0f} {tg / rx:9.2f}x {tg / th:8.2f}x  {row['ceiling']:7.2f}x")
    if "full" in result:
        nb, rx = result["full"]["notebook"], result["full"]["rnnexp_compare"]
        print(f"whole experiment: notebook {nb['median']:.1f} s [{nb['min']:.1f}-{nb['max']:.1f}], rnnexp compare "
              f"{rx['median']:.1f} s [{rx['min']:.1f}-{rx['max']:.1f}]: {nb['median'] / rx['median']:.2f}x faster")
    print(f"rnnexp --help: {result['help_s']['median']:.3f} s")
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(path)


if __name__ == "__main__":
    main()

"""How long gradscan's computation takes (not a test): the 41x41 grid at seq_len 10 and one setting at
seq_len 1000, for the four notebook models at gradscan's defaults (hidden 16, target last, seed 0), in
float64 as the command computes it; best of 5, one torch thread. Run: .venv/bin/python benchmarks/gradscan_timing.py
"""
import time

import torch

from rnnexp import gradients
from rnnexp.config import load_gradscan_config, parse_scales
from rnnexp.gradscan import DTYPE, build_inputs


def best_of(fn, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    scales = parse_scales("-5:5:0.25", "--weight-scale")
    weights = [w for w in scales for _ in scales]  # every combination, weight scale major, as gradscan
    biases = [b for _ in scales for b in scales]
    for kind in ("rnn", "lstm"):
        for layers in (1, 2):
            models = {seq_len: build_inputs(load_gradscan_config(None, [
                f"model.type={kind}", f"model.num_layers={layers}", f"task.seq_len={seq_len}"])) for seq_len in (10, 1000)}
            model, x, y = models[10]
            grid = best_of(lambda: gradients.grad_flow(model, x, y, "last", weights, biases, dtype=DTYPE))
            model, x, y = models[1000]
            one = best_of(lambda: gradients.grad_flow(model, x, y, "last", [1.0], [1.0], dtype=DTYPE))
            print(f"{kind} {layers} layer(s): 41x41 grid at seq_len 10 {grid:.3f} s, one setting at seq_len 1000 {one:.3f} s")


if __name__ == "__main__":
    main()

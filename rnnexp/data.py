"""Synthetic tasks and the seeds their random draws come from."""
from __future__ import annotations

import hashlib
from typing import Callable

import torch


def derive_seed(seed: int, *purpose: str) -> int:
    """A stable 63-bit seed for one purpose (``"init", "lstm_2_layer"``), independent of every other purpose."""
    digest = hashlib.sha256(":".join([str(seed), *purpose]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(seed: int, *purpose: str) -> torch.Generator:
    """A CPU generator seeded for one purpose; data is drawn on the CPU so every device sees the same numbers."""
    return torch.Generator().manual_seed(derive_seed(seed, *purpose))


def running_mean(generator: torch.Generator, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, 1) and y_t = mean(x_1..x_t), both (batch_size, seq_len, 1)."""
    x = torch.randn(batch_size, seq_len, 1, generator=generator)  # (B, T, 1)
    counts = torch.arange(1, seq_len + 1, dtype=x.dtype).view(1, seq_len, 1)  # (1, T, 1)
    return x, x.cumsum(dim=1) / counts


# name -> (sampler, input_size, output_dim)
TASKS: dict[str, tuple[Callable[[torch.Generator, int, int], tuple[torch.Tensor, torch.Tensor]], int, int]] = {
    "running_mean": (running_mean, 1, 1),
}


def sample_batch(task: str, generator: torch.Generator, batch_size: int, seq_len: int):
    """One batch ``(x, y)`` of a registered task."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return TASKS[task][0](generator, batch_size, seq_len)

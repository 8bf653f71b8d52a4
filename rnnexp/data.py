"""Synthetic tasks and the seeds their random draws come from."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch


def derive_seed(seed: int, *purpose: str) -> int:
    """A stable 63-bit seed for one purpose (``"init", "lstm_2_layer"``), independent of every other purpose."""
    digest = hashlib.sha256(":".join([str(seed), *purpose]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_generator(seed: int, *purpose: str) -> torch.Generator:
    """A CPU generator seeded for one purpose; data is drawn on the CPU so every device sees the same numbers."""
    return torch.Generator().manual_seed(derive_seed(seed, *purpose))


def running_mean_inputs(generator: torch.Generator, batch_size: int, seq_len: int) -> torch.Tensor:
    """x ~ N(0, 1), (batch_size, seq_len, 1)."""
    return torch.randn(batch_size, seq_len, 1, generator=generator)


def running_mean_targets(x: torch.Tensor, time_dim: int = 1) -> torch.Tensor:
    """y_t = mean(x_1..x_t) along ``time_dim`` (the same numbers, bit for bit, whichever axis is time)."""
    seq_len = x.shape[time_dim]
    shape = [1] * x.dim()
    shape[time_dim] = seq_len
    counts = torch.arange(1, seq_len + 1, dtype=x.dtype, device=x.device).view(shape)
    return x.cumsum(dim=time_dim) / counts


def running_mean(generator: torch.Generator, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, 1) and y_t = mean(x_1..x_t), both (batch_size, seq_len, 1)."""
    x = running_mean_inputs(generator, batch_size, seq_len)
    return x, running_mean_targets(x)


@dataclass(frozen=True)
class Task:
    """A synthetic task: random inputs (B, T, input_size) from a generator, and their targets, computed from the
    inputs alone (so the targets of many streams' batches are computed at once, in any layout)."""
    inputs: Callable[[torch.Generator, int, int], torch.Tensor]
    targets: Callable[..., torch.Tensor]  # (inputs, time_dim) -> targets
    input_size: int
    output_dim: int


TASKS: dict[str, Task] = {
    "running_mean": Task(running_mean_inputs, running_mean_targets, 1, 1),
}


def sample_batch(task: str, generator: torch.Generator, batch_size: int, seq_len: int):
    """One batch ``(x, y)`` of a registered task."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    x = TASKS[task].inputs(generator, batch_size, seq_len)
    return x, TASKS[task].targets(x)

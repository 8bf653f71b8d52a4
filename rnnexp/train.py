"""The loss, and the reference trainer the engine is tested against: autograd over the notebook's modules."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import EVAL_CHUNK


def loss_fn(pred: torch.Tensor, y: torch.Tensor, target: str = "all") -> torch.Tensor:
    """MSE over every timestep (``all``) or over the last timestep only (``last``)."""
    if target == "last":
        pred, y = pred[:, -1], y[:, -1]  # (B, output_dim)
    elif target != "all":
        raise ValueError(f"unknown target {target!r}; known: all, last")
    return F.mse_loss(pred, y)


@dataclass
class History:
    """What a training produced: one loss per optimizer step, and how it ended."""
    losses: list[float] = field(default_factory=list)
    status: str = "completed"  # or "diverged"
    message: str = ""


BETAS, EPS = (0.9, 0.999), 1e-8  # Adam's, as torch.optim.Adam's defaults; the engine uses the same


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """The reference trainer's optimizer: ``torch.optim.Adam(fused=True)``, whose kernel the engine calls directly."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=BETAS, eps=EPS, fused=True)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
          num_batches: int, target: str = "all", clip_grad_norm: float | None = None,
          on_step: Callable[[int, float], None] | None = None, start_step: int = 0,
          history: History | None = None, should_stop: Callable[[], bool] | None = None) -> History:
    """Runs steps ``start_step .. num_batches-1``, appending to ``history``.

    Stops early with status ``diverged`` at a non-finite loss or gradient (that step is not taken),
    or with status ``interrupted`` when ``should_stop()`` is true at the start of a step; either way
    the model, optimizer and ``history`` agree on the number of steps taken.
    """
    history = history if history is not None else History()
    params = [p for p in model.parameters()]
    model.train()
    for step in range(start_step, num_batches):
        if should_stop is not None and should_stop():
            history.status, history.message = "interrupted", f"interrupted at step {step}"
            break
        x, y = next(batches)
        optimizer.zero_grad()
        pred, _ = model(x)
        loss = loss_fn(pred, y, target)
        value = loss.item()
        if not math.isfinite(value):
            history.status, history.message = "diverged", f"loss became {value} at step {step}"
            break
        loss.backward()
        if clip_grad_norm is not None:
            norm = nn.utils.clip_grad_norm_(params, clip_grad_norm)
        else:
            norm = torch.stack(torch._foreach_norm([p.grad for p in params if p.grad is not None])).sum()
        if not torch.isfinite(norm):
            history.status, history.message = "diverged", f"gradient norm became {norm.item()} at step {step}"
            break
        optimizer.step()
        history.losses.append(value)
        if on_step is not None:
            on_step(step, value)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: str = "all") -> tuple[float, torch.Tensor]:
    """``(mse, preds)`` on a held-out set, EVAL_CHUNK sequences per forward pass (the states of all of them at once
    can take gigabytes at long sequences)."""
    model.eval()
    pred = torch.cat([model(chunk)[0] for chunk in x.split(EVAL_CHUNK)])
    return loss_fn(pred, y, target).item(), pred

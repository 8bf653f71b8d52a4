"""The loss and one explicit training loop."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


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


class Adam:
    """Adam exactly as ``torch.optim.Adam(params, lr, fused=True)`` computes it: the same fused kernel, called
    the same way, so the same numbers bit for bit (a test says so), and a state dict in torch.optim's format.

    Why not torch.optim itself: its step costs about 70 us of Python per call, a tenth of a step
    of these small models, and its first use in a process imports torch._dynamo, over a second.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (as torch.optim skips those without)."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if len(live) < len(self.params):
            pick = lambda tensors: [tensors[i] for i in live]  # noqa: E731
            params, exp_avgs, exp_avg_sqs, steps = map(pick, (self.params, self.exp_avgs, self.exp_avg_sqs, self.steps))
        else:
            params, exp_avgs, exp_avg_sqs, steps = self.params, self.exp_avgs, self.exp_avg_sqs, self.steps
        if not params:
            return
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                           lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0, eps=self.eps,
                           maximize=False, grad_scale=None, found_inf=None)

    def state_dict(self) -> dict:
        """In torch.optim.Adam's format: ``{"state": {i: {step, exp_avg, exp_avg_sq}}, "param_groups": [...]}``."""
        state = {i: {"step": s.clone(), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
                 for i, (s, m, v) in enumerate(zip(self.steps, self.exp_avgs, self.exp_avg_sqs)) if s.item() > 0}
        group = {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": 0.0, "amsgrad": False,
                 "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": True,
                 "decoupled_weight_decay": False, "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of this class or of torch.optim.Adam over the same parameters."""
        (group,) = state_dict["param_groups"]
        if len(group["params"]) != len(self.params):
            raise ValueError(f"the state is for {len(group['params'])} parameters, not {len(self.params)}")
        self.lr, self.betas, self.eps = group["lr"], tuple(group["betas"]), group["eps"]
        with torch.no_grad():
            for i, p in enumerate(self.params):
                state = state_dict["state"].get(i)
                if state is None:
                    continue
                self.steps[i].copy_(state["step"])
                self.exp_avgs[i].copy_(state["exp_avg"])
                self.exp_avg_sqs[i].copy_(state["exp_avg_sq"])


def make_optimizer(model: nn.Module, lr: float) -> Adam:
    """The optimizer every rnnexp training uses: Adam over all of ``model``'s parameters."""
    return Adam(model.parameters(), lr=lr)


def train(model: nn.Module, optimizer: Adam, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
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
    """``(mse, preds)`` on a held-out set."""
    model.eval()
    pred, _ = model(x)
    return loss_fn(pred, y, target).item(), pred

"""Gradient flow through time: per-timestep norms of the total derivative dLoss/dh_t (and dLoss/dc_t).

One function, ``grad_flow``, serves both ``rnnexp gradscan`` (many scaled copies of one
model) and the training runs' probe (the model as it is, scales 1). The scaled copies are
independent models, so they run as one batched forward: ``torch.func.vmap`` over the
scale factors, each row with its own scaled parameters, through the model's own
step-by-step forward. Summing the copies' losses and taking one backward pass gives each
copy its own gradient, because no copy's loss depends on another copy's states.

Returns numbers, never files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.func import functional_call, vmap

from . import models
from .train import loss_fn

RECURRENT_PREFIX = "recurrent_net."  # state-dict names of the recurrent layers; the head is "final_w."
# Settings run at once are capped so that the states kept for the backward pass stay near this
# many numbers (about 100 MB in float64 for an LSTM); a 41x41 scan at seq_len 10 is one chunk.
CHUNK_ELEMENTS = 2 ** 20


def scale_recurrent(state: Mapping[str, torch.Tensor], weight_scale, bias_scale) -> dict[str, torch.Tensor]:
    """The weight-scaling rule: every recurrent-layer weight times ``weight_scale``, every recurrent bias
    times ``bias_scale``; the regression head is left alone. Works on a state dict or named parameters."""
    scaled = {}
    for name, value in state.items():
        if not name.startswith(RECURRENT_PREFIX):
            scaled[name] = value
        elif name.endswith(".weight"):
            scaled[name] = value * weight_scale
        elif name.endswith(".bias"):
            scaled[name] = value * bias_scale
        else:
            raise ValueError(f"{name}: a recurrent parameter that is neither a weight nor a bias")
    return scaled


def grad_norm(g: torch.Tensor) -> torch.Tensor:
    """The 2-norm over the last two dims (batch, hidden), one per leading index; no overflow for huge finite
    entries (it is taken on g / max|g|), exactly 0 for a zero gradient, inf or nan when g holds them."""
    peak = g.abs().amax(dim=(-2, -1))  # (...,)
    ok = torch.isfinite(peak) & (peak > 0)
    unit = torch.where(ok, peak, torch.ones_like(peak))
    scaled = torch.linalg.vector_norm(g / unit[..., None, None], dim=(-2, -1))
    return torch.where(ok, unit * scaled, torch.linalg.vector_norm(g, dim=(-2, -1)))


@dataclass(frozen=True)
class GradFlow:
    """Norms for K settings of a model with L recurrent layers over T timesteps (numpy float64; timestep t is index t-1)."""
    weight_scales: np.ndarray  # (K,)
    bias_scales: np.ndarray  # (K,)
    loss: np.ndarray  # (K,)
    hidden_norm: np.ndarray  # (K, L, T): ||h_t||
    grad_norm: np.ndarray  # (K, L, T): ||dLoss/dh_t||, the total derivative
    cell_grad_norm: np.ndarray | None  # (K, L, T): ||dLoss/dc_t||, LSTMs only
    spectral_radius: np.ndarray | None  # (K, L): largest |eigenvalue| of the scaled W_hh, RNNs only
    sigma_max: np.ndarray | None  # (K, L): largest singular value of the scaled W_hh, RNNs only

    def log10_ratio(self) -> np.ndarray:
        """(K, L): log10(||dL/dh_1|| / ||dL/dh_T||); -inf when the first is 0, nan when both are or one is nan."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(self.grad_norm[..., 0]) - np.log10(self.grad_norm[..., -1])


def grid(weight_scales: Sequence[float], bias_scales: Sequence[float]) -> tuple[list[float], list[float]]:
    """Every (weight, bias) combination, weight scale major: two flat lists of equal length."""
    return [w for w in weight_scales for _ in bias_scales], [b for _ in weight_scales for b in bias_scales]


def grad_flow(model: models.RecurrentRegressionModel, x: torch.Tensor, y: torch.Tensor, target: str,
              weight_scales: Sequence[float] = (1.0,), bias_scales: Sequence[float] = (1.0,),
              dtype: torch.dtype | None = None) -> GradFlow:
    """Norms for the copies of ``model`` scaled by each pair ``(weight_scales[k], bias_scales[k])`` on one batch
    ``x`` (B, T, I), ``y`` (B, T, O); computed in ``dtype`` (default: the model's). The model is not changed."""
    if len(weight_scales) != len(bias_scales):
        raise ValueError("weight_scales and bias_scales must pair up (see grid())")
    layers = models.recurrent_layers(model)
    base = {k: v.detach() if dtype is None else v.detach().to(dtype) for k, v in model.named_parameters()}
    dtype = next(iter(base.values())).dtype
    x, y = x.to(dtype), y.to(dtype)
    was_tracking = [layer.track_hidden for layer in layers]
    models.set_track_hidden(model, True)
    try:
        per_setting = x.shape[0] * x.shape[1] * layers[0].hidden_size * len(layers)
        chunk = max(1, CHUNK_ELEMENTS // per_setting)
        parts = [_flow_chunk(model, layers, base, x, y, target, torch.tensor(weight_scales[i:i + chunk], dtype=dtype),
                             torch.tensor(bias_scales[i:i + chunk], dtype=dtype))
                 for i in range(0, len(weight_scales), chunk)]
    finally:
        for layer, on in zip(layers, was_tracking):
            layer.track_hidden = on
            # The kept states belong to the vmapped copies: drop them (and their graph) with the scan.
            layer.h_list = []
            if isinstance(layer, models.LSTMLayer):
                layer.c_list = []
    joined = {key: None if parts[0][key] is None else np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return GradFlow(np.asarray(weight_scales, dtype=float), np.asarray(bias_scales, dtype=float), **joined)


def _flow_chunk(model, layers, base: dict[str, torch.Tensor], x, y, target: str,
                weight_scales: torch.Tensor, bias_scales: torch.Tensor) -> dict[str, np.ndarray | None]:
    is_lstm = isinstance(layers[0], models.LSTMLayer)

    def one_copy(weight_scale, bias_scale):
        pred, _ = functional_call(model, scale_recurrent(base, weight_scale, bias_scale), (x,))
        hs = [h for layer in layers for h in layer.h_list]
        cs = [c for layer in layers for c in layer.c_list] if is_lstm else []
        return loss_fn(pred, y, target), hs, cs

    with torch.enable_grad():
        # The parameters are detached; the scale factors are what puts every state in the autograd graph.
        weight_scales, bias_scales = weight_scales.requires_grad_(), bias_scales.requires_grad_()
        loss, hs, cs = vmap(one_copy)(weight_scales, bias_scales)  # loss (K,); each state (K, B, H)
        grads = torch.autograd.grad(loss.sum(), hs + cs)
    num_layers, seq_len = len(layers), x.shape[1]

    def table(states) -> np.ndarray:  # L*T tensors (K, B, H) -> (K, L, T)
        norms = grad_norm(torch.stack([s.detach() for s in states], dim=1))  # (K, L*T)
        return norms.reshape(-1, num_layers, seq_len).cpu().numpy().astype(np.float64)

    out = {"loss": loss.detach().cpu().numpy().astype(np.float64), "hidden_norm": table(hs),
           "grad_norm": table(grads[:len(hs)]), "cell_grad_norm": table(grads[len(hs):]) if is_lstm else None,
           "spectral_radius": None, "sigma_max": None}
    if not is_lstm:
        # The W_hh block of each layer's weight, in every scaled copy: (K, L, H, H).
        scaled = vmap(lambda w, b: scale_recurrent(base, w, b))(weight_scales.detach(), bias_scales.detach())
        w_hh = torch.stack([scaled[f"{RECURRENT_PREFIX}layers.{k}.mixed_w.weight"][:, :, layer.input_size:]
                            for k, layer in enumerate(layers)], dim=1)
        # LAPACK crashes the process on a matrix with inf or nan (a weight overflowed): those get nan
        finite = torch.isfinite(w_hh).all(dim=-1).all(dim=-1)
        w_hh = torch.where(finite[..., None, None], w_hh, torch.zeros_like(w_hh))
        nan = torch.tensor(float("nan"), dtype=w_hh.dtype, device=w_hh.device)
        radius = torch.where(finite, torch.linalg.eigvals(w_hh).abs().amax(dim=-1), nan)
        out["spectral_radius"] = radius.cpu().numpy().astype(np.float64)
        out["sigma_max"] = torch.where(finite, torch.linalg.svdvals(w_hh)[..., 0], nan).cpu().numpy().astype(np.float64)
    return out


@dataclass
class GradLog:
    """The gradient norms of one fixed probe batch during a training, one (L, T) table per recorded step."""
    x: torch.Tensor  # (B, T, I), on the model's device
    y: torch.Tensor  # (B, T, O)
    target: str
    steps: list[int] = field(default_factory=list)
    grad_norm: list[np.ndarray] = field(default_factory=list)  # each (L, T)
    cell_grad_norm: list[np.ndarray] = field(default_factory=list)  # each (L, T), LSTMs only

    def record(self, model: models.RecurrentRegressionModel, step: int) -> None:
        """Add the model's norms as they are after ``step`` optimizer steps (once per step)."""
        if self.steps and self.steps[-1] == step:
            return
        flow = grad_flow(model, self.x, self.y, self.target)
        self.steps.append(step)
        self.grad_norm.append(flow.grad_norm[0])
        if flow.cell_grad_norm is not None:
            self.cell_grad_norm.append(flow.cell_grad_norm[0])

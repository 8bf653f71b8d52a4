"""The training engine: K copies of one architecture trained as one computation, without autograd.

Every training rnnexp runs goes through here: ``train`` with K = 1, ``compare`` with one copy per
target mode (and seed) of a model. The forward pass, the loss, backpropagation through time and Adam
are written out by hand over parameters stacked along a leading copy dimension, so that a step costs
the same few dozen torch calls whatever K is. For these small models that is the whole game: a step
of the notebook's LSTM is ~5 us of arithmetic per call and ~5 us of call overhead, and autograd adds
several calls per operation. ``train.train`` (autograd over the notebook's modules) stays as the
reference the tests hold this engine to.

Layout (per copy k, batch innermost so each whole-sequence product is one ``bmm`` without copies):
  sequences ``(K, features, T, B)``;
  per layer ``W_ih (K, G, I)``, ``W_hh (K, G, H)``, ``b (K, G)`` with G = H (rnn) or 4H (lstm, gate
  blocks f, i, o, g as in the notebook): the notebook's ``weight = cat([W_ih, W_hh], 1)``;
  head ``W_o (K, O, H)``, ``b_o (K, O)``.
A copy's numbers do not depend on K or on the other copies (every op is per copy; a test checks
K = 1 against K = 3 bit for bit), so a compare's sub-run resumes alone exactly as it would have gone on.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .models import LSTMLayer, RNNLayer, recurrent_layers

BETAS = (0.9, 0.999)
EPS = 1e-8
_ACTIVATIONS = {"tanh", "relu", "identity"}


def _activation_name(layer: RNNLayer) -> str:
    from .models import NONLINEARITIES

    for name, fn in NONLINEARITIES.items():
        if layer.nonlinearity is fn:
            return name
    raise ValueError(f"the engine has no backward for nonlinearity {layer.nonlinearity!r}")


def _linears(model: nn.Module) -> list[tuple[nn.Linear, int]]:
    """Each recurrent layer's linear map with its input size, then the head (input size 0)."""
    out = [(layer.w if isinstance(layer, LSTMLayer) else layer.mixed_w, layer.input_size)
           for layer in recurrent_layers(model)]
    return out + [(model.final_w, 0)]


def _swap_go(rows: torch.Tensor) -> torch.Tensor:
    """An LSTM's gate blocks along dim 0 from the notebook's order f, i, o, g to the engine's f, i, g, o (and back)."""
    f, i, o, g = rows.chunk(4, dim=0)
    return torch.cat([f, i, g, o])


def _split(weight: torch.Tensor, bias: torch.Tensor, input_size: int, lstm: bool) -> list[torch.Tensor]:
    """A linear map's (weight, bias) as the engine's [W_ih, W_hh, b], or [W_o, b_o] for the head."""
    if input_size == 0:
        return [weight, bias]
    if lstm:
        weight, bias = _swap_go(weight), _swap_go(bias)
    return [weight[:, :input_size], weight[:, input_size:], bias]


class _Layer:
    """Buffers of one recurrent layer and views of them per timestep, made once."""

    def __init__(self, kind: str, activation: str, K: int, T: int, B: int, H: int, device: torch.device):
        G = 4 * H if kind == "lstm" else H
        self.kind, self.activation, self.H, self.G, self.T = kind, activation, H, G, T
        z = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        self.one = torch.ones((), device=device)
        self.two, self.minus_one = torch.full((), 2.0, device=device), torch.full((), -1.0, device=device)
        self.XW = z(K, G, T, B)  # pre-activations; the input part is filled for all steps at once
        self.HS = z(K, H, T + 1, B)  # slot 0 is h_0 = 0, h_t is in slot t + 1
        self.XW_t = [self.XW[:, :, t] for t in range(T)]
        self.HS_t = [self.HS[:, :, t] for t in range(T + 1)]
        self.HS_seq = self.HS[:, :, 1:].reshape(K, H, T * B)  # a view: the layer's output sequence
        self.HS_prev = self.HS[:, :, 1:T].reshape(K, H, (T - 1) * B)  # h_1 .. h_{T-1}, multiplying steps 2 .. T
        self.dXW = z(K, G, T, B)  # dLoss/d(pre-activation)
        self.dXW_t = [self.dXW[:, :, t] for t in range(T)]
        self.dXW_next = self.dXW[:, :, 1:].reshape(K, G, (T - 1) * B)
        if kind == "rnn":
            self.dact = z(K, H, T, B)
            self.dact_t = [self.dact[:, :, t] for t in range(T)]
            return
        # The engine keeps an LSTM's gate blocks in the order f, i, g, o (the notebook's is f, i, o, g), so that
        # the three blocks dc flows into are adjacent; and it keeps 2c and 2g, whose sigmoids give the tanhs.
        self.S4 = z(K, 4 * H, T, B)  # sigmoid of every gate pre-activation, the g block's doubled
        self.G2 = z(K, H, T, B)  # 2 g = 2 tanh(pre_g)
        self.C2 = z(K, H, T + 1, B)  # 2 c; slot 0 is c_0 = 0
        self.TC = z(K, H, T, B)  # tanh(c_t)
        self.Q = z(K, H, T, B)  # dc_t += dh_t * Q_t
        self.P = z(K, G, T, B)  # dpre_t = [dc, dc, dc, dh] * P_t
        self.minus_two, self.four = torch.full((), -2.0, device=device), torch.full((), 4.0, device=device)
        self.zero = torch.zeros((), device=device)
        self.S4_t = [self.S4[:, :, t] for t in range(T)]
        self.f_t = [self.S4[:, :H, t] for t in range(T)]
        self.i_t = [self.S4[:, H:2 * H, t] for t in range(T)]
        self.g_t = [self.S4[:, 2 * H:3 * H, t] for t in range(T)]
        self.o_t = [self.S4[:, 3 * H:, t] for t in range(T)]
        self.G2_t = [self.G2[:, :, t] for t in range(T)]
        self.C2_t = [self.C2[:, :, t] for t in range(T + 1)]
        self.TC_t = [self.TC[:, :, t] for t in range(T)]
        self.Q_t = [self.Q[:, :, t] for t in range(T)]
        self.P3_t = [self.P[:, :3 * H, t].view(K, 3, H, B) for t in range(T)]
        self.Po_t = [self.P[:, 3 * H:, t] for t in range(T)]
        self.dXW3_t = [self.dXW[:, :3 * H, t].view(K, 3, H, B) for t in range(T)]
        self.dXWo_t = [self.dXW[:, 3 * H:, t] for t in range(T)]
        self.dh = z(K, H, B)

    def forward(self, W_hh: torch.Tensor) -> None:
        """The recurrence over ``XW`` (input part already in), filling HS (and the LSTM's gates and cells).

        tanh is computed as 2 sigmoid(2x) - 1 (torch's CPU tanh is several times slower than its sigmoid;
        the two differ by float rounding, ~1e-7): for a tanh RNN, XW and W_hh h come in doubled
        (``alpha=2``); for the LSTM, the g rows of XW and of ``W_hh`` (a doubled copy) are, so that one
        sigmoid covers all four gate blocks. Doubling is exact in floating point.
        """
        T = self.T
        if self.kind == "rnn":
            for t in range(T):
                h = self.HS_t[t + 1]
                if self.activation == "tanh":
                    pre2 = self.XW_t[t] if t == 0 else torch.baddbmm(self.XW_t[t], W_hh, self.HS_t[t], alpha=2)
                    torch.sigmoid(pre2, out=h)
                    torch.addcmul(self.minus_one, h, self.two, out=h)
                    continue
                pre = self.XW_t[t] if t == 0 else torch.baddbmm(self.XW_t[t], W_hh, self.HS_t[t])
                if self.activation == "relu":
                    torch.clamp_min(pre, 0, out=h)  # torch.relu has no out=; same values
                else:
                    h.copy_(pre)
            return
        for t in range(T):
            gates = self.XW_t[t] if t == 0 else torch.baddbmm(self.XW_t[t], W_hh, self.HS_t[t])
            torch.sigmoid(gates, out=self.S4_t[t])
            torch.addcmul(self.minus_two, self.g_t[t], self.four, out=self.G2_t[t])  # 2 g = 2 (2 s - 1)
            if t == 0:  # c_0 = 0
                torch.mul(self.i_t[0], self.G2_t[0], out=self.C2_t[1])
            else:
                torch.mul(self.f_t[t], self.C2_t[t], out=self.C2_t[t + 1])
                self.C2_t[t + 1].addcmul_(self.i_t[t], self.G2_t[t])
            tc = self.TC_t[t]
            torch.sigmoid(self.C2_t[t + 1], out=tc)
            torch.addcmul(self.minus_one, tc, self.two, out=tc)  # tanh(c_t)
            torch.mul(tc, self.o_t[t], out=self.HS_t[t + 1])

    def backward(self, dHS: torch.Tensor, W_hh: torch.Tensor, dW_hh: torch.Tensor) -> None:
        """From dLoss/dh_t coming from above (K, H, T, B): fills dXW and writes dLoss/dW_hh into ``dW_hh``."""
        T, H = self.T, self.H
        Wt = W_hh.transpose(1, 2)
        if self.kind == "rnn":
            hs = self.HS[:, :, 1:]
            if self.activation == "tanh":
                torch.addcmul(self.one, hs, hs, value=-1, out=self.dact)  # 1 - h^2
            elif self.activation == "relu":
                torch.gt(hs, 0, out=self.dact)  # 1.0 where h > 0 (relu's gradient at 0 is 0, as torch's)
            else:
                self.dact.fill_(1)
            torch.mul(dHS, self.dact, out=self.dXW)
            for t in range(T - 1, 0, -1):
                self.dXW_t[t - 1].addcmul_(torch.bmm(Wt, self.dXW_t[t]), self.dact_t[t - 1])
        else:
            S4, P, one = self.S4, self.P, self.one
            dS = torch.addcmul(S4, S4, S4, value=-1)  # sigmoid' = s - s^2 (the g block's is not used)
            torch.addcmul(self.zero, self.C2[:, :, :T], dS[:, :H], value=0.5, out=P[:, :H])  # f: c_{t-1} f'
            torch.addcmul(self.zero, self.G2, dS[:, H:2 * H], value=0.5, out=P[:, H:2 * H])  # i: g i'
            torch.mul(S4[:, H:2 * H], torch.addcmul(one, self.G2, self.G2, value=-0.25), out=P[:, 2 * H:3 * H])  # g: i g'
            torch.mul(self.TC, dS[:, 3 * H:], out=P[:, 3 * H:])  # o: tanh(c) o'
            torch.mul(S4[:, 3 * H:], torch.addcmul(one, self.TC, self.TC, value=-1), out=self.Q)  # o tanh'(c)
            dh = self.dh
            for t in range(T - 1, -1, -1):
                if t == T - 1:
                    dh.copy_(dHS[:, :, t])
                    dc = dh * self.Q_t[t]
                else:
                    torch.baddbmm(dHS[:, :, t], Wt, self.dXW_t[t + 1], out=dh)
                    dc = torch.addcmul(dc * self.f_t[t + 1], dh, self.Q_t[t])
                torch.mul(dc.unsqueeze(1), self.P3_t[t], out=self.dXW3_t[t])
                torch.mul(dh, self.Po_t[t], out=self.dXWo_t[t])
        torch.bmm(self.dXW_next, self.HS_prev.transpose(1, 2), out=dW_hh)


class Engine:
    """K copies of one model trained together, copy k on its own target mode and data.

    ``step(x, y)`` takes x, y as (K, features, T, B) (``to_engine_layout``) and either takes one Adam
    step for every copy and returns their losses, or, when any copy's loss or gradient is not finite,
    takes no step at all and says which copies: the caller ``drop``s those and repeats the step.
    """

    def __init__(self, models: list[nn.Module], targets: list[str], lr: float, clip_grad_norm: float | None = None):
        first = models[0]
        layers = recurrent_layers(first)
        self.kind = "lstm" if isinstance(layers[0], LSTMLayer) else "rnn"
        self.activation = "tanh" if self.kind == "lstm" else _activation_name(layers[0])
        for model in models:
            if [type(m) for m in recurrent_layers(model)] != [type(m) for m in layers]:
                raise ValueError("the engine trains copies of one architecture only")
        self.hidden = layers[0].hidden_size
        self.input_size = layers[0].input_size
        self.output_dim = first.final_w.out_features
        self.num_layers = len(layers)
        self.device = first.final_w.weight.device
        self.lr, self.clip_grad_norm = lr, clip_grad_norm
        self.targets = list(targets)
        lstm = self.kind == "lstm"
        per_model = [[p.detach() for lin, size in _linears(m) for p in _split(lin.weight, lin.bias, size, lstm)]
                     for m in models]
        self.params = [torch.stack(group).contiguous() for group in zip(*per_model)]
        self.grads = [torch.zeros_like(p) for p in self.params]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in self.params]
        self._shape: tuple[int, int] | None = None  # (T, B) the buffers are made for
        self._two = torch.full((), 2.0, device=self.device)

    @property
    def K(self) -> int:
        return self.params[0].shape[0]

    # ---- the step -------------------------------------------------------------------------------------
    def _buffers(self, T: int, B: int) -> None:
        if self._shape == (T, B):
            return
        K, O, dev = self.K, self.output_dim, self.device
        self._shape = (T, B)
        self.layers = [_Layer(self.kind, self.activation, K, T, B, self.hidden, dev) for _ in range(self.num_layers)]
        if self.kind == "lstm":
            H = self.hidden
            self._g_doubled = torch.ones(1, 4 * H, 1, device=dev)
            self._g_doubled[:, 2 * H:3 * H] = 2.0
            self._W_hh2 = [torch.zeros_like(self.params[3 * l + 1]) for l in range(self.num_layers)]
        self.preds, self.diff, self.dP = (torch.zeros(K, O, T, B, device=dev) for _ in range(3))
        # dLoss_k/dpred = diff * scale_k: mean over every step ("all") or over the last one only ("last")
        self.scale = torch.zeros(K, 1, T, 1, device=dev)
        for k, target in enumerate(self.targets):
            if target == "last":
                self.scale[k, 0, T - 1] = 2.0 / (O * B)
            else:
                self.scale[k] = 2.0 / (O * T * B)
        last = torch.tensor([t == "last" for t in self.targets], device=dev)
        self._last = None if not bool(last.any()) else last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (K, I, T, B) -> predictions (K, O, T, B), keeping what backward needs."""
        K, _, T, B = x.shape
        self._buffers(T, B)
        inp = x.reshape(K, x.shape[1], T * B)
        self.inputs = []
        for l, layer in enumerate(self.layers):
            W_ih, W_hh, b = self.params[3 * l:3 * l + 3]
            self.inputs.append(inp)
            XW = layer.XW.view(K, layer.G, T * B)
            if inp.shape[1] == 1:  # an outer product: bmm with an inner size of 1 is slow
                torch.addcmul(b.unsqueeze(-1), W_ih, inp, out=XW)
            else:
                torch.baddbmm(b.unsqueeze(-1), W_ih, inp, out=XW)
            if self.kind == "lstm":  # the g rows doubled (see _Layer.forward)
                XW[:, 2 * self.hidden:3 * self.hidden].mul_(self._two)
                W_hh = torch.mul(W_hh, self._g_doubled, out=self._W_hh2[l])
            elif self.activation == "tanh":
                XW.mul_(self._two)
            layer.forward(W_hh)
            inp = layer.HS_seq
        W_o, b_o = self.params[-2:]
        torch.baddbmm(b_o.unsqueeze(-1), W_o, inp, out=self.preds.view(K, -1, T * B))
        return self.preds

    def _losses(self, y: torch.Tensor) -> torch.Tensor:
        torch.sub(self.preds, y, out=self.diff)
        sq = self.diff * self.diff
        every = sq.flatten(1).mean(1)
        if self._last is None:
            return every
        return torch.where(self._last, sq[:, :, -1].flatten(1).mean(1), every)

    def _backward(self) -> None:
        K, (T, B), g = self.K, self._shape, self.grads
        torch.mul(self.diff, self.scale, out=self.dP)
        dP = self.dP.view(K, -1, T * B)
        top = self.layers[-1]
        torch.bmm(dP, top.HS_seq.transpose(1, 2), out=g[-2])
        torch.sum(dP, dim=2, out=g[-1])
        W_o = self.params[-2]
        dHS = (torch.mul(W_o.transpose(1, 2), dP) if dP.shape[1] == 1 else torch.bmm(W_o.transpose(1, 2), dP))
        dHS = dHS.view(K, self.hidden, T, B)
        for l in range(self.num_layers - 1, -1, -1):
            layer = self.layers[l]
            W_ih, W_hh, _ = self.params[3 * l:3 * l + 3]
            layer.backward(dHS, W_hh, g[3 * l + 1])
            dXW = layer.dXW.view(K, layer.G, T * B)
            inp = self.inputs[l]
            if inp.shape[1] == 1:  # bmm with one output column goes another way for K = 1 than for K > 1
                torch.sum(dXW * inp, dim=2, keepdim=True, out=g[3 * l])
            else:
                torch.bmm(dXW, inp.transpose(1, 2), out=g[3 * l])
            torch.sum(dXW, dim=2, out=g[3 * l + 2])
            if l > 0:
                dHS = torch.bmm(W_ih.transpose(1, 2), dXW).view(K, self.hidden, T, B)

    def _norms(self) -> torch.Tensor:
        """Each copy's global gradient norm, (K,), as torch.nn.utils.clip_grad_norm_ takes it."""
        per_param = torch.stack([g.flatten(1).norm(dim=1) for g in self.grads], dim=1)  # (K, P)
        return per_param.norm(dim=1)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], dict[int, str]]:
        """One step of every copy: ``(losses, {})``; or ``([], {copy: why})`` with no step taken."""
        self.forward(x)
        losses = self._losses(y).tolist()
        bad = {k: f"loss became {v}" for k, v in enumerate(losses) if not math.isfinite(v)}
        if bad:
            return [], bad
        self._backward()
        if self.clip_grad_norm is not None:
            norms = self._norms()
            finite = torch.isfinite(norms)
            if not bool(finite.all()):
                return [], {k: f"gradient norm became {norms[k].item()}" for k in range(self.K) if not finite[k]}
            coef = torch.clamp(self.clip_grad_norm / (norms + 1e-6), max=1.0)
            for g in self.grads:
                g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
        else:
            total = torch.stack(torch._foreach_norm(self.grads)).sum()
            if not torch.isfinite(total):
                norms = self._norms()
                return [], {k: f"gradient norm became {norms[k].item()}" for k in range(self.K)
                            if not math.isfinite(norms[k].item())}
        torch._foreach_add_(self.steps, 1)
        torch._fused_adam_(self.params, self.grads, self.exp_avg, self.exp_avg_sq, [], self.steps, amsgrad=False,
                           lr=self.lr, beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.0, eps=EPS, maximize=False,
                           grad_scale=None, found_inf=None)
        return losses, {}

    def drop(self, copies) -> None:
        """Take the copies ``copies`` out; the others go on exactly as they would have."""
        keep = [k for k in range(self.K) if k not in set(copies)]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for group in (self.params, self.grads, self.exp_avg, self.exp_avg_sq):
            group[:] = [t.index_select(0, index).contiguous() for t in group]
        self.targets = [self.targets[k] for k in keep]
        self._shape = None

    # ---- copy k as the notebook's modules and torch.optim's state -------------------------------------
    def _per_param(self, stacked: list[torch.Tensor], k: int, model: nn.Module) -> list[torch.Tensor]:
        """Copy k of engine tensors laid out as ``model.parameters()``: each weight = cat([W_ih, W_hh], 1)."""
        out, i = [], 0
        for _, size in _linears(model):
            if size == 0:
                out += [stacked[i][k].clone(), stacked[i + 1][k].clone()]
                i += 2
            else:
                weight, bias = torch.cat([stacked[i][k], stacked[i + 1][k]], dim=1), stacked[i + 2][k].clone()
                out += [_swap_go(weight), _swap_go(bias)] if self.kind == "lstm" else [weight, bias]
                i += 3
        return out

    def copy_to(self, k: int, model: nn.Module) -> None:
        """Write copy k's weights into ``model`` (the same architecture)."""
        with torch.no_grad():
            for p, value in zip(model.parameters(), self._per_param(self.params, k, model)):
                p.copy_(value)

    def optimizer_state(self, k: int, model: nn.Module) -> dict:
        """Copy k's Adam state in torch.optim.Adam's format over ``model.parameters()``."""
        avg, avg_sq = self._per_param(self.exp_avg, k, model), self._per_param(self.exp_avg_sq, k, model)
        step = self.steps[0]
        state = {} if step.item() == 0 else {
            i: {"step": step.clone().cpu(), "exp_avg": m.cpu(), "exp_avg_sq": v.cpu()}
            for i, (m, v) in enumerate(zip(avg, avg_sq))}
        group = {"lr": self.lr, "betas": BETAS, "eps": EPS, "weight_decay": 0.0, "amsgrad": False,
                 "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": True,
                 "decoupled_weight_decay": False, "params": list(range(len(avg)))}
        return {"state": state, "param_groups": [group]}

    def load_optimizer_state(self, k: int, model: nn.Module, state_dict: dict) -> None:
        """Set copy k's Adam state from a torch.optim.Adam state dict over ``model.parameters()``."""
        (group,) = state_dict["param_groups"]
        n = len(list(model.parameters()))
        if len(group["params"]) != n:
            raise ValueError(f"the optimizer state is for {len(group['params'])} parameters, not {n}")
        if tuple(group["betas"]) != BETAS or group["eps"] != EPS:
            raise ValueError(f"the optimizer state has betas {group['betas']} and eps {group['eps']}, not {BETAS}, {EPS}")
        states = [state_dict["state"].get(i) for i in range(n)]
        if all(s is None for s in states):
            return
        if any(s is None for s in states) or len({float(s["step"]) for s in states}) != 1:
            raise ValueError("the optimizer state does not hold one step count for every parameter")
        with torch.no_grad():
            for name, stacked in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                i = 0
                for (_, size), pair in zip(_linears(model), _pairs([s[name] for s in states])):
                    weight, bias = (t.to(self.device) for t in pair)
                    for target, value in zip(stacked[i:], _split(weight, bias, size, self.kind == "lstm")):
                        target[k].copy_(value)
                    i += 2 if size == 0 else 3
            for s in self.steps:
                s.fill_(float(states[0]["step"]))


def _pairs(tensors: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(tensors[i], tensors[i + 1]) for i in range(0, len(tensors), 2)]


def to_engine_layout(batches: list[torch.Tensor], index: list[int]) -> torch.Tensor:
    """Per-stream (B, T, F) batches -> (K, F, T, B) for copies reading streams ``index``, contiguous per copy."""
    if len(batches) == 1:  # the common case (a training alone, or the target modes of one model): one copy op
        return batches[0].permute(2, 1, 0).unsqueeze(0).expand(len(index), -1, -1, -1).contiguous()
    stacked = torch.stack(batches).permute(0, 3, 2, 1)  # (S, F, T, B)
    if index == list(range(len(batches))):
        return stacked.contiguous()
    return stacked[torch.tensor(index, dtype=torch.long, device=stacked.device)].contiguous()

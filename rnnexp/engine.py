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
  blocks f, i, g, o: the notebook's f, i, o, g with the last two swapped): the notebook's
  ``weight = cat([W_ih, W_hh], 1)``;
  head ``W_o (K, O, H)``, ``b_o (K, O)``;
  the parameters are views of one flat buffer, as are the gradients and each of Adam's moments (``_flat``).
The layers of a stack advance together, as a wavefront (``_Stack``), so that a 2-layer model costs
not much more Python calls than a 1-layer one.
A copy's numbers do not depend on K or on the other copies (every op is per copy, or, for Adam, over copies placed
at cache-line boundaries, ``_flat``; a test checks K = 1 against K = 3 bit for bit), so a compare's sub-run
resumes alone exactly as it would have gone on.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .models import NONLINEARITIES, LSTMLayer, RNNLayer, recurrent_layers
from .train import BETAS, EPS



def _activation_name(layer: RNNLayer) -> str:
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


ALIGN = 16  # floats (float32): a 64-byte cache line; the fused Adam kernel's unit of work


def _rows(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Zeros of ``shape`` (..., K, features, B) in which each copy's (features, B) block is one row of memory with a
    gap after it. Elementwise kernels run vector instructions along a row and finish its last few elements one by
    one, with other roundings (sigmoid, fused multiply-adds); were the blocks of all copies one run of memory, a
    copy's numbers would depend on where it sits, that is on K."""
    *outer, features, B = shape
    row = features * B
    stride = (row // ALIGN + 1) * ALIGN  # > row, so that no kernel merges two copies into one row; 64-byte aligned
    return torch.zeros(*outer, stride, device=device)[..., :row].unflatten(-1, (features, B))


class _Stack:
    """Buffers of every recurrent layer, laid out so that all layers advance together, as a wavefront.

    Layer l's timestep t is computed at wave w = t + l (it needs layer l-1's h_t, made at wave w - 1, and
    its own h_{t-1}, also made at wave w - 1), so one wave runs every layer at once: its recurrent
    matmul is one bmm over (layers x copies) and each elementwise op one call for all layers. Layouts:
    (L, K, features, waves, B), so that a layer's whole sequence is one matrix per copy: HS (states), dXW
    (dLoss/d(pre-activation)), E (dLoss/dh from the head), dact (an RNN's activation derivative);
    (waves, L, K, features, B), so that a wave's slice is a few blocks of memory: XW (the pre-activations: their
    input part until the wave adds the recurrent product) and the LSTM's S4, TG, C2, TC, Q, P, dC, which are read
    only elementwise. A state buffer has one more slot than there are waves, slot w + 1 holding the state made at
    wave w and slot l layer l's zero initial state. Positions a layer never visits stay 0.
    """

    def __init__(self, kind: str, activation: str, L: int, K: int, T: int, B: int, H: int, device: torch.device):
        G = 4 * H if kind == "lstm" else H
        W = T + L - 1  # waves
        self.kind, self.activation, self.H, self.G, self.W = kind, activation, H, G, W
        z = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        self.one, self.zero = torch.ones((), device=device), torch.zeros((), device=device)
        # input part of the pre-activations, wave-major: an upper layer's slot of a wave is contiguous, so baddbmm
        # writes it as one batched product (into a strided slot torch makes one addmm per copy); the wave's
        # recurrent product is added in place, so after the forward pass XW holds the whole pre-activations
        self.XW = z(W, L, K, G, B)
        self.HS = z(L, K, H, W + 1, B)
        self.dXW = z(L, K, G, W + 1, B)  # dLoss/d(pre-activation); the last slot stays 0
        self.E = z(L, K, H, W, B)  # dLoss/dh from the head (top layer only; 0 elsewhere)
        self.dh = z(L, K, H, B)
        self.span = [(max(0, w - T + 1), min(L - 1, w)) for w in range(W)]  # layers active at wave w
        nk = lambda lo, hi: (hi - lo + 1) * K  # noqa: E731
        # per wave: views of the active layers, (layers * copies, features, B) for bmm, (layers, copies, ...) otherwise
        self.XW_w = [self.XW[w, lo:hi + 1] for w, (lo, hi) in enumerate(self.span)]
        self.XWr_w = [v.view(nk(lo, hi), G, B) for v, (lo, hi) in zip(self.XW_w, self.span)]
        self.Hin_w = [self.HS[lo:hi + 1, :, :, w].reshape(nk(lo, hi), H, B) for w, (lo, hi) in enumerate(self.span)]
        self.Hout_w = [self.HS[lo:hi + 1, :, :, w + 1] for w, (lo, hi) in enumerate(self.span)]
        self.dXW_w = [self.dXW[lo:hi + 1, :, :, w] for w, (lo, hi) in enumerate(self.span)]
        self.dXWnext_w = [self.dXW[lo:hi + 1, :, :, w + 1].reshape(nk(lo, hi), G, B) for w, (lo, hi) in enumerate(self.span)]
        self.E_w = [self.E[lo:hi + 1, :, :, w].reshape(nk(lo, hi), H, B) for w, (lo, hi) in enumerate(self.span)]
        self.dh_w = [self.dh[lo:hi + 1].reshape(nk(lo, hi), H, B) for lo, hi in self.span]
        self.dh4_w = [self.dh[lo:hi + 1] for lo, hi in self.span]
        # every layer's W_hh, layer-major, filled by the engine each step: as is (backward) and as the forward uses
        # it (an LSTM's g rows doubled)
        self.W_hh = z(L * K, G, H)
        self.W_hh_fwd = z(L * K, G, H) if kind == "lstm" else self.W_hh
        self.W_w = [self.W_hh_fwd[lo * K:(hi + 1) * K] for lo, hi in self.span]
        self.WT_w = [self.W_hh[lo * K:(hi + 1) * K].transpose(1, 2) for lo, hi in self.span]
        # upper layers: (layer, XW slot to fill, h of the layer below) per wave; (layer, dh, dXW above) per wave
        self.up_w = [[(l, self.XW[w, l], self.HS[l - 1, :, :, w]) for l in range(max(lo, 1), hi + 1)]
                     for w, (lo, hi) in enumerate(self.span)]
        self.down_w = [[(l, self.dh[l], self.dXW[l + 1, :, :, w + 1]) for l in range(lo, min(hi, L - 2) + 1)]
                       for w, (lo, hi) in enumerate(self.span)]
        # per layer: its T steps (waves l .. l+T-1) and the states they read
        self.seq = [self.HS[l, :, :, l + 1:l + T + 1].reshape(K, H, T * B) for l in range(L)]  # h_0 .. h_{T-1}
        self.below = [self.HS[l - 1, :, :, l:l + T].reshape(K, H, T * B) if l else None for l in range(L)]
        self.prev = [self.HS[l, :, :, l + 1:l + T].reshape(K, H, (T - 1) * B) for l in range(L)]  # h_0 .. h_{T-2}
        self.dXW_seq = [self.dXW[l, :, :, l:l + T].reshape(K, G, T * B) for l in range(L)]
        self.dXW_after = [self.dXW[l, :, :, l + 1:l + T].reshape(K, G, (T - 1) * B) for l in range(L)]
        if kind == "rnn":
            self.dact = z(L, K, H, W, B)
            self.dact_w = [self.dact[lo:hi + 1, :, :, w] for w, (lo, hi) in enumerate(self.span)]
            self.HS_after = self.HS[:, :, :, 1:]  # the states the waves make
            return
        # LSTM gate blocks are kept in the order f, i, g, o (the notebook's is f, i, o, g), so that the three
        # blocks dc flows into are adjacent; the cell state is kept as 2c, whose sigmoid gives tanh(c).
        # These buffers are read only elementwise, so they are wave-major, (waves, L, K, features, B): a wave's
        # slice is a few blocks of memory, not K * features strided rows (those cost cache and TLB misses at K of 16).
        rows = lambda *shape: _rows(shape, device)  # noqa: E731
        self.S4 = rows(W + 1, L, K, G, B)  # sigmoid of every gate pre-activation, the g block's doubled; last slot 0
        self.TG = rows(W, L, K, H, B)  # g = tanh(pre_g)
        self.C2 = rows(W + 1, L, K, H, B)  # 2 c, slots as HS
        self.TC = rows(W, L, K, H, B)  # tanh(c)
        self.Q = rows(W, L, K, H, B)  # dc += dh * Q
        self.P = rows(W, L, K, G, B)  # dpre = [dc, dc, dc, dh] * P
        self.dC = rows(W + 1, L, K, H, B)  # dLoss/dc; the last slot stays 0
        # backward's temporaries (megabytes at K = 16), made once rather than at every step
        self.dS = z(W, L, K, G, B)
        self.d1 = self.dS[..., 2 * H:3 * H, :]  # 1 - tanh^2, twice: in dS's g block, which nothing else uses
        waves = lambda buf, shift=0: [buf[w + shift, lo:hi + 1] for w, (lo, hi) in enumerate(self.span)]  # noqa: E731
        self.S4_w, self.TG_w, self.TC_w, self.Q_w = waves(self.S4), waves(self.TG), waves(self.TC), waves(self.Q)
        self.Cin_w, self.Cout_w = waves(self.C2), waves(self.C2, 1)
        self.dC_w, self.dCnext_w = waves(self.dC), waves(self.dC, 1)
        self.f_w, self.i_w, self.g_w, self.o_w = ([v[:, :, a * H:(a + 1) * H] for v in self.S4_w] for a in range(4))
        self.fnext_w = [v[:, :, :H] for v in waves(self.S4, 1)]
        self.P3_w = [v[:, :, :3 * H].unflatten(2, (3, H)) for v in waves(self.P)]
        self.Po_w = [v[:, :, 3 * H:] for v in waves(self.P)]
        self.dXW3_w = [self.dXW[lo:hi + 1, :, :3 * H, w].unflatten(2, (3, H)) for w, (lo, hi) in enumerate(self.span)]
        self.dXWo_w = [self.dXW[lo:hi + 1, :, 3 * H:, w] for w, (lo, hi) in enumerate(self.span)]
        self.dC3_w = [v.unsqueeze(2) for v in self.dC_w]
        # backward's gate derivatives over every wave at once: sigmoid values and derivatives, the P blocks
        S4, dS, P = self.S4[:W], self.dS, self.P
        f, i, g, o = (slice(a * H, (a + 1) * H) for a in range(4))
        self.prep = (S4, self.C2[:W], dS, dS[..., f, :], dS[..., i, :], dS[..., o, :], S4[..., i, :], S4[..., o, :],
                     P[..., f, :], P[..., i, :], P[..., g, :], P[..., o, :])

    def forward(self, W_ih: list, b: list) -> None:
        """The recurrence, wave by wave, from layer 0's input part in XW and ``W_hh_fwd`` as filled by the
        engine; layers l >= 1 take their input part from ``W_ih[l]``, ``b[l]`` ((K, G, H), (K, G, 1)) as soon as
        the layer below has it (``W_ih[0]``, ``b[0]`` are not read).

        tanh is computed as 2 sigmoid(2x) - 1 (torch's CPU tanh is several times slower than its sigmoid; the
        two differ by float rounding, ~1e-7), so the pre-activations it takes come doubled, which is exact in
        floating point: the caller doubles a tanh RNN's W_ih and b, and an LSTM's g rows of W_ih, b and
        W_hh_fwd; a tanh RNN's W_hh part is doubled here (alpha = 2).
        2 s - 1 is ``lerp(s, 1, -1)``: an addcmul with a 0-dim multiplier takes torch's slow broadcasting loop.
        """
        tanh_rnn = self.kind == "rnn" and self.activation == "tanh"
        alpha = 2 if tanh_rnn else 1
        for w in range(self.W):
            for l, xw, below in self.up_w[w]:  # the input part of upper layers: h_{l-1} from wave w - 1
                torch.baddbmm(b[l], W_ih[l], below, out=xw)
            if w == 0:  # layer 0's first step: h_{-1} = 0
                pre = self.XW_w[0]
            else:
                self.XWr_w[w].baddbmm_(self.W_w[w], self.Hin_w[w], alpha=alpha)  # in place: no copy of XW first
                pre = self.XW_w[w]
            if self.kind == "rnn":
                h = self.Hout_w[w]
                if tanh_rnn:
                    torch.sigmoid(pre, out=h)
                    torch.lerp(h, self.one, -1.0, out=h)  # 2 s - 1
                elif self.activation == "relu":
                    torch.clamp_min(pre, 0, out=h)  # torch.relu has no out=; same values
                else:
                    h.copy_(pre)
                continue
            torch.sigmoid(pre, out=self.S4_w[w])
            torch.lerp(self.g_w[w], self.one, -1.0, out=self.TG_w[w])  # g = 2 s - 1
            c = self.Cout_w[w]
            torch.mul(self.f_w[w], self.Cin_w[w], out=c)  # c_{-1} = 0
            c.addcmul_(self.i_w[w], self.TG_w[w], value=2)
            tc = self.TC_w[w]
            torch.sigmoid(c, out=tc)
            torch.lerp(tc, self.one, -1.0, out=tc)  # tanh(c)
            torch.mul(tc, self.o_w[w], out=self.Hout_w[w])

    def backward(self, W_ihT: list) -> None:
        """From ``E`` (dLoss/dh from the head) back through every wave: fills dXW. ``W_ihT[l]`` (K, H, G) is
        layer l's input weight transposed."""
        H, W = self.H, self.W
        if self.kind == "rnn":
            hs = self.HS_after
            if self.activation == "tanh":
                torch.addcmul(self.one, hs, hs, value=-1, out=self.dact)  # 1 - h^2
            elif self.activation == "relu":
                torch.gt(hs, 0, out=self.dact)  # 1.0 where h > 0 (relu's gradient at 0 is 0, as torch's)
            else:
                self.dact.fill_(1)
        else:
            one, d1 = self.one, self.d1
            S4, C2, dS, dS_f, dS_i, dS_o, S4_i, S4_o, P_f, P_i, P_g, P_o = self.prep
            torch.addcmul(S4, S4, S4, value=-1, out=dS)  # sigmoid' = s - s^2 (the g block's is not used)
            torch.addcmul(self.zero, C2, dS_f, value=0.5, out=P_f)  # f: c_{t-1} f'
            torch.mul(self.TG, dS_i, out=P_i)  # i: g i'
            torch.mul(S4_i, torch.addcmul(one, self.TG, self.TG, value=-1, out=d1), out=P_g)  # g: i g'
            torch.mul(self.TC, dS_o, out=P_o)  # o: tanh(c) o'
            torch.mul(S4_o, torch.addcmul(one, self.TC, self.TC, value=-1, out=d1), out=self.Q)  # o tanh'(c)
        for w in range(W - 1, -1, -1):
            # dh_t: from the head (top layer), from the same layer's step t+1, from the layer above's step t
            if w == W - 1:  # the top layer's last step: nothing comes from later steps
                self.dh_w[w].copy_(self.E_w[w])
            else:
                torch.baddbmm(self.E_w[w], self.WT_w[w], self.dXWnext_w[w], out=self.dh_w[w])
            for l, dh_l, above in self.down_w[w]:
                dh_l.baddbmm_(W_ihT[l + 1], above)
            dh = self.dh4_w[w]
            if self.kind == "rnn":
                torch.mul(dh, self.dact_w[w], out=self.dXW_w[w])
                continue
            dc = self.dC_w[w]
            torch.mul(self.fnext_w[w], self.dCnext_w[w], out=dc)
            dc.addcmul_(dh, self.Q_w[w])
            torch.mul(self.dC3_w[w], self.P3_w[w], out=self.dXW3_w[w])
            torch.mul(dh, self.Po_w[w], out=self.dXWo_w[w])


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
            others = recurrent_layers(model)
            if [type(m) for m in others] != [type(m) for m in layers] or any(
                    (m.input_size, m.hidden_size) != (n.input_size, n.hidden_size) for m, n in zip(others, layers)) or (
                    self.kind == "rnn" and {_activation_name(m) for m in others} != {self.activation}):
                raise ValueError("the engine trains copies of one architecture only")
        unknown = sorted(set(targets) - {"all", "last"})
        if unknown:
            raise ValueError(f"unknown target {unknown[0]!r}; known: all, last")
        self.hidden, self.input_size = layers[0].hidden_size, layers[0].input_size
        self.output_dim = first.final_w.out_features
        self.num_layers = len(layers)
        self.device = first.final_w.weight.device
        self.lr, self.clip_grad_norm = lr, clip_grad_norm
        self.targets = list(targets)
        lstm = self.kind == "lstm"
        per_model = [[p.detach() for lin, size in _linears(m) for p in _split(lin.weight, lin.bias, size, lstm)]
                     for m in models]
        stacked = [torch.stack(group) for group in zip(*per_model)]
        if stacked[0].dtype != torch.float32:
            raise ValueError(f"the engine trains float32 models, not {stacked[0].dtype}")
        self._flat = [_flat(len(models), [p.shape[1:] for p in stacked], self.device) for _ in range(4)]
        self._unflat()
        for p, value in zip(self.params, stacked):
            p.copy_(value)
        self.step_count = torch.zeros((), device=self.device)  # Adam's, shared by every copy
        self._shape: tuple[int, int] | None = None  # (T, B) the buffers are made for
        self._two = torch.full((), 2.0, device=self.device)

    @property
    def K(self) -> int:
        return self.params[0].shape[0]

    def _unflat(self) -> None:
        """``params``, ``grads``, ``exp_avg``, ``exp_avg_sq``: each a list of (K, ...) views of its flat buffer."""
        self.params, self.grads, self.exp_avg, self.exp_avg_sq = (views for _, views in self._flat)

    # ---- the step -------------------------------------------------------------------------------------
    def _buffers(self, T: int, B: int) -> None:
        if self._shape == (T, B):
            return
        K, O, dev = self.K, self.output_dim, self.device
        self._shape = (T, B)
        L, H = self.num_layers, self.hidden
        self.stack = _Stack(self.kind, self.activation, L, K, T, B, H, dev)
        G = self.stack.G
        if self.kind == "lstm":  # the g rows doubled (see _Stack.forward)
            self._g_doubled = torch.ones(G, 1, device=dev)
            self._g_doubled[2 * H:3 * H] = 2.0
        self._E_top = self.stack.E[L - 1, :, :, L - 1:L - 1 + T].reshape(K, H, T * B)
        self._XW0 = self.stack.XW[:T, 0]  # layer 0's T steps, (T, K, G, B)
        if self.input_size == 1:  # see forward and _backward
            self._b_rows, self._W_rows = (torch.zeros(K, G, B, device=dev) for _ in range(2))
            # layer 0's dXW * x, summed into dW_ih, in memory the backward pass is done with by then
            done = self.stack.dS if self.kind == "lstm" else self.stack.dact
            self._dXWx = done.view(-1)[:K * G * T * B].view(K, G, T * B)
        # bmm's outputs: the gradient itself, or a contiguous buffer where its copies have gaps between them
        products = [len(self.grads) - 2] + [3 * l + 1 for l in range(L)] + [3 * l for l in range(L)
                                                                             if l > 0 or self.input_size > 1]
        self._grad_out = {i: g if g.is_contiguous() else torch.zeros(g.shape, device=dev)
                          for i, g in enumerate(self.grads) if i in products}
        assert self._E_top._base is not None  # a view, written in place
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
        # views a step reads, made once (each is a torch call, a few us at these sizes)
        P, st = self.params, self.stack
        self._b = [P[3 * l + 2].unsqueeze(-1) for l in range(L)]
        self._W_ihT = [None] + [P[3 * l].transpose(1, 2) for l in range(1, L)]
        self._W_oT, self._b_o = P[-2].transpose(1, 2), P[-1].unsqueeze(-1)
        self._preds, self._dP = self.preds.view(K, -1, T * B), self.dP.view(K, -1, T * B)
        self._seqT = [h.transpose(1, 2) for h in st.seq]
        self._prevT = [h.transpose(1, 2) for h in st.prev]
        self._belowT = [None] + [h.transpose(1, 2) for h in st.below[1:]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (K, I, T, B) -> predictions (K, O, T, B), keeping what backward needs."""
        K, _, T, B = x.shape
        self._buffers(T, B)
        st, L = self.stack, self.num_layers
        torch.cat([self.params[3 * l + 1] for l in range(L)], out=st.W_hh)
        W_ih, b = [self.params[3 * l] for l in range(L)], self._b
        if self.kind == "lstm":  # 2 pre_g, exactly, from doubled g rows
            torch.mul(st.W_hh, self._g_doubled, out=st.W_hh_fwd)
            doubled = torch._foreach_mul(W_ih + b, [self._g_doubled] * (2 * L))
            W_ih, b = doubled[:L], doubled[L:]
        elif self.activation == "tanh":  # 2 pre, exactly (W_hh's part: in _Stack.forward)
            doubled = torch._foreach_mul(W_ih + b, self._two)
            W_ih, b = doubled[:L], doubled[L:]
        self.x_in = inp = x.reshape(K, x.shape[1], T * B)
        if inp.shape[1] == 1:  # an outer product, straight into (T, K, G, B): bmm with an inner size of 1 is slow
            # W and b spread over B first: with two operands broadcast along the innermost dimension torch's
            # elementwise loop is not vectorised (4x slower); the values (one fused multiply-add each) are the same
            self._b_rows.copy_(b[0])
            self._W_rows.copy_(W_ih[0])
            torch.addcmul(self._b_rows, self._W_rows, x.permute(2, 0, 1, 3), out=self._XW0)
        else:
            self._XW0.copy_(torch.baddbmm(b[0], W_ih[0], inp).view(K, -1, T, B).permute(2, 0, 1, 3))  # -> (T, K, G, B)
        st.forward(W_ih, b)
        torch.baddbmm(self._b_o, self.params[-2], st.seq[-1], out=self._preds)
        return self.preds

    def _losses(self, y: torch.Tensor) -> torch.Tensor:
        torch.sub(self.preds, y, out=self.diff)
        sq = self.diff * self.diff
        every = sq.flatten(1).mean(1)
        if self._last is None:
            return every
        return torch.where(self._last, sq[:, :, -1].flatten(1).mean(1), every)

    def _backward(self) -> None:
        g, st, L = self.grads, self.stack, self.num_layers
        torch.mul(self.diff, self.scale, out=self.dP)
        dP = self._dP
        self._bmm_grad(len(g) - 2, dP, self._seqT[-1])
        torch.sum(dP, dim=2, out=g[-1])
        if dP.shape[1] == 1:  # O == 1: an outer product
            torch.mul(self._W_oT, dP, out=self._E_top)
        else:
            torch.bmm(self._W_oT, dP, out=self._E_top)
        st.backward(self._W_ihT)
        for l in range(L):
            dXW = st.dXW_seq[l]
            self._bmm_grad(3 * l + 1, st.dXW_after[l], self._prevT[l])
            if l > 0:
                self._bmm_grad(3 * l, dXW, self._belowT[l])
            elif self.x_in.shape[1] == 1:  # bmm with one output column goes another way for K = 1 than for K > 1
                torch.sum(torch.mul(dXW, self.x_in, out=self._dXWx), dim=2, keepdim=True, out=g[0])
            else:
                self._bmm_grad(0, dXW, self.x_in.transpose(1, 2))
            torch.sum(dXW, dim=2, out=g[3 * l + 2])

    def _bmm_grad(self, i: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """grads[i] = a @ b, copy by copy; through a contiguous buffer where the copies of grads[i] have gaps between
        them (torch's bmm into such a tensor takes a path several times slower)."""
        out = self._grad_out[i]
        torch.bmm(a, b, out=out)
        if out is not self.grads[i]:
            self.grads[i].copy_(out)

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
        self.step_count.add_(1)
        torch._fused_adam_(*([flat] for flat, _ in self._flat), [], [self.step_count], amsgrad=False,
                           lr=self.lr, beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.0, eps=EPS, maximize=False,
                           grad_scale=None, found_inf=None)
        return losses, {}

    def drop(self, copies) -> None:
        """Take the copies ``copies`` out; the others go on exactly as they would have."""
        keep = [k for k in range(self.K) if k not in set(copies)]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        old = self._flat
        self._flat = [_flat(len(keep), [t.shape[1:] for t in views], self.device) for _, views in old]
        for (_, views), (_, kept) in zip(old, self._flat):
            for view, new in zip(views, kept):
                new.copy_(view.index_select(0, index))
        self._unflat()
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
        step = self.step_count
        state = {} if step.item() == 0 else {
            i: {"step": step.clone().cpu(), "exp_avg": m.cpu(), "exp_avg_sq": v.cpu()}
            for i, (m, v) in enumerate(zip(avg, avg_sq))}
        group = {"lr": self.lr, "betas": BETAS, "eps": EPS, "weight_decay": 0.0, "amsgrad": False,
                 "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": True,
                 "decoupled_weight_decay": False, "params": list(range(len(avg)))}
        return {"state": state, "param_groups": [group]}

    def load_optimizer_state(self, k: int, model: nn.Module, state_dict: dict) -> None:
        """Set copy k's Adam state from a torch.optim.Adam state dict over ``model.parameters()``; the engine must
        hold that one copy only (its copies share their step count)."""
        if self.K != 1:
            raise ValueError(f"an optimizer state is loaded into a one-copy engine, not one of {self.K}")
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
            self.step_count.fill_(float(states[0]["step"]))


def _flat(K: int, shapes: list[torch.Size], device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One zeroed buffer for a group of K copies' tensors (parameters, gradients or an Adam moment), and its views
    shaped (K, *shape) for each of ``shapes``: tensor by tensor, and within a tensor copy by copy.

    Adam runs over the whole buffer in one call. Its fused kernel takes a tensor in chunks of whole cache lines
    and each chunk in vector registers but for the last few elements, which it takes one by one with other
    roundings; every copy of every tensor starts at, and spans, a multiple of ALIGN floats (the gaps stay 0), so
    no element is one of those and a copy's numbers do not depend on where it sits (or on K). A tensor whose size
    is a multiple of ALIGN (most of them at the notebook's sizes) is a contiguous view, as bmm needs to be fast."""
    sizes = [-(-math.prod(shape) // ALIGN) * ALIGN for shape in shapes]
    flat = torch.zeros(K * sum(sizes), device=device)
    views, offset = [], 0
    for shape, size in zip(shapes, sizes):
        strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
        views.append(flat.as_strided((K, *shape), (size, *strides), offset))
        offset += K * size
    return flat, views


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

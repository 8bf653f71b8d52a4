"""Recurrent layers, stacks, the regression head and the model registry.

The parameter layout is the notebook's: a layer owns one ``nn.Linear`` applied to
``cat([x_t, h_{t-1}])``. The forward pass does not have to run that way, though:
when nobody asks for per-timestep hidden states, the layers hand the same weights,
sliced and reordered, to torch's fused RNN/LSTM kernels, which is several times
faster on small matrices and gives the same numbers within float rounding.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


NONLINEARITIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "identity": _identity,
}
# torch's fused RNN kernels exist for these two only.
_FUSED_RNN = {torch.tanh: torch._VF.rnn_tanh, F.relu: torch._VF.rnn_relu, torch.relu: torch._VF.rnn_relu}
# Our LSTM blocks are (f, i, o, g); torch's are (i, f, g, o).
_TORCH_GATE_ORDER = (1, 0, 3, 2)


def _resolve_nonlinearity(nonlinearity: str | Callable) -> Callable:
    if isinstance(nonlinearity, str):
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; known: {', '.join(NONLINEARITIES)}")
        return NONLINEARITIES[nonlinearity]
    return nonlinearity


class RNNLayer(nn.Module):
    """One Elman layer: h_t = nonlinearity(W [x_t, h_{t-1}] + b), h_0 = 0."""

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str | Callable = torch.tanh):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.nonlinearity = _resolve_nonlinearity(nonlinearity)
        self.mixed_w = nn.Linear(input_size + hidden_size, hidden_size)
        # When True, forward runs step by step and keeps every h_t (in the graph) in
        # self.h_list, so that dLoss/dh_t can be taken; the fused kernels hide them.
        self.track_hidden = False
        self.h_list: list[torch.Tensor] = []

    @property
    def w_hh(self) -> torch.Tensor:
        """The recurrent (hidden-to-hidden) block of the weight, (hidden_size, hidden_size)."""
        return self.mixed_w.weight[:, self.input_size:]

    def torch_weights(self) -> list[torch.Tensor]:
        """This layer's parameters as torch's ``[w_ih, w_hh, b_ih, b_hh]`` (views, differentiable)."""
        w, b = self.mixed_w.weight, self.mixed_w.bias
        return [w[:, : self.input_size], w[:, self.input_size:], b, torch.zeros_like(b)]

    def fusable(self) -> bool:
        return not self.track_hidden and self.nonlinearity in _FUSED_RNN

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(all_h (B, T, H), last_h (B, H))``."""
        if self.fusable():
            all_h, h_n = _fused_rnn(_FUSED_RNN[self.nonlinearity], x, [self])
            return all_h, h_n[0]
        w = self.mixed_w.weight
        # The input projection does not depend on h, so it is done for all steps at once.
        xw = F.linear(x, w[:, : self.input_size], self.mixed_w.bias)  # (B, T, H)
        w_hh = w[:, self.input_size:]  # (H, H)
        h = x.new_zeros(x.shape[0], self.hidden_size)  # (B, H)
        h_list = []
        # unbind, not xw[:, t]: under autograd each slice's backward would be a zero tensor of all T steps
        for xw_t in xw.unbind(1):
            h = self.nonlinearity(xw_t + F.linear(h, w_hh))  # (B, H)
            h_list.append(h)
        self.h_list = h_list if self.track_hidden else []
        return torch.stack(h_list, dim=1), h


class LSTMLayer(nn.Module):
    """One LSTM layer; the linear map's output blocks are the (f, i, o, g) gates in that order."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.w = nn.Linear(input_size + hidden_size, 4 * hidden_size)
        self.track_hidden = False
        self.h_list: list[torch.Tensor] = []
        self.c_list: list[torch.Tensor] = []

    def torch_weights(self) -> list[torch.Tensor]:
        """This layer's parameters as torch's ``[w_ih, w_hh, b_ih, b_hh]``, gates reordered to (i, f, g, o)."""
        hs = self.hidden_size
        w = torch.cat([self.w.weight[k * hs:(k + 1) * hs] for k in _TORCH_GATE_ORDER])  # (4H, I+H)
        b = torch.cat([self.w.bias[k * hs:(k + 1) * hs] for k in _TORCH_GATE_ORDER])  # (4H,)
        return [w[:, : self.input_size], w[:, self.input_size:], b, torch.zeros_like(b)]

    def fusable(self) -> bool:
        return not self.track_hidden

    def forward(self, x: torch.Tensor, hc0: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Returns ``(all_h (B, T, H), (h_last (B, H), c_last (B, H)))``."""
        if self.fusable():
            hc = None if hc0 is None else (hc0[0].unsqueeze(0), hc0[1].unsqueeze(0))
            all_h, (h_n, c_n) = _fused_lstm(x, [self], hc)
            return all_h, (h_n[0], c_n[0])
        hs = self.hidden_size
        w = self.w.weight
        xw = F.linear(x, w[:, : self.input_size], self.w.bias)  # (B, T, 4H)
        w_hh = w[:, self.input_size:]  # (4H, H)
        if hc0 is None:
            h = x.new_zeros(x.shape[0], hs)  # (B, H)
            c = x.new_zeros(x.shape[0], hs)  # (B, H)
        else:
            h, c = hc0
        h_list, c_list = [], []
        for xw_t in xw.unbind(1):  # as in RNNLayer.forward
            gates = xw_t + F.linear(h, w_hh)  # (B, 4H)
            f, i, o = torch.sigmoid(gates[:, : 3 * hs]).chunk(3, dim=1)  # (B, H) each
            g = torch.tanh(gates[:, 3 * hs:])  # (B, H)
            c = f * c + i * g
            h = torch.tanh(c) * o
            h_list.append(h)
            c_list.append(c)
        self.h_list, self.c_list = (h_list, c_list) if self.track_hidden else ([], [])
        return torch.stack(h_list, dim=1), (h, c)


def _fused_rnn(kernel, x: torch.Tensor, layers: list[RNNLayer]):
    params = [p for layer in layers for p in layer.torch_weights()]
    h0 = x.new_zeros(len(layers), x.shape[0], layers[0].hidden_size)  # (L, B, H)
    return kernel(x, h0, params, True, len(layers), 0.0, False, False, True)


def _fused_lstm(x: torch.Tensor, layers: list[LSTMLayer], hc0=None):
    params = [p for layer in layers for p in layer.torch_weights()]
    if hc0 is None:
        h0 = x.new_zeros(len(layers), x.shape[0], layers[0].hidden_size)  # (L, B, H)
        hc0 = (h0, h0)
    all_h, h_n, c_n = torch._VF.lstm(x, hc0, params, True, len(layers), 0.0, False, False, True)
    return all_h, (h_n, c_n)


class RNN(nn.Module):
    """A stack of RNNLayers, each feeding its all_h to the next."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int,
                 nonlinearity: str | Callable = torch.tanh):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            RNNLayer(input_size if k == 0 else hidden_size, hidden_size, nonlinearity) for k in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(last_layer_h (B, T, H), last_step_h (num_layers, B, H))``."""
        if all(layer.fusable() for layer in self.layers):
            return _fused_rnn(_FUSED_RNN[self.layers[0].nonlinearity], x, list(self.layers))
        last = []
        for layer in self.layers:
            x, h = layer(x)
            last.append(h)
        return x, torch.stack(last)


class LSTM(nn.Module):
    """A stack of LSTMLayers, each feeding its all_h to the next."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            LSTMLayer(input_size if k == 0 else hidden_size, hidden_size) for k in range(num_layers)
        )

    def forward(self, x: torch.Tensor, hc0: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Returns ``(last_layer_h (B, T, H), (h (L, B, H), c (L, B, H)))``; hc0 is optional ``(h0, c0)``, each (L, B, H)."""
        if all(layer.fusable() for layer in self.layers):
            return _fused_lstm(x, list(self.layers), hc0)
        hs, cs = [], []
        for k, layer in enumerate(self.layers):
            x, (h, c) = layer(x, None if hc0 is None else (hc0[0][k], hc0[1][k]))
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


class RecurrentRegressionModel(nn.Module):
    """A recurrent net with a linear head on every timestep's hidden state."""

    def __init__(self, recurrent_net: nn.Module, output_dim: int = 1):
        super().__init__()
        self.recurrent_net = recurrent_net
        self.output_dim = output_dim
        self.final_w = nn.Linear(recurrent_net.hidden_size, output_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(preds (B, T, output_dim), all_h (B, T, H))``."""
        all_h, _ = self.recurrent_net(x)
        return self.final_w(all_h), all_h


def recurrent_layers(model: nn.Module) -> list[RNNLayer | LSTMLayer]:
    """The model's recurrent layers, bottom first."""
    return [m for m in model.modules() if isinstance(m, (RNNLayer, LSTMLayer))]


def set_track_hidden(model: nn.Module, on: bool) -> None:
    """Make every recurrent layer keep (or stop keeping) its per-timestep states for gradient analysis."""
    for layer in recurrent_layers(model):
        layer.track_hidden = on


# ---- torch's nn.RNN / nn.LSTM <-> ours ------------------------------------------------

def torch_state_dict(net: RNN | LSTM) -> dict[str, torch.Tensor]:
    """Our stack's weights as a state dict for ``nn.RNN``/``nn.LSTM(batch_first=True)``."""
    state = {}
    for k, layer in enumerate(net.layers):
        w_ih, w_hh, b_ih, b_hh = (p.detach().clone() for p in layer.torch_weights())
        state.update({f"weight_ih_l{k}": w_ih, f"weight_hh_l{k}": w_hh, f"bias_ih_l{k}": b_ih, f"bias_hh_l{k}": b_hh})
    return state


def load_torch_state_dict(net: RNN | LSTM, state: dict[str, torch.Tensor]) -> None:
    """Load ``nn.RNN``/``nn.LSTM`` weights into our stack; torch's two biases are summed into one."""
    with torch.no_grad():
        for k, layer in enumerate(net.layers):
            w = torch.cat([state[f"weight_ih_l{k}"], state[f"weight_hh_l{k}"]], dim=1)
            b = state[f"bias_ih_l{k}"] + state[f"bias_hh_l{k}"]
            if isinstance(layer, LSTMLayer):
                hs = layer.hidden_size
                # torch's (i, f, g, o) back to our (f, i, o, g); the permutation is its own inverse.
                w = torch.cat([w[j * hs:(j + 1) * hs] for j in _TORCH_GATE_ORDER])
                b = torch.cat([b[j * hs:(j + 1) * hs] for j in _TORCH_GATE_ORDER])
                linear = layer.w
            else:
                linear = layer.mixed_w
            linear.weight.copy_(w)
            linear.bias.copy_(b)


# ---- registry -------------------------------------------------------------------------

def _build_rnn(input_size: int, hidden_size: int, num_layers: int, nonlinearity: str) -> nn.Module:
    return RNN(input_size, hidden_size, num_layers, nonlinearity=nonlinearity)


def _build_lstm(input_size: int, hidden_size: int, num_layers: int, nonlinearity: str) -> nn.Module:
    # An LSTM's nonlinearities are fixed by its gates; the setting does not apply.
    return LSTM(input_size, hidden_size, num_layers)


MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "rnn": _build_rnn,
    "lstm": _build_lstm,
}


def build_model(type: str, input_size: int = 1, hidden_size: int = 32, num_layers: int = 1,
                nonlinearity: str = "tanh", output_dim: int = 1) -> RecurrentRegressionModel:
    """The regression model for a registry name; raises ValueError listing the known names."""
    if type not in MODEL_REGISTRY:
        raise ValueError(f"unknown model type {type!r}; known: {', '.join(MODEL_REGISTRY)}")
    net = MODEL_REGISTRY[type](input_size, hidden_size, num_layers, nonlinearity)
    return RecurrentRegressionModel(net, output_dim)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

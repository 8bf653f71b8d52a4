"""The baseline: the course notebook's training code as the notebook writes it (not rnnexp's).

Per timestep a ``cat([x_t, h])`` and one ``nn.Linear``, every hidden state kept with
``retain_grad`` (the notebook's ``store_h_for_grad``), ``nn.Sigmoid()`` modules built in the
loop, the global RNG for data, ``optim.Adam`` with its defaults. Its prints are left out.
``python benchmarks/notebook_port.py`` runs the notebook's whole experiment (``train_all`` for
both target modes: 4 models x 5000 batches x 2) the way the notebook runs it: one process,
one model after another.
"""
from __future__ import annotations

import sys
import time

import torch
from torch import nn, optim


class NotebookRNNLayer(nn.Module):
    def __init__(self, input_size, hidden_size, nonlinearity=torch.tanh):
        super().__init__()
        self.input_size, self.hidden_size, self.nonlinearity = input_size, hidden_size, nonlinearity
        self.mixed_w = nn.Linear(input_size + hidden_size, hidden_size, bias=True)

    def forward(self, x):
        batch_size, seq_len = x.shape[:2]
        h_i = torch.zeros((batch_size, self.hidden_size)).float()
        h_list = []
        for i in range(seq_len):
            h_i = self.nonlinearity(self.mixed_w(torch.cat([x[:, i], h_i], dim=1)))
            h_list.append(h_i)
        for h in h_list:
            h.retain_grad()
        self.h_list = h_list
        return torch.stack(h_list, dim=1), h_i


class NotebookLSTMLayer(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.w = nn.Linear(input_size + hidden_size, 4 * hidden_size)

    def forward(self, x):
        batch_size, seq_len = x.shape[:2]
        hs = self.hidden_size
        h_i = torch.zeros((batch_size, hs)).float()
        c_i = torch.zeros((batch_size, hs)).float()
        h_list = []
        for i in range(seq_len):
            outputs = self.w(torch.cat([x[:, i], h_i], dim=1))
            f_t = nn.Sigmoid()(outputs[:, :hs])
            i_t = nn.Sigmoid()(outputs[:, hs:2 * hs])
            o_t = nn.Sigmoid()(outputs[:, 2 * hs:3 * hs])
            c_hat = torch.tanh(outputs[:, 3 * hs:4 * hs])
            c_i = f_t * c_i + i_t * c_hat
            h_i = torch.tanh(c_i) * o_t
            h_list.append(h_i)
        for h in h_list:
            h.retain_grad()
        self.h_list = h_list
        return torch.stack(h_list, dim=1), (h_i, c_i)


class NotebookStack(nn.Module):
    def __init__(self, layer, input_size, hidden_size, num_layers):
        super().__init__()
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList(layer(input_size if k == 0 else hidden_size, hidden_size)
                                    for k in range(num_layers))

    def forward(self, x):
        last = []
        for layer in self.layers:
            x, h = layer(x)
            last.append(h)
        return x, last


class NotebookModel(nn.Module):
    def __init__(self, recurrent_net, output_dim=1):
        super().__init__()
        self.recurrent_net = recurrent_net
        self.final_w = nn.Linear(recurrent_net.hidden_size, output_dim)

    def forward(self, x):
        all_h, _ = self.recurrent_net(x)
        return self.final_w(all_h), all_h


def build(kind: str, num_layers: int, hidden_size: int = 32) -> NotebookModel:
    layer = NotebookRNNLayer if kind == "rnn" else NotebookLSTMLayer
    return NotebookModel(NotebookStack(layer, 1, hidden_size, num_layers))


def generate_batch(seq_len=10, batch_size=1):
    data = torch.randn(size=(batch_size, seq_len, 1))
    target = torch.cumsum(data, dim=1) / (torch.arange(seq_len) + 1).unsqueeze(0).unsqueeze(2)
    return data, target


def loss_fn(pred, y, last_timestep_only=False):
    if last_timestep_only:
        pred, y = pred[:, -1], y[:, -1]
    return nn.MSELoss()(pred, y)


def make_step(model: NotebookModel, last_timestep_only: bool, lr: float = 1e-4, seq_len: int = 10,
              batch_size: int = 32):
    """One notebook training step as a function (the body of the notebook's ``train`` loop)."""
    optimizer = optim.Adam(model.parameters(), lr=lr)
    losses = []

    def step() -> float:
        data, labels = generate_batch(seq_len=seq_len, batch_size=batch_size)
        pred, _ = model(data)
        loss = loss_fn(pred, labels, last_timestep_only)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return losses[-1]

    return step


NOTEBOOK_MODELS = [("rnn", 1), ("lstm", 1), ("rnn", 2), ("lstm", 2)]


def run_experiment(num_batches: int = 5000) -> float:
    """The notebook's ``train_all`` in both target modes, one model after another; returns the wall seconds."""
    torch.manual_seed(0)
    start = time.perf_counter()
    for last_timestep_only in (False, True):
        for kind, num_layers in NOTEBOOK_MODELS:
            step = make_step(build(kind, num_layers), last_timestep_only)
            for _ in range(num_batches):
                step()
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"{run_experiment(int(sys.argv[1]) if len(sys.argv) > 1 else 5000):.3f}")

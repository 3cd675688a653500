"""The functional API (kernels and reference) against torch.nn.RNN / LSTM / GRU on the same weights.

Outputs, final states and every gradient (dx, dh0, dc0, each weight and bias) are compared, with
`lengths` against PyTorch's packed sequences (enforce_sorted=False). torch is imported at module
level on purpose: a missing torch is a failure, not a skip.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkern
import rnnkern.reference

BACKENDS = [pytest.param(rnnkern, id="kernels"), pytest.param(rnnkern.reference, id="reference")]
CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
# float64: both sides compute the same sums in a different order; float32: accumulated rounding.
TOL: dict[Any, dict[str, Any]] = {np.float64: {"rtol": 1e-9, "atol": 1e-11},
                                  np.float32: {"rtol": 2e-4, "atol": 2e-5}}
T, B, I, H = 5, 4, 3, 6
LENGTHS = np.array([3, 5, 1, 4])  # unsorted, includes 1 and T


def torch_module(cell: str, input_size: int, hidden_size: int, dtype: Any, seed: int = 0,
                 **kwargs: Any) -> torch.nn.RNNBase:
    """A torch.nn.RNN/LSTM/GRU for `cell` ("rnn_tanh", "rnn_relu", "lstm", "gru")."""
    torch.manual_seed(seed)
    tdtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    if cell.startswith("rnn"):
        return torch.nn.RNN(input_size, hidden_size, nonlinearity=cell[4:], dtype=tdtype, **kwargs)
    cls: Any = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    module: torch.nn.RNNBase = cls(input_size, hidden_size, dtype=tdtype, **kwargs)
    return module


def torch_run(module: torch.nn.RNNBase, x: np.ndarray, state: Sequence[np.ndarray],
              lengths: np.ndarray | None, gy: np.ndarray, gstate: Sequence[np.ndarray]
              ) -> dict[str, Any]:
    """Run `module` on x with initial state (h,) or (h, c), each (L*D, B, H), packing by `lengths`,
    and backpropagate sum(y * gy) + sum(state_n * gstate). Returns numpy y, state (list), dx,
    dstate (list) and grads (dict by parameter name)."""
    batch_first = module.batch_first
    xt = torch.tensor(x, requires_grad=True)
    hs = [torch.tensor(s, requires_grad=True) for s in state]
    inp: Any = xt
    if lengths is not None:
        inp = pack_padded_sequence(xt, torch.as_tensor(lengths, dtype=torch.int64),
                                   batch_first=batch_first, enforce_sorted=False)
    out, hn = module(inp, hs[0] if len(hs) == 1 else tuple(hs))
    if lengths is not None:
        steps = x.shape[1] if batch_first else x.shape[0]
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=steps)
    finals = [hn] if isinstance(hn, torch.Tensor) else list(hn)
    loss = (out * torch.tensor(gy)).sum()
    for f, g in zip(finals, gstate):
        loss = loss + (f * torch.tensor(g)).sum()
    loss.backward()
    return {
        "y": out.detach().numpy(), "state": [f.detach().numpy() for f in finals],
        "dx": np.asarray(xt.grad), "dstate": [np.asarray(h.grad) for h in hs],
        "grads": {n: np.asarray(p.grad) for n, p in module.named_parameters()},
    }


def functional_run(backend: Any, cell: str, x: np.ndarray, state: Sequence[np.ndarray | None],
                   weights: Sequence[np.ndarray | None], lengths: np.ndarray | None,
                   dy: np.ndarray | None, dstate: Sequence[np.ndarray]) -> dict[str, Any]:
    """Forward and backward of one functional cell; results keyed like `torch_run`'s."""
    if cell == "lstm":
        y, h_n, c_n, cache = backend.lstm_forward(x, *state, *weights, lengths=lengths)
        dx, dh0, dc0, *dw = backend.lstm_backward(cache, dy, *dstate)
        return {"y": y, "state": [h_n, c_n], "dx": dx, "dstate": [dh0, dc0], "dw": dw}
    if cell == "gru":
        y, h_n, cache = backend.gru_forward(x, *state, *weights, lengths=lengths)
        dx, dh0, *dw = backend.gru_backward(cache, dy, *dstate)
    else:
        y, h_n, cache = backend.rnn_forward(x, *state, *weights, nonlinearity=cell[4:],
                                            lengths=lengths)
        dx, dh0, *dw = backend.rnn_backward(cache, dy, *dstate)
    return {"y": y, "state": [h_n], "dx": dx, "dstate": [dh0], "dw": dw}


def compare(backend: Any, cell: str, dtype: Any, *, lengths: np.ndarray | None,
            with_h0: bool, bias: bool = True, with_dy: bool = True) -> None:
    rng = np.random.default_rng(1)
    module = torch_module(cell, I, H, dtype, bias=bias)
    n_state = 2 if cell == "lstm" else 1
    x = rng.standard_normal((T, B, I)).astype(dtype)  # (T, B, I)
    state = [rng.standard_normal((1, B, H)).astype(dtype) if with_h0
             else np.zeros((1, B, H), dtype) for _ in range(n_state)]  # each (1, B, H)
    gy = rng.standard_normal((T, B, H)).astype(dtype) if with_dy else np.zeros((T, B, H), dtype)
    gstate = [rng.standard_normal((1, B, H)).astype(dtype) for _ in range(n_state)]  # (1, B, H)
    want = torch_run(module, x, state, lengths, gy, gstate)

    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    sd = {n: t.detach().numpy() for n, t in module.state_dict().items()}
    weights = [sd.get(n) for n in names]
    got = functional_run(backend, cell, x, [s[0] if with_h0 else None for s in state], weights,
                         lengths, gy if with_dy else None, [g[0] for g in gstate])

    tol = TOL[dtype]
    assert got["y"].dtype == dtype
    np.testing.assert_allclose(got["y"], want["y"], **tol, err_msg="y")
    if lengths is not None:  # padded outputs are exactly zero
        t = np.arange(T)[:, None]
        assert np.all(got["y"][t >= lengths[None, :]] == 0)
    for i in range(n_state):
        np.testing.assert_allclose(got["state"][i], want["state"][i][0], **tol, err_msg="state")
        np.testing.assert_allclose(got["dstate"][i], want["dstate"][i][0], **tol, err_msg="dstate")
    np.testing.assert_allclose(got["dx"], want["dx"], **tol, err_msg="dx")
    for name, g in zip(names, got["dw"]):
        if name in want["grads"]:
            np.testing.assert_allclose(g, want["grads"][name], **tol, err_msg=name)
        else:
            assert g is None, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
def test_against_torch(backend: Any, cell: str, dtype: Any, lengths: np.ndarray | None,
                       with_h0: bool) -> None:
    compare(backend, cell, dtype, lengths=lengths, with_h0=with_h0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_against_torch_no_bias(backend: Any, cell: str) -> None:
    compare(backend, cell, np.float64, lengths=LENGTHS, with_h0=True, bias=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", CELLS)
def test_against_torch_final_state_only(backend: Any, cell: str) -> None:
    """dy=None (an encoder): only the final state receives a gradient."""
    compare(backend, cell, np.float64, lengths=LENGTHS, with_h0=True, with_dy=False)

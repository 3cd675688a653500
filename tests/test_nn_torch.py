"""rnnkern.nn.RNN / LSTM / GRU against torch.nn.RNN / LSTM / GRU with the same state_dict.

Stacked (1-3 layers), bidirectional, batch_first, packed variable lengths, h0 given or not:
outputs, final states, dx, dstate0 and every parameter gradient. torch is imported at module
level on purpose: a missing torch is a failure, not a skip.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from test_torch_functional import CELLS, TOL, torch_module, torch_run

import rnnkern.nn

T, B, I, H = 5, 3, 4, 3
LENGTHS = np.array([4, 1, 5])  # unsorted, includes 1 and T


def layer_for(cell: str, module: torch.nn.RNNBase, dtype: Any) -> Any:
    """An rnnkern.nn layer configured like `module`, loaded with its state_dict."""
    kwargs = {"num_layers": module.num_layers, "bias": module.bias,
              "batch_first": module.batch_first, "dropout": module.dropout,
              "bidirectional": module.bidirectional, "dtype": dtype, "seed": 7}
    if cell.startswith("rnn"):
        layer = rnnkern.nn.RNN(module.input_size, module.hidden_size, nonlinearity=cell[4:],
                               **kwargs)
    else:
        cls = {"lstm": rnnkern.nn.LSTM, "gru": rnnkern.nn.GRU}[cell]
        layer = cls(module.input_size, module.hidden_size, **kwargs)
    layer.load_state_dict(module.state_dict())
    return layer


def compare(cell: str, dtype: Any, *, num_layers: int, bidirectional: bool, batch_first: bool,
            lengths: np.ndarray | None, with_h0: bool, bias: bool = True) -> None:
    rng = np.random.default_rng(num_layers)
    module = torch_module(cell, I, H, dtype, num_layers=num_layers, bias=bias,
                          batch_first=batch_first, bidirectional=bidirectional)
    layer = layer_for(cell, module, dtype)
    n_dir = 2 if bidirectional else 1
    n_state = 2 if cell == "lstm" else 1
    x_shape = (B, T, I) if batch_first else (T, B, I)
    y_shape = (B, T, n_dir * H) if batch_first else (T, B, n_dir * H)
    s_shape = (num_layers * n_dir, B, H)
    x = rng.standard_normal(x_shape).astype(dtype)
    state = [rng.standard_normal(s_shape).astype(dtype) if with_h0 else np.zeros(s_shape, dtype)
             for _ in range(n_state)]  # each (L*D, B, H)
    gy = rng.standard_normal(y_shape).astype(dtype)
    gstate = [rng.standard_normal(s_shape).astype(dtype) for _ in range(n_state)]
    want = torch_run(module, x, state, lengths, gy, gstate)

    layer_state: Any = None
    if with_h0:
        layer_state = tuple(state) if n_state == 2 else state[0]
    y, final = layer(x, layer_state, lengths=lengths)
    dx, dstate0 = layer.backward(gy, tuple(gstate) if n_state == 2 else gstate[0])
    finals = list(final) if n_state == 2 else [final]
    dstates = list(dstate0) if n_state == 2 else [dstate0]

    tol = TOL[dtype]
    assert y.shape == y_shape and y.dtype == dtype
    np.testing.assert_allclose(y, want["y"], **tol, err_msg="y")
    for i in range(n_state):
        assert finals[i].shape == s_shape and dstates[i].shape == s_shape
        np.testing.assert_allclose(finals[i], want["state"][i], **tol, err_msg="state")
        np.testing.assert_allclose(dstates[i], want["dstate"][i], **tol, err_msg="dstate0")
    np.testing.assert_allclose(dx, want["dx"], **tol, err_msg="dx")
    assert list(layer.grads) == list(want["grads"])
    for name, g in want["grads"].items():
        np.testing.assert_allclose(layer.grads[name], g, **tol, err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
def test_module_against_torch(cell: str, num_layers: int, bidirectional: bool, batch_first: bool,
                              lengths: np.ndarray | None, with_h0: bool) -> None:
    compare(cell, np.float64, num_layers=num_layers, bidirectional=bidirectional,
            batch_first=batch_first, lengths=lengths, with_h0=with_h0)


@pytest.mark.parametrize("cell", CELLS)
def test_module_against_torch_float32(cell: str) -> None:
    compare(cell, np.float32, num_layers=2, bidirectional=True, batch_first=True,
            lengths=LENGTHS, with_h0=True)


@pytest.mark.parametrize("cell", CELLS)
def test_module_against_torch_no_bias(cell: str) -> None:
    compare(cell, np.float64, num_layers=2, bidirectional=True, batch_first=False,
            lengths=LENGTHS, with_h0=True, bias=False)


@pytest.mark.parametrize("cell", CELLS)
def test_eval_with_dropout_matches_torch_eval(cell: str) -> None:
    """dropout acts only in training: in inference the layer equals torch's module in eval()."""
    module = torch_module(cell, I, H, np.float64, num_layers=3, dropout=0.5, bidirectional=True)
    module.eval()
    layer = layer_for(cell, module, np.float64)
    x = np.random.default_rng(0).standard_normal((T, B, I))  # (T, B, I)
    with torch.no_grad():
        want, _ = module(torch.tensor(x))
    y, _ = layer(x, lengths=None, training=False)
    np.testing.assert_allclose(y, want.numpy(), **TOL[np.float64])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_round_trip(cell: str, dtype: Any) -> None:
    module = torch_module(cell, I, H, dtype, num_layers=2, bidirectional=True, seed=3)
    layer = layer_for(cell, module, dtype)
    sd = layer.state_dict()
    tsd = module.state_dict()
    assert list(sd) == list(tsd)
    for name, t in tsd.items():
        assert sd[name].dtype == dtype
        np.testing.assert_array_equal(sd[name], t.numpy(), err_msg=name)

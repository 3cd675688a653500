"""The layer stack (rnnkern._stack, run by rnnkern.nn and rnnkern.torch) against its NumPy
reference (rnnkern.reference.stack), and the reference against torch.nn's modules (issue 15).

Layers 1-3, one or two directions, lengths or none, h0 given or zeros, dropout masks or none,
float32 and float64; outputs, final states and every gradient. Sizes are tiny: seconds.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from rnnkern_testing import CELLS, GATES, assert_close, rnn_acc_len
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkern
import rnnkern.torch as rt
from rnnkern import _core, _functional, _stack
from rnnkern import nn as rnn_nn
from rnnkern.reference.stack import stack_backward, stack_forward

I, H, T, B = 3, 4, 5, 3
LENGTHS = [5, 2, 4]  # unsorted, with T
F64 = np.float64
PACKS = {"rnn": _functional.rnn_pack, "lstm": _functional.lstm_pack, "gru": _functional.gru_pack}
TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def acc_len(cell: str, layers: int, D: int) -> int:
    return layers * rnn_acc_len(cell, T, B, max(I, D * H), H)


def problem(cell: str, layers: int, D: int, full: bool, seed: int = 0) -> dict[str, Any]:
    """A random float64 stack problem; ``full``: lengths, h0 (c0), dropout masks, dh_n (dc_n)."""
    rng = np.random.default_rng(seed)
    G, k = GATES[cell], 0.5

    def u(*shape: int, scale: float = 1.0) -> np.ndarray:
        return rng.uniform(-scale, scale, shape)

    weights = [(u(G * H, I if k_ < D else D * H, scale=k), u(G * H, H, scale=k),
                u(G * H, scale=k), u(G * H, scale=k)) for k_ in range(layers * D)]
    lstm = cell == "lstm"
    return {
        "weights": weights, "x": u(T, B, I),
        "h0": u(layers * D, B, H, scale=0.5) if full else None,
        "c0": u(layers * D, B, H, scale=0.5) if full and lstm else None,
        "lengths": np.array(LENGTHS, np.int64) if full else None,
        # inverted dropout p = 0.5: 0 or 2, exact in float32
        "masks": [(rng.random((T, B, D * H)) >= 0.5) * 2.0 for _ in range(layers - 1)] if full
        else [],
        "dy": u(T, B, D * H), "dh_n": u(layers * D, B, H) if full else None,
        "dc_n": u(layers * D, B, H) if full and lstm else None,
    }


def reference(cell: str, options: dict[str, Any], D: int, p: dict[str, Any]) -> dict[str, Any]:
    """The reference's outputs and gradients of problem ``p``, by name."""
    y, h_n, c_n, cache = stack_forward(cell, p["x"], p["h0"], p["c0"], p["weights"],
                                       directions=D, lengths=p["lengths"], masks=p["masks"],
                                       **options)
    dx, dh0, dc0, grads = stack_backward(cache, p["dy"], p["dh_n"], p["dc_n"])
    return {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0,
            **{f"d{name}{k}": g for k, gs in enumerate(grads)
               for name, g in zip(("w_ih", "w_hh", "b_ih", "b_hh"), gs)}}


def assert_all_close(got: dict[str, Any], want: dict[str, Any], dtype: Any, n: int) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        if w is None:
            assert got[name] is None, name
        else:
            assert_close(got[name], w, dtype=dtype, acc_len=n, name=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("full", [False, True], ids=["plain", "lengths-h0-dropout"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell,options", CELLS,
                         ids=["rnn_tanh", "rnn_relu", "rnn_sigmoid", "lstm", "gru", "gru_rh"])
def test_stack_matches_reference(cell: str, options: dict[str, Any], layers: int, D: int,
                                 full: bool, dtype: Any) -> None:
    p = problem(cell, layers, D, full)
    want = reference(cell, options, D, p)

    def cast(a: Any) -> Any:
        return None if a is None else a.astype(dtype)

    packs = [PACKS[cell](*(cast(w) for w in ws), **options)._pack for ws in p["weights"]]
    y, h_n, c_n, saved = _stack.forward(packs, D, cast(p["x"]), cast(p["h0"]), cast(p["c0"]),
                                        p["lengths"], [cast(m) for m in p["masks"]], True)
    assert saved is not None
    dx, dh0, dc0, grads = _stack.backward(saved, cast(p["dy"]), cast(p["dh_n"]),
                                          cast(p["dc_n"]))
    got = {"y": y, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0,
           **{f"d{name}{k}": g for k, gs in enumerate(grads)
              for name, g in zip(("w_ih", "w_hh", "b_ih", "b_hh"), gs)}}
    assert_all_close(got, want, dtype, acc_len(cell, layers, D))
    # inference: the same outputs, nothing saved
    y2, h2, c2, none = _stack.forward(packs, D, cast(p["x"]), cast(p["h0"]), cast(p["c0"]),
                                      p["lengths"], [cast(m) for m in p["masks"]], False)
    assert none is None
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(h2, h_n)


def torch_module(cell: str, layers: int, D: int, p: dict[str, Any], **kwargs: Any) -> Any:
    """torch.nn's module (float64) holding problem p's weights."""
    module = TORCH[cell](I, H, num_layers=layers, bidirectional=D == 2, dtype=torch.float64,
                         **kwargs)
    with torch.no_grad():
        for names, ws in zip(module._all_weights, p["weights"]):
            for name, w in zip(names, ws):
                getattr(module, name).copy_(torch.from_numpy(w))
    return module


def run_torch(module: Any, cell: str, p: dict[str, Any], batch_first: bool = False
              ) -> dict[str, Any]:
    """A torch module's outputs and gradients on problem p (padded or packed by lengths)."""
    x = torch.from_numpy(p["x"].transpose(1, 0, 2) if batch_first else p["x"]).requires_grad_()
    states = [None if p[n] is None else torch.from_numpy(p[n]).requires_grad_()
              for n in ("h0", "c0")]
    hx = (None if states[0] is None else
          (states[0], states[1]) if cell == "lstm" else states[0])
    inp: Any = x
    if p["lengths"] is not None:
        inp = pack_padded_sequence(x, torch.from_numpy(p["lengths"]), batch_first=batch_first,
                                   enforce_sorted=False)
    out, state = module(inp, hx)
    if p["lengths"] is not None:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    h_n, c_n = state if cell == "lstm" else (state, None)
    dy = p["dy"].transpose(1, 0, 2) if batch_first else p["dy"]
    loss = (out * torch.from_numpy(np.ascontiguousarray(dy))).sum()
    for s, g in ((h_n, p["dh_n"]), (c_n, p["dc_n"])):
        if s is not None and g is not None:
            loss = loss + (s * torch.from_numpy(g)).sum()
    loss.backward()
    y = out.detach().numpy()
    res = {"y": y.transpose(1, 0, 2) if batch_first else y, "h_n": h_n.detach().numpy(),
           "c_n": None if c_n is None else c_n.detach().numpy(),
           "dx": x.grad.numpy().transpose(1, 0, 2) if batch_first else x.grad.numpy(),
           "dh0": None if states[0] is None else states[0].grad.numpy(),
           "dc0": None if states[1] is None else states[1].grad.numpy()}
    for k, names in enumerate(module._all_weights):
        for kind, name in zip(("w_ih", "w_hh", "b_ih", "b_hh"), names):
            res[f"d{kind}{k}"] = getattr(module, name).grad.numpy()
    return res


def without_unset_states(want: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """The reference's results without dh0/dc0 where the problem has no h0/c0 (torch has no
    gradient for a state it made itself)."""
    return {k: (None if (k == "dh0" and p["h0"] is None) or (k == "dc0" and p["c0"] is None)
                else v) for k, v in want.items()}


@pytest.mark.parametrize("full", [False, True], ids=["plain", "lengths-h0"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_reference_matches_torch(cell: str, layers: int, D: int, full: bool) -> None:
    """The reference is torch.nn's stack (dropout apart: torch draws its own masks)."""
    p = {**problem(cell, layers, D, full), "masks": []}
    want = without_unset_states(reference(cell, {}, D, p), p)
    got = run_torch(torch_module(cell, layers, D, p), cell, p)
    assert_all_close(got, want, np.float64, acc_len(cell, layers, D))


def torch_masks(seed: int, shape: tuple[int, ...], count: int, dtype: torch.dtype,
                lengths: np.ndarray | None) -> list[Any]:
    """The masks (T, B, F) torch.nn's modules (and rnnkern.torch's) draw after
    torch.manual_seed(seed): F.dropout's noise on each layer's output (on the packed data for
    packed input), layer after layer."""
    torch.manual_seed(seed)
    if lengths is None:
        return [TF.dropout(torch.ones(shape, dtype=dtype), 0.5, training=True).numpy()
                .astype(F64) for _ in range(count)]
    packed = pack_padded_sequence(torch.zeros(shape[:2]), torch.from_numpy(lengths),
                                  enforce_sorted=False)
    return [rt._packed_noise(shape, dtype, packed, 0.5).numpy().astype(F64) for _ in range(count)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_drop_in_dropout_batch_first_matches_reference_and_torch(cell: str,
                                                                 dtype: torch.dtype) -> None:
    """rnnkern.torch, 3 bidirectional layers, batch_first, lengths, h0 and training-mode dropout:
    the masks torch draws fed to the reference; torch.nn itself gives the same numbers."""
    layers, D = 3, 2
    p = problem(cell, layers, D, True, seed=1)
    p["masks"] = torch_masks(7, (T, B, D * H), layers - 1, dtype, p["lengths"])
    want = reference(cell, {}, D, p)
    native = torch_module(cell, layers, D, p, batch_first=True, dropout=0.5)
    ours = rt.convert(copy.deepcopy(native)).to(dtype)
    np_dtype = np.float32 if dtype == torch.float32 else F64
    cast = {k: (v.astype(np_dtype) if isinstance(v, np.ndarray) and v.dtype == F64 else v)
            for k, v in p.items()}
    cast["weights"] = p["weights"]
    torch.manual_seed(7)
    got = run_torch(ours, cell, cast, batch_first=True)
    assert_all_close(got, want, np_dtype, acc_len(cell, layers, D))
    torch.manual_seed(7)
    assert_all_close(run_torch(native, cell, p, batch_first=True), want, F64,
                     acc_len(cell, layers, D))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_nn_dropout_batch_first_matches_reference(cell: str, dtype: Any) -> None:
    """rnnkern.nn, 3 bidirectional layers, batch_first, lengths, h0 and dropout: its masks (drawn
    from its seed) fed to the reference."""
    layers, D = 3, 2
    layer = {"rnn": rnn_nn.RNN, "lstm": rnn_nn.LSTM, "gru": rnn_nn.GRU}[cell](
        I, H, num_layers=layers, bidirectional=True, batch_first=True, dropout=0.5, dtype=dtype,
        seed=3)
    p = problem(cell, layers, D, True, seed=2)
    layer.load_state_dict({f"{kind}_l{k // D}{'_reverse' if k % D else ''}": w
                           for k, ws in enumerate(p["weights"])
                           for kind, w in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                                              ws)})
    masks = _stack.dropout_masks(copy.deepcopy(layer._rng), 0.5, layers, (T, B, D * H),
                                 np.dtype(dtype))
    p["masks"] = [m.astype(F64) for m in masks]
    want = reference(cell, {}, D, p)

    def c(a: Any) -> Any:
        return None if a is None else a.astype(dtype)

    state = (c(p["h0"]), c(p["c0"])) if cell == "lstm" else c(p["h0"])
    dstate = (c(p["dh_n"]), c(p["dc_n"])) if cell == "lstm" else c(p["dh_n"])
    y, final = layer(c(p["x"]).transpose(1, 0, 2), state, lengths=p["lengths"])
    dx, d0 = layer.backward(c(p["dy"]).transpose(1, 0, 2), dstate)
    h_n, c_n = final if cell == "lstm" else (final, None)
    dh0, dc0 = d0 if cell == "lstm" else (d0, None)
    got = {"y": y.transpose(1, 0, 2), "h_n": h_n, "c_n": c_n, "dx": dx.transpose(1, 0, 2),
           "dh0": dh0, "dc0": dc0}
    for k in range(layers * D):
        suffix = f"_l{k // D}{'_reverse' if k % D else ''}"
        for kind, name in zip(("w_ih", "w_hh", "b_ih", "b_hh"),
                              ("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
            got[f"d{kind}{k}"] = layer.grads[name + suffix]
    assert_all_close(got, want, dtype, acc_len(cell, layers, D))


def test_dropout_masks_are_reproducible() -> None:
    shape = (T, B, 2 * H)
    a = _stack.dropout_masks(np.random.default_rng(5), 0.25, 3, shape, np.dtype(np.float32))
    b = _stack.dropout_masks(np.random.default_rng(5), 0.25, 3, shape, np.dtype(np.float32))
    assert len(a) == 2 and all(m.shape == shape and m.dtype == np.float32 for m in a)
    for m, n in zip(a, b):
        np.testing.assert_array_equal(m, n)
        assert set(np.unique(m)) <= {0.0, np.float32(1 / 0.75)}
    assert not np.array_equal(a[0], a[1])
    assert all(not m.any() for m in _stack.dropout_masks(np.random.default_rng(0), 1.0, 2,
                                                          shape, np.dtype(np.float64)))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_drop_in_skips_the_input_gradient_it_does_not_need(cell: str,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """x without requires_grad (an embedding's output under no_grad, data): the stack is asked
    for no dx (need_dx False: layer 0's input product skipped), and every other gradient keeps
    its bits."""
    layers, D = 2, 2
    p = problem(cell, layers, D, True, seed=4)
    module = rt.convert(torch_module(cell, layers, D, p)).float()
    flags: list[bool] = []
    real = _stack._core.stack_backward

    def spy(*args: Any) -> Any:
        flags.append(bool(args[9]))
        return real(*args)

    monkeypatch.setattr(_stack._core, "stack_backward", spy)
    grads = []
    for need in (True, False):
        module.zero_grad()
        x = torch.tensor(p["x"], dtype=torch.float32, requires_grad=need)
        h0 = torch.tensor(p["h0"], dtype=torch.float32, requires_grad=True)
        state = (h0, torch.tensor(p["c0"], dtype=torch.float32)) if cell == "lstm" else h0
        y, _ = module(x, state)
        y.backward(torch.tensor(p["dy"], dtype=torch.float32))
        assert (x.grad is not None) == need
        grads.append([h0.grad, *(w.grad for w in module.parameters())])
    assert flags == [True, False]
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_nn_backward_adds_weight_gradients_where_they_are(cell: str,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """`rnnkern.nn`'s backward has the kernels add the weight gradients into its `grads` arrays
    (the same objects, passed as the calls' `into`, twice after two calls), equal to the
    gradients `_stack.backward` returns (float64, 1e-12 relative; the sums are grouped
    differently); when an array is not one the kernels can write (Fortran order), none is
    passed and they are added afterwards, with the same result."""
    layers, D = 2, 2
    p = problem(cell, layers, D, True, seed=6)
    layer = {"lstm": rnn_nn.LSTM, "gru": rnn_nn.GRU}[cell](
        p["x"].shape[2], p["h0"].shape[2], num_layers=layers, bidirectional=True,
        dtype=np.float64)
    x, dy = p["x"], p["dy"]
    y, _ = layer(x, training=True)
    want = [dict(zip(layer._grad_names(k), g))
            for k, g in enumerate(_stack.backward(layer._saved, dy, None, None)[3])]
    odd = layer._grad_names(1)[1]  # weight_hh_l0_reverse
    real = _stack._core.stack_backward
    passed: list[Any] = []  # each (layer, direction)'s into

    def spy(*args: Any) -> Any:
        passed.extend([None] * 4 if args[10] is None else args[10])
        return real(*args)

    monkeypatch.setattr(_stack._core, "stack_backward", spy)
    for fortran in (False, True):
        passed.clear()
        layer.zero_grad()
        if fortran:
            layer.grads[odd] = np.asfortranarray(layer.grads[odd])
        ids = {n: id(g) for n, g in layer.grads.items()}
        for _ in range(2):
            layer.backward(dy)
        assert {n: id(g) for n, g in layer.grads.items()} == ids
        if fortran:
            assert passed == [None] * 8
        else:
            assert [tuple(map(id, i)) for i in passed] == [
                tuple(id(layer.grads.get(n)) for n in layer._grad_names(k))
                for k in [0, 1, 2, 3] * 2]
        for grads in want:
            for name, g in grads.items():
                if g is not None:
                    np.testing.assert_allclose(layer.grads[name], 2 * g, rtol=1e-12,
                                               atol=1e-12 * np.abs(g).max(), err_msg=name)


# -- the fused stack against the layers one by one ---------------------------------------------


def reverse(a: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """A time-major (T, B, F) array reversed within each sequence's length (padded steps in
    place): the reverse direction's time order."""
    if lengths is None:
        return np.ascontiguousarray(a[::-1])
    t = np.arange(a.shape[0])[:, None]
    n = lengths[None, :]
    rev = np.where(t < n, n - 1 - t, t)  # (T, B)
    return a[rev, np.arange(a.shape[1])[None, :]]


def layers_one_by_one(packs: list[Any], D: int, x: np.ndarray, h0: Any, c0: Any, lengths: Any,
                      masks: list[Any], dy: np.ndarray, dh_n: Any, dc_n: Any
                      ) -> list[np.ndarray]:
    """The stack's forward and backward by one forward_packed / backward_packed per (layer,
    direction) and NumPy for the reversals, columns and masks: what the fused stack's copies
    must reproduce bit for bit. Returns y, h_n, c_n, dx, dh0, dc0 and every weight gradient."""
    L = len(packs) // D
    P = packs[0].output_size
    h_n, c_n, saved, out = [], [], [], []
    inp = x
    for layer in range(L):
        outs = []
        for d in range(D):
            k = layer * D + d
            xk = inp if d == 0 else reverse(inp, lengths)
            y, h, c, buf = _core.forward_packed(packs[k], xk, None if h0 is None else h0[k],
                                                None if c0 is None else c0[k], lengths, True)
            h_n.append(h), c_n.append(c), saved.append((xk, buf))
            outs.append(y if d == 0 else reverse(y, lengths))
        inp = np.concatenate(outs, axis=2)
        if layer < L - 1 and masks:
            inp = inp * masks[layer]
        out.append(inp)
    result = [inp, np.stack(h_n), None if c_n[0] is None else np.stack(c_n)]
    dh0, dc0, grads = [None] * len(packs), [None] * len(packs), [None] * len(packs)
    d_out = dy
    for layer in reversed(range(L)):
        d_in = None
        for d in range(D):
            k = layer * D + d
            part = np.ascontiguousarray(d_out[:, :, d * P:(d + 1) * P])
            dyk = part if d == 0 else reverse(part, lengths)
            dx, dh, dc, *dws = _core.backward_packed(
                packs[k], saved[k][0], lengths, saved[k][1], dyk,
                None if dh_n is None else dh_n[k], None if dc_n is None else dc_n[k])
            dh0[k], dc0[k], grads[k] = dh, dc, dws
            dx = dx if d == 0 else reverse(dx, lengths)
            d_in = dx if d_in is None else d_in + dx
        assert d_in is not None
        d_out = d_in * masks[layer - 1] if layer > 0 and masks else d_in
    return result + [d_out, np.stack(dh0), None if dc0[0] is None else np.stack(dc0),
                     *(g for gs in grads for g in gs)]


@pytest.mark.parametrize("size", [(5, 3, 3, 4), (20, 16, 64, 128)], ids=["small", "large"])
@pytest.mark.parametrize("full", [False, True], ids=["plain", "lengths-h0-dropout"])
@pytest.mark.parametrize("layers,D", [(1, 2), (2, 1), (2, 2), (3, 2)])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fused_stack_keeps_the_bits_of_the_layers_one_by_one(cell: str, layers: int, D: int,
                                                             full: bool,
                                                             size: tuple[int, ...]) -> None:
    """rnnkern::stack_forward / stack_backward: the same bits as the layers run one by one
    (layers_one_by_one), on 1 and 2 threads, float32 and float64. "large": the copies split over
    the threads (T*B*F >= 2^16) and the directions each with the team (B = 16, H = 128); "small":
    the directions side by side."""
    steps, batch, inp, hid = size
    rng = np.random.default_rng(7)
    G = GATES[cell]
    lengths = np.array(rng.integers(1, steps + 1, batch), np.int64) if full else None
    if full:
        lengths[0] = steps
    for dtype in (np.float32, np.float64):
        def u(*shape: int, dtype: Any = dtype) -> np.ndarray:
            return rng.uniform(-0.5, 0.5, shape).astype(dtype)

        packs = [PACKS[cell](u(G * hid, inp if k < D else D * hid), u(G * hid, hid), u(G * hid),
                             u(G * hid))._pack for k in range(layers * D)]
        x = u(steps, batch, inp)
        h0 = u(layers * D, batch, hid) if full else None
        c0 = u(layers * D, batch, hid) if full and cell == "lstm" else None
        masks = [((rng.random((steps, batch, D * hid)) >= 0.3) / 0.7).astype(dtype)
                 for _ in range(layers - 1)] if full else []
        dy = u(steps, batch, D * hid)
        dh_n = u(layers * D, batch, hid) if full else None
        dc_n = u(layers * D, batch, hid) if full and cell == "lstm" else None
        want = layers_one_by_one(packs, D, x, h0, c0, lengths, masks, dy, dh_n, dc_n)
        for threads in (1, 2):
            before = rnnkern.get_num_threads()
            rnnkern.set_num_threads(threads)
            try:
                y, h_n, c_n, saved = _stack.forward(packs, D, x, h0, c0, lengths, masks, True)
                assert saved is not None
                dx, dh0, dc0, grads = _stack.backward(saved, dy, dh_n, dc_n)
                y2 = _stack.forward(packs, D, x, h0, c0, lengths, masks, False)[0]
            finally:
                rnnkern.set_num_threads(before)
            got = [y, h_n, c_n, dx, dh0, dc0, *(g for gs in grads for g in gs)]
            assert len(got) == len(want)
            for i, (a, b) in enumerate(zip(got, want)):
                if b is None:
                    assert a is None, i
                else:
                    np.testing.assert_array_equal(a, b, err_msg=f"item {i}, {threads} threads")
            np.testing.assert_array_equal(y2, y)

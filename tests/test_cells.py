"""rnnkern.nn.RNNCell / LSTMCell / GRUCell against torch's cells, and the layers' packed weights:
never stale after an optimizer step, load_state_dict or set_isa."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch  # a peer: missing fails, never skips
from rnnkern_testing import assert_close, rnn_acc_len

import rnnkern
from rnnkern import nn, optim

CELLS = {"rnn_tanh": (nn.RNNCell, torch.nn.RNNCell, {}),
         "rnn_relu": (nn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
         "lstm": (nn.LSTMCell, torch.nn.LSTMCell, {}),
         "gru": (nn.GRUCell, torch.nn.GRUCell, {})}


def pair(name: str, I: int, H: int, bias: bool = True) -> tuple[Any, Any]:
    ours, theirs, kw = CELLS[name]
    t = theirs(I, H, bias=bias, **kw).double()
    c = ours(I, H, bias=bias, dtype=np.float64, **kw)
    c.load_state_dict(t.state_dict())
    return c, t


def as_np(s: Any) -> Any:
    return tuple(as_np(p) for p in s) if isinstance(s, tuple) else s.detach().numpy()


def assert_state(ours: Any, theirs: Any) -> None:
    for a, b in zip(ours if isinstance(ours, tuple) else (ours,),
                    theirs if isinstance(theirs, tuple) else (theirs,)):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", CELLS)
def test_steps_and_backward_match_torch(name: str, bias: bool, unbatched: bool) -> None:
    """Five steps fed back, a loss on every output, backward through the steps in reverse:
    outputs, dx of every step, d(initial state) and the parameter gradients equal torch's."""
    T, B, I, H = 5, 3, 4, 6
    cell, tcell = pair(name, I, H, bias)
    lstm = name == "lstm"
    rng = np.random.default_rng(0)
    shape = (T, I) if unbatched else (T, B, I)
    xs = rng.standard_normal(shape)
    s_shape = (H,) if unbatched else (B, H)
    h0 = rng.standard_normal(s_shape)
    c0 = rng.standard_normal(s_shape)
    weights = rng.standard_normal((T, *s_shape))  # the loss: sum_t <weights[t], h_t>
    # torch
    tx = torch.tensor(xs, requires_grad=True)
    th0, tc0 = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    state: Any = (th0, tc0) if lstm else th0
    loss = 0
    outs = []
    for t in range(T):
        state = tcell(tx[t], state)
        h = state[0] if lstm else state
        outs.append(state)
        loss = loss + (h * torch.tensor(weights[t])).sum()
    loss.backward()  # type: ignore[union-attr]
    # ours
    s: Any = (h0, c0) if lstm else h0
    for t in range(T):
        s = cell(xs[t], s)
        assert_state(s, outs[t])
    dstate: Any = (np.zeros(s_shape), np.zeros(s_shape)) if lstm else np.zeros(s_shape)
    assert cell.steps_recorded == T
    for t in reversed(range(T)):
        dh = (dstate[0] if lstm else dstate) + weights[t]
        dx, dstate = cell.backward((dh, dstate[1]) if lstm else dh)
        np.testing.assert_allclose(dx, tx.grad[t].numpy(), rtol=1e-9, atol=1e-12)
    assert cell.steps_recorded == 0
    np.testing.assert_allclose(dstate[0] if lstm else dstate, th0.grad.numpy(), rtol=1e-9,
                               atol=1e-12)
    if lstm:
        np.testing.assert_allclose(dstate[1], tc0.grad.numpy(), rtol=1e-9, atol=1e-12)
    for pname, p in tcell.named_parameters():
        np.testing.assert_allclose(cell.grads[pname], p.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=pname)
    with pytest.raises(RuntimeError, match="^backward: no recorded step left"):
        cell.backward(dstate)


def test_constructor_and_names_like_torch() -> None:
    for ours, theirs, kw in CELLS.values():
        c, t = ours(3, 5, **kw), theirs(3, 5, **kw)
        assert list(c.params) == [n for n, _ in t.named_parameters()]
        for n, p in t.named_parameters():
            assert c.params[n].shape == tuple(p.shape) and c.params[n].dtype == np.float32
            assert np.abs(c.params[n]).max() <= 1 / np.sqrt(5)
        assert list(ours(3, 5, bias=False, **kw).params) == ["weight_ih", "weight_hh"]
    assert repr(nn.RNNCell(3, 5, nonlinearity="relu")) == "RNNCell(3, 5, nonlinearity='relu')"
    assert repr(nn.LSTMCell(3, 5, bias=False, dtype=np.float64)) == (
        "LSTMCell(3, 5, bias=False, dtype=float64)")
    # torch's edge cases: zero sizes
    for ours, _, kw in CELLS.values():
        h = ours(0, 4, **kw)(np.zeros((2, 0), np.float32))
        assert (h[0] if isinstance(h, tuple) else h).shape == (2, 4)
        h = ours(3, 0, **kw)(np.zeros((2, 3), np.float32))
        assert (h[0] if isinstance(h, tuple) else h).shape == (2, 0)


def test_bad_arguments() -> None:
    cell = nn.LSTMCell(3, 4)
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="^x: dtype float64 does not match the layer's dtype"):
        cell(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"^x: expected shape \(B, input_size\) = \(B, 3\)"):
        cell(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"^x: expected shape"):
        cell(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(TypeError, match=r"^state: expected a tuple \(h, c\)"):
        cell(x, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"^state\[1\]: expected shape \(B, H\) = \(2, 4\)"):
        cell(x, (np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float32)))
    with pytest.raises(ValueError, match=r"^state: expected shape \(H,\) = \(4,\)"):
        nn.GRUCell(3, 4)(np.zeros(3, np.float32), np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match="^training:"):
        cell(x, training=1)
    with pytest.raises(ValueError, match="^nonlinearity:"):
        nn.RNNCell(3, 4, nonlinearity="gelu")
    with pytest.raises(TypeError, match="^hidden_size:"):
        nn.GRUCell(3, 4.0)  # type: ignore[arg-type]
    cell(x)
    with pytest.raises(ValueError, match=r"^dstate\[0\]: expected shape \(B, H\) = \(2, 4\)"):
        cell.backward((np.zeros((3, 4), np.float32), None))
    assert cell.steps_recorded == 1  # a failed backward keeps the step
    cell.clear_steps()
    assert cell.steps_recorded == 0
    cell(x, training=False)
    assert cell.steps_recorded == 0


# -- staleness: packs made again when the weights change ---------------------------------------


def test_optimizer_steps_reach_the_next_call() -> None:
    """A cell and a layer, each stepped by rnnkern.optim between calls: every call uses the new
    weights (the same result as a fresh module loaded with them), never the old pack."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    for module, inputs in ((nn.GRUCell(4, 5, seed=2), (x,)),
                           (nn.LSTM(4, 5, num_layers=2, bidirectional=True, seed=3), (x[None],))):
        opt = optim.SGD(module.params, module.grads, lr=0.5)
        for _ in range(3):
            module(*inputs, training=False)  # packs
            for g in module.grads.values():
                g[...] = rng.standard_normal(g.shape)
            opt.step()
            fresh = type(module).__new__(type(module))
            fresh.__dict__.update(module.__dict__)
            fresh._packs = type(module._packs)(fresh, fresh._make_pack)  # packs nothing yet
            expected = fresh(*inputs, training=False)
            got = module(*inputs, training=False)
            for a, b in zip(got if isinstance(got, tuple) else (got,),
                            expected if isinstance(expected, tuple) else (expected,)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)
        before = module(*inputs, training=False)
        module.load_state_dict({k: v * 0.5 for k, v in module.state_dict().items()})
        after = module(*inputs, training=False)
        assert not np.array_equal(np.asarray(before[0]), np.asarray(after[0]))


def test_parameters_are_read_only_until_made_writeable() -> None:
    """Writing to a parameter in place without the protocol raises (never silently stale);
    making it writeable first works and the next call packs again."""
    cell = nn.RNNCell(2, 3, seed=4)
    x = np.ones((1, 2), np.float32)
    y = cell(x, training=False)
    w = cell.params["weight_ih"]
    with pytest.raises(ValueError, match="read-only"):
        w += 1.0
    w.flags.writeable = True
    w += 1.0
    assert not np.array_equal(cell(x, training=False), y)
    assert not w.flags.writeable


def test_optimizer_step_between_forward_and_backward() -> None:
    """Forward, optimizer step, backward: the gradients of the forward that ran (its cache keeps
    its packed weights and its own x), for a layer and a cell."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2, 3))
    dy = rng.standard_normal((4, 2, 6))
    for make in (lambda: nn.LSTM(3, 6, dtype=np.float64, seed=6),
                 lambda: nn.GRU(3, 6, dtype=np.float64, seed=6)):
        ref = make()
        ref(x)
        expected = ref.backward(dy)
        layer = make()
        xc = x.copy()
        layer(xc)
        opt = optim.Adam(layer.params, layer.grads, lr=0.1)
        for g in layer.grads.values():
            g[...] = 1.0
        opt.step()
        layer.zero_grad()
        xc *= 3.0
        got = layer.backward(dy)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)
        for k in ref.grads:
            np.testing.assert_allclose(layer.grads[k], ref.grads[k], rtol=1e-12, err_msg=k)


def test_set_isa_repacks_the_layers() -> None:
    """After set_isa the layers pack again for the new kernels (a pack keeps its own ISA)."""
    cell = nn.LSTMCell(5, 21, seed=7)
    x = np.ones((2, 5), np.float32)
    default = rnnkern.config()["isa"]
    try:
        for isa in rnnkern.config()["supported_isas"]:
            rnnkern.set_isa(isa)
            cell(x, training=False)
            assert cell._packs.get(0, cell._weights()).isa == isa
    finally:
        rnnkern.set_isa(default)


def test_decoding_and_sampling_pack_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """CharLM.sample (`rnnkern sample`) and Seq2Seq greedy / beam decoding step their layers one
    token at a time: the weights are packed once per (layer, direction), not per step."""
    from rnnkern import _functional
    from rnnkern.models import CharLM, Seq2Seq

    packs: list[str] = []
    original = _functional.lstm_pack

    def spy(*args: Any, **kwargs: Any) -> Any:
        packs.append("lstm")
        return original(*args, **kwargs)

    monkeypatch.setattr(_functional, "lstm_pack", spy)
    lm = CharLM(11, hidden_size=8, num_layers=2, cell="lstm", embed_dim=4, seed=1)
    lm.sample(20, np.array([1, 2]), rng=np.random.default_rng(0))
    assert len(packs) == 2
    s2s = Seq2Seq(7, 9, hidden_size=8, seed=2)
    packs.clear()
    s2s.greedy([[3, 4, 5]], max_len=10)
    s2s.beam_search([[3, 4, 5]], beam_size=3, max_len=10)
    assert len(packs) == 2  # encoder and decoder, once each


@pytest.mark.parametrize("name", CELLS)
def test_strided_arguments_take_the_general_path(name: str) -> None:
    """Arguments the one-step fast path declines (not C-contiguous, a state list) give the
    results and gradients of contiguous ones."""
    cell, _ = pair(name, 3, 4)
    rng = np.random.default_rng(3)
    x, h = rng.standard_normal((2, 6))[:, ::2], rng.standard_normal((4, 2)).T
    state: Any = [h, h] if name == "lstm" else h
    got = cell(x, state)
    got_grads = cell.backward(got)
    want = cell(x.copy(), (h.copy(), h.copy()) if name == "lstm" else h.copy())
    want_grads = cell.backward(want)
    assert_state(got, tuple(torch.from_numpy(w) for w in want) if name == "lstm"
                 else torch.from_numpy(want))
    for a, b in zip(got_grads, want_grads):
        assert_state(a, tuple(torch.from_numpy(w) for w in b) if isinstance(b, tuple)
                     else torch.from_numpy(b))



def _train_loop(cell: Any, xs: Any, dys: Any) -> tuple[list[Any], list[Any]]:
    """T steps from a zero state, then back through them with dys[t] added to each output's
    gradient; the grads start at 1 (added to, not overwritten). Returns each step's cache and
    the (dh, dc or None) its backward got."""
    lstm = isinstance(cell, nn.LSTMCell)
    for g in cell.grads.values():
        g[...] = 1.0
    s: Any = None
    caches = []
    for x in xs:
        s = cell(x.astype(cell.dtype), s)
        caches.append(cell._steps[-1][0])
    dstate: Any = None
    douts: list[Any] = []
    for t in reversed(range(len(xs))):
        dh = dys[t].astype(cell.dtype)
        if dstate is not None:
            dh = dh + (dstate[0] if lstm else dstate)
        dc = dstate[1] if lstm and dstate is not None else None
        douts.insert(0, (dh, dc))
        _, dstate = cell.backward((dh, dc) if lstm else dh)
    return caches, douts


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CELLS)
def test_backward_adds_to_grads_like_the_per_step_results(name: str, dtype: Any, bias: bool,
                                                          num_threads: Any) -> None:
    """The steps' weight gradients, added in the core to `grads` (Grads::accumulate), equal 1 +
    the sum of the per-step backwards' own gradient arrays computed in float64
    (docs/tolerances.md), with the same bits on one thread and on two."""
    T, B, I, H = 4, 3, 5, 7
    rng = np.random.default_rng(5)
    ref, _ = pair(name, I, H, bias)  # float64
    cell = type(ref)(I, H, bias=bias, dtype=dtype, **CELLS[name][2])
    cell.load_state_dict({k: v.astype(dtype) for k, v in ref.state_dict().items()})
    ref.load_state_dict({k: v.astype(np.float64) for k, v in cell.state_dict().items()})
    xs = rng.standard_normal((T, B, I)).astype(dtype)
    dys = rng.standard_normal((T, B, H)).astype(dtype)
    got = []
    for n in (1, 2):
        num_threads(n)
        _train_loop(cell, xs, dys)
        got.append({k: g.copy() for k, g in cell.grads.items()})
    for k in got[0]:
        assert got[0][k].tobytes() == got[1][k].tobytes(), k
    caches, douts = _train_loop(ref, xs, dys)
    expected = {k: np.ones_like(g) for k, g in ref.grads.items()}
    for cache, (dh, dc) in zip(caches, douts):
        out = rnnkern._core.backward_packed(cache.pack, cache.x, None, cache.buffers, None,
                                            dh, dc)
        for k, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), out[3:]):
            if g is not None:
                expected[k] += g
    acc_len = rnn_acc_len(name.split("_")[0], T, B, I, H)
    for k, g in got[1].items():
        assert_close(g, expected[k], dtype=dtype, acc_len=acc_len, name=k)
        assert_close(ref.grads[k], expected[k], dtype=np.float64, acc_len=acc_len, name=k)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", CELLS)
def test_rows_kept_give_the_steps_weight_gradients_in_one_product(
        name: str, dtype: Any, bias: bool, num_threads: Any) -> None:
    """One-step backwards that keep their rows (``into=_core.Rows()``, the drop-in cells'
    training) return the same dx, dh0, dc0 bits as without (and as with ``need_dx=False``, which
    returns no dx), and ``weight_gradients`` over the
    rows equals the sum of the steps' own weight gradients (docs/tolerances.md), with the same
    bits on one thread and on two; steps of different batch sizes, 300 rows crossing the
    core's blocks of 256; with ``into``, added to the given arrays."""
    I, H = 5, 7
    lstm = name == "lstm"
    rng = np.random.default_rng(6)
    cell, _ = pair(name, I, H, bias)
    cell = type(cell)(I, H, bias=bias, dtype=dtype, **CELLS[name][2])
    steps = []
    for B in (3, 300, 1):
        cell(rng.standard_normal((B, I)).astype(dtype), None)
        cache = cell._steps.pop()[0]
        dh, dc = (rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
        steps.append((cache, dh, dc if lstm else None))
    pack = steps[0][0].pack
    expected: list[Any] = [0, 0, 0, 0]
    for cache, dh, dc in steps:
        out = rnnkern._core.backward_packed(cache.pack, cache.x, None, cache.buffers, None, dh, dc)
        expected = [e if g is None else e + g.astype(np.float64) for e, g in zip(expected, out[3:])]
    got = []
    for n in (1, 2):
        num_threads(n)
        rows = rnnkern._core.Rows()
        for cache, dh, dc in reversed(steps):
            kept = rnnkern._core.backward_packed(cache.pack, cache.x, None, cache.buffers, None,
                                                 dh, dc, rows)
            full = rnnkern._core.backward_packed(cache.pack, cache.x, None, cache.buffers, None,
                                                 dh, dc)
            assert len(kept) == 3
            for a, b in zip(kept, full[:3]):
                assert (a is None and b is None) or a.tobytes() == b.tobytes()
            # need_dx=False: no dx, every other result the same bits
            nodx = rnnkern._core.backward_packed(cache.pack, cache.x, None, cache.buffers, None,
                                                 dh, dc, need_dx=False)
            assert nodx[0] is None and len(nodx) == len(full)
            for a, b in zip(nodx[1:], full[1:]):
                assert (a is None and b is None) or a.tobytes() == b.tobytes()
        assert rows.rows == 304
        got.append(rnnkern._core.weight_gradients(pack, rows))
        into = tuple(None if g is None else np.ones_like(g) for g in got[-1])
        assert rnnkern._core.weight_gradients(pack, rows, into) is None
        for g, i in zip(got[-1], into):  # the same sums, started from 1
            if g is not None:
                assert_close(i, 1 + g, dtype=dtype, acc_len=304)
    for a, b, e, k in zip(got[0], got[1], expected, ("dw_ih", "dw_hh", "db_ih", "db_hh")):
        if not bias and k.startswith("db"):
            assert a is None and b is None
            continue
        assert a.tobytes() == b.tobytes(), k
        assert_close(a, e, dtype=dtype, acc_len=304, name=k)


def test_rows_kept_refuse_what_they_cannot_keep() -> None:
    """Rows are kept only for one step of a pack without lengths, projection, peepholes or
    layer norm, for one pack's sizes and dtype: ValueError/TypeError naming ``into``, or the
    core's message for rows of another size."""
    rng = np.random.default_rng(0)
    core = rnnkern._core
    w = [rng.standard_normal(s) for s in ((8, 3), (8, 2), (8,), (8,))]
    pack = core.Pack(rnnkern._functional._LSTM, *w)
    x = rng.standard_normal((2, 1, 3))  # T = 2
    _, _, _, cache = core.forward_packed(pack, x, None, None, None, True)
    with pytest.raises(ValueError, match="into: rows are kept only for one step"):
        core.backward_packed(pack, x, None, cache, None, None, None, core.Rows())
    x1 = rng.standard_normal((1, 1, 3))
    _, _, _, cache1 = core.forward_packed(pack, x1, None, None, None, True)
    rows = core.Rows()
    core.backward_packed(pack, x1, None, cache1, None, np.ones((1, 2)), None, rows)
    other = core.Pack(rnnkern._functional._LSTM, *(rng.standard_normal(s)
                                                    for s in ((12, 3), (12, 3), (12,), (12,))))
    with pytest.raises(ValueError, match="another cell or sizes"):
        core.weight_gradients(other, rows)
    with pytest.raises(TypeError, match="other dtype"):
        f32 = core.Pack(rnnkern._functional._LSTM, *(a.astype(np.float32) for a in w))
        core.weight_gradients(f32, rows)
    peep = core.Pack(rnnkern._functional._LSTM, *w, w_peep=rng.standard_normal((3, 2)))
    _, _, _, cachep = core.forward_packed(peep, x1, None, None, None, True)
    with pytest.raises(ValueError, match="into: rows are kept only for one step"):
        core.backward_packed(peep, x1, None, cachep, None, None, None, core.Rows())

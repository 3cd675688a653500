"""rnnkern.torch.LSTM / GRU / RNN and convert() against torch.nn.LSTM / GRU / RNN.

Outputs, final states and every gradient (input, h0/c0, each parameter) on the same weights across
num_layers 1-3, bias, batch_first, bidirectional, packed sequences (enforce_sorted False and
True), h0 given or not, unbatched input and dropout (eval mode, and seeded training mode: the
masks are torch's own draws), in float32 and float64; training curves of a small classifier;
gradcheck; convert(); and that `import rnnkern` does not import torch. As docs/tolerances.md
asks, float32 results are compared with torch's float64 results on the same weights.

torch is imported at module level on purpose: a missing torch is a failure, not a skip.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from rnnkern_testing import GATES, assert_close, rnn_acc_len, torch_func_results
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnnkern
import rnnkern.torch as rt

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
DTYPES = [torch.float64, torch.float32]
T, B, I, H = 5, 3, 4, 3
UNSORTED = np.array([4, 1, 5])  # includes 1 and T
SORTED = np.array([5, 4, 1])  # for enforce_sorted=True


def classes(cell: str) -> tuple[type[torch.nn.RNNBase], type[torch.nn.RNNBase], dict[str, Any]]:
    """(torch class, rnnkern.torch class, extra constructor kwargs) of a cell name."""
    if cell.startswith("rnn"):
        return torch.nn.RNN, rt.RNN, {"nonlinearity": cell[4:]}
    if cell == "lstm":
        return torch.nn.LSTM, rt.LSTM, {}
    return torch.nn.GRU, rt.GRU, {}


def make_pair(cell: str, dtype: torch.dtype, seed: int = 0,
              **kwargs: Any) -> tuple[torch.nn.RNNBase, torch.nn.RNNBase]:
    """torch's module in float64 and rnnkern's in ``dtype`` with the same weights."""
    tcls, rcls, extra = classes(cell)
    torch.manual_seed(seed)
    ref = tcls(I, H, dtype=torch.float64, **extra, **kwargs)
    ours = rcls(I, H, dtype=dtype, **extra, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def run(module: torch.nn.RNNBase, x: np.ndarray, state: list[np.ndarray] | None,
        lengths: np.ndarray | None, enforce_sorted: bool, gy: np.ndarray,
        gstate: list[np.ndarray], seed: int | None = None) -> dict[str, Any]:
    """Forward (packing x by ``lengths``) and backward of sum(out * gy) + sum(state_n * gstate).

    x (T, B, I), or (B, T, I) with batch_first, or (T, I) unbatched; returns NumPy out (padded,
    in x's layout), state (list), dx, dstate (list, empty without state), grads by parameter
    name, and the PackedSequence output if any. ``seed`` seeds torch's RNG before the forward.
    """
    dtype = module.weight_ih_l0.dtype
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    hs = [torch.tensor(s, dtype=dtype, requires_grad=True) for s in state or []]
    inp: Any = xt
    if lengths is not None:
        inp = pack_padded_sequence(xt, torch.as_tensor(lengths), batch_first=module.batch_first,
                                   enforce_sorted=enforce_sorted)
    hx = None if not hs else hs[0] if len(hs) == 1 else tuple(hs)
    if seed is not None:
        torch.manual_seed(seed)
    out, hn = module(inp, hx)
    packed = out if isinstance(out, PackedSequence) else None
    if packed is not None:
        steps = x.shape[1] if module.batch_first else x.shape[0]
        out, _ = pad_packed_sequence(packed, batch_first=module.batch_first, total_length=steps)
    finals = [hn] if isinstance(hn, torch.Tensor) else list(hn)
    loss = (out * torch.tensor(gy, dtype=dtype)).sum()
    for f, g in zip(finals, gstate):
        loss = loss + (f * torch.tensor(g, dtype=dtype)).sum()
    module.zero_grad()
    loss.backward()
    assert xt.grad is not None
    return {"out": out.detach().numpy(), "state": [f.detach().numpy() for f in finals],
            "dx": xt.grad.numpy(), "dstate": [np.asarray(h.grad) for h in hs],
            "grads": {n: np.asarray(p.grad) for n, p in module.named_parameters()},
            "packed": packed}


def assert_same(got: dict[str, Any], want: dict[str, Any], cell: str, dtype: torch.dtype,
                num_layers: int, directions: int) -> None:
    """Every result of ``run`` within the tolerance policy (rnnkern_testing.assert_close)."""
    npdtype = np.float64 if dtype == torch.float64 else np.float32
    base = "rnn" if cell.startswith("rnn") else cell
    acc = rnn_acc_len(base, T, B, I * directions, H) * num_layers * directions
    for key in ("out", "dx"):
        assert_close(got[key], want[key], dtype=npdtype, acc_len=acc, name=key)
    for key in ("state", "dstate"):
        assert len(got[key]) == len(want[key])
        for i, (g, w) in enumerate(zip(got[key], want[key])):
            assert_close(g, w, dtype=npdtype, acc_len=acc, name=f"{key}[{i}]")
    assert got["grads"].keys() == want["grads"].keys()
    for name, w in want["grads"].items():
        assert_close(got["grads"][name], w, dtype=npdtype, acc_len=acc, name=name)
    if want["packed"] is not None:  # same packing: batch_sizes and both permutations
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            g, w = getattr(got["packed"], field), getattr(want["packed"], field)
            assert (g is None and w is None) or torch.equal(g, w), field


def compare(cell: str, dtype: torch.dtype, *, num_layers: int = 1, bias: bool = True,
            batch_first: bool = False, bidirectional: bool = False, packing: str = "none",
            with_h0: bool = True, dropout: float = 0.0, train: bool = False,
            unbatched: bool = False, steps: int = T) -> None:
    """Run torch's module (float64) and rnnkern's (``dtype``) on the same data and compare
    (``steps`` time steps; packing needs steps = T)."""
    ref, ours = make_pair(cell, dtype, num_layers=num_layers, bias=bias, batch_first=batch_first,
                          bidirectional=bidirectional, dropout=dropout)
    ref.train(train)
    ours.train(train)
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(3)
    lengths = {"none": None, "unsorted": UNSORTED, "sorted": SORTED}[packing]
    shape = (steps, I) if unbatched else (B, steps, I) if batch_first else (steps, B, I)
    x = rng.uniform(-1, 1, shape)
    n_state = 2 if cell == "lstm" else 1
    sshape = (num_layers * D, H) if unbatched else (num_layers * D, B, H)
    state = [rng.uniform(-0.5, 0.5, sshape) for _ in range(n_state)] if with_h0 else None
    gy = rng.uniform(-1, 1, shape[:-1] + (D * H,))
    gstate = [rng.uniform(-1, 1, sshape) for _ in range(n_state)]
    seed = 1234 if train else None
    want = run(ref, x, state, lengths, packing == "sorted", gy, gstate, seed)
    got = run(ours, x, state, lengths, packing == "sorted", gy, gstate, seed)
    assert_same(got, want, cell, dtype, num_layers, D)
    if lengths is not None:  # padded outputs are exactly zero
        t = np.arange(T)[:, None] if not batch_first else np.arange(T)[None, :]
        pad = (t >= lengths[None, :]) if not batch_first else (t >= lengths[:, None])
        assert np.all(got["out"][pad] == 0)


# (num_layers, bias, batch_first, bidirectional, packing, with_h0)
CONFIGS = [
    (1, True, False, False, "none", False),
    (1, True, False, False, "none", True),
    (2, False, True, False, "none", True),
    (1, True, False, True, "none", True),
    (3, True, True, True, "none", False),
    (1, True, False, False, "unsorted", True),
    (2, True, True, True, "unsorted", True),
    (3, False, False, True, "unsorted", False),
    (2, True, False, True, "sorted", True),
    (1, False, True, False, "sorted", False),
]


def _config_id(c: tuple[Any, ...]) -> str:
    L, bias, bf, bi, packing, h0 = c
    return (f"L{L}{'' if bias else '-nobias'}{'-bf' if bf else ''}{'-bi' if bi else ''}"
            f"-{packing}{'-h0' if h0 else ''}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch(cell: str, config: tuple[Any, ...], dtype: torch.dtype) -> None:
    num_layers, bias, batch_first, bidirectional, packing, with_h0 = config
    compare(cell, dtype, num_layers=num_layers, bias=bias, batch_first=batch_first,
            bidirectional=bidirectional, packing=packing, with_h0=with_h0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
def test_unbatched_input(cell: str, dtype: torch.dtype, with_h0: bool) -> None:
    compare(cell, dtype, num_layers=2, bidirectional=True, batch_first=True, with_h0=with_h0,
            unbatched=True)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("shape", ["batched", "batch_first", "unbatched"])
@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_short_sequences(cell: str, shape: str, steps: int) -> None:
    """One time step, bidirectional: the reverse direction of a (1, B, F) array is a view with a
    negative stride that NumPy flags C-contiguous (issue 18); two steps alongside."""
    compare(cell, torch.float64, num_layers=2, bidirectional=True, steps=steps,
            batch_first=shape == "batch_first", unbatched=shape == "unbatched")


@pytest.mark.parametrize("cell", CELLS)
def test_zero_time_steps_raise_torchs_error(cell: str) -> None:
    """torch raises RuntimeError("Expected sequence length to be larger than 0 in RNN")."""
    for batch_first, shape in [(False, (0, B, I)), (False, (0, I)), (True, (B, 0, I))]:
        ref, ours = make_pair(cell, torch.float64, batch_first=batch_first)
        x = torch.rand(shape, dtype=torch.float64)
        with pytest.raises(Exception) as want:
            ref(x)
        assert "sequence length" in str(want.value)  # the case is the one meant
        with pytest.raises(type(want.value), match=re.escape(str(want.value))):
            ours(x)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_eval_mode(cell: str) -> None:
    compare(cell, torch.float64, num_layers=3, bidirectional=True, dropout=0.5, train=False)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("packing", ["none", "unsorted"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_dropout_training_same_masks_as_torch(cell: str, packing: str, dtype: torch.dtype) -> None:
    """Seeded training mode: the masks are torch's own draws, so outputs and gradients match."""
    compare(cell, dtype, num_layers=3, bidirectional=True, dropout=0.4, train=True,
            packing=packing, batch_first=packing == "none")


def test_dropout_training_statistics() -> None:
    """Training-mode dropout: about p of the second layer's inputs are dropped, the rest scaled.

    With w_ih of layer 1 the identity on the first H inputs, no bias, w_hh = 0 and a relu RNN,
    layer 1 outputs relu(dropout(y0)): zero where dropped, y0 / (1 - p) elsewhere.
    """
    p = 0.3
    ours = rt.RNN(I, H, num_layers=2, nonlinearity="relu", bias=False, dropout=p,
                  dtype=torch.float64)
    with torch.no_grad():
        ours.weight_ih_l0.copy_(torch.rand(H, I) + 0.1)  # positive, so y0 > 0 for x > 0
        ours.weight_hh_l0.zero_()
        ours.weight_ih_l1.copy_(torch.eye(H, dtype=torch.float64))
        ours.weight_hh_l1.zero_()
    x = torch.rand(60, 50, I, dtype=torch.float64) + 0.1  # (T, B, I) positive
    ours.eval()
    y0, _ = ours(x)  # eval: y0 itself
    ours.train()
    torch.manual_seed(0)
    y1, _ = ours(x)
    kept = y1 != 0
    frac_dropped = 1.0 - kept.double().mean().item()
    n = y1.numel()
    assert abs(frac_dropped - p) < 4 * (p * (1 - p) / n) ** 0.5, frac_dropped
    torch.testing.assert_close(y1[kept], y0[kept] / (1 - p))


def test_dropout_single_layer_warns_and_does_nothing() -> None:
    with pytest.warns(UserWarning, match="dropout"):
        ours = rt.GRU(I, H, dropout=0.5, dtype=torch.float64)
    x = torch.rand(T, B, I, dtype=torch.float64)
    ours.eval()
    y_eval, _ = ours(x)
    ours.train()
    y_train, _ = ours(x)
    assert torch.equal(y_eval, y_train)


# ----------------------------------------------------------------------------- modules


@pytest.mark.parametrize("cell", CELLS)
def test_parameters_and_init_are_torchs(cell: str) -> None:
    """Same parameter names, shapes and (seeded) initial values as torch's module."""
    tcls, rcls, extra = classes(cell)
    kwargs = {"num_layers": 2, "bidirectional": True, "bias": True, **extra}
    torch.manual_seed(7)
    ref = tcls(I, H, **kwargs)
    torch.manual_seed(7)
    ours = rcls(I, H, **kwargs)
    assert isinstance(ours, tcls)
    got, want = dict(ours.named_parameters()), dict(ref.named_parameters())
    assert list(got) == list(want)
    for name, w in want.items():
        assert torch.equal(got[name], w), name
    G = GATES["rnn" if cell.startswith("rnn") else cell]
    assert got["weight_hh_l1_reverse"].shape == (G * H, H)
    assert got["weight_ih_l1"].shape == (G * H, 2 * H)
    bound = 1.0 / H**0.5
    assert all(float(p.detach().abs().max()) <= bound for p in got.values())
    assert repr(ours).split("(", 1)[1] == repr(ref).split("(", 1)[1]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_no_grad_inference(cell: str) -> None:
    _, ours = make_pair(cell, torch.float32, num_layers=2, bidirectional=True)
    x = torch.rand(T, B, I)
    out, _ = ours(x)
    with torch.no_grad():
        out2, _ = ours(x)
    assert out2.grad_fn is None
    assert torch.equal(out, out2)


def test_batch_first_output_is_a_view_like_torchs() -> None:
    ref, ours = make_pair("gru", torch.float64, batch_first=True)
    x = torch.rand(B, T, I, dtype=torch.float64)
    assert ours(x)[0].is_contiguous() == ref(x)[0].is_contiguous()


def test_errors() -> None:
    with pytest.raises(ValueError, match="proj_size"):  # torch's own check
        rt.LSTM(I, H, proj_size=H)
    with pytest.raises(TypeError, match="dtype"):
        rt.GRU(I, H, dtype=torch.float16)
    ref, ours = make_pair("lstm", torch.float64)
    x = torch.rand(T, B, I, dtype=torch.float64)
    with pytest.raises(TypeError, match="input: dtype"):
        ours(x.half())
    with pytest.raises(TypeError, match="input: expected a torch.Tensor"):
        ours(x.numpy())
    with pytest.raises(ValueError, match="input: expected a 2-D"):
        ours(x[None])
    with pytest.raises(TypeError, match="hx: expected a tuple"):
        ours(x, torch.zeros(1, B, H, dtype=torch.float64))
    h = torch.zeros(1, B, H, dtype=torch.float64)
    with pytest.raises(TypeError, match="c_0: dtype"):
        ours(x, (h, h.float()))
    # Shape errors are torch's own, with its types and messages.
    for bad_x, hx in [(x[..., :2], None), (x, (h[:, :2], h)), (x, (h, h[..., :2]))]:
        with pytest.raises(Exception) as want:
            ref(bad_x, hx)
        with pytest.raises(type(want.value), match=re.escape(str(want.value))):
            ours(bad_x, hx)
    ours.half()
    with pytest.raises(TypeError, match="weight_ih_l0: dtype"):
        ours(x.half())


def test_in_place_change_before_backward_raises() -> None:
    _, ours = make_pair("gru", torch.float64)
    out, _ = ours(torch.rand(T, B, I, dtype=torch.float64))
    with torch.no_grad():
        ours.weight_hh_l0.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("cell", CELLS)
def test_eager_path_equals_the_operator(cell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager calls skip torch.ops.rnnkern.stack (rnnkern.torch._StackFunction, or no autograd
    node under no_grad): outputs, final states and every gradient are the operator's, bit for
    bit (2 layers, bidirectional, lengths, h0 given, a dropout mask, and under no_grad)."""
    torch.manual_seed(0)
    _, ours = make_pair(cell, torch.float64, num_layers=2, bidirectional=True, dropout=0.5)
    x = torch.rand(T, B, I, dtype=torch.float64)
    h0 = torch.rand(4, B, H, dtype=torch.float64)
    hx = (h0, torch.rand(4, B, H, dtype=torch.float64)) if cell == "lstm" else h0

    def run() -> list[torch.Tensor]:
        torch.manual_seed(1)  # the same dropout masks
        xg = x.clone().requires_grad_()
        states = [t.clone().requires_grad_() for t in (hx if cell == "lstm" else (hx,))]
        ours.zero_grad()
        packed = pack_padded_sequence(xg, torch.tensor(UNSORTED), enforce_sorted=False)
        out, h_n = ours(packed, tuple(states) if cell == "lstm" else states[0])
        finals = list(h_n) if cell == "lstm" else [h_n]
        (out.data.sum() + sum((f * f).sum() for f in finals)).backward()
        with torch.no_grad():
            y_eval = ours.eval()(x, hx)[0]
        ours.train()
        return [out.data, *finals, xg.grad, *(s.grad for s in states),
                *(p.grad for p in ours.parameters()), y_eval]

    calls: list[int] = []
    apply = rt._StackFunction.apply
    monkeypatch.setattr(rt._StackFunction, "apply", lambda *a: calls.append(1) or apply(*a))
    eager = run()
    assert calls == [1]  # the training call; the no_grad one runs without autograd
    monkeypatch.setattr(rt, "_eager", lambda tensors: False)
    for got, want in zip(run(), eager, strict=True):
        assert torch.equal(got, want)
    assert calls == [1]


def test_double_backward_raises_clearly() -> None:
    _, ours = make_pair("lstm", torch.float64)
    x = torch.rand(T, B, I, dtype=torch.float64, requires_grad=True)
    out, _ = ours(x)
    (gx,) = torch.autograd.grad((out**2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_gradcheck(cell: str, packed: bool) -> None:
    """gradcheck in float64 of output, h_n (and c_n) w.r.t. x, h0 (c0) and every parameter."""
    _, rcls, extra = classes(cell)
    torch.manual_seed(0)
    module = rcls(2, 2, num_layers=2, bidirectional=True, bias=packed, batch_first=not packed,
                  dtype=torch.float64, **extra)
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    n_state = 2 if cell == "lstm" else 1
    shape = (3, 3, 2)  # (T, B, I), or (B, T, I) with batch_first
    x = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    states = [torch.rand(4, 3, 2, dtype=torch.float64, requires_grad=True)
              for _ in range(n_state)]  # (L*D, B, H)

    def f(x: torch.Tensor, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        st, ps = args[:n_state], args[n_state:]
        inp: Any = x
        if packed:
            inp = pack_padded_sequence(x, torch.tensor([2, 3, 1]), enforce_sorted=False)
        hx = st[0] if n_state == 1 else tuple(st)
        out, hn = torch.func.functional_call(module, dict(zip(names, ps)), (inp, hx))
        if packed:
            out = pad_packed_sequence(out)[0]
        return (out, *((hn,) if n_state == 1 else hn))

    assert torch.autograd.gradcheck(f, (x, *states, *params))


# ----------------------------------------------------------------------------- training


class Classifier(torch.nn.Module):
    """Embedding -> LSTM or GRU -> linear on the last layer's final state (batch_first)."""

    def __init__(self, cell: str, vocab: int = 30, emb: int = 8, hidden: int = 16,
                 n_classes: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, emb)
        cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
        self.rnn = cls(emb, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(2 * hidden, n_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        e: Any = self.embed(tokens)  # (B, T, emb)
        if lengths is not None:
            e = pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False)
        _, hn = self.rnn(e)
        h = hn[0] if isinstance(hn, tuple) else hn  # (L*D, B, hidden)
        return self.head(torch.cat([h[-2], h[-1]], dim=1))  # (B, n_classes)


def train_losses(model: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor,
                 lengths: torch.Tensor | None, steps: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens, lengths), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_training_curve_matches_torch(cell: str, packed: bool) -> None:
    """A float32 classifier trained 30 SGD steps with and without convert(): same losses."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 30, (24, 10), generator=gen)  # (B, T)
    lengths = torch.randint(1, 11, (24,), generator=gen)  # (B,)
    last = lengths - 1 if packed else torch.full((24,), 9)  # (B,) each sequence's last step
    labels = tokens[torch.arange(24), last] % 3  # learnable: the class of the last token
    torch.manual_seed(0)
    ref = Classifier(cell)
    ours = rt.convert(copy.deepcopy(ref))
    assert isinstance(ours.rnn, rt.LSTM if cell == "lstm" else rt.GRU)
    want = train_losses(ref, tokens, labels, lengths if packed else None, 30)
    got = train_losses(ours, tokens, labels, lengths if packed else None, 30)
    assert want[-1] < 0.75 * want[0]  # it learns, so the comparison means something
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=name)


# ----------------------------------------------------------------------------- convert


class Nested(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoders = torch.nn.ModuleList([torch.nn.LSTM(I, H), torch.nn.GRU(I, H)])
        self.blocks = torch.nn.ModuleDict({
            "deep": torch.nn.Sequential(torch.nn.Linear(I, I),
                                        torch.nn.RNN(I, H, nonlinearity="relu", bias=False))})
        self.custom = _MyLSTM(I, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.encoders[0](x)[0], self.encoders[1](x)[0], self.blocks["deep"](x)[0],
                self.custom(x)[0]]
        return torch.cat(outs, dim=2)


class _MyLSTM(torch.nn.LSTM):
    """A user subclass: convert() leaves it alone."""


def test_convert_nested() -> None:
    torch.manual_seed(0)
    model = Nested()
    x = torch.rand(T, B, I)
    want = model(x)
    params_before = list(model.parameters())
    keys_before = list(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.blocks["deep"][1].eval()
    assert rt.convert(model) is model
    assert type(model.encoders[0]) is rt.LSTM
    assert type(model.encoders[1]) is rt.GRU
    rnn = model.blocks["deep"][1]
    assert type(rnn) is rt.RNN and rnn.nonlinearity == "relu" and not rnn.bias
    assert not rnn.training and model.encoders[0].training
    assert type(model.custom) is _MyLSTM
    assert list(model.state_dict()) == keys_before
    after = list(model.parameters())
    assert len(after) == len(params_before) and all(a is b for a, b in zip(after, params_before))
    torch.testing.assert_close(model(x), want)
    # the optimizer built before convert() still trains the converted modules' parameters
    w = model.encoders[1].weight_hh_l0
    w0 = w.detach().clone()
    model(x).sum().backward()
    opt.step()
    assert not torch.equal(w, w0)
    # a converted model converts to itself
    assert rt.convert(model) is model and type(model.encoders[0]) is rt.LSTM


def test_convert_top_level_and_errors() -> None:
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(I, H, num_layers=2, batch_first=True, dropout=0.2, bidirectional=True,
                         dtype=torch.float64)
    new = rt.convert(lstm)
    assert type(new) is rt.LSTM and new.dropout == 0.2 and new.batch_first and new.bidirectional
    assert new.weight_ih_l1_reverse is lstm.weight_ih_l1_reverse
    with pytest.warns(UserWarning, match="dropout"):
        single = torch.nn.GRU(I, H, dropout=0.3)
    assert type(rt.convert(single)) is rt.GRU  # without repeating torch's warning
    with pytest.raises(TypeError, match=r"model\.0: weight_ih_l0: dtype"):
        rt.convert(torch.nn.Sequential(torch.nn.GRU(I, H, dtype=torch.float16)))
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        rt.convert("lstm")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- optional torch


def run_python(code: str, *path: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter importing this rnnkern (after the folders ``path``)."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(rnnkern.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, package_dir])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=False, timeout=120)


def test_import_rnnkern_does_not_import_torch() -> None:
    res = run_python("import sys, numpy as np, rnnkern\n"
                     "rnnkern.gru_forward(np.ones((2, 1, 3)), None, np.ones((6, 3)),"
                     " np.ones((6, 2)), None, None)\n"
                     "assert 'torch' not in sys.modules, 'torch was imported'\n"
                     "import rnnkern.torch\n"
                     "import torch\n"
                     "assert rnnkern.torch.torch is torch and hasattr(torch, 'autograd')\n"
                     "print('ok')\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@pytest.mark.parametrize("shadow", ["raises", "empty"])
def test_import_without_torch_says_how_to_install(tmp_path: Any, shadow: str) -> None:
    """Without a working torch, `import rnnkern.torch` names the extra to install.

    A `torch` package earlier on the path stands in for a missing torch: one whose import raises
    ImportError, or an empty one (as a half-removed install leaves: `import torch` works and
    `torch.nn` is missing, the error issue 18 saw).
    """
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is not installed (test stand-in)')\n" if shadow == "raises"
        else "")
    res = run_python("import rnnkern\n"
                     "try:\n"
                     "    import rnnkern.torch\n"
                     "except ModuleNotFoundError as e:\n"
                     "    print(type(e).__name__, e.name, '|', e)\n", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ModuleNotFoundError torch |"), res.stdout
    assert 'pip install "rnnkern[torch]"' in res.stdout


def test_a_weight_changed_through_data_is_seen() -> None:
    """A write through ``.data`` (no version bump) or a NumPy view: the next call repacks, and
    the output follows the new weights (the pack cache compares the weights' bytes)."""
    torch.manual_seed(0)
    m = rnnkern.torch.LSTM(4, 5)
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        y0, _ = m(x)
        m.weight_hh_l0.data.mul_(0.5)
        y1, _ = m(x)
        ref = torch.nn.LSTM(4, 5)
        ref.load_state_dict(m.state_dict())
        assert not torch.equal(y0, y1)
        torch.testing.assert_close(y1, ref(x)[0])
        m.weight_ih_l0.numpy()[0, 0] += 1.0  # one element, through a NumPy view
        ref.load_state_dict(m.state_dict())
        torch.testing.assert_close(m(x)[0], ref(x)[0])


def test_a_model_made_under_inference_mode() -> None:
    """Parameters made under torch.inference_mode are inference tensors, without a version
    counter: the stack and the cells run on them (torch's results), and an in-place change of
    a weight in inference mode is seen by the digest (by the cell at its next unchained
    step)."""
    torch.manual_seed(0)
    with torch.inference_mode():
        m, ref = rnnkern.torch.GRU(4, 5, num_layers=2), torch.nn.GRU(4, 5, num_layers=2)
        ref.load_state_dict(m.state_dict())
        cell, ref_cell = rnnkern.torch.LSTMCell(4, 5), torch.nn.LSTMCell(4, 5)
        ref_cell.load_state_dict(cell.state_dict())
        x = torch.randn(3, 2, 4)
        for _ in range(2):
            torch.testing.assert_close(m(x)[0], ref(x)[0])
            state, want = cell(x[0]), ref_cell(x[0])
            torch.testing.assert_close(cell(x[1], state), ref_cell(x[1], want))
            for a, b in ((m, ref), (cell, ref_cell)):
                for w in (a.weight_hh_l0 if a is m else a.weight_hh,
                          b.weight_hh_l0 if b is ref else b.weight_hh):
                    w.mul_(0.5)


def test_a_bfloat16_weight_changed_through_data_is_seen() -> None:
    """bfloat16 weights are digested as they are (16-bit words): a change of one element's
    lowest bit through ``.data`` repacks, and the output is a fresh module's on the new
    weights."""
    from rnnkern.torch import _PACKS
    torch.manual_seed(0)
    m = rnnkern.torch.convert(torch.nn.GRU(8, 6)).to(torch.bfloat16)
    x = torch.randn(4, 1, 8, dtype=torch.bfloat16)

    def pack() -> object:
        return next(e.pack for k, e in _PACKS.items() if id(m.weight_hh_l0) in k)

    with torch.no_grad():
        m(x)
        before = pack()
        m(x)
        assert pack() is before
        bits = m.weight_hh_l0.data.view(torch.int16)
        bits[3, 2] ^= 1
        y1, _ = m(x)
        assert pack() is not before
        fresh = rnnkern.torch.convert(torch.nn.GRU(8, 6)).to(torch.bfloat16)
        fresh.load_state_dict(m.state_dict())
        assert torch.equal(y1, fresh(x)[0])


@pytest.mark.parametrize("cell", CELLS)
def test_torch_func_transforms_run_torch_s_module(cell: str) -> None:
    """Under torch.func the tensors are wrapped (no storage for the kernels): torch's own
    forward runs, so grad and jacrev through functional_call give torch's results, and vmap,
    which torch's modules do not support, torch's error."""
    from torch.func import functional_call
    x = torch.randn(T, B, I, dtype=torch.float64)

    def loss(module: Any, p: Any, xb: Any) -> Any:
        return functional_call(module, p, (xb,))[0].sin().sum()

    theirs, ours = (torch_func_results(m, loss, x, x, 1, "weight_hh_l1_reverse")
                    for m in make_pair(cell, torch.float64, num_layers=2, bidirectional=True))
    assert theirs[2] is not None and ours[2] == theirs[2]
    for a, b in zip(ours[:2], theirs[:2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

"""rnnkern.torch.RNNCell / LSTMCell / GRUCell against torch's cells: results, autograd, errors,
edge cases, convert(), and packs that never go stale under torch optimizers."""
from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch  # a peer: missing fails, never skips
from rnnkern_testing import torch_func_results

import rnnkern.torch as rt  # noqa: E402

PAIRS = {"rnn_tanh": (rt.RNNCell, torch.nn.RNNCell, {}),
         "rnn_relu": (rt.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
         "lstm": (rt.LSTMCell, torch.nn.LSTMCell, {}),
         "gru": (rt.GRUCell, torch.nn.GRUCell, {})}


def pair(name: str, I: int, H: int, dtype: Any = torch.float64, bias: bool = True,
         seed: int = 0) -> tuple[Any, Any]:
    ours, theirs, kw = PAIRS[name]
    torch.manual_seed(seed)
    t = theirs(I, H, bias=bias, dtype=dtype, **kw)
    c = ours(I, H, bias=bias, dtype=dtype, **kw)
    c.load_state_dict(t.state_dict())
    return c, t


def first(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def loop(cell: Any, xs: Any, hx: Any) -> tuple[Any, list[Any]]:
    """Steps fed back; the loss uses h only (LSTM: c's gradient comes from the steps alone)."""
    loss, outs = 0, []
    for t in range(xs.shape[0]):
        hx = cell(xs[t], hx)
        outs.append(hx)
        loss = loss + (first(hx) * (t + 1)).sin().sum()
    return loss, outs


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", PAIRS)
def test_loop_and_autograd_match_torch(name: str, dtype: Any, unbatched: bool) -> None:
    T, B, I, H = 4, 3, 5, 6
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-4,
                                                                         "atol": 2e-5}
    grads = []
    for module in pair(name, I, H, dtype):
        torch.manual_seed(1)
        xs = torch.randn((T, I) if unbatched else (T, B, I), dtype=dtype, requires_grad=True)
        s = (H,) if unbatched else (B, H)
        h0 = torch.randn(s, dtype=dtype, requires_grad=True)
        c0 = torch.randn(s, dtype=dtype, requires_grad=True)
        loss, outs = loop(module, xs, (h0, c0) if name == "lstm" else h0)
        loss.backward()
        grads.append([xs.grad, h0.grad, *(p.grad for p in module.parameters()),
                      *(o for out in outs for o in (out if isinstance(out, tuple) else (out,)))])
    assert grads[0][1] is not None and grads[1][1] is not None
    for a, b in zip(*grads):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)


def test_one_output_gradient_and_no_state() -> None:
    """LSTMCell with hx None and a loss on c only; GRU with hx None: torch's gradients."""
    for name in ("lstm", "gru", "rnn_tanh"):
        results = []
        for module in pair(name, 3, 4):
            torch.manual_seed(2)
            x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
            out = module(x)
            (out[1] if name == "lstm" else out).sum().backward()
            results.append((x.grad, module.weight_hh.grad))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b)


ERRORS = [
    ("input size", lambda I, H: (torch.randn(2, I + 1), None)),
    ("3-D input", lambda I, H: (torch.randn(1, 2, I), None)),
    ("hx batch", lambda I, H: (torch.randn(2, I), torch.randn(3, H))),
    ("hx size", lambda I, H: (torch.randn(2, I), torch.randn(2, H + 1))),
    ("hx 1-D with 2-D input", lambda I, H: (torch.randn(2, I), torch.randn(H))),
    ("hx dtype", lambda I, H: (torch.randn(2, I), torch.randn(2, H, dtype=torch.float64))),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e[0])
@pytest.mark.parametrize("name", PAIRS)
def test_errors_are_torch_s(name: str, error: Any) -> None:
    ours, theirs = pair(name, 3, 4, torch.float32)
    x, h = error[1](3, 4)
    hx = None if h is None else ((h, h) if name == "lstm" else h)
    messages = []
    for module in (theirs, ours):
        with pytest.raises(Exception) as info:
            module(x, hx)
        messages.append((type(info.value), str(info.value)))
    assert messages[0] == messages[1]


def test_zero_sizes_like_torch() -> None:
    for name in PAIRS:
        for I, H, B in ((3, 0, 2), (0, 4, 2), (3, 4, 0)):
            ours, theirs = pair(name, I, H)
            x = torch.randn(B, I, dtype=torch.float64)
            torch.testing.assert_close(first(ours(x)), first(theirs(x)))


def test_torch_optimizer_steps_reach_the_next_call() -> None:
    """A torch optimizer changes the parameters in place between steps: every call uses the new
    weights (as torch's own cell on the same Parameters), never the old pack."""
    for name in PAIRS:
        ours, theirs = pair(name, 5, 6)
        for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
            p_theirs.data = p_ours.data  # the same memory, torch's cell reads it
        opt = torch.optim.Adam(ours.parameters(), lr=0.1)
        x = torch.randn(3, 5, dtype=torch.float64)
        for _ in range(3):
            opt.zero_grad()
            first(ours(x)).sum().backward()
            opt.step()
            with torch.no_grad():
                torch.testing.assert_close(first(ours(x)), first(theirs(x)), rtol=1e-12, atol=1e-14)
        with torch.no_grad():
            ours.weight_hh.mul_(0.5)  # any in-place change bumps the version
            torch.testing.assert_close(first(ours(x)), first(theirs(x)), rtol=1e-12, atol=1e-14)
            ours.load_state_dict({k: v * 2 for k, v in ours.state_dict().items()})
            torch.testing.assert_close(first(ours(x)), first(theirs(x)), rtol=1e-12, atol=1e-14)


def test_in_place_change_before_backward_raises_torch_s_error() -> None:
    ours, _ = pair("lstm", 3, 4)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h, c = ours(x)
    with torch.no_grad():
        ours.weight_ih.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h.sum().backward()


def test_double_backward_raises() -> None:
    ours, _ = pair("gru", 3, 4)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(ours(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_convert_swaps_cells_and_keeps_the_parameters() -> None:
    model = torch.nn.ModuleDict({"a": torch.nn.LSTMCell(3, 4), "b": torch.nn.GRUCell(4, 5),
                                 "c": torch.nn.RNNCell(4, 5, nonlinearity="relu", bias=False)})
    params = {k: id(v) for k, v in model.named_parameters()}
    model.eval()
    rt.convert(model)
    assert type(model["a"]) is rt.LSTMCell and type(model["b"]) is rt.GRUCell
    assert type(model["c"]) is rt.RNNCell and model["c"].nonlinearity == "relu"
    assert {k: id(v) for k, v in model.named_parameters()} == params
    assert not model["a"].training
    assert model["c"].bias_ih is None


@pytest.mark.parametrize("name", PAIRS)
def test_strided_and_unbatched_arguments_match_torch(name: str) -> None:
    """Inputs that are not C-contiguous (copied for the kernels) and unbatched ones, with and
    without autograd: torch's results and gradients."""
    results = []
    for module in pair(name, 3, 4):
        torch.manual_seed(4)
        x = torch.randn(3, 2, dtype=torch.float64).t().requires_grad_()  # (2, 3), strided
        h = torch.randn(4, 2, dtype=torch.float64).t()  # (2, 4), strided
        hx = (h, h) if name == "lstm" else h
        with torch.no_grad():
            inference = module(x, hx)
        out = first(module(x, hx))
        out.sum().backward()
        xu = torch.randn(3, dtype=torch.float64)
        unbatched = module(xu, (h[0], h[1]) if name == "lstm" else h[0])
        results.append((first(inference), out, x.grad, module.weight_ih.grad, first(unbatched)))
    for a, b in zip(*results):
        torch.testing.assert_close(a.detach(), b.detach())


@pytest.mark.parametrize("name", PAIRS)
def test_writes_that_bump_no_version_reach_the_next_call(name: str) -> None:
    """Writes through ``.data`` and through a NumPy view change no version counter: the next
    call still sees them (the pack is checked against the weights' bits)."""
    ours, theirs = pair(name, 5, 6)
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        p_theirs.data = p_ours.data  # the same memory, torch's cell reads it
    x = torch.randn(3, 5, dtype=torch.float64)
    versions = [p._version for p in ours.parameters()]
    for write in (lambda: ours.weight_hh.data.sub_(0.25 * ours.weight_hh.data.sign()),
                  lambda: ours.weight_ih.detach().numpy().__setitem__((0, 0), 3.0),
                  lambda: ours.bias_hh.data.add_(0.5)):
        with torch.no_grad():
            first(ours(x))  # packed before the write
        write()
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                torch.testing.assert_close(first(ours(x)), first(theirs(x)), rtol=1e-12,
                                           atol=1e-14)
    assert [p._version for p in ours.parameters()] == versions


@pytest.mark.parametrize("flush_rows", [4096, 3])
@pytest.mark.parametrize("name", ["lstm", "gru", "rnn_relu"])
def test_weight_gradients_of_partial_repeated_and_retained_backwards(
        name: str, flush_rows: int, monkeypatch: Any) -> None:
    """The steps' weight gradients made once per backward pass from the rows they kept (or,
    with ``flush_rows`` 3, every 3 rows kept, as a long loop does every 4096): grads accumulate
    over passes and loops as torch's; a pass that needs only x's gradient or only a weight's; a
    graph backwarded twice (retain_graph); two loops' graphs alive at once."""
    from rnnkern import torch_cells
    monkeypatch.setattr(torch_cells._Kept, "FLUSH_ROWS", flush_rows)
    results = []
    for module in pair(name, 3, 4):
        torch.manual_seed(3)
        xs = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
        loss, _ = loop(module, xs, None)
        loss.backward(retain_graph=True)
        loss.backward()
        loss1, _ = loop(module, xs * 2, None)
        loss2, _ = loop(module, xs, None)
        (dx,) = torch.autograd.grad(loss2, xs, retain_graph=True)
        (dw,) = torch.autograd.grad(loss2, module.weight_hh)
        loss1.backward()
        results.append((dx, dw, xs.grad, *(p.grad for p in module.parameters())))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", PAIRS)
def test_a_chain_of_steps_compares_the_weights_once(name: str, monkeypatch: Any) -> None:
    """Steps fed the very state the previous step returned reuse its pack without comparing the
    weights' bytes; an in-place change of a parameter (a new version, as an optimizer's step)
    ends the chain, so the next step uses the new weights; a write through ``.data`` is seen
    at the first step not fed the previous step's state."""
    from rnnkern import torch_cells
    ours, theirs = pair(name, 5, 6)
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        p_theirs.data = p_ours.data  # the same memory, torch's cell reads it
    compared: list[int] = []
    real = torch_cells._pack

    def counting(*args: Any) -> Any:
        compared.append(1)
        return real(*args)
    monkeypatch.setattr(torch_cells, "_pack", counting)
    xs = torch.randn(6, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        hx, want = None, None
        for t in range(6):
            if t == 3:
                ours.weight_hh.mul_(0.5)  # in place: a new version
            hx, want = ours(xs[t], hx), theirs(xs[t], want)
            torch.testing.assert_close(first(hx), first(want), rtol=1e-12, atol=1e-14)
        assert len(compared) == 2  # the first step, and the one after the change
        ours.bias_ih.data.add_(0.5)  # no new version
        state = tuple(s.clone() for s in hx) if isinstance(hx, tuple) else hx.clone()
        torch.testing.assert_close(first(ours(xs[0], state)), first(theirs(xs[0], state)),
                                   rtol=1e-12, atol=1e-14)
        assert len(compared) == 3


def _bias_version(ours: Any, theirs: Any) -> None:
    with torch.no_grad():
        ours.bias_hh.add_(0.5)  # in place: a new version of the last weight


def _new_memory(ours: Any, theirs: Any) -> None:
    ours.weight_ih.data = ours.weight_ih.data * 2  # other memory, the same version
    theirs.weight_ih.data = ours.weight_ih.data


def _no_grad_weight(ours: Any, theirs: Any) -> None:
    ours.bias_ih.requires_grad_(False)  # the token's weights change
    theirs.bias_ih.requires_grad_(False)


@pytest.mark.parametrize("change", [_bias_version, _new_memory, _no_grad_weight])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_a_chain_ends_when_any_weight_changes(name: str, change: Any) -> None:
    """Each part of the weights' key (``torch_cells._key``) ends a chain: a bias's version, a
    weight's memory, a weight's requires_grad; the steps after it use the weights as they are,
    and gradients still match torch's. (An in-place change of a weight before the backward
    raises, as documented: every weight is saved, the biases too, which torch does not save.)"""
    ours, theirs = pair(name, 5, 6)
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        p_theirs.data = p_ours.data  # the same memory, torch's cell reads it
    xs = torch.randn(5, 3, 5, dtype=torch.float64)
    hx, want = None, None
    for t in range(5):
        if t == 2:
            change(ours, theirs)
        hx, want = ours(xs[t], hx), theirs(xs[t], want)
        torch.testing.assert_close(first(hx), first(want), rtol=1e-12, atol=1e-14)
    if change is _bias_version:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            first(hx).sum().backward()
        return
    first(hx).sum().backward()
    first(want).sum().backward()
    for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters()):
        assert (p_ours.grad is None) == (p_theirs.grad is None)
        if p_ours.grad is not None:
            torch.testing.assert_close(p_ours.grad, p_theirs.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name", PAIRS)
def test_a_chain_reads_a_state_moved_by_data_assignment(name: str, grad: bool) -> None:
    """A step fed the state the previous step returned, after ``.data =`` gave that state other
    memory (no new version), reads the new memory: torch's results."""
    ours, theirs = pair(name, 5, 6)
    xs = torch.randn(2, 3, 5, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        hx = ours(xs[0])
        for s in hx if isinstance(hx, tuple) else (hx,):
            s.data = s.detach() * 2 + 1
        want = tuple(s.detach() for s in hx) if isinstance(hx, tuple) else hx.detach()
        torch.testing.assert_close(first(ours(xs[1], hx)), first(theirs(xs[1], want)),
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("first", ["rnnkern.torch_cells", "rnnkern.torch"])
def test_either_module_imports_first(first: str) -> None:
    """rnnkern.torch and rnnkern.torch_cells import each other: a fresh interpreter may import
    either first."""
    code = f"import {first}; import rnnkern.torch as rt; assert rt.LSTMCell.__module__ == " \
           "'rnnkern.torch_cells'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", PAIRS)
def test_torch_func_transforms_run_torch_s_cell(name: str) -> None:
    """Under torch.func the tensors are wrapped (no storage for the kernels): torch's own cell
    runs, so grad and jacrev through functional_call give torch's results, and vmap, which
    torch's cells do not support, torch's error."""
    from torch.func import functional_call
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def loss(cell: Any, p: Any, xb: Any) -> Any:
        return first(functional_call(cell, p, (xb,))).sin().sum()

    got = []
    for cell in pair(name, 3, 4):
        with torch.no_grad():
            cell(x[0])  # a pack and a chain from before the transforms
        got.append(torch_func_results(cell, loss, x[0], x, 0, "weight_hh"))
    ours, theirs = got
    assert theirs[2] is not None and ours[2] == theirs[2]
    for a, b in zip(ours[:2], theirs[:2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", PAIRS)
def test_a_long_training_loop_matches_torch(name: str) -> None:
    """640 kept rows per pass (B = 16, T = 40: two blocks of 256 and a short last one) on the
    default threads, float32: the weight gradients' one product per pass over several blocks
    (a race there once made them 30% wrong) against torch's cell, and the same bits again."""
    T, B, I, H = 40, 16, 24, 64
    c, t = pair(name, I, H, torch.float32)
    torch.manual_seed(2)
    xs = torch.randn(T, B, I)
    got = []
    for module in (c, t, c):
        module.zero_grad()
        loss, _ = loop(module, xs, None)
        loss.backward()
        got.append([p.grad.clone() for p in module.parameters()])
    for a, b, again in zip(*got):
        assert torch.equal(a, again)
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))

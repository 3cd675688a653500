"""PyTorch drop-in cells on rnnkern's kernels: ``rnnkern.torch.RNNCell``, ``LSTMCell``, ``GRUCell``.

They subclass torch's cells (same constructor, parameters, initialization, repr). ``forward`` runs
one step on the kernels with the weights packed once (``rnnkern.torch``'s packs): the pack is
made again when a parameter's bytes (their digest, so writes through ``.data`` or a NumPy view
are seen too), version counter or memory, or the ISA changed. The digest is taken at every call
but within a chain of steps: a step fed the very state (h, or h and c) that the cell's previous
step returned, with every parameter the same object at the same version counter and memory,
reuses that step's pack. An optimizer step, ``load_state_dict`` or any in-place torch operation
on a parameter bumps its version and ends the chain; a write through ``.data`` or a NumPy view
between two chained steps (or to a parameter made under torch.inference_mode, which has no
version counter) is not seen until the chain ends (a state not returned by the previous step,
or none).

Autograd as torch's: the step's inputs and the weights are saved, so changing one in place
before the backward raises torch's own error. In training the steps take a token (``_Link``) in
place of the weights: each step's backward keeps the rows its weight gradients need (its dgates,
x and h) in the core (``_core.Rows``), and the token's backward, after every step's of the pass,
makes the weight gradients in one product over all of them (``_core.weight_gradients``), handed
to autograd once.

What the kernels do not run goes to torch's own cell, unchanged: anything but CPU float32 /
float64 tensors of the parameters' dtype with exactly the expected shapes (so a wrong shape gets
torch's own error message), an empty batch or a zero hidden size; bfloat16 cells, CPU
autocast (with torch's dtypes) unless ``rnnkern.torch.convert`` gave the cell a precision, and
calls under a ``torch.func`` transform (vmap, grad, jacrev: the kernels see no batched or
dual tensors).
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

from . import _core
from . import _functional as F

__all__ = ["GRUCell", "LSTMCell", "RNNCell"]

Tensor = torch.Tensor
_FLOAT_DTYPES = (torch.float32, torch.float64)


def _np(t: Tensor | None) -> Any:
    """The NumPy view of a CPU tensor (None stays None)."""
    return None if t is None else (t.detach() if t.requires_grad else t).numpy()


def _step(steps: _Steps, x: Tensor, h0: Tensor | None, c0: Tensor | None, states: Any,
          train: bool) -> tuple[Tensor, Tensor | None, Any]:
    """One step on the kernels with ``steps.pack`` (a _core.Pack), arguments of the right dtypes
    and shapes (``_fits``): (h, c or None, the cache (x (1, B, I), buffers) or None), h and c
    shaped like h0. ``states``: the NumPy views of h0 and c0 if known (a chain's), else None.
    Keeps h's and c's views and addresses in ``steps.views`` for the next step."""
    pack = steps.pack
    xa: Any = (x.detach() if x.requires_grad else x).numpy()
    h0a, c0a = states or (_np(h0), _np(c0))
    out = pack.step(xa, h0a, c0a, train)
    if out is None:  # not C-contiguous: contiguous copies
        xa, h0a, c0a = (None if a is None else np.ascontiguousarray(a) for a in (xa, h0a, c0a))
        out = pack.step(xa, h0a, c0a, train)
        assert out is not None
    h, c = out[0], out[1]
    ht, ct = torch.from_numpy(h), None if c is None else torch.from_numpy(c)
    steps.views = (h, c, ht.data_ptr(), None if ct is None else ct.data_ptr())  # one snapshot
    return ht, ct, (pack, *out[2:]) if train else None


class _Link(torch.autograd.Function):
    """apply(sums, w_ih, w_hh, b_ih, b_hh) -> an empty token that the steps take in place of the
    weights. ``sums``: graph task id -> the pass's ``_Kept`` (the steps' pack, the rows that
    they keep). The token's backward runs after every step's of the pass and hands autograd the
    weight gradients of all of them, one product over their rows (``_core.weight_gradients``),
    not one (G*H, I + H) sum per step. It saves no tensors (a token serves several graphs; their
    backwards may free theirs) but checks the weights' versions itself, with torch's message."""

    @staticmethod
    def forward(ctx: Any, sums: dict[int, _Kept], *weights: Tensor | None) -> Tensor:
        ctx.sums, ctx.weights = sums, weights
        ctx.versions = [None if w is None else w._version for w in weights]
        return weights[1].new_empty(0)  # type: ignore[union-attr]

    @staticmethod
    def backward(ctx: Any, _: Tensor) -> Any:
        for w, v in zip(ctx.weights, ctx.versions):
            if w is not None and w._version != v:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by "
                    f"an inplace operation: [{w.type()} {list(w.shape)}] is at version "
                    f"{w._version}; expected version {v} instead")
        kept = ctx.sums.pop(torch._C._current_graph_task_id(), None)
        grads = (None,) * 4 if kept is None else kept.gradients()
        out = [None if g is None or not need else torch.from_numpy(g)
               for g, need in zip(grads, ctx.needs_input_grad[1:])]
        return (None, *_no_double_backward(out, ctx.weights))


class _Kept:
    """A backward pass's weight gradients in the making: the rows its steps kept
    (``_core.Rows``), and the sums of the rows already made into gradients. Every FLUSH_ROWS
    rows (a long loop) the rows become gradients, so that a pass keeps at most about that many
    (at B = 32 and H = 256 with FLUSH_ROWS = 4096: 25 MB; each step's own cache is larger)."""

    FLUSH_ROWS = 4096
    __slots__ = ("pack", "rows", "sums")

    def __init__(self, pack: Any) -> None:
        self.pack, self.rows = pack, _core.Rows()
        self.sums: tuple[Any, ...] | None = None

    def flush(self) -> None:
        """The rows kept so far added to the sums (made from them the first time)."""
        if self.sums is None:
            self.sums = _core.weight_gradients(self.pack, self.rows)
        else:
            _core.weight_gradients(self.pack, self.rows, self.sums)
        self.rows = _core.Rows()

    def gradients(self) -> tuple[Any, ...]:
        """(dw_ih, dw_hh, db_ih, db_hh) of every step of the pass."""
        if self.rows.rows or self.sums is None:
            self.flush()
        assert self.sums is not None
        return self.sums


def _no_double_backward(grads: list[Tensor | None], inputs: Any) -> tuple[Tensor | None, ...]:
    """``grads`` as they are, or with create_graph=True made to raise when differentiated."""
    if torch.is_grad_enabled():
        anchors = [t for t in inputs if t is not None and t.requires_grad]
        grads = [None if g is None else _rt._NoDoubleBackward.apply(g, *anchors)  # type: ignore[no-untyped-call]
                 for g in grads]
    return tuple(grads)


class _CellFunction(torch.autograd.Function):
    """apply(steps, states, sums, x (B, I) or (I,), h0 | None, c0 | None, token) -> h shaped like
    h0, and c for the LSTM, a step with ``steps.pack`` (``_step``). ``token``: a _Link's on the
    weights of the pack (their gradients go to ``sums``), or None when no weight needs a
    gradient."""

    @staticmethod
    def forward(ctx: Any, steps: _Steps, states: Any, sums: dict[int, _Kept] | None,
                x: Tensor, h0: Tensor | None, c0: Tensor | None, token: Tensor | None) -> Any:
        h, c, ctx.cache = _step(steps, x, h0, c0, states, True)
        ctx.sums, ctx.link = sums, None if token is None else token.grad_fn
        ctx.save_for_backward(x, h0, c0)
        ctx.set_materialize_grads(False)  # None stays None: the kernels take dh_n=None
        return h if c is None else (h, c)

    @staticmethod
    def backward(ctx: Any, dh: Tensor | None, dc: Tensor | None = None) -> Any:
        saved = ctx.saved_tensors  # raises if an input was changed in place since the forward
        pack, x3, buffers = ctx.cache
        x_shape = saved[0].shape
        B, H = x3.shape[1], pack.hidden_size
        # autograd gives them the outputs' shape and dtype
        dha = None if dh is None else np.ascontiguousarray(_np(dh).reshape(B, H))
        dca = None if dc is None else np.ascontiguousarray(_np(dc).reshape(B, H))
        kept = None
        if ctx.link is not None and torch._C._will_engine_execute_node(ctx.link):
            task = torch._C._current_graph_task_id()
            kept = ctx.sums.get(task)
            if kept is None:  # this pass's first step
                kept = ctx.sums[task] = _Kept(pack)
        # no dx product when x needs no gradient (an input of data, not of a layer)
        dx, dh0, dc0, *_ = _core.backward_packed(pack, x3, None, buffers, None, dha, dca,
                                                 None if kept is None else kept.rows,
                                                 need_dx=ctx.needs_input_grad[3])
        if kept is not None and kept.rows.rows >= _Kept.FLUSH_ROWS:
            kept.flush()
        assert dh0 is not None
        h_shape = (*x_shape[:-1], H)
        grads = [None if dx is None else dx.reshape(x_shape), dh0.reshape(h_shape),
                 None if dc0 is None else dc0.reshape(h_shape)]
        out = [None if g is None or not need else torch.from_numpy(g)
               for g, need in zip(grads, ctx.needs_input_grad[3:])]
        return (None, None, None, *_no_double_backward(out, saved), None)  # the token's: None


# torch.autograd.Function.apply's C++ part, bound to _CellFunction. The Python apply in front of
# it (default-argument binding for setup_context, the functorch checks, a generator unwrapping
# dead functorch wrappers) took about 10 of a training step's 40 us of Python (B = 1, no
# kernel). No functorch transform reaches it (_forward hands those calls to torch's cell). A
# torch without unwrap_if_dead gets the full apply.
_unwrap_if_dead: Any = getattr(torch._C._functorch, "unwrap_if_dead", None)
_C_APPLY: Any = super(torch.autograd.Function, _CellFunction).apply if _unwrap_if_dead else None


def _apply_cell(steps: _Steps, states: Any, sums: dict[int, _Kept] | None, x: Tensor,
                h0: Tensor | None, c0: Tensor | None, token: Tensor | None) -> Any:
    """``_CellFunction.apply(...)`` by its C++ part, the tensors' dead functorch wrappers (from
    a transform that has ended) unwrapped as the Python part would."""
    if _C_APPLY is None:
        return _CellFunction.apply(steps, states, sums, x, h0, c0, token)  # type: ignore[no-untyped-call]
    return _C_APPLY(steps, states, sums, _unwrap_if_dead(x),
                    None if h0 is None else _unwrap_if_dead(h0),
                    None if c0 is None else _unwrap_if_dead(c0), token)


def _dead() -> None:
    """A dead weak reference's answer."""


class _Steps:
    """A module's last step: what a chain of steps (a decoder, a sampling loop) needs to skip the
    digest of the weights' bytes and the argument checks, and the autograd token of its
    training steps. A step continues the chain when fed the very state (h, or h and c) that the
    last step returned, the weights' key (``_key``) unchanged."""

    __slots__ = ("h", "c", "views", "x_shape", "x_dtype", "key", "pack", "needs_grad", "sums",
                 "token")

    def __init__(self) -> None:
        self.h: Any = _dead  # weak reference to the last step's h
        self.c: Any = _dead  # weak reference to the last step's c (LSTM)
        # (h, c or None: their NumPy views, h's and c's data_ptr() or None)
        self.views: tuple[Any, ...] = (None, None, None, None)
        self.x_shape: Any = None  # the last step's input shape and dtype
        self.x_dtype: Any = None
        self.key: tuple[Any, ...] | None = None  # the weights' key when `pack` was taken
        self.pack: Any = None  # the weights packed (a _core.Pack)
        self.needs_grad = False  # whether a weight requires grad (part of the key)
        self.sums: dict[int, _Kept] | None = None  # the token's (``_Link``)
        self.token: Tensor | None = None  # links the steps to the weights, or None

    def use(self, key: tuple[Any, ...], pack: Any) -> None:
        """Take ``pack`` for the weights of ``key``; the token stays while both do."""
        if key != self.key or pack is not self.pack:
            self.key, self.pack, self.sums, self.token = key, pack, None, None
            self.needs_grad = any(key[5::4])  # each weight's requires_grad (``_key``)

    def link(self, weights: tuple[Tensor | None, ...]) -> tuple[Any, Tensor]:
        """(sums, token) linking the steps to ``weights`` (``_Link``), made once per key and
        pack."""
        if self.token is None:
            self.sums = {}
            self.token = _Link.apply(self.sums, *weights)  # type: ignore[no-untyped-call]
        return self.sums, self.token


# module -> its _Steps. Kept out of the module: weak references and tokens (no leaf tensors)
# neither deepcopy nor pickle.
_STEPS: weakref.WeakKeyDictionary[Any, _Steps] = weakref.WeakKeyDictionary()


def _key(weights: tuple[Any, ...], precision: str) -> tuple[Any, ...]:
    """What a pack depends on but the weights' bytes: the ISA, the precision, and for each
    weight its identity, version counter, memory and whether it requires grad (the token's).
    ``weights``: (w_ih, w_hh, b_ih or None, b_hh or None). Every step pays for this: one flat
    tuple, not one per weight, took 2-8% less of a B=1 LSTMCell inference step (alone, after a
    torch operator, beside a busy process)."""
    w0, w1, b0, b1 = weights
    try:
        if b0 is None or b1 is None:
            return (F.isa_generation[0], precision, id(w0), w0._version, w0.data_ptr(),
                    w0.requires_grad, id(w1), w1._version, w1.data_ptr(), w1.requires_grad)
        return (F.isa_generation[0], precision, id(w0), w0._version, w0.data_ptr(),
                w0.requires_grad, id(w1), w1._version, w1.data_ptr(), w1.requires_grad,
                id(b0), b0._version, b0.data_ptr(), b0.requires_grad,
                id(b1), b1._version, b1.data_ptr(), b1.requires_grad)
    except RuntimeError:  # an inference tensor has no version counter (``_rt._version``)
        return (F.isa_generation[0], precision,
                *(v for w in weights if w is not None
                  for v in (id(w), _rt._version(w), w.data_ptr(), w.requires_grad)))


def _pack(module: Any, cell: str, weights: tuple[Tensor | None, ...], precision: str) -> Any:
    """The module's weights packed for ``precision`` (a _core.Pack), made again when their bits,
    the precision or the ISA changed (``rnnkern.torch._packs``)."""
    cell_id = F._LSTM if cell == "lstm" else F._GRU if cell == "gru" else F._RNN_IDS[
        module.nonlinearity]
    return _rt._packs(cell_id, [(*weights, None)], precision)[0]


def _fits(module: Any, x: object, states: tuple[object, ...], w_hh: Tensor) -> bool:
    """Whether the kernels run this call exactly as torch's cell would (else torch runs it)."""
    if not isinstance(x, Tensor) or not x.is_cpu or not w_hh.is_cpu:
        return False
    dtype, shape, nd = w_hh.dtype, x.shape, x.dim()
    if (nd not in (1, 2) or x.dtype != dtype or dtype not in _FLOAT_DTYPES
            or shape[-1] != module.input_size or module.hidden_size == 0
            or nd == 2 and shape[0] == 0 or module.input_size > 0 and x.numel() == 0):
        return False
    want = (*shape[:-1], module.hidden_size)
    return all(s is None or isinstance(s, Tensor) and s.dtype == dtype and s.is_cpu
               and s.shape == want for s in states)


def _forward(module: Any, cell: str, input: Any, hx: Any) -> Any:
    if torch._C._are_functorch_transforms_active():  # torch.func: wrapped tensors, torch's cell
        return super(type(module), module).forward(input, hx)
    lstm = cell == "lstm"
    h0, c0 = None, None
    if hx is not None and not lstm:
        h0 = hx
    elif isinstance(hx, (tuple, list)) and len(hx) == 2:
        h0, c0 = hx
    elif hx is not None:  # not an LSTM state: torch's error
        return super(type(module), module).forward(input, hx)
    p = module._parameters
    weights = (p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"])
    # set by rnnkern.torch.convert(model, precision=...)
    precision: str = module.__dict__.get("_rnnkern_precision", "float")
    if precision == "float" and torch.is_autocast_enabled("cpu"):  # torch's casts
        return super(type(module), module).forward(input, hx)
    key = _key(weights, precision)
    steps = _STEPS.get(module)
    if steps is None:
        steps = _STEPS[module] = _Steps()
    states = None
    if (h0 is not None and h0 is steps.h() and (not lstm or c0 is not None and c0 is steps.c())
            and key == steps.key and isinstance(input, Tensor) and input.shape == steps.x_shape
            and input.dtype == steps.x_dtype and input.is_cpu):
        # a chain: no digest, no `_fits`; the state's views unless moved (`.data =`)
        views = steps.views
        if h0.data_ptr() == views[2] and (c0 is None or c0.data_ptr() == views[3]):
            states = views[:2]
    else:  # not a chain (a trace's first step is not one either)
        _rt._no_trace(module)
        if (not _fits(module, input, (h0, c0), weights[1])
                or lstm and (h0 is None) != (c0 is None)):  # torch takes both or neither
            return super(type(module), module).forward(input, hx)  # torch's checks and errors
        steps.use(key, _pack(module, cell, weights, precision))
        steps.x_shape, steps.x_dtype = input.shape, input.dtype  # a chain's are the same
    if torch.is_grad_enabled() and (steps.needs_grad or input.requires_grad
                                    or h0 is not None and h0.requires_grad
                                    or c0 is not None and c0.requires_grad):
        if precision == "int8":
            raise ValueError(
                f"precision: 'int8' is inference only ({type(module).__name__} converted with "
                f"precision='int8') and this call would record gradients: run it under "
                f"torch.no_grad() or torch.inference_mode()")
        sums, token = steps.link(weights) if steps.needs_grad else (None, None)
        out = _apply_cell(steps, states, sums, input, h0, c0, token)
        h, c = out if lstm else (out, None)
    else:  # nothing to differentiate: no autograd node (its cost is a third of a B=1 step)
        h, c, _ = _step(steps, input, h0, c0, states, False)
    steps.h, steps.c = weakref.ref(h), _dead if c is None else weakref.ref(c)
    return (h, c) if lstm else h


class RNNCell(torch.nn.RNNCell):
    """``torch.nn.RNNCell`` (tanh or relu) on rnnkern's kernels: input (B, I) or (I,), hx like
    the result h' (B, H) or (H,), or None."""

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return _forward(self, "rnn", input, hx)  # type: ignore[no-any-return]


class LSTMCell(torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` on rnnkern's kernels: input (B, I) or (I,), hx = (h, c) like the
    result (h', c'), each (B, H) or (H,), or None."""

    def forward(self, input: Tensor,
                hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        return _forward(self, "lstm", input, hx)  # type: ignore[no-any-return]


class GRUCell(torch.nn.GRUCell):
    """``torch.nn.GRUCell`` on rnnkern's kernels: input (B, I) or (I,), hx like the result h'
    (B, H) or (H,), or None."""

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return _forward(self, "gru", input, hx)  # type: ignore[no-any-return]


CELL_DROP_INS: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
    torch.nn.RNNCell: RNNCell, torch.nn.LSTMCell: LSTMCell, torch.nn.GRUCell: GRUCell}


def drop_in_cell(module: torch.nn.Module) -> torch.nn.Module:
    """The rnnkern cell configured like torch's ``module``, holding its very Parameter objects
    (optimizers and tied weights keep referring to them) and its training mode."""
    kwargs: dict[str, Any] = {"bias": module.bias, "device": "meta"}
    if isinstance(module, torch.nn.RNNCell):
        kwargs["nonlinearity"] = module.nonlinearity
    new = CELL_DROP_INS[type(module)](module.input_size, module.hidden_size, **kwargs)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(new, name, getattr(module, name))
    new.train(module.training)
    return new


# Last: rnnkern.torch imports this module's names at its own end, so that either module may be
# imported first (this one uses rnnkern.torch's names at call time only).
from . import torch as _rt  # noqa: E402

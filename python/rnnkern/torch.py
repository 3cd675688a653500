"""PyTorch drop-ins on rnnkern's kernels: ``rnnkern.torch.LSTM``, ``GRU``, ``RNN``, ``convert``.

Only ``import rnnkern.torch`` imports torch; ``import rnnkern`` never does.

The modules subclass ``torch.nn.LSTM`` / ``GRU`` / ``RNN``: same constructor, parameter names,
shapes and initialization (torch's own ``__init__`` and ``reset_parameters`` run), same inputs
(a tensor, batched or not, time-major or ``batch_first``, or a ``PackedSequence``; optional
``h0`` / ``(h0, c0)``) and outputs. Only ``forward`` differs: every (layer, direction) runs
the torch operator ``torch.ops.rnnkern.layer`` (rnnkern._core.forward on NumPy views of the CPU
tensors; its autograd formula calls ``torch.ops.rnnkern.layer_backward``), registered with
torch.library together with fake (shape) functions, so ``torch.compile(fullgraph=True)`` and
``torch.export`` trace a model whole. The code around the operators (layers, cat, dropout,
packing) is plain torch. Between layers, in training mode, dropout is torch's own ``F.dropout``
drawn on the same tensor shape as PyTorch's native implementation, so a seeded run draws the
same masks as ``torch.nn.LSTM`` & co.

LSTM projections (``proj_size``) run on the kernels' fused projection (docs/lstm_variants.md).

Lower precision (docs/precision.md, docs/torch.md): a bfloat16 module and input
(``model.to(torch.bfloat16)``) and ``torch.autocast("cpu", dtype=torch.bfloat16)`` run the
kernels' ``precision="bf16"`` with the result dtypes torch gives (`_lower_precision`);
``convert(model, precision="int8")`` gives an inference model on the int8 kernels.

Restrictions: CPU tensors, float32, float64 or bfloat16, no double backward, no TorchScript.
"""
from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union, overload

import numpy as np

try:
    import torch
    import torch._dynamo
    import torch.nn.functional as F
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
except ImportError as e:  # torch missing, or a broken install (a leftover torch/ folder)
    raise ModuleNotFoundError(
        f"rnnkern.torch needs PyTorch, which could not be imported ({e}); install it with "
        f'pip install "rnnkern[torch]"', name="torch") from e

from rnnkern import _api, _cells, _core, _functional, _stack
from rnnkern._api import Array

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "convert"]

Tensor = torch.Tensor
#: A recurrent state as the modules take and return it: h, or (h, c) for the LSTM.
State = Union[Tensor, tuple[Tensor, Tensor]]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_BF16 = torch.bfloat16

# Dynamo refuses to trace any module that is a torch.nn.LSTM / GRU / RNN, subclasses included,
# unless allow_rnn is set (torch.export sets it for its own tracing too). The drop-ins are such
# subclasses, built for tracing (plain torch around registered operators), so
# torch.compile(model, fullgraph=True) needs it. It also lets Dynamo trace torch's own modules.
torch._dynamo.config.allow_rnn = True


# ----------------------------------------------------------------------------- numpy <-> torch


@overload
def _array(t: Tensor) -> Array: ...
@overload
def _array(t: Tensor | None) -> Array | None: ...
def _array(t: Tensor | None) -> Array | None:
    """A NumPy view of a CPU tensor (no copy; the kernels copy what is not contiguous)."""
    return None if t is None else t.detach().numpy()


def _weight_array(w: Tensor) -> Array:
    """A weight as a float32 (copied from bfloat16) or float32/float64 NumPy array."""
    return _array(w.detach().float() if w.dtype == _BF16 else w)


def _tensor(a: Array | None, dtype: torch.dtype) -> Tensor:
    """A tensor on ``a``'s memory, copied first only if it is not C-contiguous and writeable or
    has a negative stride: NumPy flags a reversed view with one step, ``a[::-1]`` of shape
    (1, B, H), C-contiguous, but torch.from_numpy refuses any negative stride.
    None (a result the cell does not have) becomes an empty (0,) tensor of ``dtype``."""
    if a is None:
        return torch.empty(0, dtype=dtype)
    if not (a.flags.c_contiguous and a.flags.writeable) or any(s < 0 for s in a.strides):
        a = np.array(a, order="C")
    return torch.from_numpy(a)


# ----------------------------------------------------------------------------- the operators
#
# torch.ops.rnnkern.stack runs a whole stack (L layers x D directions, rnnkern._stack.forward)
# and torch.ops.rnnkern.stack_backward its gradients (rnnkern._stack.backward). Registered with
# torch.library (fake functions for the shapes, an autograd formula), torch.compile and
# torch.export see each as one opaque node, and the Python code around them (dropout masks,
# batch_first, packing) is plain torch. Results a cell does not have are empty (0,) tensors.

# rnnkern._core's cell ids (rnnkern::Cell) -> the cell name of rnnkern._api's checks
_CELL_NAMES = _cells.FAMILY
# torch's RNNBase.mode -> rnnkern._core's cell id
_CELL_IDS = {"LSTM": _functional._LSTM, "GRU": _functional._GRU,
             "RNN_TANH": _functional._RNN_IDS["tanh"], "RNN_RELU": _functional._RNN_IDS["relu"]}
_BUFFERS = 4  # kernel buffers per (layer, direction): hs, cs, gates, aux
_SAVED = 1 + _BUFFERS  # saved results per (layer, direction): its input, its buffers


def _check_cell(cell: int) -> str:
    if cell not in _CELL_NAMES:
        raise ValueError(f"cell: expected a cell id in 0..5 (rnnkern._core), got {cell}")
    return _CELL_NAMES[cell]


def _per_direction(weights: list[Tensor], num_layers: int, directions: int
                   ) -> list[tuple[Tensor | None, ...]]:
    """The flat weights (torch's _flat_weights order: per (layer, direction) w_ih, w_hh, with
    bias b_ih, b_hh, with a projection w_hr) as L*D tuples (w_ih, w_hh, b_ih, b_hh, w_hr)."""
    n = num_layers * directions
    if num_layers < 1 or len(weights) % n or not 2 <= len(weights) // n <= 5:
        raise ValueError(f"weights: expected 2 to 5 tensors per layer and direction "
                         f"(w_ih, w_hh, biases, w_hr; {2 * n} to {5 * n} for "
                         f"num_layers={num_layers}, D={directions}), got {len(weights)}")
    per = len(weights) // n  # 2: w_ih, w_hh; 3: and w_hr; 4: and biases; 5: all
    out: list[tuple[Tensor | None, ...]] = []
    for k in range(n):
        w = weights[per * k:per * (k + 1)]
        biases = (w[2], w[3]) if per >= 4 else (None, None)
        out.append((w[0], w[1], *biases, w[-1] if per in (3, 5) else None))
    return out


def _bits(w: Tensor) -> Array:
    """A weight's bytes as a C-contiguous NumPy array (bfloat16 viewed as int16; copied only if
    the tensor is not contiguous)."""
    w = w.detach()
    return np.ascontiguousarray((w.view(torch.int16) if w.dtype == _BF16 else w).numpy())


def _version(w: Tensor) -> int:
    """``w``'s version counter, or -1 for an inference tensor (made under
    torch.inference_mode), which has none: writes to it are seen by the digest alone."""
    return -1 if w.is_inference() else w._version


class _Packed(NamedTuple):
    """A direction's pack and what it was made from."""

    isa: int  # rnnkern._functional.isa_generation at packing
    state: tuple[Any, ...]  # per weight: version counter, memory, dtype, shape
    digests: list[bytes]  # per weight: _core.digests of its bytes at packing
    pack: Any  # the _core.Pack
    refs: list[Any]  # weak references to the weights, whose callbacks drop the entry


# (cell, precision, ids of a direction's weights) -> its _Packed
_PACKS: dict[tuple[int, ...], _Packed] = {}


def _packs(cell: int, directions: list[tuple[Tensor | None, ...]], precision: str = "float"
           ) -> list[Any]:
    """Each direction's weights (w_ih, w_hh, b_ih, b_hh, w_hr; None where absent) packed for
    ``precision`` (forward and, but for int8, backward panels), kept while the weights live and
    made again when their bytes, version counters, memory or the ISA changed. bfloat16 weights
    are packed from their exact float32 values.

    Every call reads every weight once, for its digest (``_core.digests``, all directions'
    weights in one team call), and compares it with the digest taken at packing: version
    counters alone miss writes made through ``.data`` or a NumPy view (torch.autograd.gradcheck
    makes such). A write that leaves the version counter as it was goes unseen only if every
    changed 4 KiB block keeps its digest, with probability at most 2^-64 per block
    (rnnkern/digest.hpp); a write that bumps the version is always seen.
    """
    prec = _api.PRECISION_IDS[precision]
    present = [[w for w in weights if w is not None] for weights in directions]
    bits = [[_bits(w) for w in ws] for ws in present]
    digests = iter(_core.digests([b for bs in bits for b in bs]))
    isa = _functional.isa_generation[0]
    out = []
    for weights, ws, bs in zip(directions, present, bits):
        key = (cell, prec, *(id(w) for w in ws))
        state = tuple((_version(w), w.data_ptr(), b.dtype, b.shape) for w, b in zip(ws, bs))
        ds = [next(digests) for _ in bs]
        entry = _PACKS.get(key)
        if entry is not None and entry.isa == isa and entry.state == state and entry.digests == ds:
            out.append(entry.pack)
            continue
        w_ih, w_hh, b_ih, b_hh, w_hr = (None if w is None else np.ascontiguousarray(
            _weight_array(w)) for w in weights)
        checked = _api.check_weights(_check_cell(cell), w_ih, w_hh, b_ih, b_hh, w_hr is not None)
        pack = _core.Pack(cell, *checked,
                          w_hr=_api.check_pack_variants(w_hr, None, checked[1])[0],
                          backward=precision != "int8", precision=prec)

        def drop(_: Any, key: tuple[int, ...] = key) -> None:
            _PACKS.pop(key, None)

        _PACKS[key] = _Packed(isa, state, ds, pack, [weakref.ref(w, drop) for w in ws])
        out.append(pack)
    return out


def _stack_args(cell: int, num_layers: int, bidirectional: bool, x: Tensor,
                weights: list[Tensor], lengths: Tensor | None, masks: list[Tensor],
                precision: str, training: bool
                ) -> tuple[list[Any], int, Array, Array | None, list[Array]]:
    """The packs, D, x (T, B, I) as a C-contiguous array, lengths (B,) int64 or None and the
    masks (T, B, D*P) of a stack call, checked (P = H without a projection)."""
    D = 2 if bidirectional else 1
    prec = _api.check_precision(precision, np.dtype(np.float32), training)
    if prec == "float" and any(w.dtype == _BF16 for w in weights):
        raise ValueError("weights: bfloat16 weights run with precision='bf16' only")
    packs = _packs(cell, _per_direction(weights, num_layers, D), prec)
    xa = _array(x)
    first = packs[0]
    if xa.ndim != 3 or xa.shape[2] != first.input_size or xa.dtype != first.dtype:
        raise ValueError(f"x: expected a (T, B, {first.input_size}) tensor of the weights' dtype "
                         f"{first.dtype}, got {tuple(xa.shape)} {xa.dtype}")
    T, B, _ = xa.shape
    lens = _api._check_lengths(_array(lengths), T, B)  # (B,) int64 or None
    want = (T, B, D * first.output_size)
    if len(masks) not in (0, num_layers - 1) or any(tuple(m.shape) != want for m in masks):
        raise ValueError(f"masks: expected none or num_layers - 1 = {num_layers - 1} tensors "
                         f"(T, B, D*P) = {want}")
    return (packs, D, np.ascontiguousarray(xa), lens,
            [np.ascontiguousarray(_array(m)) for m in masks])


def _check_states(names: tuple[str, str], states: tuple[Tensor | None, Tensor | None],
                  n: int, B: int, pack: Any, dtype: np.dtype[Any]) -> list[Array | None]:
    """States h, c or their gradients, (n = L*D, B, P) and (n, B, H) (P: the size of h of
    ``pack``, a _core.Pack of the stack), or None, as C-contiguous arrays, checked."""
    return [None if t is None else _api.check_grad(name, _array(t), (n, B, size), dtype,
                                                   ("L*D", "B", symbol))
            for name, t, size, symbol in zip(names, states, (pack.output_size, pack.hidden_size),
                                             ("P" if pack.has_projection else "H", "H"))]


def _stack_forward(cell: int, num_layers: int, bidirectional: bool, training: bool, x: Tensor,
                   h0: Tensor | None, c0: Tensor | None, weights: list[Tensor],
                   lengths: Tensor | None, masks: list[Tensor], precision: str
                   ) -> tuple[Array, Array, Array | None, _stack.Saved | None]:
    """The arguments of `stack` checked and run (rnnkern._stack.forward): y (T, B, D*P), h_n
    (L*D, B, P), c_n (L*D, B, H) or None, and the Saved of a training call."""
    packs, D, xa, lens, mask_arrays = _stack_args(cell, num_layers, bidirectional, x, weights,
                                                  lengths, masks, precision, training)
    h0a, c0a = _check_states(("h0", "c0"), (h0, c0), num_layers * D, xa.shape[1], packs[0],
                             xa.dtype)
    return _stack.forward(packs, D, xa, h0a, c0a, lens, mask_arrays, bool(training))


def _stack_grads(saved: _stack.Saved, dtype: torch.dtype, weight_dtypes: list[torch.dtype],
                 dy: Tensor | None, dh_n: Tensor | None, dc_n: Tensor | None,
                 need_dx: bool = True) -> list[Tensor]:
    """The gradients of a training stack call (rnnkern._stack.backward): dx (T, B, I) (empty if
    not ``need_dx``: not computed), dh0 (L*D, B, P), dc0 (L*D, B, H) (lstm, else empty) as
    ``dtype`` tensors, then those of the weights in torch's _flat_weights order, in
    ``weight_dtypes``; dy (T, B, D*P), dh_n, dc_n checked here (None: zeros)."""
    xa, packs, D = saved.xs[0], saved.packs, saved.directions
    T, B, _ = xa.shape
    dya = _api.check_grad("dy", _array(dy), (T, B, D * packs[0].output_size), xa.dtype,
                          ("T", "B", "D*P"))
    dh, dc = _check_states(("dh_n", "dc_n"), (dh_n, dc_n), len(packs), B, packs[0], xa.dtype)
    dx, dh0, dc0, weight_grads = _stack.backward(saved, dya, dh, dc, need_dx)
    flat = [g for grads in weight_grads for g in grads if g is not None]
    return [*(_tensor(a, dtype) for a in (dx, dh0, dc0)),
            *(_tensor(g, dtype).to(wd) for g, wd in zip(flat, weight_dtypes))]


@torch.library.custom_op("rnnkern::stack", mutates_args=(), device_types="cpu")
def stack(cell: int, num_layers: int, bidirectional: bool, training: bool, x: Tensor,
          h0: Tensor | None, c0: Tensor | None, weights: list[Tensor], lengths: Tensor | None,
          masks: list[Tensor], precision: str) -> list[Tensor]:
    """A whole stack: x (T, B, I), h0 (L*D, B, P), c0 (L*D, B, H) or None, weights as torch's
    _flat_weights (per (layer, direction) w_ih (G*H, F), w_hh (G*H, P), with bias b_ih, b_hh
    (G*H,), with an LSTM projection w_hr (P, H); P = H without), lengths (B,) int64 in 1..T or
    None, masks: none or L-1 dropout masks (T, B, D*P) multiplying each layer's output but the
    last's; precision of the products (docs/precision.md): "bf16" and "int8" take float32 x,
    h0, c0, masks and float32 or (bf16) bfloat16 weights; int8 with ``training`` is an error.

    Returns [y (T, B, D*P) zero past each length, h_n (L*D, B, P), c_n (L*D, B, H) (lstm),
    then if ``training`` per (layer, direction): its input in its kernel's time order (empty
    for the first: x), hs (T+1, B, P), cs (T+1, B, H) (lstm), gates (T, B, G*H) (lstm, gru),
    aux (T, B, H) (gru, projected lstm)].
    """
    y, h_n, c_n, saved = _stack_forward(cell, num_layers, bidirectional, training, x, h0, c0,
                                        weights, lengths, masks, precision)
    results: list[Array | None] = [y, h_n, c_n]
    if saved is not None:
        lens = saved.lengths
        padded = None if lens is None else np.arange(y.shape[0])[:, None] >= lens[None, :]
        for k, (xk, buffers) in enumerate(zip(saved.xs, saved.buffers)):
            if padded is not None:
                # The kernels leave gates and aux unwritten past each length (the backward never
                # reads them there); an operator's results must not depend on old memory.
                for a in buffers[2:]:  # gates (T, B, G*H), aux (T, B, H), or None
                    if a is not None:
                        a[padded] = 0
            results += [None if k == 0 else xk, *buffers]
    return [_tensor(a, x.dtype) for a in results]


@stack.register_fake
def _stack_fake(cell: int, num_layers: int, bidirectional: bool, training: bool, x: Tensor,
                h0: Tensor | None, c0: Tensor | None, weights: list[Tensor],
                lengths: Tensor | None, masks: list[Tensor], precision: str) -> list[Tensor]:
    """stack's results as empty tensors of the right shapes (rnnkern::cache_layout's)."""
    name = _check_cell(cell)
    D = 2 if bidirectional else 1
    T, B, _ = x.shape
    GH, H, P, proj = _sizes(name, weights, num_layers * D)
    lstm, gru = name == "lstm", name == "gru"

    def new(present: bool, *shape: Any) -> Tensor:
        return x.new_empty(shape if present else (0,))

    out = [new(True, T, B, D * P), new(True, num_layers * D, B, P),
           new(lstm, num_layers * D, B, H)]
    if training:
        for k in range(num_layers * D):
            features = x.shape[2] if k < D else D * P  # the input of layer k // D
            out += [new(k > 0, T, B, features), new(True, T + 1, B, P),
                    new(lstm, T + 1, B, H), new(lstm or gru, T, B, GH),
                    new(gru or proj, T, B, H)]
    return out


def _sizes(name: str, weights: list[Tensor], n: int) -> tuple[int, int, int, bool]:
    """(G*H, H, P, whether projected) of a stack's flat weights (n = L*D directions)."""
    GH, P = weights[1].shape  # w_hh (G*H, P)
    proj = len(weights) // n in (3, 5)  # w_hr last
    return GH, GH // _api.GATES[name] if proj else P, P, proj


@torch.library.custom_op("rnnkern::stack_backward", mutates_args=(), device_types="cpu")
def stack_backward(cell: int, num_layers: int, bidirectional: bool, x: Tensor,
                   weights: list[Tensor], lengths: Tensor | None, masks: list[Tensor],
                   saved: list[Tensor], dy: Tensor | None, dh_n: Tensor | None,
                   dc_n: Tensor | None, precision: str) -> list[Tensor]:
    """The gradients of a training ``stack`` call: its x, weights, lengths, masks, saved
    results (those after y, h_n, c_n) and precision, dy (T, B, D*P), dh_n (L*D, B, P), dc_n
    (L*D, B, H) (None: zeros).

    Returns [dx (T, B, I), dh0 (L*D, B, P), dc0 (L*D, B, H) (lstm), then the gradients of the
    weights, in their order and dtypes].
    """
    packs, D, xa, lens, mask_arrays = _stack_args(cell, num_layers, bidirectional, x, weights,
                                                  lengths, masks, precision, True)
    n = num_layers * D
    if len(saved) != _SAVED * n:
        raise ValueError(f"saved: expected the {_SAVED * n} saved results of a training stack "
                         f"call, got {len(saved)}")
    arrays = [_array(t) for t in saved]
    xs = [xa, *arrays[_SAVED::_SAVED]]
    buffers = [tuple(arrays[_SAVED * k + 1:_SAVED * (k + 1)]) for k in range(n)]
    return _stack_grads(_stack.Saved(tuple(packs), xs, buffers, mask_arrays, lens, D), x.dtype,
                        [w.dtype for w in weights], dy, dh_n, dc_n)


@stack_backward.register_fake
def _stack_backward_fake(cell: int, num_layers: int, bidirectional: bool, x: Tensor,
                         weights: list[Tensor], lengths: Tensor | None, masks: list[Tensor],
                         saved: list[Tensor], dy: Tensor | None, dh_n: Tensor | None,
                         dc_n: Tensor | None, precision: str) -> list[Tensor]:
    """stack_backward's results as empty tensors of the right shapes."""
    name = _check_cell(cell)
    n = num_layers * (2 if bidirectional else 1)
    _, H, P, _ = _sizes(name, weights, n)
    B = x.shape[1]
    return [x.new_empty(x.shape), x.new_empty(n, B, P),
            x.new_empty((n, B, H) if name == "lstm" else (0,)),
            *(w.new_empty(w.shape) for w in weights)]


def _stack_setup_context(ctx: Any, inputs: tuple[Any, ...], output: list[Tensor]) -> None:
    cell, num_layers, bidirectional, training, x, h0, c0, weights, lengths, masks, prec = inputs
    saved = output[3:]  # empty if training was False
    ctx.mark_non_differentiable(*saved, *(() if cell == _functional._LSTM else output[2:3]))
    ctx.set_materialize_grads(False)  # None stays None: the kernels take dy=None, dh_n=None
    ctx.args = cell, num_layers, bidirectional
    ctx.precision = prec
    ctx.training, ctx.counts = training, (len(weights), len(masks), len(saved))
    ctx.states = h0 is not None, c0 is not None
    # Saving x and the weights makes autograd raise if they are changed in place before the
    # backward; h0 and c0 are saved as anchors for _NoDoubleBackward.
    ctx.save_for_backward(x, lengths, *weights, *masks, *saved, h0, c0)


def _stack_backward_formula(ctx: Any, grads: list[Tensor | None]) -> tuple[Any, ...]:
    if not ctx.training:
        raise RuntimeError("rnnkern::stack: the forward ran with training=False and kept "
                           "nothing for a backward")
    x, lengths, *rest = ctx.saved_tensors
    n_w, n_m, n_s = ctx.counts
    weights, masks, saved = rest[:n_w], rest[n_w:n_w + n_m], rest[n_w + n_m:n_w + n_m + n_s]
    anchors = rest[n_w + n_m + n_s:]  # h0, c0
    dy, dh_n, dc_n = grads[:3]
    with torch.no_grad():
        lstm = ctx.args[0] == _functional._LSTM  # else c_n is an empty (0,) result
        out = stack_backward(*ctx.args, x, weights, lengths, masks, saved, dy, dh_n,
                             dc_n if lstm else None, ctx.precision)
    dx, dh0, dc0, dws = _input_grads(out, ctx.states, (x, *weights, *anchors))
    return (None, None, None, None, dx, dh0, dc0, dws, None, [None] * n_m, None)


def _input_grads(out: list[Tensor], states: tuple[bool, bool], inputs: Sequence[Tensor | None]
                 ) -> tuple[Tensor | None, Tensor | None, Tensor | None, list[Tensor]]:
    """dx, dh0, dc0 (None where h0 / c0 was not given: ``states``) and the weights' gradients
    from _stack_grads' ``out``; under create_graph=True each is wrapped so that differentiating
    it raises (``inputs``: the stack's tensor inputs, the anchors)."""
    dx: Tensor | None = out[0]
    dh0, dc0 = (g if given else None for g, given in zip(out[1:3], states))
    dws = out[3:]
    if torch.is_grad_enabled():  # create_graph=True: make differentiating them raise
        live = [t for t in inputs if t is not None and t.requires_grad]
        wrap = _NoDoubleBackward.apply
        dx, dh0, dc0 = (None if g is None else wrap(g, *live) for g in (dx, dh0, dc0))  # type: ignore[no-untyped-call]
        dws = [wrap(g, *live) for g in dws]  # type: ignore[no-untyped-call]
    return dx, dh0, dc0, dws


class _StackFunction(torch.autograd.Function):
    """The eager twin of ``stack`` and its autograd formula, for calls on plain CPU tensors that
    nothing traces (`_eager`): the same work (_stack_forward, _stack_grads) without the
    dispatcher's per-call cost of a custom operator (pytree flattening, alias checks: about 1 ms
    per training step of a 2-layer bidirectional stack). The backward reuses the forward's packs
    and buffers (no second check of the weights' bytes): the gradients of the forward that ran,
    as rnnkern.nn. Autograd still raises if x, h0, c0 or a weight is changed in place before
    the backward (they are saved).

    apply(cell, num_layers, bidirectional, precision, lengths, masks, x, h0, c0, *weights) ->
    (y, h_n), and c_n for the LSTM (the arguments of ``stack``, reordered so that autograd sees
    every tensor that may require grad).
    """

    @staticmethod
    def forward(ctx: Any, cell: int, num_layers: int, bidirectional: bool, precision: str,
                lengths: Tensor | None, masks: list[Tensor], x: Tensor, h0: Tensor | None,
                c0: Tensor | None, *weights: Tensor) -> tuple[Tensor, ...]:
        y, h_n, c_n, ctx.stack = _stack_forward(cell, num_layers, bidirectional, True, x, h0,
                                                c0, list(weights), lengths, masks, precision)
        ctx.set_materialize_grads(False)  # None stays None: the kernels take dy=None, dh_n=None
        ctx.states = h0 is not None, c0 is not None
        ctx.save_for_backward(x, h0, c0, *weights)
        return tuple(_tensor(a, x.dtype) for a in (y, h_n, c_n) if a is not None)

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, dh_n: Tensor | None,
                 dc_n: Tensor | None = None) -> tuple[Any, ...]:
        inputs = ctx.saved_tensors  # raises if one was changed in place since the forward
        need_dx = ctx.needs_input_grad[6]  # x's; without it, layer 0's input product is skipped
        out = _stack_grads(ctx.stack, inputs[0].dtype, [w.dtype for w in inputs[3:]], dy, dh_n,
                           dc_n, need_dx)
        dx, dh0, dc0, dws = _input_grads(out, ctx.states, inputs)
        return (None, None, None, None, None, None, dx if need_dx else None, dh0, dc0, *dws)


stack.register_autograd(_stack_backward_formula, setup_context=_stack_setup_context)


class _NoDoubleBackward(torch.autograd.Function):
    """Identity on a gradient computed with create_graph=True; differentiating it raises.

    apply(grad, *anchors): the anchors (the layer's inputs that require grad) make the result
    require grad, so a double backward reaches this backward instead of silently treating the
    kernels' gradients as constants.
    """

    @staticmethod
    def forward(ctx: Any, grad: Tensor, *anchors: Tensor) -> Tensor:
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        raise RuntimeError(
            "rnnkern.torch: the kernels' gradients are not differentiable: double backward "
            "(create_graph=True) is not supported; use torch.nn.LSTM/GRU/RNN for higher-order "
            "gradients")


# ----------------------------------------------------------------------------- the stack


def _check_tensor(name: str, t: object, meta: bool = False) -> Tensor:
    """``t`` if it is a CPU float32/float64/bfloat16 tensor (or on the meta device if ``meta``),
    else a TypeError naming ``name``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu and not (meta and t.is_meta):
        raise TypeError(f"{name}: rnnkern.torch runs on the CPU only, got device {t.device}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype {t.dtype} is not supported (float32, float64 or "
                        f"bfloat16)")
    return t


def _split_state(module: torch.nn.RNNBase, hx: object) -> tuple[Tensor | None, Tensor | None]:
    """(h0, c0) from the module's hx argument: None, a tensor, or (h0, c0) for the LSTM."""
    if hx is None:
        return None, None
    if module.mode == "LSTM":
        if not (isinstance(hx, tuple) and len(hx) == 2):
            raise TypeError(f"hx: expected a tuple (h_0, c_0), got {type(hx).__name__}")
        return _check_tensor("h_0", hx[0]), _check_tensor("c_0", hx[1])
    return _check_tensor("hx", hx), None


def _packed_noise(shape: tuple[int, ...], dtype: torch.dtype, packed: PackedSequence,
                  p: float) -> Tensor:
    """Dropout noise (T, B, F) for a padded layer output, drawn as torch draws it for packed input.

    PyTorch applies dropout to the packed data (N, F); drawing on that shape keeps a seeded run
    identical to torch's. Padded steps get zeros (the outputs there are zero anyway).
    """
    data = torch.ones((packed.data.shape[0], shape[2]), dtype=dtype)  # (N, F)
    noise = F.dropout(data, p, training=True)  # (N, F) 0 or 1/(1-p)
    padded, _ = pad_packed_sequence(
        PackedSequence(noise, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
        total_length=shape[0])
    return padded  # (T, B, F)


def _run_stack(module: torch.nn.RNNBase, weights: list[Tensor], x: Tensor, h0: Tensor | None,
               c0: Tensor | None, lengths: Tensor | None, packed: PackedSequence | None,
               precision: str = "float") -> tuple[Tensor, Tensor, Tensor | None]:
    """All layers and directions on x (T, B, I) in one ``stack`` call; ``weights``: the
    module's (`_weights`); h0, c0 (L*D, B, H) or None; lengths (B,) int64 or None; precision of
    the products (x, h0, c0 float32 unless "float").

    Returns output (T, B, D*H) zero past each length, h_n (L*D, B, H), c_n (L*D, B, H) or None.
    """
    D = 2 if module.bidirectional else 1
    x = x.contiguous()  # (T, B, I): one copy if batch_first, saved for the backward
    # Dropout noise for each layer's output but the last's, drawn up front in layer order: the
    # kernels draw nothing, so torch's generator gives the masks it gives torch.nn's modules.
    masks: list[Tensor] = []
    if module.training and module.dropout > 0:
        shape = (x.shape[0], x.shape[1], D * (module.proj_size or module.hidden_size))
        for _ in range(module.num_layers - 1):
            masks.append(F.dropout(torch.ones(shape, dtype=x.dtype), module.dropout,
                                   training=True) if packed is None
                         else _packed_noise(shape, x.dtype, packed, module.dropout))
    keep = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *weights))
    if keep and precision == "int8":
        raise ValueError(
            "precision: 'int8' is inference only (rnnkern.torch.convert(model, "
            "precision='int8')) and this call would record gradients: run it under "
            "torch.no_grad() or torch.inference_mode(), or set requires_grad_(False) on the "
            "parameters and inputs")
    cell, lstm = _CELL_IDS[module.mode], module.mode == "LSTM"
    if not _eager((x, h0, c0, *weights)):
        y, h_n, c_n, *_ = stack(cell, module.num_layers, module.bidirectional, keep, x, h0, c0,
                                weights, lengths, masks, precision)
        return y, h_n, (c_n if lstm else None)
    if keep:
        y, h_n, *c = _StackFunction.apply(cell, module.num_layers, module.bidirectional,  # type: ignore[no-untyped-call]
                                          precision, lengths, masks, x, h0, c0, *weights)
        return y, h_n, (c[0] if lstm else None)
    ya, ha, ca, _ = _stack_forward(cell, module.num_layers, module.bidirectional, False, x, h0,
                                   c0, weights, lengths, masks, precision)
    return _tensor(ya, x.dtype), _tensor(ha, x.dtype), None if ca is None else _tensor(ca, x.dtype)


def _eager(tensors: tuple[Tensor | None, ...]) -> bool:
    """Whether a stack call may skip the ``stack`` operator (`_StackFunction`, or no autograd
    at all): nothing traces it (torch.compile, torch.export, make_fx), no dispatch or torch
    function mode is active (FakeTensorMode, a device context) and the tensors are plain."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or torch._C._is_torch_function_mode_enabled()):
        return False
    return all(t is None or type(t) in _PLAIN for t in tensors)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _check_args(module: torch.nn.RNNBase, x: Tensor, hidden: object,
                batch_sizes: Tensor | None) -> None:
    """torch's own checks and messages: x's dtype against the weights, its sizes, hx's shapes.

    x is the module's input as torch checks it (batch_first layout, or packed data with
    batch_sizes); hidden is None, h_0, or (h_0, c_0).
    """
    if hidden is None:
        module.check_input(x, batch_sizes)
    else:
        module.check_forward_args(x, hidden, batch_sizes)  # type: ignore[arg-type]


def _no_torchscript(module: torch.nn.Module, how: str) -> RuntimeError:
    """The error for TorchScript (``how``: "script" or "trace") on a drop-in, saying what to use
    instead."""
    name = type(module).__name__
    what = "TorchScript (torch.jit.script)" if how == "script" else "torch.jit.trace"
    return RuntimeError(
        f"rnnkern.torch.{name} does not support {what}: its forward is Python around rnnkern's "
        f"operators. Use torch.compile(model) or torch.export.export(model, args) instead, or "
        f"{how} a torch.nn.{name} (same parameters: load_state_dict(model.state_dict()))")


def _no_trace(module: torch.nn.Module) -> None:
    """Raise under torch.jit.trace: the forward converts tensors to arrays, which a trace records
    as constants (its check then fails, or the trace gives the traced input's results for any
    other)."""
    if torch.jit.is_tracing():  # type: ignore[attr-defined,no-untyped-call]  # Dynamo folds it
        raise _no_torchscript(module, "trace")


def _forward(module: torch.nn.RNNBase, input: object,
             hx: object) -> tuple[Tensor | PackedSequence, State]:
    """torch.nn.RNNBase's forward contract on rnnkern's kernels (see the module docstring)."""
    _no_trace(module)
    weights = _weights(module)
    h0, c0 = _split_state(module, hx)
    packed: PackedSequence | None = None
    lengths: Tensor | None = None  # (B,) int64
    unbatched = False
    batch_dim = 0 if module.batch_first else 1
    hidden: object = None if h0 is None else (h0 if c0 is None else (h0, c0))
    if isinstance(input, PackedSequence):
        packed = input
        _check_tensor("input", input.data)
        _check_args(module, input.data, hidden, input.batch_sizes)
        # padded (T, B, I) and lengths (B,), both in the caller's batch order, like hx
        x, lengths = pad_packed_sequence(input)
    else:
        x = _check_tensor("input", input)
        if x.dim() not in (2, 3):
            raise ValueError(f"input: expected a 2-D (unbatched) or 3-D tensor, got {x.dim()}-D")
        unbatched = x.dim() == 2
        if unbatched:  # (T, I) with h0, c0 (L*D, H): a batch of one, as torch does
            x = x.unsqueeze(batch_dim)
            h0 = None if h0 is None else h0.unsqueeze(1)
            c0 = None if c0 is None else c0.unsqueeze(1)
            hidden = None if h0 is None else (h0 if c0 is None else (h0, c0))
        _check_args(module, x, hidden, None)
        if module.batch_first:
            x = x.transpose(0, 1)  # (T, B, I)
        if x.shape[0] == 0:  # torch's own error (raised by its kernels)
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    precision, dtypes = _lower_precision(module, weights[0].dtype, x, packed is not None)
    for name, t in (("h_0", h0), ("c_0", c0)):
        if t is not None and t.dtype != x.dtype and not _autocast_bf16():  # autocast casts
            raise TypeError(f"{name}: dtype {t.dtype} does not match the input's dtype {x.dtype}")
    if dtypes is not None:  # the kernels take float32, exact for bfloat16 values
        x = x.float()
        h0, c0 = (None if t is None else t.float() for t in (h0, c0))
    out, h_n, c_n = _run_stack(module, weights, x, h0, c0, lengths, packed, precision)
    if dtypes is not None:  # autograd casts the gradients back
        out, h_n = out.to(dtypes[0]), h_n.to(dtypes[1])
        c_n = None if c_n is None else c_n.to(dtypes[2])
    output: Tensor | PackedSequence
    if packed is not None:
        assert lengths is not None
        # back to the input's packing: same batch_sizes and permutations
        order = packed.sorted_indices
        ordered = out if order is None else out.index_select(1, order)  # (T, B, D*H) sorted
        sorted_lengths = lengths if order is None else lengths[order]
        data = pack_padded_sequence(ordered, sorted_lengths, enforce_sorted=True).data
        output = PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                packed.unsorted_indices)
    elif unbatched:
        output = out.squeeze(1)  # (T, D*H): batch_first does not apply to unbatched input
        h_n = h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    else:
        output = out.transpose(0, 1) if module.batch_first else out  # a view, as torch returns
    return output, (h_n if c_n is None else (h_n, c_n))


# ----------------------------------------------------------------------------- bf16 and int8


def _autocast_bf16() -> bool:
    """Whether ``torch.autocast("cpu", dtype=torch.bfloat16)`` is on."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == _BF16


def _lower_precision(module: torch.nn.RNNBase, weight_dtype: torch.dtype, x: Tensor,
                     packed: bool) -> tuple[str, tuple[torch.dtype, ...] | None]:
    """The precision of the products for input x (T, B, I) and weights of ``weight_dtype``
    (torch's check_input has matched them, but under autocast), and the dtypes of (output, h_n,
    c_n) torch's module gives, or None: x's own, float32 or float64, nothing to cast.

    A bfloat16 module and input run in "bf16" and return bfloat16. Under CPU autocast to
    bfloat16, float32 or bfloat16 modules run in "bf16" (torch multiplies in bfloat16 there too)
    and return what torch 2.13's own module returns (tests/test_torch_precision.py compares):
    bfloat16 for RNN, for a bfloat16 input and for an LSTM on a tensor without projection
    (oneDNN's LSTM); float32 for GRU and for an LSTM's c_n, and for its output and h_n on a
    packed input without projection (torch's own cells, whose c stays float32). Otherwise the
    precision ``convert`` gave the module ("float" by default).
    """
    chosen: str = getattr(module, "_rnnkern_precision", "float")
    f32 = torch.float32
    if (_autocast_bf16() and chosen != "int8" and x.dtype in (f32, _BF16)
            and weight_dtype in (f32, _BF16)):
        if x.dtype == _BF16 or module.mode.startswith("RNN"):
            return "bf16", (_BF16,) * 3
        if module.mode == "GRU":
            return "bf16", (f32,) * 3
        h = _BF16 if module.proj_size or not packed else f32
        return "bf16", (h, h, f32 if module.proj_size or packed else _BF16)
    if x.dtype == _BF16:
        return "bf16", (_BF16,) * 3
    return chosen, None


# ----------------------------------------------------------------------------- the modules


def _weights(module: torch.nn.RNNBase) -> list[Tensor]:
    """The module's weights in torch's _flat_weights order, by name (torch.export lifts
    module._flat_weights' tensors as constants; parametrizations compute theirs), each checked:
    they may have been moved or cast since __init__."""
    return [_check_tensor(name, getattr(module, name)) for name in module._flat_weights_names]


def _check_module(module: torch.nn.RNNBase, meta: bool = False) -> None:
    """Reject what the kernels cannot run: parameters that are not float32/float64 on the CPU
    (or on the meta device if ``meta``: a module built for deferred initialization)."""
    for name, p in module.named_parameters():
        _check_tensor(name, p, meta)


class _OnRnnkern:
    """What the three drop-ins add to their torch class: the check at construction and a forward
    on rnnkern's kernels. Everything else (constructor, parameters, repr) is torch's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_module(self, meta=True)  # type: ignore[arg-type]

    def forward(self, input: Any, hx: Any = None) -> Any:
        if torch._C._are_functorch_transforms_active():  # torch.func (vmap, grad): torch's own
            return super().forward(input, hx)  # type: ignore[misc]
        return _forward(self, input, hx)  # type: ignore[arg-type]

    def __prepare_scriptable__(self) -> None:
        """torch.jit.script calls this first, on every submodule: say what works instead."""
        raise _no_torchscript(self, "script")  # type: ignore[arg-type]


class LSTM(_OnRnnkern, torch.nn.LSTM):
    """``torch.nn.LSTM`` (same constructor, parameters, inputs and outputs) on rnnkern's kernels.

    input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence;
    hx = (h_0, c_0), each (L*D, B, H), or None. Returns output (T, B, D*H) (or packed) and
    (h_n, c_n) (L*D, B, H). With ``proj_size`` P: h_0, h_n (L*D, B, P) and output (T, B, D*P),
    as torch. CPU, float32 or float64.
    """


class GRU(_OnRnnkern, torch.nn.GRU):
    """``torch.nn.GRU`` (same constructor, parameters, inputs and outputs) on rnnkern's kernels.

    input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence;
    hx (L*D, B, H) or None. Returns output (T, B, D*H) (or packed) and h_n (L*D, B, H).
    CPU, float32 or float64.
    """


class RNN(_OnRnnkern, torch.nn.RNN):
    """``torch.nn.RNN`` (tanh or relu; same constructor, parameters, inputs and outputs) on
    rnnkern's kernels.

    input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence;
    hx (L*D, B, H) or None. Returns output (T, B, D*H) (or packed) and h_n (L*D, B, H).
    CPU, float32 or float64.
    """


# ----------------------------------------------------------------------------- convert

_DROP_INS: dict[type[torch.nn.Module], Callable[..., torch.nn.RNNBase]] = {
    torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.RNN: RNN}


def _drop_in(module: torch.nn.RNNBase) -> torch.nn.RNNBase:
    """The rnnkern module configured like ``module`` and holding its very Parameter objects."""
    _check_module(module)
    kwargs: dict[str, Any] = {
        "num_layers": module.num_layers, "bias": module.bias, "batch_first": module.batch_first,
        "dropout": module.dropout, "bidirectional": module.bidirectional, "device": "meta"}
    if isinstance(module, torch.nn.RNN):
        kwargs["nonlinearity"] = module.nonlinearity
    if isinstance(module, torch.nn.LSTM):
        kwargs["proj_size"] = module.proj_size
    # Built on the meta device (nothing allocated), then given the original parameters, so
    # optimizers, tied weights and requires_grad flags keep referring to them.
    with warnings.catch_warnings():  # torch's dropout warning was given for the original
        warnings.filterwarnings("ignore", "dropout option adds dropout", UserWarning)
        new = _DROP_INS[type(module)](module.input_size, module.hidden_size, **kwargs)
    for name in module._flat_weights_names:
        setattr(new, name, getattr(module, name))
    new._init_flat_weights()
    new.train(module.training)
    return new


def convert(model: torch.nn.Module, precision: str = "float") -> torch.nn.Module:
    """Replace every ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` in ``model`` by rnnkern's, in place
    (and every ``LSTMCell`` / ``GRUCell`` / ``RNNCell``), running ``precision``.

    precision (docs/precision.md): "float" computes in the parameters' dtype; "bf16" multiplies
    bfloat16-rounded operands and sums in float32 (float32 parameters, inputs and results;
    training too); "int8" (float32, inference only: a call that would record gradients raises
    ValueError naming precision) multiplies int8 weights by u8 activations. Replaced modules
    and drop-ins already in ``model`` get the precision.

    Submodules are searched recursively; exact instances of the three torch classes are replaced
    (subclasses are left alone: they may have their own forward). The replacements hold the same
    Parameter objects (so the state_dict is unchanged and an optimizer made before keeps
    working) and the same training mode; hooks registered on the replaced modules are not
    carried over. Returns ``model``, or its replacement when ``model`` itself is such a module.
    Raises TypeError for parameters that are not float32/float64/bfloat16 on the CPU (float32
    for "int8", float32 or bfloat16 for "bf16"), naming the submodule.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    _api.check_precision(precision, np.dtype(np.float32))
    return _convert(model, "model", precision)


def _convert(module: torch.nn.Module, path: str, precision: str) -> torch.nn.Module:
    if type(module) in CELL_DROP_INS or isinstance(module, tuple(CELL_DROP_INS.values())):
        new = drop_in_cell(module) if type(module) in CELL_DROP_INS else module
        return _with_precision(new, path, precision)
    if type(module) in _DROP_INS or isinstance(module, _OnRnnkern):
        try:
            new = module if isinstance(module, _OnRnnkern) else _drop_in(module)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            raise type(e)(f"{path}: {e}") from None
        return _with_precision(new, path, precision)
    for name, child in list(module.named_children()):
        new = _convert(child, f"{path}.{name}", precision)
        if new is not child:
            setattr(module, name, new)
    return module


def _with_precision(module: torch.nn.Module, path: str, precision: str) -> torch.nn.Module:
    """``module`` (a drop-in) set to run ``precision``; TypeError naming ``path`` if its
    parameters' dtype does not take it."""
    allowed = {"float": _FLOAT_DTYPES, "bf16": (torch.float32, _BF16), "int8": (torch.float32,)}
    for name, p in module.named_parameters():
        if p.dtype not in allowed[precision]:
            raise TypeError(f"{path}: precision {precision!r} takes float32 parameters, got "
                            f"{name} of dtype {p.dtype}")
    module._rnnkern_precision = precision  # type: ignore[assignment]
    return module


# ---------------------------------------------------------------------------- cells: torch_cells.py

from rnnkern.torch_cells import (  # noqa: E402  (they use _NoDoubleBackward above)
    CELL_DROP_INS,
    GRUCell,
    LSTMCell,
    RNNCell,
    drop_in_cell,
)

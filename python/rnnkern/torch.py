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

Restrictions: CPU tensors, float32 or float64, no LSTM projections (``proj_size=0``), no double
backward, no TorchScript.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Union, overload

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

from rnnkern import _api, _cells, _core, _functional
from rnnkern._api import Array
from rnnkern.nn.rnn import _reverse, _reverse_index

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "convert"]

Tensor = torch.Tensor
#: A recurrent state as the modules take and return it: h, or (h, c) for the LSTM.
State = Union[Tensor, tuple[Tensor, Tensor]]

_FLOAT_DTYPES = (torch.float32, torch.float64)

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
# torch.ops.rnnkern.layer runs one direction of one layer on rnnkern._core.forward and
# torch.ops.rnnkern.layer_backward its gradients on rnnkern._core.backward. Registered with
# torch.library (a fake function for the shapes, an autograd formula), torch.compile and
# torch.export see each as one opaque node, and the Python code around them (layers, cat,
# dropout, packing) is plain torch. Results a cell does not have are empty (0,) tensors.

# rnnkern._core's cell ids (rnnkern::Cell) -> the cell name of rnnkern._api's checks
_CELL_NAMES = _cells.FAMILY
# torch's RNNBase.mode -> rnnkern._core's cell id
_CELL_IDS = {"LSTM": _functional._LSTM, "GRU": _functional._GRU,
             "RNN_TANH": _functional._RNN_IDS["tanh"], "RNN_RELU": _functional._RNN_IDS["relu"]}

_Seven = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _check_cell(cell: int) -> str:
    if cell not in _CELL_NAMES:
        raise ValueError(f"cell: expected a cell id in 0..5 (rnnkern._core), got {cell}")
    return _CELL_NAMES[cell]


def _kernel_order(a: Array, lengths: Array | None, reverse: bool) -> Array:
    """``a`` (T, B, F) in the kernel's time order: reversed within each sequence's length for
    the reverse direction (an involution: also the way back), else unchanged."""
    if not reverse:
        return a
    return _reverse(a, _reverse_index(lengths, a.shape[0]))


@torch.library.custom_op("rnnkern::layer", mutates_args=(), device_types="cpu")
def layer(cell: int, reverse: bool, training: bool, x: Tensor, h0: Tensor | None,
          c0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
          b_hh: Tensor | None, lengths: Tensor | None) -> _Seven:
    """One direction of one layer: x (T, B, I), h0, c0 (B, H) or None, w_ih (G*H, I),
    w_hh (G*H, H), b_ih, b_hh (G*H,) or None, lengths (B,) int64 in 1..T or None; ``reverse``
    runs each sequence backwards within its length.

    Returns y (T, B, H) in x's time order, zero past each length; h_n (B, H); c_n (B, H)
    (lstm); and, if ``training``, the buffers of the backward in the kernel's time order:
    hs (T+1, B, H), cs (T+1, B, H) (lstm), gates (T, B, G*H) (lstm, gru), aux (T, B, H) (gru).
    """
    c = _api.check_forward(_check_cell(cell), _array(x), _array(h0), _array(c0), _array(w_ih),
                           _array(w_hh), _array(b_ih), _array(b_hh), _array(lengths))
    xk = np.ascontiguousarray(_kernel_order(c.x, c.lengths, reverse))  # (T, B, I)
    y, h_n, c_n, buffers = _core.forward(cell, xk, c.h0, c.c0, c.w_ih, c.w_hh, c.b_ih, c.b_hh,
                                         c.lengths, bool(training))
    if c.lengths is not None and training:
        # The kernels leave gates and aux unwritten past each length (the backward never reads
        # them there); an operator's results must not depend on what memory held before.
        padded = np.arange(c.T)[:, None] >= c.lengths[None, :]  # (T, B)
        for a in buffers[2:]:  # gates (T, B, G*H), aux (T, B, H), or None
            if a is not None:
                a[padded] = 0
    y = _kernel_order(y, c.lengths, reverse)  # (T, B, H) in x's time order
    return tuple(_tensor(a, x.dtype) for a in (y, h_n, c_n, *buffers))  # type: ignore[return-value]


@layer.register_fake
def _layer_fake(cell: int, reverse: bool, training: bool, x: Tensor, h0: Tensor | None,
                c0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None, lengths: Tensor | None) -> _Seven:
    """layer's results as empty tensors of the right shapes (rnnkern::cache_layout's)."""
    name = _check_cell(cell)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    lstm, gru = name == "lstm", name == "gru"

    def new(present: bool, *shape: Any) -> Tensor:
        return x.new_empty(shape if present else (0,))

    GH = w_hh.shape[0]
    return (new(True, T, B, H), new(True, B, H), new(lstm, B, H), new(training, T + 1, B, H),
            new(training and lstm, T + 1, B, H), new(training and (lstm or gru), T, B, GH),
            new(training and gru, T, B, H))


@torch.library.custom_op("rnnkern::layer_backward", mutates_args=(), device_types="cpu")
def layer_backward(cell: int, reverse: bool, x: Tensor, w_ih: Tensor, w_hh: Tensor,
                   has_bias: bool, lengths: Tensor | None, hs: Tensor, cs: Tensor, gates: Tensor,
                   aux: Tensor, dy: Tensor | None, dh_n: Tensor | None,
                   dc_n: Tensor | None) -> _Seven:
    """The gradients of a training ``layer`` call: its x, w_ih, w_hh, lengths and buffers
    (hs, cs, gates, aux), dy (T, B, H) in x's time order, dh_n, dc_n (B, H) (None: zeros).

    Returns dx (T, B, I), dh0 (B, H), dc0 (B, H) (lstm), dw_ih (G*H, I), dw_hh (G*H, H),
    db_ih, db_hh (G*H,) (if has_bias).
    """
    _check_cell(cell)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    lens = _api._check_lengths(_array(lengths), T, B)  # (B,) int64 or None
    # x (T, B, I), w_ih, w_hh, cache buffers: the bindings check their shapes and dtypes
    xa = np.ascontiguousarray(_kernel_order(_array(x), lens, reverse))
    weights = (np.ascontiguousarray(_array(w_ih)), np.ascontiguousarray(_array(w_hh)))
    grads = [_api.check_grad(name, a, shape, xa.dtype, symbols) for name, a, shape, symbols in (
        ("dy", None if dy is None else _kernel_order(_array(dy), lens, reverse), (T, B, H),
         ("T", "B", "H")),
        ("dh_n", _array(dh_n), (B, H), ("B", "H")), ("dc_n", _array(dc_n), (B, H), ("B", "H")))]
    dy_, dh_, dc_ = grads
    dx, *rest = _core.backward(cell, xa, *weights, bool(has_bias), lens,
                               tuple(_array(b) for b in (hs, cs, gates, aux)), dy_, dh_, dc_)
    dx = _kernel_order(dx, lens, reverse)  # (T, B, I) in x's time order
    return tuple(_tensor(a, x.dtype) for a in (dx, *rest))  # type: ignore[return-value]


@layer_backward.register_fake
def _layer_backward_fake(cell: int, reverse: bool, x: Tensor, w_ih: Tensor, w_hh: Tensor,
                         has_bias: bool, lengths: Tensor | None, hs: Tensor, cs: Tensor,
                         gates: Tensor, aux: Tensor, dy: Tensor | None, dh_n: Tensor | None,
                         dc_n: Tensor | None) -> _Seven:
    """layer_backward's results as empty tensors of the right shapes."""
    lstm = _check_cell(cell) == "lstm"
    B, H = x.shape[1], w_hh.shape[1]
    bias = (w_hh.shape[0],) if has_bias else (0,)
    return (x.new_empty(x.shape), x.new_empty(B, H), x.new_empty((B, H) if lstm else (0,)),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), x.new_empty(bias),
            x.new_empty(bias))


def _layer_setup_context(ctx: Any, inputs: tuple[Any, ...], output: _Seven) -> None:
    cell, reverse, training, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths = inputs
    buffers = output[3:]  # hs, cs, gates, aux: (0,) if training was False
    ctx.mark_non_differentiable(*buffers, *(() if cell == _functional._LSTM else output[2:3]))
    ctx.set_materialize_grads(False)  # None stays None: the kernels take dy=None, dh_n=None
    ctx.cell, ctx.reverse, ctx.training, ctx.has_bias = cell, reverse, training, b_ih is not None
    # Saving x and the weights makes autograd raise if they are changed in place before the
    # backward; h0, c0 and the biases are saved as anchors for _NoDoubleBackward.
    ctx.save_for_backward(x, w_ih, w_hh, lengths, *buffers, h0, c0, b_ih, b_hh)


def _layer_backward_formula(ctx: Any, dy: Tensor | None, dh_n: Tensor | None,
                            dc_n: Tensor | None, *buffers: Tensor | None) -> tuple[Any, ...]:
    x, w_ih, w_hh, lengths, hs, cs, gates, aux, *anchors = ctx.saved_tensors
    if not ctx.training:
        raise RuntimeError("rnnkern::layer: the forward ran with training=False and kept "
                           "nothing for a backward")
    with torch.no_grad():
        lstm = ctx.cell == _functional._LSTM  # else c_n is an empty (0,) result
        grads = layer_backward(ctx.cell, ctx.reverse, x, w_ih, w_hh, ctx.has_bias, lengths, hs,
                               cs, gates, aux, dy, dh_n, dc_n if lstm else None)
    needed = ctx.needs_input_grad[3:10]  # x, h0, c0, w_ih, w_hh, b_ih, b_hh
    out = [g if need else None for g, need in zip(grads, needed)]
    if torch.is_grad_enabled():  # create_graph=True: make differentiating them raise
        anchors = [t for t in (x, w_ih, w_hh, *anchors) if t is not None and t.requires_grad]
        wrap = _NoDoubleBackward.apply
        out = [None if g is None else wrap(g, *anchors) for g in out]  # type: ignore[no-untyped-call]
    return (None, None, None, *out, None)


layer.register_autograd(_layer_backward_formula, setup_context=_layer_setup_context)


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
    """``t`` if it is a CPU float32/float64 tensor (or on the meta device if ``meta``), else a
    TypeError naming ``name``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu" and not (meta and t.device.type == "meta"):
        raise TypeError(f"{name}: rnnkern.torch runs on the CPU only, got device {t.device}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype {t.dtype} is not supported (float32 or float64)")
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


def _packed_noise(like: Tensor, packed: PackedSequence, p: float) -> Tensor:
    """Dropout noise (T, B, F) for a padded layer output, drawn as torch draws it for packed input.

    PyTorch applies dropout to the packed data (N, F); drawing on that shape keeps a seeded run
    identical to torch's. Padded steps get zeros (the outputs there are zero anyway).
    """
    data = torch.ones((packed.data.shape[0], like.shape[2]), dtype=like.dtype)  # (N, F)
    noise = F.dropout(data, p, training=True)  # (N, F) 0 or 1/(1-p)
    padded, _ = pad_packed_sequence(
        PackedSequence(noise, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
        total_length=like.shape[0])
    return padded  # (T, B, F)


def _run_stack(module: torch.nn.RNNBase, x: Tensor, h0: Tensor | None, c0: Tensor | None,
               lengths: Tensor | None,
               packed: PackedSequence | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """All layers and directions on x (T, B, I); h0, c0 (L*D, B, H) or None; lengths (B,)
    int64 or None.

    Returns output (T, B, D*H) zero past each length, h_n (L*D, B, H), c_n (L*D, B, H) or None.
    """
    cell = _CELL_IDS[module.mode]
    D = 2 if module.bidirectional else 1
    grad = torch.is_grad_enabled()
    dropout = module.dropout if module.training else 0.0
    layer_in = x.contiguous()  # (T, B, I) then (T, B, D*H); one copy, saved for the backward
    h_n, c_n = [], []  # (B, H) per (layer, direction)
    for k_layer in range(module.num_layers):
        outs = []
        for d in range(D):
            k = k_layer * D + d
            names = module._all_weights[k]
            w_ih, w_hh = getattr(module, names[0]), getattr(module, names[1])
            b_ih, b_hh = (getattr(module, n) for n in names[2:4]) if module.bias else (None, None)
            tensors = (layer_in, None if h0 is None else h0[k], None if c0 is None else c0[k],
                       w_ih, w_hh, b_ih, b_hh)
            keep = grad and any(t is not None and t.requires_grad for t in tensors)
            y, h, c, *_ = layer(cell, d == 1, keep, *tensors, lengths)
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_in = outs[0] if D == 1 else torch.cat(outs, dim=2)
        if dropout > 0 and k_layer < module.num_layers - 1:
            if packed is None:
                layer_in = F.dropout(layer_in, dropout, training=True)
            else:
                layer_in = layer_in * _packed_noise(layer_in, packed, dropout)
    return (layer_in, torch.stack(h_n),  # (L*D, B, H)
            torch.stack(c_n) if module.mode == "LSTM" else None)


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


def _forward(module: torch.nn.RNNBase, input: object,
             hx: object) -> tuple[Tensor | PackedSequence, State]:
    """torch.nn.RNNBase's forward contract on rnnkern's kernels (see the module docstring)."""
    _check_module(module)  # parameters may have been moved or cast since __init__
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
    for name, t in (("h_0", h0), ("c_0", c0)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} does not match the input's dtype {x.dtype}")
    out, h_n, c_n = _run_stack(module, x, h0, c0, lengths, packed)
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


# ----------------------------------------------------------------------------- the modules


def _check_module(module: torch.nn.RNNBase, meta: bool = False) -> None:
    """Reject what the kernels cannot run: projections, parameters that are not float32/float64
    on the CPU (or on the meta device if ``meta``: a module built for deferred initialization)."""
    if module.proj_size != 0:
        raise ValueError(f"proj_size: rnnkern has no LSTM projections, got {module.proj_size}")
    for name, p in module.named_parameters():
        _check_tensor(name, p, meta)


class _OnRnnkern:
    """What the three drop-ins add to their torch class: the check at construction and a forward
    on rnnkern's kernels. Everything else (constructor, parameters, repr) is torch's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _check_module(self, meta=True)  # type: ignore[arg-type]

    def forward(self, input: Any, hx: Any = None) -> Any:
        return _forward(self, input, hx)  # type: ignore[arg-type]

    def __prepare_scriptable__(self) -> None:
        """torch.jit.script calls this first, on every submodule: say what works instead."""
        name = type(self).__name__
        raise RuntimeError(
            f"rnnkern.torch.{name} does not support TorchScript (torch.jit.script): its forward "
            f"is Python around rnnkern's operators. Use torch.compile(model) or "
            f"torch.export.export(model, args) instead, or script a torch.nn.{name} (same "
            f"parameters: load_state_dict(model.state_dict()))")


class LSTM(_OnRnnkern, torch.nn.LSTM):
    """``torch.nn.LSTM`` (same constructor, parameters, inputs and outputs) on rnnkern's kernels.

    input (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence;
    hx = (h_0, c_0), each (L*D, B, H), or None. Returns output (T, B, D*H) (or packed) and
    (h_n, c_n) (L*D, B, H). CPU, float32 or float64; ``proj_size`` must be 0.
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


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` in ``model`` by rnnkern's, in place
    (and every ``LSTMCell`` / ``GRUCell`` / ``RNNCell``).

    Submodules are searched recursively; exact instances of the three torch classes are replaced
    (subclasses are left alone: they may have their own forward). The replacements hold the same
    Parameter objects (so the state_dict is unchanged and an optimizer made before keeps
    working) and the same training mode; hooks registered on the replaced modules are not
    carried over. Returns ``model``, or its replacement when ``model`` itself is such a module.
    Raises ValueError for an LSTM with ``proj_size > 0`` and TypeError for parameters that are
    not float32/float64 on the CPU, naming the submodule.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return _convert(model, "model")


def _convert(module: torch.nn.Module, path: str) -> torch.nn.Module:
    if type(module) in CELL_DROP_INS:
        return drop_in_cell(module)
    if type(module) in _DROP_INS:
        try:
            return _drop_in(module)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            raise type(e)(f"{path}: {e}") from None
    for name, child in list(module.named_children()):
        new = _convert(child, f"{path}.{name}")
        if new is not child:
            setattr(module, name, new)
    return module


# ---------------------------------------------------------------------------- cells: torch_cells.py

from rnnkern.torch_cells import (  # noqa: E402  (they use _NoDoubleBackward above)
    CELL_DROP_INS,
    GRUCell,
    LSTMCell,
    RNNCell,
    drop_in_cell,
)

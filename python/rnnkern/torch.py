"""PyTorch drop-ins on rnnkern's kernels: ``rnnkern.torch.LSTM``, ``GRU``, ``RNN``, ``convert``.

Only ``import rnnkern.torch`` imports torch; ``import rnnkern`` never does.

The modules subclass ``torch.nn.LSTM`` / ``GRU`` / ``RNN``: same constructor, parameter names,
shapes and initialization (torch's own ``__init__`` and ``reset_parameters`` run), same inputs
(a tensor, batched or not, time-major or ``batch_first``, or a ``PackedSequence``; optional
``h0`` / ``(h0, c0)``) and outputs. Only ``forward`` differs: every (layer, direction) runs
``rnnkern.{rnn,lstm,gru}_forward`` on NumPy views of the CPU tensors inside a
``torch.autograd.Function`` whose backward is ``rnnkern.*_backward``. Between layers, in
training mode, dropout is torch's own ``F.dropout`` drawn on the same tensor shape as PyTorch's
native implementation, so a seeded run draws the same masks as ``torch.nn.LSTM`` & co.

Restrictions: CPU tensors, float32 or float64, no LSTM projections (``proj_size=0``), no double
backward.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union, overload

import numpy as np

try:
    import torch
    import torch.nn.functional as F
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
except ImportError as e:  # torch missing, or a broken install (a leftover torch/ folder)
    raise ModuleNotFoundError(
        f"rnnkern.torch needs PyTorch, which could not be imported ({e}); install it with "
        f'pip install "rnnkern[torch]"', name="torch") from e

import rnnkern
from rnnkern._api import Array
from rnnkern.nn.rnn import _reverse, _reverse_index

__all__ = ["GRU", "LSTM", "RNN", "convert"]

Tensor = torch.Tensor
#: A recurrent state as the modules take and return it: h, or (h, c) for the LSTM.
State = Union[Tensor, tuple[Tensor, Tensor]]

_FLOAT_DTYPES = (torch.float32, torch.float64)
# torch's RNNBase.mode -> (rnnkern cell, nonlinearity of rnn_forward)
_CELLS = {"LSTM": ("lstm", ""), "GRU": ("gru", ""), "RNN_TANH": ("rnn", "tanh"),
          "RNN_RELU": ("rnn", "relu")}


# ----------------------------------------------------------------------------- numpy <-> torch


@overload
def _array(t: Tensor) -> Array: ...
@overload
def _array(t: Tensor | None) -> Array | None: ...
def _array(t: Tensor | None) -> Array | None:
    """A NumPy view of a CPU tensor (no copy; the kernels copy what is not contiguous)."""
    return None if t is None else t.detach().numpy()


def _tensor(a: Array | None) -> Tensor | None:
    """A tensor on ``a``'s memory, copied first only if it is not C-contiguous and writeable or
    has a negative stride: NumPy flags a reversed view with one step, ``a[::-1]`` of shape
    (1, B, H), C-contiguous, but torch.from_numpy refuses any negative stride."""
    if a is None:
        return None
    if not (a.flags.c_contiguous and a.flags.writeable) or any(s < 0 for s in a.strides):
        a = np.array(a, order="C")
    return torch.from_numpy(a)


# ----------------------------------------------------------------------------- one layer-direction


@dataclass(frozen=True)
class _Spec:
    """What one (layer, direction) run needs besides its tensors."""

    cell: str  # "rnn", "lstm" or "gru"
    nonlinearity: str  # "tanh" or "relu" for "rnn", unused ("") for "lstm" and "gru"
    reverse: bool  # run each sequence backwards within its own length
    lengths: Array | None  # (B,) int64 in 1..T, or None: every sequence has T steps
    rev: Array | None  # (T, B) per-sequence reversal index (see _reverse_index), or None
    keep: bool  # keep the kernel's cache for a backward


class _LayerFunction(torch.autograd.Function):
    """One direction of one layer on rnnkern's kernels.

    apply(spec, x (T, B, I), h0 (B, H) | None, c0 (B, H) | None, w_ih (G*H, I), w_hh (G*H, H),
    b_ih (G*H,) | None, b_hh (G*H,) | None) -> (y (T, B, H), h_n (B, H)) and c_n (B, H) for the
    LSTM; y is zero past each sequence's length. Everything has x's dtype (float32 or float64).
    """

    @staticmethod
    def forward(ctx: Any, spec: _Spec, x: Tensor, h0: Tensor | None, c0: Tensor | None,
                w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                b_hh: Tensor | None) -> tuple[Tensor, ...]:
        xa = _array(x)  # (T, B, I)
        if spec.reverse:
            xa = _reverse(xa, spec.rev)  # (T, B, I) each sequence reversed within its length
        h0a, wa_ih, wa_hh, ba_ih, ba_hh = (_array(h0), _array(w_ih), _array(w_hh), _array(b_ih),
                                           _array(b_hh))
        kw: dict[str, Any] = {"lengths": spec.lengths, "training": spec.keep}
        finals: tuple[Array, ...]
        if spec.cell == "lstm":
            y, h_n, c_n, cache = rnnkern.lstm_forward(xa, h0a, _array(c0), wa_ih, wa_hh, ba_ih,
                                                      ba_hh, **kw)
            finals = (h_n, c_n)
        elif spec.cell == "gru":
            y, h_n, cache = rnnkern.gru_forward(xa, h0a, wa_ih, wa_hh, ba_ih, ba_hh, **kw)
            finals = (h_n,)
        else:
            y, h_n, cache = rnnkern.rnn_forward(xa, h0a, wa_ih, wa_hh, ba_ih, ba_hh,
                                                nonlinearity=spec.nonlinearity, **kw)
            finals = (h_n,)
        if spec.reverse:
            y = _reverse(y, spec.rev)  # (T, B, H) back in input time order
        ctx.spec, ctx.cache = spec, cache
        # The cache refers to x's and the weights' memory: saving them makes autograd raise if
        # they are changed in place before the backward (the others anchor _NoDoubleBackward).
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        ctx.set_materialize_grads(False)  # None stays None: the kernels take dy=None, dh_n=None
        return tuple(_tensor(a) for a in (y, *finals))  # type: ignore[misc]

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, dh_n: Tensor | None,
                 dc_n: Tensor | None = None) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors  # raises if x or a weight was modified in place
        with torch.no_grad():
            grads = _LayerFunction._grads(ctx, dy, dh_n, dc_n)
        if torch.is_grad_enabled():  # create_graph=True: make differentiating them raise
            anchors = [t for t in saved if t is not None and t.requires_grad]
            wrap = _NoDoubleBackward.apply
            grads = tuple(None if g is None else wrap(g, *anchors)  # type: ignore[no-untyped-call]
                          for g in grads)
        return grads

    @staticmethod
    def _grads(ctx: Any, dy: Tensor | None, dh_n: Tensor | None,
               dc_n: Tensor | None) -> tuple[Tensor | None, ...]:
        """The gradients of apply's arguments (None for those that need none)."""
        spec: _Spec = ctx.spec
        dya = _array(dy)
        if spec.reverse and dya is not None:
            dya = _reverse(dya, spec.rev)  # (T, B, H) in the kernel's (reversed) time order
        if spec.cell == "lstm":
            dx, dh0, dc0, *dweights = rnnkern.lstm_backward(ctx.cache, dya, _array(dh_n),
                                                            _array(dc_n))
        else:
            fn = rnnkern.gru_backward if spec.cell == "gru" else rnnkern.rnn_backward
            dx, dh0, *dweights = fn(ctx.cache, dya, _array(dh_n))
            dc0 = None
        if spec.reverse:
            dx = _reverse(dx, spec.rev)  # (T, B, I) back in input time order
        grads = (None, dx, dh0, dc0, *dweights)
        return tuple(_tensor(g) if need else None
                     for g, need in zip(grads, ctx.needs_input_grad))


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
               lengths: Array | None,
               packed: PackedSequence | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """All layers and directions on x (T, B, I); h0, c0 (L*D, B, H) or None.

    Returns output (T, B, D*H) zero past each length, h_n (L*D, B, H), c_n (L*D, B, H) or None.
    """
    cell, nonlinearity = _CELLS[module.mode]
    D = 2 if module.bidirectional else 1
    steps = x.shape[0]
    rev = _reverse_index(lengths, steps)  # (T, B) or None
    grad = torch.is_grad_enabled()
    dropout = module.dropout if module.training else 0.0
    layer_in = x  # (T, B, I) then (T, B, D*H)
    finals: list[list[Tensor]] = []  # [h_n] or [h_n, c_n] per (layer, direction)
    for layer in range(module.num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            names = module._all_weights[k]
            w_ih, w_hh = getattr(module, names[0]), getattr(module, names[1])
            b_ih, b_hh = (getattr(module, n) for n in names[2:4]) if module.bias else (None, None)
            tensors = (layer_in, None if h0 is None else h0[k], None if c0 is None else c0[k],
                       w_ih, w_hh, b_ih, b_hh)
            keep = grad and any(t is not None and t.requires_grad for t in tensors)
            spec = _Spec(cell, nonlinearity, d == 1, lengths, rev, keep)
            y, *state = _LayerFunction.apply(spec, *tensors)  # type: ignore[no-untyped-call]
            outs.append(y)
            finals.append(state)
        layer_in = outs[0] if D == 1 else torch.cat(outs, dim=2)
        if dropout > 0 and layer < module.num_layers - 1:
            if packed is None:
                layer_in = F.dropout(layer_in, dropout, training=True)
            else:
                layer_in = layer_in * _packed_noise(layer_in, packed, dropout)
    h_n = torch.stack([s[0] for s in finals])  # (L*D, B, H)
    c_n = torch.stack([s[1] for s in finals]) if cell == "lstm" else None  # (L*D, B, H)
    return layer_in, h_n, c_n


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
    lengths: Array | None = None
    unbatched = False
    batch_dim = 0 if module.batch_first else 1
    hidden: object = None if h0 is None else (h0 if c0 is None else (h0, c0))
    if isinstance(input, PackedSequence):
        packed = input
        _check_tensor("input", input.data)
        _check_args(module, input.data, hidden, input.batch_sizes)
        # padded (T, B, I) and lengths (B,), both in the caller's batch order, like hx
        x, lengths_t = pad_packed_sequence(input)
        lengths = lengths_t.numpy().astype(np.int64)
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
        sorted_lengths = torch.as_tensor(lengths)
        if order is not None:
            sorted_lengths = sorted_lengths[order]
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
    """Replace every ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` in ``model`` by rnnkern's, in place.

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

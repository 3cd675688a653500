"""PyTorch drop-in cells on rnnkern's kernels: ``rnnkern.torch.RNNCell``, ``LSTMCell``, ``GRUCell``.

They subclass torch's cells (same constructor, parameters, initialization, repr). ``forward`` runs
one step on the kernels with the weights packed once (``rnnkern.torch``'s packs): the pack is
made again when a parameter's bits (compared with a copy at every call, so writes through
``.data`` or a NumPy view are seen too) or the ISA changed. Autograd as torch's: the step's inputs
are saved, so changing one in place before the backward raises torch's own error.

What the kernels do not run goes to torch's own cell, unchanged: anything but CPU float32 /
float64 tensors of the parameters' dtype with exactly the expected shapes (so a wrong shape gets
torch's own error message), an empty batch or a zero hidden size.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import _core
from . import _functional as F
from .torch import _NoDoubleBackward
from .torch import _pack as _pack_weights

__all__ = ["GRUCell", "LSTMCell", "RNNCell"]

Tensor = torch.Tensor
_FLOAT_DTYPES = (torch.float32, torch.float64)


def _np(t: Tensor | None) -> Any:
    """The NumPy view of a CPU tensor (None stays None)."""
    return None if t is None else (t.detach() if t.requires_grad else t).numpy()


def _step(pack: Any, x: Tensor, h0: Tensor | None, c0: Tensor | None,
          train: bool) -> tuple[Tensor, Tensor | None, Any]:
    """One step on the kernels (``pack``: a _core.Pack), arguments of the right dtypes and shapes
    (``_fits``): (h, c or None, the cache (pack, x (1, B, I), buffers) or None), h and c shaped
    like h0."""
    xa, h0a, c0a = _np(x), _np(h0), _np(c0)
    out = pack.step(xa, h0a, c0a, train)
    if out is None:  # not C-contiguous: contiguous copies
        xa, h0a, c0a = (None if a is None else np.ascontiguousarray(a) for a in (xa, h0a, c0a))
        out = pack.step(xa, h0a, c0a, train)
        assert out is not None
    h, c, *cache = out
    return (torch.from_numpy(h), None if c is None else torch.from_numpy(c),
            (pack, *cache) if train else None)


class _CellFunction(torch.autograd.Function):
    """apply(pack, x (B, I) or (I,), h0 | None, c0 | None, w_ih, w_hh, b_ih, b_hh) -> h shaped
    like h0, and c for the LSTM. The weights are those of ``pack``; they are passed so that
    autograd sees them (their gradients, and the in-place check)."""

    @staticmethod
    def forward(ctx: Any, pack: Any, x: Tensor, h0: Tensor | None,
                c0: Tensor | None, *weights: Tensor | None) -> Any:
        h, c, ctx.cache = _step(pack, x, h0, c0, True)
        ctx.save_for_backward(x, h0, c0, *weights)
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
        dx, dh0, dc0, *dws = _core.backward_packed(pack, x3, None, buffers, None, dha, dca)
        h_shape = (*x_shape[:-1], H)
        grads = [None, dx.reshape(x_shape), dh0.reshape(h_shape),
                 None if dc0 is None else dc0.reshape(h_shape), *dws]
        out = [None if g is None or not need else torch.from_numpy(g)
               for g, need in zip(grads, ctx.needs_input_grad)]
        if torch.is_grad_enabled():  # create_graph=True: make differentiating them raise
            anchors = [t for t in saved if t is not None and t.requires_grad]
            out = [None if g is None else _NoDoubleBackward.apply(g, *anchors)  # type: ignore[no-untyped-call]
                   for g in out]
        return tuple(out)


def _pack(module: Any, cell: str, weights: tuple[Tensor | None, ...]) -> Any:
    """The module's weights packed (a _core.Pack), made again when their bits or the ISA changed
    (``rnnkern.torch._pack``)."""
    cell_id = F._LSTM if cell == "lstm" else F._GRU if cell == "gru" else F._RNN_IDS[
        module.nonlinearity]
    return _pack_weights(cell_id, (*weights, None))


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
    if (not _fits(module, input, (h0, c0), weights[1])
            or lstm and (h0 is None) != (c0 is None)):  # torch takes both or neither
        return super(type(module), module).forward(input, hx)  # torch's own checks and errors
    pack = _pack(module, cell, weights)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (input, h0, c0, *weights)):
        return _CellFunction.apply(pack, input, h0, c0, *weights)  # type: ignore[no-untyped-call]
    # nothing to differentiate: no autograd node (its cost is a third of a B=1 step)
    h, c, _ = _step(pack, input, h0, c0, False)
    return h if c is None else (h, c)


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

"""`Linear`: y = x W^T + b over the last axis, with PyTorch's parameter names and initialization.

Also the small base class `ParamModule` (params / grads / zero_grad / state_dict /
load_state_dict) that the feed-forward modules share.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Mapping, Optional, Union

import numpy as np
import numpy.typing as npt

from .. import _blas
from .._api import check_size
from .._functional import isa_generation

__all__ = ["Linear", "ParamModule", "WeightPacks"]

Array = npt.NDArray[Any]
Seed = Union[None, int, np.random.Generator]


def _check_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def _check_size(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


_DRAW_CHUNK = 1 << 20  # float64 values drawn at a time: the temporaries stay at 8 MB


def _random(name: str, shape: tuple[int, ...], dtype: np.dtype[Any],
            draw: Callable[[int], Array]) -> Array:
    """A new (shape) array of ``dtype`` filled with ``draw(n)`` (n float64 values) in chunks:
    the same values as ``draw(size).astype(dtype)`` without a float64 copy of the whole array.
    OverflowError/MemoryError naming the parameter and its element size before allocating."""
    check_size(name, *shape, itemsize=dtype.itemsize)
    out = np.empty(shape, dtype)  # (shape)
    flat = out.reshape(-1)  # (size,) view
    for start in range(0, flat.size, _DRAW_CHUNK):
        flat[start:start + _DRAW_CHUNK] = draw(min(_DRAW_CHUNK, flat.size - start))
    return out


def _uniform(rng: np.random.Generator, k: float, name: str, shape: tuple[int, ...],
             dtype: np.dtype[Any]) -> Array:
    """Parameter ``name`` of ``shape`` drawn from U(-k, k) (PyTorch's init), in ``dtype``."""
    return _random(name, shape, dtype, lambda n: rng.uniform(-k, k, n))


class ParamModule:
    """Parameters in `params` and their gradients (same keys, shapes, dtype) in `grads`.

    The arrays are updated in place (by optimizers and `load_state_dict`), never replaced, so an
    optimizer built on `params` / `grads` stays bound to them.
    """

    dtype: np.dtype[Any]
    params: dict[str, Array]
    grads: dict[str, Array]

    def _init_params(self, params: dict[str, Array], read_only: bool = False) -> None:
        self.params = params
        self.grads = {n: np.zeros_like(p) for n, p in params.items()}
        for p in params.values():
            p.flags.writeable = not read_only

    def _check_input(self, name: str, a: object) -> Array:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
        if a.dtype != self.dtype:
            raise TypeError(
                f"{name}: dtype {a.dtype} does not match the layer's dtype {self.dtype}")
        return a

    def zero_grad(self) -> None:
        """Set every gradient in `grads` to zero."""
        for g in self.grads.values():
            g.fill(0)

    def state_dict(self) -> dict[str, Array]:
        """Copies of the parameters, keyed by PyTorch's names."""
        return {name: p.copy() for name, p in self.params.items()}

    def load_state_dict(self, mapping: Mapping[str, Any]) -> None:
        """Load parameters from numpy arrays or torch tensors keyed by PyTorch's names.

        Every parameter must be present with its exact shape (KeyError / ValueError naming it);
        values are cast to the layer's dtype and copied in place. Nothing changes if a check fails.
        """
        missing = [n for n in self.params if n not in mapping]
        unexpected = [str(n) for n in mapping if n not in self.params]
        if missing:
            raise KeyError(f"load_state_dict: missing parameter(s) {', '.join(missing)}")
        if unexpected:
            raise KeyError(f"load_state_dict: unexpected parameter(s) {', '.join(unexpected)}")
        loaded: dict[str, Array] = {}
        for name, p in self.params.items():
            value = mapping[name]
            if hasattr(value, "detach"):  # a torch tensor
                value = value.detach().cpu().numpy()
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"{name}: expected a real numeric dtype, got dtype {arr.dtype}")
            if arr.shape != p.shape:
                raise ValueError(f"{name}: expected shape {p.shape}, got {arr.shape}")
            loaded[name] = arr
        for name, arr in loaded.items():
            self.params[name].flags.writeable = True  # read-only ones: repacked at the next call
            self.params[name][...] = arr


# id(parameter) -> how often it was found writeable and made read-only again, and the sum of all
# counts. A pack records the counts of its parameters, so a module whose parameters another
# module (sharing them) made read-only again still sees the change; while the sum is unchanged,
# no count needs reading.
_relocked: dict[int, int] = {}
_relocked_total = [0]


class WeightPacks:
    """The packed weights of a module's read-only parameters, one pack per key, made again when
    one of its parameters was made writeable (the sign that it may have changed in place) or
    `rnnkern.set_isa` chose other kernels; then the parameters are made read-only again.

    Checking costs a flag per parameter and two counters per call, not a look at the values: a
    write through a view taken while a parameter was writeable, after the next call, goes unseen.
    """

    def __init__(self, module: ParamModule, make: Callable[[Any], Any]) -> None:
        self._module = module
        self._make = make  # (w_ih, w_hh, b_ih, b_hh) -> packed weights
        # key -> [ISA generation, relock total seen, relock counts of the parameters, pack]
        self._packs: dict[Any, list[Any]] = {}

    def get(self, key: Any, weights: Sequence[Array | None]) -> Any:
        """The pack of ``weights`` (the module's parameter arrays for ``key``)."""
        entry = self._packs.get(key)
        if (entry is not None and entry[1] == _relocked_total[0] and entry[0] == isa_generation[0]
                and not any(w is not None and w.flags.writeable for w in weights)):
            return entry[3]  # the fast path: nothing was relocked anywhere since
        present = [w for w in weights if w is not None]
        if any(w.flags.writeable for w in present):
            for w in present:
                if w.flags.writeable:
                    w.flags.writeable = False
                    _relocked[id(w)] = _relocked.get(id(w), 0) + 1
                    _relocked_total[0] += 1
        counts = tuple(_relocked.get(id(w), 0) for w in present)
        if entry is not None and entry[0] == isa_generation[0] and entry[2] == counts:
            entry[1] = _relocked_total[0]  # others' parameters were relocked, not these
            return entry[3]
        pack = self._make(weights)
        self._packs[key] = [isa_generation[0], _relocked_total[0], counts, pack]
        return pack


class Linear(ParamModule):
    """Affine map over the last axis: y = x @ weight.T + bias, like `torch.nn.Linear`.

    weight (out_features, in_features), bias (out_features,) (absent if ``bias=False``), both
    uniform in +-1/sqrt(in_features) as PyTorch initializes them; reproducible with ``seed``
    (int, None or numpy Generator). ``dtype`` float32 or float64.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype: npt.DTypeLike = np.float32, seed: Seed = None) -> None:
        self.in_features = _check_size("in_features", in_features, 0)
        self.out_features = _check_size("out_features", out_features)
        self.dtype = _check_dtype(dtype)
        rng = np.random.default_rng(seed)
        # kaiming_uniform(a=sqrt(5)) on weight and the bias rule both give bound 1/sqrt(fan_in).
        k = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        params = {"weight": _uniform(rng, k, "weight", (self.out_features, self.in_features),
                                     self.dtype)}  # (O, I)
        if bias:
            params["bias"] = _uniform(rng, k, "bias", (self.out_features,), self.dtype)  # (O,)
        self._init_params(params)
        self._x: Optional[Array] = None  # (N, I): the last training forward's input, flattened

    def __call__(self, x: Array, training: bool = True) -> Array:
        """x (..., in_features) -> y (..., out_features). ``training`` keeps x for backward."""
        x = self._check_input("x", x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x: expected shape (..., in_features) = (..., {self.in_features}), got {x.shape}")
        x2 = x.reshape(-1, self.in_features)  # (N, I)
        with _blas.one_thread():  # OpenBLAS's spinning workers would slow the kernels after
            y = x2 @ self.params["weight"].T  # (N, O)
        if "bias" in self.params:
            y += self.params["bias"]
        self._x = x2 if training else None
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: Array) -> Array:
        """dy (..., out_features) of the last training forward -> dx (..., in_features).

        Adds the weight and bias gradients into `grads`.
        """
        if self._x is None:
            raise RuntimeError(
                "backward: no saved forward; call the layer with training=True first")
        dy = self._check_input("dy", dy)
        n = self._x.shape[0]
        if dy.ndim < 1 or dy.shape[-1] != self.out_features or dy.size != n * self.out_features:
            raise ValueError(f"dy: expected shape (..., out_features) with {n} rows of "
                             f"{self.out_features}, got {dy.shape}")
        dy2 = dy.reshape(n, self.out_features)  # (N, O)
        with _blas.one_thread():
            self.grads["weight"] += dy2.T @ self._x
            dx = dy2 @ self.params["weight"]  # (N, I)
        if "bias" in self.grads:
            self.grads["bias"] += dy2.sum(axis=0)
        return dx.reshape(*dy.shape[:-1], self.in_features)

    def __repr__(self) -> str:
        extra = "" if "bias" in self.params else ", bias=False"
        if self.dtype != np.dtype(np.float32):
            extra += f", dtype={self.dtype}"
        return f"Linear({self.in_features}, {self.out_features}{extra})"

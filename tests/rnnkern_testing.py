"""Shared test helpers: what "equal" means (assert_close) and random cell inputs (make_case).

Import them in a test module with ``from rnnkern_testing import assert_close, make_case`` or take
them as the fixtures of the same names (tests/conftest.py). The tolerance policy is written
down in docs/tolerances.md.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnkern import _cells, _core

#: Gate blocks per cell (G in w_ih (G*H, I)): the core's traits (cpp/kernels/cells).
GATES = _cells.GATES


def _forward_kwargs(cell: dict[str, Any]) -> dict[str, Any]:
    """The functional API's keywords that select a core cell within its family."""
    if cell["family"] == "rnn":
        return {"nonlinearity": cell["activation"]}
    if cell["family"] == "gru":
        return {"linear_before_reset": cell["name"] == "gru"}
    return {}


#: (cell, forward keyword arguments): every cell of the core (each GRU form and RNN nonlinearity).
CELLS: list[tuple[str, dict[str, Any]]] = [(c["family"], _forward_kwargs(c))
                                           for c in _cells.CELLS.values()]

#: The ISAs this CPU runs (the ``isa`` fixture of conftest.py sets each in turn).
ISAS: list[str] = _core.supported_isas().split(",")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f
                         if line.startswith("flags")), set())
    except OSError:
        return set()


#: Whether avx512's bf16 and int8 products run on AVX512_BF16 and AVX512_VNNI (they need both;
#: else those precisions run the avx2 kernels).
NATIVE_LOWP: bool = "avx512" in ISAS and {"avx512_bf16", "avx512_vnni"} <= _cpu_flags()

#: float64 results must agree to this relative tolerance, whatever the accumulation length.
RTOL_FLOAT64 = 1e-10
#: float32 against a float64 answer: tol = eps32 * C_FLOAT32 * (1 + log2(acc_len)).
C_FLOAT32 = 16.0
#: The absolute floor of every bound, as a fraction of the scale of the values (by default the
#: expected array's largest magnitude): an element that is small through cancellation is judged
#: against the magnitude of the terms it was computed from.
FLOOR = 0.1


def tolerance(dtype: Any, acc_len: int) -> float:
    """The relative tolerance for results computed in ``dtype`` with accumulations of
    ``acc_len`` terms, compared with a float64 (or more accurate) expected value."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return RTOL_FLOAT64
    if dtype == np.float32:
        eps = float(np.finfo(np.float32).eps)  # 2**-23
        return eps * C_FLOAT32 * (1.0 + math.log2(max(int(acc_len), 1)))
    raise ValueError(f"no tolerance for dtype {dtype}")


def rnn_acc_len(cell: str, T: int, B: int, I: int, H: int) -> int:
    """The accumulation length used for a recurrent cell's forward and backward results.

    A conservative count of the rounded terms behind any one output: per step a dot product of
    I + G*H terms (forward: I + H; backward's dh_{t-1}: G*H), the weight gradients sum T*B
    products, and rounding errors carried through T steps of recurrence. So T * (I + G*H + B).
    """
    return T * (I + GATES[cell] * H + B)


#: precision="bf16" against the reference that rounds the same operands (docs/tolerances.md,
#: "bf16"): within two bf16 ulps of the largest magnitude.
BF16_RTOL = 2.0**-7
#: precision="int8" against the reference that quantizes the same operands (docs/tolerances.md,
#: "int8"): within 2^-7 of the largest magnitude.
INT8_RTOL = 2.0**-7


def assert_close_bf16(actual: Any, expected: Any, name: str = "value") -> None:
    """Assert a float32 result of precision="bf16" equals the bf16 reference's ``expected``:
    |a - e| <= 2^-7 * max|e| for every element (NaN at the same places)."""
    _assert_within_scale(actual, expected, BF16_RTOL, name)


def assert_close_int8(actual: Any, expected: Any, name: str = "value") -> None:
    """Assert a float32 result of precision="int8" equals the int8 reference's ``expected``:
    |a - e| <= INT8_RTOL * max|e| for every element (NaN at the same places)."""
    _assert_within_scale(actual, expected, INT8_RTOL, name)


def _assert_within_scale(actual: Any, expected: Any, rtol: float, name: str) -> None:
    """|a - e| <= rtol * max|e| for every element of float32 ``actual``, NaN at the same places."""
    assert isinstance(actual, np.ndarray) and actual.dtype == np.float32, f"{name}: not float32"
    a, e = actual.astype(np.float64), np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape}, expected {e.shape}"
    nan = np.isnan(e)
    assert (np.isnan(a) == nan).all(), f"{name}: NaN at other places"
    scale = max(float(np.abs(e[~nan]).max(initial=0.0)), 1e-30)
    err = float(np.abs(a[~nan] - e[~nan]).max(initial=0.0))
    assert err <= rtol * scale, f"{name}: max error {err:.3g} > {rtol:.3g} * {scale:.3g}"


def assert_close(
    actual: Any,
    expected: Any,
    *,
    dtype: Any,
    acc_len: int,
    name: str = "value",
    scale: float | None = None,
) -> None:
    """Assert ``actual`` (computed in ``dtype``) equals ``expected`` within the policy.

    - ``actual`` must be an ndarray of exactly ``dtype`` (a Python float or NumPy scalar is
      accepted for scalar results) with ``expected``'s shape.
    - NaN and +-inf must sit at the same places in both.
    - Every finite element must satisfy |a - e| <= tol * (|e| + FLOOR * scale), where
      tol = tolerance(dtype, acc_len): 1e-10 for float64, eps32 * 16 * (1 + log2(acc_len)) for
      float32 (as oneDNN's benchdnn scales its bound with log2 of the accumulation length),
      FLOOR = 0.1 and scale = max|e| over the finite elements unless given: pass the known
      magnitude of the terms (e.g. max(1, max|e|) for tanh/sigmoid-built states) where every
      expected value may be small through cancellation, as in a single-element array.
    ``expected`` should be computed in float64 (float32 results are compared with the float64
    reference, never with another float32 result).
    """
    dtype = np.dtype(dtype)
    if isinstance(actual, np.ndarray):
        assert actual.dtype == dtype, f"{name}: dtype {actual.dtype}, expected {dtype}"
    else:
        assert isinstance(actual, (float, np.floating)), f"{name}: got {type(actual).__name__}"
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape}, expected {e.shape}"
    fa, fe = np.isfinite(a), np.isfinite(e)
    same_nonfinite = np.array_equal(fa, fe) and np.array_equal(a[~fa], e[~fe], equal_nan=True)
    assert same_nonfinite, f"{name}: non-finite values differ: {a[~fa]} vs {e[~fe]}"
    if not fe.any():
        return
    a, e = a[fe], e[fe]
    tol = tolerance(dtype, acc_len)
    if scale is None:
        scale = float(np.max(np.abs(e)))
    bound = tol * (np.abs(e) + FLOOR * scale)  # same shape as e
    err = np.abs(a - e)
    if np.all(err <= bound):
        return
    ratio = err / np.where(bound > 0, bound, np.finfo(np.float64).tiny)
    k = int(np.argmax(ratio))
    raise AssertionError(
        f"{name}: {int(np.sum(err > bound))} of {e.size} elements differ beyond the tolerance "
        f"(dtype {dtype}, acc_len {acc_len}, tol {tol:.3g}, floor {FLOOR} * max|expected| "
        f"{scale:.3g}); worst: actual {a[k]!r}, expected {e[k]!r}, error {err[k]:.3g} = "
        f"{ratio[k]:.3g} x the bound {bound[k]:.3g}"
    )


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], bound: float,
             dtype: Any) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def make_lengths(rng: np.random.Generator, T: int, B: int) -> np.ndarray:
    """Random unsorted lengths (B,) in 1..T, containing 1 and T when B >= 2."""
    lengths = rng.integers(1, T + 1, size=B)
    if B >= 2:
        lo, hi = rng.choice(B, size=2, replace=False)
        lengths[lo], lengths[hi] = 1, T
    return lengths.astype(np.int64)


def make_case(
    cell: str,
    T: int,
    B: int,
    I: int,
    H: int,
    dtype: Any,
    bias: bool = True,
    h0: bool = True,
    lengths: None | str | Sequence[int] | np.ndarray = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Random forward arguments of ``{cell}_forward`` as a dict (use ``f(**case)``).

    Keys: x (T, B, I) uniform in +-1; h0 (and c0 for lstm) (B, H) uniform in +-0.5, or None when
    ``h0`` is False; w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,) uniform in +-1/sqrt(H) like
    PyTorch's initialization (biases None when ``bias`` is False); lengths None, the given
    sequence as int64, or "random" for unsorted random lengths including 1 and T.
    """
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    k = 1.0 / math.sqrt(max(H, 1))  # H = 0 has no weights to scale
    case: dict[str, Any] = {"x": _uniform(rng, (T, B, I), 1.0, dtype)}
    case["h0"] = _uniform(rng, (B, H), 0.5, dtype) if h0 else None
    if cell == "lstm":
        case["c0"] = _uniform(rng, (B, H), 0.5, dtype) if h0 else None
    case["w_ih"] = _uniform(rng, (G * H, I), k, dtype)
    case["w_hh"] = _uniform(rng, (G * H, H), k, dtype)
    case["b_ih"] = _uniform(rng, (G * H,), k, dtype) if bias else None
    case["b_hh"] = _uniform(rng, (G * H,), k, dtype) if bias else None
    if isinstance(lengths, str):
        assert lengths == "random", lengths
        case["lengths"] = make_lengths(rng, T, B)
    else:
        case["lengths"] = None if lengths is None else np.asarray(lengths, dtype=np.int64)
    return case


#: LSTM variants (rnnkern._api.LSTM_EXTRAS), as the names of lstm_forward's arguments each
#: needs; "all" combines them.
LSTM_VARIANTS: dict[str, tuple[str, ...]] = {
    "proj": ("w_hr",),
    "peep": ("w_peep",),
    "ln": ("ln_gates", "ln_cell"),
    "all": ("w_hr", "w_peep", "ln_gates", "ln_cell"),
}


def make_lstm_variant_case(variant: str, T: int, B: int, I: int, H: int, dtype: Any,
                           P: int | None = None, seed: int = 0,
                           **kw: Any) -> dict[str, Any]:
    """make_case("lstm", ...) (``kw``: its bias, h0, lengths) with the arguments of an
    LSTM_VARIANTS ``variant``: w_hr (P, H) (P = max(H // 2, 1) unless given; then w_hh is
    (4H, P) and h0 (B, P)) uniform in +-1/sqrt(H); w_peep (3, H) uniform in +-0.5; ln_gates
    (2, 4H) and the gain row of ln_cell (2, H) uniform in 1 +- 0.3, its shift row in +-0.3."""
    case = make_case("lstm", T, B, I, H, dtype, seed=seed, **kw)
    rng = np.random.default_rng(seed + 1000)
    names = LSTM_VARIANTS[variant]
    k = 1.0 / math.sqrt(max(H, 1))
    if "w_hr" in names:
        P = max(H // 2, 1) if P is None else P
        case["w_hr"] = _uniform(rng, (P, H), k, dtype)
        case["w_hh"] = _uniform(rng, (4 * H, P), k, dtype)
        if case["h0"] is not None:
            case["h0"] = _uniform(rng, (B, P), 0.5, dtype)
    if "w_peep" in names:
        case["w_peep"] = _uniform(rng, (3, H), 0.5, dtype)
    if "ln_gates" in names:
        case["ln_gates"] = (1 + _uniform(rng, (2, 4 * H), 0.3, np.float64)).astype(dtype)
        case["ln_cell"] = np.stack([1 + _uniform(rng, (H,), 0.3, np.float64),
                                    _uniform(rng, (H,), 0.3, np.float64)]).astype(dtype)
    return case


def make_output_grads(
    cell: str, T: int, B: int, H: int, dtype: Any, seed: int = 1, P: int | None = None
) -> dict[str, np.ndarray]:
    """Random incoming gradients: dy (T, B, P), dh_n (B, P) and, for lstm, dc_n (B, H); P = H
    unless given (an LSTM's projection size)."""
    rng = np.random.default_rng(seed)
    P = H if P is None else P
    grads = {"dy": _uniform(rng, (T, B, P), 1.0, dtype), "dh_n": _uniform(rng, (B, P), 1.0, dtype)}
    if cell == "lstm":
        grads["dc_n"] = _uniform(rng, (B, H), 1.0, dtype)
    return grads


def as_dtype(args: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """A copy of ``args`` with every floating array converted to ``dtype`` (others unchanged)."""
    return {
        k: v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
        for k, v in args.items()
    }


def torch_func_results(module: Any, loss: Any, x_one: Any, x_many: Any, vmap_dim: int,
                       grad_of: str) -> list[Any]:
    """What torch.func makes of ``loss(module, params, x)`` (params: the module's own,
    detached, through functional_call in ``loss``): grad's entry ``grad_of`` and jacrev's
    (with respect to x) at ``x_one``, and the RuntimeError message of vmap(grad) over
    ``x_many``'s dimension ``vmap_dim``, or None if it ran (torch's RNN modules and cells have
    no batching rule)."""
    from torch.func import grad, jacrev, vmap

    params = {k: v.detach() for k, v in module.named_parameters()}

    def f(p: Any, xb: Any) -> Any:
        return loss(module, p, xb)

    out = [grad(f)(params, x_one)[grad_of], jacrev(f, argnums=1)(params, x_one)]
    try:
        vmap(grad(f), in_dims=(None, vmap_dim))(params, x_many)
        out.append(None)
    except RuntimeError as e:
        out.append(str(e))
    return out

"""The peers rnnkern is measured against, built on the same weights.

Every peer runs one recurrent layer (one direction, one layer) of a cell -- "lstm", "gru" or
"rnn" (tanh) -- on one `Problem` (input, initial state, weights in rnnkern's layout and a fixed
upstream gradient), and returns a `Result`:

- "rnnkern":   the public functional API (`rnnkern.lstm_forward`, ...).
- "reference": the NumPy reference (`rnnkern.reference.lstm_forward`, ...), slow, so not timed
               at big shapes (`is_big`).
- "torch":     `torch.nn.LSTM/GRU/RNN` with the weights loaded into its parameters.
- "ort":       ONNX Runtime on an ONNX graph of a single LSTM/GRU/RNN node built here
               (inference only).

Two passes:

- `forward()`: inference. rnnkern `training=False`; torch under `torch.inference_mode()`;
  ORT `InferenceSession.run`.
- `forward_backward()`: the training step's work. rnnkern `*_forward(training=True)` then
  `*_backward(cache, dy)`; torch forward then `torch.autograd.grad(y, inputs, dy)`, i.e. the
  backward of sum(y * dy), with respect to x, h0 (c0) and the four weight tensors.

Thread counts: `set_threads(n)` sets rnnkern's and torch's; an ORT peer takes its own count.
Results are checked against `oracle(problem)` (the float64 reference) with `check_result`, under
the tolerance policy of docs/tolerances.md.
"""
from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
from timing import default_threads

# What "equal" means is written once, in tests/rnnkern_testing.py (docs/tolerances.md).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rnnkern_testing import GATES, assert_close, rnn_acc_len  # noqa: E402

__all__ = [
    "BIG_FLOPS",
    "CELLS",
    "GATES",
    "PASSES",
    "PEERS",
    "SHAPES",
    "EXTRA_SHAPES",
    "ALL_SHAPES",
    "FunctionalPeer",
    "OrtPeer",
    "Peer",
    "PeerUnavailable",
    "Problem",
    "Result",
    "Shape",
    "TorchPeer",
    "build_peer",
    "check_result",
    "default_threads",
    "flops",
    "is_big",
    "make_problem",
    "onnx_model",
    "oracle",
    "set_threads",
]

CELLS = ("lstm", "gru", "rnn")
PASSES = ("fwd", "fwdbwd")
PEERS = ("rnnkern", "reference", "torch", "ort")

# ONNX's gate order, as indices into rnnkern's (= PyTorch's) gate blocks:
# LSTM i,f,g,o -> ONNX i,o,f,c; GRU r,z,n -> ONNX z,r,h; RNN has one block.
_ONNX_GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}
_ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_ONNX_OPSET = 14


@dataclass(frozen=True)
class Shape:
    """A problem size: B sequences of T steps, I input features, H hidden units."""

    name: str
    B: int
    T: int
    I: int
    H: int

    def label(self) -> str:
        return f"{self.name} (B={self.B}, T={self.T}, I={self.I}, H={self.H})"


# S1..S4 are the shapes of issue 4; O1, O2 are odd sizes (no multiple of the vector width).
SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("S1", 1, 100, 256, 256),
    Shape("S2", 8, 100, 256, 256),
    Shape("S3", 32, 50, 256, 256),
    Shape("S4", 64, 100, 512, 512),
    Shape("O1", 13, 50, 300, 300),
    Shape("O2", 3, 37, 77, 131),
)}
# Shapes in between and around those, for compare.py only (not in the pytest-benchmark groups,
# to keep the test run short): docs/design.md, "Measured".
EXTRA_SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("M1", 4, 100, 128, 128),
    Shape("M2", 16, 50, 512, 256),
    Shape("M3", 2, 200, 64, 64),
    Shape("M4", 24, 30, 200, 400),
    Shape("M5", 48, 40, 128, 768),
)}
ALL_SHAPES: dict[str, Shape] = {**SHAPES, **EXTRA_SHAPES}


def flops(cell: str, shape: Shape) -> int:
    """Flops of a forward pass counted as its two products: 2*T*B*G*H*(I+H)."""
    return 2 * shape.T * shape.B * GATES[cell] * shape.H * (shape.I + shape.H)


# Forward flops above which a problem is "big" (S4; S3's LSTM is 1.7e9): the NumPy reference is
# not timed there and its float64 check costs seconds.
BIG_FLOPS = 4_000_000_000


def is_big(cell: str, shape: Shape) -> bool:
    """Whether the problem is big (more than BIG_FLOPS forward flops)."""
    return flops(cell, shape) > BIG_FLOPS


@dataclass(frozen=True)
class Problem:
    """One layer's inputs, weights (rnnkern's = PyTorch's layout and gate order) and dy."""

    cell: str
    shape: Shape
    x: np.ndarray  # (T, B, I)
    h0: np.ndarray  # (B, H)
    c0: np.ndarray | None  # (B, H), LSTM only
    w_ih: np.ndarray  # (G*H, I)
    w_hh: np.ndarray  # (G*H, H)
    b_ih: np.ndarray  # (G*H,)
    b_hh: np.ndarray  # (G*H,)
    dy: np.ndarray  # (T, B, H): the fixed upstream gradient of y

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    def astype(self, dtype: type[np.floating] | np.dtype) -> Problem:
        """The same problem with every array converted to `dtype`."""
        return replace(self, x=self.x.astype(dtype), h0=self.h0.astype(dtype),
                       c0=None if self.c0 is None else self.c0.astype(dtype),
                       w_ih=self.w_ih.astype(dtype), w_hh=self.w_hh.astype(dtype),
                       b_ih=self.b_ih.astype(dtype), b_hh=self.b_hh.astype(dtype),
                       dy=self.dy.astype(dtype))


def make_problem(cell: str, shape: Shape, *, dtype: type[np.floating] = np.float32,
                 seed: int = 0) -> Problem:
    """A random problem: weights U(-1/sqrt(H), 1/sqrt(H)) as PyTorch initializes them,
    x, h0, c0 and dy U(-1, 1). Drawn in float64 and rounded, so that `astype(np.float64)` of the
    float32 problem is exactly the problem the float32 peers see."""
    if cell not in GATES:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    rng = np.random.default_rng(seed)
    B, T, I, H, G = shape.B, shape.T, shape.I, shape.H, GATES[cell]
    k = 1.0 / np.sqrt(H)

    def u(bound: float, *dims: int) -> np.ndarray:
        return rng.uniform(-bound, bound, dims).astype(dtype)

    return Problem(
        cell=cell, shape=shape,
        x=u(1.0, T, B, I), h0=u(1.0, B, H), c0=u(1.0, B, H) if cell == "lstm" else None,
        w_ih=u(k, G * H, I), w_hh=u(k, G * H, H), b_ih=u(k, G * H), b_hh=u(k, G * H),
        dy=u(1.0, T, B, H),
    )


@dataclass(frozen=True)
class Result:
    """A peer's output: y (T, B, H), h_n (B, H), c_n (B, H) or None, and for a training pass
    the gradients by name (dx, dh0, dc0 for LSTM, dw_ih, dw_hh, db_ih, db_hh)."""

    y: np.ndarray  # (T, B, H)
    h_n: np.ndarray  # (B, H)
    c_n: np.ndarray | None  # (B, H)
    grads: Mapping[str, np.ndarray] | None = None


class PeerUnavailable(ImportError):
    """A peer's library is not installed (or failed to import)."""


class Peer(Protocol):
    """What every peer offers: `forward()` (inference) and, if `trains`, `forward_backward()`."""

    name: str
    trains: bool

    def forward(self) -> Result: ...

    def forward_backward(self) -> Result: ...


# ---------------------------------------------------------------------------------------------
# imports and threads


def _import_rnnkern() -> Any:
    try:
        import rnnkern
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PeerUnavailable(f"rnnkern failed to import: {e}") from e
    return rnnkern


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise PeerUnavailable(
            f"torch failed to import ({e}); install the benchmark extras or pass --no-torch") from e
    return torch


def _import_ort() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise PeerUnavailable(
            f"onnx/onnxruntime failed to import ({e}); install the benchmark extras or pass "
            "--no-ort") from e
    return onnx, onnxruntime


def set_threads(n: int, *, torch: bool = True) -> list[str]:
    """Set rnnkern's and (if `torch`) PyTorch's intra-op thread count to `n`. ORT peers take
    their count at construction. Returns notes on what could not be set."""
    if n < 1:
        raise ValueError(f"n: expected a thread count >= 1, got {n}")
    notes = []
    rk = _import_rnnkern()
    if hasattr(rk, "set_num_threads"):
        rk.set_num_threads(n)
    else:
        notes.append("rnnkern.set_num_threads does not exist yet: rnnkern runs with its default")
    if torch:
        t = _import_torch()
        t.set_num_threads(n)
    return notes


# ---------------------------------------------------------------------------------------------
# rnnkern and its reference


class FunctionalPeer:
    """rnnkern's functional API, or the same API of `rnnkern.reference`."""

    trains = True

    def __init__(self, name: str, api: types.ModuleType, problem: Problem) -> None:
        self.name = name
        self._api = api
        self._p = problem
        self._fwd: Callable[..., Any]
        self._bwd: Callable[..., Any]
        self._fwd, self._bwd = {
            "lstm": (api.lstm_forward, api.lstm_backward),
            "gru": (api.gru_forward, api.gru_backward),
            "rnn": (api.rnn_forward, api.rnn_backward),
        }[problem.cell]

    def _run_forward(self, training: bool) -> tuple[Result, object]:
        p = self._p
        if p.cell == "lstm":
            y, h_n, c_n, cache = self._fwd(p.x, p.h0, p.c0, p.w_ih, p.w_hh, p.b_ih, p.b_hh,
                                           training=training)
            return Result(y, h_n, c_n), cache
        extra = {"nonlinearity": "tanh"} if p.cell == "rnn" else {"linear_before_reset": True}
        y, h_n, cache = self._fwd(p.x, p.h0, p.w_ih, p.w_hh, p.b_ih, p.b_hh, training=training,
                                  **extra)
        return Result(y, h_n, None), cache

    def forward(self) -> Result:
        return self._run_forward(False)[0]

    def forward_backward(self) -> Result:
        out, cache = self._run_forward(True)
        grads = self._bwd(cache, self._p.dy)
        return replace(out, grads=grads._asdict())


# ---------------------------------------------------------------------------------------------
# PyTorch


class TorchPeer:
    """`torch.nn.LSTM/GRU/RNN(tanh)` of one layer with the problem's weights loaded."""

    name = "torch"
    trains = True

    def __init__(self, problem: Problem) -> None:
        torch = _import_torch()
        self._torch = torch
        s, cell = problem.shape, problem.cell
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
        kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
            problem.dtype]
        self._mod = cls(s.I, s.H, num_layers=1, bias=True, batch_first=False, **kwargs).to(dtype)
        self._params = [self._mod.weight_ih_l0, self._mod.weight_hh_l0,  # (G*H, I), (G*H, H)
                        self._mod.bias_ih_l0, self._mod.bias_hh_l0]  # (G*H,) each
        with torch.no_grad():
            for param, arr in zip(self._params, (problem.w_ih, problem.w_hh, problem.b_ih,
                                                 problem.b_hh)):
                param.copy_(torch.from_numpy(arr))
        self._lstm = cell == "lstm"
        self._x = torch.from_numpy(problem.x)  # (T, B, I), shares memory
        self._h0 = torch.from_numpy(problem.h0)[None]  # (1, B, H)
        self._c0 = torch.from_numpy(problem.c0)[None] if problem.c0 is not None else None
        self._dy = torch.from_numpy(problem.dy)  # (T, B, H)
        # leaves of the training pass: gradients with respect to the inputs too
        self._xg = self._x.detach().clone().requires_grad_(True)  # (T, B, I)
        self._h0g = self._h0.detach().clone().requires_grad_(True)  # (1, B, H)
        self._c0g = (self._c0.detach().clone().requires_grad_(True)  # (1, B, H)
                     if self._c0 is not None else None)

    def _result(self, y: Any, state: Any, grads: Mapping[str, np.ndarray] | None) -> Result:
        """y (T, B, H) and the final state (1, B, H) or a tuple of two as numpy."""
        h_n, c_n = state if self._lstm else (state, None)
        return Result(y.detach().numpy(), h_n[0].detach().numpy(),
                      None if c_n is None else c_n[0].detach().numpy(), grads)

    def forward(self) -> Result:
        with self._torch.inference_mode():
            state0 = (self._h0, self._c0) if self._lstm else self._h0
            y, state = self._mod(self._x, state0)
        return self._result(y, state, None)

    def forward_backward(self) -> Result:
        state0 = (self._h0g, self._c0g) if self._lstm else self._h0g
        y, state = self._mod(self._xg, state0)
        leaves = [self._xg, self._h0g] + ([self._c0g] if self._lstm else []) + self._params
        g = self._torch.autograd.grad(y, leaves, grad_outputs=self._dy)
        names = ["dx", "dh0"] + (["dc0"] if self._lstm else []) + ["dw_ih", "dw_hh", "db_ih",
                                                                     "db_hh"]
        grads = {k: v.numpy() for k, v in zip(names, g)}
        grads["dh0"] = grads["dh0"][0]  # (1, B, H) -> (B, H)
        if self._lstm:
            grads["dc0"] = grads["dc0"][0]
        return self._result(y, state, grads)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime


def _onnx_gates(a: np.ndarray, cell: str, H: int) -> np.ndarray:
    """Reorder the gate blocks (H rows each, axis 0) from PyTorch's order to ONNX's."""
    return np.concatenate([a[k * H:(k + 1) * H] for k in _ONNX_GATE_ORDER[cell]], axis=0)


def onnx_model(problem: Problem) -> Any:
    """An ONNX model (opset 14) of one LSTM/GRU/RNN node with the problem's weights as
    initializers. Inputs X (T, B, I), initial_h (1, B, H) [, initial_c (1, B, H)]; outputs
    Y (T, 1, B, H), Y_h (1, B, H) [, Y_c (1, B, H)]. GRU uses linear_before_reset=1 (PyTorch's
    form), RNN tanh."""
    onnx, _ = _import_ort()
    from onnx import TensorProto, helper, numpy_helper

    p, s, cell = problem, problem.shape, problem.cell
    T, B, I, H = s.T, s.B, s.I, s.H
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}[
        p.dtype]
    w = _onnx_gates(p.w_ih, cell, H)[None]  # (1, G*H, I)
    r = _onnx_gates(p.w_hh, cell, H)[None]  # (1, G*H, H)
    b = np.concatenate([_onnx_gates(p.b_ih, cell, H), _onnx_gates(p.b_hh, cell, H)])[None]
    # b: (1, 2*G*H) = [Wb, Rb]
    lstm = cell == "lstm"
    attrs: dict[str, Any] = {"hidden_size": H}
    if cell == "gru":
        attrs["linear_before_reset"] = 1
    if cell == "rnn":
        attrs["activations"] = ["Tanh"]
    node = helper.make_node(
        _ONNX_OP[cell],
        ["X", "W", "R", "B", "", "initial_h"] + (["initial_c"] if lstm else []),
        ["Y", "Y_h"] + (["Y_c"] if lstm else []),
        **attrs,
    )
    state = [1, B, H]
    inputs = [helper.make_tensor_value_info("X", elem, [T, B, I]),
              helper.make_tensor_value_info("initial_h", elem, state)]
    outputs = [helper.make_tensor_value_info("Y", elem, [T, 1, B, H]),
               helper.make_tensor_value_info("Y_h", elem, state)]
    if lstm:
        inputs.append(helper.make_tensor_value_info("initial_c", elem, state))
        outputs.append(helper.make_tensor_value_info("Y_c", elem, state))
    graph = helper.make_graph(
        [node], f"rnnkern_bench_{cell}", inputs, outputs,
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"),
                     numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _ONNX_OPSET)],
                              producer_name="rnnkern-benchmarks")
    onnx.checker.check_model(model)
    return model


class OrtPeer:
    """ONNX Runtime's CPU kernel for one LSTM/GRU/RNN node; `threads` intra-op threads, one
    inter-op thread, sequential execution. Inference only."""

    name = "ort"
    trains = False

    def __init__(self, problem: Problem, threads: int) -> None:
        _, ort = _import_ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model = onnx_model(problem)
        self._sess = ort.InferenceSession(model.SerializeToString(), opts,
                                          providers=["CPUExecutionProvider"])
        self._feeds = {"X": problem.x, "initial_h": problem.h0[None]}  # (T,B,I), (1,B,H)
        if problem.c0 is not None:
            self._feeds["initial_c"] = problem.c0[None]  # (1, B, H)
        self._lstm = problem.cell == "lstm"

    def forward(self) -> Result:
        out = self._sess.run(None, self._feeds)
        y = out[0][:, 0]  # (T, 1, B, H) -> (T, B, H)
        return Result(y, out[1][0], out[2][0] if self._lstm else None)

    def forward_backward(self) -> Result:
        raise NotImplementedError("ONNX Runtime has no training pass")


# ---------------------------------------------------------------------------------------------
# building and checking


def build_peer(name: str, problem: Problem, threads: int) -> Peer:
    """The peer `name` (one of PEERS) on `problem`. `threads` is used by ORT; call
    `set_threads` for the others. Raises PeerUnavailable if its library does not import."""
    if name == "rnnkern":
        return FunctionalPeer("rnnkern", _import_rnnkern(), problem)
    if name == "reference":
        return FunctionalPeer("reference", _import_rnnkern().reference, problem)
    if name == "torch":
        return TorchPeer(problem)
    if name == "ort":
        return OrtPeer(problem, threads)
    raise ValueError(f"name: expected one of {PEERS}, got {name!r}")


def oracle(problem: Problem, *, grads: bool = True) -> Result:
    """The float64 reference's training pass (y, h_n, c_n and every gradient; without `grads`
    the inference pass, no gradients) on the problem converted to float64."""
    ref = FunctionalPeer("oracle", _import_rnnkern().reference, problem.astype(np.float64))
    return ref.forward_backward() if grads else ref.forward()


def _mismatch(key: str, got: np.ndarray, want: np.ndarray, problem: Problem,
              scale: float | None) -> str | None:
    """Why `got` does not equal `want` (float64) under the tolerance policy, or None."""
    s = problem.shape
    try:
        assert_close(got, want, dtype=problem.dtype, name=key, scale=scale,
                     acc_len=rnn_acc_len(problem.cell, s.T, s.B, s.I, s.H))
    except AssertionError as e:
        return str(e)
    return None


def check_result(got: Result, want: Result, problem: Problem, *, grads: bool) -> list[str]:
    """Mismatches of `got` (computed in the problem's dtype) against `want` (the float64
    oracle) under the tolerance policy, one message per array; empty when they match. With
    `grads`, the gradients are compared too."""
    fwd_scale = max(1.0, float(np.max(np.abs(want.y), initial=0.0)))
    pairs: list[tuple[str, np.ndarray | None, np.ndarray | None, float | None]] = [
        ("y", got.y, want.y, fwd_scale), ("h_n", got.h_n, want.h_n, fwd_scale),
        ("c_n", got.c_n, want.c_n, None if want.c_n is None else
         max(1.0, float(np.max(np.abs(want.c_n), initial=0.0))))]
    if grads:
        if got.grads is None or want.grads is None:
            return ["grads: missing"]
        pairs += [(k, got.grads.get(k), v, None) for k, v in want.grads.items()]
    errors = []
    for key, g, w, scale in pairs:
        if w is None and g is None:
            continue
        if w is None or g is None:
            errors.append(f"{key}: present in only one result")
            continue
        msg = _mismatch(key, np.asarray(g), w, problem, scale)
        if msg is not None:
            errors.append(msg)
    return errors

"""Optimizers with PyTorch's update rules and defaults, over dicts of NumPy arrays.

``params`` and ``grads`` are dicts with the same keys (a layer's or a model's ``params`` and
``grads``); ``step()`` updates the parameter arrays in place, so the arrays must be the ones the
model computes with. Read-only parameters (the recurrent layers' and cells', see docs/api.md) are
made writeable first, which tells their layer to pack them again at its next call. Per-parameter
state (momentum buffers, accumulators) has each parameter's
shape and dtype.

    opt = rnnkern.optim.Adam(model.params, model.grads, lr=1e-3)
    model.zero_grad(); loss = model.loss_and_backward(...); opt.step()
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import numpy.typing as npt

__all__ = ["Optimizer", "SGD", "Adagrad", "Adam", "clip_grad_norm", "zero_grad"]

Array = npt.NDArray[np.floating]


def _check_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


def zero_grad(grads: Mapping[str, Array]) -> None:
    """Set every gradient array to zero in place."""
    for g in grads.values():
        g[...] = 0


class Optimizer:
    """Base class: checks and holds ``params`` / ``grads`` and the per-parameter state.

    ``state[name]`` is a dict of arrays (each of the parameter's shape) or scalars; ``step_count``
    is the number of ``step()`` calls so far.
    """

    def __init__(self, params: Mapping[str, Array], grads: Mapping[str, Array], lr: float) -> None:
        if not isinstance(params, Mapping):
            raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads: expected a dict of arrays, got {type(grads).__name__}")
        if set(params) != set(grads):
            raise ValueError(
                f"grads: keys must equal params' keys, missing {sorted(set(params) - set(grads))}, "
                f"extra {sorted(set(grads) - set(params))}")
        for name, p in params.items():
            g = grads[name]
            if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
                raise TypeError(f"params: {name!r} must be a floating ndarray (dtype float32/64)")
            if not isinstance(g, np.ndarray) or g.dtype != p.dtype:
                raise TypeError(f"grads: {name!r} must be an ndarray of dtype {p.dtype}")
            if g.shape != p.shape:
                raise ValueError(
                    f"grads: {name!r} expected shape {p.shape}, got {g.shape}")
        self.params = dict(params)
        self.grads = dict(grads)
        self.lr = _check_nonneg("lr", lr)
        self.step_count = 0
        self.state: dict[str, dict[str, Array]] = {name: {} for name in self.params}

    def zero_grad(self) -> None:
        """Set every gradient to zero in place."""
        zero_grad(self.grads)

    def step(self) -> None:
        """Apply one update to every parameter in place."""
        self.step_count += 1
        for name, p in self.params.items():
            # A layer's read-only parameter: writeable tells the layer to pack it again.
            if not p.flags.writeable:
                p.flags.writeable = True
            self._update(p, self.grads[name], self.state[name])

    def _update(self, p: Array, g: Array, state: dict[str, Array]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Array]:
        """Flat dict of the optimizer state: ``"<param>.<buffer>"`` arrays and ``"step"``."""
        out: dict[str, Array] = {"step": np.asarray(self.step_count, dtype=np.float64)}
        for name, bufs in self.state.items():
            for key, buf in bufs.items():
                out[f"{name}.{key}"] = buf.copy()
        return out

    def load_state_dict(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Restore what ``state_dict()`` returned (e.g. from a checkpoint)."""
        if "step" not in state:
            raise ValueError("state: missing 'step'")
        new: dict[str, dict[str, Array]] = {name: {} for name in self.params}
        for key, value in state.items():
            if key == "step":
                continue
            name, _, buf = key.rpartition(".")
            if name not in self.params:
                raise ValueError(f"state: {key!r} names no parameter")
            p = self.params[name]
            arr = np.array(value, dtype=p.dtype)  # copy, shape of p
            if arr.shape != p.shape:
                raise ValueError(f"state: {key!r} expected shape {p.shape}, got {arr.shape}")
            new[name][buf] = arr
        self.step_count = int(np.asarray(state["step"]))
        self.state = new


class SGD(Optimizer):
    """Stochastic gradient descent, ``torch.optim.SGD``'s rule.

    g = grad + weight_decay * p; with momentum: buf = g (first step) else
    momentum * buf + (1 - dampening) * g, and g = g + momentum * buf (nesterov) or buf;
    p -= lr * g.
    """

    def __init__(self, params: Mapping[str, Array], grads: Mapping[str, Array], lr: float = 1e-3,
                 momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, grads, lr)
        self.momentum = _check_nonneg("momentum", momentum)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)
        if self.nesterov and (self.momentum <= 0.0 or self.dampening != 0.0):
            raise ValueError("nesterov: requires momentum > 0 and dampening = 0")

    def _update(self, p: Array, g: Array, state: dict[str, Array]) -> None:
        d = g + self.weight_decay * p if self.weight_decay != 0.0 else g  # (like p)
        if self.momentum != 0.0:
            buf = state.get("momentum_buffer")  # (like p)
            if buf is None:
                buf = state["momentum_buffer"] = np.array(d)  # an array even for 0-d p
            else:
                buf *= self.momentum
                buf += (1.0 - self.dampening) * d
            d = d + self.momentum * buf if self.nesterov else buf
        p -= self.lr * d


class Adagrad(Optimizer):
    """Adagrad, ``torch.optim.Adagrad``'s rule.

    g = grad + weight_decay * p; clr = lr / (1 + (step - 1) * lr_decay); sum += g*g;
    p -= clr * g / (sqrt(sum) + eps).
    """

    def __init__(self, params: Mapping[str, Array], grads: Mapping[str, Array], lr: float = 1e-2,
                 lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10) -> None:
        super().__init__(params, grads, lr)
        self.lr_decay = _check_nonneg("lr_decay", lr_decay)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)
        self.initial_accumulator_value = _check_nonneg(
            "initial_accumulator_value", initial_accumulator_value)
        self.eps = _check_nonneg("eps", eps)
        for name, p in self.params.items():  # torch creates the accumulator at construction
            self.state[name]["sum"] = np.full_like(p, self.initial_accumulator_value)

    def _update(self, p: Array, g: Array, state: dict[str, Array]) -> None:
        d = g + self.weight_decay * p if self.weight_decay != 0.0 else g  # (like p)
        clr = self.lr / (1.0 + (self.step_count - 1) * self.lr_decay)
        acc = state["sum"]  # (like p)
        acc += d * d
        p -= clr * (d / (np.sqrt(acc) + self.eps))

    def load_state_dict(self, state: Mapping[str, npt.ArrayLike]) -> None:
        super().load_state_dict(state)
        for name in self.params:
            if "sum" not in self.state[name]:
                raise ValueError(f"state: missing {name + '.sum'!r}")


class Adam(Optimizer):
    """Adam (and AMSGrad), ``torch.optim.Adam``'s rule.

    g = grad + weight_decay * p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
    (amsgrad: vmax = max(vmax, v), used for v);
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """

    def __init__(self, params: Mapping[str, Array], grads: Mapping[str, Array], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(params, grads, lr)
        if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
            raise ValueError(f"betas: each must be in [0, 1), got {tuple(betas)}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _check_nonneg("eps", eps)
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def _update(self, p: Array, g: Array, state: dict[str, Array]) -> None:
        b1, b2 = self.betas
        d = g + self.weight_decay * p if self.weight_decay != 0.0 else g  # (like p)
        if "exp_avg" not in state:
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
            if self.amsgrad:
                state["max_exp_avg_sq"] = np.zeros_like(p)
        m, v = state["exp_avg"], state["exp_avg_sq"]  # (like p)
        m += (1.0 - b1) * (d - m)
        v *= b2
        v += (1.0 - b2) * (d * d)
        if self.amsgrad:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        step_size = self.lr / (1.0 - b1 ** self.step_count)
        denom = np.sqrt(v) / math.sqrt(1.0 - b2 ** self.step_count) + self.eps  # (like p)
        p -= step_size * (m / denom)


def clip_grad_norm(grads: Mapping[str, Array], max_norm: float, norm_type: float = 2.0) -> float:
    """Scale all gradients in place so their joint norm is at most ``max_norm``.

    PyTorch's ``clip_grad_norm_``: total = the ``norm_type``-norm of the per-array norms
    (``inf`` = max abs); if ``max_norm / (total + 1e-6) < 1`` every gradient is multiplied by it.
    Returns the total norm before clipping.
    """
    max_norm = _check_nonneg("max_norm", max_norm)
    norm_type = float(norm_type)
    if not norm_type > 0.0:
        raise ValueError(f"norm_type: must be > 0 or inf, got {norm_type}")
    arrays = list(grads.values())
    if not arrays:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(g), initial=0.0)) for g in arrays)
    else:
        norms = np.array([np.linalg.norm(g.ravel(), ord=norm_type) for g in arrays])  # (n,)
        total = float(np.linalg.norm(norms, ord=norm_type))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in arrays:
            g *= g.dtype.type(coef)
    return total

"""rnnkern.optim against torch.optim on the same gradients, step by step."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch

from rnnkern import optim

SHAPES = {"w": (4, 3), "b": (4,), "s": ()}


def _run_both(make_ours: Callable[..., optim.Optimizer], make_torch: Callable[..., Any],
              steps: int = 6, dtype: Any = np.float64, seed: int = 0
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Apply the same random gradients for `steps` steps to both optimizers."""
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    grads = {k: np.zeros_like(p) for k, p in params.items()}
    tparams = {k: torch.tensor(p.copy(), requires_grad=True) for k, p in params.items()}
    ours = make_ours(params, grads)
    theirs = make_torch(list(tparams.values()))
    for _ in range(steps):
        for k in params:
            g = rng.standard_normal(SHAPES[k]).astype(dtype)
            grads[k][...] = g
            tparams[k].grad = torch.tensor(g.copy())
        ours.step()
        theirs.step()
    return params, {k: v.detach().numpy() for k, v in tparams.items()}


def _assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float) -> None:
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol, err_msg=k)


SGD_CASES = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.8, "nesterov": True},
    {"momentum": 0.5, "weight_decay": 0.1},
    {"weight_decay": 0.05},
]


@pytest.mark.parametrize("kw", SGD_CASES, ids=str)
def test_sgd_matches_torch(kw: dict[str, Any]) -> None:
    a, b = _run_both(lambda p, g: optim.SGD(p, g, lr=0.1, **kw),
                     lambda ps: torch.optim.SGD(ps, lr=0.1, **kw))
    _assert_close(a, b, 1e-12)


ADAGRAD_CASES = [
    {},
    {"lr_decay": 0.1},
    {"weight_decay": 0.1, "initial_accumulator_value": 0.5},
    {"eps": 1e-3, "lr": 0.3},
]


@pytest.mark.parametrize("kw", ADAGRAD_CASES, ids=str)
def test_adagrad_matches_torch(kw: dict[str, Any]) -> None:
    a, b = _run_both(lambda p, g: optim.Adagrad(p, g, **kw),
                     lambda ps: torch.optim.Adagrad(ps, **kw))
    _assert_close(a, b, 1e-12)


ADAM_CASES = [
    {},
    {"lr": 0.05, "betas": (0.8, 0.99)},
    {"weight_decay": 0.1},
    {"amsgrad": True, "lr": 0.05},
    {"eps": 1e-3, "amsgrad": True, "weight_decay": 0.01},
]


@pytest.mark.parametrize("kw", ADAM_CASES, ids=str)
def test_adam_matches_torch(kw: dict[str, Any]) -> None:
    a, b = _run_both(lambda p, g: optim.Adam(p, g, **kw),
                     lambda ps: torch.optim.Adam(ps, **kw), steps=8)
    _assert_close(a, b, 1e-12)


def test_adam_float32_matches_torch() -> None:
    a, b = _run_both(lambda p, g: optim.Adam(p, g, lr=0.01),
                     lambda ps: torch.optim.Adam(ps, lr=0.01), dtype=np.float32)
    _assert_close(a, b, 1e-5)
    assert all(p.dtype == np.float32 for p in a.values())


def test_defaults_match_torch() -> None:
    p = {"w": np.zeros(2)}
    g = {"w": np.zeros(2)}
    t = [torch.zeros(2, requires_grad=True)]
    for ours, theirs, keys in [
        (optim.SGD(p, g), torch.optim.SGD(t),
         ("lr", "momentum", "dampening", "nesterov", "weight_decay")),
        (optim.Adagrad(p, g), torch.optim.Adagrad(t),
         ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")),
        (optim.Adam(p, g), torch.optim.Adam(t), ("lr", "betas", "eps", "weight_decay", "amsgrad")),
    ]:
        for key in keys:
            assert getattr(ours, key) == theirs.defaults[key], (type(ours).__name__, key)


def test_updates_in_place_and_zero_grad() -> None:
    w = np.ones(3)
    g = np.full(3, 2.0)
    opt = optim.SGD({"w": w}, {"w": g}, lr=0.5)
    opt.step()
    np.testing.assert_array_equal(w, np.zeros(3))
    opt.zero_grad()
    np.testing.assert_array_equal(g, np.zeros(3))


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adagrad, optim.Adam])
def test_state_dict_resume(cls: Any) -> None:
    """Stopping, saving the state and resuming gives the same parameters as not stopping."""
    rng = np.random.default_rng(1)
    gs = [rng.standard_normal(5) for _ in range(6)]
    kw = {"momentum": 0.9} if cls is optim.SGD else {}

    def run(split: int | None) -> np.ndarray:
        p, g = {"w": np.linspace(-1, 1, 5)}, {"w": np.zeros(5)}
        opt = cls(p, g, lr=0.1, **kw)
        for i, gi in enumerate(gs):
            if i == split:
                state = opt.state_dict()
                opt = cls(p, g, lr=0.1, **kw)
                opt.load_state_dict(state)
            g["w"][...] = gi
            opt.step()
        return p["w"]

    np.testing.assert_array_equal(run(None), run(3))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(norm_type: float, max_norm: float) -> None:
    rng = np.random.default_rng(2)
    grads = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    tensors = []
    for g in grads.values():
        t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(g.copy())
        tensors.append(t)
    total = optim.clip_grad_norm(grads, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type)
    assert total == pytest.approx(float(ttotal), rel=1e-12)
    for g, t in zip(grads.values(), tensors):
        assert t.grad is not None
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-12)


def test_bad_arguments() -> None:
    p, g = {"w": np.zeros(3)}, {"w": np.zeros(3)}
    with pytest.raises(ValueError, match="^lr:"):
        optim.SGD(p, g, lr=-1.0)
    with pytest.raises(ValueError, match="^nesterov:"):
        optim.SGD(p, g, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="^betas:"):
        optim.Adam(p, g, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="^grads:"):
        optim.Adam(p, {"v": np.zeros(3)})
    with pytest.raises(ValueError, match="^grads:"):
        optim.Adam(p, {"w": np.zeros(4)})
    with pytest.raises(TypeError, match="^grads:.*dtype"):
        optim.Adam(p, {"w": np.zeros(3, np.float32)})
    with pytest.raises(TypeError, match="^params:"):
        optim.Adam([np.zeros(3)], g)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^max_norm:"):
        optim.clip_grad_norm(g, -1.0)

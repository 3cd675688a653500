"""The LSTM variants' cost over the plain LSTM (docs/lstm_variants.md), from one run.

    python benchmarks/variants.py [--shapes S2,S3] [--threads N] [--repeat R] [--int8]

For each shape, the median milliseconds of forward (inference) and forward+backward of
rnnkern's plain LSTM and of each variant its kernels run (rnnkern.lstm_forward's keywords;
the projection with P = H/2), and of torch.nn.LSTM plain and with proj_size = H/2. Next to each
time: its ratio to the same library's plain LSTM, and the ratio of multiply-adds (the variant's
extra FLOPs); then rnnkern's time over torch's, plain and projected. With --int8, also each
rnnkern variant's int8 inference (precision="int8"; layer norm has none) and its ratio to the
same variant's float32 inference. Repetitions are interleaved (round robin); every rnnkern
variant is first checked against the NumPy reference in float64 (int8: the int8 reference) on a
small problem.
"""
from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import timing  # does not import NumPy

#: rnnkern's variants timed (the kernels' own; "lnproj": layer norm with a projection), and
#: those with int8 kernels.
KERNEL_VARIANTS = ("peep", "proj", "ln", "lnproj")
INT8_VARIANTS = ("peep", "proj")


def variant_args(variant: str, H: int, draw: Callable[[tuple[int, ...]], Any]) -> dict[str, Any]:
    """lstm_forward's keywords of ``variant`` at hidden size H, arrays from ``draw(shape)``: the
    peepholes, the projection (P = H/2) with its w_hh (4H, P), layer norm (gains and shift near
    1 and 0), or layer norm with the projection."""
    if variant == "peep":
        return {"w_peep": draw((3, H))}
    if variant == "lnproj":
        return {**variant_args("ln", H, draw), **variant_args("proj", H, draw)}
    if variant == "ln":
        ln_cell = draw((2, H))
        ln_cell[0] += 1
        return {"ln_gates": 1 + draw((2, 4 * H)), "ln_cell": ln_cell}
    return {"w_hr": draw((H // 2, H)), "w_hh": draw((4 * H, H // 2))}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="S2,S3", help="comma-separated names of peers.SHAPES")
    ap.add_argument("--threads", type=int, default=None, help="threads (default: the cores)")
    ap.add_argument("--repeat", type=int, default=7, help="samples per job (median taken)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per sample at least")
    ap.add_argument("--int8", action="store_true", help="time each variant's int8 inference too")
    return ap.parse_args(argv)


def macs(variant: str, T: int, B: int, I: int, H: int, P: int, backward: bool) -> int:
    """Multiply-adds of the forward (or forward+backward) products and the variant's pointwise
    extras (docs/lstm_variants.md: "Cost over the plain LSTM"; layer norm: its operations)."""
    k = 3 if backward else 1  # forward + backward: three times the products
    ln = 45 * H if not backward else 115 * H  # layer norm's operations
    per_row = {
        "plain": 4 * H * (I + H) * k,
        "peep": 4 * H * (I + H) * k + (3 * H if not backward else 9 * H),
        "proj": (4 * H * (I + P) + P * H) * k,
        "ln": 4 * H * (I + H) * k + ln,
        "lnproj": (4 * H * (I + P) + P * H) * k + ln,
    }[variant]
    return T * B * per_row


def check_kernels(rnnkern: Any, np: Any) -> None:
    """Every timed variant equals the float64 reference on a small case (forward and grads)."""
    rng = np.random.default_rng(0)
    T, B, I, H = 3, 2, 5, 7

    def draw(shape: tuple[int, ...]) -> Any:
        return rng.uniform(-0.5, 0.5, shape)

    args = {"x": draw((T, B, I)), "h0": None, "c0": draw((B, H)), "w_ih": draw((4 * H, I)),
            "w_hh": draw((4 * H, H)), "b_ih": draw((4 * H,)), "b_hh": draw((4 * H,))}
    for name in KERNEL_VARIANTS:
        case = {**args, **variant_args(name, H, draw)}
        dy = rng.uniform(-1, 1, (T, B, case["w_hh"].shape[1]))
        got = rnnkern.lstm_backward(rnnkern.lstm_forward(**case).cache, dy)
        want = rnnkern.reference.lstm_backward(rnnkern.reference.lstm_forward(**case).cache, dy)
        for field, a, b in zip(want._fields, got, want):
            if b is not None and not np.allclose(a, b, rtol=1e-9, atol=1e-12):
                raise AssertionError(f"{name}: {field} differs from the reference")
        if name not in INT8_VARIANTS:
            continue
        case32 = {k: None if v is None else v.astype(np.float32) for k, v in case.items()}
        got8, want8 = (f(**case32, training=False, precision="int8").y
                       for f in (rnnkern.lstm_forward, rnnkern.reference.lstm_forward))
        if np.abs(got8 - want8).max() > 2.0**-7 * np.abs(want8).max():  # docs/tolerances.md
            raise AssertionError(f"{name}: int8 y differs from the int8 reference")


def jobs_for(T: int, B: int, I: int, H: int, np: Any, torch: Any, rnnkern: Any,
             int8: bool = False) -> dict[str, Callable[[], object]]:
    """"{library} {variant} {fwd|fwdbwd}" -> one call, float32, random weights; torch's proj
    variant has proj_size = H // 2; with ``int8`` also "rnnkern {variant} int8" (inference)."""
    rng = np.random.default_rng(1)
    k = 1 / np.sqrt(H)
    x = rng.uniform(-1, 1, (T, B, I)).astype(np.float32)  # (T, B, I)
    dy = rng.uniform(-1, 1, (T, B, H)).astype(np.float32)  # (T, B, H)
    def draw(shape: tuple[int, ...]) -> Any:
        return rng.uniform(-k, k, shape).astype(np.float32)

    w = {"w_ih": draw((4 * H, I)), "w_hh": draw((4 * H, H)), "b_ih": draw((4 * H,)),
         "b_hh": draw((4 * H,))}
    extras: dict[str, dict[str, Any]] = {"plain": {}}  # variant -> lstm_forward keywords
    for v in KERNEL_VARIANTS:
        extras[v] = variant_args(v, H, draw)
    jobs: dict[str, Callable[[], object]] = {}
    for variant, extra in extras.items():
        kw = {**w, **extra}
        dy_v = np.ascontiguousarray(dy[:, :, :kw["w_hh"].shape[1]])  # (T, B, P)
        jobs[f"rnnkern {variant} fwd"] = functools.partial(
            rnnkern.lstm_forward, x, None, None, training=False, **kw)
        jobs[f"rnnkern {variant} fwdbwd"] = functools.partial(
            lambda kw, dy_v: rnnkern.lstm_backward(
                rnnkern.lstm_forward(x, None, None, **kw).cache, dy_v), kw, dy_v)
        if int8 and variant in ("plain", *INT8_VARIANTS):
            jobs[f"rnnkern {variant} int8"] = functools.partial(
                rnnkern.lstm_forward, x, None, None, training=False, precision="int8", **kw)
    xt = torch.from_numpy(x)
    for variant, proj in (("plain", 0), ("proj", H // 2)):
        m = torch.nn.LSTM(I, H, proj_size=proj)
        gy = torch.from_numpy(np.ascontiguousarray(dy[:, :, :proj] if proj else dy))
        jobs[f"torch {variant} fwd"] = functools.partial(_torch_forward, torch, m, xt)
        jobs[f"torch {variant} fwdbwd"] = functools.partial(_torch_training, m, xt, gy)
    return jobs


def _torch_forward(torch: Any, m: Any, x: Any) -> object:
    with torch.no_grad():
        return m(x)


def _torch_training(m: Any, x: Any, gy: Any) -> object:
    m.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    y, _ = m(xg)
    y.backward(gy)
    return y


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    threads = args.threads or timing.default_threads()
    import numpy as np
    import peers
    import torch

    import rnnkern
    peers.set_threads(threads)
    check_kernels(rnnkern, np)
    print(f"# {timing.cpu_model()}, {threads} threads; rnnkern {rnnkern.config()['isa']}, "
          f"torch {torch.__version__}; P = H/2")
    print("shape  job                fwd ms (x plain, x MACs)   fwd+bwd ms (x plain, x MACs)")
    for name in args.shapes.split(","):
        s = peers.SHAPES[name]
        T, B, I, H, P = s.T, s.B, s.I, s.H, s.H // 2
        med = timing.median_seconds(timing.round_robin(
            jobs_for(T, B, I, H, np, torch, rnnkern, args.int8), repeat=args.repeat,
            min_time=args.min_time))
        for lib in ("rnnkern", "torch"):
            for v in ("plain", *KERNEL_VARIANTS):
                if f"{lib} {v} fwd" not in med:
                    continue
                cols = []
                for p, bw in (("fwd", False), ("fwdbwd", True)):
                    t, t0 = med[f"{lib} {v} {p}"], med[f"{lib} plain {p}"]
                    ratio = macs(v, T, B, I, H, P, bw) / macs("plain", T, B, I, H, P, bw)
                    cols.append(f"{1e3 * t:7.2f} ({t / t0:4.2f}, {ratio:4.2f})")
                print(f"{name:<6} {lib + ' ' + v:<16} {cols[0]:>24}   {cols[1]:>24}")
        for v in ("plain", "proj"):
            ratios = [med[f"rnnkern {v} {p}"] / med[f"torch {v} {p}"] for p in ("fwd", "fwdbwd")]
            print(f"{name:<6} {v + ' rnnkern/torch':<16} {ratios[0]:>24.2f}   {ratios[1]:>24.2f}")
        for v in ("plain", *INT8_VARIANTS) if args.int8 else ():
            t, t32 = med[f"rnnkern {v} int8"], med[f"rnnkern {v} fwd"]
            print(f"{name:<6} {'int8 ' + v:<16} {f'{1e3 * t:7.2f} (x float32 {t / t32:4.2f})':>24}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(timing.default_threads()))
    main()

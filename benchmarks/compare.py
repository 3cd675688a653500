"""rnnkern against PyTorch and ONNX Runtime, from one run, as the table of issue 4.

    python benchmarks/compare.py [--threads N | --single-thread] [--cells lstm,gru,rnn]
                                 [--shapes S1,S2,S3,S4] [--repeat R] [--markdown]
                                 [--no-torch] [--no-ort] [--no-rnnkern] [--no-check]

For each cell and shape: the median milliseconds of rnnkern, torch and ORT forward (inference),
of rnnkern and torch forward+backward, the ratios rnnkern / min(torch, ORT) (forward) and
rnnkern / torch (forward+backward), and rnnkern's forward GFLOP/s (2*T*B*G*H*(I+H) flops) with
its share of the same run's NumPy sgemm rate (1024^3 float32), printed at the top. The peers'
repetitions are interleaved (round robin) so that machine noise hits them alike; every peer's
result is first checked against the float64 reference (skip with --no-check).

A peer that fails to import is an error unless its --no-* flag is given.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

import timing  # does not import NumPy


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of every peer and of NumPy's BLAS (default: the cores available)")
    ap.add_argument("--single-thread", action="store_true", help="same as --threads 1")
    ap.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated: lstm,gru,rnn")
    ap.add_argument("--shapes", default="S1,S2,S3,S4",
                    help="comma-separated names of benchmarks/peers.py ALL_SHAPES "
                         "(S1..S4, O1, O2, M1..M5)")
    ap.add_argument("--repeat", type=int, default=11, help="samples per peer (median taken)")
    ap.add_argument("--min-time", type=float, default=0.05,
                    help="seconds a sample lasts at least (calls are averaged)")
    ap.add_argument("--markdown", action="store_true", help="print a README-ready table")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--no-ort", action="store_true", help="leave ONNX Runtime out")
    ap.add_argument("--no-rnnkern", action="store_true", help="time the peers only")
    ap.add_argument("--no-check", action="store_true",
                    help="skip checking results against the float64 reference")
    args = ap.parse_args(argv)
    if args.single_thread:
        if args.threads not in (None, 1):
            ap.error("--single-thread contradicts --threads")
        args.threads = 1
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads: expected >= 1, got {args.threads}")
    if args.repeat < 1:
        ap.error(f"--repeat: expected >= 1, got {args.repeat}")
    return args


# NumPy's BLAS reads its thread count when NumPy is first imported: set it first, so the sgemm
# figure runs on the same thread count as the peers.
_ARGS = _parse(None) if __name__ == "__main__" else None
if _ARGS is not None:
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(_ARGS.threads or timing.default_threads())

import numpy as np  # noqa: E402
import peers  # noqa: E402

__all__ = ["Row", "format_table", "main", "measure"]

# job keys: (peer, pass)
_JOBS = (("rnnkern", "fwd"), ("torch", "fwd"), ("ort", "fwd"), ("rnnkern", "fwdbwd"),
         ("torch", "fwdbwd"))


@dataclass(frozen=True)
class Row:
    """One cell and shape: median seconds per (peer, pass) measured, and rnnkern's forward
    flops."""

    cell: str
    shape: peers.Shape
    seconds: dict[tuple[str, str], float]
    flops: int
    spread: float | None = None  # the largest interquartile range / median of the row's samples

    def ms(self, peer: str, pass_: str) -> float | None:
        t = self.seconds.get((peer, pass_))
        return None if t is None else t * 1e3

    def fwd_ratio(self) -> float | None:
        """rnnkern forward / the faster of torch and ORT forward."""
        rk = self.seconds.get(("rnnkern", "fwd"))
        others = [t for k, t in self.seconds.items() if k[1] == "fwd" and k[0] != "rnnkern"]
        return None if rk is None or not others else rk / min(others)

    def fwdbwd_ratio(self) -> float | None:
        """rnnkern forward+backward / torch forward+backward."""
        rk, th = self.seconds.get(("rnnkern", "fwdbwd")), self.seconds.get(("torch", "fwdbwd"))
        return None if rk is None or th is None else rk / th

    def gflops(self) -> float | None:
        """rnnkern's forward rate."""
        rk = self.seconds.get(("rnnkern", "fwd"))
        return None if rk is None else self.flops / rk / 1e9


def measure(cell: str, shape: peers.Shape, names: Sequence[str], threads: int, *, repeat: int,
            min_time: float, check: bool) -> Row:
    """Build the peers `names` on one problem, check them once against the float64 reference
    (if `check`), then time all their passes interleaved."""
    problem = peers.make_problem(cell, shape)
    built = {name: peers.build_peer(name, problem, threads) for name in names}
    jobs: dict[str, Callable[[], peers.Result]] = {}
    for name, pass_ in _JOBS:
        if name not in built or (pass_ == "fwdbwd" and not built[name].trains):
            continue
        p = built[name]
        jobs[f"{name} {pass_}"] = p.forward if pass_ == "fwd" else p.forward_backward
    if check:
        want = peers.oracle(problem)
        for key, fn in jobs.items():
            errors = peers.check_result(fn(), want, problem, grads=key.endswith("fwdbwd"))
            if errors:
                raise AssertionError(f"{key} {cell} {shape.label()} disagrees with the float64 "
                                     "reference: " + "; ".join(errors))
        del want
    samples = timing.round_robin(jobs, repeat=repeat, min_time=min_time)
    med = timing.median_seconds(samples)
    seconds = {(k.split()[0], k.split()[1]): t for k, t in med.items()}
    spread = max(timing.relative_spread(v) for v in samples.values())
    return Row(cell, shape, seconds, peers.flops(cell, shape), spread)


def _versions(names: Sequence[str]) -> str:
    parts = [f"python {sys.version.split()[0]}", f"numpy {np.__version__}"]
    import rnnkern
    parts.append(f"rnnkern {rnnkern.__version__}")
    if "torch" in names:
        import torch
        parts.append(f"torch {torch.__version__}")
    if "ort" in names:
        import onnxruntime
        parts.append(f"onnxruntime {onnxruntime.__version__}")
    return ", ".join(parts)


def _rnnkern_notes() -> list[str]:
    import rnnkern
    notes = []
    if hasattr(rnnkern, "config"):
        cfg = rnnkern.config()
        notes.append("rnnkern.config(): " + ", ".join(f"{k} {v}" for k, v in cfg.items()))
    if rnnkern.lstm_forward is rnnkern.reference.lstm_forward:
        notes.append("rnnkern's functions are the NumPy reference (compiled core not built)")
    return notes


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ms(v: float | None) -> str:
    """Milliseconds to three significant digits (four from 1000 on)."""
    if v is None:
        return "-"
    return format(v, ".0f" if v >= 100 else ".1f" if v >= 10 else ".2f" if v >= 1 else ".3f")


_HEADER = ("cell", "shape (B, T, I, H)", "rnnkern fwd", "torch fwd", "ORT fwd", "fwd ratio",
           "rnnkern GFLOP/s (% sgemm)", "rnnkern fwd+bwd", "torch fwd+bwd", "fwd+bwd ratio",
           "spread")


def _cells(row: Row, sgemm: float) -> list[str]:
    s = row.shape
    g = row.gflops()
    rate = "-" if g is None else f"{g:.0f} ({100 * g / sgemm:.0f}%)"
    return [row.cell, f"{s.name} ({s.B}, {s.T}, {s.I}, {s.H})",
            _ms(row.ms("rnnkern", "fwd")), _ms(row.ms("torch", "fwd")), _ms(row.ms("ort", "fwd")),
            _fmt(row.fwd_ratio(), ".2f"), rate, _ms(row.ms("rnnkern", "fwdbwd")),
            _ms(row.ms("torch", "fwdbwd")), _fmt(row.fwdbwd_ratio(), ".2f"),
            "-" if row.spread is None else f"{100 * row.spread:.0f}%"]


def format_table(rows: Sequence[Row], sgemm: float, *, markdown: bool) -> str:
    """The rows as an aligned text table or a Markdown table (times in ms)."""
    body = [_cells(r, sgemm) for r in rows]
    keep = [i for i in range(len(_HEADER)) if any(line[i] != "-" for line in body)]
    header = [_HEADER[i] for i in keep]  # columns with no measurement are left out
    body = [[line[i] for i in keep] for line in body]
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(x.ljust(w) if i < 2 else x.rjust(w)
                               for i, (x, w) in enumerate(zip(line, widths)))
                     for line in [header, *body])


def main(argv: Sequence[str] | None = None) -> int:
    args = _ARGS if argv is None and _ARGS is not None else _parse(argv)
    threads = args.threads or peers.default_threads()
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for c in cells:
        if c not in peers.CELLS:
            raise SystemExit(f"--cells: unknown cell {c!r}; expected some of {peers.CELLS}")
    for s in shapes:
        if s not in peers.ALL_SHAPES:
            raise SystemExit(f"--shapes: unknown shape {s!r}; expected some of "
                             f"{tuple(peers.ALL_SHAPES)}")
    names = [n for n, off in (("rnnkern", args.no_rnnkern), ("torch", args.no_torch),
                              ("ort", args.no_ort)) if not off]
    if not names:
        raise SystemExit("nothing to measure: every peer is excluded")
    try:  # every peer that is not excluded must import: fail now, not halfway through
        notes = peers.set_threads(threads, torch="torch" in names)
        if "rnnkern" not in names:
            notes = []
        if "ort" in names:
            peers.onnx_model(peers.make_problem("rnn", peers.SHAPES["S1"]))
        versions = _versions(names)
    except peers.PeerUnavailable as e:
        raise SystemExit(f"error: {e}") from e
    if "rnnkern" in names:
        notes += _rnnkern_notes()
    if _ARGS is None:
        notes.append("NumPy's BLAS threads as the environment set them (not run as a script)")

    sgemm = timing.sgemm_gflops(1024, repeat=args.repeat, min_time=args.min_time)
    head = [(f"machine: {timing.cpu_model()}, {peers.default_threads()} cores available; "
             f"{threads} thread{'s' if threads > 1 else ''} per peer"),
            f"versions: {versions}",
            f"NumPy sgemm (1024^3 float32), same run: {sgemm:.0f} GFLOP/s",
            (f"medians of {args.repeat} interleaved samples, ms; ratio < 1: rnnkern is faster; "
             "spread: the row's largest (interquartile range / median) of the samples")]
    head += [f"note: {n}" for n in notes]
    print("\n".join(("" if not args.markdown else "- ") + h for h in head), flush=True)
    rows = []
    for cell in cells:
        for s in shapes:
            rows.append(measure(cell, peers.ALL_SHAPES[s], names, threads, repeat=args.repeat,
                                min_time=args.min_time, check=not args.no_check))
            print(f"  measured {cell} {s}", file=sys.stderr, flush=True)
    print()
    print(format_table(rows, sgemm, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())

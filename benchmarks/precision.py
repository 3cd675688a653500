"""rnnkern's precisions against the peers': forward inference (and forward + backward with
--train), median ms in one run, each job timed in turn (timing.round_robin).

Peers on the same weights (torch's default initialization): torch float32, torch bf16
(`module.to(torch.bfloat16)`), rnnkern float and rnnkern precision="bf16" (packed weights, as
a model holds them). Also the error of y against the float64 reference for both bf16 paths.
With --int8 (forward): rnnkern precision="int8" (packed) and, for LSTM, ONNX Runtime's int8
(`onnxruntime.quantization.quantize_dynamic`: DynamicQuantizeLSTM), and their errors.

    PYTHONPATH=python python benchmarks/precision.py --markdown
    PYTHONPATH=python python benchmarks/precision.py --int8 --markdown
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from peers import Problem, Shape, onnx_model
from timing import default_threads, median_seconds, round_robin

import rnnkern
from rnnkern import reference

SHAPES = {"S1": (1, 100, 256, 256), "S2": (8, 100, 256, 256), "S3": (32, 50, 256, 256),
          "S4": (64, 100, 512, 512)}  # (B, T, I, H), as benchmarks/peers.py's
DEFAULT_SHAPES = "S1,S2,S3"  # S4 on request: its float64 reference alone takes seconds


def ort_int8(cell: str, x: np.ndarray, ws: list[np.ndarray], threads: int) -> Callable[[], Any]:
    """ONNX Runtime's int8 forward of the layer (quantize_dynamic of its ONNX model, zero
    initial states): a call returns y (T, B, H)."""
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_dynamic
    T, B, I = x.shape
    H = ws[1].shape[1]
    zeros = np.zeros((B, H), np.float32)  # (B, H)
    problem = Problem(cell, Shape("", B, T, I, H), x, zeros, zeros if cell == "lstm" else None,
                      *ws, dy=np.zeros((T, B, H), np.float32))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "int8.onnx"
        quantize_dynamic(onnx_model(problem), path)
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {"X": x, "initial_h": zeros[None]}  # (T, B, I), (1, B, H)
    if cell == "lstm":
        feeds["initial_c"] = zeros[None]
    return lambda: sess.run(None, feeds)[0][:, 0]


def run(cell: str, B: int, T: int, I: int, H: int, train: bool, repeat: int,
        min_time: float, int8: bool = False, threads: int = 1) -> dict[str, Any]:
    """Median seconds of each job and the bf16 (and int8) paths' errors, for one (cell,
    shape)."""
    torch.manual_seed(0)
    m = getattr(torch.nn, cell.upper())(I, H)
    mb = getattr(torch.nn, cell.upper())(I, H)
    mb.load_state_dict(m.state_dict())
    mb = mb.to(torch.bfloat16)
    x = torch.randn(T, B, I)  # (T, B, I)
    xb = x.to(torch.bfloat16).requires_grad_(train)
    ws = [p.detach().numpy() for p in (m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0,
                                       m.bias_hh_l0)]
    precisions = ("float", "bf16", "int8") if int8 else ("float", "bf16")
    packs = {p: getattr(rnnkern, f"{cell}_pack")(*ws, precision=p) for p in precisions}
    xn = x.numpy()
    backward = getattr(rnnkern, f"{cell}_backward")
    dy = np.ones((T, B, H), np.float32)  # (T, B, H)

    def ours(p: str) -> Callable[[], object]:
        if not train:
            return lambda: packs[p].forward(xn, training=False)

        def f() -> object:
            out = packs[p].forward(xn, training=True)
            return backward(out.cache, dy, None)
        return f

    def theirs(module: torch.nn.Module, inp: torch.Tensor) -> Callable[[], object]:
        if not train:
            def f() -> object:
                with torch.no_grad():
                    return module(inp)
            return f
        return lambda: module(inp)[0].sum().backward()

    jobs = {"torch float32": theirs(m, x.requires_grad_(train)), "torch bf16": theirs(mb, xb),
            "rnnkern float": ours("float"), "rnnkern bf16": ours("bf16")}
    if int8:
        jobs["rnnkern int8"] = ours("int8")
        if cell == "lstm":  # ORT quantizes LSTM only
            jobs["ort int8"] = ort_int8(cell, x.numpy(), ws, threads)
    med = median_seconds(round_robin(jobs, repeat=repeat, min_time=min_time))
    states = (None, None) if cell == "lstm" else (None,)
    y64 = getattr(reference, f"{cell}_forward")(
        xn.astype(np.float64), *states, *(w.astype(np.float64) for w in ws), training=False).y
    with torch.no_grad():
        yt = mb(x.to(torch.bfloat16))[0].float().numpy()
    yb = packs["bf16"].forward(xn, training=False).y
    ys = {"rnnkern bf16": yb, "torch bf16": yt}
    if int8:
        ys["rnnkern int8"] = packs["int8"].forward(xn, training=False).y
        if "ort int8" in jobs:
            ys["ort int8"] = jobs["ort int8"]()
    scale = float(np.abs(y64).max())
    return {"ms": {k: v * 1e3 for k, v in med.items()},
            "error": {k: float(np.abs(y - y64).max()) / scale for k, y in ys.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="lstm,gru", help="comma-separated: lstm, gru, rnn")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES,
                    help=f"comma-separated of {', '.join(SHAPES)} (default {DEFAULT_SHAPES})")
    ap.add_argument("--train", action="store_true", help="forward + backward instead of forward")
    ap.add_argument("--int8", action="store_true",
                    help="forward: rnnkern int8 against rnnkern float and ORT int8 (LSTM)")
    ap.add_argument("--repeat", type=int, default=7, help="samples per job")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per sample")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--size", type=int, default=0, help="override I = H (a quick run)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if unknown := [n for n in args.shapes.split(",") if n not in SHAPES]:
        ap.error(f"--shapes: unknown {', '.join(unknown)}; expected some of {', '.join(SHAPES)}")
    rnnkern.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rows = []
    for cell in args.cells.split(","):
        for name in args.shapes.split(","):
            B, T, I, H = SHAPES[name]
            if args.size:
                I = H = args.size
            r = run(cell, B, T, I, H, args.train, args.repeat, args.min_time,
                    args.int8 and not args.train, args.threads)
            rows.append({"cell": cell, "shape": name, "B": B, "T": T, "I": I, "H": H, **r})
    if args.json:
        print(json.dumps({"threads": args.threads, "train": args.train,
                          "isa": rnnkern.config()["isa"], "rows": rows}))
        return
    what = "forward + backward" if args.train else "forward"
    print(f"{what}, median ms, {args.threads} threads, rnnkern on {rnnkern.config()['isa']}")
    if args.int8 and not args.train:
        print_int8(rows, args.markdown)
        return
    head = ("| cell | shape | torch float32 | torch bf16 | rnnkern float | rnnkern bf16 | "
            "bf16 / torch bf16 | bf16 / rnnkern float | y error: rnnkern bf16 / torch bf16 |")
    print(head if args.markdown else head.replace("|", " "))
    if args.markdown:
        print("|---|---|" + "---:|" * 7)
    for r in rows:
        ms, e = r["ms"], r["error"]
        cols = [r["cell"], r["shape"]] + [f"{ms[k]:.2f}" for k in
                                          ("torch float32", "torch bf16", "rnnkern float",
                                           "rnnkern bf16")]
        cols += [f"{ms['rnnkern bf16'] / ms['torch bf16']:.2f}",
                 f"{ms['rnnkern bf16'] / ms['rnnkern float']:.2f}",
                 f"{e['rnnkern bf16']:.1e} / {e['torch bf16']:.1e}"]
        print("| " + " | ".join(cols) + " |" if args.markdown else "  ".join(cols))


def print_int8(rows: list[dict[str, Any]], markdown: bool) -> None:
    """The int8 table: times, ratios and y's errors against float64."""
    head = ("| cell | shape | rnnkern float | torch bf16 | ORT int8 | rnnkern int8 | "
            "int8 / rnnkern float | int8 / ORT int8 | y error: rnnkern int8 / ORT int8 |")
    print(head if markdown else head.replace("|", " "))
    if markdown:
        print("|---|---|" + "---:|" * 7)
    for r in rows:
        ms, e = r["ms"], r["error"]
        ort = "ort int8" in ms
        cols = [r["cell"], r["shape"], f"{ms['rnnkern float']:.2f}", f"{ms['torch bf16']:.2f}",
                f"{ms['ort int8']:.2f}" if ort else "-", f"{ms['rnnkern int8']:.2f}",
                f"{ms['rnnkern int8'] / ms['rnnkern float']:.2f}",
                f"{ms['rnnkern int8'] / ms['ort int8']:.2f}" if ort else "-",
                f"{e['rnnkern int8']:.1e} / " + (f"{e['ort int8']:.1e}" if ort else "-")]
        print("| " + " | ".join(cols) + " |" if markdown else "  ".join(cols))


if __name__ == "__main__":
    main()

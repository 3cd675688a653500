"""rnnkern in company: beside PyTorch's and ONNX Runtime's thread pools and another process
(issue 13), from one run.

    python benchmarks/company.py [--cells lstm,gru,rnn] [--shapes S1,S2,S3]
        [--conditions back-to-back,after-torch,after-ort,busy] [--repeat R] [--min-time SEC]
        [--dropin-min-time SEC] [--no-dropin] [--threads N] [--markdown] [--json FILE]

Forward (inference) of rnnkern, torch and ONNX Runtime (benchmarks/peers.py) for each cell and
shape in four conditions (CONDITIONS), each library with its default thread count unless
--threads; then the training step of bench_torch_dropin.py, torch against
rnnkern.torch.convert(model), at B=32 T=100 padded and packed (random lengths) and B=1 T=200,
torch's default settings.

The samples of every peer in the conditions without the busy process are interleaved
(timing.round_robin), then those under the busy process; every call is timed on its own, the
preceding operator (if any) running untimed right before it, and a peer's time is the median
over all its calls. Each peer's output is checked against the float64 reference before timing
and again after each condition. The targets of issue 13 are marked met or missed: rnnkern
right after a torch operator or an ORT run at most 1.3x its back-to-back time; under the busy
process at most 1.2x the faster peer's time; the drop-in step at most 0.9x torch's (LSTM) and
0.7x (GRU).

A peer that fails to import is an error.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import compare
import numpy as np
import peers
import timing

__all__ = ["CONDITIONS", "DROPIN_CASES", "DropinCase", "DropinRow", "FwdRow", "busy_process",
           "cpu_seconds", "format_report",
           "missed_targets", "main", "measure_dropin", "measure_forward"]

CONDITIONS = {
    "back-to-back": "back-to-back calls",
    "after-torch": "each call right after a small torch operator (torch.mm of (64, 256) @ "
                   "(256, 256) on torch's intra-op pool, untimed)",
    "after-ort": "each call right after a small ONNX Runtime run (a MatMul (64, 256) @ "
                 "(256, 256) session, ORT's default session options, untimed)",
    "busy": "back-to-back calls with one busy process on the machine "
            "(a `while True: pass` Python loop)",
}
# condition -> (ratio, limit): "own" = rnnkern / its back-to-back time, "peer" = rnnkern / the
# faster of torch and ORT in the same condition
TARGETS = {"after-torch": ("own", 1.3), "after-ort": ("own", 1.3), "busy": ("peer", 1.2)}
DROPIN_TARGETS = {"lstm": 0.9, "gru": 0.7}  # rnnkern.torch step / torch step
FWD_PEERS = ("rnnkern", "torch", "ort")


@dataclass(frozen=True)
class DropinCase:
    """A batch of the drop-in training step: B sequences of T tokens, padded or packed."""

    name: str
    B: int
    T: int
    packed: bool


DROPIN_CASES = (DropinCase("B=32 T=100 padded", 32, 100, False),
                DropinCase("B=32 T=100 packed", 32, 100, True),
                DropinCase("B=1 T=200", 1, 200, False))
# bench_torch_dropin.TextClassifier's sizes (its defaults)
DROPIN_MODEL = {"vocab": 5000, "emb": 128, "hidden": 256, "classes": 4}


@dataclass(frozen=True)
class FwdRow:
    """One condition, cell and shape: median seconds per forward call of each peer."""

    condition: str
    cell: str
    shape: peers.Shape
    seconds: dict[str, float]
    calls: dict[str, int]  # timed calls behind each median
    spread: float  # the largest interquartile range / median of a peer's call times
    back_to_back: float | None = None  # rnnkern's back-to-back median, same cell and shape
    busy_share: float | None = None  # the busy process's CPU seconds per second, if any

    def own_ratio(self) -> float | None:
        """rnnkern's time / its back-to-back time."""
        b = self.back_to_back
        return None if b is None else self.seconds["rnnkern"] / b

    def peer_ratio(self) -> float | None:
        """rnnkern's time / the faster peer's, same condition."""
        return self.seconds["rnnkern"] / min(self.seconds["torch"], self.seconds["ort"])

    def target(self) -> tuple[float | None, float] | None:
        """(ratio, limit) of the condition's target; None if it has none."""
        if self.condition not in TARGETS:
            return None
        kind, limit = TARGETS[self.condition]
        return (self.own_ratio() if kind == "own" else self.peer_ratio()), limit

    def met(self) -> bool | None:
        t = self.target()
        return None if t is None or t[0] is None else t[0] <= t[1]


@dataclass(frozen=True)
class DropinRow:
    """One cell and batch of the drop-in step: median seconds per step, torch and rnnkern."""

    cell: str
    case: DropinCase
    seconds: dict[str, float]

    def ratio(self) -> float:
        return self.seconds["rnnkern"] / self.seconds["torch"]

    def met(self) -> bool:
        return self.ratio() <= DROPIN_TARGETS[self.cell]


# ---------------------------------------------------------------------------------------------
# the company: a torch operator, an ORT run, a busy process


def small_torch_op() -> Callable[[], object]:
    """A (64, 256) @ (256, 256) torch.mm: big enough to wake torch's intra-op workers, which
    then spin for a while."""
    import torch
    a = torch.rand(64, 256)  # (64, 256)
    b = torch.rand(256, 256)  # (256, 256)
    out = torch.empty(64, 256)  # (64, 256)
    return lambda: torch.mm(a, b, out=out)


def small_ort_run(threads: int) -> Callable[[], object]:
    """One run of a session of a single MatMul (64, 256) @ (256, 256), default session options
    but `threads` intra-op threads (0: ORT's default)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = rng.uniform(-1.0, 1.0, (256, 256)).astype(np.float32)  # (256, 256)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "W"], ["Y"])], "small_matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [64, 256])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [64, 256])],
        initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    feeds = {"A": rng.uniform(-1.0, 1.0, (64, 256)).astype(np.float32)}  # (64, 256)
    return lambda: sess.run(None, feeds)


# A CPU-bound loop that also ends when its parent does (checked every ~20 ms), so that it never
# outlives a benchmark killed with SIGKILL.
_BUSY_LOOP = ("import os\np = os.getppid()\nwhile os.getppid() == p:\n"
              "    for _ in range(1000000):\n        pass\n")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # fields 3.. of proc(5)
    except OSError as e:
        raise RuntimeError(f"cannot read the busy process's CPU time from /proc: {e}") from e
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def busy_process(*, window: float = 0.1, min_share: float = 0.1,
                 timeout: float = 10.0) -> Iterator[subprocess.Popen[bytes]]:
    """One busy Python process beside this one for the duration of the block, killed on leaving
    it (exceptions and Ctrl-C included). The block is entered once the process runs: its CPU
    time grew by at least `min_share` of a core over a `window`-second interval (RuntimeError
    after `timeout` seconds). Yields the process."""
    proc = subprocess.Popen([sys.executable, "-c", _BUSY_LOOP])
    try:
        deadline = time.monotonic() + timeout
        last = cpu_seconds(proc.pid)
        while True:
            time.sleep(window)
            if proc.poll() is not None:
                raise RuntimeError(f"the busy process exited (code {proc.returncode})")
            now = cpu_seconds(proc.pid)
            if now - last >= min_share * window:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the busy process got under {min_share:.0%} of a core for "
                                   f"{timeout:.0f} s ({now - last:.3f} s in the last {window} s)")
            last = now
        yield proc
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# measuring


def _check(jobs: Mapping[str, Callable[[], peers.Result]], want: peers.Result,
           problem: peers.Problem, when: str, before: Callable[[], object] | None = None) -> None:
    """AssertionError naming the first peer whose output (right after `before`, if given)
    differs from the float64 reference `want`."""
    for name, fn in jobs.items():
        if before is not None:
            before()
        errors = peers.check_result(fn(), want, problem, grads=False)
        if errors:
            raise AssertionError(f"{name} {problem.cell} {problem.shape.label()} {when} disagrees "
                                 "with the float64 reference: " + "; ".join(errors))


def _measure_case(cell: str, shape: peers.Shape, conditions: Sequence[str],
                  before: Mapping[str, Callable[[], object] | None], *, ort_threads: int,
                  repeat: int, min_time: float, pause: float) -> list[FwdRow]:
    problem = peers.make_problem(cell, shape)
    jobs = {n: peers.build_peer(n, problem, ort_threads).forward for n in FWD_PEERS}
    want = peers.oracle(problem, grads=False)
    _check(jobs, want, problem, "before timing")
    rows = []
    # the conditions without the busy process are interleaved with each other, so that their
    # ratios to the back-to-back time see the same machine; the busy one is timed on its own
    for group in ([c for c in conditions if c != "busy"], [c for c in conditions if c == "busy"]):
        if not group:
            continue
        busy = busy_process() if group == ["busy"] else contextlib.nullcontext(None)
        with busy as proc:
            cpu0, t0 = cpu_seconds(proc.pid) if proc else 0.0, time.monotonic()
            samples = timing.round_robin(
                {f"{c} {n}": fn for c in group for n, fn in jobs.items()}, repeat=repeat,
                min_time=min_time, pause=pause, per_call=True,
                before={f"{c} {n}": op for c in group if (op := before.get(c)) for n in jobs})
            share = ((cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) if proc
                     else None)
            for c in group:
                _check(jobs, want, problem, f"after timing {c}", before.get(c))
        for c in group:
            calls = {n: samples[f"{c} {n}"] for n in jobs}
            rows.append(FwdRow(c, cell, shape, timing.median_seconds(calls),
                               {k: len(v) for k, v in calls.items()},
                               max(timing.relative_spread(v) for v in calls.values()),
                               busy_share=share))
    return sorted(rows, key=lambda r: conditions.index(r.condition))


def measure_forward(cells: Sequence[str], shapes: Sequence[peers.Shape],
                    conditions: Sequence[str], *, ort_threads: int = 0, repeat: int,
                    min_time: float, pause: float = 0.1,
                    progress: Callable[[str], None] | None = None) -> list[FwdRow]:
    """Forward of rnnkern, torch and ORT (`ort_threads` intra-op threads, 0: ORT's default; the
    others as set) for each cell and shape in each condition: for one cell and shape, the
    samples of every peer in every condition but "busy" are interleaved, then "busy" is timed.
    Outputs are checked against the float64 reference (AssertionError naming the peer if one
    differs)."""
    for c in conditions:
        if c not in CONDITIONS:
            raise ValueError(f"conditions: expected some of {tuple(CONDITIONS)}, got {c!r}")
    before: dict[str, Callable[[], object] | None] = {
        "after-torch": small_torch_op() if "after-torch" in conditions else None,
        "after-ort": small_ort_run(ort_threads) if "after-ort" in conditions else None}
    rows: list[FwdRow] = []
    for cell in cells:
        for shape in shapes:
            case = _measure_case(cell, shape, conditions, before, ort_threads=ort_threads,
                                 repeat=repeat, min_time=min_time, pause=pause)
            b2b = [r.seconds["rnnkern"] for r in case if r.condition == "back-to-back"]
            rows += [replace(r, back_to_back=b2b[0] if b2b else None) for r in case]
            if progress:  # the medians so far, in case the run is cut short
                progress(f"measured {cell} {shape.name}, ms rnnkern/torch/ORT: " + "; ".join(
                    f"{r.condition} " + "/".join(compare._ms(r.seconds[p] * 1e3)
                                                 for p in FWD_PEERS) for r in case))
    return rows


def measure_dropin(cells: Sequence[str], cases: Sequence[DropinCase], *,
                   model: Mapping[str, int] = DROPIN_MODEL, repeat: int, min_time: float,
                   progress: Callable[[str], None] | None = None) -> list[DropinRow]:
    """bench_torch_dropin's training step, torch and converted, for each cell and batch; the two
    models' first losses and gradients are checked to agree first."""
    import bench_torch_dropin as dropin
    rows = []
    for cell in cells:
        for case in cases:
            tokens, labels, lengths = dropin.make_batch(
                case.B, case.T, vocab=model["vocab"], classes=model["classes"],
                packed=case.packed)
            med = dropin.time_steps(cell, tokens, labels, lengths, **model, repeat=repeat,
                                    min_time=min_time, check=True)
            rows.append(DropinRow(cell, case, med))
            if progress:
                progress(f"measured drop-in {cell} {case.name}, ms torch/rnnkern: "
                         f"{compare._ms(med['torch'] * 1e3)}/{compare._ms(med['rnnkern'] * 1e3)}")
    return rows


# ---------------------------------------------------------------------------------------------
# output


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _verdict(limit: float, met: bool | None) -> str:
    return "-" if met is None else f"<= {limit}x: {'met' if met else 'MISSED'}"


def _render(header: Sequence[str], body: Sequence[Sequence[str]], *, markdown: bool) -> str:
    """An aligned text or Markdown table, the first two columns left-aligned; columns with no
    value in any row are left out."""
    keep = [i for i in range(len(header)) if any(line[i] != "-" for line in body)]
    header = [header[i] for i in keep]
    rows = [[line[i] for i in keep] for line in body]
    if markdown:
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(x.ljust(w) if i < 2 else x.rjust(w)
                               for i, (x, w) in enumerate(zip(line, widths)))
                     for line in [header, *rows])


_FWD_HEADER = ("cell", "shape (B, T, I, H)", "rnnkern ms", "torch ms", "ORT ms",
               "rnnkern / its back-to-back", "rnnkern / faster peer", "target", "spread",
               "busy process CPU")


def _fwd_line(r: FwdRow) -> list[str]:
    s, t = r.shape, r.target()
    return [r.cell, f"{s.name} ({s.B}, {s.T}, {s.I}, {s.H})",
            *(compare._ms(r.seconds[p] * 1e3) for p in FWD_PEERS),
            "-" if r.condition == "back-to-back" else _x(r.own_ratio()), _x(r.peer_ratio()),
            "-" if t is None else _verdict(t[1], r.met()), f"{100 * r.spread:.0f}%",
            "-" if r.busy_share is None else f"{100 * r.busy_share:.0f}%"]


_DROPIN_HEADER = ("cell", "batch", "torch ms/step", "rnnkern.torch ms/step", "rnnkern / torch",
                  "target")


def _dropin_line(r: DropinRow) -> list[str]:
    return [r.cell, r.case.name, compare._ms(r.seconds["torch"] * 1e3),
            compare._ms(r.seconds["rnnkern"] * 1e3), _x(r.ratio()),
            _verdict(DROPIN_TARGETS[r.cell], r.met())]


def missed_targets(fwd: Sequence[FwdRow], dropin: Sequence[DropinRow]) -> tuple[int, list[str]]:
    """How many targets were measured, and the missed ones described."""
    missed, n = [], 0
    for r in fwd:
        t = r.target()
        if t is not None and t[0] is not None:
            n += 1
            if not r.met():
                missed.append(f"{r.condition} {r.cell} {r.shape.name} {t[0]:.2f}x > {t[1]}x")
    for d in dropin:
        n += 1
        if not d.met():
            missed.append(f"drop-in {d.cell} {d.case.name} {d.ratio():.2f}x > "
                          f"{DROPIN_TARGETS[d.cell]}x")
    return n, missed


def format_report(fwd: Sequence[FwdRow], dropin: Sequence[DropinRow], *,
                  markdown: bool) -> str:
    """The forward tables (one per condition, stating it), the drop-in table and the targets."""
    out = []
    for cond in CONDITIONS:
        rows = [r for r in fwd if r.condition == cond]
        if not rows:
            continue
        title = f"{cond}: {CONDITIONS[cond]}; forward (inference), median ms per call"
        out += ["", f"**{title}**" if markdown else title, "",
                _render(_FWD_HEADER, [_fwd_line(r) for r in rows], markdown=markdown)]
    if dropin:
        title = ("drop-in training step: Embedding(5000, 128) -> LSTM/GRU(128, 256, batch_first) "
                 "-> Linear(256, 4) on the last state, cross-entropy, SGD; torch's default "
                 "settings; median ms per step")
        out += ["", f"**{title}**" if markdown else title, "",
                _render(_DROPIN_HEADER, [_dropin_line(r) for r in dropin], markdown=markdown)]
    n, missed = missed_targets(fwd, dropin)
    out += ["", f"targets met: {n - len(missed)} of {n}"
            + ("" if not missed else "; missed: " + ", ".join(missed))]
    return "\n".join(out)


def _json(fwd: Sequence[FwdRow], dropin: Sequence[DropinRow],
          head: Mapping[str, Any]) -> dict[str, Any]:
    n, missed = missed_targets(fwd, dropin)
    return {
        **head,
        "forward": [{**asdict(r), "ms": {k: v * 1e3 for k, v in r.seconds.items()},
                     "own_ratio": r.own_ratio(), "peer_ratio": r.peer_ratio(),
                     "target": TARGETS.get(r.condition), "met": r.met()} for r in fwd],
        "dropin": [{**asdict(d), "ms": {k: v * 1e3 for k, v in d.seconds.items()},
                    "ratio": d.ratio(), "target": DROPIN_TARGETS[d.cell], "met": d.met()}
                   for d in dropin],
        "targets": {"measured": n, "met": n - len(missed), "missed": missed},
    }


# ---------------------------------------------------------------------------------------------
# command line


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated: lstm,gru,rnn")
    ap.add_argument("--shapes", default="S1,S2,S3",
                    help="comma-separated names of benchmarks/peers.py ALL_SHAPES")
    ap.add_argument("--conditions", default=",".join(CONDITIONS),
                    help=f"comma-separated: {','.join(CONDITIONS)}")
    ap.add_argument("--repeat", type=int, default=11,
                    help="samples per peer and condition (and per drop-in model)")
    ap.add_argument("--min-time", type=float, default=0.05,
                    help="seconds a forward sample lasts at least (each call timed on its own)")
    ap.add_argument("--dropin-min-time", type=float, default=0.3,
                    help="seconds a drop-in sample lasts at least (steps are averaged)")
    ap.add_argument("--no-dropin", action="store_true", help="leave out the drop-in step")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of rnnkern, torch and ORT (default: each library's own)")
    ap.add_argument("--markdown", action="store_true", help="print README-ready tables")
    ap.add_argument("--json", metavar="FILE", default=None, help="write every number to FILE")
    args = ap.parse_args(argv)
    args.cells = [c for c in args.cells.split(",") if c]
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.conditions = [c for c in args.conditions.split(",") if c]
    for name, got, known in (("cells", args.cells, peers.CELLS),
                             ("shapes", args.shapes, tuple(peers.ALL_SHAPES)),
                             ("conditions", args.conditions, tuple(CONDITIONS))):
        for v in got:
            if v not in known:
                ap.error(f"--{name}: unknown {v!r}; expected some of {known}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads: expected >= 1, got {args.threads}")
    if args.repeat < 1:
        ap.error(f"--repeat: expected >= 1, got {args.repeat}")
    return args


def _sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through busy_process, which kills its process


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:  # every peer must import: fail now, not halfway through
        import onnxruntime  # noqa: F401
        import torch

        import rnnkern
        versions = compare._versions(FWD_PEERS)
    except ImportError as e:
        raise SystemExit(f"error: {e}") from e
    if args.threads is not None:
        peers.set_threads(args.threads)
    ort_threads = args.threads or 0
    how = "set by --threads" if args.threads else "its default"
    threads = {"rnnkern": f"{rnnkern.get_num_threads()} ({how})",
               "torch": f"{torch.get_num_threads()} ({how})",
               "ort": (f"{ort_threads} (set by --threads)" if ort_threads else
                       "intra_op_num_threads=0 (its default: one per physical core)")}
    head = {
        "machine": f"{timing.cpu_model()}, {timing.default_threads()} cores available",
        "versions": versions,
        "threads": threads,
        "timing": (f"{args.repeat} interleaved samples per peer of >= {args.min_time} s, every "
                   "call timed on its own, median over all calls; drop-in: "
                   f"{args.repeat} interleaved samples of >= {args.dropin_min_time} s, median of "
                   "the samples' mean step"),
    }
    lines = [f"machine: {head['machine']}", f"versions: {versions}",
             "threads: " + ", ".join(f"{k} {v}" for k, v in threads.items()),
             f"timing: {head['timing']}"]
    print("\n".join(("- " if args.markdown else "") + h for h in lines), flush=True)

    def progress(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    old_handler = signal.signal(signal.SIGTERM, _sigterm)
    try:
        fwd = measure_forward(args.cells, [peers.ALL_SHAPES[s] for s in args.shapes],
                              args.conditions, ort_threads=ort_threads, repeat=args.repeat,
                              min_time=args.min_time, progress=progress)
        dropin = [] if args.no_dropin else measure_dropin(
            [c for c in ("lstm", "gru") if c in args.cells], DROPIN_CASES, repeat=args.repeat,
            min_time=args.dropin_min_time, progress=progress)
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    print(format_report(fwd, dropin, markdown=args.markdown))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(_json(fwd, dropin, head), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

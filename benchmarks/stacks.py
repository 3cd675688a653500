"""Whole stacks (issue 15): multi-layer, bidirectional LSTM/GRU, torch.nn vs rnnkern.nn vs
rnnkern.torch on the same weights, inference and training, interleaved (timing.round_robin).

    python benchmarks/stacks.py [--repeat 7] [--min-time 0.2] [--cases 0 1 ...] [--markdown]
        [--json FILE] [--T 100] [--size 256] [--lowp]

Inference: torch under no_grad, rnnkern.nn with training=False, rnnkern.torch under no_grad.
Training: forward + backward of the input and every weight (torch and rnnkern.torch: autograd
with requires_grad input; rnnkern.nn: forward, then layer.backward(dy)). Before timing, each
case's outputs and input gradients are checked against torch's. Ratios in brackets are to torch;
the last column is rnnkern.torch / rnnkern.nn (issue 15's target: <= 1.15).

--lowp adds, in the same round robin, the lower-precision inference of the same stacks:
torch's bfloat16 module (``module.to(torch.bfloat16)``, the peer's own), rnnkern.nn and
rnnkern.torch (``convert(precision=...)``) with precision "bf16" and "int8", each with its
error against float64 (max |y - y64| / max |y64|, y64 from rnnkern.nn in float64,
whose kernels agree with the NumPy reference to about 1e-10).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from timing import cpu_model, default_threads, round_robin  # noqa: E402

import rnnkern  # noqa: E402
import rnnkern.torch as rt  # noqa: E402


@dataclass(frozen=True)
class Case:
    cell: str  # "lstm" or "gru"
    B: int
    layers: int
    bidirectional: bool

    def label(self, T: int, size: int) -> str:
        bi = ", bidirectional" if self.bidirectional else ""
        return f"{self.cell.upper()} B={self.B}, {self.layers} layers{bi}"


#: issue 15's five cases (T=100, I=H=256)
CASES = [Case("lstm", 1, 2, True), Case("lstm", 8, 2, True), Case("lstm", 1, 3, False),
         Case("gru", 1, 2, True), Case("gru", 8, 2, True)]
#: job names, in table order
JOBS = ["torch inference", "rnnkern.nn inference", "rnnkern.torch inference",
        "torch training", "rnnkern.nn training", "rnnkern.torch training"]
#: --lowp's inference jobs, in table order (ratios to "torch inference", float32)
LOWP_JOBS = ["torch bf16 inference", "rnnkern.nn bf16 inference", "rnnkern.torch bf16 inference",
             "rnnkern.nn int8 inference", "rnnkern.torch int8 inference"]


@dataclass
class Row:
    case: Case
    label: str
    ms: dict[str, float]  # median ms per JOBS (and LOWP_JOBS) name
    errors: dict[str, float]  # per LOWP_JOBS name: max |y - y64| / max |y64|; empty without

    def ratio(self, job: str) -> float:
        """job / torch's of the same pass."""
        return self.ms[job] / self.ms["torch " + job.split()[-1]]

    def dropin_over_nn(self, pass_: str) -> float:
        return self.ms[f"rnnkern.torch {pass_}"] / self.ms[f"rnnkern.nn {pass_}"]


def problem(case: Case, T: int, size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A case's torch module (torch's initialization, seed 0) and its input x (T, B, I)."""
    torch.manual_seed(0)
    tcls = torch.nn.LSTM if case.cell == "lstm" else torch.nn.GRU
    native = tcls(size, size, num_layers=case.layers, bidirectional=case.bidirectional)
    return native, torch.randn(T, case.B, size)


def nn_layer(case: Case, native: torch.nn.Module, **kwargs: Any) -> Any:
    """rnnkern.nn's layer of a case holding ``native``'s weights."""
    ncls = rnnkern.nn.LSTM if case.cell == "lstm" else rnnkern.nn.GRU
    layer = ncls(native.input_size, native.hidden_size, num_layers=case.layers,
                 bidirectional=case.bidirectional, **kwargs)
    state = native.state_dict()
    if kwargs.get("dtype") == np.float64:
        state = {k: v.double().numpy() for k, v in state.items()}
    layer.load_state_dict(state)
    return layer


def jobs_for(case: Case, T: int, size: int) -> dict[str, Callable[[], Any]]:
    """The six jobs of a case, on one set of weights, checked against torch first."""
    native, x = problem(case, T, size)
    drop_in = rt.convert(copy.deepcopy(native))
    layer = nn_layer(case, native)
    xn = x.numpy()
    D = 2 if case.bidirectional else 1
    dy = torch.randn(T, case.B, D * size)  # (T, B, D*H)
    dyn = dy.numpy()

    def torch_inference(module: torch.nn.Module) -> Any:
        with torch.no_grad():
            return module(x)[0]

    def torch_training(module: torch.nn.Module) -> Any:
        xg = x.detach().requires_grad_()
        for p in module.parameters():
            p.grad = None
        module(xg)[0].backward(dy)
        return xg.grad

    def nn_training() -> Any:
        layer(xn)
        return layer.backward(dyn)[0]

    # correctness first: outputs and input gradients as torch's
    for got, want in ((torch_inference(drop_in), torch_inference(native)),
                      (layer(xn, training=False)[0], torch_inference(native)),
                      (torch_training(drop_in), torch_training(native)),
                      (nn_training(), torch_training(native))):
        np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-3, atol=1e-4)
    return dict(zip(JOBS, (
        lambda: torch_inference(native), lambda: layer(xn, training=False),
        lambda: torch_inference(drop_in), lambda: torch_training(native), nn_training,
        lambda: torch_training(drop_in))))


def lowp_jobs_for(case: Case, T: int, size: int
                  ) -> tuple[dict[str, Callable[[], Any]], dict[str, float]]:
    """--lowp's inference jobs of a case on jobs_for's weights and x, and each one's error."""
    native, x = problem(case, T, size)
    xn = x.numpy()
    # float64 kernels: within about 1e-10 of the reference
    y64 = nn_layer(case, native, dtype=np.float64)(xn.astype(np.float64), training=False)[0]
    t16 = copy.deepcopy(native).to(torch.bfloat16)
    x16 = x.to(torch.bfloat16)

    def torch_bf16() -> Any:
        with torch.no_grad():
            return t16(x16)[0].float()

    jobs: dict[str, Callable[[], Any]] = {"torch bf16 inference": torch_bf16}
    for prec in ("bf16", "int8"):
        layer = nn_layer(case, native, precision=prec)
        drop_in = rt.convert(copy.deepcopy(native), precision=prec)
        jobs[f"rnnkern.nn {prec} inference"] = lambda layer=layer: layer(xn, training=False)[0]

        def dropin_inference(module: torch.nn.Module = drop_in) -> Any:
            with torch.no_grad():
                return module(x)[0]

        jobs[f"rnnkern.torch {prec} inference"] = dropin_inference
    scale = float(np.abs(y64).max())
    errors = {k: float(np.abs(np.asarray(f(), np.float64) - y64).max()) / scale
              for k, f in jobs.items()}
    # the drop-in runs the very kernels of rnnkern.nn: the same results
    for prec in ("bf16", "int8"):
        assert errors[f"rnnkern.torch {prec} inference"] == errors[f"rnnkern.nn {prec} inference"]
    return {k: jobs[k] for k in LOWP_JOBS}, errors


def measure(cases: list[Case], *, T: int = 100, size: int = 256, repeat: int = 7,
            min_time: float = 0.2, lowp: bool = False) -> list[Row]:
    rows = []
    for case in cases:
        jobs = jobs_for(case, T, size)
        errors: dict[str, float] = {}
        if lowp:
            more, errors = lowp_jobs_for(case, T, size)
            jobs.update(more)
        samples = round_robin(jobs, repeat=repeat, min_time=min_time)
        rows.append(Row(case, case.label(T, size),
                        {k: statistics.median(v) * 1e3 for k, v in samples.items()}, errors))
    return rows


def markdown(rows: list[Row], T: int, size: int) -> str:
    head = (f"| model, T={T}, I=H={size} | torch inference | rnnkern.nn | rnnkern.torch | "
            f"torch training | rnnkern.nn | rnnkern.torch | rnnkern.torch / rnnkern.nn |")
    lines = [head, "|---|" + "---:|" * 7]
    for r in rows:
        cells = [f"{r.ms['torch inference']:.3g}"]
        cells += [f"{r.ms[j]:.3g} ({r.ratio(j):.2f})" for j in JOBS[1:3]]
        cells += [f"{r.ms['torch training']:.3g}"]
        cells += [f"{r.ms[j]:.3g} ({r.ratio(j):.2f})" for j in JOBS[4:6]]
        cells += [f"{r.dropin_over_nn('inference'):.2f} / {r.dropin_over_nn('training'):.2f}"]
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_lowp(rows: list[Row], T: int, size: int) -> str:
    """--lowp's table: inference ms (ratio to torch's float32 inference) and error."""
    head = (f"| model, T={T}, I=H={size}, inference | torch float32 | "
            + " | ".join(LOWP_JOBS).replace(" inference", "") + " |")
    lines = [head, "|---|" + "---:|" * (1 + len(LOWP_JOBS))]
    for r in rows:
        cells = [f"{r.ms['torch inference']:.3g}"]
        cells += [f"{r.ms[j]:.3g} ({r.ratio(j):.2f}; {r.errors[j]:.1e})" for j in LOWP_JOBS]
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(rows: list[Row], T: int, size: int, threads: int) -> dict[str, Any]:
    return {"T": T, "I": size, "H": size, "threads": threads, "cpu": cpu_model(),
            "torch": torch.__version__, "rnnkern": rnnkern.__version__,
            "rows": [{"label": r.label, "case": asdict(r.case), "ms": r.ms,
                      "ratio_to_torch": {j: r.ratio(j) for j in r.ms if j != "torch inference"
                                         and j != "torch training"},
                      "errors": r.errors,
                      "dropin_over_nn": {p: r.dropin_over_nn(p)
                                         for p in ("inference", "training")}}
                     for r in rows]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="timed samples of each job")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per sample (at least)")
    ap.add_argument("--cases", type=int, nargs="+", default=list(range(len(CASES))),
                    help=f"indices into the case list 0..{len(CASES) - 1}")
    ap.add_argument("--T", type=int, default=100, help="sequence length")
    ap.add_argument("--size", type=int, default=256, help="I = H")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--json", help="write the results as JSON to this file")
    ap.add_argument("--lowp", action="store_true",
                    help="also time bf16 and int8 inference (torch bf16, rnnkern bf16/int8)")
    args = ap.parse_args(argv)
    if any(not 0 <= i < len(CASES) for i in args.cases):
        ap.error(f"--cases: expected indices in 0..{len(CASES) - 1}, got {args.cases}")
    threads = default_threads()
    torch.set_num_threads(threads)
    rnnkern.set_num_threads(threads)
    rows = measure([CASES[i] for i in args.cases], T=args.T, size=args.size,
                   repeat=args.repeat, min_time=args.min_time, lowp=args.lowp)
    print(f"# {cpu_model()}, {threads} threads, torch {torch.__version__}, rnnkern "
          f"{rnnkern.__version__} ({rnnkern.config()['isa']}); median ms, torch on the same "
          f"weights, ratio to torch in brackets")
    if args.markdown:
        print(markdown(rows, args.T, args.size))
        if args.lowp:
            print("\n" + markdown_lowp(rows, args.T, args.size))
    else:
        for r in rows:
            print(r.label, " ".join(f"{k}={v:.3g}ms" for k, v in r.ms.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(rows, args.T, args.size, threads),
                                              indent=1))


if __name__ == "__main__":
    main()

"""Step-by-step loops (issue 16): 100 LSTM steps at H = I = 256, B = 1 and 32, all peers in one
run, interleaved (timing.round_robin).

    python benchmarks/cells.py [--repeat 7] [--min-time 0.2] [--batches 1 32]

Rows: torch.nn.LSTMCell vs rnnkern.torch.LSTMCell, inference (no_grad; with the training loop's
sum of every step's output, two small torch operators per step, and with the steps only) and a
training loop (the forward of every step, the sum of their outputs, then one backward through
all of them); rnnkern.nn.LSTMCell (inference)
vs rnnkern's whole-sequence call; the whole-sequence call with packed weights (lstm_pack) vs
lstm_forward, which packs them per call. Each pair's results (and the training loops' weight
gradients) are compared before timing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from timing import cpu_model, default_threads, round_robin  # noqa: E402

import rnnkern  # noqa: E402
import rnnkern.torch as rt  # noqa: E402

T, H = 100, 256


def jobs_for(B: int) -> dict[str, Callable[[], Any]]:
    torch.manual_seed(0)
    tcell = torch.nn.LSTMCell(H, H)
    rcell = rt.LSTMCell(H, H)
    rcell.load_state_dict(tcell.state_dict())
    ncell = rnnkern.nn.LSTMCell(H, H)
    ncell.load_state_dict(tcell.state_dict())
    xs = torch.randn(T, B, H) * 0.5  # (T, B, I)
    xn = xs.numpy()
    w = [p.detach().numpy() for p in tcell.parameters()]  # w_ih, w_hh, b_ih, b_hh
    pack = rnnkern.lstm_pack(*w)

    def torch_loop(cell: Any, train: bool, reduce: bool = True) -> Any:
        with torch.set_grad_enabled(train):
            state = None
            total = 0
            for t in range(T):
                state = cell(xs[t], state)
                if reduce:  # a loss over every step's output, as the training loop needs
                    total = total + state[0].sum()
            if train:
                total.backward()  # type: ignore[union-attr]
            return state[0]

    def nn_loop() -> Any:
        state = None
        for t in range(T):
            state = ncell(xn[t], state, training=False)
        return state[0]

    # correctness first: the same last state from every route
    ref = torch_loop(tcell, False).numpy()
    for got in (torch_loop(rcell, False).numpy(), nn_loop(), pack.forward(xn, training=False).h_n,
                rnnkern.lstm_forward(xn, None, None, *w, training=False).h_n):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # and the training loop's weight gradients (a race once made them 30% wrong at B = 32)
    for cell in (tcell, rcell):
        cell.zero_grad()
        torch_loop(cell, True)
    for ours, theirs in zip(rcell.parameters(), tcell.parameters()):
        g = theirs.grad.numpy()  # type: ignore[union-attr]
        np.testing.assert_allclose(ours.grad.numpy(), g,  # type: ignore[union-attr]
                                   rtol=1e-3, atol=1e-4 * float(np.abs(g).max()))
    return {
        "torch.nn.LSTMCell inference": lambda: torch_loop(tcell, False),
        "rnnkern.torch.LSTMCell inference": lambda: torch_loop(rcell, False),
        "torch.nn.LSTMCell inference, steps only": lambda: torch_loop(tcell, False, False),
        "rnnkern.torch.LSTMCell inference, steps only": lambda: torch_loop(rcell, False, False),
        "torch.nn.LSTMCell training": lambda: torch_loop(tcell, True),
        "rnnkern.torch.LSTMCell training": lambda: torch_loop(rcell, True),
        "rnnkern.nn.LSTMCell inference": nn_loop,
        "rnnkern.lstm_forward whole sequence": lambda: rnnkern.lstm_forward(
            xn, None, None, *w, training=False),
        "lstm_pack(...).forward whole sequence": lambda: pack.forward(xn, training=False),
    }


RATIOS = [  # (row, numerator, denominator, target)
    ("rnnkern.torch / torch cells, inference", "rnnkern.torch.LSTMCell inference",
     "torch.nn.LSTMCell inference", "<= 0.4"),
    ("rnnkern.torch / torch cells, inference, steps only",
     "rnnkern.torch.LSTMCell inference, steps only", "torch.nn.LSTMCell inference, steps only",
     "<= 0.4"),
    ("rnnkern.torch / torch cells, training", "rnnkern.torch.LSTMCell training",
     "torch.nn.LSTMCell training", "<= 0.6"),
    ("rnnkern.nn cell loop / whole sequence", "rnnkern.nn.LSTMCell inference",
     "rnnkern.lstm_forward whole sequence", "<= 2.5"),
    ("whole sequence packed / per call", "lstm_pack(...).forward whole sequence",
     "rnnkern.lstm_forward whole sequence", "< 1 at B=1"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = ap.parse_args()
    threads = default_threads()
    torch.set_num_threads(threads)
    rnnkern.set_num_threads(threads)
    print(f"# {cpu_model()}, {threads} threads, torch {torch.__version__}, "
          f"rnnkern {rnnkern.__version__} ({rnnkern.config()['isa']}); median ms per {T} steps, "
          f"H = I = {H}")
    medians: dict[int, dict[str, float]] = {}
    for B in args.batches:
        samples = round_robin(jobs_for(B), repeat=args.repeat, min_time=args.min_time)
        medians[B] = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    print("\n| loop | " + " | ".join(f"B={B} ms" for B in args.batches) + " |")
    print("|---|" + "---:|" * len(args.batches))
    for k in medians[args.batches[0]]:
        print(f"| {k} | " + " | ".join(f"{medians[B][k]:.2f}" for B in args.batches) + " |")
    print("\n| ratio | " + " | ".join(f"B={B}" for B in args.batches) + " | target |")
    print("|---|" + "---:|" * len(args.batches) + "---|")
    for row, num, den, target in RATIOS:
        print(f"| {row} | " + " | ".join(f"{medians[B][num] / medians[B][den]:.2f}"
                                         for B in args.batches) + f" | {target} |")


if __name__ == "__main__":
    main()

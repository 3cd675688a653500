"""Random shapes on 1, 2 and 3 threads: every output and gradient must have the same bits.

    python scripts/fuzz_threads.py [SECONDS] [SEED]       # defaults: 300 s, seed 0

Each case picks a cell (RNN, LSTM, GRU, the LSTM with a projection, peepholes or layer norm, or
a drop-in LSTMCell / GRUCell training loop), T < 80, B < 48, I and H < 300, a precision (float,
bf16, int8 where the cell has it) and random lengths, runs it on 1, 2 and 3 threads and compares
the results bit for bit. Prints each mismatch and, at the end, the counts; exits 1 on any
mismatch. Not part of the test suite (it runs for minutes); docs/reliability.md has results.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import torch

import rnnkern
import rnnkern.torch as rt

CELLS = ["rnn", "lstm", "gru", "lstmp", "lstmpeep", "lstmln", "dropin"]


def run(cell: str, T: int, B: int, I: int, H: int, prec: str, seed: int) -> list[Any]:
    """Every output and gradient of one case (the same values for the same arguments)."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((T, B, I)).astype(np.float32)  # (T, B, I)
    if cell == "dropin":  # a training loop of T steps, one backward
        torch.manual_seed(seed)
        c = rt.GRUCell(I, H) if seed % 2 else rt.LSTMCell(I, H)
        state, total = None, 0
        for t in range(T):
            state = c(torch.from_numpy(x[t]), state)
            total = total + (state[0] if isinstance(state, tuple) else state).sum()
        total.backward()
        return [p.grad.numpy().copy() for p in c.parameters()]
    lengths = r.integers(1, T + 1, B)  # (B,)
    lengths[0] = T
    G, k, P = {"rnn": 1, "gru": 3}.get(cell, 4), 1 / np.sqrt(H), max(1, H // 2)

    def u(*shape: int) -> Any:
        return r.uniform(-k, k, shape).astype(np.float32)

    kw: dict[str, Any] = {}
    w = [u(G * H, I), u(G * H, P if cell == "lstmp" else H), u(G * H), u(G * H)]
    if cell == "lstmp":
        kw["w_hr"] = u(P, H)
    if cell == "lstmpeep":
        kw["w_peep"] = u(3, H)
    if cell == "lstmln":
        kw["ln_gates"] = (1 + r.uniform(-0.3, 0.3, (2, 4 * H))).astype(np.float32)
        kw["ln_cell"] = np.stack([1 + r.uniform(-0.3, 0.3, H),
                                  r.uniform(-0.3, 0.3, H)]).astype(np.float32)
    family = "lstm" if cell.startswith("lstm") else cell
    forward = getattr(rnnkern, f"{family}_forward")
    backward = getattr(rnnkern, f"{family}_backward")
    states = (None, None) if family == "lstm" else (None,)
    training = prec != "int8"
    out = forward(x, *states, *w, lengths=lengths, training=training, precision=prec, **kw)
    results = [out.y]
    if training:
        results += [a for a in backward(out.cache, np.ones_like(out.y))
                    if isinstance(a, np.ndarray)]
    return results


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 300.0
    rng = np.random.default_rng(int(argv[1]) if len(argv) > 1 else 0)
    torch.set_num_threads(1)
    deadline = time.time() + seconds
    cases = mismatches = 0
    while time.time() < deadline:
        cell = str(rng.choice(CELLS))
        T, B = int(rng.integers(1, 80)), int(rng.integers(1, 48))
        I, H = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        prec = (str(rng.choice(["float", "bf16", "int8"]))
                if cell in ("rnn", "lstm", "gru", "lstmp") else "float")
        seed = int(rng.integers(0, 2**31))
        results = []
        for n in (1, 2, 3):
            rnnkern.set_num_threads(n)
            results.append(run(cell, T, B, I, H, prec, seed))
        for n, got in zip((2, 3), results[1:]):
            if not all(np.array_equal(a, b) for a, b in zip(results[0], got)):
                mismatches += 1
                print(f"MISMATCH {cell} T={T} B={B} I={I} H={H} {prec} seed={seed} on {n} "
                      "threads", flush=True)
        cases += 1
    print(f"{cases} cases, {mismatches} mismatches")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

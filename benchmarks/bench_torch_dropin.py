"""A PyTorch training step of a small text classifier, with and without rnnkern.torch.convert().

    python benchmarks/bench_torch_dropin.py [--threads N] [--cells gru,lstm] [--packed]
        [--vocab 5000] [--emb 128] [--hidden 256] [--batch 32] [--seq 100] [--classes 4]
        [--repeat 7] [--min-time 0.3] [--markdown] [--no-check]

The model: Embedding(vocab, emb) -> GRU or LSTM(emb, hidden, batch_first) -> Linear(hidden,
classes) on the final state. One step: zero_grad, forward, cross-entropy, backward, SGD step,
float32. With --packed the batch has random lengths and goes through pack_padded_sequence
(enforce_sorted=False). The two models start from the same weights; before timing, their first
losses and gradients are checked to agree (skip with --no-check). Samples of the two are taken in
turn (benchmarks/timing.py), and the medians and the ratio torch / rnnkern (the speed-up) are
printed. torch and rnnkern both run --threads threads (default: the cores available).
"""
from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from timing import cpu_model, default_threads, median_seconds, round_robin
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkern
import rnnkern.torch


class TextClassifier(torch.nn.Module):
    """Embedding -> GRU/LSTM -> Linear on the last layer's final state."""

    def __init__(self, cell: str, vocab: int, emb: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, emb)
        rnn_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
        self.rnn = rnn_cls(emb, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        e = self.embed(tokens)  # (B, T, emb)
        x = e if lengths is None else pack_padded_sequence(e, lengths, batch_first=True,
                                                           enforce_sorted=False)
        _, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state  # (1, B, hidden)
        return self.head(h[-1])  # (B, classes)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of torch and rnnkern (default: the cores available)")
    ap.add_argument("--cells", default="gru,lstm", help="comma-separated: gru, lstm")
    ap.add_argument("--packed", action="store_true", help="variable lengths, packed sequences")
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--emb", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=100, help="sequence length T")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=7, help="timed samples of each")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per sample (at least)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--no-check", action="store_true", help="skip the agreement check")
    args = ap.parse_args(argv)
    for cell in args.cells.split(","):
        if cell not in ("gru", "lstm"):
            ap.error(f"--cells: unknown cell {cell!r} (gru, lstm)")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads: expected >= 1, got {args.threads}")
    return args


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, tokens: torch.Tensor,
          labels: torch.Tensor, lengths: torch.Tensor | None) -> float:
    """One training step; returns the loss."""
    opt.zero_grad()
    loss = F.cross_entropy(model(tokens, lengths), labels)
    loss.backward()
    opt.step()
    return float(loss.item())


def _check(ref: torch.nn.Module, ours: torch.nn.Module, tokens: torch.Tensor,
           labels: torch.Tensor, lengths: torch.Tensor | None) -> None:
    """The first loss and every gradient agree (float32 tolerances)."""
    grads = []
    for model in (ref, ours):
        model.zero_grad()
        loss = F.cross_entropy(model(tokens, lengths), labels)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                      if p.grad is not None}))
        model.zero_grad()
    (loss_ref, g_ref), (loss_ours, g_ours) = grads
    torch.testing.assert_close(loss_ours, loss_ref, rtol=1e-5, atol=1e-6)
    assert g_ours.keys() == g_ref.keys()
    for name, g in g_ref.items():
        scale = float(g.abs().max()) or 1.0
        torch.testing.assert_close(g_ours[name], g, rtol=1e-3, atol=1e-4 * scale, msg=name)


def make_batch(batch: int, seq: int, *, vocab: int, classes: int, packed: bool,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random tokens (B, T), labels (B,) and, if `packed`, random lengths (B,) in [1, T]."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq), generator=gen)  # (B, T)
    labels = torch.randint(0, classes, (batch,), generator=gen)  # (B,)
    lengths = torch.randint(1, seq + 1, (batch,), generator=gen) if packed else None  # (B,)
    return tokens, labels, lengths


def time_steps(cell: str, tokens: torch.Tensor, labels: torch.Tensor,
               lengths: torch.Tensor | None, *, vocab: int, emb: int, hidden: int, classes: int,
               repeat: int, min_time: float, check: bool) -> dict[str, float]:
    """Median seconds of one training step of the plain model ("torch") and of its
    rnnkern.torch.convert() copy ("rnnkern"), same weights, samples taken in turn; with `check`
    their first losses and gradients are compared first (AssertionError if they differ)."""
    torch.manual_seed(0)
    ref = TextClassifier(cell, vocab, emb, hidden, classes)
    ours = rnnkern.torch.convert(copy.deepcopy(ref))
    if check:
        _check(ref, ours, tokens, labels, lengths)
    jobs: dict[str, Callable[[], object]] = {}
    for name, model in (("torch", ref), ("rnnkern", ours)):
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        jobs[name] = (lambda m=model, o=opt: _step(m, o, tokens, labels, lengths))
    return median_seconds(round_robin(jobs, repeat=repeat, min_time=min_time))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    rnnkern.set_num_threads(threads)
    B, T = args.batch, args.seq
    tokens, labels, lengths = make_batch(B, T, vocab=args.vocab, classes=args.classes,
                                         packed=args.packed)

    cfg = rnnkern.config()
    print(f"# {cpu_model()}; threads {threads} (torch {torch.__version__}, rnnkern "
          f"{cfg['version']} isa {cfg['isa']}); vocab {args.vocab} emb {args.emb} H "
          f"{args.hidden} B {B} T {T} classes {args.classes} "
          f"{'packed, random lengths' if args.packed else 'padded'}; float32; SGD step")
    rows = []
    for cell in args.cells.split(","):
        med = time_steps(cell, tokens, labels, lengths, vocab=args.vocab, emb=args.emb,
                         hidden=args.hidden, classes=args.classes, repeat=args.repeat,
                         min_time=args.min_time, check=not args.no_check)
        rows.append((cell, med["torch"] * 1e3, med["rnnkern"] * 1e3, med["torch"] / med["rnnkern"]))

    if args.markdown:
        print("| cell | torch ms/step | with convert() ms/step | speed-up (torch / rnnkern) |")
        print("|---|---:|---:|---:|")
        for cell, t_ms, r_ms, ratio in rows:
            print(f"| {cell} | {t_ms:.1f} | {r_ms:.1f} | {ratio:.2f}x |")
    else:
        print(f"{'cell':<6}{'torch ms':>12}{'rnnkern ms':>12}{'torch/rnnkern':>15}")
        for cell, t_ms, r_ms, ratio in rows:
            print(f"{cell:<6}{t_ms:>12.1f}{r_ms:>12.1f}{ratio:>14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

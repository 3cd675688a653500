"""The character model in rnnkern and in PyTorch: same sizes, initial weights, data and optimizer.

Both start from the same parameters (rnnkern's initialization loaded into the torch twin), see
the same truncated-BPTT chunks in the same order, carry the state between chunks the same way
and take Adam steps with the same gradient clipping. The script prints the training loss of both
as they go, the final validation loss and the wall time / characters per second of each.

    python scripts/charlm_vs_torch.py --steps 300            # H = 256 LSTM, the README figures
    python scripts/charlm_vs_torch.py --steps 20 --hidden 32  # a quick check
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Iterator, Optional

import numpy as np
import numpy.typing as npt
import torch

from rnnkern import data, optim
from rnnkern.models import CharLM

IntArray = npt.NDArray[np.int64]


class TorchCharLM(torch.nn.Module):
    """CharLM's twin: the same layer names, so the two state_dicts have the same keys."""

    def __init__(self, model: CharLM) -> None:
        super().__init__()
        cfg = model.config
        rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cfg["cell"]]
        self.embed = torch.nn.Embedding(cfg["vocab_size"], cfg["embed_dim"])
        self.rnn = rnn_cls(cfg["embed_dim"], cfg["hidden_size"], cfg["num_layers"],
                           dropout=cfg["dropout"])
        self.head = torch.nn.Linear(cfg["hidden_size"], cfg["vocab_size"])
        self.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})

    def forward(self, ids: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        y, state = self.rnn(self.embed(ids), state)
        return self.head(y), state


def chunks(columns: IntArray, seq_len: int) -> Iterator[tuple[IntArray, IntArray, bool]]:
    """Endless (inputs, targets, new_pass) chunks: a new pass over the corpus resets the state."""
    while True:
        first = True
        for x, y in data.bptt_batches(columns, seq_len):
            yield x, y, first
            first = False


def detach(state: Any) -> Any:
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def run_rnnkern(model: CharLM, columns: IntArray, args: argparse.Namespace) -> list[float]:
    opt = optim.Adam(model.params, model.grads, lr=args.lr)
    losses: list[float] = []
    state: Optional[Any] = None
    for step, (x, y, new_pass) in zip(range(args.steps), chunks(columns, args.seq_len)):
        state = None if new_pass else state
        model.zero_grad()
        loss, state = model.loss_and_backward(x, y, state)
        optim.clip_grad_norm(model.grads, args.clip)
        opt.step()
        losses.append(loss)
        if args.log_every and (step + 1) % args.log_every == 0:
            print(f"  rnnkern step {step + 1:5d}  loss {np.mean(losses[-args.log_every:]):.4f}",
                  flush=True)
    return losses


def run_torch(model: TorchCharLM, columns: IntArray, args: argparse.Namespace) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses: list[float] = []
    state: Any = None
    for step, (x, y, new_pass) in zip(range(args.steps), chunks(columns, args.seq_len)):
        state = None if new_pass else detach(state)
        logits, state = model(torch.from_numpy(x), state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.from_numpy(y).reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        losses.append(loss.item())
        if args.log_every and (step + 1) % args.log_every == 0:
            print(f"  torch   step {step + 1:5d}  loss {np.mean(losses[-args.log_every:]):.4f}",
                  flush=True)
    return losses


@torch.no_grad()
def torch_evaluate(model: TorchCharLM, columns: IntArray, seq_len: int) -> float:
    total, count, state = 0.0, 0, None
    for x, y in data.bptt_batches(columns, seq_len):
        logits, state = model(torch.from_numpy(x), state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.from_numpy(y).reshape(-1), reduction="sum")
        total += float(loss)
        count += y.size
    return total / count


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--max-chars", type=int, default=2_000_000)
    p.add_argument("--val-chars", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    text = data.default_corpus(args.max_chars)
    vocab = data.Vocab.from_text(text)
    train_ids, val_ids = data.split_ids(vocab.encode(text), 0.05)
    columns = data.batchify(train_ids, args.batch)  # (N, B)
    val_columns = data.batchify(val_ids[:args.val_chars], 16)  # (M, 16)
    ours = CharLM(len(vocab), hidden_size=args.hidden, num_layers=args.layers, cell=args.cell,
                  embed_dim=args.embed, seed=args.seed)
    theirs = TorchCharLM(ours)
    chars = args.steps * args.seq_len * args.batch
    print(f"{args.cell} H = {args.hidden}, {args.layers} layer(s), {ours.num_params():,} "
          f"parameters; {args.steps} steps of {args.seq_len} x {args.batch} characters; torch "
          f"{torch.__version__} with {torch.get_num_threads()} thread(s)", flush=True)

    start = time.perf_counter()
    ours_losses = run_rnnkern(ours, columns, args)  # Linear's products: one BLAS thread
    ours_time = time.perf_counter() - start
    start = time.perf_counter()
    theirs_losses = run_torch(theirs, columns, args)
    theirs_time = time.perf_counter() - start

    tail = max(1, min(50, args.steps // 5))
    unigram = np.bincount(train_ids, minlength=len(vocab)) + 1.0  # (V,)
    unigram_loss = float(-np.log(unigram / unigram.sum())[val_ids[:args.val_chars]].mean())
    print(f"{'':8} {'train loss (last ' + str(tail) + ')':>22} {'val loss':>9} "
          f"{'time s':>8} {'chars/s':>9}")
    for name, losses, val, secs in (
        ("rnnkern", ours_losses, ours.evaluate(val_columns, args.seq_len), ours_time),
        ("torch", theirs_losses, torch_evaluate(theirs, val_columns, args.seq_len), theirs_time),
    ):
        print(f"{name:8} {np.mean(losses[-tail:]):22.4f} {val:9.4f} {secs:8.1f} "
              f"{chars / secs:9,.0f}")
    print(f"unigram validation loss {unigram_loss:.4f}; rnnkern / torch time "
          f"{ours_time / theirs_time:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

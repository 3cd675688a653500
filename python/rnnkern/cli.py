"""The ``rnnkern`` command: the lecture's examples and training runs from the command line.

    rnnkern dogs                      the lecture's DOGS example, H = 3, trained in seconds
    rnnkern train-char [TEXT_FILE]    a character language model (default corpus: Python's stdlib)
    rnnkern sample CHECKPOINT         text from a trained character model
    rnnkern train-seq2seq             encoder-decoder: "three hundred and twelve" -> "312"
    rnnkern gradflow --out FILE.png   ||dL_T/dh_t|| against t for a vanilla RNN and an LSTM
    rnnkern longrange                 accuracy against T on "brown ... german shepherd"
    rnnkern jumble                    "POLICY IS THE BEST HONESTY": bag of words vs RNN vs LSTM
    rnnkern attention                 encoder-decoder with and without attention, long inputs
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import numpy.typing as npt

from . import (
    __version__,
    data,
    diagnostics,
    optim,
    rnn_backward,
    rnn_forward,
    softmax,
    softmax_cross_entropy,
)
from .models import BagOfWords, CharLM, Model, Seq2Seq, SequenceClassifier, load_checkpoint

__all__ = ["main", "build_parser"]

Array = npt.NDArray[Any]
_R = TypeVar("_R")


def _out(*parts: object) -> None:
    print(*parts, flush=True)


class _Clock:
    """Stops a training loop after ``steps`` steps or ``minutes`` minutes, whichever is first."""

    def __init__(self, steps: Optional[int], minutes: Optional[float]) -> None:
        self.steps = steps
        self.deadline = None if minutes is None else time.perf_counter() + 60.0 * minutes
        self.start = time.perf_counter()

    def progress(self, step: int) -> float:
        """The fraction of the budget used after ``step`` steps: of the steps or of the time,
        whichever is further along (0 without a budget)."""
        done = 0.0 if self.steps is None else step / self.steps
        if self.deadline is not None:
            budget = self.deadline - self.start
            used = time.perf_counter() - self.start
            done = max(done, used / budget if budget > 0 else 1.0)
        return done

    def running(self, step: int) -> bool:
        return self.progress(step) < 1.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _budget(steps: Optional[int], minutes: Optional[float], default_steps: int) -> _Clock:
    return _Clock(default_steps if steps is None and minutes is None else steps, minutes)


class MissingDependency(ImportError):
    """An optional dependency of a command is not installed (a one-line error, exit status 2)."""


def _require(module: str, extra: str) -> None:
    """Import ``module`` before any work is done; MissingDependency naming the extra if absent."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise MissingDependency(f"this command needs {module}, which is not installed: "
                                f"pip install \"rnnkern[{extra}]\"") from err


# -- dogs ------------------------------------------------------------------------------------------

def _train_step(model: Model, opt: optim.Optimizer, clip: float,
                backward: Callable[[], _R]) -> _R:
    """One optimizer step: zero the gradients, ``backward()`` (a model's loss_and_backward on a
    batch), clip the gradients' norm to ``clip``, step. Returns what ``backward`` returned."""
    model.zero_grad()
    result = backward()
    optim.clip_grad_norm(model.grads, clip)
    opt.step()
    return result


def cmd_dogs(args: argparse.Namespace) -> int:
    """The lecture's example: read d, o, g one-hot (I = 4), predict o, g, s, with H = 3.

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) by rnnkern's kernel, y_t = softmax(W_y h_t),
    loss = cross-entropy summed over the steps as in the lecture (here: averaged).
    """
    letters = "dogs"
    x_ids, y_ids = np.array([0, 1, 2]), np.array([1, 2, 3])  # d o g -> o g s
    x = np.eye(4)[x_ids][:, None, :]  # (T=3, B=1, I=4) one-hot
    hidden = args.hidden
    rng = np.random.default_rng(args.seed)
    k = 1.0 / math.sqrt(hidden)
    params = {  # the lecture's W_X (H, 4), W_H (H, H), W_Y (4, H); its b_h is b_ih + b_hh
        "w_ih": rng.uniform(-k, k, (hidden, 4)), "w_hh": rng.uniform(-k, k, (hidden, hidden)),
        "b_ih": rng.uniform(-k, k, hidden), "b_hh": rng.uniform(-k, k, hidden),
        "w_y": rng.uniform(-k, k, (4, hidden)),
    }
    grads = {n: np.zeros_like(p) for n, p in params.items()}
    opt = optim.Adam(params, grads, lr=args.lr)

    def forward(training: bool) -> Tuple[Array, Any, Any]:
        out = rnn_forward(x, None, params["w_ih"], params["w_hh"], params["b_ih"], params["b_hh"],
                          training=training)
        logits = out.y[:, 0] @ params["w_y"].T  # (T, 4)
        return logits, out, softmax_cross_entropy(logits, y_ids)

    _out(f"DOGS: one-hot {{d,o,g,s}}, I = 4, H = {hidden}: read d, o, g and predict o, g, s")
    curve: List[float] = []
    step = 0
    while step < args.steps:
        logits, out, ce = forward(training=True)
        curve.append(float(ce.loss))
        solved = bool((logits.argmax(axis=1) == y_ids).all()) and ce.loss < args.target_loss
        if solved:
            break
        opt.zero_grad()
        grads["w_y"] += ce.dlogits.T @ out.y[:, 0]  # (4, H)
        dy = (ce.dlogits @ params["w_y"])[:, None, :]  # (T, 1, H)
        g = rnn_backward(out.cache, dy)
        for name, value in zip(("w_ih", "w_hh", "b_ih", "b_hh"), g[2:]):
            grads[name] += value
        opt.step()
        step += 1
    marks = sorted({0, len(curve) - 1, *range(0, len(curve), max(1, len(curve) // 10))})
    top = max(curve)
    _out("step  loss")
    for i in marks:
        _out(f"{i:4d}  {curve[i]:.4f}  {'#' * max(1, round(40 * curve[i] / top))}")
    logits, _, _ = forward(training=False)
    probs = softmax(logits)  # (T, 4)
    _out("input -> prediction   p(d)  p(o)  p(g)  p(s)")
    for t in range(3):
        ps = "  ".join(f"{p:.2f}" for p in probs[t])
        _out(f"  {letters[x_ids[t]]}   ->     {letters[int(probs[t].argmax())]}        {ps}")
    correct = bool((probs.argmax(axis=1) == y_ids).all())
    _out(f"{'learned' if correct else 'NOT learned'}: d,o,g -> "
         f"{','.join(letters[int(i)] for i in probs.argmax(axis=1))} after {len(curve) - 1} steps")
    return 0 if correct else 1


# -- character language model ----------------------------------------------------------------------

def _unigram_loss(train: Array, val: Array, vocab_size: int) -> float:
    """Cross-entropy (nats/char) of val under train's character frequencies (add-one)."""
    counts = np.bincount(train, minlength=vocab_size) + 1.0  # (V,)
    logp = np.log(counts / counts.sum())  # (V,)
    return float(-logp[val].mean())


def _read_text(path: Optional[str], max_chars: int) -> Tuple[str, str]:
    if path is None:
        version = sys.version.split()[0]
        return data.default_corpus(max_chars), f"the Python {version} standard library"
    text = Path(path).read_text(encoding="utf-8", errors="replace")[:max_chars]
    if len(text) < 100:
        raise ValueError(f"text_file: {path!r} has {len(text)} characters, need at least 100")
    return text, path


def cmd_train_char(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    text, source = _read_text(args.text_file, args.max_chars)
    vocab = data.Vocab.from_text(text)
    ids = vocab.encode(text)
    train_ids, val_ids = data.split_ids(ids, args.val_fraction)
    columns = data.batchify(train_ids, args.batch)  # (N, B)
    val_columns = data.batchify(val_ids[:args.val_chars], min(args.batch, 16))  # (M, b)
    unigram = _unigram_loss(train_ids, val_ids[:args.val_chars], len(vocab))
    model = CharLM(len(vocab), hidden_size=args.hidden, num_layers=args.layers, cell=args.cell,
                   embed_dim=args.embed, dropout=args.dropout, seed=args.seed,
                   precision=args.precision, layer_norm=args.layer_norm)
    opt = optim.Adam(model.params, model.grads, lr=args.lr)
    _out(f"corpus: {source}: {len(text):,} characters, vocabulary {len(vocab)}; "
         f"{model.num_params():,} parameters ({args.cell}{' layer-norm' * args.layer_norm}, "
         f"H = {args.hidden}, "
         f"{args.layers} layer(s)); unigram validation loss {unigram:.3f} nats/char")
    sample_rng = np.random.default_rng(args.seed)
    prime = vocab.encode("\n" if "\n" in vocab else text[0])
    for precision in args.eval_precision:  # one that cannot run fails now, not after training
        model.with_precision(precision).forward(prime[:, None])

    def show_sample(step: int) -> None:
        out = model.sample(args.sample_length, prime, args.temperature, sample_rng)
        tqdm.write(f"--- sample at step {step} ---\n{vocab.decode(out)}\n---", file=sys.stdout)

    clock = _budget(args.steps, args.minutes, 2000)
    bar = _progress_bar(tqdm, clock, args.no_progress)
    step, chars, recent = 0, 0, []  # recent: the training losses, for the bar's mean
    step_ms: List[float] = []  # each training step's wall time, evaluations and samples not in it
    batches = data.bptt_batches(columns, args.seq_len)
    state, val = None, None
    try:  # Ctrl-C: keep what was trained, save it below and exit with status 130
        while clock.running(step):
            try:
                x, y = next(batches)
            except StopIteration:  # a new pass over the corpus starts from a zero state
                batches, state = data.bptt_batches(columns, args.seq_len), None
                continue
            start = time.perf_counter()
            loss, state = _train_step(model, opt, args.clip,
                                      partial(model.loss_and_backward, x, y, state))
            step_ms.append(1e3 * (time.perf_counter() - start))
            step += 1
            chars += y.size
            recent.append(loss)
            postfix = {"loss": f"{np.mean(recent[-50:]):.3f}",
                       "chars_s": f"{chars / clock.elapsed():,.0f}"}
            if clock.deadline is None:
                bar.update(1)
            else:  # the bar counts seconds of the budget
                postfix = {"step": f"{step}", **postfix}
                bar.update(min(clock.elapsed(), bar.total) - bar.n)
            bar.set_postfix(postfix, refresh=False)  # redrawn at tqdm's mininterval, not per step
            if args.sample_every and step % args.sample_every == 0:
                show_sample(step)
            if args.eval_every and step % args.eval_every == 0:
                now = model.evaluate(val_columns, args.seq_len)
                tqdm.write(f"step {step}: validation loss {now:.4f} nats/char "
                           f"({now / math.log(2):.4f} bits/char); median step "
                           f"{np.median(step_ms[-args.eval_every:]):.1f} ms over the last "
                           f"{args.eval_every}", file=sys.stdout)
        bar.close()
        val = model.evaluate(val_columns, args.seq_len)
    except KeyboardInterrupt:
        bar.close()
    seconds = clock.elapsed()
    if val is None:
        _out(f"interrupted after {step} steps in {seconds:.1f} s")
    else:
        _out(f"trained {step} steps in {seconds:.1f} s ({chars / seconds:,.0f} chars/s; "
             f"median step {np.median(step_ms):.1f} ms)")
        _out(f"validation loss {val:.3f} nats/char ({val / math.log(2):.3f} bits/char); "
             f"unigram baseline {unigram:.3f} nats/char ({unigram / math.log(2):.3f} bits/char)")
        for precision in args.eval_precision:  # the trained model, run at other precisions
            other = model.with_precision(precision).evaluate(val_columns, args.seq_len)
            _out(f"validation loss run in {precision}: {other:.4f} nats/char "
                 f"({100 * (other / val - 1):+.2f}% of the trained model's {val:.4f})")
        show_sample(step)
    if args.out:
        model.save(args.out, vocab="".join(vocab.tokens), steps=step, val_loss=val,
                   unigram_loss=unigram, source=source, interrupted=val is None)
        _out(f"checkpoint saved to {Path(args.out).resolve()}")
    elif val is None:
        _out("no checkpoint saved (--out '')")
    return 0 if val is not None else 130


def _progress_bar(tqdm: Any, clock: _Clock, disable: bool) -> Any:
    """train-char's bar: steps of --steps, or seconds of the --minutes budget with the time left.

    On a terminal it is redrawn every 0.1 s at most; elsewhere (a log, a pipe) every 30 s.
    """
    tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
    common = {"disable": disable, "dynamic_ncols": True, "file": sys.stderr,
              "mininterval": 0.1 if tty else 30.0}
    if clock.deadline is None:
        return tqdm(total=clock.steps, unit="step", **common)
    budget = clock.deadline - clock.start  # seconds
    return tqdm(total=budget, unit="s", **common,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{remaining} left{postfix}]")


def cmd_sample(args: argparse.Namespace) -> int:
    model, meta = load_checkpoint(args.checkpoint)
    if not isinstance(model, CharLM) or "vocab" not in meta:
        raise ValueError(f"checkpoint: {args.checkpoint!r} is not a character model checkpoint")
    vocab = data.Vocab(list(meta["vocab"]))
    prime_text = args.prime if args.prime else ("\n" if "\n" in vocab else vocab.tokens[0])
    prime = vocab.encode(prime_text, name="prime")
    if args.precision is not None:
        model = model.with_precision(args.precision)
    out = model.sample(args.length, prime, args.temperature, np.random.default_rng(args.seed))
    sys.stdout.write(prime_text + vocab.decode(out) + "\n")
    return 0


# -- seq2seq ---------------------------------------------------------------------------------------

def _exact_match(model: Seq2Seq, src: List[Array], tgt: List[Array], beam: int) -> float:
    """The fraction of sources decoded exactly to their target (greedy if beam is 1)."""
    max_len = max(len(t) for t in tgt) + 2  # room for an over-long answer to be wrong
    pred = model.greedy(src, max_len) if beam <= 1 else model.beam_search(src, beam, max_len)
    return float(np.mean([list(p) == list(t) for p, t in zip(pred, tgt)]))


def cmd_train_seq2seq(args: argparse.Namespace) -> int:
    task = data.NumberWords(args.max_value)
    rng = np.random.default_rng(args.seed)
    test_src, test_tgt, test_n = task.sample(np.random.default_rng(args.seed + 1), args.test_size,
                                             "test")
    model = Seq2Seq(len(task.src_vocab), len(task.tgt_vocab), hidden_size=args.hidden,
                    num_layers=args.layers, cell=args.cell, embed_dim=args.embed, pad=task.PAD,
                    bos=task.BOS, eos=task.EOS, seed=args.seed)
    opt = optim.Adam(model.params, model.grads, lr=args.lr)
    _out(f"task: numbers 0..{args.max_value:,} in words -> digits; {model.num_params():,} "
         f"parameters ({args.cell}, H = {args.hidden}); held-out test set of {args.test_size}")
    clock = _budget(args.steps, args.minutes, 1000)
    step, losses, acc = 0, [], 0.0
    while clock.running(step):
        src, tgt, _ = task.sample(rng, args.batch, "train")
        losses.append(_train_step(model, opt, args.clip,
                                  partial(model.loss_and_backward, src, tgt)))
        step += 1
        if step % args.eval_every == 0:
            acc = _exact_match(model, test_src, test_tgt, beam=1)
            _out(f"step {step:5d}  loss {np.mean(losses[-args.eval_every:]):.4f}  held-out "
                 f"exact match {acc:.1%}  ({clock.elapsed():.0f} s)")
            if args.stop_at is not None and acc >= args.stop_at:
                break
    acc = _exact_match(model, test_src, test_tgt, beam=1)
    n_beam = min(len(test_src), args.beam_test_size)
    beam_acc = _exact_match(model, test_src[:n_beam], test_tgt[:n_beam], beam=args.beam)
    shown = model.greedy(test_src[:5])
    for s, p, n in zip(test_src[:5], shown, test_n[:5]):
        _out(f"  {task.src_vocab.decode(s)!r} -> {task.tgt_vocab.decode(p)!r}  (true {n})")
    _out(f"held-out exact match after {step} steps, {clock.elapsed():.0f} s: greedy {acc:.1%} "
         f"({len(test_src)} examples), beam {args.beam} {beam_acc:.1%} ({n_beam} examples)")
    if args.out:
        model.save(args.out, task="NumberWords", max_value=args.max_value, accuracy=acc)
        _out(f"checkpoint saved to {args.out}")
    return 0


# -- long-range task and gradient flow -------------------------------------------------------------

def _longrange_model(cell: str, args: argparse.Namespace, dtype: str = "float32"
                     ) -> SequenceClassifier:
    return SequenceClassifier(
        len(data.LONGRANGE_CUES) + len(data.LONGRANGE_FILLER), len(data.LONGRANGE_CUES),
        hidden_size=args.hidden, cell=cell, dtype=dtype, seed=args.seed,
        forget_bias=args.forget_bias if cell == "lstm" else 0.0,
        input_bias=args.input_bias if cell == "lstm" else 0.0)


def _train_longrange(model: SequenceClassifier, steps: int, length: int,
                     args: argparse.Namespace) -> float:
    """SGD with momentum (the same for every cell) on fresh batches; returns the last loss."""
    opt = optim.SGD(model.params, model.grads, lr=args.lr, momentum=0.9)
    rng = np.random.default_rng(args.seed)
    loss = float("nan")
    for _ in range(steps):
        x, y = data.longrange_batch(rng, args.batch, length)
        loss, _ = _train_step(model, opt, 1.0, partial(model.loss_and_backward, x, y))
    return loss


def cmd_longrange(args: argparse.Namespace) -> int:
    lengths = [int(v) for v in args.lengths.split(",")]
    cells = args.cells.split(",")
    _out(f"task: {'/'.join(data.LONGRANGE_CUES)} at t = 1 decides the answer after T steps of "
         f"filler ({args.steps} SGD steps of batch {args.batch}, H = {args.hidden}; "
         f"chance = 50%)")
    _out("     T  " + "  ".join(f"{c:>6}" for c in cells))
    test_rng = np.random.default_rng(args.seed + 1)
    for length in lengths:
        x, y = data.longrange_batch(test_rng, args.test_size, length)
        accs = []
        for cell in cells:
            model = _longrange_model(cell, args)
            _train_longrange(model, args.steps, length, args)
            accs.append(model.accuracy(x, y))
        _out(f"  {length:4d}  " + "  ".join(f"{a:6.1%}" for a in accs))
    return 0


def cmd_gradflow(args: argparse.Namespace) -> int:
    _require("matplotlib", "plot")  # before minutes of computing, not after
    length = args.length
    x, y = data.longrange_batch(np.random.default_rng(args.seed + 1), args.batch, length)
    curves: Dict[str, Array] = {}
    _out(f"||dL_T/dh_t|| on the long-range task, T = {length}, H = {args.hidden}")
    _out("  model           ||dL/dh_T||  ||dL/dh_1||  ratio")
    for cell in args.cells.split(","):
        model = _longrange_model(cell, args, "float64")  # float32 underflows below 1e-45
        for label, steps in (("init", 0), (f"after {args.train_steps} steps", args.train_steps)):
            if steps:
                _train_longrange(model, steps, length, args)
            model.zero_grad()
            _, dh_last = model.loss_and_backward(x, y)  # the classifier's dL_T/dh_T
            model.zero_grad()
            norms = diagnostics.gradient_flow(model.rnn, model.embed(x, training=False),
                                              dy_last=dh_last)
            name = f"{cell.upper()} ({label})"
            curves[name] = norms / norms[-1]  # as if ||dL_T/dh_T|| = 1: pure propagation
            _out(f"  {name:<22} {norms[-1]:.2e}    {norms[1]:.2e}    {norms[1] / norms[-1]:.1e}")
    diagnostics.plot_gradient_flow(
        curves, args.out,
        title=f"||dL_T/dh_t|| / ||dL_T/dh_T||, long-range task, T = {length}")
    _out(f"plot saved to {args.out}")
    return 0


# -- attention -------------------------------------------------------------------------------------

class _Split:
    """A wall-clock budget of ``minutes`` split between models by their shares: each gets its
    share of what is left when it starts (time one did not use goes to the next), after the
    time `keep` set aside for the work that follows training (evaluations, the report)."""

    def __init__(self, minutes: float, steps: Optional[int], shares: Dict[str, float]) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + 60.0 * minutes
        self.steps, self.left = steps, dict(shares)

    def keep(self, seconds: float) -> None:
        """Set ``seconds`` more aside at the end of the budget."""
        self.deadline -= seconds

    def clock(self, name: str) -> _Clock:
        share = self.left.pop(name)
        seconds = max(0.0, self.deadline - time.perf_counter())
        return _Clock(self.steps, seconds * share / (share + sum(self.left.values())) / 60.0)

    def report(self) -> str:
        return f"wall time {time.perf_counter() - self.start:.0f} s"


def _reporter(name: str, what: str, evaluate: Callable[[Any], float], clock: _Clock,
              every: int) -> Callable[[Any, int, float], None]:
    """A training loop's ``on_step(model, step, loss)``: every ``every`` steps it prints the
    mean loss since the last report and the held-out ``what``, ``evaluate(model)``."""
    losses: List[float] = []

    def on_step(model: Any, step: int, loss: float) -> None:
        losses.append(loss)
        if step % every == 0:
            _out(f"  {name:<17} step {step:5d}  loss {np.mean(losses[-every:]):.4f}  "
                 f"held-out {what} {evaluate(model):.1%}  ({clock.elapsed():.0f} s)")
    return on_step


def _matches(model: Seq2Seq, src: List[Array], tgt: List[Array]) -> Array:
    """Whether greedy decoding gets each target exactly (B,) bool."""
    pred = model.greedy(src, max(len(t) for t in tgt) + 2)
    return np.array([list(p) == list(t) for p, t in zip(pred, tgt)])


def cmd_attention(args: argparse.Namespace) -> int:
    """The same encoder-decoder without and with attention on long sequences: reverse them."""
    split = _Split(args.minutes, args.steps, {"without attention": 1.0, "with attention": 1.0})
    if args.plot:  # fail before training, not after it
        try:
            diagnostics.require_matplotlib("--plot")
        except ImportError as err:
            raise ValueError(str(err)) from None
    task = data.Reversal(args.min_len, args.max_len, args.letters)
    test_src, test_tgt = task.sample(np.random.default_rng(args.seed + 1), args.test_size, "test")
    lengths = np.array([len(s) for s in test_src])  # (N,)
    sizes = {"hidden_size": args.hidden, "embed_dim": args.embed, "cell": args.cell,
             "seed": args.seed}
    probe, tick = data.reversal_model(task, "luong", **sizes), time.perf_counter()
    _matches(probe, test_src[:20], test_tgt[:20])  # untrained: decodes to the longest length
    decode = (time.perf_counter() - tick) / min(20, len(test_src))  # seconds per test input
    split.keep(0.05 * 60 * args.minutes + 2.5 * decode * len(test_src))  # both tests, the plot
    _out(f"task: reverse {args.min_len} to {args.max_len} letters (of {args.letters}); "
         f"{args.cell}, H = {args.hidden}; held-out test set of {args.test_size} "
         f"(inputs {lengths.min()} to {lengths.max()} tokens); {args.minutes:g} minutes")
    exact: Dict[str, Array] = {}  # name -> (N,) bool
    models: Dict[str, Seq2Seq] = {}
    for name, attention in (("without attention", None), ("with attention", "luong")):
        clock = split.clock(name)
        model, steps = data.train_reversal(
            task, attention, **sizes, batch=args.batch, lr=args.lr, clip=args.clip,
            progress=clock.progress,
            on_step=_reporter(name, f"exact match (first {args.eval_size})",
                              lambda m: float(_matches(m, test_src[:args.eval_size],
                                                       test_tgt[:args.eval_size]).mean()),
                              clock, args.eval_every))
        models[name], exact[name] = model, _matches(model, test_src, test_tgt)
        _out(f"{name}: {model.num_params():,} parameters, {steps} steps, {clock.elapsed():.0f} s,"
             f" held-out exact match {exact[name].mean():.1%}")
    _out("\nheld-out exact match by input length")
    _out("  length    count  " + "  ".join(f"{n:>17}" for n in exact))
    for lo in range(args.min_len, args.max_len + 1, 5):
        sel = (lengths >= lo) & (lengths < lo + 5)
        if sel.any():
            _out(f"  {lo:>2}-{min(lo + 4, args.max_len):<2}  {sel.sum():>7}  "
                 + "  ".join(f"{e[sel].mean():17.1%}" for e in exact.values()))
    _out("  all     " + f"{len(lengths):>7}  " + "  ".join(f"{e.mean():17.1%}"
                                                          for e in exact.values()))
    attn = models["with attention"]
    example = test_src[0]
    for name, model in models.items():
        _out(f"  {name:<17} {task.tgt_vocab.decode(model.greedy([example], len(example) + 2)[0])}")
    _out(f"  {'input':<17} {task.src_vocab.decode(example)}")
    if args.plot:
        pred = attn.greedy([example], len(example) + 2)[0]
        weights = attn.attention_weights([example], [pred])[0]  # (len(pred) + 1, S)
        diagnostics.plot_attention(
            weights, task.src_vocab.decode(example).split(),
            [*task.tgt_vocab.decode(pred).split(), "<eos>"], args.plot,
            title=f"Where the decoder looks: reversing {len(example)} letters "
                  f"(Luong attention, {args.cell}, H = {args.hidden})")
        _out(f"attention weights of the first test example saved to {args.plot}")
    _out(f"{split.report()} (budget {60 * args.minutes:.0f} s)")
    if args.json:
        _out(json.dumps({"exact_match_without_attention": float(exact["without attention"].mean()),
                         "exact_match_with_attention": float(exact["with attention"].mean()),
                         "min_input_length": int(lengths.min())}))
    return 0


# -- jumbled sentences -----------------------------------------------------------------------------

def _p_jumbled(model: Union[BagOfWords, SequenceClassifier], ids: List[Array]) -> Array:
    """p(jumbled) (B,) for id sequences of any lengths."""
    padded, lengths = data.pad_sequences(ids, data.JumbledSentences.PAD)  # (T, B), (B,)
    logits, _ = model.forward(padded, lengths=lengths)  # (B, 2)
    return np.asarray(softmax(logits.astype(np.float64))[:, 1])


def _right(model: Union[BagOfWords, SequenceClassifier], ids: List[Array], jumbled: Array
           ) -> Array:
    """Whether the model's verdict (p(jumbled) > 0.5) on each sentence is right (B,) bool."""
    return np.asarray((_p_jumbled(model, ids) > 0.5) == jumbled)


def _classifier_loss(task: data.JumbledSentences, model: Union[BagOfWords, SequenceClassifier],
                     batch: int, rng: np.random.Generator) -> float:
    """A fresh training batch of sentences, each as written and jumbled: loss and backward."""
    ids, labels = task.batch(rng, batch)
    padded, lengths = data.pad_sequences(ids, task.PAD)  # (T, B), (B,)
    return model.loss_and_backward(padded, labels, lengths)[0]


def cmd_jumble(args: argparse.Namespace) -> int:
    """The lecture's opening: is a sentence as written, or are its words jumbled?"""
    split = _Split(args.minutes, args.steps, {"bag of words": 0.1, "RNN": 0.45, "LSTM": 0.45})
    split.keep(0.02 * 60 * args.minutes)  # the test of the last model, the report
    task = data.JumbledSentences(test_size=args.test_size, shuffle_prob=args.shuffle_prob)
    test_ids, test_kinds, test_words = task.pairs(np.random.default_rng(args.seed + 1), task.test)
    test_labels = test_kinds > 0  # (2N,) True = jumbled
    vocab = len(task.vocab)
    models: Dict[str, Union[BagOfWords, SequenceClassifier]] = {
        "bag of words": BagOfWords(vocab, 2, embed_dim=args.embed, seed=args.seed),
        "RNN": SequenceClassifier(vocab, 2, hidden_size=args.hidden, cell="rnn",
                                  embed_dim=args.embed, seed=args.seed),
        "LSTM": SequenceClassifier(vocab, 2, hidden_size=args.hidden, cell="lstm",
                                   embed_dim=args.embed, seed=args.seed),
    }
    _out(f"sentences of a built-in English grammar ({vocab - 2} words): fresh ones for every "
         f"training step, and {len(task.test):,} held out (never seen in training), each shown "
         f"as written and jumbled (shuffled or two words swapped); chance 50%; "
         f"{args.minutes:g} minutes")
    right: Dict[str, Array] = {}  # name -> (2N,) bool: the held-out verdicts that are right
    for name, model in models.items():
        clock = split.clock(name)
        report = _reporter(name, "accuracy",
                           lambda m: float(_right(m, test_ids, test_labels).mean()), clock,
                           args.eval_every)
        opt = optim.Adam(model.params, model.grads, lr=args.lr)
        rng = np.random.default_rng(args.seed)
        steps = 0
        while clock.running(steps):
            opt.lr = args.lr * (1.0 - clock.progress(steps))  # down to 0 at the budget's end
            loss = _train_step(model, opt, args.clip,
                               partial(_classifier_loss, task, model, args.batch, rng))
            steps += 1
            report(model, steps, loss)
        right[name] = _right(model, test_ids, test_labels)
        _out(f"{name}: {right[name].mean():.1%} held-out accuracy after {steps} steps, "
             f"{clock.elapsed():.0f} s")
    _out(f"\nheld-out accuracy on {len(task.test):,} sentences, each as written and jumbled")
    _out("  shown as          count  " + "  ".join(f"{n:>12}" for n in right))
    for kind, shown_as in enumerate(("as written", "shuffled", "two swapped")):
        sel = test_kinds == kind
        _out(f"  {shown_as:<14} {sel.sum():>8}  "
             + "  ".join(f"{r[sel].mean():12.1%}" for r in right.values()))
    _out(f"  {'all':<14} {len(test_kinds):>8}  "
         + "  ".join(f"{r.mean():12.1%}" for r in right.values()))
    n = len(task.test)
    shown = [(1, data.tokenize_sentence(t)) for t in data.LECTURE_JUMBLED]
    shown += [(0, data.tokenize_sentence(t)) for t in data.LECTURE_WRITTEN]
    for i in range(len(data.LECTURE_WRITTEN), len(data.LECTURE_WRITTEN) + args.show):
        shown += [(0, test_words[i]), (1, test_words[n + i])] if i < n else []
    probs = {name: _p_jumbled(m, [task.encode(w) for _, w in shown]) for name, m in models.items()}
    _out("\np(jumbled) by each model (> 0.5: it says jumbled): the lecture's sentences as it "
         "jumbles them and put right (held out), then other held-out ones")
    _out("  truth     BoW   RNN   LSTM  sentence")
    for i, (label, words) in enumerate(shown):
        cols = "  ".join(f"{probs[name][i]:.2f}" for name in models)
        _out(f"  {'jumbled' if label else 'written':<8}  {cols}  {' '.join(words)}")
    _out(f"{split.report()} (budget {60 * args.minutes:.0f} s)")
    if args.json:
        _out(json.dumps({"bag_of_words_accuracy": float(right["bag of words"].mean()),
                         "rnn_accuracy": float(right["RNN"].mean()),
                         "lstm_accuracy": float(right["LSTM"].mean()),
                         "test_sentences": len(task.test)}))
    return 0


# -- parser ----------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text}")
    return value


def _precisions(text: str) -> List[str]:
    """A comma-separated list of precisions (docs/precision.md)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in ("float", "bf16", "int8")]
    if bad:
        raise argparse.ArgumentTypeError(f"expected float, bf16 or int8, got {', '.join(bad)}")
    return names


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to each option's help, except where the default is None, False or
    "" (the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None or action.default is False or action.default == "":
            return action.help
        return super()._get_help_string(action)


# The options several commands share, each defined once here; a command takes the ones it needs
# from `_shared`, with its own defaults (and its own help where that differs).
_OPTIONS: Dict[str, Dict[str, Any]] = {
    "cell": {"choices": ("lstm", "gru", "rnn"), "help": "recurrent cell"},
    "hidden": {"type": _positive_int, "help": "hidden size H"},
    "layers": {"type": _positive_int, "help": "stacked layers"},
    "embed": {"type": _positive_int, "help": "embedding size"},
    "batch": {"type": _positive_int, "help": "examples per step"},
    "steps": {"type": _positive_int, "help": "at most this many steps"},
    "minutes": {"type": _positive_float, "help": "time budget in minutes (default: none)"},
    "lr": {"type": _positive_float, "help": "Adam learning rate"},
    "clip": {"type": _positive_float, "help": "gradient norm clip"},
    "eval-every": {"type": _positive_int, "help": "steps between held-out evaluations"},
    "test-size": {"type": _positive_int, "help": "held-out examples"},
    "json": {"action": "store_true",
             "help": "print the results as one JSON object on the last line"},
    "seed": {"type": int, "help": "random seed"},
}


def _shared(**defaults: Any) -> argparse.ArgumentParser:
    """A parent parser with the `_OPTIONS` named (``eval_every`` for --eval-every), each with
    the default given, or a (default, help) pair where the command's help differs."""
    parent = argparse.ArgumentParser(add_help=False)
    for name, value in defaults.items():
        flag = name.replace("_", "-")
        default, text = value if isinstance(value, tuple) else (value, None)
        options = {**_OPTIONS[flag], "default": default}
        if text is not None:
            options["help"] = text
        parent.add_argument(f"--{flag}", **options)
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rnnkern`` command."""
    parser = argparse.ArgumentParser(prog="rnnkern", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rnnkern {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("dogs", help="the lecture's DOGS example (seconds)",
                       parents=[_shared(hidden=3, steps=2000, lr=0.05, seed=0)])
    p.add_argument("--target-loss", type=_positive_float, default=0.05,
                   help="stop when every prediction is right and the loss is below this")
    p.set_defaults(func=cmd_dogs)

    p = sub.add_parser("train-char", help="train a character language model", parents=[_shared(
        cell="lstm", hidden=256, layers=1, embed=64, batch=(32, "sequences per step"),
        steps=(None, "training steps (default: 2000 unless --minutes is given)"), minutes=None,
        lr=2e-3, clip=5.0, seed=0,
        eval_every=(None, "also print the validation loss and the median step time every this "
                          "many steps (default: only at the end)"))])
    p.add_argument("text_file", nargs="?", default=None,
                   help="UTF-8 text (default: the Python standard library's .py files)")
    p.add_argument("--dropout", type=float, default=0.0, help="between layers")
    p.add_argument("--layer-norm", action="store_true",
                   help="a layer-normalized LSTM (--cell lstm only; docs/lstm_variants.md)")
    p.add_argument("--precision", choices=("float", "bf16"), default="float",
                   help="of the recurrent layer's products (docs/precision.md)")
    p.add_argument("--eval-precision", type=_precisions, default=[], metavar="P[,P]",
                   help="also report the validation loss with the recurrent layer run in these "
                        "precisions (float, bf16, int8), e.g. int8")
    p.add_argument("--seq-len", type=_positive_int, default=100, help="truncated BPTT length")
    p.add_argument("--max-chars", type=_positive_int, default=2_000_000, help="corpus size cap")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="the fraction of the corpus, at its end, kept for validation")
    p.add_argument("--val-chars", type=_positive_int, default=50_000,
                   help="validate on at most this many characters")
    p.add_argument("--sample-every", type=int, default=500, help="0: only at the end")
    p.add_argument("--sample-length", type=_positive_int, default=300,
                   help="characters per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="of the samples")
    p.add_argument("--out", default="charlm.npz", help="checkpoint file ('' to skip)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_char)

    p = sub.add_parser("sample", help="generate text from a character model checkpoint",
                       parents=[_shared(seed=(None, "random seed (default: random)"))])
    p.add_argument("checkpoint", help="a checkpoint saved by train-char")
    p.add_argument("--temperature", type=float, default=0.8, help="0: always the likeliest")
    p.add_argument("--length", type=_positive_int, default=500, help="characters to generate")
    p.add_argument("--prime", default="", help="text to start from (default: a newline)")
    p.add_argument("--precision", choices=("float", "bf16", "int8"), default=None,
                   help="of the recurrent layer's products (default: the trained model's)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train-seq2seq", help="encoder-decoder: numbers in words -> digits",
                       parents=[_shared(
                           cell="lstm", hidden=128, layers=1, embed=32, batch=64,
                           steps=(None, "training steps (default: 1000 unless --minutes is "
                                        "given)"),
                           minutes=None, lr=3e-3, clip=5.0, eval_every=250, test_size=1000,
                           seed=0)])
    p.add_argument("--max-value", type=_positive_int, default=999_999,
                   help="numbers from 0 to this")
    p.add_argument("--beam", type=_positive_int, default=4, help="beam width of the last test")
    p.add_argument("--beam-test-size", type=_positive_int, default=200,
                   help="held-out examples decoded by beam search")
    p.add_argument("--stop-at", type=float, default=None,
                   help="stop once the held-out exact match reaches this (e.g. 0.98)")
    p.add_argument("--out", default="", help="checkpoint file (default: none)")
    p.set_defaults(func=cmd_train_seq2seq)

    for name, func, text in (("gradflow", cmd_gradflow, "plot ||dL_T/dh_t|| for RNN and LSTM"),
                             ("longrange", cmd_longrange, "accuracy against T: RNN vs LSTM")):
        p = sub.add_parser(name, help=text, parents=[_shared(
            hidden=32, batch=(32, "sequences per step"), lr=(0.1, "SGD (momentum 0.9)"),
            seed=0)])
        p.add_argument("--cells", default="rnn,lstm", help="comma-separated cells")
        p.add_argument("--forget-bias", type=float, default=5.0,
                       help="added to the LSTM's forget-gate bias at initialization")
        p.add_argument("--input-bias", type=float, default=-3.0,
                       help="added to the LSTM's input-gate bias at initialization")
        p.set_defaults(func=func)
        if name == "gradflow":
            p.add_argument("--out", default="gradflow.png", help="the plot (PNG)")
            p.add_argument("--length", type=_positive_int, default=100, help="T")
            p.add_argument("--train-steps", type=int, default=200,
                           help="the second curve of each cell is after this many steps")
        else:
            p.add_argument("--lengths", default="10,25,50,100", help="comma-separated T values")
            p.add_argument("--steps", type=_positive_int, default=800, help="training steps")
            p.add_argument("--test-size", type=_positive_int, default=1000,
                           help="held-out sequences per T")

    def timed(minutes: float, **defaults: Any) -> argparse.ArgumentParser:
        """jumble's and attention's shared options: one time budget for all their models."""
        return _shared(minutes=(minutes, "time budget for all the models, in minutes"),
                       steps=(None, "at most this many steps per model"), clip=5.0, json=False,
                       seed=0, **defaults)

    p = sub.add_parser("attention", help="encoder-decoder with and without attention",
                       parents=[timed(3.0, cell="lstm", hidden=64, embed=32, batch=64, lr=3e-3,
                                      eval_every=250, test_size=1000)])
    p.add_argument("--min-len", type=_positive_int, default=30, help="shortest input")
    p.add_argument("--max-len", type=_positive_int, default=40, help="longest input")
    p.add_argument("--letters", type=int, default=20, help="alphabet size (2..26)")
    p.add_argument("--eval-size", type=_positive_int, default=200,
                   help="test examples decoded at each evaluation")
    p.add_argument("--plot", default="", metavar="FILE.png",
                   help="draw the attention weights of one test example (needs matplotlib)")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("jumble", help="as written or jumbled? bag of words vs RNN vs LSTM",
                       parents=[timed(2.0, hidden=64, embed=32, batch=64, lr=5e-3,
                                      eval_every=100,
                                      test_size=(1000, "held-out sentences (5 to 20000)"))])
    p.add_argument("--show", type=int, default=3,
                   help="held-out sentences shown (each as written and jumbled)")
    p.add_argument("--shuffle-prob", type=float, default=0.5,
                   help="of the jumbled sentences, the fraction shuffled (the rest: two words "
                        "swapped)")
    p.set_defaults(func=cmd_jumble)

    for p in sub.choices.values():  # every command's --help shows the defaults
        p.formatter_class = _DefaultsHelpFormatter
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, OSError, MissingDependency) as err:
        print(f"rnnkern {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: no traceback; 130 = 128 + SIGINT, the shells' convention
        print(f"rnnkern {args.command}: interrupted", file=sys.stderr)
        return 130

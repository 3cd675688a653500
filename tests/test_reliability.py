"""Reliability of the compiled kernels beyond argument checking (tests/test_errors.py) and accuracy
on ordinary inputs (tests/test_kernels_vs_reference.py, tests/test_isa.py):

- numbers: pre-activations of +-50, +-1e4, +-inf; NaN stays in the batch rows it touches;
  batch independence;
- determinism: the same bits run to run and process to process; thread counts agree within the
  tolerance (and bit for bit in the fused recurrent kernels);
- Python threads: 8 threads at once give the serial results, the GIL is released, an error in one
  call does not break the next; changing the thread count between calls;
- faults: an allocation failure is a MemoryError and the next call works; repeated training
  steps fault no memory in (the results' memory is reused);
- long sequences (T = 100000), memory (inference independent of T, 1000 loops flat);
- cache misuse (a cache reused, interleaved, shared by threads, outliving its inputs);
- impossible sizes of softmax, cross-entropy and the layers.

Whatever could crash the interpreter (thread-count changes, memory limits, memory measurements)
runs in a subprocess, so that a crash fails one test instead of ending the run.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rnnkern_testing import (
    CELLS,
    GATES,
    as_dtype,
    assert_close,
    make_case,
    make_output_grads,
    rnn_acc_len,
)
from test_errors import assert_same
from test_kernels_vs_reference import compare, run

import rnnkern
from rnnkern import nn, reference

CellKw = tuple[str, dict[str, Any]]
DTYPES = [np.float32, np.float64]
TESTS_DIR = Path(__file__).resolve().parent
# ASan reserves terabytes of shadow memory and keeps freed blocks in quarantine: address-space
# limits and RSS measurements mean nothing under scripts/sanitize.sh.
SANITIZED = "asan" in os.environ.get("LD_PRELOAD", "")
plain_build_only = pytest.mark.skipif(SANITIZED, reason="address space and RSS under ASan")


def _id(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return value[0] + "".join(f"-{v}" for v in value[1].values())
    if isinstance(value, type):
        return value.__name__
    return str(value)


def forward(cell: str, module: Any = rnnkern) -> Callable[..., Any]:
    return getattr(module, f"{cell}_forward")  # type: ignore[no-any-return]


def backward(cell: str, module: Any = rnnkern) -> Callable[..., Any]:
    return getattr(module, f"{cell}_backward")  # type: ignore[no-any-return]


def arrays(result: Any) -> dict[str, np.ndarray]:
    """The ndarray fields of a result tuple (cache and None fields left out)."""
    return {k: v for k, v in result._asdict().items() if isinstance(v, np.ndarray)}


def run_python(code: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 180) -> str:
    """Run ``code`` in a fresh interpreter importing this rnnkern (and tests/ for rnnkern_testing);
    fail with its output unless it exits with status 0. Returns its stdout."""
    paths = [str(Path(rnnkern.__file__).resolve().parent.parent), str(TESTS_DIR)]
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(paths + [environment.get("PYTHONPATH", "")])
    environment.update(env or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=environment,
                          capture_output=True, text=True, timeout=timeout, check=False)
    signal = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
    assert proc.returncode == 0, (f"subprocess exited with {proc.returncode}{signal}\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n"
                                  f"--- stderr\n{proc.stderr[-6000:]}")
    return proc.stdout


# ============================================================================ numbers


def saturated_case(cell: str, dtype: Any, value: float, seed: int = 2) -> dict[str, Any]:
    """Arguments whose every pre-activation is +-value (+ an O(1) rest): b_ih = +-value per row."""
    case = make_case(cell, 3, 4, 5, 6, dtype, seed=seed)
    signs = np.random.default_rng(seed + 1).choice([-1.0, 1.0], size=case["b_ih"].shape)  # (G*H,)
    case["b_ih"] = (signs * value).astype(dtype)
    return case


def through_x_case(cell: str, dtype: Any, value: float) -> dict[str, Any]:
    """Pre-activations of exactly +-value (+ an O(1) rest) through the input: I = 1, x = +-value,
    w_ih = +-1, so the input projection GEMM carries the extreme values."""
    T, B, H = 3, 4, 6
    case = make_case(cell, T, B, 1, H, dtype, seed=7)
    rng = np.random.default_rng(8)
    case["x"] = (rng.choice([-1.0, 1.0], size=(T, B, 1)) * value).astype(dtype)  # (T, B, 1)
    case["w_ih"] = rng.choice([-1.0, 1.0], size=(GATES[cell] * H, 1)).astype(dtype)  # (G*H, 1)
    return case


def mathematically_infinite(cell: str, kw: dict[str, Any], value: float) -> bool:
    """relu passes +inf on: h = inf, and W_hh h sums infinities of both signs."""
    return kw.get("nonlinearity") == "relu" and value == np.inf


# (route, value): inf only through the bias (inf * w summed over I terms is NaN, not a limit).
EXTREMES = [("bias", 50.0), ("bias", 1e4), ("bias", np.inf), ("x", 50.0), ("x", 1e4)]


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize(("route", "value"), EXTREMES, ids=[f"{r}-{v:g}" for r, v in EXTREMES])
@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_extreme_preactivations(cell_kw: CellKw, route: str, value: float, dtype: Any) -> None:
    """Saturating pre-activations give finite outputs and gradients, equal to the reference's."""
    cell, kw = cell_kw
    case = saturated_case(cell, dtype, value) if route == "bias" else \
        through_x_case(cell, dtype, value)
    T, B, I = case["x"].shape
    H = case["w_hh"].shape[1]
    grads = make_output_grads(cell, T, B, H, dtype, seed=3)
    with np.errstate(all="ignore"):  # the reference's exp overflows on purpose
        out, g = run(rnnkern, cell, case, grads, kw)
        ref_out, ref_g = run(reference, cell, as_dtype(case, np.float64),
                             as_dtype(grads, np.float64), kw)
    if not mathematically_infinite(cell, kw, value):
        for name, a in {**arrays(out), **arrays(g)}.items():
            assert np.all(np.isfinite(a)), f"{name}: {np.sum(~np.isfinite(a))} non-finite values"
    # Saturated derivatives are ~exp(-|v|): 0 in one computation, a denormal in the other, so
    # every field is judged against the O(1) magnitude of its terms (dy, weights, gates).
    acc_len = rnn_acc_len(cell, T, B, I, H)
    actual = {**arrays(out), **arrays(g)}
    expected = {**arrays(ref_out), **arrays(ref_g)}
    assert actual.keys() == expected.keys()
    for name, e in expected.items():
        scale = max(1.0, float(np.max(np.abs(e[np.isfinite(e)]), initial=0.0)))
        assert_close(actual[name], e, dtype=dtype, acc_len=acc_len, name=name, scale=scale)


NAN_PLACES = {
    # argument: index of the NaN (batch row 2 everywhere; step 1 is valid for every sequence)
    "x": (1, 2, 3),
    "h0": (2, 4),
    "c0": (2, 0),
    "dy": (2, 2, 5),
    "dh_n": (2, 1),
    "dc_n": (2, 3),
}


NAN_CASES = [(c, w) for c in CELLS for w in NAN_PLACES
             if c[0] == "lstm" or w not in ("c0", "dc_n")]


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize(("cell_kw", "where"), NAN_CASES,
                         ids=[f"{_id(c)}-{w}" for c, w in NAN_CASES])
def test_nan_stays_in_its_batch_row(cell_kw: CellKw, where: str, dtype: Any) -> None:
    """A NaN in batch row 2 of any input: every other row of every per-row output and gradient
    has the bits of a run without it. The forward's NaNs sit where the reference puts them (the
    gradients' may not: relu's derivative selects where the reference multiplies, 0 * NaN)."""
    cell, kw = cell_kw
    T, B, I, H = 4, 5, 16, 64  # lstm and gru threaded: B * G*H * H >= 2 * 16384
    case = make_case(cell, T, B, I, H, dtype, lengths=[4, 3, 4, 2, 4], seed=11)
    grads = make_output_grads(cell, T, B, H, dtype, seed=12)
    clean_out, clean_g = run(rnnkern, cell, case, grads, kw)
    bad_case, bad_grads = dict(case), dict(grads)
    target = bad_case if where in bad_case else bad_grads
    target[where] = target[where].copy()
    target[where][NAN_PLACES[where]] = np.nan
    out, g = run(rnnkern, cell, bad_case, bad_grads, kw)
    others = [b for b in range(B) if b != 2]
    per_row = {"y": 1, "h_n": 0, "c_n": 0, "dx": 1, "dh0": 0, "dc0": 0}  # name: batch axis
    for result, clean in ((out, clean_out), (g, clean_g)):
        for name, axis in per_row.items():
            if name in result._fields:
                a, e = getattr(result, name), getattr(clean, name)
                np.testing.assert_array_equal(np.take(a, others, axis), np.take(e, others, axis),
                                              err_msg=f"{name}: a NaN in row 2 of {where} "
                                                      f"reached another row", strict=True)
    with np.errstate(invalid="ignore"):
        ref_out = forward(cell, reference)(**as_dtype(bad_case, np.float64), **kw)
    acc_len = rnn_acc_len(cell, T, B, I, H)
    compare(out, ref_out, dtype, acc_len)


@pytest.mark.parametrize("backend", [rnnkern, reference], ids=["kernels", "reference"])
@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_padded_steps_ignore_x(cell_kw: CellKw, backend: Any) -> None:
    """Whatever x holds at padded steps (NaN, inf) changes no output and no gradient: every
    result has the bits of a run with zeros there (0 * NaN must not reach dW_ih)."""
    cell, kw = cell_kw
    T, B, I, H = 6, 5, 16, 64  # lstm and gru threaded
    dtype = np.float64 if backend is reference else np.float32
    lengths = [6, 2, 4, 1, 6]
    case = make_case(cell, T, B, I, H, dtype, lengths=lengths, seed=13)
    grads = make_output_grads(cell, T, B, H, dtype, seed=14)
    padded = np.arange(T)[:, None] >= np.array(lengths)[None, :]  # (T, B)
    zeros, garbage = dict(case), dict(case)
    zeros["x"] = np.where(padded[..., None], 0, case["x"]).astype(dtype)
    garbage["x"] = case["x"].copy()
    garbage["x"][padded] = np.nan
    garbage["x"][padded.nonzero()[0][:1], padded.nonzero()[1][:1]] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        results = [run(backend, cell, c, grads, kw) for c in (zeros, garbage)]
    (out0, g0), (out1, g1) = results
    for name, e in {**arrays(out0), **arrays(g0)}.items():
        a = {**arrays(out1), **arrays(g1)}[name]
        np.testing.assert_array_equal(a, e, err_msg=name, strict=True)


@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_batch_independence(cell_kw: CellKw) -> None:
    """Each sample alone gives what it gives inside a (threaded) batch, and the weight gradients of
    the batch are the sums of the samples' weight gradients. float64: a float64 result may serve
    as the expected value (for float32, test_kernels_vs_reference compares each sample alone in
    the reference with the batch)."""
    cell, kw = cell_kw
    T, B, I, H = 5, 6, 9, 48
    case = make_case(cell, T, B, I, H, np.float64, lengths=[5, 1, 3, 5, 2, 4], seed=21)
    grads = make_output_grads(cell, T, B, H, np.float64, seed=22)
    out, g = run(rnnkern, cell, case, grads, kw)
    batch = {**arrays(out), **arrays(g)}
    acc_len = rnn_acc_len(cell, T, B, I, H)
    sums: dict[str, Any] = {}  # name: sum over the samples of its weight gradient
    for b in range(B):
        rows = slice(b, b + 1)
        alone = {**case, "x": case["x"][:, rows], "h0": case["h0"][rows],
                 "lengths": case["lengths"][rows]}
        if cell == "lstm":
            alone["c0"] = case["c0"][rows]
        alone_grads = {k: v[:, rows] if k == "dy" else v[rows] for k, v in grads.items()}
        one_out, one_g = run(rnnkern, cell, alone, alone_grads, kw)
        for name, a in {**arrays(one_out), **arrays(one_g)}.items():
            if name.startswith(("dw", "db")):
                sums[name] = sums.get(name, 0) + a
            else:
                in_batch = batch[name][:, rows] if name in ("y", "dx") else batch[name][rows]
                assert_close(a, in_batch, dtype=np.float64, acc_len=acc_len, name=f"{name}[{b}]",
                             scale=1.0)
    for name, total in sums.items():
        assert_close(batch[name], total, dtype=np.float64, acc_len=acc_len * B, name=name)


# ============================================================================ determinism

# Threaded shapes (B * G*H * H >= 2 * 16384 for every cell): (T, B, I, H). The last has I = 0: no
# input projection and empty dx, dW_ih.
THREAD_SHAPES = [(3, 16, 32, 64), (6, 9, 20, 70), (4, 9, 0, 70)]
THREAD_COUNTS = [1, 2, 3]


def thread_cases(shapes: list[tuple[int, int, int, int]] = THREAD_SHAPES) -> Iterator[
        tuple[str, str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(key, cell, kw, forward arguments, incoming gradients) of the thread-count sweep."""
    for T, B, I, H in shapes:
        s = THREAD_SHAPES.index((T, B, I, H))
        for cell, kw in CELLS:
            for dtype in DTYPES:
                case = make_case(cell, T, B, I, H, dtype, lengths="random" if s else None,
                                 seed=31 + s)
                grads = make_output_grads(cell, T, B, H, dtype, seed=41 + s)
                key = f"{T}x{B}x{I}x{H}-{_id((cell, kw))}-{np.dtype(dtype).name}"
                yield key, cell, kw, case, grads


def thread_results(shapes: list[tuple[int, int, int, int]] = THREAD_SHAPES
                   ) -> dict[str, np.ndarray]:
    """Every output and gradient of thread_cases(shapes), keyed "case/name"."""
    from test_packed import run_packed

    results = {}
    for key, cell, kw, case, grads in thread_cases(shapes):
        out, g = run(rnnkern, cell, case, grads, kw)
        results.update({f"{key}/{k}": v for k, v in {**arrays(out), **arrays(g)}.items()})
        out, g = run_packed(cell, case, grads, kw)  # weights packed once, outside the call
        results.update({f"{key}-packed/{k}": v for k, v in {**arrays(out), **arrays(g)}.items()})
    return results


# Child: argv threads, output path. Sets the thread count before the first kernel call (see
# test_changing_the_thread_count_between_calls), runs the sweep twice (the same bits), saves it.
THREADS_CHILD = """
    import sys
    import numpy as np
    import rnnkern
    from test_reliability import thread_results
    rnnkern.set_num_threads(int(sys.argv[1]))
    first, second = thread_results(), thread_results()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key, strict=True)
    np.savez(sys.argv[2], **first)
"""


@pytest.fixture(scope="module")
def by_thread_count(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, np.ndarray]]:
    """The sweep's results for each thread count, each from its own process."""
    results = {}
    for n in THREAD_COUNTS:
        path = tmp_path_factory.mktemp("threads") / f"{n}.npz"
        run_python(THREADS_CHILD, str(n), str(path))
        with np.load(path) as data:
            results[n] = {k: data[k] for k in data.files}
    return results


@pytest.mark.parametrize("threads", THREAD_COUNTS)
def test_every_thread_count_matches_the_reference(
        by_thread_count: dict[int, dict[str, np.ndarray]], threads: int) -> None:
    results = by_thread_count[threads]
    for key, cell, kw, case, grads in thread_cases():
        ref_out, ref_g = run(reference, cell, as_dtype(case, np.float64),
                             as_dtype(grads, np.float64), kw)
        T, B, I = case["x"].shape
        H = case["w_hh"].shape[1]
        acc_len = rnn_acc_len(cell, T, B, I, H)
        for ref in (ref_out, ref_g):
            got = type(ref)(*(results.get(f"{key}/{name}") for name in ref._fields))
            compare(got, ref, case["x"].dtype, acc_len)


def test_every_result_gives_the_same_bits_for_any_thread_count(
        by_thread_count: dict[int, dict[str, np.ndarray]]) -> None:
    """Threads split blocks of hidden units (steps, bias sums) and of inputs (projection, dx,
    dW_ih), never a sum: every element is computed by the same instructions in the same order for
    any thread count, so every output and gradient has the same bits."""
    serial = by_thread_count[1]
    for n, results in by_thread_count.items():  # packed once or per call: the same bits
        for key, value in results.items():
            if "-packed/" in key:
                np.testing.assert_array_equal(value, results[key.replace("-packed/", "/")],
                                              err_msg=f"{key}, {n} threads", strict=True)
    names = {key.split("/")[1] for key in serial}
    assert {"y", "h_n", "c_n", "dx", "dh0", "dw_ih", "dw_hh", "db_ih"} <= names, names
    for n in THREAD_COUNTS[1:]:
        assert by_thread_count[n].keys() == serial.keys()
        for key in serial:
            np.testing.assert_array_equal(by_thread_count[n][key], serial[key],
                                          err_msg=f"{key}: {n} threads vs 1", strict=True)


def test_same_bits_from_process_to_process(
        by_thread_count: dict[int, dict[str, np.ndarray]], tmp_path: Path) -> None:
    """Each child already checked two runs in one process; a new process (new addresses, new
    pool) gives the same bits again, and so does this process with its own thread count."""
    n = THREAD_COUNTS[-1]
    run_python(THREADS_CHILD, str(n), str(tmp_path / "again.npz"))
    with np.load(tmp_path / "again.npz") as again:
        for key, value in by_thread_count[n].items():
            np.testing.assert_array_equal(again[key], value, err_msg=key, strict=True)
    if rnnkern.get_num_threads() in by_thread_count:
        here = thread_results()
        for key, value in by_thread_count[rnnkern.get_num_threads()].items():
            np.testing.assert_array_equal(here[key], value, err_msg=key, strict=True)


CHANGE_THREADS_CHILD = """
    import os
    import threading
    import numpy as np
    import rnnkern
    from rnnkern_testing import make_case

    cpus = len(os.sched_getaffinity(0))
    case = make_case("lstm", 4, 9, 0, 70, np.float64, seed=1)  # threaded, fused kernels only
    expected = rnnkern.lstm_forward(**case).y  # (T, B, H) on the default thread count
    for i, n in enumerate([1, 2, 3, 2, 4, 1, 3] * 3):
        rnnkern.set_num_threads(n)
        assert rnnkern.get_num_threads() == min(n, cpus, 16)  # never more threads than CPUs
        y = rnnkern.lstm_forward(**case).y
        np.testing.assert_array_equal(y, expected, err_msg=f"change {i} to {n} threads")

    # and while another Python thread keeps calling the kernels
    stop, errors = threading.Event(), []

    def work():
        try:
            while not stop.is_set():
                np.testing.assert_array_equal(rnnkern.lstm_forward(**case).y, expected)
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=work)
    worker.start()
    for n in [3, 1, 2, 4, 2] * 4:
        rnnkern.set_num_threads(n)
    stop.set()
    worker.join()
    assert not errors, errors
    print("ok")
"""


def test_changing_the_thread_count_between_calls() -> None:
    """set_num_threads between kernel calls (and while another thread computes): no crash, the
    same results."""
    assert run_python(CHANGE_THREADS_CHILD).strip().endswith("ok")


# ============================================================================ Python threads


def _thread_jobs() -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(cell, kw, case, grads): every cell form in float64, at a small shape (one kernel thread:
    B * G*H * H < 2 * 16384) and at a threaded one; the weights are read-only arrays shared by
    every Python thread."""
    jobs: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    for shape in ((6, 3, 5, 16), (4, 8, 12, 64)):
        for cell, kw in CELLS:
            case = make_case(cell, *shape, np.float64, lengths="random", seed=len(jobs))
            for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
                case[name].flags.writeable = False
            grads = make_output_grads(cell, shape[0], shape[1], shape[3], np.float64,
                                      seed=len(jobs))
            jobs.append((cell, kw, case, grads))
    return jobs


def test_python_threads_give_the_serial_results() -> None:
    """8 Python threads call forward and backward at once (every cell, shared read-only weights,
    each thread in its own order, one bad call in between): each result equals the serial one.

    A call that finds the kernel pool busy runs on one kernel thread, which gives the same bits
    as the threaded call (see the thread-count tests): every result is bitwise the serial one.
    """
    jobs = _thread_jobs()
    weights_before = [{k: v.copy() for k, v in case.items() if k.startswith(("w", "b"))}
                      for _, _, case, _ in jobs]
    serial = [run(rnnkern, cell, case, grads, kw) for cell, kw, case, grads in jobs]
    n_threads, rounds = 8, 3
    start = threading.Barrier(n_threads)

    def worker(index: int) -> list[tuple[int, Any, Any]]:
        start.wait()
        done = []
        for r in range(rounds):
            for k in range(len(jobs)):
                j = (k + index * 5 + r) % len(jobs)
                cell, kw, case, grads = jobs[j]
                if k == index:  # a bad argument: the next call must not notice
                    with pytest.raises(ValueError, match="^h0:"):
                        forward(cell)(**{**case, "h0": case["x"][0]}, **kw)
                done.append((j, *run(rnnkern, cell, case, grads, kw)))
        return done

    with ThreadPoolExecutor(n_threads) as pool:
        per_thread = list(pool.map(worker, range(n_threads)))
    for done in per_thread:
        assert len(done) == rounds * len(jobs)
        for j, out, g in done:
            assert_same(out, serial[j][0])
            assert_same(g, serial[j][1])
    for (_, _, case, _), before in zip(jobs, weights_before):
        for k, v in before.items():
            np.testing.assert_array_equal(case[k], v, err_msg=k, strict=True)


def test_the_gil_is_released_during_kernel_calls() -> None:
    """While a kernel runs, another Python thread runs Python code.

    With a 10 s switch interval a Python thread gets the GIL only when its holder gives it up, so
    the watcher can see `inside` set only while the caller is inside a call that released the GIL.
    No timing is asserted: the caller repeats the call (a fraction of a second) until the watcher
    has seen it, at most 20 times.
    """
    case = make_case("lstm", 50_000, 2, 4, 16, np.float32, seed=5)  # one kernel thread
    inside = threading.Event()
    stop = threading.Event()
    seen = []

    def watch() -> None:
        while not stop.is_set():
            if inside.is_set():
                seen.append(True)
            time.sleep(1e-4)  # gives the GIL up

    interval = sys.getswitchinterval()
    watcher = threading.Thread(target=watch)
    sys.setswitchinterval(10.0)
    try:
        watcher.start()
        for _ in range(20):
            inside.set()
            rnnkern.lstm_forward(**case, training=False)
            inside.clear()
            if seen:
                break
    finally:
        stop.set()
        watcher.join()
        sys.setswitchinterval(interval)
    assert seen, "no Python code ran during 20 kernel calls: the GIL is held"


# ============================================================================ faults


FAULT_CHILD = """
    import resource
    import numpy as np
    import rnnkern
    from rnnkern_testing import make_case, make_output_grads

    def address_space():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))

    # One kernel thread (B * 4H * H < 2 * 16384); the forward's gates (T, B, 4H) and the
    # backward's dx (T, B, I) float32 are 102 MB each, so 64 MB to spare fails both calls.
    T, B, I, H = 50000, 8, 64, 16
    case = make_case("lstm", T, B, I, H, np.float32, seed=1)
    grads = make_output_grads("lstm", T, B, H, np.float32, seed=2)
    out = rnnkern.lstm_forward(**case)
    expected = rnnkern.lstm_backward(out.cache, **grads)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (address_space() + 64 * 2**20, hard))
    failures = []
    for name, call in [("backward", lambda: rnnkern.lstm_backward(out.cache, **grads)),
                       ("forward", lambda: rnnkern.lstm_forward(**case))]:
        try:
            call()
            failures.append(name + ": no MemoryError with 64 MB to spare")
        except MemoryError:
            pass
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert not failures, failures
    again = rnnkern.lstm_backward(out.cache, **grads)  # the cache survived the failure
    for a, e in zip(again, expected):
        np.testing.assert_array_equal(a, e, strict=True)
    np.testing.assert_array_equal(rnnkern.lstm_forward(**case).y, out.y, strict=True)
    print("ok")
"""


@plain_build_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_allocation_failure_is_a_memory_error_and_the_next_call_works() -> None:
    assert run_python(FAULT_CHILD).strip().endswith("ok")


# ============================================================================ long sequences

LONG_T = 100_000
TAIL = 200  # steps checked against the reference at each end


def _in_small_stack(fn: Callable[[], Any], stack_bytes: int = 512 * 1024) -> Any:
    """fn() in a thread with a small stack: nothing in the kernels may grow with T on it."""
    result: list[Any] = []
    previous = threading.stack_size(stack_bytes)
    try:
        thread = threading.Thread(target=lambda: result.append(fn()))
        thread.start()
    finally:
        threading.stack_size(previous)
    thread.join()
    assert result, "the call raised (see the thread's traceback above)"
    return result[0]


@pytest.mark.parametrize("cell_kw", [CELLS[0], CELLS[3], CELLS[5]], ids=_id)
def test_long_sequence(cell_kw: CellKw) -> None:
    """T = 100000 forward and backward with small H: finite, and both ends match the reference.

    The start of y depends on the first steps only; the end is checked by the reference run from
    the kernel's own state TAIL steps before the end (with dy only there, the tail of dx too).
    """
    cell, kw = cell_kw
    T, B, I, H = LONG_T, 2, 3, 4
    case = make_case(cell, T, B, I, H, np.float64, seed=9)
    grads = make_output_grads(cell, T, B, H, np.float64, seed=10)
    grads["dy"][:-TAIL] = 0  # (T, B, H): the gradient enters in the last TAIL steps only
    out, g = _in_small_stack(lambda: run(rnnkern, cell, case, grads, kw))
    for name, a in {**arrays(out), **arrays(g)}.items():
        assert np.all(np.isfinite(a)), name
    assert np.abs(g.dx[-TAIL:]).max() > 0
    acc_len = rnn_acc_len(cell, TAIL, B, I, H)

    head = {**case, "x": case["x"][:TAIL]}
    ref_head = forward(cell, reference)(**head, **kw, training=False)
    assert_close(out.y[:TAIL], ref_head.y, dtype=np.float64, acc_len=acc_len, name="y head")

    tail = {**case, "x": case["x"][-TAIL:], "h0": out.y[-TAIL - 1]}
    if cell == "lstm":  # c at step T - TAIL from a kernel inference run of the prefix
        prefix = {**case, "x": case["x"][:-TAIL]}
        tail["c0"] = rnnkern.lstm_forward(**prefix, training=False).c_n
    tail_grads = {**grads, "dy": grads["dy"][-TAIL:]}
    ref_out, ref_g = run(reference, cell, tail, tail_grads, kw)
    assert_close(out.y[-TAIL:], ref_out.y, dtype=np.float64, acc_len=acc_len, name="y tail")
    assert_close(out.h_n, ref_out.h_n, dtype=np.float64, acc_len=acc_len, name="h_n")
    assert_close(g.dx[-TAIL:], ref_g.dx, dtype=np.float64, acc_len=acc_len, name="dx tail")


# ============================================================================ memory

# Growth of the peak RSS (VmHWM, reset before each call through /proc/self/clear_refs: ru_maxrss
# cannot be reset) by one inference call at T = 1000 and at T = 100000, and by a training forward
# at T = 100000: the control that the measurement sees memory kept per step.
INFERENCE_MEMORY_CHILD = """
    import json
    import sys
    import numpy as np
    import rnnkern
    from rnnkern_testing import make_case

    def peak_rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

    cell = sys.argv[1]
    forward = getattr(rnnkern, cell + "_forward")
    T, B, I, H = 100_000, 2, 32, 32
    case = make_case(cell, T, B, I, H, np.float32, seed=1)
    short = {**case, "x": case["x"][:1000]}
    forward(**short, training=False)  # warm up: thread pool, allocator

    def grown(**kwargs):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak RSS := current RSS
        before = peak_rss()
        y = forward(**kwargs).y
        return peak_rss() - before, y.nbytes

    print(json.dumps([*grown(**short, training=False), *grown(**case, training=False),
                      *grown(**case, training=True)]))
"""

MB = 2**20


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@plain_build_only
@pytest.mark.skipif(not _can_reset_peak_rss(), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_inference_memory_does_not_grow_with_t(cell: str) -> None:
    out = run_python(INFERENCE_MEMORY_CHILD, cell).strip().splitlines()[-1]
    short_growth, short_y, long_growth, long_y, train_growth, _ = json.loads(out)
    # Besides y: O(B*H) states and a bounded chunk of input projections (~4 MB), whatever T is.
    assert short_growth - short_y < 16 * MB, out
    assert long_growth - long_y < 16 * MB, (
        f"inference at T = {LONG_T} grew the peak RSS by {long_growth / MB:.1f} MB for a "
        f"{long_y / MB:.1f} MB y")
    # The control: the training cache, at least the (T+1, B, H) states, is visible.
    assert train_growth - long_y > 0.9 * long_y, out


LOOP_MEMORY_CHILD = """
    import numpy as np
    import rnnkern
    from rnnkern_testing import make_case, make_output_grads

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    # One kernel thread each (B * G*H * H < 2 * 16384), every buffer of a call but the biases
    # >= 16 KB: a leak of one is >= 16 MB in 1000 loops.
    T, B, I, H = 64, 1, 64, 64
    cases = []
    for cell, kw in [("rnn", {}), ("lstm", {}), ("gru", {}),
                     ("gru", {"linear_before_reset": False})]:
        cases.append((cell, kw, make_case(cell, T, B, I, H, np.float32, lengths="random"),
                      make_output_grads(cell, T, B, H, np.float32)))
    logits = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)  # (N, C)
    targets = np.arange(256) % 64

    def loop(n):
        for _ in range(n):
            for cell, kw, case, grads in cases:
                out = getattr(rnnkern, cell + "_forward")(**case, **kw)
                getattr(rnnkern, cell + "_backward")(out.cache, **grads)
                getattr(rnnkern, cell + "_forward")(**case, **kw, training=False)
                try:
                    getattr(rnnkern, cell + "_backward")(out.cache, grads["dy"][:, :1])
                except ValueError:
                    pass
            rnnkern.softmax(logits)
            rnnkern.softmax_cross_entropy(logits, targets)

    loop(100)
    before = rss()
    loop(1000)
    print(before, rss())
"""


@plain_build_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/statm: Linux")
def test_resident_memory_is_flat_over_1000_loops() -> None:
    before, after = (int(v) for v in run_python(LOOP_MEMORY_CHILD).split())
    assert after - before < 8 * MB, f"RSS grew by {(after - before) / MB:.1f} MB in 1000 loops"


# Minor page faults per training step, after three: the arrays the kernels return (training
# caches, weight gradients, dx; 64 KB and more) come from the core's scratch pool, so a step
# whose predecessor freed them faults none in. From glibc, blocks that large went back to the
# system when freed and were faulted in again: 1,200-2,600 faults per backward of this 3-layer
# stack and about 4,700 per drop-in step of the bidirectional one (session 21).
FAULTS_CHILD = """
    import resource
    import numpy as np
    import torch
    import rnnkern
    import rnnkern.torch as rt

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((100, 1, 256)).astype(np.float32)  # (T, B, I)
    stack = rnnkern.nn.LSTM(256, 256, num_layers=3)
    dy = np.ones((100, 1, 256), np.float32)  # (T, B, H)
    dropin = rt.convert(torch.nn.LSTM(256, 256, num_layers=2, bidirectional=True))
    xt = torch.from_numpy(x).requires_grad_()

    def nn_step():
        stack(x)
        stack.backward(dy)

    def dropin_step():
        dropin(xt)[0].sum().backward()

    for name, step in (("nn", nn_step), ("drop-in", dropin_step)):
        for _ in range(3):
            step()
        before = faults()
        for _ in range(5):
            step()
        print(name, (faults() - before) / 5)
"""


@plain_build_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_minflt: Linux")
def test_repeated_training_steps_fault_no_memory_in() -> None:
    for line in run_python(FAULTS_CHILD).splitlines():
        name, per_step = line.rsplit(" ", 1)
        assert float(per_step) < 100, f"{name}: {per_step} minor page faults per training step"


# ============================================================================ cache misuse


@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_cache_reuse_interleaving_and_linearity(cell_kw: CellKw) -> None:
    """One cache serves any number of backward calls with different gradients, interleaved with
    another cache: each call is that of a fresh cache, and gradients add up (backward is linear in
    dy, dh_n, dc_n)."""
    cell, kw = cell_kw
    T, B, I, H = 5, 4, 6, 24
    case1 = make_case(cell, T, B, I, H, np.float64, lengths="random", seed=51)
    case2 = make_case(cell, T, B, I, H, np.float64, seed=52)
    g1 = make_output_grads(cell, T, B, H, np.float64, seed=53)
    g2 = make_output_grads(cell, T, B, H, np.float64, seed=54)
    out1, out2 = forward(cell)(**case1, **kw), forward(cell)(**case2, **kw)
    first = backward(cell)(out1.cache, **g1)
    other = backward(cell)(out2.cache, **g1)
    second = backward(cell)(out1.cache, **g2)
    both = backward(cell)(out1.cache, **{k: g1[k] + g2[k] for k in g1})
    assert_same(backward(cell)(out1.cache, **g1), first)
    assert_same(backward(cell)(out2.cache, **g1), other)
    assert_same(backward(cell)(forward(cell)(**case1, **kw).cache, **g2), second)
    acc_len = rnn_acc_len(cell, T, B, I, H)
    for name, value in arrays(both).items():
        assert_close(value, getattr(first, name) + getattr(second, name), dtype=np.float64,
                     acc_len=acc_len, name=name)


@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_cache_outlives_its_inputs(cell_kw: CellKw) -> None:
    """The caller may drop every array it passed to the forward: the cache keeps what it needs."""
    cell, kw = cell_kw
    T, B, I, H = 5, 3, 4, 16

    def make_cache(layout: Callable[[np.ndarray], np.ndarray]) -> Any:
        case = {k: layout(v) if isinstance(v, np.ndarray) else v for k, v in
                make_case(cell, T, B, I, H, np.float32, lengths="random", seed=61).items()}
        return forward(cell)(**case, **kw).cache  # case and its arrays die here

    grads = make_output_grads(cell, T, B, H, np.float32, seed=62)
    expected = backward(cell)(make_cache(lambda a: a.copy()), **grads)
    for layout in (lambda a: a.copy(), np.asfortranarray, lambda a: np.flip(np.flip(a).copy())):
        cache = make_cache(layout)
        gc.collect()
        np.ones(1 << 16)  # reuse freed memory  # (65536,)
        assert_same(backward(cell)(cache, **grads), expected)


def test_one_cache_shared_by_threads() -> None:
    """Backward only reads the cache: threads may use one cache at once."""
    T, B, I, H = 8, 6, 10, 48
    case = make_case("lstm", T, B, I, H, np.float64, seed=71)
    grads = make_output_grads("lstm", T, B, H, np.float64, seed=72)
    cache = rnnkern.lstm_forward(**case).cache
    expected = rnnkern.lstm_backward(cache, **grads)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: rnnkern.lstm_backward(cache, **grads), range(16)))
    for g in results:
        compare(g, expected, np.float64, rnn_acc_len("lstm", T, B, I, H))


# ============================================================================ impossible sizes


@pytest.mark.parametrize("module", [rnnkern, reference], ids=["rnnkern", "reference"])
def test_impossible_softmax_and_loss_sizes_raise_before_allocating(module: Any) -> None:
    """(test_errors covers the recurrent cells.) Broadcast views: no memory behind them."""
    zero = np.zeros((), np.float32)
    with pytest.raises((OverflowError, MemoryError), match="^z:"):
        module.softmax(np.broadcast_to(zero, (2**20, 2**20, 2**10)))
    logits = np.broadcast_to(zero, (2**40, 2**10))
    targets = np.broadcast_to(np.zeros((), np.int64), (2**40,))
    with pytest.raises((OverflowError, MemoryError), match="^logits:"):
        module.softmax_cross_entropy(logits, targets)


LAYER_SIZES = [
    pytest.param(lambda s: nn.RNN(s, 4), id="RNN-input_size"),
    pytest.param(lambda s: nn.LSTM(4, s), id="LSTM-hidden_size"),
    pytest.param(lambda s: nn.GRU(s, s), id="GRU-both"),
    pytest.param(lambda s: nn.Linear(s, 4), id="Linear-in_features"),
    pytest.param(lambda s: nn.Embedding(s, s), id="Embedding-both"),
]


@pytest.mark.parametrize("size", [2**40, 2**62], ids=["2^40", "2^62"])
@pytest.mark.parametrize("make", LAYER_SIZES)
def test_impossible_layer_sizes_raise_memory_or_overflow_error(make: Callable[[int], Any],
                                                               size: int) -> None:
    """A layer whose parameters cannot exist: OverflowError or MemoryError (not numpy's
    ValueError "array is too big" / "Maximum allowed dimension exceeded")."""
    with pytest.raises((OverflowError, MemoryError)):
        make(size)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_memory_error_names_the_parameter_and_its_element_size(dtype: Any) -> None:
    """A layer too large for memory names the parameter and the element size of its dtype."""
    size = np.dtype(dtype).itemsize
    with pytest.raises(MemoryError, match=f"^weight_hh_l0: a buffer of 400000 x 100000 "
                                          f"elements of {size} bytes "):
        nn.LSTM(4, 100_000, dtype=dtype)
    with pytest.raises(MemoryError, match=f"^weight: a buffer of 1000000 x 100000 elements "
                                          f"of {size} bytes "):
        nn.Embedding(1_000_000, 100_000, dtype=dtype)


def test_parameters_drawn_in_chunks_are_the_whole_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Initialization draws float64 values a chunk at a time (no whole-size float64 copy): the
    values are those of one draw of the whole array, rounded to the dtype."""
    monkeypatch.setattr("rnnkern.nn.linear._DRAW_CHUNK", 7)
    layer = nn.GRU(5, 6, seed=3)
    rng = np.random.default_rng(3)
    for name, p in layer.params.items():
        expected = rng.uniform(-1 / np.sqrt(6), 1 / np.sqrt(6), p.shape).astype(np.float32)
        np.testing.assert_array_equal(p, expected, err_msg=name)
    emb = nn.Embedding(9, 5, seed=4)
    expected = np.random.default_rng(4).standard_normal((9, 5)).astype(np.float32)
    np.testing.assert_array_equal(emb.params["weight"], expected)


@pytest.mark.parametrize("module", [rnnkern, reference], ids=["rnnkern", "reference"])
@pytest.mark.parametrize("cell", sorted(GATES))
def test_memory_error_names_the_training_cache(module: Any, cell: str) -> None:
    """x, the weights fit, the (T+1, B, G*H+H) training cache does not: the error names it."""
    G = GATES[cell]
    zero = np.zeros((), np.float32)
    x = np.broadcast_to(zero, (2**30, 1, 1))  # no memory behind it
    w_ih, w_hh = np.zeros((G * 1024, 1), np.float32), np.zeros((G * 1024, 1024), np.float32)
    args = [x, None, None, w_ih, w_hh, None, None] if cell == "lstm" else [
        x, None, w_ih, w_hh, None, None]
    with pytest.raises(MemoryError, match=rf"^cache \(training=True\): a buffer of "
                                          rf"{2**30 + 1} x 1 x {G * 1024 + 1024} elements of 4 "):
        getattr(module, f"{cell}_forward")(*args)

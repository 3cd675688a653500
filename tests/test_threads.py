"""The threads in company (issue 13): whatever the team does — a worker taken over because it had
not started, a team shrunk because a member was descheduled, more threads asked for than cores,
a busy process on the machine, PyTorch's OpenMP pool active, either thread runtime — every
output and gradient has the bits of a run on one thread.

Take-overs and shrinks are forced with the core's fault injection (`_core._test_delays`), so
they happen on any machine, loaded or not; `thread_stats()` shows that they did.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from rnnkern_testing import CELLS, assert_close, make_case, make_output_grads

import rnnkern
from rnnkern import _core

CPUS = len(os.sched_getaffinity(0))
# (cell, kw, case shape (T, B, I, H), dtype): every cell form at a shape run by a team (B * G*H *
# H >= 2 * 16384 multiply-adds per step, T * B * G*H * (H + I) >= 2M in all), and an LSTM whose
# backward has three chunks of steps. float32 at B = 8, where the backward steps' dh products
# take two-block tiles (dh_sums), float64 at B = 4, where they run block by block.
SHAPES = [(40, 4, 16, 128)]
CHUNKED = ("lstm", {}, (40, 64, 32, 256), np.float32)
CASES = [(cell, kw, (T, 8 if dtype == np.float32 else B, I, H), dtype)
         for cell, kw in CELLS for T, B, I, H in SHAPES
         for dtype in (np.float32, np.float64)] + [CHUNKED]


def _id(case: tuple[str, dict[str, Any], tuple[int, ...], Any]) -> str:
    cell, kw, shape, dtype = case
    return "-".join([cell, *map(str, kw.values()), "x".join(map(str, shape)),
                     np.dtype(dtype).name])


def case_arrays(cell: str, shape: tuple[int, ...], dtype: Any) -> dict[str, Any]:
    """The arguments of a case's forward (shape (T, B, I, H), random lengths)."""
    T, B, I, H = shape
    return make_case(cell, T, B, I, H, dtype, lengths="random", seed=3)


def make_run(cell: str, kw: dict[str, Any], shape: tuple[int, ...], dtype: Any
             ) -> Callable[[], dict[str, np.ndarray]]:
    """A function that runs a training forward + backward and an inference forward of the case
    (its arrays made once, so that its calls follow each other closely) and returns every
    output and gradient."""
    T, B, I, H = shape
    case = case_arrays(cell, shape, dtype)
    grads = make_output_grads(cell, T, B, H, dtype, seed=4)
    fwd = getattr(rnnkern, f"{cell}_forward")
    bwd = getattr(rnnkern, f"{cell}_backward")

    def run() -> dict[str, np.ndarray]:
        out = fwd(**case, **kw)
        g = bwd(out.cache, **grads)
        inf = fwd(**case, **kw, training=False)
        result = {f"fwd.{k}": v for k, v in out._asdict().items() if isinstance(v, np.ndarray)}
        result.update({f"bwd.{k}": v for k, v in g._asdict().items()
                       if isinstance(v, np.ndarray)})
        result.update({f"inf.{k}": v for k, v in inf._asdict().items()
                       if isinstance(v, np.ndarray)})
        return result
    return run


def run_all(cell: str, kw: dict[str, Any], shape: tuple[int, ...], dtype: Any
            ) -> dict[str, np.ndarray]:
    """Every output and gradient of a training forward + backward, and of an inference forward."""
    return make_run(cell, kw, shape, dtype)()


def assert_same_bits(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{k} {what}", strict=True)


@pytest.fixture(scope="module")
def serial() -> dict[str, dict[str, np.ndarray]]:
    """The results of every case on one thread."""
    before = rnnkern.get_num_threads()
    rnnkern.set_num_threads(1)
    try:
        return {_id(c): run_all(*c) for c in CASES}
    finally:
        rnnkern.set_num_threads(before)


@pytest.fixture
def delays() -> Iterator[Any]:
    """Sets the core's fault injection for one test, and turns it off after."""
    def set_delays(start_us: int = 0, sync_us: int = 0, sync_at: int = 0) -> None:
        _core._test_delays(start_us, sync_us, sync_at)
    yield set_delays
    _core._test_delays(0, 0, 0)


needs_two = pytest.mark.skipif(CPUS < 2, reason="a team needs two CPUs")


def kept_rows(cell: str, I: int, H: int, B: int, steps: int, seed: int
              ) -> tuple[Any, Any, list[Any]]:
    """A float32 pack of random weights, the rows that `steps` one-step backwards at batch B
    kept with it (as the drop-in cells' training steps keep them), and the sum of those
    steps' own weight gradients (float64): (pack, rows, sums)."""
    rng = np.random.default_rng(seed)
    G = 4 if cell == "lstm" else 3
    F = rnnkern._functional
    cell_id = {"lstm": F._LSTM, "gru": F._GRU, "gru_rh": F._GRU_RH}[cell]
    w = [rng.uniform(-0.3, 0.3, s).astype(np.float32)
         for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]
    pack = _core.Pack(cell_id, *w)
    rows = _core.Rows()
    sums: list[Any] = [0.0] * 4
    for _ in range(steps):
        x = rng.standard_normal((1, B, I)).astype(np.float32)
        h0 = rng.standard_normal((B, H)).astype(np.float32)
        _, _, _, cache = _core.forward_packed(pack, x, h0, None, None, True)
        dh = rng.standard_normal((B, H)).astype(np.float32)
        _core.backward_packed(pack, x, None, cache, None, dh, None, rows)
        own = _core.backward_packed(pack, x, None, cache, None, dh, None)[3:]
        sums = [e + g.astype(np.float64) for e, g in zip(sums, own)]
    assert rows.rows == steps * B
    return pack, rows, sums


@needs_two
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_a_worker_taken_over_gives_the_same_bits(case: Any, serial: Any, delays: Any) -> None:
    """Workers that start 2 ms late: the caller does their shares; same bits."""
    delays(start_us=2000)
    before = rnnkern.thread_stats()["taken_over"]
    assert_same_bits(run_all(*case), serial[_id(case)], "with the worker's share taken over")
    assert rnnkern.thread_stats()["taken_over"] > before


@needs_two
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_rh"])
def test_kept_rows_weight_gradients_with_a_worker_taken_over(cell: str, delays: Any,
                                                             num_threads: Any) -> None:
    """The drop-in cells' one product per pass (``_core.weight_gradients`` over the rows that
    one-step backwards kept) on a team whose worker starts 2 ms late, its share taken over:
    the same bits as on one thread, and the sum of the steps' own weight gradients
    (docs/tolerances.md; gru_rh: its n rows multiply the kept r * h)."""
    H = 128
    pack, rows, expected = kept_rows(cell, 16, H, 4, 20, seed=1)  # 80 rows
    num_threads(1)
    want = _core.weight_gradients(pack, rows)
    num_threads(2)
    delays(start_us=2000)
    before = rnnkern.thread_stats()["taken_over"]
    got = _core.weight_gradients(pack, rows)
    assert rnnkern.thread_stats()["taken_over"] > before
    for a, b, e in zip(got, want, expected):
        assert a.tobytes() == b.tobytes()
        assert_close(a, e, dtype=np.float32, acc_len=80 + H)


@needs_two
@pytest.mark.parametrize("size", [24, 40])
@pytest.mark.parametrize("runtime", ["rnnkern", "openmp"])
@pytest.mark.parametrize("cell", ["lstm", "gru_rh"])
def test_kept_rows_weight_gradients_over_blocks_of_unequal_shares(cell: str, runtime: str,
                                                                 size: int,
                                                                 num_threads: Any) -> None:
    """``_core.weight_gradients`` over 552 kept rows (two blocks of 256 and a last of 40) with
    column blocks of I and H shared unequally, so that one member has half the other's work. The
    members do not sync between blocks: a member that started packing the short last block
    while the other still multiplied the block before used to write over that one's panels
    (weight gradients wrong by up to 30%, in 60-98% of the calls on two cores, on rnnkern's
    pool). I = H = 40 is five column blocks: two threads split them 3 + 2, and the second
    member's blocks were paired from block 3, one thread's from block 0 (product() takes blocks
    two by two from a range's start; pairing changes a block's bits), so the bits depended on
    the thread count; the members now take whole pairs (pair_part). Every call now has the bits
    of one thread, on either runtime."""
    import torch

    torch.mm(torch.ones(8, 8), torch.ones(8, 8))  # an OpenMP runtime loaded for "openmp"
    # 24: three column blocks of 8 (AVX2 float32), shares of 2 and 1 (AVX-512: 16 + 8); 552 rows
    pack, rows, _ = kept_rows(cell, size, size, 8, 69, seed=2)
    num_threads(1)
    want = [g.tobytes() for g in _core.weight_gradients(pack, rows)]
    num_threads(2)
    rnnkern.set_thread_runtime(runtime)
    try:
        for _ in range(200):
            assert [g.tobytes() for g in _core.weight_gradients(pack, rows)] == want
    finally:
        rnnkern.set_thread_runtime("auto")


@needs_two
@pytest.mark.parametrize("case", [CHUNKED], ids=_id)
def test_a_worker_taken_over_joins_later_with_the_same_bits(case: Any, serial: Any,
                                                            delays: Any) -> None:
    """Workers that start 0.5 ms late, after the caller's own start share, long before a call of
    40 steps at B = 64 ends: the caller takes their shares over, and they join the call benched
    and are let in at a step; same bits."""
    delays(start_us=500)
    before = rnnkern.thread_stats()
    for _ in range(5):  # on a loaded machine a late worker may miss the call's end: try again
        assert_same_bits(run_all(*case), serial[_id(case)], "with a worker joining late")
        if rnnkern.thread_stats()["joined_late"] > before["joined_late"]:
            break
    after = rnnkern.thread_stats()
    assert after["taken_over"] > before["taken_over"]
    assert after["joined_late"] > before["joined_late"]


@needs_two
@pytest.mark.parametrize("sync_at", [1, 2, 5])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_a_team_shrunk_mid_call_gives_the_same_bits(case: Any, sync_at: int, serial: Any,
                                                    delays: Any) -> None:
    """A worker descheduled for 50 ms at its 1st, 2nd or 5th step (forward and backward, within
    a chunk or at a chunk's end): the caller finishes the call alone; same bits. (50 ms: a wait
    counts as late only past twice a step's work, and under AddressSanitizer a B = 64 step takes
    milliseconds.)"""
    delays(sync_us=50000, sync_at=sync_at)
    before = rnnkern.thread_stats()["shrunk"]
    for _ in range(5):  # on a loaded machine a worker may miss the start: then try again
        assert_same_bits(run_all(*case), serial[_id(case)],
                         f"with the team shrunk at step {sync_at}")
        if rnnkern.thread_stats()["shrunk"] > before:
            break
    assert rnnkern.thread_stats()["shrunk"] > before


@needs_two
def test_after_a_shrink_the_next_call_starts_alone_with_the_same_bits(serial: Any,
                                                                    delays: Any) -> None:
    """A call whose team shrank makes the calls of the next milliseconds start on the caller
    alone (the workers' shares taken over at once, the workers joining late, benched): the
    call right after a forced shrink takes a share over, and every result keeps its bits (on
    rnnkern's pool: on PyTorch's OpenMP threads judge_openmp_call does this job)."""
    # A small case: under ASan a large one spends more than the shortest window (1 ms) between
    # its calls on its arrays' shadow memory.
    case = ("lstm", {}, SHAPES[0], np.float64)
    rnnkern.set_thread_runtime("rnnkern")
    try:
        _shrink_then_call(case, serial, delays)
    finally:
        rnnkern.set_thread_runtime("auto")


def _shrink_then_call(case: Any, serial: Any, delays: Any) -> None:
    cell, kw, shape, dtype = case
    run = make_run(*case)
    a = case_arrays(cell, shape, dtype)
    # Packed once: each inference below is one call of the pool (no packing call before it).
    pack = getattr(rnnkern, f"{cell}_pack")(a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], **kw)
    expected = {k[4:]: v for k, v in serial[_id(case)].items() if k.startswith("inf.")}

    def inference() -> dict[str, np.ndarray]:
        out = pack.forward(a["x"], a["h0"], a.get("c0"), lengths=a["lengths"], training=False)
        return {k: v for k, v in out._asdict().items() if isinstance(v, np.ndarray)}

    delays(sync_us=50000, sync_at=1)
    assert_same_bits(run(), serial[_id(case)], "with the team shrunk")
    for _ in range(5):  # on a loaded machine a worker may miss the start: then try again
        # Past the longest contended window (16 ms) and the 50 ms delay of the last call's
        # worker: the next call starts with its team, and the forced delay shrinks it.
        time.sleep(0.08)
        delays(sync_us=50000, sync_at=1)
        before = rnnkern.thread_stats()
        shrunk = inference()
        delays()
        after_shrink = rnnkern.thread_stats()
        following = inference()  # within the contended window (>= 1 ms) of the shrunk call
        after = rnnkern.thread_stats()
        assert_same_bits(shrunk, expected, "with the team shrunk")
        assert_same_bits(following, expected, "starting alone after a shrink")
        if (after_shrink["shrunk"] > before["shrunk"]
                and after["started_alone"] > after_shrink["started_alone"]):
            break
    assert after_shrink["shrunk"] > before["shrunk"]
    assert after["started_alone"] > after_shrink["started_alone"]
    assert after["taken_over"] > after_shrink["taken_over"]


def test_more_threads_than_cpus_means_the_cpus(serial: Any, num_threads: Any) -> None:
    """set_num_threads(1000) on this machine: calls use min(CPUS, 16) threads, same bits."""
    num_threads(1000)
    assert rnnkern.get_num_threads() == min(CPUS, 16)
    assert rnnkern.config()["threads"] == min(CPUS, 16)
    for case in CASES[:3]:
        assert_same_bits(run_all(*case), serial[_id(case)], "with 1000 threads asked for")


@pytest.fixture
def busy_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process spinning on a core for the test's duration."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        assert proc.poll() is None
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("runtime", ["rnnkern", "auto"])
def test_same_bits_beside_a_busy_process(runtime: str, serial: Any,
                                         busy_process: Any) -> None:
    """Every case, three times, with another process spinning on a core."""
    rnnkern.set_thread_runtime(runtime)
    try:
        for _ in range(3):
            for case in CASES:
                assert_same_bits(run_all(*case), serial[_id(case)], "beside a busy process")
    finally:
        rnnkern.set_thread_runtime("auto")


@pytest.mark.parametrize("runtime", ["rnnkern", "openmp", "auto"])
def test_same_bits_with_torchs_pool_active(runtime: str, serial: Any) -> None:
    """PyTorch's OpenMP threads busy with operators in another Python thread (and spinning after
    each), rnnkern on its own pool, on PyTorch's threads, or choosing: same bits."""
    import torch

    torch.mm(torch.ones(64, 256), torch.ones(256, 256))  # loads and starts torch's OpenMP pool
    stop = threading.Event()

    def torch_ops() -> None:
        a, b = torch.randn(64, 256), torch.randn(256, 256)
        while not stop.is_set():
            torch.mm(a, b)

    worker = threading.Thread(target=torch_ops)
    rnnkern.set_thread_runtime(runtime)
    worker.start()
    try:
        for case in CASES:
            assert_same_bits(run_all(*case), serial[_id(case)], f"with torch busy ({runtime})")
    finally:
        stop.set()
        worker.join()
        rnnkern.set_thread_runtime("auto")


def test_thread_runtime_settings() -> None:
    """The runtime names, the errors, and what config() reports."""
    assert rnnkern.thread_runtime() == "auto"
    assert rnnkern.config()["thread_runtime"] == "auto"
    with pytest.raises(ValueError, match="name: expected 'auto', 'rnnkern' or 'openmp'"):
        rnnkern.set_thread_runtime("tbb")
    with pytest.raises(TypeError, match="name: expected a str"):
        rnnkern.set_thread_runtime(1)  # type: ignore[arg-type]
    rnnkern.set_thread_runtime("rnnkern")
    assert rnnkern.thread_runtime() == "rnnkern"
    rnnkern.set_thread_runtime("auto")
    stats = rnnkern.thread_stats()
    assert set(stats) == {"team_calls", "openmp_calls", "taken_over", "shrunk", "joined_late",
                          "started_alone"}
    assert all(isinstance(v, int) and v >= 0 for v in stats.values())


def test_openmp_needs_a_loaded_runtime() -> None:
    """In a process without an OpenMP runtime, "openmp" is refused and "auto" runs rnnkern's pool
    (and never loads one)."""
    code = """
import sys
import numpy as np
import rnnkern
from rnnkern_testing import make_case
try:
    rnnkern.set_thread_runtime("openmp")
except ValueError as e:
    assert "no OpenMP runtime is loaded" in str(e), e
else:
    raise AssertionError("no error")
rnnkern.lstm_forward(**make_case("lstm", 9, 4, 16, 128, np.float32, seed=1))
assert rnnkern.thread_stats()["openmp_calls"] == 0
maps = open("/proc/self/maps").read()
assert "libgomp" not in maps and "libiomp" not in maps, "an OpenMP runtime was loaded"
print("ok")
"""
    tests = os.path.dirname(os.path.abspath(__file__))
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(rnnkern.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg, tests]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]

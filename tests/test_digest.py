"""_core.digests, with which rnnkern.torch tells whether a pack's weights changed (docs/torch.md,
"The operators' cost"): per 4 KiB block of an array's bytes, the pair of sums mod 2^64
sum_i k_i w_i and sum_i k'_i w_i over its 32-bit words w_i (the last block zero-padded), with
keys k, k' in [0, 2^32) drawn once per process (rnnkern/digest.hpp).

"Equal" here is exact: the same bytes on every ISA this CPU has and on 1 or 2 threads, and the
sums' algebra checked exactly (linear in the words, full 64-bit products)."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import rnnkern
from rnnkern import _core

SUPPORTED = rnnkern.config()["supported_isas"]
BLOCK = 4096  # bytes per block
# Around the vector widths (32 and 64 bytes), a word's 4 bytes and the block.
SIZES = [0, 1, 2, 3, 4, 5, 31, 32, 33, 63, 64, 65, 4092, 4095, 4096, 4097, 3 * BLOCK + 7,
         (1 << 20) + 1]


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    isa, threads = rnnkern.config()["isa"], rnnkern.get_num_threads()
    yield
    rnnkern.set_isa(isa)
    rnnkern.set_num_threads(threads)


def words(d: bytes) -> np.ndarray:
    return np.frombuffer(d, np.uint64)


def test_the_same_digests_on_every_isa_and_thread_count() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, n, dtype=np.uint8) for n in SIZES]
    buf = rng.integers(0, 256, 3 * BLOCK + 9, dtype=np.uint8)
    arrays.append(np.frombuffer(buf.tobytes(), np.uint8, offset=1))  # at an odd address
    arrays.append(rng.standard_normal((7, 513)).astype(np.float32))
    arrays.append(rng.standard_normal(1000))  # float64
    want = None
    for isa in SUPPORTED:
        rnnkern.set_isa(isa)
        for threads in (1, 2):
            rnnkern.set_num_threads(threads)
            got = _core.digests(arrays)
            assert [len(d) for d in got] == [16 * -(-a.nbytes // BLOCK) for a in arrays]
            if want is None:
                want = got
            assert got == want, f"{isa}, {threads} threads"


@pytest.mark.parametrize("isa", SUPPORTED)
def test_the_sums_are_linear_with_full_products(isa: str) -> None:
    """d(a + b) = d(a) + d(b) and d(v e_i) = v d(e_i) mod 2^64 (uint32 words, no carry between
    words): every word has its own keys and its whole 32 x 32 -> 64-bit product is summed."""
    rnnkern.set_isa(isa)
    rng = np.random.default_rng(1)
    n = 3 * BLOCK // 4 + 5  # words: three blocks and a partial one
    a = rng.integers(0, 1 << 31, n, dtype=np.uint32)
    b = rng.integers(0, 1 << 31, n, dtype=np.uint32)
    da, db, dab = (words(d) for d in _core.digests([a, b, a + b]))
    np.testing.assert_array_equal(da + db, dab)
    for i in (0, 1, 7, 8, 15, 16, 1023, 1024 + 17, n - 1):
        e = np.zeros(n, np.uint32)
        e[i] = 1
        v = np.uint64(0xFFFFFFFB)
        d1, dv = (words(d) for d in _core.digests([e, e * np.uint32(v)]))
        assert np.count_nonzero(d1) <= 2 and (d1 < (1 << 32)).all()  # its block's two keys
        np.testing.assert_array_equal(d1 * v, dv)


def test_a_flipped_bit_anywhere_changes_the_digest() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(3 * BLOCK // 4 + 3).astype(np.float32)
    base = _core.digests([x])[0]
    flat = x.view(np.uint8)
    places = {0, 1, 2, 3, BLOCK - 1, BLOCK, 2 * BLOCK + 5, flat.size - 1,
              *rng.integers(0, flat.size, 40).tolist()}
    for at in sorted(places):
        for bit in (0, 7):
            y = flat.copy()
            y[at] ^= 1 << bit
            assert _core.digests([y])[0] != base, (at, bit)
    swapped = flat.copy()  # two blocks' contents swapped
    swapped[:BLOCK], swapped[BLOCK:2 * BLOCK] = flat[BLOCK:2 * BLOCK], flat[:BLOCK]
    assert _core.digests([swapped])[0] != base


def test_the_digest_covers_bytes_not_sizes() -> None:
    """The last block is zero-padded: the caller compares shapes and dtypes itself."""
    a = np.array([1, 2, 3], np.uint8)
    assert _core.digests([a])[0] == _core.digests([np.array([1, 2, 3, 0], np.uint8)])[0]
    assert _core.digests([a[:0].copy(), np.zeros(0)]) == [b"", b""]
    assert _core.digests([]) == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.digests([np.zeros((4, 4))[:, 0]])
    with pytest.raises(TypeError, match="list of NumPy arrays"):
        _core.digests([[1.0, 2.0]])

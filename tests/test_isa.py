"""Every instruction set this CPU supports, against the float64 reference.

The kernels are compiled once per ISA (scalar, avx2, avx512) and chosen at run time: the best
one, RNNKERN_ISA at import, or rnnkern.set_isa(name). Each ISA must meet the tolerance policy
(docs/tolerances.md) on a representative subset of the kernel sweep (every cell and GRU form,
hidden sizes around each vector width, both dtypes, with and without lengths/biases/states), be
deterministic, and give the same bits in its fused kernels for any thread count. Every test
restores the ISA that was in use.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_kernels_vs_reference as sweep
from rnnkern_testing import make_case, make_output_grads, rnn_acc_len
from test_errors import assert_same
from test_kernels_vs_reference import OPTIONS, SHAPES, _id, check_vs_reference, compare, run
from test_reliability import CELLS, THREADS_CHILD, run_python

import rnnkern
from rnnkern import reference

SUPPORTED = rnnkern.config()["supported_isas"]
DEFAULT = rnnkern.config()["isa"]
ALL_ISAS = ["scalar", "avx2", "avx512"]
# H = 1, 7, 33, 17, 13: below, between and above the block sizes 2..16 of every ISA and dtype.
ISA_SHAPES = [SHAPES[i] for i in (0, 1, 4, 5, 7)]
ISA_OPTIONS = [OPTIONS[0], OPTIONS[1]]  # everything given / no bias, no h0, random lengths


@pytest.fixture(autouse=True)
def _restore_isa() -> Iterator[None]:
    yield
    rnnkern.set_isa(DEFAULT)


@pytest.fixture(params=SUPPORTED)
def isa(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    rnnkern.set_isa(name)
    assert rnnkern.config()["isa"] == name
    return name


def test_the_default_is_supported() -> None:
    assert SUPPORTED and SUPPORTED[0] == "scalar" and DEFAULT in SUPPORTED
    assert set(SUPPORTED) <= set(ALL_ISAS)


@pytest.mark.parametrize("options", ISA_OPTIONS, ids=_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_id)
@pytest.mark.parametrize("shape", ISA_SHAPES, ids=_id)
@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_isa_matches_reference(isa: str, cell_kw: tuple[str, dict[str, Any]],
                               shape: tuple[int, int, int, int], dtype: Any,
                               options: dict[str, Any]) -> None:
    """The kernel sweep's check (outputs, gradients, padded zeros, inference) on this ISA."""
    sweep.test_cell_matches_reference(cell_kw, shape, dtype, options)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=_id)
@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_isa_threaded_and_repeatable(isa: str, cell_kw: tuple[str, dict[str, Any]],
                                     dtype: Any) -> None:
    """A shape large enough to run on several kernel threads: within the tolerance of the
    reference, and the same bits when called again."""
    cell, kw = cell_kw
    T, B, I, H = 4, 9, 20, 70
    case = make_case(cell, T, B, I, H, dtype, lengths="random", seed=81)
    grads = make_output_grads(cell, T, B, H, dtype, seed=82)
    out, g, _, _ = check_vs_reference(cell, case, grads, kw)
    again_out, again_g = run(rnnkern, cell, case, grads, kw)
    assert_same(again_out, out)
    assert_same(again_g, g)


@pytest.mark.parametrize("cell_kw", CELLS, ids=_id)
def test_cache_crosses_isas(cell_kw: tuple[str, dict[str, Any]]) -> None:
    """A cache made on one ISA serves a backward on another: it holds no ISA-specific layout."""
    cell, kw = cell_kw
    T, B, I, H = 5, 3, 6, 21
    case = make_case(cell, T, B, I, H, np.float64, lengths="random", seed=83)
    grads = make_output_grads(cell, T, B, H, np.float64, seed=84)
    _, ref_g = run(reference, cell, case, grads, kw)
    acc_len = rnn_acc_len(cell, T, B, I, H)
    for made in SUPPORTED:
        rnnkern.set_isa(made)
        cache = getattr(rnnkern, f"{cell}_forward")(**case, **kw).cache
        for used in SUPPORTED:
            rnnkern.set_isa(used)
            g = getattr(rnnkern, f"{cell}_backward")(cache, **grads)
            compare(g, ref_g, np.float64, acc_len)


def test_set_isa_rejects_bad_names() -> None:
    with pytest.raises(TypeError, match="^name:"):
        rnnkern.set_isa(None)
    for bad in ("", "AVX2", "sse4", "avx512 "):
        with pytest.raises(ValueError, match="ISA"):
            rnnkern.set_isa(bad)
        assert rnnkern.config()["isa"] == DEFAULT  # a failed call changes nothing
    for name in ALL_ISAS:
        if name not in SUPPORTED:
            with pytest.raises(ValueError, match="not supported"):
                rnnkern.set_isa(name)


ENV_CHILD = """
    import sys
    import numpy as np
    import rnnkern
    from rnnkern_testing import make_case

    assert rnnkern.config()["isa"] == sys.argv[1], rnnkern.config()
    np.save(sys.argv[2], rnnkern.gru_forward(**make_case("gru", 4, 9, 20, 70, np.float32,
                                                         seed=85)).y)
"""


def test_rnnkern_isa_environment_variable(tmp_path: Path) -> None:
    """RNNKERN_ISA at import selects the ISA: the same bits as set_isa in this process (the same
    default thread count)."""
    case = make_case("gru", 4, 9, 20, 70, np.float32, seed=85)
    for name in SUPPORTED:
        run_python(ENV_CHILD, name, str(tmp_path / f"{name}.npy"), env={"RNNKERN_ISA": name})
        rnnkern.set_isa(name)
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.npy"),
                                      rnnkern.gru_forward(**case).y, strict=True)


def test_unknown_rnnkern_isa_is_a_value_error() -> None:
    """A bad RNNKERN_ISA fails the import with a ValueError naming the variable."""
    code = """
        import pytest
        with pytest.raises(ValueError, match="^RNNKERN_ISA: unknown ISA 'sse9'"):
            import rnnkern
        print("ok")
    """
    assert run_python(code, env={"RNNKERN_ISA": "sse9"}).strip() == "ok"


@pytest.mark.parametrize("name", SUPPORTED)
def test_same_bits_for_any_thread_count(name: str, tmp_path: Path) -> None:
    """As test_reliability's thread sweep on the default ISA, for every ISA: 1 and 3 kernel
    threads give the same bits in every output and gradient."""
    results = []
    for n in (1, 3):
        path = tmp_path / f"{n}.npz"
        run_python(THREADS_CHILD, str(n), str(path), env={"RNNKERN_ISA": name})
        with np.load(path) as data:
            results.append({k: data[k] for k in data.files})
    assert results[0] and results[0].keys() == results[1].keys()
    for key in results[0]:
        np.testing.assert_array_equal(results[1][key], results[0][key], err_msg=key, strict=True)

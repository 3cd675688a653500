"""The cells' traits (cpp/kernels/cells/<cell>.hpp, bound as rnnkern._core.cells()) against what
the kernels and the reference do: the one record Python reads gate counts, ids and cache
contents from must describe the cells as they run."""
from __future__ import annotations

import numpy as np
import pytest
from rnnkern_testing import make_case

import rnnkern
from rnnkern import _cells, _core, reference

TRAITS = _core.cells()


def test_ids_and_names_are_unique_and_dense() -> None:
    assert [c["id"] for c in TRAITS] == list(range(len(TRAITS)))
    assert len({c["name"] for c in TRAITS}) == len(TRAITS)
    assert {c["family"] for c in TRAITS} == {"rnn", "lstm", "gru"}
    for c in TRAITS:
        assert len(c["gate_names"]) == c["gates"], c
        assert 1 <= c["main_gates"] <= c["gates"] and c["phases"] >= 1, c


def test_unknown_cell_id_is_a_value_error() -> None:
    x = np.zeros((1, 1, 1), np.float32)
    w = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="cell: unknown cell id"):
        _core.forward(len(TRAITS), x, None, None, w, w, None, None, None, False)


@pytest.mark.parametrize("cell", TRAITS, ids=lambda c: c["name"])
def test_cache_holds_what_the_traits_say(cell: dict) -> None:
    """Shapes of the training cache's buffers (hs, cs, gates, aux) follow the traits, and the
    cell runs with G = traits' gates blocks of weights, equal to the reference."""
    family = cell["family"]
    kw = ({"nonlinearity": cell["activation"]} if family == "rnn" else
          {"linear_before_reset": cell["name"] == "gru"} if family == "gru" else {})
    T, B, I, H = 3, 2, 4, 5
    case = make_case(family, T=T, B=B, I=I, H=H, dtype=np.float64, seed=3)
    fwd = getattr(rnnkern, f"{family}_forward")
    ref = getattr(reference, f"{family}_forward")
    args = {k: case[k] for k in ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")}
    if cell["cell_state"]:
        args["c0"] = case["c0"]
    got = fwd(**args, training=True, **kw)
    want = ref(**args, **kw)
    np.testing.assert_allclose(got.y, want.y, rtol=1e-10, atol=1e-12)
    hs, cs, gates, aux = got.cache.buffers
    assert hs.shape == (T + 1, B, H)
    assert (cs is not None) == cell["cell_state"]
    assert (gates is not None) == cell["cache_gates"]
    if gates is not None:
        assert gates.shape == (T, B, cell["gates"] * H)
    assert (aux is not None) == bool(cell["aux"])
    assert _cells.GATES[family] == cell["gates"]

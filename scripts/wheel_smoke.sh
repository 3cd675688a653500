#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment, and run a smoke test under every
# ISA this CPU supports (RNNKERN_ISA=scalar|avx2|avx512).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -c "import scikit_build_core, pybind11" 2>/dev/null ||
  python3 -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12"
command -v cmake >/dev/null && command -v ninja >/dev/null || python3 -m pip install -q cmake ninja
# Without build isolation (its requirements must be installed, as .ci/run does) the build reuses
# the objects of an earlier non-isolated build in build/{wheel_tag} (pyproject.toml's build-dir).
pip wheel . --no-deps --no-build-isolation -w "$work/dist" -q
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$work"/dist/rnnkern-*.whl
cd "$work"  # away from the source tree: import the installed wheel
isas=$("$work/venv/bin/python" -c "import rnnkern; print(' '.join(rnnkern.config()['supported_isas']))")
for isa in $isas; do
  RNNKERN_ISA=$isa "$work/venv/bin/python" - <<'PY'
import numpy as np, rnnkern
cfg = rnnkern.config()
rng = np.random.default_rng(0)
T, B, I, H = 7, 3, 5, 19
x = rng.standard_normal((T, B, I))
for cell, G in (("rnn", 1), ("lstm", 4), ("gru", 3)):
    w_ih, w_hh = rng.uniform(-0.3, 0.3, (G * H, I)), rng.uniform(-0.3, 0.3, (G * H, H))
    b = rng.uniform(-0.3, 0.3, G * H)
    args = (x, None) + ((None,) if cell == "lstm" else ()) + (w_ih, w_hh, b, b)
    fast = getattr(rnnkern, cell + "_forward")(*args)
    ref = getattr(rnnkern.reference, cell + "_forward")(*args)
    assert np.allclose(fast[0], ref[0], rtol=1e-10, atol=1e-12), cell
    g_fast = getattr(rnnkern, cell + "_backward")(fast[-1], np.ones_like(fast[0]))
    g_ref = getattr(rnnkern.reference, cell + "_backward")(ref[-1], np.ones_like(ref[0]))
    assert all(np.allclose(a, r, rtol=1e-9, atol=1e-11) for a, r in zip(g_fast, g_ref)), cell
print(f"wheel smoke test passed: isa={cfg['isa']} threads={cfg['threads']} version={cfg['version']}")
PY
done

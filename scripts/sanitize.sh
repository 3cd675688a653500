#!/usr/bin/env bash
# Build rnnkern's C++ core with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# RNNKERN_SANITIZE: halt on the first error) into a temporary directory, and run pytest on it.
#
#   scripts/sanitize.sh                       # the fast subset (below)
#   scripts/sanitize.sh tests -x -q           # any pytest arguments: the whole suite
#
# Nothing is installed and the source tree is not touched: the sanitized module goes into a temp
# copy of python/rnnkern that is put first on PYTHONPATH. The interpreter is not instrumented, so
# libasan is preloaded; leak detection is off (CPython keeps its objects alive at exit).
# Needs g++ (with libasan/libubsan), cmake and pybind11 (pip installs the last two if missing).
# Environment: RNNKERN_SANITIZE_DIR=dir keeps the build there (reused by the next run) instead of
# a temporary directory; CXX=another g++.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
export CXX="${CXX:-g++}"

# The fast subset: every kernel, precision, ISA and thread path, the packs, cells, stacks and the
# PyTorch drop-in (about 3 min of tests; the whole suite took 17 min).
if [ $# -eq 0 ]; then
  set -- tests/test_kernels_vs_reference.py tests/test_errors.py tests/test_isa.py \
    tests/test_threads.py tests/test_bf16.py tests/test_int8.py tests/test_concurrent.py \
    tests/test_lstm_variants.py tests/test_lstm_projection.py tests/test_lstm_layer_norm.py \
    tests/test_packed.py tests/test_cells.py tests/test_cell_traits.py tests/test_nonlinearities.py \
    tests/test_stack.py tests/test_nn.py tests/test_torch_cells.py tests/test_torch_dropin.py \
    tests/test_torch_functional.py tests/test_torch_precision.py tests/test_digest.py -x -q
fi

. "$root/scripts/instrumented_build.sh"
instrumented_build "${RNNKERN_SANITIZE_DIR:-}" rnnkern-sanitize _core sanitized -DRNNKERN_SANITIZE=ON
build="$work/build"
pkg="$work/python"

# A copy of the package with the sanitized module in place of any other build.
rm -rf "$pkg"
mkdir -p "$pkg"
cp -r "$root/python/rnnkern" "$pkg/"
find "$pkg/rnnkern" \( -name '_core*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
cp "$build"/_core*.so "$pkg/rnnkern/"

# libasan first; libstdc++ too, or ASan's __cxa_throw interceptor finds no real __cxa_throw
# (the interpreter does not link libstdc++) and the first C++ exception aborts.
libasan="$("$CXX" -print-file-name=libasan.so)"
libstdcxx="$("$CXX" -print-file-name=libstdc++.so)"
for lib in "$libasan" "$libstdcxx"; do
  [ -f "$lib" ] || { echo "$lib not found for $CXX" >&2; exit 1; }
done
export LD_PRELOAD="$libasan $libstdcxx${LD_PRELOAD:+ $LD_PRELOAD}"
# A sanitizer halts the process at once, so pytest never prints what it captured: ASan writes its
# reports to files (printed below), and pytest runs with --capture=sys so that what goes to file
# descriptor 2 directly (UBSan's reports) reaches the terminal.
reports="$work/reports"
rm -rf "$reports"
mkdir -p "$reports"
export ASAN_OPTIONS="detect_leaks=0:detect_stack_use_after_return=1:allocator_may_return_null=1:halt_on_error=1:log_path=$reports/asan:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"

# Make sure the sanitized module is the one imported.
"$python" - "$pkg" <<'PY'
import sys
import rnnkern
where = rnnkern._core.__file__
assert where.startswith(sys.argv[1]), f"imported {where}, not the sanitized build"
print(f"== rnnkern from {where}: {rnnkern.config()['isa']}, {rnnkern.get_num_threads()} threads")
PY
cd "$root"
echo "== pytest $*"
status=0
"$python" -m pytest -p no:cacheprovider --capture=sys "$@" || status=$?
for f in "$reports"/*; do
  [ -e "$f" ] || continue
  echo "== sanitizer output $(basename "$f")"
  cat "$f"
  # warnings (e.g. an impossible allocation returned as NULL) are printed, errors fail the run
  if grep -q -E "ERROR: |runtime error|CHECK failed" "$f" && [ "$status" -eq 0 ]; then
    status=1
  fi
done
echo "== sanitized run: exit status $status"
exit "$status"

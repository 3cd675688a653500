#!/usr/bin/env bash
# Build rnnkern's C++ core with ThreadSanitizer into a temporary directory and run
# scripts/tsan_driver.cpp on it (every threaded path, then forced take-overs, late joins and
# shrinks) several times; any report fails.
#
#   scripts/tsan.sh          # 3 runs
#   scripts/tsan.sh 10       # 10 runs (races show up by chance: more runs, more chances)
#
# The driver uses the C++ API: CPython with libtsan preloaded crashes at start here, so the
# Python tests cannot run under ThreadSanitizer. rnnkern's own pool only (libgomp is not
# instrumented, so OpenMP runs would report false races). Needs g++ with libtsan, cmake and
# pybind11 (CMakeLists.txt finds it; pip installs the last two if missing).
# Environment: RNNKERN_TSAN_DIR=dir keeps the build there (reused by the next run); CXX=another
# g++. .ci/run runs it with 2 runs; docs/reliability.md has the last results.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-3}"
python="${PYTHON:-python}"
export CXX="${CXX:-g++}"
"$python" -c "import pybind11" 2>/dev/null || "$python" -m pip install -q "pybind11>=2.12"
command -v cmake >/dev/null || "$python" -m pip install -q cmake ninja
if [ -n "${RNNKERN_TSAN_DIR:-}" ]; then
  work="$RNNKERN_TSAN_DIR"
  mkdir -p "$work"
else
  work="$(mktemp -d "${TMPDIR:-/tmp}/rnnkern-tsan.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
fi
no512=()
grep -qw avx512f /proc/cpuinfo 2>/dev/null || no512=(-DRNNKERN_AVX512=OFF)
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
echo "== configuring the ThreadSanitizer build in $work/build"
# RNNKERN_SANITIZE: the kernels without [[gnu::flatten]], which makes instrumented builds slow.
cmake -S "$root" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS=-fsanitize=thread -DRNNKERN_SANITIZE" "${no512[@]}" \
  -DPython_EXECUTABLE="$("$python" -c "import sys; print(sys.executable)")" \
  -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" >"$work/configure.log" || { cat "$work/configure.log"; exit 1; }
echo "== building the core (log: $work/build.log)"
cmake --build "$work/build" --target rnnkern_core -j "$(nproc 2>/dev/null || echo 2)" \
  >"$work/build.log" 2>&1 || { tail -n 60 "$work/build.log"; exit 1; }
"$CXX" -std=gnu++17 -O1 -g -fsanitize=thread -I"$root/cpp/include" "$root/scripts/tsan_driver.cpp" \
  "$work/build/librnnkern_core.a" -lpthread -ldl -o "$work/tsan_driver"
status=0
for i in $(seq 1 "$runs"); do
  echo "== run $i of $runs"
  TSAN_OPTIONS="halt_on_error=1:exitcode=66:${TSAN_OPTIONS:-}" "$work/tsan_driver" || status=$?
  [ "$status" -eq 0 ] || break
done
echo "== ThreadSanitizer: exit status $status"
exit "$status"

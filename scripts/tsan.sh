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
# pybind11 (CMakeLists.txt finds it; pip installs the last two if missing;
# scripts/instrumented_build.sh).
# Environment: RNNKERN_TSAN_DIR=dir keeps the build there (reused by the next run); CXX=another
# g++. .ci/run runs it with 2 runs; docs/reliability.md has the last results.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs="${1:-3}"
python="${PYTHON:-python}"
export CXX="${CXX:-g++}"
. "$root/scripts/instrumented_build.sh"
# RNNKERN_SANITIZE: the kernels without [[gnu::flatten]], which makes instrumented builds slow.
instrumented_build "${RNNKERN_TSAN_DIR:-}" rnnkern-tsan rnnkern_core ThreadSanitizer \
  "-DCMAKE_CXX_FLAGS=-fsanitize=thread -DRNNKERN_SANITIZE"
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

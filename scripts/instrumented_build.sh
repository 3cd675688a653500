# Sourced by scripts/sanitize.sh and scripts/tsan.sh (which set `root` and `python`): the
# instrumented build they share.
#
#   instrumented_build KEEP_DIR TEMP_PREFIX TARGET LABEL CMAKE_ARGS...
#
# Installs the build requirements if missing (pybind11, cmake; normally in pip's isolated build
# env only), sets `work` to KEEP_DIR (kept, reused by the next run) or, when that is empty, to a
# new temporary directory removed at exit, configures rnnkern there (RelWithDebInfo, so that
# reports have file:line; the AVX-512 kernels only where this CPU can run them, as the
# instrumented build is slow) with CMAKE_ARGS, and builds TARGET into "$work/build".
instrumented_build() {
  local keep="$1" prefix="$2" target="$3" label="$4"
  shift 4
  "$python" -c "import pybind11" 2>/dev/null || "$python" -m pip install -q "pybind11>=2.12"
  command -v cmake >/dev/null || "$python" -m pip install -q cmake ninja
  if [ -n "$keep" ]; then
    work="$keep"
    mkdir -p "$work"
  else
    work="$(mktemp -d "${TMPDIR:-/tmp}/$prefix.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
  fi
  local no512=() generator=()
  grep -qw avx512f /proc/cpuinfo 2>/dev/null || no512=(-DRNNKERN_AVX512=OFF)
  command -v ninja >/dev/null && generator=(-G Ninja)
  echo "== configuring the $label build in $work/build"
  cmake -S "$root" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "${no512[@]}" -DPython_EXECUTABLE="$("$python" -c "import sys; print(sys.executable)")" \
    -Dpybind11_DIR="$("$python" -m pybind11 --cmakedir)" "$@" >"$work/configure.log" ||
    { cat "$work/configure.log"; exit 1; }
  echo "== building $target (log: $work/build.log)"
  cmake --build "$work/build" --target "$target" -j "$(nproc 2>/dev/null || echo 2)" \
    >"$work/build.log" 2>&1 || { tail -n 60 "$work/build.log"; exit 1; }
}

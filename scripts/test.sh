#!/usr/bin/env bash
# limarp: the whole check, as CI runs it (README command 2; .ci/run calls this).
#
#   scripts/test.sh
#
# Steps (each prints a header and its time; its output goes to a log under $BUILD/logs and
# is shown when the step fails):
#    1 setup        scripts/setup.sh (Debian packages through sudo when not root; test assets)
#    2 configure    $BUILD: Ninja, Release, CUDA when nvcc is found (ccache is automatic)
#    3 build        everything: library tests, CUDA tests (compiled only), examples, benchmarks
#    4 test         ctest, without the labels cuda (needs a GPU) and heavy
#    5 consumer     cmake --install into $BUILD/install, then tests/consumer built against it
#    6 docs         doxygen Doxyfile into $BUILD/docs; any warning fails
#    7 avx2-build   $BUILD-avx2: -march=x86-64-v3, no CUDA, the SIMD kernel tests (core, ops, quant)
#    8 avx2-test    their ctest (the portable AVX2 path)
#    9 fuzz-build   $BUILD-fuzz with clang++ and LIMARP_FUZZ=ON (skipped without clang++ or target)
#   10 fuzz-run     fuzz_safetensors for $LIMARP_FUZZ_SECONDS seconds on tests/fuzz/corpus
# A failed step fails the run (exit 1) and skips the steps that need it; independent steps
# still run, and a summary table ends the output.
#
# Environment:
#   LIMARP_BUILD_DIR=build      main build tree; the others are <it>-avx2 and <it>-fuzz
#   LIMARP_JOBS=$(nproc)        parallel build and test jobs
#   LIMARP_FUZZ_SECONDS=60      fuzzing time
#   LIMARP_SKIP_SETUP=1         do not run scripts/setup.sh
#   LIMARP_CMAKE_ARGS="..."     extra arguments for the main configure
#   LIMARP_BENCHMARKS=ON        also build the benchmarks (off in this script)
#   LIMARP_VERBOSE=1            show every step's output as it runs
#   LIMARP_LOG_TAIL=60          lines of a failed step's log to show (300 when CI is set)
#   (the GPU tests run on a GPU machine with: ctest --test-dir build -L cuda --output-on-failure)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BUILD="${LIMARP_BUILD_DIR:-build}"
BUILD="${BUILD%/}"
AVX2="$BUILD-avx2"
FUZZ="$BUILD-fuzz"
JOBS="${LIMARP_JOBS:-$(nproc)}"
FUZZ_SECONDS="${LIMARP_FUZZ_SECONDS:-60}"
LOGS="$BUILD/logs"
TAIL="${LIMARP_LOG_TAIL:-$([[ -n "${CI:-}" ]] && echo 300 || echo 60)}"
EXCLUDE_LABELS='^(cuda|heavy)$'
read -r -a EXTRA_CMAKE_ARGS <<<"${LIMARP_CMAKE_ARGS:-}"

mkdir -p "$LOGS"
abs() { [[ "$1" = /* ]] && echo "$1" || echo "$ROOT/$1"; }

# ---- step runner ---------------------------------------------------------------------------
declare -a S_NAME=() S_RESULT=() S_TIME=() S_NOTE=()
declare -A RESULT=()
N_STEPS=10
n=0

now_us() { echo "${EPOCHREALTIME//[.,]/}"; }
fmt_s() { printf '%d.%01ds' $(($1 / 1000000)) $((($1 % 1000000) / 100000)); }

# step NAME NEEDS SHOW DESCRIPTION FUNCTION [ARGS...]
#   NEEDS: a step that must have passed ("-" for none). SHOW: an extended regex of log lines to
#   print when the step passes ("" for none). The function runs in a subshell under `set -e`;
#   exit status 77 means "skipped" and its last output line says why.
step() {
    local name=$1 needs=$2 show=$3 desc=$4
    shift 4
    n=$((n + 1))
    local log
    log="$LOGS/$(printf '%02d' "$n")-$name.log"
    printf '\n==> [%d/%d] %s: %s\n' "$n" "$N_STEPS" "$name" "$desc"
    if [[ "$needs" != - && "${RESULT[$needs]:-}" != PASS ]]; then
        printf '    skipped: needs %s (%s)\n' "$needs" "${RESULT[$needs]:-not run}"
        record "$name" SKIP 0 "needs $needs"
        return 0
    fi
    local t0 rc
    t0=$(now_us)
    set +e
    if [[ "${LIMARP_VERBOSE:-0}" == 1 ]]; then
        ( set -e; "$@" ) 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
    else
        ( set -e; "$@" ) >"$log" 2>&1
        rc=$?
    fi
    set -e
    local dt=$(($(now_us) - t0))
    if ((rc == 0)); then
        if [[ -n "$show" && "${LIMARP_VERBOSE:-0}" != 1 ]]; then
            grep -E -- "$show" "$log" | sed 's/^/    /' || true
        fi
        printf '    ok (%s)\n' "$(fmt_s "$dt")"
        record "$name" PASS "$dt" ""
    elif ((rc == 77)); then
        local why
        why=$(tail -n 1 "$log")
        printf '    skipped: %s (%s)\n' "$why" "$(fmt_s "$dt")"
        record "$name" SKIP "$dt" "$why"
    else
        if [[ "${LIMARP_VERBOSE:-0}" != 1 ]]; then
            printf '    ---- last %s lines of %s ----\n' "$TAIL" "$log"
            tail -n "$TAIL" "$log" | sed 's/^/    | /'
        fi
        printf '    FAILED (exit %d, %s); full log: %s\n' "$rc" "$(fmt_s "$dt")" "$log"
        record "$name" FAIL "$dt" "log: $log"
    fi
}
record() {
    S_NAME+=("$1")
    S_RESULT+=("$2")
    S_TIME+=("$3")
    S_NOTE+=("$4")
    RESULT[$1]=$2
}
summary() {
    local total=$(($(now_us) - T_START)) failed=0 i
    printf '\n==> summary\n'
    for i in "${!S_NAME[@]}"; do
        printf '    %-12s %-5s %8s  %s\n' "${S_NAME[$i]}" "${S_RESULT[$i]}" "$(fmt_s "${S_TIME[$i]}")" "${S_NOTE[$i]}"
        [[ "${S_RESULT[$i]}" == FAIL ]] && failed=$((failed + 1))
    done
    printf '    %-12s %-5s %8s\n' total "" "$(fmt_s "$total")"
    if ((failed)); then
        printf '==> FAILED: %d step(s)\n' "$failed"
        return 1
    fi
    printf '==> all steps passed\n'
}

# cmake -G Ninja, unless the tree was already configured with another generator.
generator_args() {
    if [[ -f "$1/CMakeCache.txt" ]] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$1/CMakeCache.txt"; then
        return 0
    fi
    echo "-G Ninja"
}

# ---- the steps -------------------------------------------------------------------------------
do_setup() { bash scripts/setup.sh; }

# CI builds -O2 (templates compile markedly faster than at -O3; the tests are not timed) and no
# benchmarks (they measure, they do not test): LIMARP_BENCHMARKS=ON builds them too.
RELEASE_FLAGS="-O2 -DNDEBUG"
do_configure() {
    # shellcheck disable=SC2046
    cmake -S . -B "$BUILD" $(generator_args "$BUILD") -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CXX_FLAGS_RELEASE="$RELEASE_FLAGS" -DLIMARP_BUILD_BENCHMARKS="${LIMARP_BENCHMARKS:-OFF}" \
        "${EXTRA_CMAKE_ARGS[@]}"
}

do_build() { cmake --build "$BUILD" -j "$JOBS"; }

# ctest -j runs several test programs on the same cores: their pools sleep at once instead of
# polling for the next job (LIMARP_SPIN_US=0; test_core checks the polling pools on its own).
export LIMARP_SPIN_US="${LIMARP_SPIN_US:-0}"
do_test() { ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" -LE "$EXCLUDE_LABELS"; }

do_consumer() {
    local prefix consumer
    prefix=$(abs "$BUILD/install")
    consumer="$BUILD/consumer"
    rm -rf "$prefix"
    cmake --install "$BUILD" --prefix "$prefix"
    rm -rf "$consumer"
    cmake -S tests/consumer -B "$consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix"
    cmake --build "$consumer"
    "$consumer/limarp_consumer"
}

do_docs() {
    command -v doxygen >/dev/null || { echo "doxygen not found (scripts/setup.sh installs it)"; return 1; }
    local out warnings rc=0
    out=$(abs "$BUILD/docs")
    warnings="$LOGS/doxygen-warnings.txt"
    rm -rf "$out" && mkdir -p "$out"  # doxygen creates only the last folder of OUTPUT_DIRECTORY
    echo "doxygen $(doxygen --version), output $out/html/index.html"
    { cat Doxyfile; echo "OUTPUT_DIRECTORY = $out"; } | doxygen - 2>"$warnings" || rc=$?
    if ((rc != 0)) || [[ -s "$warnings" ]]; then
        cat "$warnings"
        echo "doxygen: $(grep -c . "$warnings") warning line(s), exit $rc: document every public symbol (DESIGN.md)"
        return 1
    fi
    echo "doxygen: no warnings"
}

do_avx2_build() {
    # shellcheck disable=SC2046
    # Only the areas with SIMD kernels: the rest of the library is arch-independent code that
    # the main build already tests.
    cmake -S . -B "$AVX2" $(generator_args "$AVX2") -DCMAKE_BUILD_TYPE=Release -DLIMARP_ARCH=x86-64-v3 \
        -DCMAKE_CXX_FLAGS_RELEASE="$RELEASE_FLAGS" \
        -DLIMARP_CUDA=OFF -DLIMARP_BUILD_EXAMPLES=OFF -DLIMARP_BUILD_BENCHMARKS=OFF
    cmake --build "$AVX2" -j "$JOBS" --target $AVX2_TESTS
}
AVX2_TESTS="test_core test_ops test_quant"
AVX2_LABELS='^(core|ops|quant)$'

do_avx2_test() {
    if [[ "$(uname -m)" == x86_64 ]] && ! grep -qw avx2 /proc/cpuinfo; then
        echo "this CPU has no AVX2: built, not run"
        exit 77
    fi
    ctest --test-dir "$AVX2" --output-on-failure -j "$JOBS" -L "$AVX2_LABELS" -LE "$EXCLUDE_LABELS"
}

do_fuzz_build() {
    if ! command -v clang++ >/dev/null; then
        echo "clang++ not found"
        exit 77
    fi
    if [[ ! -f tests/fuzz/CMakeLists.txt ]]; then
        echo "no tests/fuzz/CMakeLists.txt yet"
        exit 77
    fi
    # shellcheck disable=SC2046
    cmake -S . -B "$FUZZ" $(generator_args "$FUZZ") -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
        -DLIMARP_FUZZ=ON -DLIMARP_CUDA=OFF -DLIMARP_BUILD_EXAMPLES=OFF -DLIMARP_BUILD_BENCHMARKS=OFF
    if ! cmake --build "$FUZZ" --target help | grep -q '^fuzz_safetensors[: ]'; then
        echo "no fuzz_safetensors target (tests/fuzz/) yet"
        exit 77
    fi
    cmake --build "$FUZZ" -j "$JOBS" --target fuzz_safetensors
}

do_fuzz_run() {
    # New inputs go to $FUZZ/corpus (first folder); tests/fuzz/corpus is read as seeds, never written.
    local seeds=()
    [[ -d tests/fuzz/corpus ]] && seeds=(tests/fuzz/corpus)
    mkdir -p "$FUZZ/corpus" "$FUZZ/artifacts"
    "$FUZZ/bin/fuzz_safetensors" -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 \
        -artifact_prefix="$FUZZ/artifacts/" "$FUZZ/corpus" "${seeds[@]}"
}

# ---- run ---------------------------------------------------------------------------------
T_START=$(now_us)
printf '==> limarp scripts/test.sh in %s (build tree %s, %s jobs%s)\n' "$ROOT" "$BUILD" "$JOBS" \
    "${CI:+, CI}"
printf '    %s | %s | %s\n' "$(g++ --version 2>/dev/null | head -n 1 || echo 'no g++')" \
    "$(cmake --version 2>/dev/null | head -n 1 || echo 'no cmake')" \
    "$( (command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]) && echo 'nvcc found' || echo 'no nvcc')"

if [[ "${LIMARP_SKIP_SETUP:-0}" == 1 ]]; then
    n=$((n + 1))
    printf '\n==> [%d/%d] setup: skipped (LIMARP_SKIP_SETUP=1)\n' "$n" "$N_STEPS"
    record setup SKIP 0 "LIMARP_SKIP_SETUP=1"
    RESULT[setup]=PASS
else
    step setup - '^\[setup\]' "scripts/setup.sh (packages, test assets)" do_setup
    if [[ "${RESULT[setup]}" != PASS ]]; then
        summary || exit 1
    fi
fi
step configure - 'limarp: CUDA' "cmake -S . -B $BUILD (Ninja, Release)" do_configure
step build configure '' "cmake --build $BUILD -j $JOBS" do_build
step test build 'tests passed|tests failed|\(Failed\)|\(Timeout\)|Not Run' \
    "ctest --test-dir $BUILD -LE '$EXCLUDE_LABELS'" do_test
step consumer configure 'limarp consumer' "install to $BUILD/install, build and run tests/consumer" do_consumer
step docs - '^doxygen' "doxygen Doxyfile (warnings are errors)" do_docs
step avx2-build - '' "$AVX2: -DLIMARP_ARCH=x86-64-v3, no CUDA, SIMD kernel tests" do_avx2_build
step avx2-test avx2-build 'tests passed|tests failed|\(Failed\)|\(Timeout\)|Not Run' \
    "ctest --test-dir $AVX2 -LE '$EXCLUDE_LABELS'" do_avx2_test
step fuzz-build - '' "$FUZZ: clang++ -DLIMARP_FUZZ=ON, target fuzz_safetensors" do_fuzz_build
step fuzz-run fuzz-build '^Done |stat::number_of_executed_units|stat::new_units_added' \
    "fuzz_safetensors -max_total_time=$FUZZ_SECONDS" do_fuzz_run

summary

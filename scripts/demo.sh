#!/usr/bin/env bash
# limarp demo (README command 1): set up, build the scorer, and score the golden fixture model
# (a tiny random Mistral with Hugging Face's reference loss) with limarp-score.
#
#   scripts/demo.sh                     # the default fixture
#   LIMARP_DEMO_FIXTURE=tests/golden/full_attn_hd scripts/demo.sh
#
# Environment: LIMARP_BUILD_DIR (default build), LIMARP_JOBS (default nproc),
# LIMARP_SKIP_SETUP=1 to skip scripts/setup.sh.
set -euo pipefail

# Fixture folder: config.json + model.safetensors + golden.json (tests/golden/make_golden.py).
FIXTURE="${LIMARP_DEMO_FIXTURE:-tests/golden/swa_long}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="${LIMARP_BUILD_DIR:-build}"
JOBS="${LIMARP_JOBS:-$(nproc)}"
PROGRAMS=(limarp-score)  # the example programs this demo runs

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

if [[ ! -f "$FIXTURE/config.json" || ! -f "$FIXTURE/golden.json" ]]; then
    die "fixture $FIXTURE is missing (needs config.json, *.safetensors and golden.json; see tests/golden/make_golden.py)"
fi

if [[ "${LIMARP_SKIP_SETUP:-0}" != 1 ]]; then
    say "setup (scripts/setup.sh)"
    bash scripts/setup.sh
fi

say "configure $BUILD"
gen=(-G Ninja)
if [[ -f "$BUILD/CMakeCache.txt" ]] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$BUILD/CMakeCache.txt"; then
    gen=()
fi
cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release >/dev/null

say "build ${PROGRAMS[*]}"
for p in "${PROGRAMS[@]}"; do
    cmake --build "$BUILD" --target help | grep -q "^${p}[: ]" ||
        die "the build has no target $p (examples/${p#limarp-}/main.cpp is missing?)"
done
cmake --build "$BUILD" -j "$JOBS" --target "${PROGRAMS[@]}"

# Reads a JSON field of the fixture's golden.json: a list prints comma-separated.
golden() {
    python3 - "$FIXTURE/golden.json" "$1" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))[sys.argv[2]]
print(",".join(map(str, v)) if isinstance(v, list) else v)
PY
}
command -v python3 >/dev/null || die "python3 is needed to read $FIXTURE/golden.json"

# ==== BEGIN demo body ===========================================================================
# Scores the fixture's token ids, shows the most likely next tokens (pieces from the real Mistral
# tokenizer fetched by setup.sh), compares the loss with transformers' value, then does the same
# with the model quantized to int8 at load and with the fixture's PEFT LoRA adapter attached.
IDS="$(golden ids)"
REF_LOSS="$(golden loss)"
TOK=".cache/mistral-tokenizer.model"
TOKARGS=()
[[ -f "$TOK" ]] && TOKARGS=(--tokenizer "$TOK")
say "limarp-score on $FIXTURE ($(tr ',' '\n' <<<"$IDS" | wc -l) tokens, bf16 weights, f32 compute)"
"$BUILD/bin/limarp-score" --model "$FIXTURE" --ids "$IDS" --top 5 "${TOKARGS[@]}"
say "Hugging Face transformers reference loss: $REF_LOSS"
say "the same with int8 weights (LLM.int8()-style, quantized at load)"
"$BUILD/bin/limarp-score" --model "$FIXTURE" --ids "$IDS" --quant int8
if [[ -d "$FIXTURE/adapters/all7" ]]; then
    say "the same with the PEFT LoRA adapter $FIXTURE/adapters/all7 attached"
    "$BUILD/bin/limarp-score" --model "$FIXTURE" --ids "$IDS" --adapter "$FIXTURE/adapters/all7"
    say "PEFT reference loss with the adapter: $(python3 -c "import json;print(json.load(open('$FIXTURE/adapters/all7/ref.json'))['loss'])")"
fi
# ==== END demo body =============================================================================

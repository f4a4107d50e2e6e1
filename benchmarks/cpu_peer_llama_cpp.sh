#!/usr/bin/env bash
# cpu_peer_llama_cpp.sh: llama.cpp (llama-bench) and bench_model_cpu side by side in one invocation,
# on the same random Mistral-7B-shaped Q8_0 weights, the same shapes and thread count; rounds
# alternate the programs (llama.cpp, ours q8_0, ours int8, then the next round in rotated order)
# so that drift (other load, thermal) hits all of them. Prints a table with the ratios ours / llama.cpp.
#
# Usage: benchmarks/cpu_peer_llama_cpp.sh [--layers N (32)] [--prompt P (512)] [--decode D (128)]
#          [--threads T (2)] [--rounds R (2)] [--quants "q8_0 int8"] [--fa on|off (on)] [--depth 0|P (0)]
#          [--output q8_0|bf16 (q8_0)] [--gguf FILE] [--out-dir DIR]
# Programs and files (flags or environment; defaults: this checkout's builds):
#   --llama-bench PATH[,PATH2...]  $LLAMA_BENCH  .cache/llama.cpp/build-native/bin/llama-bench
#                       (scripts/fetch_llama_cpp.sh); several: each runs in every round, named by its build
#                       folder, and the ratios are to the first
#   --ours PATH         $BENCH_MODEL_CPU  build/bin/bench_model_cpu
#   --make-gguf PATH    $BENCH_MAKE_GGUF  next to --ours: bench_make_gguf
#   --tokenizer PATH    $LIMARP_TOKENIZER .cache/mistral-tokenizer.model (scripts/setup.sh)
#   --gguf FILE         $PEER_GGUF        <out-dir>/random-mistral7b-L<N>-<output>.gguf, made by bench_make_gguf
#                                         when missing (7.7 GB at 32 layers, about a minute per 10 layers)
#   --out-dir DIR       $PEER_OUT         .cache/peer (raw JSON of every run, the GGUF, the table)
# On another machine carry llama-bench (an OpenMP build with the libgomp.so.1 next to it:
# build-<variant>-omp/bin/), bench_model_cpu, bench_make_gguf and tokenizer.model; pin with
# `taskset -c 0,1 benchmarks/cpu_peer_llama_cpp.sh ...`.
#
# What is timed. llama.cpp: llama-bench -p P -n D -t T -fa on -r 1 per round (its own warm-up run
# first; pp = P prompt tokens in one batch (ubatch 512) from an empty cache; tg = D tokens one by one
# from an empty cache, or after --depth tokens). Ours: bench_model_cpu --prompt P --decode D (prefill
# of P tokens after a warm-up prefill, then D greedy decode steps after the prompt, i.e. at context
# P..P+D; the logits cross to the host and argmax picks; a bf16 key/value cache, its default for
# int8/q8_0 since session 13, where llama.cpp's is f16). Our lm_head and embeddings are bf16 (262 MB
# each) while the GGUF's are Q8_0 (139 MB) unless --output bf16: at 32 layers 1.6% more bytes per
# decoded token for ours, at 4 layers 11%. Pass --depth P to decode llama.cpp at our context too.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAYERS=32 PROMPT=512 DECODE=128 THREADS=2 ROUNDS=2 QUANTS="q8_0 int8" FA=on DEPTH=0 OUTPUT=q8_0
LLAMA_BENCH="${LLAMA_BENCH:-$ROOT/.cache/llama.cpp/build-native/bin/llama-bench}"
OURS="${BENCH_MODEL_CPU:-$ROOT/build/bin/bench_model_cpu}"
MAKE_GGUF="${BENCH_MAKE_GGUF:-}"
TOKENIZER="${LIMARP_TOKENIZER:-$ROOT/.cache/mistral-tokenizer.model}"
GGUF="${PEER_GGUF:-}"
OUT="${PEER_OUT:-$ROOT/.cache/peer}"
while (($#)); do
  case $1 in
    --layers) LAYERS=$2 ;; --prompt) PROMPT=$2 ;; --decode) DECODE=$2 ;; --threads) THREADS=$2 ;;
    --rounds) ROUNDS=$2 ;; --quants) QUANTS=$2 ;; --fa) FA=$2 ;; --depth) DEPTH=$2 ;; --output) OUTPUT=$2 ;;
    --llama-bench) LLAMA_BENCH=$2 ;; --ours) OURS=$2 ;; --make-gguf) MAKE_GGUF=$2 ;;
    --tokenizer) TOKENIZER=$2 ;; --gguf) GGUF=$2 ;; --out-dir) OUT=$2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "cpu_peer_llama_cpp: unknown option $1 (--help)" >&2; exit 1 ;;
  esac
  shift 2
done
MAKE_GGUF="${MAKE_GGUF:-$(dirname "$OURS")/bench_make_gguf}"
GGUF="${GGUF:-$OUT/random-mistral7b-L$LAYERS-$OUTPUT.gguf}"
log() { printf '[peer] %s\n' "$*" >&2; }
IFS=, read -r -a LLAMAS <<< "$LLAMA_BENCH"
for f in "${LLAMAS[@]}" "$OURS"; do [[ -x $f ]] || { log "not executable: $f"; exit 1; }; done
command -v python3 >/dev/null || { log "python3 is needed for the table"; exit 1; }
mkdir -p "$OUT"

if [[ ! -s $GGUF ]]; then
  [[ -x $MAKE_GGUF ]] || { log "no $GGUF and no bench_make_gguf at $MAKE_GGUF"; exit 1; }
  [[ -f $TOKENIZER ]] || { log "tokenizer.model not found: $TOKENIZER"; exit 1; }
  log "writing $GGUF ($LAYERS layers)"
  "$MAKE_GGUF" --layers "$LAYERS" --tokenizer "$TOKENIZER" --output "$OUTPUT" --out "$GGUF" >&2
fi

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
flags=$(grep -m1 -o -w -E 'avx512f|avx512_vnni|avx512_bf16|amx_int8|avx_vnni|avx2' /proc/cpuinfo |
  sort -u | tr '\n' ' ')
stamp=$(date -u +%Y%m%dT%H%M%SZ)
runs="$OUT/runs-$stamp.jsonl"
log "cpu: $cpu; flags: $flags; affinity: $(taskset -pc $$ 2>/dev/null | sed 's/.*: //')"
log "layers $LAYERS, prompt $PROMPT, decode $DECODE, threads $THREADS, rounds $ROUNDS; raw runs: $runs"

run_llama() { # round index-in-LLAMAS
  local j load bin=${LLAMAS[$2]} name; load=$(cut -d' ' -f1 /proc/loadavg)
  name="llama.cpp $(basename "$(dirname "$(dirname "$bin")")")"
  log "round $1: $name (load $(cut -d' ' -f1-3 /proc/loadavg))"
  # an OpenMP build's libgomp travels next to it (scripts/fetch_llama_cpp.sh copies it there)
  j=$(LD_LIBRARY_PATH="$(dirname "$bin")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$bin" -m "$GGUF" \
    -p "$PROMPT" -n "$DECODE" -t "$THREADS" -fa "$FA" -d "$DEPTH" -r 1 -o json 2>/dev/null)
  python3 -c 'import json,sys
rs = json.loads(sys.argv[2]); out = {"engine": sys.argv[4], "round": int(sys.argv[1]), "load": sys.argv[3]}
for r in rs:
    out["pp" if r["n_gen"] == 0 else "tg"] = r["avg_ts"]
out["build"] = rs[0].get("build_commit", "") + " (" + str(rs[0].get("build_number", "")) + ")"
out["cpu_info"] = rs[0].get("cpu_info", ""); out["type"] = rs[0].get("model_type", "")
print(json.dumps(out))' "$1" "$j" "$load" "$name" | tee -a "$runs" >&2
}
run_ours() { # round quant
  local j load; load=$(cut -d' ' -f1 /proc/loadavg)
  log "round $1: bench_model_cpu --quant $2 (load $(cut -d' ' -f1-3 /proc/loadavg))"
  j=$("$OURS" --layers "$LAYERS" --prompt "$PROMPT" --decode "$DECODE" --threads "$THREADS" --quant "$2" 2>/dev/null)
  python3 -c 'import json,sys
r = json.loads(sys.argv[3])
print(json.dumps({"engine": "limarp " + sys.argv[2], "round": int(sys.argv[1]), "load": sys.argv[4],
                  "pp": r["prefill_tok_s"], "tg": r["decode_tok_s"], "peak_rss_gb": r["peak_rss_gb"]}))' \
    "$1" "$2" "$j" "$load" | tee -a "$runs" >&2
}

engines=(); for i in "${!LLAMAS[@]}"; do engines+=("llama$i"); done; engines+=($QUANTS)
for ((r = 1; r <= ROUNDS; r++)); do
  n=${#engines[@]}
  for ((i = 0; i < n; i++)); do
    e=${engines[$(((i + r - 1) % n))]}
    if [[ $e == llama* ]]; then run_llama "$r" "${e#llama}"; else run_ours "$r" "$e"; fi
  done
done

python3 - "$runs" "$LAYERS" "$PROMPT" "$DECODE" "$THREADS" "$FA" "$DEPTH" "$OUTPUT" <<'EOF' | tee "$OUT/table-$stamp.md"
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
layers, prompt, decode, threads, fa, depth, output = sys.argv[2:9]
by = {}
for r in runs:
    by.setdefault(r["engine"], []).append(r)
ll = next(v for k, v in by.items() if k.startswith("llama.cpp"))
med = lambda rs, k: statistics.median(x[k] for x in rs)
lpp, ltg = med(ll, "pp"), med(ll, "tg")
loads = [float(r["load"]) for r in runs]
print(f"llama.cpp {ll[0]['build']} ({ll[0]['cpu_info']}), model {ll[0]['type']}, -fa {fa}, -d {depth}, "
      f"output {output}; {layers} layers, {threads} threads, median of {len(ll)} rounds; "
      f"1-min load average at the runs' starts {min(loads):.2f}-{max(loads):.2f}")
print()
print(f"| engine | pp{prompt} tok/s | tg{decode} tok/s | pp ratio | tg ratio | rounds (pp / tg) |")
print("| --- | ---: | ---: | ---: | ---: | --- |")
fmt = lambda rs, k: ", ".join(f"{x[k]:.2f}" for x in rs)
for e, rs in by.items():
    pp, tg = med(rs, "pp"), med(rs, "tg")
    print(f"| {e} | {pp:.2f} | {tg:.2f} | {pp / lpp:.2f} | {tg / ltg:.2f} | {fmt(rs, 'pp')} / {fmt(rs, 'tg')} |")
EOF

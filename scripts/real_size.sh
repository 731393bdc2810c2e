#!/usr/bin/env bash
# The whole osstune pipeline at the real gpt-oss-20b size on one ~24 GB CPU machine, with the
# wall time and peak RSS of every stage. Run by hand (CI never runs it); at 24 layers it takes
# many minutes and most of the machine's memory and ~40 GB of disk.
#
#   cargo build --release
#   scripts/real_size.sh [WORKDIR]              # default WORKDIR: runs/real-size
#   LAYERS=2 scripts/real_size.sh /tmp/rs2      # a 2-layer real-width slice: a few minutes
#
# Environment: LAYERS (default 24: the whole model), OSSTUNE (default target/release/osstune),
# THREADS (default: all cores), GEN_TOKENS (default 32).
#
# Stages (each a plain osstune command; WORKDIR is replaced, except the data it converts):
#   1. init-tiny --preset gpt-oss-20b --layers $LAYERS   random weights, release layout
#                                                        (bf16, MXFP4 experts, sharded)
#   2. generate, 32 tokens, greedy, from the base
#   3. data convert of 8 short chat records (OpenAI messages JSONL written here: the bundled
#      example sessions are all longer than 256 tokens) into 254-255-token samples, 6 train /
#      2 valid
#   4. train --plan (the predicted peak, written to WORKDIR/plan.txt), then train 2 steps:
#      micro-batch 1 × 256 tokens, every target (q/k/v/o, router, expert gate/up/down),
#      Muon + AdamW, configs/fable5.toml with f32 compute and activation checkpointing, no
#      validation pass
#   5. merge --format hf-mxfp4 and merge --format mlx-mxfp4
#   6. generate, 32 tokens, from each merged checkpoint
#
# Each stage runs under `/usr/bin/time -v` (else /proc polling of the process's VmHWM); the
# table is printed at the end and written to WORKDIR/real_size.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-runs/real-size}"
LAYERS="${LAYERS:-24}"
OSSTUNE="${OSSTUNE:-$ROOT/target/release/osstune}"
GEN_TOKENS="${GEN_TOKENS:-32}"
THREADS="${THREADS:-$(nproc)}"
export RAYON_NUM_THREADS="$THREADS"

[ -x "$OSSTUNE" ] || { echo "no osstune binary at $OSSTUNE (cargo build --release)" >&2; exit 1; }
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
BASE="$WORK/base" DATA="$WORK/data" ADAPTERS="$WORK/adapters"
HF="$WORK/merged-hf-mxfp4" MLX="$WORK/merged-mlx-mxfp4" LOGS="$WORK/logs"
rm -rf "$BASE" "$ADAPTERS" "$HF" "$MLX" "$LOGS" "$DATA"
mkdir -p "$LOGS"

ROWS=()
# stage NAME CMD...: runs CMD, logs to LOGS/NAME.log, appends "| name | wall | peak RSS |".
stage() {
  local name="$1"; shift
  local log="$LOGS/$name.log" tv="$LOGS/$name.time"
  echo "=== $name: $*"
  local wall rss rc=0
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -v -o "$tv" "$@" >"$log" 2>&1 || rc=$?
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$tv" |
      awk -F: '{ if (NF == 3) print $1*3600 + $2*60 + $3; else print $1*60 + $2 }')
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv")
  else
    local t0 peak=0 pid v
    t0=$(date +%s.%N)
    "$@" >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      v=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      [ -n "$v" ] && [ "$v" -gt "$peak" ] && peak=$v
      sleep 0.2
    done
    wait "$pid" || rc=$?
    wall=$(echo "$(date +%s.%N) - $t0" | bc)
    rss=$peak
  fi
  tail -n 3 "$log" | sed 's/^/    /'
  if [ "$rc" -ne 0 ]; then
    echo "stage $name failed (exit $rc); full log: $log" >&2
    exit "$rc"
  fi
  ROWS+=("| $name | $(printf '%.1f' "$wall") | $(awk -v k="$rss" 'BEGIN {printf "%.2f", k / 1048576}') |")
}

GEN=(--temperature 0 --max-tokens "$GEN_TOKENS" --raw "<|start|>user<|message|>List the files and explain the build script.<|end|><|start|>assistant")
TRAIN=(train --config "$ROOT/configs/fable5.toml" --model "$BASE" --data "$DATA" --out "$ADAPTERS"
  --steps 2 --threads "$THREADS" --quiet
  --set 'model.dtype="f32"' --set train.micro_batch=1 --set train.grad_accum=1
  --set data.max_seq_len=256 --set train.val_every=0 --set train.val_samples=0 --set train.save_every=0
  --set train.activation_checkpointing=true)

stage "init-tiny ($LAYERS layers)" "$OSSTUNE" init-tiny --preset gpt-oss-20b --layers "$LAYERS" --out "$BASE"
stage "generate base" "$OSSTUNE" generate --model "$BASE" "${GEN[@]}"
# 8 records of one user question and a ~170-word answer: 254-255 tokens each in Harmony.
CHAT="$WORK/chat.jsonl"
W=(the build script compiles the kernels then links the crate and runs the tests on every target)
: >"$CHAT"
for k in 0 1 2 3 4 5 6 7; do
  reply=""
  for j in $(seq 0 169); do reply+="${W[$(((j + k) % ${#W[@]}))]} "; done
  printf '{"messages":[{"role":"user","content":"Question %d: explain what the build script of this repository does."},{"role":"assistant","content":"%s"}]}\n' \
    "$k" "${reply% }" >>"$CHAT"
done
stage "data convert" "$OSSTUNE" data convert "$CHAT" --out "$DATA" --max-seq-len 256 --valid-fraction 0.25
"$OSSTUNE" "${TRAIN[@]}" --plan | tee "$WORK/plan.txt"
stage "train 2 steps (B1xT256)" "$OSSTUNE" "${TRAIN[@]}"
stage "merge hf-mxfp4" "$OSSTUNE" merge --model "$BASE" --adapter "$ADAPTERS" --out "$HF" --format hf-mxfp4 --quiet
stage "merge mlx-mxfp4" "$OSSTUNE" merge --model "$BASE" --adapter "$ADAPTERS" --out "$MLX" --format mlx-mxfp4 --quiet
stage "generate hf-mxfp4" "$OSSTUNE" generate --model "$HF" "${GEN[@]}"
stage "generate mlx-mxfp4" "$OSSTUNE" generate --model "$MLX" "${GEN[@]}"

{
  echo "# osstune at real size: gpt-oss-20b shapes, $LAYERS layers"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, $THREADS threads, $("$OSSTUNE" --version 2>/dev/null || echo osstune)"
  echo
  echo "| stage | wall s | peak RSS GiB |"
  echo "|---|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "train --plan predicted: $(grep -iE 'total|peak' "$WORK/plan.txt" | tail -n 1 | tr -s ' ' | sed 's/^ //')"
} >"$WORK/real_size.md"
echo
cat "$WORK/real_size.md"

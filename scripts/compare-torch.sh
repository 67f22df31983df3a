#!/usr/bin/env bash
# The host against PyTorch eager on the same model shape, alternating runs so
# both see the same machine state; prints each pair and the median ratio.
#
# usage: scripts/compare-torch.sh [PAIRS] [TRACK]
#   PYTHON   a python with torch and numpy (default: python3); e.g.
#            python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
#            (~3 GB with its CUDA wheels; never needed by the tests or CI)
#   THREADS  threads for both sides (default 2)
# The shape comes from the track; torch_ref.py (a copy of the shared reference
# script) builds the same GPT-2 (tied head, llm.c init, AdamW) and times 10 steps
# after 2 warm-up steps; the host's side is `speedrun bench throughput` (median
# of 10 after 2).
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-3}
track=${2:-cpu}
py=${PYTHON:-python3}
export THREADS=${THREADS:-2} RAYON_NUM_THREADS=${THREADS:-2}
cargo build --release --quiet
bin=target/release/speedrun
shape=$("$py" -c '
import sys, tomllib
t = tomllib.load(open(sys.argv[1], "rb"))
m = t["model"]
print(m["layers"], m["width"], m["heads"], m["seq_len"], t["train"]["batch_tokens"] // m["seq_len"], m["vocab"])' "tracks/$track.toml")
echo "track $track: L D H T B V = $shape, $THREADS threads"
ratios=()
for i in $(seq "$pairs"); do
  ours=$($bin bench throughput --track "$track" --steps 10 --json | "$py" -c 'import json,sys; print(round(json.load(sys.stdin)["tokens_per_s"]))')
  # shellcheck disable=SC2086
  theirs=$("$py" scripts/torch_ref.py $shape 10 | sed -E 's/.*tok\/s=([0-9.]+).*/\1/')
  ratio=$("$py" -c "print(f'{$ours / $theirs:.3f}')")
  ratios+=("$ratio")
  echo "pair $i: speedrun $ours tok/s, pytorch $theirs tok/s, ratio $ratio"
done
"$py" -c "import statistics, sys; print('median ratio (speedrun / pytorch tokens/s):', statistics.median(map(float, sys.argv[1:])))" "${ratios[@]}"

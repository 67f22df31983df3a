#!/usr/bin/env bash
# Calibrates a track's target: trains the reference for seeds 1..N at the track's
# full budget and prints each run's final validation loss and training time, then
# the median loss (the value the track's `target.val_loss` is set to).
# usage: scripts/calibrate.sh [TRACK] [SEEDS]      (default: cpu 3)
set -euo pipefail
cd "$(dirname "$0")/.."
track=${1:-cpu}
seeds=${2:-3}
cargo build --release --quiet
out=runs/calibrate-$track-$(date -u +%Y%m%dT%H%M%SZ)
losses=()
for seed in $(seq 1 "$seeds"); do
  ./target/release/speedrun run --track "$track" --seed "$seed" --out "$out/seed$seed" --quiet >/dev/null
  loss=$(grep -o '"final_val_loss": [0-9.]*' "$out/seed$seed/summary.json" | awk '{print $2}')
  time=$(grep -o '"train_time_s": [0-9.]*' "$out/seed$seed/summary.json" | awk '{print $2}')
  echo "seed $seed: final validation loss $loss, training time ${time}s"
  losses+=("$loss")
done
printf '%s\n' "${losses[@]}" | sort -g | awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "median final validation loss over %d seeds: %.4f\n", NR, m}'

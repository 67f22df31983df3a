#!/usr/bin/env bash
# Rebuilds the cpu techniques table (README, "The cpu records table") from
# scratch: the reference's full-budget runs on seeds 1-5, then one bench per row,
# each adding one technique to the previous row's stack, on a shortened run (the
# speedrun's way: a record trains fewer steps), against those stored reference
# runs. Then prints the table. About 2 hours on 2 cores; run it on a quiet
# machine (a compile beside it slows the steps it times by up to 2x).
#
#   scripts/records-cpu.sh [DB]      (default records/cpu.db; appends to it)
set -euo pipefail
cd "$(dirname "$0")/.."
db=${1:-records/cpu.db}
cargo build --release --quiet
bin=target/release/speedrun
seeds=1,2,3,4,5
for s in ${seeds//,/ }; do
  "$bin" run --track cpu --seed "$s" --db "$db" --quiet
done
row() { # STEPS LABEL PLUGIN-ARGS...
  local steps=$1 label=$2; shift 2
  "$bin" bench --track cpu --seed-list "$seeds" --steps "$steps" --baseline-steps 320 \
    --baseline-stored --db "$db" --label "$label" --quiet "$@"
}
muon=(--plugin plugins/muon)
wsd=("${muon[@]}" --plugin plugins/wsd-schedule)
rotary=("${wsd[@]}" --plugin plugins/rotary)
qk=("${rotary[@]}" --plugin-config 'rotary={"qk_norm": true}')
softcap=("${qk[@]}" --plugin plugins/softcap)
row 160 "muon" "${muon[@]}"
row 140 "+ wsd-schedule" "${wsd[@]}"
row 100 "+ rotary" "${rotary[@]}"
row 100 "+ qk-norm" "${qk[@]}"
row 100 "+ softcap" "${softcap[@]}"
row 100 "+ untied-head" "${softcap[@]}" --plugin plugins/untied-head
"$bin" ladder --track cpu --db "$db" --format markdown

#!/usr/bin/env bash
# The GPU check, in one call of under 10 minutes on a machine with an NVIDIA GPU
# and PyTorch (the device tool's machine: one H200, PyTorch 2.11 cu130). Build the
# binary here first (scripts/build-cuda.sh), then, from the device tool:
#
#   run(command="bash scripts/device-check.sh", carry=["target/cuda/release/speedrun.gz"], timeout_s=580)
#
# 1. every fused kernel on the GPU against its CPU kernel (`speedrun kernels check`);
# 2. GPT-2 124M training throughput, 16 x 1024 tokens per step (`bench throughput`),
#    in the track's bf16 autocast and in f32;
# 3. the same model and batch in PyTorch eager (scripts/torch_ref.py): bf16 autocast,
#    f32 and TF32;
# 4. 200 verified training steps on the shipped GPT-2 BPE slice (`speedrun run`);
# 5. a device-memory budget refused with the phase named;
# 6. NCCL data parallelism at world size 1 (`--ranks 1`) against the plain run;
# then one table, last. Everything it wrote is under $OUT (or /tmp/device-check).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/device-check}
mkdir -p "$out"
py=${PYTHON:-python3}
gz=${SPEEDRUN_GZ:-target/cuda/release/speedrun.gz}
bin=/tmp/speedrun-cuda
gunzip -c "$gz" > "$bin" && chmod +x "$bin" || { echo "no binary at $gz (build it with scripts/build-cuda.sh)"; exit 1; }

# The CUDA libraries the binary links against, from the PyTorch install's wheels.
nv=$("$py" -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null)
libdirs=$(find "$nv" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
if ldd "$bin" | grep -q "not found"; then
  echo "missing run-time libraries:"; ldd "$bin" | grep "not found"; exit 1
fi
export SPEEDRUN_LOG=${SPEEDRUN_LOG:-warn}

step() { echo; echo "== $1"; }

step "1. kernels against the CPU"
timeout 120 "$bin" kernels check --device cuda --json > "$out/kernels.json" 2> "$out/kernels.err"
echo "exit $?"; tail -3 "$out/kernels.err"

step "2. speedrun throughput, GPT-2 124M, 16 x 1024 (bf16 autocast, then f32)"
timeout 150 "$bin" bench throughput --track gpt2-gpu-check --device cuda --steps 10 --warmup 3 --json \
  > "$out/throughput.json" 2> "$out/throughput.err"
echo "exit $?"; tail -3 "$out/throughput.err"
# The f32 twin of the track, beside it so its data paths resolve the same way.
trap 'rm -f tracks/gpt2-gpu-check-f32.toml' EXIT
sed -e 's/^precision = "bf16".*/precision = "f32"/' -e 's/^name = "gpt2-gpu-check"/name = "gpt2-gpu-check-f32"/' \
  tracks/gpt2-gpu-check.toml > tracks/gpt2-gpu-check-f32.toml
timeout 90 "$bin" bench throughput --track gpt2-gpu-check-f32 --device cuda --steps 5 --warmup 2 --json \
  > "$out/throughput-f32.json" 2> "$out/throughput-f32.err"
echo "exit $?"; tail -3 "$out/throughput-f32.err"

step "3. PyTorch eager, same model and batch"
DEVICE=cuda BF16=1 timeout 60 "$py" scripts/torch_ref.py 12 768 12 1024 16 50304 10 | tee "$out/torch-bf16.txt"
DEVICE=cuda timeout 90 "$py" scripts/torch_ref.py 12 768 12 1024 16 50304 10 | tee "$out/torch-f32.txt"
DEVICE=cuda TF32=1 timeout 60 "$py" scripts/torch_ref.py 12 768 12 1024 16 50304 10 | tee "$out/torch-tf32.txt"

step "4. 200 verified steps"
timeout 200 "$bin" run --track gpt2-gpu-check --device cuda --steps 200 --quiet \
  --out "$out/run" --db "$out/runs.db" > "$out/run.txt" 2> "$out/run.err"
echo "exit $?"; tail -20 "$out/run.txt"; tail -3 "$out/run.err"

step "5. a memory budget the model cannot fit"
timeout 60 "$bin" run --track gpt2-gpu-check --device cuda --steps 2 --quiet --memory-budget 1GiB \
  --out "$out/budget" --db "$out/runs.db" > "$out/budget.txt" 2>&1
echo "exit $? (1 expected)"; grep -o "device memory budget exceeded[^;]*" "$out/budget.txt" | head -1

step "6. NCCL at world size 1 against the single process (20 steps each)"
timeout 90 "$bin" run --track gpt2-gpu-check --device cuda --steps 20 --quiet \
  --out "$out/single20" --db "$out/runs.db" > "$out/single20.txt" 2>&1
echo "exit $?"
timeout 120 "$bin" run --track gpt2-gpu-check --device cuda --steps 20 --quiet --ranks 1 \
  --out "$out/nccl1" --db "$out/runs.db" > "$out/nccl1.txt" 2>&1
echo "exit $?"; tail -5 "$out/nccl1.txt"

step "table"
"$py" scripts/device_table.py "$out"

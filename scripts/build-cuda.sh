#!/usr/bin/env bash
# Builds `speedrun` with the `cuda` feature on a machine with no GPU and no CUDA
# install: NVIDIA's CUDA 13.0 wheels from PyPI form the toolkit (nvcc for candle's
# kernels, the headers, cuBLAS/cuRAND/NVRTC to link against), and a link-time-only
# libcuda.so stub stands in for the driver.
#
#   scripts/build-cuda.sh            # -> target/cuda/release/speedrun (+ .gz)
#
# Environment: SPEEDRUN_CUDA_VENV (default target/cuda-toolkit), CUDA_COMPUTE_CAP
# (default 90: Hopper), PYTHON (default python3), CARGO_TARGET_DIR (default
# target/cuda, kept apart from the CPU build's target so neither rebuilds the other).
#
# At run time the binary needs the real driver (libcuda.so.1) and libcublas.so.13,
# libcublasLt.so.13, libcudart.so.13, libcurand.so.10, libnvrtc.so.13, libnccl.so.2 — e.g. from a
# PyTorch cu130 install's site-packages/nvidia/cu13/lib (see scripts/device-check.sh).
# The stub is written under the target directory, passed to the linker only, and
# never put on a run-time path: a binary that found it at run time would fail on
# its first driver call instead of saying there is no driver.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${SPEEDRUN_CUDA_VENV:-$root/target/cuda-toolkit}
python=${PYTHON:-python3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}

wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35 nvidia-cuda-cccl==13.0.85 nvidia-nccl-cu13==2.32.3
)
if [[ ! -x $venv/bin/pip ]]; then
  echo "build-cuda: installing the CUDA 13.0 toolkit wheels into $venv (~450 MB)" >&2
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet "${wheels[@]}"

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export CUDA_HOME=$site/nvidia/cu13
[[ -x $CUDA_HOME/bin/nvcc ]] || { echo "build-cuda: no nvcc under $CUDA_HOME" >&2; exit 1; }
export PATH=$CUDA_HOME/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# nvcc's own tools (cicc, ptxas's libdevice) live under nvvm/.
export LD_LIBRARY_PATH=$CUDA_HOME/nvvm/lib64:$CUDA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# The wheels ship only versioned sonames; the linker's -lcublas wants lib*.so.
nccl_lib=$site/nvidia/nccl/lib
for lib in "$CUDA_HOME"/lib/lib*.so.[0-9]* "$nccl_lib"/libnccl.so.[0-9]*; do
  dir=$(dirname "$lib") base=$(basename "$lib")
  unversioned=${base%%.so.*}.so
  [[ -e $dir/$unversioned ]] || ln -s "$base" "$dir/$unversioned"
done

# The driver stub: every cu* entry point cudarc's driver bindings declare, as an
# empty function in a library whose soname is the real driver's, so the binary
# records a dependency on libcuda.so.1 and the real driver satisfies it at run time.
stub=$CARGO_TARGET_DIR/libcuda-stub
mkdir -p "$stub"
cargo fetch --quiet
cudarc_src=$(cargo metadata --format-version 1 --features cuda --manifest-path host/Cargo.toml 2>/dev/null \
  | "$venv/bin/python" -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')
grep -ohE '\bfn cu[A-Za-z0-9_]+\(' "$cudarc_src"/src/driver/sys/mod.rs \
  | sed -E 's/^fn (.*)\($/void \1(void) {}/' | sort -u > "$stub/stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"
echo "build-cuda: driver stub with $(wc -l < "$stub/stub.c") symbols (link time only)" >&2

export RUSTFLAGS="${RUSTFLAGS:-} -L native=$stub -L native=$CUDA_HOME/lib -L native=$nccl_lib"
# `nccl` implies `cuda`: several GPUs through NCCL (`run --ranks N --device cuda`).
cargo build --release --features nccl -p speedrun
bin=$CARGO_TARGET_DIR/release/speedrun
# What travels to a GPU machine: the binary without its line tables, gzipped.
strip -o "$bin.stripped" "$bin"
gzip -c "$bin.stripped" > "$bin.gz"
echo "build-cuda: $bin ($(du -h "$bin" | cut -f1); stripped and gzipped $(du -h "$bin.gz" | cut -f1): $bin.gz)" >&2
echo "build-cuda: run-time libraries it needs:" >&2
readelf -d "$bin" | grep NEEDED | grep -E 'cuda|cublas|curand|nvrtc|nccl' >&2
echo "build-cuda: NCCL entry points it calls (any NCCL 2.x has them):" $(nm -D --undefined-only "$bin" | grep -o 'nccl[A-Za-z]*' | sort -u) >&2

#!/usr/bin/env bash
# Builds the CUDA kernels (crates/cuda/kernels/*.cu) into crates/cuda/kernels/gptoss.fatbin,
# which the gptoss-cuda crate embeds: SASS for sm_80, sm_86, sm_89 and sm_90a, and PTX
# (compute_80) that newer GPUs compile at load. The fatbin is committed, so building the
# workspace never needs nvcc; CI reruns this script and fails if the result differs
# (`--check`). nvcc's output is byte-identical from run to run.
#
# The compiler is NVIDIA's pip wheels, pinned to CUDA 13.0 (the oldest driver we target, 580,
# JITs PTX up to ISA 9.0; newer nvcc emits newer PTX). They are installed into
# target/cuda-toolchain unless NVCC names a compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

out=crates/cuda/kernels/gptoss.fatbin
check=0
if [ "${1:-}" = "--check" ]; then check=1; fi

if [ -z "${NVCC:-}" ]; then
    venv=target/cuda-toolchain
    NVCC=$venv/lib/python3*/site-packages/nvidia/cu13/bin/nvcc
    # shellcheck disable=SC2086
    if ! ls $NVCC >/dev/null 2>&1; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
            "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" \
            "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
    fi
    # shellcheck disable=SC2086
    NVCC=$(ls $NVCC)
fi

flags=(-O3 -std=c++17 -Xptxas -O3 --fatbin
    -gencode arch=compute_80,code=sm_80
    -gencode arch=compute_86,code=sm_86
    -gencode arch=compute_89,code=sm_89
    -gencode arch=compute_90a,code=sm_90a
    -gencode arch=compute_80,code=compute_80)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$NVCC" "${flags[@]}" -o "$tmp/gptoss.fatbin" crates/cuda/kernels/gptoss.cu

if [ "$check" = 1 ]; then
    if ! cmp -s "$tmp/gptoss.fatbin" "$out"; then
        echo "error: $out is stale: run tools/build-cuda-kernels.sh and commit the result" >&2
        exit 1
    fi
    echo "$out is up to date"
else
    cp "$tmp/gptoss.fatbin" "$out"
    echo "wrote $out ($(wc -c <"$out") bytes)"
fi

#!/usr/bin/env bash
# gptoss beside llama.cpp on the same random 20b-shape weights, on this CPU:
#   tools/llama-cpp/side-by-side.sh [SYNTH_DIR] [WORK_DIR]
# Fetches llama.cpp as vendored by llama-cpp-python's sdist on PyPI (the machines reach PyPI,
# not GitHub), builds llama-bench for AVX2 only (every AVX-512 option off; set LLAMA_CMAKE to
# change), converts the synth checkpoint with llama.cpp's own converter (MXFP4 experts, bf16
# dense; needs torch, which a plain `pip install torch` makes importable by pulling the CUDA
# libraries from PyPI), then runs the two benches one after another, twice, so neighbouring
# runs compare on a VM whose speed drifts. Needs target/release/gptoss, python3, a C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
synth=${1:-/tmp/g20}
work=${2:-/tmp/llama-cpp}
version=0.3.36 # vendors ggml-org/llama.cpp@0c1e57098
fixture=$root/fixtures/tiny/gguf/tiny-mxfp4.gguf
gptoss=${GPTOSS:-$root/target/release/gptoss}
mkdir -p "$work"
cd "$work"
[ -d venv ] || python3 -m venv venv
. venv/bin/activate
src=$work/llama_cpp_python-$version/vendor/llama.cpp
if [ ! -d "$src" ]; then
    url=$(curl -sf https://pypi.org/simple/llama-cpp-python/ | grep -o "https://[^\"#]*llama_cpp_python-$version.tar.gz" | head -1)
    curl -sfL -o lcp.tar.gz "$url"
    tar xzf lcp.tar.gz
fi
if [ ! -x "$src/build/bin/llama-bench" ]; then
    pip install -q cmake ninja
    cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        ${LLAMA_CMAKE:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF}
    ninja -C "$src/build" llama-bench
fi
if [ ! -f g20.gguf ]; then
    pip install -q torch==2.11.0 "numpy~=2.2.6" "sentencepiece>=0.1.98,<0.3.0" transformers==4.57.6 \
        "protobuf>=4.21.0,<5.0.0" "$src/gguf-py"
    python "$root/tools/llama-cpp/convert.py" "$src" "$fixture" "$synth" --outtype bf16 --outfile g20.gguf
fi
for _ in 1 2; do
    echo "== gptoss"
    "$gptoss" --device cpu --threads 2 bench "$synth" -p 512 -n 64 -r 2
    echo "== llama.cpp"
    "$src/build/bin/llama-bench" -m g20.gguf -t 2 -p 512 -n 64 -r 2
done

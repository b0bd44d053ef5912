#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU (README, "GPU"): the device
# test binary section by section (each in its own process, so a fault cannot take the
# others down), then `gptoss bench` at the 20b and 120b shapes with random weights made on
# the device. Binaries come from a CPU machine:
#
#   cargo build --release -p gptoss && cargo test --release -p gptoss-cuda --no-run
#   tools/gpu-check.sh --stage        # copies them into .gpu/
#   tools/gpu-check.sh                # on the GPU machine
#
# Prints every table, then the totals; writes everything to $OUT (or .gpu/out) as well.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--stage" ]; then
    mkdir -p .gpu
    cp target/release/gptoss .gpu/gptoss
    dev=$(ls -t target/release/deps/device-* | grep -v '\.d$' | head -1)
    cp "$dev" .gpu/device
    strip .gpu/gptoss .gpu/device 2>/dev/null || true
    grep -qx '.gpu' .git/info/exclude 2>/dev/null || echo '.gpu' >>.git/info/exclude
    ls -la .gpu
    exit 0
fi

out=${OUT:-.gpu/out}
mkdir -p "$out"
log="$out/gpu-check.txt"
: >"$log"
say() { echo "$@" | tee -a "$log"; }
passed=0
failed=0

nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 | tee -a "$log"

# Seconds each part may take at most (a hang must not eat the GPU time of the others).
declare -A limit=([kernels]=60 [tiny]=60 [speed-20b]=75 [speed-120b]=90)
for section in ${SECTIONS:-kernels tiny speed-20b speed-120b}; do
    say ""
    say "## device $section"
    timeout "${limit[$section]:-60}" .gpu/device "$section" >"$out/device-$section.txt" 2>&1
    rc=$?
    cat "$out/device-$section.txt" | tee -a "$log" >/dev/null
    cat "$out/device-$section.txt"
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out/device-$section.txt" | tail -1)
    if [ -n "$line" ]; then
        passed=$((passed + $(echo "$line" | cut -d' ' -f1)))
        failed=$((failed + $(echo "$line" | cut -d' ' -f3)))
    else
        say "device $section: no summary (exit $rc)"
        failed=$((failed + 1))
    fi
done

run_bench() {
    local secs=$1
    shift
    say ""
    say "## gptoss --device cuda bench $*"
    if timeout "$secs" .gpu/gptoss --device cuda bench "$@" >"$out/bench.tmp" 2>&1; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        say "bench failed (exit $?)"
    fi
    tee -a "$log" <"$out/bench.tmp"
}
if [ -z "${NO_BENCH:-}" ]; then
    run_bench 60 --synth 20b -p 2048 -n 128 -r 2
    run_bench 45 --synth 20b -p 0 -n 64 -r 1 -b 64
    run_bench 75 --synth 120b -p 2048 -n 128 -r 2
    run_bench 45 --synth 120b -p 0 -n 64 -r 1 -b 64
fi

if [ -z "${NO_SERVE:-}" ]; then
    for shape in 20b 120b; do
        say ""
        say "## tools/serve-load.sh $shape 64 128"
        if timeout 90 tools/serve-load.sh "$shape" 64 128 >"$out/serve.tmp" 2>&1; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
            say "serve load failed"
        fi
        tee -a "$log" <"$out/serve.tmp"
    done
fi

say ""
say "$passed passed, $failed failed"

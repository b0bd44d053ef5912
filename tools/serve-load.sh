#!/usr/bin/env bash
# Aggregate generation through `gptoss serve` with N concurrent clients (default 64), on
# random weights made on the GPU: tools/serve-load.sh 20b|120b [N] [MAX_TOKENS]. Each
# client asks /v1/completions for MAX_TOKENS tokens (greedy); the figure is all completion
# tokens over the wall time from the first request to the last answer. Needs curl.
set -uo pipefail
cd "$(dirname "$0")/.."
shape=${1:-20b}
n=${2:-64}
max_tokens=${3:-128}
bin=${GPTOSS:-.gpu/gptoss}
port=${PORT:-8123}
tmp=$(mktemp -d)
"$bin" --device cuda serve --synth "$shape" --max-batch "$n" --max-queue "$n" --ctx 1024 --port "$port" \
    >"$tmp/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { cat "$tmp/serve.log"; echo "serve exited"; exit 1; }
    sleep 0.5
done
model="gpt-oss-$shape-synth"
body() {
    printf '{"model":"%s","prompt":"Request %s: tell me a story about the sea.","max_tokens":%s,"temperature":0}' \
        "$model" "$1" "$max_tokens"
}
# One warm-up request (records the decode graphs of small batches).
curl -sf "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' -d "$(body 0)" >/dev/null
start=$(date +%s.%N)
for i in $(seq 1 "$n"); do
    curl -sf "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' -d "$(body "$i")" \
        >"$tmp/r$i.json" &
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null
end=$(date +%s.%N)
tokens=$(cat "$tmp"/r*.json | grep -o '"completion_tokens":[0-9]*' | cut -d: -f2 | awk '{s += $1} END {print s + 0}')
answers=$(grep -l completion_tokens "$tmp"/r*.json | wc -l)
awk -v t="$tokens" -v a="$start" -v b="$end" -v n="$n" -v ans="$answers" -v sh="$shape" \
    'BEGIN { printf "serve --synth %s: %d/%d answers, %d completion tokens in %.2f s = %.1f tokens/s aggregate\n", sh, ans, n, t, b - a, t / (b - a) }'
grep -E "listening|device|made random" "$tmp/serve.log" | head -3

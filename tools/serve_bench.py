#!/usr/bin/env python3
"""Load generator for `gptoss serve`: N concurrent streaming clients, each asking
/v1/completions for the same number of tokens. Reports aggregate generated tokens/s, time to
first token and per-client rates. Standard library only.

    python3 tools/serve_bench.py --url http://127.0.0.1:8000 --clients 4 --max-tokens 128
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request


def client(url, prompt, max_tokens, seed, out):
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "seed": seed, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, tokens = None, 0
    with urllib.request.urlopen(req, timeout=3600) as resp:
        for line in resp:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter() - t0
    out.append({"ttft": first, "tokens": tokens, "secs": time.perf_counter() - t0})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt", default="The history of the printing press begins")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    results = []
    threads = [threading.Thread(target=client, args=(a.url, a.prompt, a.max_tokens, i, results))
               for i in range(a.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = sum(r["tokens"] for r in results)
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    summary = {
        "clients": a.clients, "generated_tokens": total, "wall_s": round(wall, 2),
        "aggregate_tokens_per_s": round(total / wall, 3),
        "per_client_tokens_per_s": round(statistics.mean(r["tokens"] / r["secs"] for r in results), 3),
        "ttft_mean_s": round(statistics.mean(ttfts), 3), "ttft_max_s": round(max(ttfts), 3),
    }
    print(json.dumps(summary) if a.json else "\n".join(f"{k:>24}: {v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()

"""Soak: 64 clients against the tiny model for GPTOSS_SOAK_SECONDS (default 30) with
ordinary, streaming, disconnecting and slow-reading clients and a burst of slowloris
connections. Nothing but 429 may fail, memory stays flat, and every gauge is back to zero
at the end. The figures are printed (run pytest with -s to see them) and written to
GPTOSS_SOAK_REPORT when set."""

import http.client
import json
import os
import random
import re
import socket
import threading
import time
from collections import Counter

from conftest import Server, wait_for

CLIENTS = 64
SECONDS = float(os.environ.get("GPTOSS_SOAK_SECONDS", "30"))
SLOWLORIS = 100


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def test_soak(tiny_model):
    s = Server([tiny_model, "--served-model-name", "tiny", "--ctx", "512", "--max-batch", "16",
                "--max-queue", "16", "--header-timeout", "2", "--idle-timeout", "5",
                "--max-connections", "256"], "soak")
    host, port = s.url.removeprefix("http://").split(":")
    port = int(port)
    statuses = Counter()
    kinds = Counter()
    ttft = []
    failures = []
    lock = threading.Lock()

    def request(rng):
        kind = rng.choice(["chat", "stream", "stream", "disconnect", "slow", "completion"])
        stream = kind in ("stream", "disconnect", "slow")
        if kind == "completion":
            path, body = "/v1/completions", {"prompt": "Once upon a time", "max_tokens": rng.randint(2, 12)}
        else:
            path = "/v1/chat/completions"
            body = {"messages": [{"role": "user", "content": "Tell me a story " * rng.randint(1, 20)}],
                    "max_tokens": rng.randint(2, 16), "stream": stream}
        conn = http.client.HTTPConnection(host, port, timeout=120)
        t0 = time.time()
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            status = r.status
            if status == 200 and stream:
                first = True
                lines = 0
                done = False
                for line in r:
                    done = done or line.strip() == b"data: [DONE]"
                    if line.startswith(b"data: "):
                        if first:
                            with lock:
                                ttft.append(time.time() - t0)
                            first = False
                        if b'"error"' in line:
                            status = "stream-error"
                        lines += 1
                    if kind == "disconnect" and lines >= 2:
                        break
                    if kind == "slow":
                        time.sleep(0.05)
                if kind != "disconnect" and not done and status == 200:
                    status = "truncated"
            else:
                r.read()
        except (OSError, http.client.HTTPException) as e:
            status = type(e).__name__
        finally:
            conn.close()
        with lock:
            statuses[status] += 1
            kinds[kind] += 1
            if status not in (200, 429):
                failures.append((kind, status))
        if status == 429:
            time.sleep(0.25)

    def client(i, end):
        rng = random.Random(i)
        while time.time() < end:
            request(rng)

    def slowloris(held):
        for _ in range(SLOWLORIS):
            try:
                c = socket.create_connection((host, port), timeout=30)
                c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-")
                held.append(c)
            except OSError:
                pass

    try:
        # Warm up with full batches before measuring memory: the first ones size the buffers.
        warm = [threading.Thread(target=request, args=(random.Random(1000 + i),)) for i in range(32)]
        for t in warm:
            t.start()
        for t in warm:
            t.join()
        statuses.clear()
        kinds.clear()
        ttft.clear()
        failures.clear()
        rss_start = rss_kib(s.proc.pid)
        log_start = len(s.logs())
        started = time.time()
        end = started + SECONDS
        threads = [threading.Thread(target=client, args=(i, end)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(min(5, SECONDS / 4))
        held = []
        slowloris(held)
        for t in threads:
            t.join()
        elapsed = time.time() - started
        # The slowloris connections were all closed by the header deadline.
        closed = 0
        for c in held:
            c.settimeout(10)
            try:
                while c.recv(4096):
                    pass
                closed += 1
            except OSError:
                closed += 1 if c.fileno() >= 0 else 0
            c.close()
        m = {}
        assert wait_for(lambda: (m.update(s.metrics()) or True) and m["gptoss_running_sequences"] == 0
                        and m["gptoss_queue_depth"] == 0 and m["gptoss_kv_cache_bytes"] == 0, timeout=30), m
        rss_end = rss_kib(s.proc.pid)
        # Time to first token as the server logs it (arrival to first sampled token).
        server_ttft = [float(x) / 1e3 for x in re.findall(r" ttft=([0-9.]+)ms", s.logs()[log_start:])]
        report = {
            "seconds": round(elapsed, 1), "clients": CLIENTS, "requests": sum(statuses.values()),
            "by_status": {str(k): v for k, v in statuses.items()}, "by_kind": dict(kinds),
            "ttft_p50_ms": round(percentile(server_ttft, 0.5) * 1e3, 1),
            "ttft_p99_ms": round(percentile(server_ttft, 0.99) * 1e3, 1),
            "first_event_p50_ms": round(percentile(ttft, 0.5) * 1e3, 1),
            "first_event_p99_ms": round(percentile(ttft, 0.99) * 1e3, 1),
            "rss_start_mib": round(rss_start / 1024, 1), "rss_end_mib": round(rss_end / 1024, 1),
            "slowloris_held": len(held), "slowloris_closed": closed,
            "cancelled": m.get("gptoss_requests_cancelled_total"),
        }
        print("\nsoak:", json.dumps(report))
        if os.environ.get("GPTOSS_SOAK_REPORT"):
            with open(os.environ["GPTOSS_SOAK_REPORT"], "w") as f:
                json.dump(report, f, indent=1)
        assert not failures, (Counter(failures), report)
        assert statuses[200] > CLIENTS, report
        assert closed == len(held), report
        assert rss_end < rss_start + 64 * 1024, report
        assert s.raw("GET", "/ready")[0] == 200
    finally:
        s.stop()

"""Cost per generated token with and without a response_format schema, side by side, on one
`gptoss serve` (streamed chat requests, alternating). Usage:

    python3 tools/bench_constrained.py MODEL_DIR N_TOKENS ROUNDS    # GPTOSS_BIN=target/release/gptoss

Prints, per request, the decode time per token from the server's log ((total - ttft) /
(completion - 1)), the grammar masks computed and their time, and the host time of each
constrained token's sampling (logits copy, mask, draw), from /metrics; then the medians."""
import json, os, re, statistics, subprocess, sys, time, urllib.request, openai
MODEL, N, ROUNDS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
LOG = "/tmp/bench_constrained.log"
p = subprocess.Popen([os.environ.get("GPTOSS_BIN", "target/release/gptoss"), "--threads", "2", "serve", MODEL, "--served-model-name", "m",
                      "--ctx", "2048", "--port", "0"], stdout=subprocess.PIPE, stderr=open(LOG, "w"), text=True)
url = re.search(r"(http://\S+)", p.stdout.readline()).group(1)
c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=3600)
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "email": {"type": "string", "format": "email"},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": False},
    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4}},
    "required": ["name", "age", "email", "address", "tags"], "additionalProperties": False}
def metrics():
    out = {}
    for line in urllib.request.urlopen(url + "/metrics").read().decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1); out[k] = float(v)
    return out
def run(fmt):
    kw = {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA, "strict": True}}} if fmt else {}
    stamps, text = [], ""
    for ch in c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Describe a person as JSON."}],
                                        max_tokens=N, seed=7, stream=True, stream_options={"include_usage": True}, **kw):
        if ch.usage:
            usage = ch.usage.completion_tokens
        if ch.choices and (ch.choices[0].delta.content or ch.choices[0].delta.model_extra.get("reasoning")):
            stamps.append(time.perf_counter()); text += ch.choices[0].delta.content or ""
    return (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1), usage, len(stamps), text
try:
    run(False)  # warm up
    rows = []
    for r in range(ROUNDS):
        for fmt in (False, True):
            m0 = metrics(); per, usage, chunks, text = run(fmt); m1 = metrics()
            masks = m1["gptoss_constraint_masks_total"] - m0["gptoss_constraint_masks_total"]
            mask_s = m1["gptoss_constraint_mask_seconds_total"] - m0["gptoss_constraint_mask_seconds_total"]
            ns = m1["gptoss_constrained_tokens_total"] - m0["gptoss_constrained_tokens_total"]
            ss = m1["gptoss_constrained_sampling_seconds_total"] - m0["gptoss_constrained_sampling_seconds_total"]
            rows.append((fmt, per, usage, chunks, masks, mask_s, text))
            if fmt:
                print(f"  constrained sampling: {ns:.0f} tokens, {1000*ss/max(ns,1):.3f} ms/token (copy + mask + draw)")
            print(f"round {r} schema={fmt!s:5} {per*1000:8.1f} ms/token over {chunks} streamed chunks, {usage} tokens; "
                  f"masks {masks:.0f}, mask time {1000*mask_s/max(masks,1):.3f} ms/mask; content {text[:120]!r}", flush=True)
            if fmt:
                json.loads(text)
finally:
    p.terminate(); p.wait()
log = open(LOG).read()
print(log)
# Per generated token from the server's own log: (total - ttft) / (completion - 1), in order.
reqs = re.findall(r"completion=(\d+) .*?ttft=(\d+)ms total=(\d+)ms", log)[1:]
per = {False: [], True: []}
for (fmt, *_), (n, ttft, total) in zip(rows, reqs):
    d = (int(total) - int(ttft)) / (int(n) - 1)
    per[fmt].append(d)
    print(f"schema={fmt!s:5} decode {d:8.1f} ms/token ({n} tokens, ttft {ttft} ms)")

for fmt in (False, True):
    print(f"median schema={fmt!s:5}: {statistics.median(per[fmt]):.1f} ms/token over {len(per[fmt])} runs, min {min(per[fmt]):.1f}")

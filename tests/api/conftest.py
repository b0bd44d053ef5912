"""Fixtures: real `gptoss serve` processes on a synth tiny checkpoint (random weights, real
vocabulary) or on scripted completions, driven over HTTP by the official openai client.

GPTOSS_BIN names the binary (the cargo test runner sets it)."""

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import openai
import pytest

BIN = os.environ.get("GPTOSS_BIN", "target/debug/gptoss")

# Completions the scripted server replays; each is chosen by the text its prompt contains
# latest (so the most recent turn decides).
SCRIPTS = [
    {"when": "", "output": "<|channel|>final<|message|>Hello!<|return|>"},
    {"when": "weather in Paris", "output":
        "<|channel|>analysis<|message|>The user wants the weather. Call get_weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        "{\"city\": \"Paris\", \"unit\": \"celsius\"}<|call|>"},
    {"when": "\"temp\": 21", "output":
        "<|channel|>analysis<|message|>Tool says 21.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>It is 21 degrees in Paris.<|return|>"},
    {"when": "think first", "output":
        "<|channel|>analysis<|message|>Let me think.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>The answer is 4.<|return|>"},
    {"when": "preamble please", "output":
        "<|channel|>commentary<|message|>Checking.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Done.<|return|>"},
    {"when": "no header", "output": "Plain text with no header<|end|>"},
    {"when": "missing message token", "output":
        "<|channel|>analysis<|message|>hmm<|end|><|start|>assistant<|channel|>final Salvaged answer<|return|>"},
    {"when": "garbled recipient", "output":
        "<|channel|>commentary to=functions.get_weather to=functions.get_weather<|message|>{}<|call|>"},
    {"when": "undeclared tool", "output":
        "<|channel|>analysis to=browser.search<|message|>{\"query\": \"x\"}<|call|>"},
    {"when": "count to ten", "output":
        "<|channel|>final<|message|>one two three four five six seven eight nine ten<|return|>"},
    {"when": "long answer", "output": "<|channel|>final<|message|>" + "word " * 400 + "<|return|>"},
]


class Server:
    def __init__(self, args, name, env=None):
        self.log = tempfile.NamedTemporaryFile(prefix=f"gptoss-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [BIN, "--threads", "2", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
            env=None if env is None else {**os.environ, **env})
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{open(self.log.name).read()}")
        self.url = m.group(1)

    def client(self, **kw):
        kw.setdefault("api_key", "none")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60)
        return openai.OpenAI(base_url=self.url + "/v1", **kw)

    def raw(self, method, path, body=None, headers=None, data=None):
        """(status, headers, parsed JSON or text) without the client's validation."""
        if data is None and body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, hdrs, text = r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            status, hdrs, text = e.code, dict(e.headers), e.read().decode()
        try:
            return status, hdrs, json.loads(text)
        except ValueError:
            return status, hdrs, text

    def metrics(self):
        _, _, text = self.raw("GET", "/metrics")
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def logs(self):
        return open(self.log.name).read()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        assert "panicked" not in self.logs(), self.logs()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run([BIN, "synth", "--shape", "tiny", "--out", str(out)], check=True, capture_output=True)
    return str(out)


@pytest.fixture(scope="session")
def script_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "scripts.json"
    path.write_text(json.dumps({"scripts": SCRIPTS}))
    return str(path)


@pytest.fixture(scope="session")
def model_server(tiny_model):
    s = Server([tiny_model, "--served-model-name", "gpt-oss-tiny", "--ctx", "2048"], "model")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def scripted_server(script_file):
    s = Server(["--script", script_file], "scripted")
    yield s
    s.stop()


@pytest.fixture()
def slow_server(tmp_path):
    """Scripted, one step per 30 ms, one sequence at a time, one waiting."""
    path = tmp_path / "slow.json"
    path.write_text(json.dumps({"delay_ms": 30, "scripts": SCRIPTS}))
    s = Server(["--script", str(path), "--max-batch", "1", "--max-queue", "1"], "slow")
    yield s
    s.stop()


def wait_for(pred, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False

"""Hostile clients, overload, shutdown and models that cannot take a request: the server
stays up, answers in OpenAI's shape, and loses nothing it can keep (issue 18)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from conftest import SCRIPTS, Server, wait_for

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def error_of(resp):
    status, _, body = resp
    assert isinstance(body, dict) and set(body) == {"error"}, (status, body)
    e = body["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"], e
    return status, e


def scripted(tmp_path, name, *args, delay_ms=0, env=None):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"delay_ms": delay_ms, "scripts": SCRIPTS}))
    return Server(["--script", str(path), *args], name, env=env)


def address(server):
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def open_stream(server, content, path=CHAT):
    req = urllib.request.Request(server.url + path, method="POST", data=json.dumps(
        {"messages": [{"role": "user", "content": content}], "stream": True}).encode())
    req.add_header("Content-Type", "application/json")
    return urllib.request.urlopen(req, timeout=60)


def read_events(resp):
    """Every `data:` payload of an SSE response until it ends."""
    events = []
    for line in resp:
        line = line.decode().strip()
        if line.startswith("data: "):
            events.append(line[6:])
    return events


def closed_within(sock, seconds):
    """True if the server closes the connection within `seconds` (whatever it sends first)."""
    sock.settimeout(seconds)
    end = time.time() + seconds
    try:
        while time.time() < end:
            if not sock.recv(65536):
                return True
    except socket.timeout:
        return False
    except OSError:
        return True  # reset: closed too
    return False


# 1. CPU-heavy parsing runs off the async workers.

def test_tokenizing_huge_bodies_blocks_neither_health_nor_running_streams(tmp_path):
    s = scripted(tmp_path, "cpu", "--shutdown-timeout", "1", delay_ms=20)
    try:
        stream = open_stream(s, "long answer")  # 400 words, 20 ms a token: ~8 s
        stream.readline()
        # A run of spaces is the tokenizer's slow path: seconds of CPU each.
        body = json.dumps({"messages": [{"role": "user", "content": " " * (6 << 20)}]}).encode()
        done = []

        def post():
            try:
                done.append(s.raw("POST", CHAT, data=body)[0])
            except OSError as e:
                done.append(e)

        for _ in range(2):
            threading.Thread(target=post, daemon=True).start()
        time.sleep(1.0)  # the bodies are in; both are being tokenized
        for _ in range(5):
            t0 = time.time()
            status = s.raw("GET", "/health")[0]
            took = time.time() - t0
            assert status == 200 and took < 2.0, f"/health took {took:.1f} s while bodies were tokenized"
            # The stream started before them keeps coming.
            t0 = time.time()
            assert stream.readline()
            assert time.time() - t0 < 2.0
            time.sleep(0.2)
        # A small request is not queued behind the huge ones either.
        t0 = time.time()
        status, _, body_ = s.raw("POST", CHAT, {"messages": USER})
        assert status == 200 and time.time() - t0 < 5.0, (status, body_)
        assert not done, "the huge bodies were done too early for this test to mean anything"
        stream.close()
    finally:
        s.stop()


# 2. Deadlines for headers, bodies and idle connections; a cap on connections.

def test_slow_silent_and_idle_connections_are_closed_and_capped(tmp_path):
    s = scripted(tmp_path, "slowloris", "--header-timeout", "1", "--body-timeout", "1", "--idle-timeout", "1",
                 "--max-connections", "8")
    try:
        host, port = address(s)
        slow = []
        for i in range(8):
            c = socket.create_connection((host, port), timeout=10)
            if i % 2 == 0:
                c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # headers never end
            slow.append(c)  # odd ones send nothing at all
        time.sleep(0.3)
        # Over the cap: a clear refusal, not a hang.
        with socket.create_connection((host, port), timeout=10) as c:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert b" 503 " in head.split(b"\r\n")[0], data
        assert json.loads(body)["error"]["code"] == "too_many_connections"
        # Every slow or silent connection is closed by the deadlines, and the slots come back.
        for c in slow:
            assert closed_within(c, 8), "a slow connection was left open"
            c.close()
        assert wait_for(lambda: s.raw("GET", "/health")[0] == 200, timeout=5)
        # A body that stops arriving gets 408 in OpenAI's shape.
        with socket.create_connection((host, port), timeout=10) as c:
            c.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"messages\"")
            data = b""
            while chunk := c.recv(65536):
                data += chunk
                if b"}}" in data:
                    break
        head, _, body = data.partition(b"\r\n\r\n")
        assert b" 408 " in head.split(b"\r\n")[0], data
        assert json.loads(body)["error"]["code"] == "request_timeout"
        # A kept-alive connection that goes quiet is closed after the idle timeout.
        with socket.create_connection((host, port), timeout=10) as c:
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 200 " in c.recv(65536).split(b"\r\n")[0]
            assert closed_within(c, 8)
    finally:
        s.stop()


# 3. Shutdown: drain, deadline, second signal.

def test_sigterm_lets_streams_in_flight_finish(tmp_path):
    s = scripted(tmp_path, "drain", "--shutdown-timeout", "30", delay_ms=10)
    stream = open_stream(s, "long answer")  # ~4 s of tokens
    stream.readline()
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):  # no new connections
        socket.create_connection(address(s), timeout=2).close()
    events = read_events(stream)
    assert events[-1] == "[DONE]", events[-3:]
    last = json.loads(events[-2])
    assert "error" not in last and last["choices"][0]["finish_reason"] in ("stop", "length"), last
    assert s.proc.wait(20) == 0
    assert "shut down cleanly" in s.logs()


def test_sigterm_deadline_ends_streams_with_an_error_event_and_done(tmp_path):
    s = scripted(tmp_path, "cut", "--shutdown-timeout", "1", delay_ms=50)
    chat = open_stream(s, "long answer")  # ~20 s of tokens
    chat.readline()
    req = urllib.request.Request(s.url + "/v1/responses", method="POST", data=json.dumps(
        {"input": "long answer", "stream": True}).encode())
    req.add_header("Content-Type", "application/json")
    responses = urllib.request.urlopen(req, timeout=60)
    responses.readline()
    plain = []
    waiter = threading.Thread(target=lambda: plain.append(s.raw("POST", CHAT, {"messages": [
        {"role": "user", "content": "long answer"}]})))
    waiter.start()
    assert wait_for(lambda: s.metrics()["gptoss_running_sequences"] == 3)
    t0 = time.time()
    s.proc.send_signal(signal.SIGTERM)
    events = read_events(chat)
    assert time.time() - t0 < 10
    assert events[-1] == "[DONE]", events[-3:]
    err = json.loads(events[-2])
    assert "shutting down" in err["error"]["message"], err
    kinds = [json.loads(e).get("type") for e in read_events(responses) if e != "[DONE]"]
    assert kinds[-1] in ("response.failed", "error"), kinds[-3:]
    waiter.join(20)
    status, e = error_of(plain[0])
    assert status == 503 and "shutting down" in e["message"], e
    assert s.proc.wait(20) == 1
    assert "shutdown deadline passed" in s.logs()


def test_a_second_signal_stops_at_once(tmp_path):
    s = scripted(tmp_path, "twice", "--shutdown-timeout", "60", delay_ms=50)
    stream = open_stream(s, "long answer")
    stream.readline()
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert s.proc.poll() is None  # draining
    t0 = time.time()
    s.proc.send_signal(signal.SIGINT)
    assert s.proc.wait(10) != 0
    assert time.time() - t0 < 5
    stream.close()


# 4. Admission counts only what really waits.

def test_free_slots_take_requests_whatever_the_queue_size(tmp_path):
    s = scripted(tmp_path, "admit", "--max-batch", "16", "--max-queue", "4", delay_ms=20)
    try:
        results = []
        barrier = threading.Barrier(16)

        def go():
            barrier.wait()
            results.append(s.raw("POST", CHAT, {"messages": [{"role": "user", "content": "count to ten"}]})[0])

        threads = [threading.Thread(target=go) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 16, results
    finally:
        s.stop()
    s = scripted(tmp_path, "noqueue", "--max-batch", "2", "--max-queue", "0")
    try:
        for _ in range(3):
            assert s.raw("POST", CHAT, {"messages": USER})[0] == 200
    finally:
        s.stop()


# 5. A request the model cannot run fails alone, with a clear 400.

def test_prompt_outside_a_small_vocabulary_is_a_400(tmp_path):
    model = os.path.join(ROOT, "fixtures", "tiny", "original")  # a 1024-token vocabulary
    s = Server([model, "--served-model-name", "tiny-1024", "--ctx", "256"], "vocab")
    try:
        # A stream already running is not touched by the bad requests beside it.
        req = urllib.request.Request(s.url + "/v1/completions", method="POST", data=json.dumps(
            {"prompt": [1, 2, 3], "max_tokens": 64, "stream": True}).encode())
        req.add_header("Content-Type", "application/json")
        stream = urllib.request.urlopen(req, timeout=60)
        stream.readline()
        for path, body in [(CHAT, {"messages": USER}), ("/v1/responses", {"input": "hi"}),
                           ("/v1/completions", {"prompt": "hi"})]:
            status, e = error_of(s.raw("POST", path, body))
            assert status == 400 and e["code"] == "invalid_prompt" and "vocabulary of 1024" in e["message"], e
        events = read_events(stream)
        assert events[-1] == "[DONE]" and "error" not in events[-2], events[-3:]
        status, _, body = s.raw("POST", "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 4})
        assert status == 200 and body["usage"]["completion_tokens"] == 4, body
    finally:
        s.stop()


# 6. Errors in OpenAI's shape everywhere; keys; HTTP/2.

@pytest.mark.parametrize("method,path", [
    ("GET", CHAT), ("PUT", "/v1/responses"), ("DELETE", "/v1/models"), ("POST", "/v1/models/scripted"),
    ("POST", "/health"), ("GET", "/tokenize"), ("PATCH", "/metrics"),
])
def test_wrong_method_is_a_405_in_openai_shape(scripted_server, method, path):
    status, e = error_of(scripted_server.raw(method, path))
    assert status == 405 and e["code"] == "method_not_allowed", e


def test_key_is_checked_before_routing_and_an_empty_key_means_none(tmp_path):
    s = scripted(tmp_path, "authfirst", "--api-key", "sekret")
    try:
        for method, path in [("GET", "/v1/nothing"), ("POST", "/v1/nothing/else"), ("GET", CHAT)]:
            status, e = error_of(s.raw(method, path))
            assert status == 401 and e["code"] == "invalid_api_key", (path, e)
        status, e = error_of(s.raw("GET", "/v1/nothing", headers={"Authorization": "Bearer sekret"}))
        assert status == 404
        assert s.raw("GET", "/ready")[0] == 200
    finally:
        s.stop()
    s = scripted(tmp_path, "emptykey", env={"GPTOSS_API_KEY": ""})
    try:
        r = s.client(api_key="anything").chat.completions.create(model="scripted", messages=USER)
        assert r.choices[0].message.content == "Hello!"
        assert "serving without a key" in s.logs()
    finally:
        s.stop()


def test_http2_prior_knowledge_is_served(scripted_server):
    with socket.create_connection(address(scripted_server), timeout=10) as c:
        c.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        frame = c.recv(9)
        assert len(frame) == 9 and frame[3] == 0x4, f"expected a SETTINGS frame, got {frame!r}"
    if shutil.which("curl"):
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-w", "\\n%{http_version}",
                              scripted_server.url + "/v1/models"], capture_output=True, text=True, timeout=30)
        body, version = out.stdout.rsplit("\n", 1)
        assert version == "2" and json.loads(body)["data"][0]["id"] == "scripted", out


# 7. Liveness and readiness.

def test_health_and_ready(scripted_server):
    status, _, body = scripted_server.raw("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["ready"] is True
    status, _, body = scripted_server.raw("GET", "/ready")
    assert status == 200 and body["status"] == "ready"

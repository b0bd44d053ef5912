"""Queueing, cancellation, context limits and every error path; the server stays up."""

import json
import socket
import threading
import time
import urllib.request

import openai
import pytest

from conftest import Server, wait_for


def error_of(resp):
    status, _, body = resp
    assert isinstance(body, dict) and set(body) == {"error"}, body
    e = body["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    return status, e


CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body,param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": USER, "temperature": "hot"}, "temperature"),
    ({"messages": USER, "temperature": 7}, "temperature"),
    ({"messages": USER, "max_tokens": "many"}, "max_tokens"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens"),
    ({"messages": USER, "stream": "yes"}, "stream"),
    ({"messages": USER, "reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"messages": USER, "tools": [{"type": "function"}]}, "tools[0].function"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
     "tools[0].function.parameters"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f", "parameters":
        {"type": "object", "properties": []}}}]}, "tools[0].function.parameters.properties"),
    ({"messages": USER, "tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"messages": USER, "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"messages": [{"role": "tool", "tool_call_id": "call_x", "content": "1"}]}, "messages[0].tool_call_id"),
    ({"messages": USER, "max_tokens": 10 ** 6}, "max_tokens"),
])
def test_bad_requests_get_400_naming_the_field(scripted_server, body, param):
    status, e = error_of(scripted_server.raw("POST", CHAT, body))
    assert status == 400 and e["param"] == param and e["type"] == "invalid_request_error", e


def test_malformed_json_unknown_model_and_endpoint(scripted_server):
    status, e = error_of(scripted_server.raw("POST", CHAT, data=b'{"messages": [}'))
    assert status == 400 and e["code"] == "invalid_json"
    status, e = error_of(scripted_server.raw("POST", CHAT, data=b'[1, 2]'))
    assert status == 400
    status, e = error_of(scripted_server.raw("POST", CHAT, {"model": "gpt-5", "messages": USER}))
    assert status == 404 and e["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        scripted_server.client().chat.completions.create(model="nope", messages=USER)
    status, e = error_of(scripted_server.raw("GET", "/v1/nothing"))
    assert status == 404


def test_context_overflow_is_refused_before_any_work(scripted_server):
    status, e = error_of(scripted_server.raw("POST", CHAT, {"messages": USER, "max_tokens": 8192}))
    assert status == 400 and e["code"] == "context_length_exceeded"
    long = [{"role": "user", "content": "word " * 9000}]
    status, e = error_of(scripted_server.raw("POST", CHAT, {"messages": long}))
    assert status == 400 and e["code"] == "context_length_exceeded"
    status, e = error_of(scripted_server.raw("POST", "/v1/completions", {"prompt": "x", "max_tokens": 9000}))
    assert status == 400
    status, e = error_of(scripted_server.raw("POST", "/v1/responses", {"input": "x", "max_output_tokens": 9000}))
    assert status == 400
    with pytest.raises(openai.BadRequestError):
        scripted_server.client().chat.completions.create(model="scripted", messages=USER, max_tokens=100000)


def raw_exchange(url, head, body_chunks):
    """Sends a request by hand (the server may answer before the body is all sent) and
    returns the status line and body of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed: that is the point
        data = b""
        while True:
            try:
                more = sock.recv(65536)
            except OSError:
                break
            if not more:
                break
            data += more
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


def test_oversized_body_is_413(scripted_server):
    size = 9 << 20
    head = f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    status, body = raw_exchange(scripted_server.url, head, [b"x" * 65536])
    assert " 413 " in status, status
    assert json.loads(body)["error"]["code"] == "request_too_large"
    # Without a length up front, the limit is enforced while reading.
    head = f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % (1 << 20) + b"x" * (1 << 20) + b"\r\n"
    status, body = raw_exchange(scripted_server.url, head, [chunk] * 9 + [b"0\r\n\r\n"])
    assert " 413 " in status, status
    assert scripted_server.raw("GET", "/health")[0] == 200


def test_garbage_never_crashes_the_server(scripted_server):
    bodies = [b"", b"null", b"\xff\xfe", b'{"messages": null}', b'{"input": 3}', b'{"prompt": [[-1]]}',
              b'{"prompt": [1e30]}', b'{"tokens": ["a"]}', b'{"messages": [{"role": "assistant", "tool_calls": 5}]}',
              b'{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}}',
              b'{"input": [{"type": "function_call_output", "call_id": "nope", "output": "1"}]}',
              b'{"input": [{"type": "mystery"}]}', b'{"prompt": ["a", "b"]}', b'{"prompt": 201088}']
    for path in [CHAT, "/v1/responses", "/v1/completions", "/tokenize", "/detokenize"]:
        for b in bodies:
            status, _, body = scripted_server.raw("POST", path, data=b)
            assert status < 500, (path, b, status, body)
            if status >= 400:
                assert "error" in body, (path, b, body)
    assert scripted_server.raw("GET", "/health")[0] == 200


def test_api_key(script_file):
    s = Server(["--script", script_file, "--api-key", "sekret"], "auth")
    try:
        status, e = error_of(s.raw("POST", CHAT, {"messages": USER}))
        assert status == 401 and e["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").chat.completions.create(model="scripted", messages=USER)
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        r = s.client(api_key="sekret").chat.completions.create(model="scripted", messages=USER)
        assert r.choices[0].message.content == "Hello!"
        assert s.raw("GET", "/health")[0] == 200  # health and metrics stay open
    finally:
        s.stop()


def test_full_queue_gets_429_with_retry_after(slow_server):
    # One running, one waiting: the rest are refused at once.
    results = []

    def go():
        try:
            r = slow_server.client().chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": "count to ten"}])
            results.append(r.choices[0].finish_reason)
        except openai.RateLimitError as e:
            results.append(("429", e.response.headers.get("retry-after")))

    threads = [threading.Thread(target=go) for _ in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    refused = [r for r in results if isinstance(r, tuple)]
    assert refused and all(r == ("429", "1") for r in refused), results
    assert results.count("stop") >= 2, results
    assert 'gptoss_requests_total{endpoint="chat.completions",status="429"}' in slow_server.metrics()


def test_disconnected_client_frees_its_sequence(slow_server):
    req = urllib.request.Request(slow_server.url + CHAT, method="POST", data=json.dumps(
        {"messages": [{"role": "user", "content": "long answer"}], "stream": True}).encode())
    req.add_header("Content-Type", "application/json")
    resp = urllib.request.urlopen(req, timeout=30)
    for _ in range(4):
        assert resp.readline() is not None
    assert slow_server.metrics()["gptoss_running_sequences"] == 1
    resp.close()  # 400 words at 30 ms a step would take 12 s
    assert wait_for(lambda: slow_server.metrics()["gptoss_running_sequences"] == 0, timeout=5)
    m = slow_server.metrics()
    assert m["gptoss_requests_cancelled_total"] >= 1 and m["gptoss_kv_cache_bytes"] == 0
    # A non-streaming request whose client gives up is cancelled too.
    c = slow_server.client(timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "long answer"}])
    assert wait_for(lambda: slow_server.metrics()["gptoss_requests_cancelled_total"] >= 2, timeout=5)
    assert wait_for(lambda: slow_server.metrics()["gptoss_running_sequences"] == 0, timeout=5)

"""The real model (synth tiny: random weights, real vocabulary) behind `gptoss serve`.
Random weights say arbitrary things, so these check shapes, counts and invariants."""

import threading

from conftest import wait_for

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]


def test_models(model_server):
    models = model_server.client().models.list()
    assert [m.id for m in models.data] == ["gpt-oss-tiny"]
    assert models.data[0].object == "model"


def test_chat_non_streaming(model_server):
    c = model_server.client()
    r = c.chat.completions.create(model="gpt-oss-tiny", messages=MSGS, max_tokens=12, seed=7,
                                  temperature=1.0, top_p=0.9)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    ch = r.choices[0]
    assert ch.message.role == "assistant"
    assert ch.finish_reason in ("stop", "length", "tool_calls")
    assert r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # The prompt is what /tokenize renders for the same messages.
    t = model_server.raw("POST", "/tokenize", {"messages": MSGS})[2]
    assert r.usage.prompt_tokens == t["count"]
    # Same seed, same answer.
    r2 = c.chat.completions.create(model="gpt-oss-tiny", messages=MSGS, max_tokens=12, seed=7,
                                   temperature=1.0, top_p=0.9)
    assert r2.choices[0].message.content == ch.message.content
    assert r2.usage.completion_tokens == r.usage.completion_tokens


def test_chat_logprobs(model_server):
    r = model_server.client().chat.completions.create(
        model="gpt-oss-tiny", messages=MSGS, max_tokens=8, seed=3, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    for e in content:
        assert e.logprob <= 0.0
        assert len(e.top_logprobs) == 3
        assert e.top_logprobs[0].logprob >= e.logprob - 1e-4
    assert len(content) <= r.usage.completion_tokens


def test_chat_streaming_matches_non_streaming(model_server):
    c = model_server.client()
    kw = dict(model="gpt-oss-tiny", messages=MSGS, max_tokens=16, seed=11)
    full = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.id == chunks[0].id for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    reasoning = "".join(getattr(ch.choices[0].delta, "reasoning", None) or "" for ch in chunks if ch.choices)
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert text == (full.choices[0].message.content or "")
    assert reasoning == (getattr(full.choices[0].message, "reasoning", None) or "")
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == full.usage.completion_tokens


def test_responses_streaming_event_order(model_server):
    c = model_server.client()
    events = list(c.responses.create(model="gpt-oss-tiny", input="Say hello.", max_output_tokens=24,
                                     stream=True, reasoning={"effort": "low"}))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # Each item: added, (part added, deltas, done, part done | argument deltas, done), item done.
    open_items = {}
    for e in events[2:-1]:
        if e.type == "response.output_item.added":
            assert e.output_index == len(open_items)
            open_items[e.output_index] = [e.type]
        else:
            assert e.output_index in open_items, e.type
            open_items[e.output_index].append(e.type)
    for seq in open_items.values():
        assert seq[0] == "response.output_item.added" and seq[-1] == "response.output_item.done"
        body = [t for t in seq[1:-1] if not t.endswith(".delta")]
        assert body in (
            ["response.content_part.added", "response.output_text.done", "response.content_part.done"],
            ["response.content_part.added", "response.reasoning_text.done", "response.content_part.done"],
            ["response.function_call_arguments.done"],
        ), seq
    final = events[-1].response
    assert len(final.output) == len(open_items)
    assert final.usage.output_tokens <= 24
    if types[-1] == "response.incomplete":
        assert final.incomplete_details.reason == "max_output_tokens"


def test_completions(model_server):
    c = model_server.client()
    r = c.completions.create(model="gpt-oss-tiny", prompt="The capital of France is", max_tokens=6, seed=1,
                             logprobs=2, echo=True)
    ch = r.choices[0]
    assert ch.text.startswith("The capital of France is")
    lp = ch.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and all(x <= 0 for x in lp.token_logprobs[1:])
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens <= 6
    # Token ids work as a prompt, and the same seed gives the same text.
    ids = model_server.raw("POST", "/tokenize", {"prompt": "The capital of France is"})[2]["tokens"]
    r2 = c.completions.create(model="gpt-oss-tiny", prompt=ids, max_tokens=6, seed=1)
    assert "The capital of France is" + r2.choices[0].text == ch.text
    # Streaming gives the same text.
    chunks = list(c.completions.create(model="gpt-oss-tiny", prompt=ids, max_tokens=6, seed=1, stream=True))
    assert "".join(x.choices[0].text for x in chunks) == r2.choices[0].text


def test_tokenize_and_detokenize(model_server):
    st, _, t = model_server.raw("POST", "/tokenize", {"prompt": "Hello <|start|> world"})
    assert st == 200 and t["count"] == len(t["tokens"])
    assert 200006 not in t["tokens"], "user text must never become a special token"
    st, _, d = model_server.raw("POST", "/detokenize", {"tokens": t["tokens"]})
    assert st == 200 and d["prompt"] == "Hello <|start|> world"
    st, _, chat = model_server.raw("POST", "/tokenize", {"messages": MSGS})
    assert chat["tokens"][0] == 200006 and chat["tokens"][-1] != 200007


def stream_text(client, seed, max_tokens=16):
    stream = client.chat.completions.create(model="gpt-oss-tiny", max_tokens=max_tokens, seed=seed, stream=True,
                                            messages=[{"role": "user", "content": f"Story number {seed}."}])
    out = []
    for ch in stream:
        if ch.choices:
            d = ch.choices[0].delta
            out.append((d.content or "") + (getattr(d, "reasoning", None) or ""))
    return "".join(out)


def test_sixteen_concurrent_streams_match_their_solo_runs(model_server):
    c = model_server.client()
    solo = {seed: stream_text(c, seed) for seed in range(16)}
    before = model_server.metrics()
    results = {}

    def worker(seed):
        results[seed] = stream_text(model_server.client(), seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == solo
    assert len(set(solo.values())) > 1, "different seeds and prompts should differ"
    after = model_server.metrics()
    # Steps that ran more than one sequence at once.
    batched = lambda m: m["gptoss_batch_size_count"] - m['gptoss_batch_size_bucket{le="1"}']
    assert batched(after) - batched(before) > 0
    assert wait_for(lambda: model_server.metrics()["gptoss_running_sequences"] == 0)
    assert model_server.metrics()["gptoss_kv_cache_bytes"] == 0

"""Prefix caching through the official client: a later request that starts like an earlier one
reports the reused prompt tokens in `usage`, gets the same output as without the cache, and
the cache stays within `--prefix-cache-bytes` under concurrent load."""

import concurrent.futures
import threading

import pytest

from conftest import Server

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def long_text(seed, n_words=700):
    return " ".join(WORDS[(i * 7 + seed * 13 + i // 5) % len(WORDS)] for i in range(n_words))


@pytest.fixture(scope="module")
def servers(tiny_model):
    on = Server([tiny_model, "--ctx", "4096"], "prefix-on")
    off = Server([tiny_model, "--ctx", "4096", "--prefix-cache-bytes", "0"], "prefix-off")
    yield on, off
    on.stop()
    off.stop()


def chat(server, messages, **kw):
    return server.client().chat.completions.create(
        model=server.client().models.list().data[0].id,
        messages=messages, max_tokens=12, temperature=0, **kw)


def test_a_second_turn_reuses_the_first_and_answers_the_same(servers):
    on, off = servers
    system = {"role": "developer", "content": long_text(1)}
    turn1 = [system, {"role": "user", "content": "Summarise the notes."}]
    first = chat(on, turn1)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    turn2 = turn1 + [{"role": "assistant", "content": "They list Greek letters."},
                     {"role": "user", "content": "Which one comes first?"}]
    second = chat(on, turn2)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # Whole 256-token blocks of the first turn's prompt, and never the whole prompt.
    assert cached > 0 and cached % 256 == 0, second.usage
    assert cached <= first.usage.prompt_tokens < second.usage.prompt_tokens
    uncached = chat(off, turn2)
    assert uncached.usage.prompt_tokens_details.cached_tokens == 0
    assert second.choices[0].message.content == uncached.choices[0].message.content
    assert second.choices[0].message.reasoning == uncached.choices[0].message.reasoning

    # Streaming usage and the Responses API report it too.
    stream = on.client().chat.completions.create(
        model=first.model, messages=turn2, max_tokens=4, temperature=0, stream=True,
        stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage][-1]
    assert usage.prompt_tokens_details.cached_tokens == cached
    r1 = on.client().responses.create(model=first.model, instructions=long_text(2), input="Hello", max_output_tokens=4)
    r2 = on.client().responses.create(model=first.model, instructions=long_text(2), input="Hello again",
                                      max_output_tokens=4)
    assert r1.usage.input_tokens_details.cached_tokens == 0
    assert r2.usage.input_tokens_details.cached_tokens >= 256

    m = on.metrics()
    assert m["gptoss_prefix_cache_hit_tokens_total"] >= cached + 256
    assert 0 < m["gptoss_prefix_cache_hit_rate"] < 1
    assert 0 < m["gptoss_prefix_cache_bytes"] <= m["gptoss_prefix_cache_capacity_bytes"]
    assert off.metrics()["gptoss_prefix_cache_capacity_bytes"] == 0


def test_the_cache_stays_within_its_bound_under_load(tiny_model):
    bound = 2_000_000  # about two and a half blocks of the tiny model
    s = Server([tiny_model, "--ctx", "4096", "--prefix-cache-bytes", str(bound), "--max-batch", "8"], "prefix-load")
    try:
        seen, done = [], threading.Event()

        def watch():
            while not done.is_set():
                seen.append(s.metrics()["gptoss_prefix_cache_bytes"])

        watcher = threading.Thread(target=watch)
        watcher.start()
        model = s.client().models.list().data[0].id
        prompts = [[{"role": "user", "content": long_text(seed)}] for seed in range(16)]

        def ask(messages):
            return s.client().chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(ask, prompts))
        # A full cache still takes new prompts, evicting the least recently used.
        ask(prompts[0])
        again = ask(prompts[0])
        done.set()
        watcher.join()
        m = s.metrics()
        assert max(seen) <= bound and m["gptoss_prefix_cache_bytes"] <= bound, (max(seen), m)
        assert m["gptoss_prefix_cache_evicted_blocks_total"] > 0
        assert again.usage.prompt_tokens_details.cached_tokens > 0, again.usage
    finally:
        s.stop()

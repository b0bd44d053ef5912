"""The Responses API as OpenAI's clients use it (issue 19): every tool type clients send
(function, namespace, custom, hosted), preambles and `phase`, stateless replays that render as
`previous_response_id` does, logprobs, usage details, and the stored-response endpoints. Model
output comes from scripted completions."""

import json
import pathlib

import openai
import pytest

from conftest import Server

HERE = pathlib.Path(__file__).parent

SCRIPTS = [
    {"when": "", "output": "<|channel|>final<|message|>Hello!<|return|>"},
    {"when": "weather in Paris", "output":
        "<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        "{\"city\": \"Paris\"}<|call|>"},
    {"when": "look up ada", "output":
        "<|channel|>analysis<|message|>Ask the CRM.<|end|>"
        "<|start|>assistant<|channel|>commentary to=crm.lookup <|constrain|>json<|message|>{\"name\": \"Ada\"}<|call|>"},
    {"when": "patch the file", "output":
        "<|channel|>analysis<|message|>Write a patch.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>Patching.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.apply_patch<|message|>*** Begin Patch\n*** End Patch<|call|>"},
    # Codex CLI's shell tool (what Codex 0.171 sends is in codex_request.json).
    {"when": "Please run echo hello", "output":
        "<|channel|>analysis<|message|>Run the command.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>Running it.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.exec_command <|constrain|>json<|message|>"
        "{\"cmd\": \"echo hello | tee codex-ran.txt\"}<|call|>"},
    # Any tool result: the turn ends with an answer.
    {"when": " to=assistant<|channel|>", "output":
        "<|channel|>analysis<|message|>Got the result.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>All done: the tool answered.<|return|>"},
    {"when": "think first", "output":
        "<|channel|>analysis<|message|>Let me think.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>The answer is 4.<|return|>"},
    {"when": "no header", "output": "Plain text with no header<|end|>"},
]

WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CRM = {"type": "namespace", "name": "crm", "description": "The customer database.", "tools": [
    {"type": "function", "name": "lookup", "description": "Find a customer.",
     "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}]}
PATCH = {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch.",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: \"*** Begin Patch\" /.+/"}}
HOSTED = [{"type": "web_search", "external_web_access": True}, {"type": "web_search_preview"},
          {"type": "file_search", "vector_store_ids": ["vs_1"]}, {"type": "code_interpreter", "container": {"type": "auto"}},
          {"type": "image_generation"}, {"type": "mcp", "server_label": "x", "server_url": "http://127.0.0.1:1"},
          {"type": "local_shell"}, {"type": "computer_use_preview", "display_width": 1, "display_height": 1,
                                    "environment": "linux"}, {"type": "something_new", "x": 1}]
TOOLS = [WEATHER, CRM, PATCH, *HOSTED]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("responses") / "scripts.json"
    path.write_text(json.dumps({"scripts": SCRIPTS}))
    s = Server(["--script", str(path), "--served-model-name", "gpt-oss-20b"], "responses")
    yield s
    s.stop()


def error_of(resp):
    status, _, body = resp
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return status, body["error"]


def rendered(server, body):
    """The prompt `POST /v1/responses` would run for this body, as token ids."""
    status, _, t = server.raw("POST", "/tokenize", body)
    assert status == 200, t
    return t["tokens"]


def text_of(server, tokens):
    return server.raw("POST", "/detokenize", {"tokens": tokens})[2]["prompt"]


def replay(items):
    """Output items as a stateless client sends them back (the SDK's `model_dump`)."""
    return [i.model_dump() for i in items]


# 1. Every tool type clients send.

def test_every_tool_type_is_accepted_and_hosted_ones_are_left_out(server):
    c = server.client()
    r = c.responses.create(model="gpt-oss-20b", input="hi", tools=TOOLS)
    assert r.status == "completed" and r.output_text == "Hello!"
    assert [t.type for t in r.tools][:3] == ["function", "namespace", "custom"]
    text = text_of(server, rendered(server, {"input": "hi", "tools": TOOLS}))
    assert "## crm\n\n// The customer database.\nnamespace crm {\n\n// Find a customer.\ntype lookup" in text
    assert "type apply_patch = (_: string) => any;" in text and "free-form text" in text
    for hosted in ("web_search", "file_search", "code_interpreter", "image_generation", "mcp", "something_new"):
        assert hosted not in text
    assert "left out of the prompt: web_search, web_search_preview, file_search" in server.logs()
    # Chat Completions has only function tools: anything else stays a 400 naming the field.
    status, e = error_of(server.raw("POST", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search"}]}))
    assert status == 400 and e["param"] == "tools[0].type"


def test_namespace_call_round_trip(server):
    c = server.client()
    r = c.responses.create(model="gpt-oss-20b", input="Please look up ada", tools=TOOLS)
    call = r.output[-1]
    assert call.type == "function_call" and call.namespace == "crm" and call.name == "lookup"
    assert json.loads(call.arguments) == {"name": "Ada"}
    items = [{"role": "user", "content": "Please look up ada"}, *replay(r.output),
             {"type": "function_call_output", "call_id": call.call_id, "output": "{\"id\": 7}"}]
    r2 = c.responses.create(model="gpt-oss-20b", input=items, tools=TOOLS)
    assert r2.output_text == "All done: the tool answered."
    text = text_of(server, rendered(server, {"input": items, "tools": TOOLS}))
    assert ("<|start|>assistant to=crm.lookup<|channel|>commentary <|constrain|>json<|message|>{\"name\": \"Ada\"}"
            "<|call|><|start|>crm.lookup to=assistant<|channel|>commentary<|message|>{\"id\": 7}<|end|>") in text


def test_custom_tool_call_round_trip_and_events(server):
    c = server.client()
    r = c.responses.create(model="gpt-oss-20b", input="patch the file", tools=TOOLS)
    assert [o.type for o in r.output] == ["reasoning", "message", "custom_tool_call"]
    call = r.output[-1]
    assert call.name == "apply_patch" and call.input == "*** Begin Patch\n*** End Patch"
    assert call.call_id.startswith("call_")
    events = list(c.responses.create(model="gpt-oss-20b", input="patch the file", tools=TOOLS, stream=True))
    types = [e.type for e in events]
    i = types.index("response.custom_tool_call_input.delta")
    assert types[i - 1] == "response.output_item.added" and types[i + 1:i + 3] == [
        "response.custom_tool_call_input.done", "response.output_item.done"]
    assert events[i + 1].input == "*** Begin Patch\n*** End Patch"
    assert events[-1].response.output[-1].type == "custom_tool_call"
    items = [{"role": "user", "content": "patch the file"}, *replay(r.output),
             {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "patched"}]
    r2 = c.responses.create(model="gpt-oss-20b", input=items, tools=TOOLS)
    assert r2.output_text == "All done: the tool answered."
    text = text_of(server, rendered(server, {"input": items, "tools": TOOLS}))
    assert ("<|start|>assistant to=functions.apply_patch<|channel|>commentary<|message|>*** Begin Patch\n"
            "*** End Patch<|call|><|start|>functions.apply_patch to=assistant<|channel|>commentary<|message|>"
            "patched<|end|>") in text
    # A named custom tool is forced without a JSON content type.
    r3 = c.responses.create(model="gpt-oss-20b", input="hi", tools=TOOLS,
                            tool_choice={"type": "custom", "name": "apply_patch"})
    assert r3.output[-1].type == "custom_tool_call" and r3.output[-1].name == "apply_patch"


def test_codex_request_as_sent_by_codex_cli(server):
    """The second request of a Codex CLI 0.171 turn, as it sent it (namespace and web_search
    tools, developer items, reasoning, a phased preamble, the shell call and its output)."""
    body = json.loads((HERE / "codex_request.json").read_text())
    assert {t["type"] for t in body["tools"]} >= {"function", "namespace", "web_search"}
    text = text_of(server, rendered(server, body))
    assert "## multi_agent_v1\n\n// Tools for spawning and managing sub-agents.\nnamespace multi_agent_v1 {" in text
    assert "<|start|>assistant<|channel|>analysis<|message|>I should run the command.<|end|>" in text
    assert "<|start|>assistant<|channel|>commentary<|message|>Running the command now.<|end|>" in text
    assert "<|start|>functions.exec_command to=assistant<|channel|>commentary<|message|>Chunk ID" in text
    body["stream"] = False
    status, _, r = server.raw("POST", "/v1/responses", body)
    assert status == 200, r
    assert r["output"][-1]["phase"] == "final_answer"
    assert r["output"][-1]["content"][0]["text"] == "All done: the tool answered."
    assert r["reasoning"]["summary"] == "auto" and r["parallel_tool_calls"] is True


# 2. Preambles and phases; stateless == previous_response_id, token for token.

def test_preamble_has_phase_and_replays_as_commentary(server):
    c = server.client()
    r = c.responses.create(model="gpt-oss-20b", input="weather in Paris?", tools=TOOLS)
    assert [(o.type, getattr(o, "phase", None)) for o in r.output] == [
        ("reasoning", None), ("message", "commentary"), ("function_call", None)]
    r2 = c.responses.create(model="gpt-oss-20b", input="think first")
    assert r2.output[-1].phase == "final_answer"


@pytest.mark.parametrize("question", ["weather in Paris?", "Please look up ada", "patch the file"])
def test_stateless_replay_renders_as_previous_response_id(server, question):
    c = server.client()
    first = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": question}]
    r = c.responses.create(model="gpt-oss-20b", input=first, tools=TOOLS, store=True)
    assert r.output[-1].type in ("function_call", "custom_tool_call")
    out_type = "custom_tool_call_output" if r.output[-1].type == "custom_tool_call" else "function_call_output"
    result = {"type": out_type, "call_id": r.output[-1].call_id, "output": "42"}
    by_id = rendered(server, {"previous_response_id": r.id, "input": [result], "tools": TOOLS})
    items = [*first, *replay(r.output), result]
    assert rendered(server, {"input": items, "tools": TOOLS}) == by_id
    # Without phase (older clients), a message before a call in the same turn is a preamble.
    no_phase = [{k: v for k, v in i.items() if k != "phase"} for i in items]
    assert rendered(server, {"input": no_phase, "tools": TOOLS}) == by_id
    assert len(by_id) == c.responses.input_tokens.count(
        model="gpt-oss-20b", input=items, tools=TOOLS).input_tokens
    # The finished turn, then a new question: the answer is final, its reasoning dropped.
    r2 = c.responses.create(model="gpt-oss-20b", previous_response_id=r.id, input=[result], tools=TOOLS, store=True)
    assert r2.output[-1].phase == "final_answer"
    nxt = {"role": "user", "content": "and now?"}
    by_id = rendered(server, {"previous_response_id": r2.id, "input": [nxt], "tools": TOOLS})
    items += [*replay(r2.output), nxt]
    assert rendered(server, {"input": items, "tools": TOOLS}) == by_id
    no_phase = [{k: v for k, v in i.items() if k != "phase"} for i in items]
    assert rendered(server, {"input": no_phase, "tools": TOOLS}) == by_id
    text = text_of(server, by_id)
    assert "Got the result." not in text and "<|channel|>final<|message|>All done" in text


# 3. The rest of the surface.

def test_usage_details_in_objects_and_events(server):
    c = server.client()
    r = c.responses.create(model="gpt-oss-20b", input="think first")
    assert r.usage.input_tokens_details.cache_write_tokens == 0
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    events = list(c.responses.create(model="gpt-oss-20b", input="think first", stream=True))
    done = events[-1].response.usage
    assert done.input_tokens_details.cache_write_tokens == 0 and done.output_tokens_details.reasoning_tokens > 0


def test_logprobs_on_output_text_and_deltas(server):
    c = server.client()
    r = c.responses.create(model="gpt-oss-20b", input="think first", top_logprobs=2,
                           include=["message.output_text.logprobs"])
    part = r.output[-1].content[0]
    assert "".join(lp.token for lp in part.logprobs) == "The answer is 4."
    assert all(lp.logprob == 0.0 and len(lp.top_logprobs) == 2 for lp in part.logprobs)
    assert r.top_logprobs == 2
    events = list(c.responses.create(model="gpt-oss-20b", input="think first", top_logprobs=1, stream=True,
                                     include=["message.output_text.logprobs"]))
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert "".join(lp.token for d in deltas for lp in d.logprobs) == "The answer is 4."
    done = [e for e in events if e.type == "response.output_text.done"][0]
    assert len(done.logprobs) == sum(len(d.logprobs) for d in deltas)
    # Not asked for: empty.
    r = c.responses.create(model="gpt-oss-20b", input="think first")
    assert r.output[-1].content[0].logprobs == []
    # Chat Completions: text the model wrote with no header has its logprobs too.
    cr = c.chat.completions.create(model="gpt-oss-20b", messages=[{"role": "user", "content": "no header"}],
                                   logprobs=True)
    assert "".join(t.token for t in cr.choices[0].logprobs.content) == cr.choices[0].message.content
    assert cr.choices[0].message.content == "Plain text with no header"


def test_reasoning_summary_and_parallel_tool_calls_are_echoed(server):
    c = server.client()
    r = c.responses.create(model="gpt-oss-20b", input="think first", reasoning={"effort": "low", "summary": "detailed"},
                           parallel_tool_calls=False)
    assert r.reasoning.effort == "low" and r.reasoning.summary == "detailed"
    assert r.parallel_tool_calls is False
    assert r.output[0].type == "reasoning" and r.output[0].summary == []
    r = c.responses.create(model="gpt-oss-20b", input="think first")
    assert r.parallel_tool_calls is True and r.reasoning.summary is None


def test_conversation_is_refused_by_name(server):
    status, e = error_of(server.raw("POST", "/v1/responses", {"input": "hi", "conversation": "conv_1"}))
    assert status == 400 and e["param"] == "conversation"
    with pytest.raises(openai.BadRequestError):
        server.client().responses.create(model="gpt-oss-20b", input="hi", conversation="conv_1")


def test_delete_and_input_items(server):
    c = server.client()
    items = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"},
             {"role": "user", "content": "think first"}]
    r = c.responses.create(model="gpt-oss-20b", input=items, store=True)
    listed = c.responses.input_items.list(r.id)
    assert [i.content[0].text for i in listed.data] == ["think first", "two", "one"]  # newest first
    assert listed.first_id == listed.data[0].id and listed.last_id == listed.data[-1].id
    assert listed.has_more is False
    page = c.responses.input_items.list(r.id, order="asc", limit=2)
    assert [i.content[0].text for i in page.data] == ["one", "two"] and page.has_more is True
    rest = c.responses.input_items.list(r.id, order="asc", after=page.last_id)
    assert [i.content[0].text for i in rest.data] == ["think first"] and rest.has_more is False
    status, e = error_of(server.raw("GET", f"/v1/responses/{r.id}/input_items?limit=0"))
    assert status == 400 and e["param"] == "limit"
    status, _, body = server.raw("DELETE", f"/v1/responses/{r.id}")
    assert status == 200 and body == {"id": r.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    for method, path in [("DELETE", f"/v1/responses/{r.id}"), ("GET", f"/v1/responses/{r.id}/input_items")]:
        status, e = error_of(server.raw(method, path))
        assert status == 404 and e["code"] == "response_not_found" and e["param"] == "response_id"
    c.responses.delete(c.responses.create(model="gpt-oss-20b", input="x", store=True).id)


def test_input_tokens_counts_the_rendered_prompt(server):
    c = server.client()
    n = c.responses.input_tokens.count(model="gpt-oss-20b", input="hi", tools=TOOLS, instructions="Be brief.")
    assert n.object == "response.input_tokens"
    assert n.input_tokens == len(rendered(server, {"input": "hi", "tools": TOOLS, "instructions": "Be brief."}))
    r = c.responses.create(model="gpt-oss-20b", input="hi", tools=TOOLS, instructions="Be brief.")
    assert r.usage.input_tokens == n.input_tokens
    status, e = error_of(server.raw("POST", "/v1/responses/input_tokens", {"input": "hi", "conversation": "c"}))
    assert status == 400 and e["param"] == "conversation"


def test_errors_name_each_endpoints_own_param(server):
    long = "word " * 9000
    status, e = error_of(server.raw("POST", "/v1/responses", {"input": long}))
    assert status == 400 and e["code"] == "context_length_exceeded" and e["param"] == "input"
    status, e = error_of(server.raw("POST", "/v1/responses", {"input": "x", "max_output_tokens": 9000}))
    assert e["param"] == "max_output_tokens"
    status, e = error_of(server.raw("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": long}]}))
    assert e["param"] == "messages"
    status, e = error_of(server.raw("POST", "/v1/completions", {"prompt": long}))
    assert e["param"] == "prompt"
    status, e = error_of(server.raw("POST", "/v1/responses", {"input": [
        {"type": "function_call_output", "call_id": "nope", "output": "1"}]}))
    assert status == 400 and e["param"] == "input[0].call_id"
    status, e = error_of(server.raw("POST", "/v1/responses", {"input": [
        {"role": "assistant", "content": "x", "phase": "later"}]}))
    assert status == 400 and e["param"] == "input[0].phase"
    status, e = error_of(server.raw("POST", "/v1/responses", {"input": "x", "tools": [
        {"type": "namespace", "name": "n", "tools": [{"type": "web_search"}]}]}))
    assert status == 400 and e["param"] == "tools[0].tools[0].type"

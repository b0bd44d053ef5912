"""Protocol cases that need a particular model output, from the scripted token source behind
the same engine, scheduler and HTTP code as the model."""

import json

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]}}}]
FLAT_TOOLS = [{"type": "function", **TOOLS[0]["function"]}]


def test_chat_tool_call_round_trip(scripted_server):
    c = scripted_server.client()
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = c.chat.completions.create(model="scripted", messages=msgs, tools=TOOLS)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    assert ch.message.content is None
    assert ch.message.reasoning == "The user wants the weather. Call get_weather."
    (call,) = ch.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert call.id.startswith("call_")
    # The tool result goes back with the call (and its reasoning) in history.
    msgs += [
        {"role": "assistant", "content": None, "reasoning_content": ch.message.reasoning,
         "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": 21})},
    ]
    r2 = c.chat.completions.create(model="scripted", messages=msgs, tools=TOOLS)
    assert r2.choices[0].finish_reason == "stop"
    assert r2.choices[0].message.content == "It is 21 degrees in Paris."
    assert r2.choices[0].message.tool_calls is None
    # The rendered prompt carries the call and the result under the function's name.
    t = scripted_server.raw("POST", "/tokenize", {"messages": msgs, "tools": TOOLS, "return_token_strs": True})[2]
    text = "".join(t["token_strs"])
    assert "to=functions.get_weather" in text and "<|start|>functions.get_weather to=assistant" in text


def test_chat_tool_call_streaming(scripted_server):
    c = scripted_server.client()
    chunks = list(c.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "weather in Paris?"}], tools=TOOLS, stream=True))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert calls[0].id and calls[0].function.name == "get_weather" and calls[0].index == 0
    assert all(tc.index == 0 for tc in calls)
    assert all(tc.id in (None, calls[0].id) for tc in calls)
    args = "".join(tc.function.arguments or "" for tc in calls)
    assert json.loads(args) == {"city": "Paris", "unit": "celsius"}
    reasoning = "".join(getattr(d, "reasoning", None) or "" for d in deltas)
    assert reasoning == "The user wants the weather. Call get_weather."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_analysis_then_final_past_end(scripted_server):
    # The model writes <|end|> and carries on into the next message: both are parsed.
    r = scripted_server.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "think first: 2+2?"}])
    m = r.choices[0].message
    assert m.reasoning == "Let me think." and m.reasoning_content == "Let me think."
    assert m.content == "The answer is 4."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    # include_reasoning=false drops it.
    r = scripted_server.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "think first"}], extra_body={"include_reasoning": False})
    assert getattr(r.choices[0].message, "reasoning", None) is None


def test_preamble_and_final_are_content(scripted_server):
    r = scripted_server.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "preamble please"}])
    assert r.choices[0].message.content == "Checking.\n\nDone."


def test_malformed_output_is_recovered(scripted_server):
    c = scripted_server.client()
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "no header"}])
    assert r.choices[0].message.content == "Plain text with no header"
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "missing message token"}])
    assert "Salvaged answer" in (r.choices[0].message.content or "")
    assert r.choices[0].message.reasoning == "hmm"
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "garbled recipient"}],
                                  tools=TOOLS)
    assert r.choices[0].finish_reason in ("stop", "tool_calls")
    # A call to a tool the request did not declare is not surfaced as a tool call.
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "undeclared tool"}])
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].finish_reason == "stop"
    # Streaming the same never breaks the stream.
    chunks = list(c.chat.completions.create(model="scripted", stream=True,
                                            messages=[{"role": "user", "content": "missing message token"}]))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stop_strings_and_length(scripted_server):
    c = scripted_server.client()
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "count to ten"}],
                                  stop=["five"])
    assert r.choices[0].message.content == "one two three four "
    assert r.choices[0].finish_reason == "stop"
    chunks = list(c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "count to ten"}],
                                            stop=[" fi", "six"], stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "one two three four"
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "count to ten"}],
                                  max_completion_tokens=6)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6


def test_responses_tool_call_round_trip_with_previous_response(scripted_server):
    c = scripted_server.client()
    r = c.responses.create(model="scripted", input="What is the weather in Paris?", tools=FLAT_TOOLS,
                           reasoning={"effort": "high"}, store=True)
    assert r.status == "completed"
    assert [o.type for o in r.output] == ["reasoning", "function_call"]
    assert r.output[0].content[0].type == "reasoning_text"
    call = r.output[1]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    r2 = c.responses.create(model="scripted", previous_response_id=r.id, tools=FLAT_TOOLS, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temp": 21})}])
    assert r2.output[-1].type == "message"
    assert r2.output_text == "It is 21 degrees in Paris."
    assert r2.previous_response_id == r.id
    # The whole conversation as items, without the store.
    r3 = c.responses.create(model="scripted", tools=FLAT_TOOLS, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "{\"temp\": 21}"}], store=False)
    assert r3.output_text == "It is 21 degrees in Paris."
    # Stored responses can be fetched; unknown ones are 404.
    assert c.responses.retrieve(r.id).id == r.id
    st, _, body = scripted_server.raw("POST", "/v1/responses", {"input": "x", "previous_response_id": "resp_nope"})
    assert st == 404 and body["error"]["param"] == "previous_response_id"


def test_responses_streaming_function_call_events(scripted_server):
    events = list(scripted_server.client().responses.create(
        model="scripted", input="weather in Paris", tools=FLAT_TOOLS, stream=True))
    types = [e.type for e in events]
    assert types == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        *["response.reasoning_text.delta"] * types.count("response.reasoning_text.delta"),
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * types.count("response.function_call_arguments.delta"),
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    added = [e for e in events if e.type == "response.output_item.added"][1]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert all(d.item_id == added.item.id for d in deltas)
    assert json.loads("".join(d.delta for d in deltas)) == {"city": "Paris", "unit": "celsius"}


def test_responses_message_stream(scripted_server):
    events = list(scripted_server.client().responses.create(model="scripted", input="think first", stream=True))
    types = [e.type for e in events]
    i = types.index("response.output_text.delta")
    assert types[i - 2:i] == ["response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert events[-1].response.output_text == "The answer is 4."


def test_tool_choice_named_forces_the_call(scripted_server):
    # The header is written for the model, so even a plain-text script becomes the call's arguments.
    r = scripted_server.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    # Streaming: the forced header's call comes first, with its id and name.
    chunks = list(scripted_server.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hi"}], tools=TOOLS, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls[0].id.startswith("call_") and calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    r = scripted_server.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hi"}], tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None


def test_response_format_is_rendered(scripted_server):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    t = scripted_server.raw("POST", "/tokenize", {"messages": [{"role": "user", "content": "x"}]})[2]
    r = scripted_server.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}})
    assert r.usage.prompt_tokens > t["count"]  # the # Response Formats section is in the prompt


def test_optional_fields_are_null_not_absent(scripted_server):
    # OpenAI's SDK keeps unknown keys as attributes: a key left out raises AttributeError
    # on `message.reasoning`, the README's own snippet included.
    r = scripted_server.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hello"}])
    m = r.choices[0].message
    assert m.content == "Hello!"
    assert m.reasoning is None and m.reasoning_content is None and m.refusal is None

"""Constrained decoding (spec harmony §4.6): response_format json_schema (strict) and
json_object, text.format in the Responses API, and strict tools' arguments are enforced while
sampling. The harshest case is the random-weight tiny model: it never wants to write JSON, so
every output below parses and validates only because the grammar made it."""

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

ADDRESS = {
    "type": "object",
    "properties": {
        "street": {"type": "string", "maxLength": 40},
        "city": {"type": "string"},
        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
    },
    "required": ["street", "city", "zip"],
    "additionalProperties": False,
}

SCHEMAS = {
    "flat": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["name", "age", "ok"],
        "additionalProperties": False,
    },
    "nested": {
        "type": "object",
        "properties": {"person": {"type": "object", "properties": {"name": {"type": "string"}, "address": ADDRESS},
                                  "required": ["name", "address"], "additionalProperties": False}},
        "required": ["person"],
        "additionalProperties": False,
    },
    "array_bounds": {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4}},
        "required": ["tags"],
        "additionalProperties": False,
    },
    "array_of_objects": {
        "type": "object",
        "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "properties": {"id": {"type": "integer"}, "label": {"type": "string"}},
            "required": ["id", "label"], "additionalProperties": False}}},
        "required": ["items"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    },
    "enum_mixed": {
        "type": "object",
        "properties": {"v": {"enum": ["a", 1, 2.5, None, True]}},
        "required": ["v"],
        "additionalProperties": False,
    },
    "any_of_scalars": {
        "type": "object",
        "properties": {"id": {"anyOf": [{"type": "string", "pattern": "^id-[a-z]{2,4}$"}, {"type": "integer", "minimum": 0}]}},
        "required": ["id"],
        "additionalProperties": False,
    },
    "any_of_objects": {
        "type": "object",
        "properties": {"shape": {"anyOf": [
            {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number", "minimum": 0}},
             "required": ["kind", "r"], "additionalProperties": False},
            {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer", "minimum": 1}},
             "required": ["kind", "side"], "additionalProperties": False},
        ]}},
        "required": ["shape"],
        "additionalProperties": False,
    },
    "ref_defs": {
        "$defs": {"address": ADDRESS},
        "type": "object",
        "properties": {"home": {"$ref": "#/$defs/address"}, "work": {"$ref": "#/$defs/address"}},
        "required": ["home", "work"],
        "additionalProperties": False,
    },
    "ref_recursive": {
        "$defs": {"node": {"type": "object", "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/node"}}},
            "required": ["value", "children"], "additionalProperties": False}},
        "$ref": "#/$defs/node",
    },
    "pattern": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}},
        "required": ["code"],
        "additionalProperties": False,
    },
    "format_date": {
        "type": "object",
        "properties": {"born": {"type": "string", "format": "date"}},
        "required": ["born"],
        "additionalProperties": False,
    },
    "format_email": {
        "type": "object",
        "properties": {"email": {"type": "string", "format": "email"}},
        "required": ["email"],
        "additionalProperties": False,
    },
    "format_uuid": {
        "type": "object",
        "properties": {"id": {"type": "string", "format": "uuid"}},
        "required": ["id"],
        "additionalProperties": False,
    },
    "number_bounds": {
        "type": "object",
        "properties": {"t": {"type": "number", "minimum": -40, "maximum": 60.5}},
        "required": ["t"],
        "additionalProperties": False,
    },
    "integer_exclusive": {
        "type": "object",
        "properties": {"n": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 20}},
        "required": ["n"],
        "additionalProperties": False,
    },
    "fraction_exclusive": {
        "type": "object",
        "properties": {"p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
        "required": ["p"],
        "additionalProperties": False,
    },
    "optional": {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": "boolean"}},
        "required": ["a"],
        "additionalProperties": False,
    },
    "const": {
        "type": "object",
        "properties": {"version": {"const": 2}, "name": {"type": "string"}},
        "required": ["version", "name"],
        "additionalProperties": False,
    },
    "nullable": {
        "type": "object",
        "properties": {"note": {"type": ["string", "null"]}, "count": {"type": ["integer", "null"]}},
        "required": ["note", "count"],
        "additionalProperties": False,
    },
    "string_length": {
        "type": "object",
        "properties": {"s": {"type": "string", "minLength": 3, "maxLength": 8}},
        "required": ["s"],
        "additionalProperties": False,
    },
    "multiple_of": {
        "type": "object",
        "properties": {"n": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 100}},
        "required": ["n"],
        "additionalProperties": False,
    },
    "top_level_array": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 5},
    "open_object": {"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]},
}


def check(doc_text, schema):
    doc = json.loads(doc_text)
    jsonschema.validate(doc, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return doc


def ask(client, name, schema, seed):
    r = client.chat.completions.create(
        model="gpt-oss-tiny", messages=[{"role": "user", "content": f"Give me a {name}."}], max_tokens=300,
        seed=seed, response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}})
    return r.choices[0]


def test_every_schema_parses_and_validates_on_the_random_model(model_server):
    c = model_server.client(timeout=600)
    jobs = [(name, schema, seed) for seed in (1, 2) for name, schema in SCHEMAS.items()]
    with ThreadPoolExecutor(8) as pool:
        choices = list(pool.map(lambda j: ask(c, *j), jobs))
    failures = []
    for (name, schema, seed), choice in zip(jobs, choices):
        try:
            assert choice.finish_reason == "stop", choice.finish_reason
            check(choice.message.content, schema)
        except Exception as e:  # collect them all: the report names every schema that failed
            failures.append(f"{name} (seed {seed}): {e!r}: {choice.message.content!r}")
    assert not failures, "\n".join(failures)
    assert len(jobs) >= 40


def test_json_object_and_streaming(model_server):
    c = model_server.client(timeout=300)
    r = c.chat.completions.create(model="gpt-oss-tiny", messages=[{"role": "user", "content": "JSON please"}],
                                  max_tokens=200, seed=3, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    schema = SCHEMAS["array_of_objects"]
    stream = c.chat.completions.create(
        model="gpt-oss-tiny", messages=[{"role": "user", "content": "stream it"}], max_tokens=250, seed=4,
        stream=True, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
    text, finish = "", None
    for chunk in stream:
        for ch in chunk.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert finish == "stop"
    check(text, schema)


def test_responses_text_format(model_server):
    c = model_server.client(timeout=300)
    for name in ("nested", "ref_defs", "format_uuid"):
        schema = SCHEMAS[name]
        r = c.responses.create(model="gpt-oss-tiny", input=f"a {name}", max_output_tokens=300,
                               text={"format": {"type": "json_schema", "name": name, "schema": schema, "strict": True}})
        assert r.status == "completed"
        check(r.output_text, schema)
    r = c.responses.create(model="gpt-oss-tiny", input="json", max_output_tokens=200,
                           text={"format": {"type": "json_object"}})
    assert isinstance(json.loads(r.output_text), dict)


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}


def test_strict_tool_arguments_validate(model_server):
    c = model_server.client(timeout=300)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "strict": True}}]
    for seed in (1, 2, 3):
        r = c.chat.completions.create(model="gpt-oss-tiny", messages=[{"role": "user", "content": "weather?"}],
                                      max_tokens=120, seed=seed, tools=tools,
                                      tool_choice={"type": "function", "function": {"name": "get_weather"}})
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather"
        check(call.function.arguments, WEATHER)
    # The Responses API's flat tools.
    r = c.responses.create(model="gpt-oss-tiny", input="weather?", max_output_tokens=120,
                           tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER, "strict": True}],
                           tool_choice={"type": "function", "name": "get_weather"})
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    check(calls[0].arguments, WEATHER)


def test_unsupported_schema_is_a_400_naming_the_keyword(model_server):
    bad = {"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}
    status, _, body = model_server.raw("POST", "/v1/chat/completions", {
        "model": "gpt-oss-tiny", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": bad, "strict": True}}})
    assert status == 400, body
    assert body["error"]["param"] == "response_format.json_schema.schema"
    assert "uniqueItems" in body["error"]["message"]
    status, _, body = model_server.raw("POST", "/v1/responses", {
        "model": "gpt-oss-tiny", "input": "hi",
        "text": {"format": {"type": "json_schema", "name": "x", "schema": bad, "strict": True}}})
    assert status == 400 and body["error"]["param"] == "text.format.schema", body
    assert "uniqueItems" in body["error"]["message"]
    status, _, body = model_server.raw("POST", "/v1/chat/completions", {
        "model": "gpt-oss-tiny", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": bad, "strict": True}}]})
    assert status == 400 and body["error"]["param"] == "tools[0].function.parameters", body
    assert "uniqueItems" in body["error"]["message"]
    # Without strict the schema only guides the prompt, as before.
    status, _, body = model_server.raw("POST", "/v1/chat/completions", {
        "model": "gpt-oss-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": bad}}})
    assert status == 200, body


def test_scripted_output_is_forced_into_the_schema(scripted_server):
    """The script answers "Hello!"; the grammar turns it into a JSON object, header and all."""
    c = scripted_server.client()
    r = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}],
                                  max_tokens=60, response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    m = scripted_server.metrics()
    assert m["gptoss_constraint_masks_total"] > 0

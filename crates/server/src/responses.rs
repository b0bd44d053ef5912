//! `POST /v1/responses` (spec harmony §5): input items to a harmony prompt, output items in
//! generation order (reasoning, function calls, messages), the §5.4 event sequence when
//! streaming, and `previous_response_id` over a bounded in-memory store.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gptoss_engine::harmony::{Content, DeveloperContent, Message, Role};
use gptoss_engine::rng::Rng;
use gptoss_engine::Sampled;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::engine::{Event, Finish, FinishReason, JobSpec};
use crate::error::ApiError;
use crate::fields::{wrong, Obj};
use crate::http::{self, next_events, AppState, RequestLog};
use crate::output::{random_id, Item, Kind, Output, Piece, ToolRef};
use crate::prompt::{self, call_message, result_message, text_content, PromptSpec};
use events::run;

mod events;
#[cfg(test)]
mod tests;

/// call_id → the tool it called, for tool results to name their tool.
type Calls = Vec<(String, ToolRef)>;

/// What a later request needs to continue from a response.
#[derive(Clone)]
pub struct Stored {
    /// The conversation after system and developer: earlier input, this input, the output.
    messages: Vec<Message>,
    calls: Calls,
    /// Leading system/developer input items (of this response and the ones before it): they
    /// become instructions, and a continuation keeps them as a stateless client resends them.
    input_instructions: Vec<String>,
    /// This request's input items, each with an id, for `GET .../input_items`.
    input_items: Vec<Value>,
    object: Value,
}

/// The most recent responses, oldest evicted first.
pub struct ResponseStore {
    capacity: usize,
    order: VecDeque<String>,
    map: HashMap<String, Stored>,
}

impl ResponseStore {
    pub fn new(capacity: usize) -> Self {
        ResponseStore { capacity, order: VecDeque::new(), map: HashMap::new() }
    }

    pub fn insert(&mut self, id: String, s: Stored) {
        if self.map.insert(id.clone(), s).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Stored> {
        self.map.get(id)
    }

    pub fn remove(&mut self, id: &str) -> bool {
        let found = self.map.remove(id).is_some();
        if found {
            self.order.retain(|o| o != id);
        }
        found
    }
}

struct ResponsesRequest {
    prompt: prompt::Prompt,
    job: JobSpec,
    stream: bool,
    store: bool,
    conversation: Vec<Message>,
    calls: Calls,
    input_instructions: Vec<String>,
    input_items: Vec<Value>,
    /// `include: ["message.output_text.logprobs"]`: logprobs on output text, with this many
    /// alternatives each.
    logprobs: Option<usize>,
    /// Request fields echoed in the response object.
    echo: Map<String, Value>,
}

/// Input items of types this server neither runs nor renders (results of hosted tools another
/// server ran): skipped with a log line.
const HOSTED_ITEMS: &[&str] = &[
    "web_search_call",
    "file_search_call",
    "computer_call",
    "computer_call_output",
    "code_interpreter_call",
    "image_generation_call",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "mcp_call",
    "item_reference",
    "tool_search_call",
    "tool_search_output",
];

/// The conversation so far and what it adds to the instructions.
struct Input {
    messages: Vec<Message>,
    calls: Calls,
    /// Leading system/developer items of this input.
    instructions: Vec<String>,
    /// This input's items, each with an id.
    items: Vec<Value>,
}

/// The tool a call item names: `name`, and `namespace` when given.
fn call_tool(it: &Obj, custom: bool) -> Result<ToolRef, ApiError> {
    Ok(ToolRef { namespace: it.str("namespace")?.map(str::to_string), name: it.req_str("name")?.to_string(), custom })
}

/// A tool output item's `output`: text, content parts (their text), or JSON.
fn tool_output(it: &Obj) -> Result<String, ApiError> {
    Ok(match it.get("output") {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Array(_)) => text_content(Some(v), &it.path("output"))?,
        Some(v) => v.to_string(),
        None => String::new(),
    })
}

fn input_items(o: &Obj, previous: Option<&Stored>, required: bool) -> Result<Input, ApiError> {
    let mut messages: Vec<Message> = previous.map(|p| p.messages.clone()).unwrap_or_default();
    let mut calls = previous.map(|p| p.calls.clone()).unwrap_or_default();
    let mut instructions = Vec::new();
    let mut rng = Rng::new(Rng::entropy_seed());
    let empty = Vec::new();
    let items = match o.get("input") {
        None if required && previous.is_none() => return Err(ApiError::invalid("input", "`input` is required")),
        None => &empty,
        Some(Value::String(s)) => {
            messages.push(Message::text(Role::User, s.clone()));
            let item = json!({"id": random_id(&mut rng, "msg_", 32), "type": "message", "role": "user",
                              "status": "completed", "content": [{"type": "input_text", "text": s}]});
            return Ok(Input { messages, calls, instructions, items: vec![item] });
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong("input", "a string or an array of items", v)),
    };
    if items.is_empty() && previous.is_none() && required {
        return Err(ApiError::invalid("input", "`input` must contain at least one item"));
    }
    // An assistant message without `phase` is a preamble (commentary) when a tool call follows
    // it in the same turn, i.e. before the next user message: how OpenAI's own output reads.
    let mut call_follows = vec![false; items.len()];
    let mut ahead = false;
    for (i, item) in items.iter().enumerate().rev() {
        call_follows[i] = ahead;
        let kind = item.get("type").and_then(Value::as_str);
        let role = item.get("role").and_then(Value::as_str);
        match (kind, role) {
            (Some("function_call" | "custom_tool_call"), _) => ahead = true,
            (Some("message") | None, Some("user")) => ahead = false,
            _ => {}
        }
    }
    let mut stored_items = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("input[{i}]");
        let Value::Object(m) = item else { return Err(wrong(&path, "an item object", item)) };
        let it = Obj::new(m, &path);
        let kind = match it.str("type")? {
            Some(t) => t,
            None if it.get("role").is_some() => "message",
            None => return Err(ApiError::invalid(it.path("type"), format!("`{}` is required", it.path("type")))),
        };
        let prefix = match kind {
            "message" => "msg_",
            "reasoning" => "rs_",
            "function_call" => "fc_",
            "function_call_output" => "fco_",
            "custom_tool_call" => "ctc_",
            "custom_tool_call_output" => "ctco_",
            _ => "item_",
        };
        let mut stored = m.clone();
        stored.entry("type").or_insert_with(|| json!(kind));
        if !stored.get("id").is_some_and(Value::is_string) {
            stored.insert("id".into(), json!(random_id(&mut rng, prefix, 32)));
        }
        if kind == "message" {
            // As OpenAI lists them: content as parts, with a status.
            if let Some(Value::String(text)) = stored.get("content") {
                let part = if m.get("role").and_then(Value::as_str) == Some("assistant") {
                    "output_text"
                } else {
                    "input_text"
                };
                let parts = json!([{"type": part, "text": text}]);
                stored.insert("content".into(), parts);
            }
            stored.entry("status").or_insert_with(|| json!("completed"));
        }
        stored_items.push(Value::Object(stored));
        match kind {
            "message" => {
                let text = text_content(it.get("content"), &it.path("content"))?;
                match it.req_str("role")? {
                    "user" => messages.push(Message::text(Role::User, text)),
                    "assistant" => {
                        let commentary = match it.str("phase")? {
                            Some("commentary") => true,
                            Some("final_answer") => false,
                            Some(other) => {
                                return Err(ApiError::invalid(
                                    it.path("phase"),
                                    format!("`{}` must be commentary or final_answer, got {other:?}", it.path("phase")),
                                ))
                            }
                            None => call_follows[i],
                        };
                        let channel = if commentary { "commentary" } else { "final" };
                        messages.push(Message::text(Role::Assistant, text).with_channel(channel));
                    }
                    "system" | "developer" if messages.is_empty() => instructions.push(text),
                    "system" | "developer" => {
                        let dev = DeveloperContent { instructions: Some(text), ..Default::default() };
                        messages.push(Message::new(Role::Developer, Content::Developer(dev)));
                    }
                    other => {
                        return Err(ApiError::invalid(
                            it.path("role"),
                            format!("unknown role {other:?}: expected user, assistant, system or developer"),
                        ))
                    }
                }
            }
            "reasoning" => {
                let mut text = text_content(it.get("content"), &it.path("content"))?;
                if text.is_empty() {
                    text = text_content(it.get("summary"), &it.path("summary"))?;
                }
                if !text.is_empty() {
                    messages.push(Message::text(Role::Assistant, text).with_channel("analysis"));
                }
            }
            "function_call" | "custom_tool_call" => {
                let custom = kind == "custom_tool_call";
                let tool = call_tool(&it, custom)?;
                let call_id = it.req_str("call_id")?;
                let arguments = if custom { it.str("input")?.unwrap_or("") } else { it.str("arguments")?.unwrap_or("{}") };
                calls.push((call_id.to_string(), tool.clone()));
                messages.push(call_message(&tool, arguments.to_string()));
            }
            "function_call_output" | "custom_tool_call_output" => {
                let call_id = it.req_str("call_id")?;
                let output = tool_output(&it)?;
                let Some((_, tool)) = calls.iter().rev().find(|(c, _)| c == call_id) else {
                    return Err(ApiError::invalid(
                        it.path("call_id"),
                        format!("no tool call with call_id {call_id:?} in this input or the previous response"),
                    ));
                };
                messages.push(result_message(tool, output));
            }
            other if HOSTED_ITEMS.contains(&other) => {
                eprintln!("input item {other} is from a tool this server does not run; left out of the prompt");
            }
            other => {
                return Err(ApiError::invalid(
                    it.path("type"),
                    format!("input item type {other:?} is not supported (message, reasoning, function_call, function_call_output, custom_tool_call, custom_tool_call_output are)"),
                ))
            }
        }
    }
    Ok(Input { messages, calls, instructions, items: stored_items })
}

/// A request's prompt and what storing its response needs. `required`: `input` must be given
/// (not for counting tokens).
struct Built {
    prompt: prompt::Prompt,
    effort: &'static str,
    format: Option<Map<String, Value>>,
    input: Input,
    /// All instructions from input items so far (previous responses' and this one's).
    input_instructions: Vec<String>,
    /// What the output must satisfy (`text.format` with `strict`, strict tools).
    constraint: Option<crate::constrain::JobConstraint>,
}

fn build(st: &AppState, o: &Obj, required: bool) -> Result<Built, ApiError> {
    http::check_model(st, o)?;
    if o.get("conversation").is_some() {
        return Err(ApiError::invalid(
            "conversation",
            "`conversation` is not supported by this server: send the items as `input`, or use `previous_response_id`",
        ));
    }
    let previous = match o.str("previous_response_id")? {
        Some(id) => Some(
            st.store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(id)
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(
                        Some("previous_response_id"),
                        format!("no stored response with id {id:?} (responses are kept only with `store: true`, and only the most recent)"),
                        "response_not_found",
                    )
                })?,
        ),
        None => None,
    };
    let (spec, input, input_instructions) = spec_of(o, previous, required)?;
    let prompt = spec.render_with(&st.tok, "input")?;
    let format = match o.obj("text")? {
        Some(t) => Obj::new(t, "text").obj("format")?.cloned(),
        None => None,
    };
    let constraint = prompt::constraint(prompt::format_schema(format.as_ref(), "text.format", false)?, &spec, &prompt)?;
    Ok(Built { prompt, effort: spec.effort.as_str(), format, input, input_instructions, constraint })
}

/// The prompt's parts from the request and the response it continues.
fn spec_of(o: &Obj, previous: Option<Stored>, required: bool) -> Result<(PromptSpec, Input, Vec<String>), ApiError> {
    let input = input_items(o, previous.as_ref(), required)?;
    // The `instructions` field is never inherited from the previous response (OpenAI's rule);
    // instructions from its input items are, as they are part of the conversation.
    let mut input_instructions = previous.map(|p| p.input_instructions).unwrap_or_default();
    input_instructions.extend(input.instructions.iter().cloned());
    let mut instructions: Vec<String> = o.str("instructions")?.map(str::to_string).into_iter().collect();
    instructions.extend(input_instructions.iter().cloned());
    let tools = prompt::parse_tools(o, false)?;
    let tool_choice = prompt::parse_tool_choice(o, &tools)?;
    let format = match o.obj("text")? {
        Some(t) => Obj::new(t, "text").obj("format")?,
        None => None,
    };
    let spec = PromptSpec {
        effort: prompt::parse_effort(o)?,
        instructions,
        tools,
        tool_choice,
        response_formats: prompt::parse_response_format(format, "text.format", false)?,
        messages: input.messages.clone(),
    };
    Ok((spec, input, input_instructions))
}

/// The rendered prompt of a Responses request (`/tokenize` with `input`, and
/// `/v1/responses/input_tokens`).
pub fn prompt_tokens(st: &AppState, o: &Obj) -> Result<Vec<u32>, ApiError> {
    Ok(build(st, o, false)?.prompt.tokens)
}

fn parse(st: &AppState, req: &Map<String, Value>) -> Result<ResponsesRequest, ApiError> {
    let o = Obj::new(req, "");
    let Built { prompt, effort, format, input, input_instructions, constraint } = build(st, &o, true)?;
    let asked = o.usize_in("max_output_tokens", 1, usize::MAX >> 1)?;
    let max_tokens = http::fit_context(st, prompt.tokens.len(), asked, "max_output_tokens", "input")?;
    let mut job = http::job(st, &o, prompt.tokens.clone(), max_tokens)?;
    job.constraint = constraint;
    let top_logprobs = o.usize_in("top_logprobs", 0, 20)?;
    let mut logprobs = None;
    if let Some(list) = o.arr("include")? {
        for (i, v) in list.iter().enumerate() {
            match v.as_str() {
                Some("message.output_text.logprobs") => logprobs = Some(top_logprobs.unwrap_or(0)),
                Some(_) => {} // encrypted reasoning, sources, images...: nothing to add
                None => return Err(wrong(&format!("include[{i}]"), "a string", v)),
            }
        }
    }
    job.top_logprobs = logprobs.unwrap_or(0);
    let summary = match o.obj("reasoning")? {
        Some(r) => {
            let r = Obj::new(r, "reasoning");
            match r.str("summary")? {
                Some(s) => Some(s),
                None => r.str("generate_summary")?,
            }
        }
        None => None,
    };
    let parallel = o.bool("parallel_tool_calls")?.unwrap_or(true);
    let mut echo = Map::new();
    echo.insert("instructions".into(), o.get("instructions").cloned().unwrap_or(Value::Null));
    echo.insert("max_output_tokens".into(), json!(asked));
    echo.insert("parallel_tool_calls".into(), json!(parallel));
    echo.insert("previous_response_id".into(), json!(o.str("previous_response_id")?));
    // No summaries are written (reasoning items carry the raw text); the setting is echoed.
    echo.insert("reasoning".into(), json!({"effort": effort, "summary": summary}));
    echo.insert("temperature".into(), json!(job.sampling.temperature));
    echo.insert("top_p".into(), json!(job.sampling.top_p));
    echo.insert("top_logprobs".into(), json!(top_logprobs));
    echo.insert("text".into(), json!({"format": format.map(Value::Object).unwrap_or(json!({"type": "text"}))}));
    echo.insert("tool_choice".into(), o.get("tool_choice").cloned().unwrap_or(json!("auto")));
    echo.insert("tools".into(), o.get("tools").cloned().unwrap_or(json!([])));
    echo.insert("metadata".into(), o.get("metadata").cloned().unwrap_or(json!({})));
    let store = o.bool("store")?.unwrap_or(true);
    echo.insert("store".into(), json!(store));
    Ok(ResponsesRequest {
        prompt,
        job,
        stream: o.bool("stream")?.unwrap_or(false),
        store,
        conversation: input.messages,
        calls: input.calls,
        input_instructions,
        input_items: input.items,
        logprobs,
        echo,
    })
}

pub async fn handle(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let mut log = RequestLog::new(&st, "responses");
    let (req, rx) = match http::accept(&st, &headers, body, &mut log, parse, |r| &r.job).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    log.prompt_tokens = req.prompt.tokens.len();
    let id = random_id(&mut Rng::new(Rng::entropy_seed()), "resp_", 32);
    let (tx, body_rx) = mpsc::channel(64);
    if req.stream {
        tokio::spawn(run(st.clone(), req, rx, tx, id, log));
        http::sse_response(body_rx)
    } else {
        // Awaited here, so a client that leaves drops the generation with this handler.
        match run(st.clone(), req, rx, tx, id, log).await {
            Ok(object) => Json(object).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// The stored response named in the path, through `f`; 404 in OpenAI's shape if unknown.
async fn with_stored(
    st: &AppState,
    headers: &HeaderMap,
    endpoint: &'static str,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    f: impl FnOnce(&mut ResponseStore, &str) -> Option<Value>,
) -> Response {
    let mut log = RequestLog::new(st, endpoint);
    let found = http::authorize(st, headers).and_then(|_| {
        let Path(id) = id.map_err(|e| ApiError::invalid("response_id", format!("bad response id in the path: {e}")))?;
        let mut store = st.store.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut store, &id).ok_or_else(|| {
            ApiError::not_found(Some("response_id"), format!("no stored response with id {id:?}"), "response_not_found")
        })
    });
    match found {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            log.fail(&e);
            e.into_response()
        }
    }
}

pub async fn get_stored(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    with_stored(&st, &headers, "responses.get", id, |store, id| store.get(id).map(|s| s.object.clone())).await
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete_stored(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    with_stored(&st, &headers, "responses.delete", id, |store, id| {
        store.remove(id).then(|| json!({"id": id, "object": "response.deleted", "deleted": true}))
    })
    .await
}

/// `GET /v1/responses/{id}/input_items?limit=&order=&after=`: the request's input items as a
/// list, newest first unless `order=asc`.
pub async fn input_items_list(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: axum::extract::RawQuery,
) -> Response {
    let q = match list_query(query.0.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => {
            let mut log = RequestLog::new(&st, "responses.input_items");
            log.fail(&e);
            return e.into_response();
        }
    };
    with_stored(&st, &headers, "responses.input_items", id, move |store, id| {
        let stored = store.get(id)?;
        let mut items: Vec<&Value> = stored.input_items.iter().collect();
        if !q.ascending {
            items.reverse();
        }
        let start = match &q.after {
            Some(after) => items.iter().position(|v| v["id"] == json!(after)).map_or(items.len(), |p| p + 1),
            None => 0,
        };
        let page: Vec<Value> = items.iter().skip(start).take(q.limit).map(|v| (*v).clone()).collect();
        let has_more = start + page.len() < items.len();
        Some(json!({
            "object": "list", "data": page,
            "first_id": page.first().map(|v| v["id"].clone()), "last_id": page.last().map(|v| v["id"].clone()),
            "has_more": has_more,
        }))
    })
    .await
}

struct ListQuery {
    limit: usize,
    ascending: bool,
    after: Option<String>,
}

fn list_query(raw: &str) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery { limit: 20, ascending: false, after: None };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "limit" => {
                q.limit = v.parse().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| {
                    ApiError::invalid("limit", format!("`limit` must be an integer from 1 to 100, got {v:?}"))
                })?
            }
            "order" => {
                q.ascending = match v.as_str() {
                    "asc" => true,
                    "desc" => false,
                    _ => return Err(ApiError::invalid("order", format!("`order` must be asc or desc, got {v:?}"))),
                }
            }
            "after" => q.after = Some(v),
            _ => {} // include[] and others: nothing to add
        }
    }
    Ok(q)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `POST /v1/responses/input_tokens`: the tokens of the prompt a `POST /v1/responses` with
/// this body would render.
pub async fn input_tokens(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let mut log = RequestLog::new(&st, "responses.input_tokens");
    let result = async {
        let bytes = http::read_body(&st, &headers, body).await?;
        let n = http::cpu(&st, bytes.len(), move |st| {
            let req = crate::fields::parse_body(&bytes)?;
            Ok(prompt_tokens(st, &Obj::new(&req, ""))?.len())
        })
        .await?;
        log.prompt_tokens = n;
        Ok::<_, ApiError>(Json(json!({"object": "response.input_tokens", "input_tokens": n})).into_response())
    }
    .await;
    result.unwrap_or_else(|e| {
        log.fail(&e);
        e.into_response()
    })
}

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
use crate::output::{random_id, Item, Kind, Output, Piece};
use crate::prompt::{self, call_message, result_message, text_content, PromptSpec};

/// call_id → function name, for tool results to name their function.
type Calls = Vec<(String, String)>;

/// What a later request needs to continue from a response.
#[derive(Clone)]
pub struct Stored {
    /// The conversation after system and developer: earlier input, this input, the output.
    messages: Vec<Message>,
    calls: Calls,
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
}

struct ResponsesRequest {
    prompt: prompt::Prompt,
    job: JobSpec,
    stream: bool,
    store: bool,
    conversation: Vec<Message>,
    calls: Calls,
    /// Request fields echoed in the response object.
    echo: Map<String, Value>,
}

fn input_items(
    o: &Obj,
    previous: Option<&Stored>,
    instructions: &mut Vec<String>,
) -> Result<(Vec<Message>, Calls), ApiError> {
    let mut messages: Vec<Message> = previous.map(|p| p.messages.clone()).unwrap_or_default();
    let mut calls = previous.map(|p| p.calls.clone()).unwrap_or_default();
    let items = match o.get("input") {
        None => return Err(ApiError::invalid("input", "`input` is required")),
        Some(Value::String(s)) => {
            messages.push(Message::text(Role::User, s.clone()));
            return Ok((messages, calls));
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong("input", "a string or an array of items", v)),
    };
    if items.is_empty() && previous.is_none() {
        return Err(ApiError::invalid("input", "`input` must contain at least one item"));
    }
    for (i, item) in items.iter().enumerate() {
        let path = format!("input[{i}]");
        let Value::Object(m) = item else { return Err(wrong(&path, "an item object", item)) };
        let it = Obj::new(m, &path);
        let kind = match it.str("type")? {
            Some(t) => t,
            None if it.get("role").is_some() => "message",
            None => return Err(ApiError::invalid(it.path("type"), format!("`{}` is required", it.path("type")))),
        };
        match kind {
            "message" => {
                let text = text_content(it.get("content"), &it.path("content"))?;
                match it.req_str("role")? {
                    "user" => messages.push(Message::text(Role::User, text)),
                    "assistant" => messages.push(Message::text(Role::Assistant, text).with_channel("final")),
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
            "function_call" => {
                let name = it.req_str("name")?;
                let call_id = it.req_str("call_id")?;
                let arguments = it.str("arguments")?.unwrap_or("{}");
                calls.push((call_id.to_string(), name.to_string()));
                messages.push(call_message(name, arguments.to_string()));
            }
            "function_call_output" => {
                let call_id = it.req_str("call_id")?;
                let output = match it.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => text_content(Some(v), &it.path("output"))?,
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                let Some((_, name)) = calls.iter().rev().find(|(c, _)| c == call_id) else {
                    return Err(ApiError::invalid(
                        it.path("call_id"),
                        format!("no function_call with call_id {call_id:?} in this input or the previous response"),
                    ));
                };
                messages.push(result_message(name, output));
            }
            other => {
                return Err(ApiError::invalid(
                    it.path("type"),
                    format!("input item type {other:?} is not supported (message, reasoning, function_call, function_call_output are)"),
                ))
            }
        }
    }
    Ok((messages, calls))
}

fn parse(st: &AppState, req: &Map<String, Value>) -> Result<ResponsesRequest, ApiError> {
    let o = Obj::new(req, "");
    http::check_model(st, &o)?;
    let previous_id = o.str("previous_response_id")?;
    let previous = match previous_id {
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
    // Instructions are never inherited from the previous response (OpenAI's rule).
    let mut instructions: Vec<String> = o.str("instructions")?.map(str::to_string).into_iter().collect();
    let (conversation, calls) = input_items(&o, previous.as_ref(), &mut instructions)?;
    let tools = prompt::parse_tools(&o, false)?;
    let tool_choice = prompt::parse_tool_choice(&o, &tools)?;
    let format = match o.obj("text")? {
        Some(t) => Obj::new(t, "text").obj("format")?,
        None => None,
    };
    let spec = PromptSpec {
        effort: prompt::parse_effort(&o)?,
        instructions,
        tools,
        tool_choice,
        response_formats: prompt::parse_response_format(format, "text.format", false)?,
        messages: conversation.clone(),
    };
    let prompt = spec.render(&st.tok)?;
    let constraint = prompt::constraint(prompt::format_schema(format, "text.format", false)?, &spec, &prompt)?;
    let asked = o.usize_in("max_output_tokens", 1, usize::MAX >> 1)?;
    let max_tokens = http::fit_context(st, prompt.tokens.len(), asked, "max_output_tokens")?;
    let mut job = http::job(st, &o, prompt.tokens.clone(), max_tokens)?;
    job.constraint = constraint;
    let mut echo = Map::new();
    echo.insert("instructions".into(), o.get("instructions").cloned().unwrap_or(Value::Null));
    echo.insert("max_output_tokens".into(), json!(asked));
    echo.insert("parallel_tool_calls".into(), json!(false));
    echo.insert("previous_response_id".into(), json!(previous_id));
    echo.insert("reasoning".into(), json!({"effort": spec.effort.as_str(), "summary": null}));
    echo.insert("temperature".into(), json!(job.sampling.temperature));
    echo.insert("top_p".into(), json!(job.sampling.top_p));
    echo.insert(
        "text".into(),
        json!({"format": format.cloned().map(Value::Object).unwrap_or(json!({"type": "text"}))}),
    );
    echo.insert("tool_choice".into(), o.get("tool_choice").cloned().unwrap_or(json!("auto")));
    echo.insert("tools".into(), o.get("tools").cloned().unwrap_or(json!([])));
    echo.insert("metadata".into(), o.get("metadata").cloned().unwrap_or(json!({})));
    let store = o.bool("store")?.unwrap_or(true);
    echo.insert("store".into(), json!(store));
    Ok(ResponsesRequest { prompt, job, stream: o.bool("stream")?.unwrap_or(false), store, conversation, calls, echo })
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

pub async fn get_stored(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let mut log = RequestLog::new(&st, "responses.get");
    let found = http::authorize(&st, &headers).and_then(|_| {
        let Path(id) = id.map_err(|e| ApiError::invalid("response_id", format!("bad response id in the path: {e}")))?;
        st.store.lock().unwrap_or_else(|e| e.into_inner()).get(&id).map(|s| s.object.clone()).ok_or_else(|| {
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

fn item_json(item: &Item, done: bool) -> Value {
    let status = if !done {
        "in_progress"
    } else if item.complete {
        "completed"
    } else {
        "incomplete"
    };
    match &item.kind {
        Kind::Reasoning => {
            let content = if done { json!([{"type": "reasoning_text", "text": item.text}]) } else { json!([]) };
            json!({"id": item.id, "type": "reasoning", "summary": [], "content": content, "status": status})
        }
        Kind::Text => {
            let content = if done {
                json!([{"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}])
            } else {
                json!([])
            };
            json!({"id": item.id, "type": "message", "role": "assistant", "status": status, "content": content})
        }
        Kind::ToolCall { name, call_id } => json!({
            "id": item.id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": if done { item.text.as_str() } else { "" }, "status": status,
        }),
    }
}

/// Emits SSE events with consecutive sequence numbers (when streaming).
struct Events {
    tx: mpsc::Sender<Bytes>,
    seq: u64,
    on: bool,
    gone: bool,
}

impl Events {
    async fn send(&mut self, kind: &str, mut data: Value) {
        if !self.on || self.gone {
            return;
        }
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        let frame = format!("event: {kind}\ndata: {data}\n\n");
        self.gone = self.tx.send(Bytes::from(frame)).await.is_err();
    }
}

/// One generation, streamed or not; returns the final response object.
async fn run(
    st: Arc<AppState>,
    req: ResponsesRequest,
    mut rx: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::Sender<Bytes>,
    id: String,
    mut log: RequestLog,
) -> Result<Value, ApiError> {
    let created = http::unix_now();
    let object = |status: &str, output: Vec<Value>, usage: Value, extra: &[(&str, Value)]| {
        let mut o = json!({
            "id": id, "object": "response", "created_at": created, "status": status, "model": st.model_name,
            "output": output, "usage": usage, "error": null, "incomplete_details": null,
        });
        for (k, v) in &req.echo {
            o[k] = v.clone();
        }
        for (k, v) in extra {
            o[*k] = v.clone();
        }
        o
    };
    let mut ev = Events { tx: tx.clone(), seq: 0, on: req.stream, gone: false };
    ev.send("response.created", json!({"response": object("in_progress", vec![], Value::Null, &[])})).await;
    ev.send("response.in_progress", json!({"response": object("in_progress", vec![], Value::Null, &[])})).await;

    let mut out = Output::new(&st.tok, req.prompt.tools.clone(), Vec::new());
    let mut pieces = Vec::new();
    for &t in &req.prompt.forced {
        out.push(&Sampled { token: t, logprob: 0.0, top_logprobs: Vec::new() }, &mut pieces);
    }
    let (mut generated, mut finish): (usize, Option<Finish>) = (0, None);
    loop {
        for p in std::mem::take(&mut pieces) {
            emit_piece(&mut ev, &out.items, p).await;
        }
        if finish.is_some() {
            break;
        }
        let events = tokio::select! {
            _ = tx.closed(), if req.stream => {
                log.note = "client gone";
                log.completion_tokens = generated;
                return Err(ApiError::engine("client gone"));
            }
            e = next_events(&mut rx) => e,
        };
        if events.is_empty() {
            break;
        }
        for e in events {
            match e {
                Event::Token(s) => {
                    generated += 1;
                    out.push(&s, &mut pieces);
                }
                Event::Finished(f) => {
                    out.finish(&mut pieces);
                    finish = Some(f);
                }
                Event::PromptLogprobs(_) => {}
            }
        }
    }
    drop(rx);
    log.completion_tokens = generated;
    if let Some(f) = &finish {
        log.queued = Some(f.queued);
        log.ttft = f.ttft;
    }
    let usage = json!({
        "input_tokens": req.prompt.tokens.len(),
        "input_tokens_details": {"cached_tokens": finish.as_ref().map_or(0, |f| f.cached_tokens)},
        "output_tokens": generated,
        "output_tokens_details": {"reasoning_tokens": out.reasoning_tokens},
        "total_tokens": req.prompt.tokens.len() + generated,
    });
    let output: Vec<Value> = out.items.iter().map(|i| item_json(i, true)).collect();
    let failure = match finish.as_ref().map(|f| &f.reason) {
        Some(FinishReason::Error(m) | FinishReason::Aborted(m)) => Some(m.clone()),
        None => Some("the engine stopped before the response was complete".to_string()),
        _ => None,
    };
    if let Some(m) = failure {
        let aborted = matches!(finish.as_ref().map(|f| &f.reason), Some(FinishReason::Aborted(_)));
        let e = if aborted { ApiError::unavailable(m.clone()) } else { ApiError::engine(m.clone()) };
        log.fail(&e);
        let failed = object("failed", output, usage, &[("error", json!({"code": "server_error", "message": m}))]);
        ev.send("response.failed", json!({"response": failed})).await;
        return Err(e);
    }
    let length = matches!(finish, Some(Finish { reason: FinishReason::Length, .. }));
    let final_object = if length {
        object("incomplete", output, usage, &[("incomplete_details", json!({"reason": "max_output_tokens"}))])
    } else {
        object("completed", output, usage, &[])
    };
    if req.store {
        let mut messages = req.conversation.clone();
        let mut calls = req.calls.clone();
        for item in &out.items {
            messages.push(match &item.kind {
                Kind::Reasoning => Message::text(Role::Assistant, item.text.clone()).with_channel("analysis"),
                Kind::Text => Message::text(Role::Assistant, item.text.clone())
                    .with_channel(item.channel.clone().unwrap_or_else(|| "final".into())),
                Kind::ToolCall { name, call_id } => {
                    calls.push((call_id.clone(), name.clone()));
                    call_message(name, item.text.clone())
                }
            });
        }
        let stored = Stored { messages, calls, object: final_object.clone() };
        st.store.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), stored);
    }
    let kind = if length { "response.incomplete" } else { "response.completed" };
    ev.send(kind, json!({"response": final_object})).await;
    Ok(final_object)
}

async fn emit_piece(ev: &mut Events, items: &[Item], p: Piece) {
    match p {
        Piece::Begin(i) => {
            let item = &items[i];
            ev.send("response.output_item.added", json!({"output_index": i, "item": item_json(item, false)})).await;
            let part = match item.kind {
                Kind::Reasoning => json!({"type": "reasoning_text", "text": ""}),
                Kind::Text => json!({"type": "output_text", "text": "", "annotations": []}),
                Kind::ToolCall { .. } => return,
            };
            ev.send(
                "response.content_part.added",
                json!({"item_id": item.id, "output_index": i, "content_index": 0, "part": part}),
            )
            .await;
        }
        Piece::Delta(i, text) => {
            let item = &items[i];
            let (kind, data) = match item.kind {
                Kind::Reasoning => ("response.reasoning_text.delta", json!({"content_index": 0, "delta": text})),
                Kind::Text => {
                    ("response.output_text.delta", json!({"content_index": 0, "delta": text, "logprobs": []}))
                }
                Kind::ToolCall { .. } => ("response.function_call_arguments.delta", json!({"delta": text})),
            };
            let mut data = data;
            data["item_id"] = json!(item.id);
            data["output_index"] = json!(i);
            ev.send(kind, data).await;
        }
        Piece::End(i) => {
            let item = &items[i];
            let base = json!({"item_id": item.id, "output_index": i});
            match &item.kind {
                Kind::Reasoning | Kind::Text => {
                    let (done_kind, part, mut done) = if item.kind == Kind::Reasoning {
                        (
                            "response.reasoning_text.done",
                            json!({"type": "reasoning_text", "text": item.text}),
                            json!({"text": item.text}),
                        )
                    } else {
                        (
                            "response.output_text.done",
                            json!({"type": "output_text", "text": item.text, "annotations": []}),
                            json!({"text": item.text, "logprobs": []}),
                        )
                    };
                    done["item_id"] = base["item_id"].clone();
                    done["output_index"] = json!(i);
                    done["content_index"] = json!(0);
                    ev.send(done_kind, done).await;
                    let mut pd = base.clone();
                    pd["content_index"] = json!(0);
                    pd["part"] = part;
                    ev.send("response.content_part.done", pd).await;
                }
                Kind::ToolCall { name, .. } => {
                    let mut d = base.clone();
                    d["arguments"] = json!(item.text);
                    d["name"] = json!(name);
                    ev.send("response.function_call_arguments.done", d).await;
                }
            }
            ev.send("response.output_item.done", json!({"output_index": i, "item": item_json(item, true)})).await;
        }
    }
}

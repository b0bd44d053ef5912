//! `POST /v1/chat/completions` (spec harmony §4): messages to a harmony prompt, generation
//! through the engine, and the reply as one object or as SSE chunks. Reasoning is returned
//! as `reasoning` (and `reasoning_content`, the other name clients read); calls to declared
//! functions as `tool_calls`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gptoss_engine::rng::Rng;
use gptoss_engine::Sampled;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::engine::{Event, Finish, FinishReason, JobSpec};
use crate::error::ApiError;
use crate::fields::{stop_strings, Obj};
use crate::http::{self, finite, next_events, sse_data, AppState, RequestLog};
use crate::output::{random_id, Item, Kind, Output, Piece};
use crate::prompt::{self, PromptSpec};

/// Separates answer text of consecutive messages (a preamble, then the final answer).
const TEXT_SEPARATOR: &str = "\n\n";

struct ChatRequest {
    prompt: prompt::Prompt,
    job: JobSpec,
    stream: bool,
    include_usage: bool,
    include_reasoning: bool,
    logprobs: bool,
    top_logprobs: usize,
    stop: Vec<String>,
}

fn parse(st: &AppState, req: &Map<String, Value>) -> Result<ChatRequest, ApiError> {
    let o = Obj::new(req, "");
    http::check_model(st, &o)?;
    o.usize_in("n", 1, 1)?; // one choice per request
    let spec = PromptSpec::from_chat(&o)?;
    let prompt = spec.render(&st.tok)?;
    let format = prompt::format_schema(o.obj("response_format")?, "response_format", true)?;
    let constraint = prompt::constraint(format, &spec, &prompt)?;
    let asked = match o.usize_in("max_completion_tokens", 1, usize::MAX >> 1)? {
        Some(n) => Some(n),
        None => o.usize_in("max_tokens", 1, usize::MAX >> 1)?,
    };
    let param = if o.get("max_completion_tokens").is_some() { "max_completion_tokens" } else { "max_tokens" };
    let max_tokens = http::fit_context(st, prompt.tokens.len(), asked, param, "messages")?;
    let logprobs = o.bool("logprobs")?.unwrap_or(false);
    let top_logprobs = o.usize_in("top_logprobs", 0, 20)?.unwrap_or(0);
    if top_logprobs > 0 && !logprobs {
        return Err(ApiError::invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`"));
    }
    let mut job = http::job(st, &o, prompt.tokens.clone(), max_tokens)?;
    job.top_logprobs = top_logprobs;
    job.constraint = constraint;
    let stream = o.bool("stream")?.unwrap_or(false);
    let include_usage = http::include_usage(&o)?;
    Ok(ChatRequest {
        prompt,
        job,
        stream,
        include_usage,
        include_reasoning: o.bool("include_reasoning")?.unwrap_or(true),
        logprobs,
        top_logprobs,
        stop: stop_strings(&o, "stop")?,
    })
}

pub async fn handle(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let mut log = RequestLog::new(&st, "chat.completions");
    let (req, rx) = match http::accept(&st, &headers, body, &mut log, parse, |r| &r.job).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    log.prompt_tokens = req.prompt.tokens.len();
    let mut rng = Rng::new(Rng::entropy_seed());
    let id = random_id(&mut rng, "chatcmpl-", 32);
    if req.stream {
        let (tx, body_rx) = mpsc::channel(64);
        tokio::spawn(stream(st.clone(), req, rx, tx, id, log));
        http::sse_response(body_rx)
    } else {
        complete(&st, req, rx, id, log).await
    }
}

/// What a generation has produced so far.
struct Run<'t> {
    out: Output<'t>,
    generated: usize,
    finish: Option<Finish>,
}

impl<'t> Run<'t> {
    /// The pieces of a forced header (the start of a required call) go to `pieces`.
    fn new(st: &'t AppState, req: &ChatRequest, pieces: &mut Vec<Piece>) -> Self {
        let mut out = Output::new(&st.tok, req.prompt.tools.clone(), req.stop.clone());
        for &t in &req.prompt.forced {
            out.push(&Sampled { token: t, logprob: 0.0, top_logprobs: Vec::new() }, pieces);
        }
        Run { out, generated: 0, finish: None }
    }

    /// Takes the events; true when generation is over (finished, or a stop string met).
    fn take(&mut self, events: &[Event], pieces: &mut Vec<Piece>) -> bool {
        for e in events {
            match e {
                Event::Token(s) => {
                    self.generated += 1;
                    self.out.push(s, pieces);
                }
                Event::Finished(f) => {
                    self.out.finish(pieces);
                    self.finish = Some(f.clone());
                }
                Event::PromptLogprobs(_) => {}
            }
        }
        self.finish.is_some() || self.out.stopped
    }

    fn error(&self) -> Option<ApiError> {
        match &self.finish {
            Some(Finish { reason: FinishReason::Error(m), .. }) => Some(ApiError::engine(m.clone())),
            Some(Finish { reason: FinishReason::Aborted(m), .. }) => Some(ApiError::unavailable(m.clone())),
            None if !self.out.stopped => Some(ApiError::engine("the engine stopped before the answer was complete")),
            _ => None,
        }
    }

    /// length beats tool_calls beats stop (a cut-off call is not a call to make).
    fn finish_reason(&self) -> &'static str {
        let length = matches!(&self.finish, Some(Finish { reason: FinishReason::Length, .. })) && !self.out.stopped;
        if length {
            "length"
        } else if self.out.has_tool_calls() {
            "tool_calls"
        } else {
            "stop"
        }
    }

    fn usage(&self, prompt_tokens: usize) -> Value {
        json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.generated,
            "total_tokens": prompt_tokens + self.generated,
            "prompt_tokens_details": {"cached_tokens": self.finish.as_ref().map_or(0, |f| f.cached_tokens)},
            "completion_tokens_details": {"reasoning_tokens": self.out.reasoning_tokens},
        })
    }

    fn fill_log(&self, log: &mut RequestLog) {
        log.completion_tokens = self.generated;
        if let Some(f) = &self.finish {
            log.queued = Some(f.queued);
            log.ttft = f.ttft;
        }
    }
}

pub(crate) fn logprob_entry(out: &Output, s: &Sampled, top: usize) -> Value {
    let (token, bytes) = out.token_text(s.token);
    let alts: Vec<Value> = s
        .top_logprobs
        .iter()
        .take(top)
        .map(|&(t, lp)| {
            let (token, bytes) = out.token_text(t);
            json!({"token": token, "logprob": finite(lp), "bytes": bytes})
        })
        .collect();
    json!({"token": token, "logprob": finite(s.logprob), "bytes": bytes, "top_logprobs": alts})
}

fn joined(items: &[Item], kind: &Kind, sep: &str) -> Option<String> {
    let parts: Vec<&str> = items.iter().filter(|i| &i.kind == kind).map(|i| i.text.as_str()).collect();
    (!parts.is_empty()).then(|| parts.join(sep))
}

async fn complete(
    st: &AppState,
    req: ChatRequest,
    mut rx: mpsc::UnboundedReceiver<Event>,
    id: String,
    mut log: RequestLog,
) -> Response {
    let mut pieces = Vec::new();
    let mut run = Run::new(st, &req, &mut pieces);
    loop {
        let events = next_events(&mut rx).await;
        if events.is_empty() || run.take(&events, &mut pieces) {
            break;
        }
    }
    drop(rx); // a stop string ends generation early
    run.fill_log(&mut log);
    if let Some(e) = run.error() {
        log.fail(&e);
        return e.into_response();
    }
    let items = &run.out.items;
    let content = joined(items, &Kind::Text, TEXT_SEPARATOR);
    let reasoning = joined(items, &Kind::Reasoning, "\n").filter(|_| req.include_reasoning);
    let tool_calls: Vec<Value> = items
        .iter()
        .filter_map(|i| match &i.kind {
            // A call cut off by the token limit is not a call to make.
            Kind::ToolCall { tool, call_id } if i.complete => {
                Some(json!({"id": call_id, "type": "function", "function": {"name": tool.name, "arguments": i.text}}))
            }
            _ => None,
        })
        .collect();
    // Optional fields are null rather than absent: OpenAI's SDKs raise on a missing one.
    let mut message = json!({"role": "assistant", "content": content, "refusal": null,
        "reasoning": reasoning, "reasoning_content": reasoning});
    if !tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls);
    }
    let logprobs = req.logprobs.then(|| {
        let entries: Vec<Value> = items
            .iter()
            .filter(|i| i.kind == Kind::Text)
            .flat_map(|i| &i.logprobs)
            .map(|s| logprob_entry(&run.out, s, req.top_logprobs))
            .collect();
        json!({"content": entries})
    });
    let body = json!({
        "id": id, "object": "chat.completion", "created": http::unix_now(), "model": st.model_name,
        "system_fingerprint": Value::Null,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": run.finish_reason()}],
        "usage": run.usage(req.prompt.tokens.len()),
    });
    Json(body).into_response()
}

/// The SSE stream. Every token of a step is handled, and consecutive pieces are grouped
/// into one chunk (spec harmony §4.4); tool-call ids and indices never change mid-stream.
async fn stream(
    st: Arc<AppState>,
    req: ChatRequest,
    mut rx: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::Sender<Bytes>,
    id: String,
    mut log: RequestLog,
) {
    let created = http::unix_now();
    let chunk = |delta: Value, finish: Option<&str>, logprobs: Option<Value>| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": st.model_name,
            "system_fingerprint": Value::Null,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        })
    };
    let mut pieces = Vec::new();
    let mut run = Run::new(&st, &req, &mut pieces);
    if tx.send(sse_data(&chunk(json!({"role": "assistant", "content": ""}), None, None))).await.is_err() {
        log.note = "client gone";
        return;
    }
    // item → tool-call index; logprobs already sent per item.
    let mut call_index: HashMap<usize, usize> = HashMap::new();
    let mut sent_logprobs: HashMap<usize, usize> = HashMap::new();
    let (mut text_started, mut reasoning_started) = (false, false);
    let mut done = false;
    loop {
        let mut reasoning = String::new();
        let mut content = String::new();
        let mut calls: Vec<Value> = Vec::new();
        let mut logprobs = Vec::new();
        for p in pieces.drain(..) {
            match p {
                Piece::Begin(i) => match &run.out.items[i].kind {
                    Kind::ToolCall { tool, call_id } => {
                        let k = call_index.len();
                        call_index.insert(i, k);
                        calls.push(json!({"index": k, "id": call_id, "type": "function",
                                          "function": {"name": tool.name, "arguments": ""}}));
                    }
                    Kind::Text => {
                        if text_started {
                            content.push_str(TEXT_SEPARATOR);
                        }
                        text_started = true;
                    }
                    Kind::Reasoning => {
                        if reasoning_started {
                            reasoning.push('\n'); // as the final view joins them
                        }
                        reasoning_started = true;
                    }
                },
                Piece::Delta(i, text) => match &run.out.items[i].kind {
                    Kind::Reasoning => reasoning.push_str(&text),
                    Kind::Text => content.push_str(&text),
                    Kind::ToolCall { .. } => {
                        let Some(&k) = call_index.get(&i) else { continue };
                        match calls.last_mut() {
                            Some(last) if last["index"] == json!(k) => {
                                let args = last["function"]["arguments"].as_str().unwrap_or("").to_string() + &text;
                                last["function"]["arguments"] = json!(args);
                            }
                            _ => calls.push(json!({"index": k, "function": {"arguments": text}})),
                        }
                    }
                },
                Piece::End(_) => {}
            }
        }
        if req.logprobs {
            for (i, item) in run.out.items.iter().enumerate().filter(|(_, it)| it.kind == Kind::Text) {
                let sent = sent_logprobs.entry(i).or_default();
                for s in &item.logprobs[*sent..] {
                    logprobs.push(logprob_entry(&run.out, s, req.top_logprobs));
                }
                *sent = item.logprobs.len();
            }
        }
        let mut delta = Map::new();
        if !reasoning.is_empty() && req.include_reasoning {
            delta.insert("reasoning".into(), json!(reasoning));
            delta.insert("reasoning_content".into(), json!(reasoning));
        }
        if !content.is_empty() {
            delta.insert("content".into(), json!(content));
        }
        if !calls.is_empty() {
            delta.insert("tool_calls".into(), json!(calls));
        }
        if !delta.is_empty() || !logprobs.is_empty() {
            let lp = req.logprobs.then(|| json!({"content": logprobs}));
            if tx.send(sse_data(&chunk(Value::Object(delta), None, lp))).await.is_err() {
                log.note = "client gone";
                run.fill_log(&mut log);
                return;
            }
        }
        if done {
            break;
        }
        let events = tokio::select! {
            _ = tx.closed() => {
                log.note = "client gone";
                run.fill_log(&mut log);
                return; // dropping rx cancels the generation
            }
            ev = next_events(&mut rx) => ev,
        };
        done = events.is_empty() || run.take(&events, &mut pieces);
    }
    drop(rx);
    run.fill_log(&mut log);
    if let Some(e) = run.error() {
        log.fail(&e);
        let _ = tx.send(sse_data(&e.body())).await;
    } else {
        let _ = tx.send(sse_data(&chunk(json!({}), Some(run.finish_reason()), None))).await;
        if req.include_usage {
            let usage = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": st.model_name,
                "choices": [], "usage": run.usage(req.prompt.tokens.len()),
            });
            let _ = tx.send(sse_data(&usage)).await;
        }
    }
    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
}

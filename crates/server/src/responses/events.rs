//! Generation to Responses output: output items as JSON, the §5.4 event sequence when
//! streaming, and the final response object.

use super::*;

/// A custom tool's input: the message as written, or the string it holds when the model
/// wrote it as a JSON string anyway.
fn custom_input(text: &str) -> String {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(Value::String(s)) => s,
        _ => text.to_string(),
    }
}

fn logprob_entries(out: &Output, list: &[Sampled], top: usize) -> Vec<Value> {
    list.iter().map(|s| crate::chat::logprob_entry(out, s, top)).collect()
}

pub(super) fn item_json(item: &Item, done: bool, out: &Output, logprobs: Option<usize>) -> Value {
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
                let lp = logprobs.map_or(vec![], |top| logprob_entries(out, &item.logprobs, top));
                json!([{"type": "output_text", "text": item.text, "annotations": [], "logprobs": lp}])
            } else {
                json!([])
            };
            json!({"id": item.id, "type": "message", "role": "assistant", "status": status, "content": content,
                   "phase": phase(item)})
        }
        Kind::ToolCall { tool, call_id } if tool.custom => {
            let mut v = json!({
                "id": item.id, "type": "custom_tool_call", "call_id": call_id, "name": tool.name,
                "input": if done { custom_input(&item.text) } else { String::new() }, "status": status,
            });
            if let Some(ns) = &tool.namespace {
                v["namespace"] = json!(ns);
            }
            v
        }
        Kind::ToolCall { tool, call_id } => {
            let mut v = json!({
                "id": item.id, "type": "function_call", "call_id": call_id, "name": tool.name,
                "arguments": if done { item.text.as_str() } else { "" }, "status": status,
            });
            if let Some(ns) = &tool.namespace {
                v["namespace"] = json!(ns);
            }
            v
        }
    }
}

/// A message written on commentary (a preamble before tool calls) or as the answer.
fn phase(item: &Item) -> &'static str {
    if item.channel.as_deref() == Some("commentary") {
        "commentary"
    } else {
        "final_answer"
    }
}

/// The assistant message a text item is in history (the channel its phase says).
fn text_message(item: &Item) -> Message {
    let channel = if phase(item) == "commentary" { "commentary" } else { "final" };
    Message::text(Role::Assistant, item.text.clone()).with_channel(channel)
}

/// The output items as history for `previous_response_id`: what a stateless client's replay of
/// the same items renders to, token for token.
pub(super) fn extend_history(items: &[Item], messages: &mut Vec<Message>, calls: &mut Calls) {
    for item in items {
        messages.push(match &item.kind {
            Kind::Reasoning => Message::text(Role::Assistant, item.text.clone()).with_channel("analysis"),
            Kind::Text => text_message(item),
            Kind::ToolCall { tool, call_id } => {
                calls.push((call_id.clone(), tool.clone()));
                let text = if tool.custom { custom_input(&item.text) } else { item.text.clone() };
                call_message(tool, text)
            }
        });
    }
}

/// Emits SSE events with consecutive sequence numbers (when streaming).
struct Events {
    tx: mpsc::Sender<Bytes>,
    seq: u64,
    on: bool,
    gone: bool,
    /// Alternatives per logprob when the request asked for logprobs.
    logprobs: Option<usize>,
    /// Logprobs of each text item already sent in delta events.
    sent_logprobs: HashMap<usize, usize>,
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

/// Usage as OpenAI reports it. Prompt caching is not reported yet: nothing is read from or
/// written to a cache.
/// `cached`: prompt tokens served from the prefix cache.
fn usage(input: usize, cached: usize, output: usize, reasoning: usize) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + output,
    })
}

/// One generation, streamed or not; returns the final response object.
pub(super) async fn run(
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
    let mut ev = Events {
        tx: tx.clone(),
        seq: 0,
        on: req.stream,
        gone: false,
        logprobs: req.logprobs,
        sent_logprobs: HashMap::new(),
    };
    // Usage is known only at the end; in-progress objects carry null, as OpenAI's do.
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
            emit_piece(&mut ev, &out, p).await;
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
    let cached = finish.as_ref().map_or(0, |f| f.cached_tokens);
    let usage = usage(req.prompt.tokens.len(), cached, generated, out.reasoning_tokens);
    let output: Vec<Value> = out.items.iter().map(|i| item_json(i, true, &out, req.logprobs)).collect();
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
        extend_history(&out.items, &mut messages, &mut calls);
        let stored = Stored {
            messages,
            calls,
            input_instructions: req.input_instructions.clone(),
            input_items: req.input_items.clone(),
            object: final_object.clone(),
        };
        st.store.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), stored);
    }
    let kind = if length { "response.incomplete" } else { "response.completed" };
    ev.send(kind, json!({"response": final_object})).await;
    Ok(final_object)
}

async fn emit_piece(ev: &mut Events, out: &Output<'_>, p: Piece) {
    let items = &out.items;
    match p {
        Piece::Begin(i) => {
            let item = &items[i];
            ev.send(
                "response.output_item.added",
                json!({"output_index": i, "item": item_json(item, false, out, ev.logprobs)}),
            )
            .await;
            let part = match item.kind {
                Kind::Reasoning => json!({"type": "reasoning_text", "text": ""}),
                Kind::Text => json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []}),
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
            let (kind, data) = match &item.kind {
                Kind::Reasoning => ("response.reasoning_text.delta", json!({"content_index": 0, "delta": text})),
                Kind::Text => {
                    // The logprobs of the tokens read since the last delta.
                    let lp = match ev.logprobs {
                        Some(top) => {
                            let sent = ev.sent_logprobs.entry(i).or_default();
                            let new = logprob_entries(out, &item.logprobs[(*sent).min(item.logprobs.len())..], top);
                            *sent = item.logprobs.len();
                            new
                        }
                        None => vec![],
                    };
                    ("response.output_text.delta", json!({"content_index": 0, "delta": text, "logprobs": lp}))
                }
                // A custom tool's input is sent whole when it ends (a JSON-quoted input is
                // unquoted then).
                Kind::ToolCall { tool, .. } if tool.custom => return,
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
                        let lp = ev.logprobs.map_or(vec![], |top| logprob_entries(out, &item.logprobs, top));
                        (
                            "response.output_text.done",
                            json!({"type": "output_text", "text": item.text, "annotations": [], "logprobs": lp}),
                            json!({"text": item.text, "logprobs": lp}),
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
                Kind::ToolCall { tool, .. } if tool.custom => {
                    let input = custom_input(&item.text);
                    let mut d = base.clone();
                    d["delta"] = json!(input);
                    ev.send("response.custom_tool_call_input.delta", d).await;
                    let mut d = base.clone();
                    d["input"] = json!(input);
                    ev.send("response.custom_tool_call_input.done", d).await;
                }
                Kind::ToolCall { tool, .. } => {
                    let mut d = base.clone();
                    d["arguments"] = json!(item.text);
                    d["name"] = json!(tool.name);
                    ev.send("response.function_call_arguments.done", d).await;
                }
            }
            ev.send(
                "response.output_item.done",
                json!({"output_index": i, "item": item_json(item, true, out, ev.logprobs)}),
            )
            .await;
        }
    }
}

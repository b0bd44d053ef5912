//! `POST /v1/completions`: a raw prompt continued with no chat format. The prompt is text
//! (encoded as ordinary text: it can never contain special tokens) or token ids (the way to
//! send a hand-rendered harmony prompt). Special tokens in the output appear by name.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gptoss_engine::chat::STOP_TOKENS;
use gptoss_engine::rng::Rng;
use gptoss_engine::tokenizer::StreamDecoder;
use gptoss_engine::Sampled;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::engine::{Event, Finish, FinishReason, JobSpec};
use crate::error::ApiError;
use crate::fields::{stop_strings, wrong, Obj};
use crate::http::{self, finite, next_events, sse_data, AppState, RequestLog};
use crate::output::{random_id, StopFilter};

struct CompletionRequest {
    prompt: Vec<u32>,
    job: JobSpec,
    stream: bool,
    include_usage: bool,
    echo: bool,
    logprobs: Option<usize>,
    stop: Vec<String>,
}

fn parse_prompt(st: &AppState, o: &Obj) -> Result<Vec<u32>, ApiError> {
    let one = |v: &Value, path: &str| -> Result<Vec<u32>, ApiError> {
        match v {
            Value::String(s) => Ok(st.tok.encode(s)),
            Value::Array(a) if a.iter().all(Value::is_number) => http::token_ids(a, path, st.engine.vocab),
            other => Err(wrong(path, "text or an array of token ids", other)),
        }
    };
    let ids = match o.get("prompt") {
        None => return Err(ApiError::invalid("prompt", "`prompt` is required")),
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(|x| x.is_string() || x.is_array()) => {
            if a.len() > 1 {
                return Err(ApiError::invalid(
                    "prompt",
                    "one prompt per request: send the others as their own requests",
                ));
            }
            one(&a[0], "prompt[0]")?
        }
        Some(v) => one(v, "prompt")?,
    };
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` is empty"));
    }
    Ok(ids)
}

fn parse(st: &AppState, req: &Map<String, Value>) -> Result<CompletionRequest, ApiError> {
    let o = Obj::new(req, "");
    http::check_model(st, &o)?;
    let prompt = parse_prompt(st, &o)?;
    if o.str("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported by gpt-oss"));
    }
    o.usize_in("n", 1, 1)?; // one choice per request
    o.usize_in("best_of", 1, 1)?;
    let asked = o.usize_in("max_tokens", 1, usize::MAX >> 1)?.or(Some(16));
    let max_tokens = http::fit_context(st, prompt.len(), asked, "max_tokens", "prompt")?;
    let logprobs = o.usize_in("logprobs", 0, 20)?;
    let echo = o.bool("echo")?.unwrap_or(false);
    let mut job = http::job(st, &o, prompt.clone(), max_tokens)?;
    job.top_logprobs = logprobs.unwrap_or(0);
    job.prompt_logprobs = echo && logprobs.is_some();
    let include_usage = http::include_usage(&o)?;
    Ok(CompletionRequest {
        prompt,
        job,
        stream: o.bool("stream")?.unwrap_or(false),
        include_usage,
        echo,
        logprobs,
        stop: stop_strings(&o, "stop")?,
    })
}

pub async fn handle(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let mut log = RequestLog::new(&st, "completions");
    let (req, rx) = match http::accept(&st, &headers, body, &mut log, parse, |r| &r.job).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    log.prompt_tokens = req.prompt.len();
    let id = random_id(&mut Rng::new(Rng::entropy_seed()), "cmpl-", 32);
    if req.stream {
        let (tx, body_rx) = mpsc::channel(64);
        tokio::spawn(stream(st.clone(), req, rx, tx, id, log));
        http::sse_response(body_rx)
    } else {
        complete(&st, req, rx, id, log).await
    }
}

/// Text and OpenAI's legacy logprobs layout, built token by token.
struct Text {
    decoder: StreamDecoder,
    stop: StopFilter,
    text: String,
    generated: usize,
    finish: Option<Finish>,
    tokens: Vec<String>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
    top: usize,
}

impl Text {
    fn new(req: &CompletionRequest) -> Self {
        Text {
            decoder: StreamDecoder::default(),
            stop: StopFilter::new(req.stop.clone()),
            text: String::new(),
            generated: 0,
            finish: None,
            tokens: Vec::new(),
            token_logprobs: Vec::new(),
            top_logprobs: Vec::new(),
            text_offset: Vec::new(),
            top: req.logprobs.unwrap_or(0),
        }
    }

    fn record(&mut self, st: &AppState, token: u32, lp: Option<&Sampled>) {
        self.tokens.push(st.tok.decode_lossy(&[token]).unwrap_or_default());
        self.text_offset.push(self.text.len() + self.stop.held_len());
        self.token_logprobs.push(lp.map_or(Value::Null, |s| json!(finite(s.logprob))));
        self.top_logprobs.push(lp.map_or(Value::Null, |s| {
            let m: Map<String, Value> = s
                .top_logprobs
                .iter()
                .take(self.top)
                .map(|&(t, p)| (st.tok.decode_lossy(&[t]).unwrap_or_default(), json!(finite(p))))
                .collect();
            Value::Object(m)
        }));
    }

    /// The prompt, for `echo`: its text, and its tokens' logprobs when they were asked for.
    fn echo(&mut self, st: &AppState, prompt: &[u32], prompt_lps: Option<&[Sampled]>) -> String {
        for (k, &t) in prompt.iter().enumerate() {
            let lp = if k == 0 { None } else { prompt_lps.and_then(|l| l.get(k - 1)) };
            self.record(st, t, lp);
            self.text.push_str(&st.tok.decode_lossy(&[t]).unwrap_or_default());
        }
        self.text.clone()
    }

    /// New visible text; true when generation is over.
    fn take(&mut self, st: &AppState, events: &[Event], piece: &mut String) -> bool {
        for e in events {
            match e {
                Event::Token(s) => {
                    self.generated += 1;
                    if STOP_TOKENS.contains(&s.token) || self.stop.hit {
                        continue; // the stop token is not part of the text
                    }
                    self.record(st, s.token, Some(s));
                    let t = self.decoder.push(&st.tok, s.token).unwrap_or_default();
                    let shown = self.stop.push(&t);
                    self.text.push_str(&shown);
                    piece.push_str(&shown);
                }
                Event::Finished(f) => {
                    let rest = self.decoder.finish();
                    let mut tail = self.stop.push(&rest);
                    tail.push_str(&self.stop.flush());
                    self.text.push_str(&tail);
                    piece.push_str(&tail);
                    self.finish = Some(f.clone());
                }
                Event::PromptLogprobs(_) => {}
            }
        }
        self.finish.is_some() || self.stop.hit
    }

    fn logprobs(&self) -> Value {
        json!({"tokens": self.tokens, "token_logprobs": self.token_logprobs,
               "top_logprobs": self.top_logprobs, "text_offset": self.text_offset})
    }

    fn finish_reason(&self) -> &'static str {
        match &self.finish {
            Some(Finish { reason: FinishReason::Length, .. }) if !self.stop.hit => "length",
            _ => "stop",
        }
    }

    fn error(&self) -> Option<ApiError> {
        match &self.finish {
            Some(Finish { reason: FinishReason::Error(m), .. }) => Some(ApiError::engine(m.clone())),
            Some(Finish { reason: FinishReason::Aborted(m), .. }) => Some(ApiError::unavailable(m.clone())),
            None if !self.stop.hit => Some(ApiError::engine("the engine stopped before the completion was done")),
            _ => None,
        }
    }

    fn usage(&self, prompt_tokens: usize) -> Value {
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": self.generated,
               "total_tokens": prompt_tokens + self.generated,
               "prompt_tokens_details": {"cached_tokens": self.finish.as_ref().map_or(0, |f| f.cached_tokens)}})
    }

    fn fill_log(&self, log: &mut RequestLog) {
        log.completion_tokens = self.generated;
        if let Some(f) = &self.finish {
            log.queued = Some(f.queued);
            log.ttft = f.ttft;
        }
    }
}

/// Prompt logprobs come first when asked for; collects them before anything is shown.
async fn prompt_logprobs(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    req: &CompletionRequest,
    early: &mut Vec<Event>,
) -> Vec<Sampled> {
    let mut lps = Vec::new();
    if !req.job.prompt_logprobs {
        return lps;
    }
    while lps.len() + 1 < req.prompt.len() {
        let events = next_events(rx).await;
        if events.is_empty() {
            break;
        }
        for e in events {
            match e {
                Event::PromptLogprobs(l) => lps.extend(l),
                other => early.push(other),
            }
        }
        if !early.is_empty() {
            break;
        }
    }
    lps
}

async fn complete(
    st: &AppState,
    req: CompletionRequest,
    mut rx: mpsc::UnboundedReceiver<Event>,
    id: String,
    mut log: RequestLog,
) -> Response {
    let mut t = Text::new(&req);
    let mut early = Vec::new();
    let lps = prompt_logprobs(&mut rx, &req, &mut early).await;
    if req.echo {
        t.echo(st, &req.prompt, req.job.prompt_logprobs.then_some(&lps[..]));
    }
    let mut piece = String::new();
    let mut done = t.take(st, &early, &mut piece);
    while !done {
        let events = next_events(&mut rx).await;
        done = events.is_empty() || t.take(st, &events, &mut piece);
        if events.is_empty() {
            break;
        }
    }
    drop(rx);
    t.fill_log(&mut log);
    if let Some(e) = t.error() {
        log.fail(&e);
        return e.into_response();
    }
    Json(json!({
        "id": id, "object": "text_completion", "created": http::unix_now(), "model": st.model_name,
        "choices": [{"index": 0, "text": t.text, "logprobs": req.logprobs.map(|_| t.logprobs()),
                     "finish_reason": t.finish_reason()}],
        "usage": t.usage(req.prompt.len()),
    }))
    .into_response()
}

async fn stream(
    st: Arc<AppState>,
    req: CompletionRequest,
    mut rx: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::Sender<Bytes>,
    id: String,
    mut log: RequestLog,
) {
    let created = http::unix_now();
    let chunk = |text: &str, finish: Option<&str>, logprobs: Option<Value>| {
        json!({"id": id, "object": "text_completion", "created": created, "model": st.model_name,
               "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]})
    };
    let mut t = Text::new(&req);
    let mut early = Vec::new();
    let lps = prompt_logprobs(&mut rx, &req, &mut early).await;
    let mut sent = 0; // logprob entries already sent
    let mut pending =
        if req.echo { t.echo(&st, &req.prompt, req.job.prompt_logprobs.then_some(&lps[..])) } else { String::new() };
    let mut done = t.take(&st, &early, &mut pending);
    loop {
        if !pending.is_empty() || t.tokens.len() > sent {
            let lp = req.logprobs.map(|_| {
                let r = sent..t.tokens.len();
                json!({"tokens": t.tokens[r.clone()], "token_logprobs": t.token_logprobs[r.clone()],
                       "top_logprobs": t.top_logprobs[r.clone()], "text_offset": t.text_offset[r]})
            });
            sent = t.tokens.len();
            if tx.send(sse_data(&chunk(&pending, None, lp))).await.is_err() {
                log.note = "client gone";
                t.fill_log(&mut log);
                return;
            }
            pending.clear();
        }
        if done {
            break;
        }
        let events = tokio::select! {
            _ = tx.closed() => {
                log.note = "client gone";
                t.fill_log(&mut log);
                return;
            }
            ev = next_events(&mut rx) => ev,
        };
        done = events.is_empty() || t.take(&st, &events, &mut pending);
    }
    drop(rx);
    t.fill_log(&mut log);
    if let Some(e) = t.error() {
        log.fail(&e);
        let _ = tx.send(sse_data(&e.body())).await;
    } else {
        let _ = tx.send(sse_data(&chunk("", Some(t.finish_reason()), None))).await;
        if req.include_usage {
            let usage = json!({"id": id, "object": "text_completion", "created": created, "model": st.model_name,
                               "choices": [], "usage": t.usage(req.prompt.len())});
            let _ = tx.send(sse_data(&usage)).await;
        }
    }
    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
}

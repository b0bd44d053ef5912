//! The HTTP surface: routing, API keys, body limits, request logs, SSE, and the small
//! endpoints (models, tokenize, detokenize, health, ready, metrics). The generating endpoints
//! live in `chat.rs`, `responses.rs` and `completions.rs`.
//!
//! Nothing CPU-heavy runs on the async workers: parsing a body, rendering and tokenizing a
//! prompt run on the blocking pool ([`cpu`]), at most one per core at a time, so `/health`
//! and running streams never wait behind another request's tokenization.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gptoss_engine::Tokenizer;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::engine::{EngineHandle, Event, JobSpec, SubmitError};
use crate::error::ApiError;
use crate::fields::{parse_body, wrong, Obj};
use crate::metrics::Metrics;
use crate::prompt::PromptSpec;
use crate::responses::ResponseStore;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// A request body must arrive whole within this long by default, or 408.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AppState {
    pub engine: EngineHandle,
    pub tok: Tokenizer,
    pub model_name: String,
    /// Other names accepted for the model in requests.
    pub aliases: Vec<String>,
    pub api_key: Option<String>,
    pub metrics: Arc<Metrics>,
    pub store: Mutex<ResponseStore>,
    pub started: u64,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// Permits for CPU work off the async runtime ([`cpu`]).
    cpu: Arc<Semaphore>,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(
        engine: EngineHandle,
        tok: Tokenizer,
        model_name: String,
        api_key: Option<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        AppState {
            engine,
            tok,
            model_name,
            aliases: Vec::new(),
            api_key,
            metrics,
            store: Mutex::new(ResponseStore::new(1024)),
            started: unix_now(),
            body_timeout: DEFAULT_BODY_TIMEOUT,
            cpu: Arc::new(Semaphore::new(cores)),
            next_id: AtomicU64::new(1),
        }
    }

    /// Whether `name` names the served model (its name or an alias).
    pub fn serves(&self, name: &str) -> bool {
        name == self.model_name || self.aliases.iter().any(|a| a == name)
    }

    /// A short, unique, increasing request number for logs.
    pub fn request_number(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(crate::chat::handle))
        .route("/v1/responses", post(crate::responses::handle))
        .route("/v1/responses/input_tokens", post(crate::responses::input_tokens))
        .route("/v1/responses/{id}", get(crate::responses::get_stored).delete(crate::responses::delete_stored))
        .route("/v1/responses/{id}/input_items", get(crate::responses::input_items_list))
        .route("/v1/completions", post(crate::completions::handle))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Wraps every route and both fallbacks: a caller without the key learns nothing of
        // which paths or methods exist.
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_key))
        .with_state(state)
}

/// Paths open without the API key: probes and metrics.
fn is_open(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics")
}

async fn require_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !is_open(req.uri().path()) {
        if let Err(e) = authorize(&st, req.headers()) {
            let mut log = RequestLog::new(&st, "unauthorized");
            log.fail(&e);
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Bodies up to this size are parsed without waiting for a [`cpu`] permit: their work is
/// bounded and short, so small requests never queue behind huge ones.
pub const SMALL_BODY_BYTES: usize = 64 << 10;

/// Runs CPU work (parsing, rendering, tokenizing) for a body of `size` bytes on the blocking
/// pool, so the async workers stay free for other connections. Large bodies take one of a
/// permit per core; the permit is held by the work itself, so a client that leaves does not
/// free its core before the work ends.
pub async fn cpu<T: Send + 'static>(
    st: &Arc<AppState>,
    size: usize,
    work: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = if size > SMALL_BODY_BYTES {
        let p = st.cpu.clone().acquire_owned().await;
        Some(p.map_err(|_| ApiError::unavailable("the server is shutting down"))?)
    } else {
        None
    };
    let st = st.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work(&st)
    })
    .await
    .map_err(|e| ApiError::engine(format!("processing the request failed: {e}")))?
}

/// One line per request on stderr, and the request counter, written when the request is
/// over (for a stream: when the stream ends or the client leaves).
pub struct RequestLog {
    metrics: Arc<Metrics>,
    pub endpoint: &'static str,
    pub id: String,
    pub status: u16,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub queued: Option<Duration>,
    pub ttft: Option<Duration>,
    pub note: &'static str,
    start: Instant,
}

impl RequestLog {
    pub fn new(st: &AppState, endpoint: &'static str) -> Self {
        RequestLog {
            metrics: st.metrics.clone(),
            endpoint,
            id: format!("req-{}", st.request_number()),
            status: 200,
            prompt_tokens: 0,
            completion_tokens: 0,
            queued: None,
            ttft: None,
            note: "",
            start: Instant::now(),
        }
    }

    pub fn fail(&mut self, e: &ApiError) {
        self.status = e.status.as_u16();
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.metrics.request_done(self.endpoint, self.status);
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.0}ms", d.as_secs_f64() * 1e3));
        eprintln!(
            "{} {} {} prompt={} completion={} queued={} ttft={} total={}{}{}",
            self.id,
            self.endpoint,
            self.status,
            self.prompt_tokens,
            self.completion_tokens,
            ms(self.queued),
            ms(self.ttft),
            ms(Some(self.start.elapsed())),
            if self.note.is_empty() { "" } else { " " },
            self.note
        );
    }
}

/// Checks the API key and reads the body, within the size limit and the body timeout.
pub async fn read_body(st: &AppState, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    authorize(st, headers)?;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::too_large(MAX_BODY_BYTES));
    }
    let read = tokio::time::timeout(st.body_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES));
    read.await.map_err(|_| ApiError::body_timeout(st.body_timeout))?.map_err(|e| {
        if format!("{e:?}").contains("LengthLimit") {
            ApiError::too_large(MAX_BODY_BYTES)
        } else {
            ApiError::invalid("", format!("could not read the request body: {e}"))
        }
    })
}

pub fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &st.api_key else { return Ok(()) };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match given.and_then(|v| v.strip_prefix("Bearer ")) {
        None => Err(ApiError::unauthorized("missing API key: send `Authorization: Bearer <key>`")),
        Some(k) if k.trim() == key => Ok(()),
        Some(_) => Err(ApiError::unauthorized("incorrect API key")),
    }
}

/// The `model` field, if given, must name the served model.
pub fn check_model(st: &AppState, o: &Obj) -> Result<(), ApiError> {
    match o.str("model")? {
        Some(m) if !st.serves(m) => Err(ApiError::not_found(
            Some("model"),
            format!("the model `{m}` does not exist; this server serves `{}`", st.model_name),
            "model_not_found",
        )),
        _ => Ok(()),
    }
}

/// Tokens the completion may use: what was asked, if prompt plus that fits the context;
/// otherwise the rest of the context. Refused before any work when it cannot fit: naming
/// `param` (the output limit) when that was asked for, else `prompt_param` (what the prompt
/// comes from: `messages`, `prompt`, `input`).
pub fn fit_context(
    st: &AppState,
    prompt_len: usize,
    asked: Option<usize>,
    param: &str,
    prompt_param: &str,
) -> Result<usize, ApiError> {
    let ctx = st.engine.max_context;
    if prompt_len >= ctx {
        // The prompt alone does not fit, whatever the limit asked.
        return Err(ApiError::context_overflow(
            format!("this model's context is {ctx} tokens and the prompt has {prompt_len}, leaving no room to answer"),
            prompt_param,
        ));
    }
    match asked {
        Some(n) if prompt_len + n > ctx => Err(ApiError::context_overflow(
            format!(
                "this model's context is {ctx} tokens; the prompt has {prompt_len} and `{param}` asks for {n} more ({} in all)",
                prompt_len + n
            ),
            param,
        )),
        Some(n) => Ok(n),
        None => Ok(ctx - prompt_len),
    }
}

/// The start every generating endpoint shares: key, body, parse, submit. On failure the
/// error is logged and is the response.
pub async fn accept<R: Send + 'static>(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
    log: &mut RequestLog,
    parse: fn(&AppState, &Map<String, Value>) -> Result<R, ApiError>,
    job: impl FnOnce(&R) -> &JobSpec,
) -> Result<(R, mpsc::UnboundedReceiver<Event>), Response> {
    let started = async {
        let bytes = read_body(st, headers, body).await?;
        let req = cpu(st, bytes.len(), move |st| parse(st, &parse_body(&bytes)?)).await?;
        let rx = submit(st, job(&req).clone())?;
        Ok::<_, ApiError>((req, rx))
    }
    .await;
    started.map_err(|e| {
        log.fail(&e);
        e.into_response()
    })
}

/// `stream_options.include_usage`.
pub fn include_usage(o: &Obj) -> Result<bool, ApiError> {
    match o.obj("stream_options")? {
        Some(so) => Ok(Obj::new(so, "stream_options").bool("include_usage")?.unwrap_or(false)),
        None => Ok(false),
    }
}

pub fn submit(st: &AppState, spec: JobSpec) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
    st.engine.submit(spec).map_err(|e| match e {
        SubmitError::QueueFull(_) => ApiError::busy(format!("{e}; retry shortly")),
        SubmitError::Stopped => ApiError::unavailable("the engine has stopped"),
        SubmitError::OutOfVocabulary { .. } => {
            ApiError::invalid("", format!("the prompt cannot run on this model: {e}")).with_code("invalid_prompt")
        }
    })
}

/// Waits for an event and takes every one already queued after it, so a step's tokens are
/// handled together. Empty when the engine is gone.
pub async fn next_events(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    if let Some(e) = rx.recv().await {
        out.push(e);
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
    }
    out
}

pub fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx)) },
        );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

pub fn sse_data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Log-probabilities are finite in JSON: an impossible token reports -9999.
pub fn finite(lp: f32) -> f64 {
    if lp.is_finite() {
        lp as f64
    } else {
        -9999.0
    }
}

/// Sampling settings shared by the generating endpoints.
fn sampling(o: &Obj, default_temperature: f32) -> Result<gptoss_engine::SamplingParams, ApiError> {
    Ok(gptoss_engine::SamplingParams {
        temperature: o.f32_in("temperature", 0.0, 2.0)?.unwrap_or(default_temperature),
        top_p: match o.f32_in("top_p", 0.0, 1.0)? {
            Some(p) if p <= 0.0 => return Err(ApiError::invalid("top_p", "`top_p` must be greater than 0")),
            Some(p) => p,
            None => 1.0,
        },
        top_k: o.usize_in("top_k", 0, 1 << 20)?.unwrap_or(0),
        min_p: o.f32_in("min_p", 0.0, 1.0)?.unwrap_or(0.0),
        seed: o.i64("seed")?.map(|s| s as u64),
    })
}

/// A job for the harmony stop tokens with the request's sampling settings, penalties and
/// logit bias.
pub fn job(st: &AppState, o: &Obj, prompt: Vec<u32>, max_tokens: usize) -> Result<JobSpec, ApiError> {
    let mut job = JobSpec::new(prompt, max_tokens);
    job.sampling = sampling(o, 1.0)?;
    job.stop_tokens = gptoss_engine::chat::STOP_TOKENS.to_vec();
    penalties(o, &mut job, st.engine.vocab)?;
    Ok(job)
}

/// Penalties and logit bias, as OpenAI defines them.
fn penalties(o: &Obj, spec: &mut JobSpec, vocab: usize) -> Result<(), ApiError> {
    spec.presence_penalty = o.f32_in("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0);
    spec.frequency_penalty = o.f32_in("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0);
    if let Some(bias) = o.obj("logit_bias")? {
        for (k, v) in bias {
            let path = format!("logit_bias.{k}");
            let id: u32 =
                k.parse().ok().filter(|&id: &u32| (id as usize) < vocab).ok_or_else(|| {
                    ApiError::invalid(&path, format!("`{path}`: {k:?} is not a token id below {vocab}"))
                })?;
            let b = v
                .as_f64()
                .filter(|b| (-100.0..=100.0).contains(b))
                .ok_or_else(|| wrong(&path, "a number from -100 to 100", v))?;
            spec.logit_bias.push((id, b as f32));
        }
    }
    Ok(())
}

async fn not_found() -> ApiError {
    ApiError::not_found(None, "no such endpoint", "not_found")
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::method_not_allowed(req.method().as_str(), req.uri().path())
}

/// Liveness: the process answers. `ready` says whether it takes work (as `/ready`).
async fn health(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({
        "status": "ok",
        "ready": st.engine.readiness().is_ok(),
        "model": st.model_name,
        "running": st.metrics.running.load(Ordering::Relaxed),
        "waiting": st.engine.waiting(),
    }))
    .into_response()
}

/// Readiness: the model is loaded (the server listens only once it is), the engine thread is
/// alive and stepping (no step stuck past [`crate::engine::STALLED_AFTER`]) and the server is
/// not shutting down. 200, or 503 saying why.
async fn ready(State(st): State<Arc<AppState>>) -> Response {
    match st.engine.readiness() {
        Ok(()) => Json(json!({"status": "ready", "model": st.model_name})).into_response(),
        Err(why) => ApiError::unavailable(format!("not ready: {why}")).with_code("not_ready").into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.metrics.render()).into_response()
}

fn model_object(st: &AppState) -> Value {
    json!({
        "id": st.model_name, "object": "model", "created": st.started, "owned_by": "gptoss",
        "max_model_len": st.engine.max_context,
    })
}

async fn models(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut log = RequestLog::new(&st, "models");
    if let Err(e) = authorize(&st, &headers) {
        log.fail(&e);
        return e.into_response();
    }
    Json(json!({"object": "list", "data": [model_object(&st)]})).into_response()
}

async fn model(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    let mut log = RequestLog::new(&st, "models");
    let result = authorize(&st, &headers).and_then(|_| {
        let Path(id) = id.map_err(|e| ApiError::invalid("model", format!("bad model id in the path: {e}")))?;
        if st.serves(&id) {
            Ok(Json(model_object(&st)).into_response())
        } else {
            Err(ApiError::not_found(Some("model"), format!("the model `{id}` does not exist"), "model_not_found"))
        }
    });
    result.unwrap_or_else(|e| {
        log.fail(&e);
        e.into_response()
    })
}

/// `{"prompt": text}` (ordinary text), a chat request's fields (`messages`, `tools`, ...: the chat
/// prompt exactly as `/v1/chat/completions` renders it) or a Responses request's (`input`,
/// `previous_response_id`, `instructions`, `tools`, ...: as `/v1/responses` renders it).
async fn tokenize(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let mut log = RequestLog::new(&st, "tokenize");
    let result = async {
        let bytes = read_body(&st, &headers, body).await?;
        let (out, count) = cpu(&st, bytes.len(), move |st| {
            let req = parse_body(&bytes)?;
            let o = Obj::new(&req, "");
            check_model(st, &o)?;
            let tokens = if let Some(text) = o.str("prompt")? {
                st.tok.encode(text)
            } else if o.get("messages").is_some() {
                PromptSpec::from_chat(&o)?.render(&st.tok)?.tokens
            } else if o.get("input").is_some() || o.get("previous_response_id").is_some() {
                crate::responses::prompt_tokens(st, &o)?
            } else {
                return Err(ApiError::invalid(
                    "prompt",
                    "give `prompt` (text), `messages` (a chat) or `input` (a Responses request)",
                ));
            };
            let mut out = json!({"count": tokens.len(), "max_model_len": st.engine.max_context, "tokens": tokens});
            if o.bool("return_token_strs")? == Some(true) {
                let strs: Vec<String> = tokens.iter().map(|&t| st.tok.decode_lossy(&[t]).unwrap_or_default()).collect();
                out["token_strs"] = json!(strs);
            }
            Ok((out, tokens.len()))
        })
        .await?;
        log.prompt_tokens = count;
        Ok::<_, ApiError>(Json(out).into_response())
    }
    .await;
    result.unwrap_or_else(|e| {
        log.fail(&e);
        e.into_response()
    })
}

async fn detokenize(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let mut log = RequestLog::new(&st, "detokenize");
    let result = async {
        let bytes = read_body(&st, &headers, body).await?;
        let text = cpu(&st, bytes.len(), move |st| {
            let req = parse_body(&bytes)?;
            let o = Obj::new(&req, "");
            check_model(st, &o)?;
            let list = o.arr("tokens")?.ok_or_else(|| ApiError::invalid("tokens", "`tokens` is required"))?;
            let ids = token_ids(list, "tokens", st.engine.vocab)?;
            st.tok.decode_lossy(&ids).map_err(|e| ApiError::invalid("tokens", e.to_string()))
        })
        .await?;
        Ok::<_, ApiError>(Json(json!({"prompt": text})).into_response())
    }
    .await;
    result.unwrap_or_else(|e| {
        log.fail(&e);
        e.into_response()
    })
}

/// Token ids, each checked against the vocabulary.
pub fn token_ids(list: &[Value], path: &str, vocab: usize) -> Result<Vec<u32>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64().filter(|&id| (id as usize) < vocab).map(|id| id as u32).ok_or_else(|| {
                ApiError::invalid(
                    format!("{path}[{i}]"),
                    format!("`{path}[{i}]` must be a token id from 0 to {}", vocab - 1),
                )
            })
        })
        .collect()
}

//! The step loop. One thread owns the model; each step it takes in new requests, drops the
//! ones whose client went away, admits waiting ones while the batch has room, schedules
//! (every running sequence decodes one token; prompts are fed in chunks beside them),
//! executes one batched forward pass, and hands each sequence its token.
//!
//! The scheduler ([`schedule`]) is a pure function of the sequences' progress, so it is
//! tested without a model; the model itself is behind [`Executor`], so the same loop runs
//! a scripted token source for protocol tests.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gptoss_engine::model::{Logits, LogitsRequest, SeqChunk};
use gptoss_engine::sampler::{log_sum_exp, logprob, top_logprobs};
use gptoss_engine::{EngineError, Sampled, Sampler, SamplingParams, SeqId};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::constrain::{restrict, JobConstraint, SeqConstraint};
use crate::executor::Executor;
use crate::metrics::Metrics;

/// What one request asks the engine to generate.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (stop token included).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends after one of these (it is reported, then the sequence finishes).
    pub stop_tokens: Vec<u32>,
    /// Alternatives reported with each token.
    pub top_logprobs: usize,
    /// Report the log-probability of every prompt token after the first (`echo`).
    pub prompt_logprobs: bool,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Added to the logits before sampling.
    pub logit_bias: Vec<(u32, f32)>,
    /// What the output must satisfy (a response format, strict tools' arguments).
    pub constraint: Option<JobConstraint>,
}

impl JobSpec {
    pub fn new(prompt: Vec<u32>, max_tokens: usize) -> Self {
        JobSpec {
            prompt,
            max_tokens,
            sampling: SamplingParams::default(),
            stop_tokens: Vec::new(),
            top_logprobs: 0,
            prompt_logprobs: false,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            constraint: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum FinishReason {
    /// One of the stop tokens (already sent as a token).
    Stop(u32),
    /// `max_tokens` or the context limit.
    Length,
    /// The engine failed on this request; the message says why.
    Error(String),
    /// Ended by the server (shutting down) before it was done; the message says why.
    Aborted(String),
}

#[derive(Clone, Debug)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache instead of computed.
    pub cached_tokens: usize,
    pub generated: usize,
    /// From arrival until admitted to the batch.
    pub queued: Duration,
    /// From arrival until the first token.
    pub ttft: Option<Duration>,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// `[prompt_len - 1]`: log-probability of prompt token i+1 given the ones before it.
    PromptLogprobs(Vec<Sampled>),
    Token(Sampled),
    Finished(Finish),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error("the server is busy: {0} requests are already waiting")]
    QueueFull(usize),
    #[error("the engine has stopped")]
    Stopped,
    /// A prompt token the model has no embedding for (a prompt rendered with a tokenizer
    /// larger than the model's vocabulary, or a raw id out of range).
    #[error("prompt token {index} is id {id}, outside the model's vocabulary of {vocab} tokens")]
    OutOfVocabulary { index: usize, id: u32, vocab: usize },
}

struct Job {
    spec: JobSpec,
    events: UnboundedSender<Event>,
    arrived: Instant,
}

/// What the engine thread is sent.
enum Msg {
    Job(Job),
    /// Ends every job, waiting or running, with this error, and every later one at once
    /// (the server's shutdown deadline has passed).
    Abort(String),
}

/// What the HTTP side sees of the engine thread, written by it.
#[derive(Default)]
struct Shared {
    /// Requests sent to the engine and not yet admitted to the batch (or refused).
    pending: AtomicUsize,
    /// Sequences in the running batch.
    running: AtomicUsize,
    /// False once the engine thread has ended (or panicked).
    alive: AtomicBool,
    /// Milliseconds since `epoch` when the current step began; 0 between steps.
    step_started_ms: AtomicU64,
    /// Set by [`EngineHandle::abort`].
    aborted: AtomicBool,
}

/// The HTTP side's handle: submit jobs, each answered by a stream of events. Dropping the
/// receiver cancels the job.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    epoch: Instant,
    max_queue: usize,
    /// Sequences the engine runs together (the executor's slots permitting).
    max_batch: usize,
    pub max_context: usize,
    pub vocab: usize,
}

/// Why the engine is not ready for work ([`EngineHandle::readiness`]).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NotReady {
    #[error("the engine thread has stopped")]
    Stopped,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the engine has been in one step for {0} s")]
    Stalled(u64),
}

/// A step running longer than this makes the engine not ready (a wedged device).
pub const STALLED_AFTER: Duration = Duration::from_secs(120);

impl EngineHandle {
    /// Queues a job. Only requests that find no free batch slot count against `max_queue`:
    /// with slots free every request is taken, whatever `max_queue` (0 means no waiting
    /// room, not no service).
    pub fn submit(&self, spec: JobSpec) -> Result<UnboundedReceiver<Event>, SubmitError> {
        if let Some((index, &id)) = spec.prompt.iter().enumerate().find(|(_, &t)| t as usize >= self.vocab) {
            return Err(SubmitError::OutOfVocabulary { index, id, vocab: self.vocab });
        }
        if self.shared.aborted.load(Ordering::SeqCst) {
            return Err(SubmitError::Stopped);
        }
        let before = self.shared.pending.fetch_add(1, Ordering::SeqCst);
        let free = self.max_batch.saturating_sub(self.shared.running.load(Ordering::SeqCst));
        if before >= self.max_queue.saturating_add(free) {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(before.saturating_sub(free)));
        }
        let (events, rx) = unbounded_channel();
        if self.tx.send(Msg::Job(Job { spec, events, arrived: Instant::now() })).is_err() {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        Ok(rx)
    }

    /// Requests accepted but not yet running.
    pub fn waiting(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Sequences generating now.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst)
    }

    /// Ends every job with `reason` (streams get it as an error event) and refuses new ones.
    pub fn abort(&self, reason: &str) {
        self.shared.aborted.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Abort(reason.to_string()));
    }

    /// Whether the engine takes work: its thread is alive, the server is not shutting down,
    /// and no step has been running past [`STALLED_AFTER`].
    pub fn readiness(&self) -> Result<(), NotReady> {
        if !self.shared.alive.load(Ordering::SeqCst) {
            return Err(NotReady::Stopped);
        }
        if self.shared.aborted.load(Ordering::SeqCst) {
            return Err(NotReady::ShuttingDown);
        }
        let started = self.shared.step_started_ms.load(Ordering::SeqCst);
        if started > 0 {
            let now = self.epoch.elapsed().as_millis() as u64;
            let busy = Duration::from_millis(now.saturating_sub(started));
            if busy >= STALLED_AFTER {
                return Err(NotReady::Stalled(busy.as_secs()));
            }
        }
        Ok(())
    }
}

/// Marks the engine gone when its thread ends, however it ends.
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Sequences decoding together at most.
    pub max_batch: usize,
    /// Requests waiting for a slot at most; more are refused.
    pub max_queue: usize,
    /// Tokens per forward step at most (decodes plus prompt chunks).
    pub step_tokens: usize,
}

/// Starts the engine thread. It stops when every handle is dropped and its work is done.
pub fn start<E: Executor + 'static>(
    exec: E,
    cfg: EngineConfig,
    metrics: Arc<Metrics>,
) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared { alive: AtomicBool::new(true), ..Shared::default() });
    // More running sequences than the executor has slots would fail in add_sequence.
    let max_batch = cfg.max_batch.min(exec.max_sequences()).max(1);
    let epoch = Instant::now();
    let handle = EngineHandle {
        tx,
        shared: shared.clone(),
        epoch,
        max_queue: cfg.max_queue,
        max_batch,
        max_context: exec.max_context(),
        vocab: exec.vocab(),
    };
    let step_tokens = cfg.step_tokens.max(max_batch + 1);
    let mut engine = EngineLoop {
        exec,
        cfg: EngineConfig { step_tokens, max_batch, ..cfg },
        rx,
        shared,
        epoch,
        aborted: None,
        waiting: VecDeque::new(),
        running: Vec::new(),
        metrics,
    };
    let thread = std::thread::Builder::new().name("gptoss-engine".into()).spawn(move || {
        let _alive = AliveGuard(engine.shared.clone());
        engine.run()
    })?;
    Ok((handle, thread))
}

/// A sequence's progress, as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub prompt_len: usize,
    /// Prompt tokens already fed.
    pub fed: usize,
    /// Prompt tokens per step at most (small when every position's logits are kept).
    pub max_chunk: usize,
}

/// Prompt chunk for a request that wants every prompt position's logprobs: each position
/// holds a full vocabulary row (0.8 MB), so chunks stay small.
pub const PROMPT_LOGPROBS_CHUNK: usize = 32;

/// One sequence's share of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Feed the last sampled token and sample the next.
    Decode(usize),
    /// Feed prompt tokens `start..end`; sample if that ends the prompt.
    Prefill { index: usize, start: usize, end: usize },
}

/// Decides one step: every sequence past its prompt decodes one token; the remaining budget
/// goes to prompt chunks, oldest request first. Nothing is scheduled twice.
pub fn schedule(seqs: &[Progress], step_tokens: usize) -> Vec<Work> {
    let mut work: Vec<Work> =
        seqs.iter().enumerate().filter(|(_, s)| s.fed >= s.prompt_len).map(|(i, _)| Work::Decode(i)).collect();
    let mut budget = step_tokens.saturating_sub(work.len());
    for (i, s) in seqs.iter().enumerate() {
        if budget == 0 {
            break;
        }
        if s.fed < s.prompt_len {
            let end = s.prompt_len.min(s.fed + budget.min(s.max_chunk.max(1)));
            work.push(Work::Prefill { index: i, start: s.fed, end });
            budget -= end - s.fed;
        }
    }
    work
}

/// What a step's forward pass handed back.
enum StepOut {
    Logits(Logits),
    /// One pick per chunk that asked for its last logits, in batch order.
    Picked(Vec<Sampled>),
}

struct Running {
    job: Job,
    seq: SeqId,
    fed: usize,
    /// Prompt tokens the prefix cache supplied.
    cached: usize,
    /// The last sampled token, to be fed next step.
    next: Option<u32>,
    generated: usize,
    sampler: Sampler,
    admitted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// How often each token was generated, for the penalties.
    counts: HashMap<u32, u32>,
    constraint: Option<SeqConstraint>,
}

struct EngineLoop<E> {
    exec: E,
    cfg: EngineConfig,
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    epoch: Instant,
    /// Set by [`Msg::Abort`]: every job from then on ends with this error.
    aborted: Option<String>,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    metrics: Arc<Metrics>,
}

impl<E: Executor> EngineLoop<E> {
    fn run(&mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(msg) => self.take(msg),
                    Err(_) => return,
                }
            }
            while let Ok(msg) = self.rx.try_recv() {
                self.take(msg);
            }
            self.drop_cancelled();
            self.admit();
            self.publish();
            if !self.running.is_empty() {
                let now = (self.epoch.elapsed().as_millis() as u64).max(1);
                self.shared.step_started_ms.store(now, Ordering::SeqCst);
                self.step();
                self.shared.step_started_ms.store(0, Ordering::SeqCst);
            }
            self.publish();
        }
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Job(job) => match &self.aborted {
                Some(reason) => {
                    self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                    finish_job(&job, FinishReason::Aborted(reason.clone()), 0, 0, None, None);
                }
                None => self.waiting.push_back(job),
            },
            Msg::Abort(reason) => {
                for job in self.waiting.drain(..) {
                    self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                    finish_job(&job, FinishReason::Aborted(reason.clone()), 0, 0, None, None);
                }
                for r in self.running.drain(..) {
                    self.exec.remove_sequence(r.seq);
                    r.finish(FinishReason::Aborted(reason.clone()));
                }
                self.aborted = Some(reason);
            }
        }
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|j| !j.events.is_closed());
        let gone = before - self.waiting.len();
        self.shared.pending.fetch_sub(gone, Ordering::SeqCst);
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].job.events.is_closed() {
                let r = self.running.swap_remove(i);
                self.exec.remove_sequence(r.seq);
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            } else {
                i += 1;
            }
        }
        self.metrics.cancelled.fetch_add(gone as u64, Ordering::Relaxed);
    }

    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_batch {
            let Some(job) = self.waiting.pop_front() else { break };
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
            if let Some((index, &id)) =
                job.spec.prompt.iter().enumerate().find(|(_, &t)| t as usize >= self.exec.vocab())
            {
                // Checked at submit too; a job that got here anyway fails alone, before it
                // can fail the batch it would join.
                let e = SubmitError::OutOfVocabulary { index, id, vocab: self.exec.vocab() };
                finish_job(&job, FinishReason::Error(e.to_string()), 0, 0, None, None);
                continue;
            }
            let sampler = match Sampler::new(job.spec.sampling.clone()) {
                Ok(s) => s,
                Err(e) => {
                    finish_job(&job, FinishReason::Error(e.to_string()), 0, 0, None, None);
                    continue;
                }
            };
            let seq = match self.exec.add_sequence() {
                Ok(seq) => seq,
                // Out of slots though the batch has room (the executor holds fewer than it
                // said): the job waits for a running one to finish. With none running, no
                // slot will ever free up, so it fails instead of waiting forever.
                Err(EngineError::NoSequenceSlot { .. }) if !self.running.is_empty() => {
                    self.waiting.push_front(job);
                    self.shared.pending.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    finish_job(&job, FinishReason::Error(format!("cannot start the sequence: {e}")), 0, 0, None, None);
                    continue;
                }
            };
            // Requests that want every prompt position's log-probabilities compute them all.
            let cached = if job.spec.prompt_logprobs { 0 } else { self.exec.attach_prefix(seq, &job.spec.prompt) };
            let budget = job.spec.max_tokens.min(self.exec.max_context().saturating_sub(job.spec.prompt.len()));
            let constraint = job
                .spec
                .constraint
                .as_ref()
                .map(|c| SeqConstraint::new(c.spec.clone(), &c.forced, budget, self.metrics.clone()));
            self.running.push(Running {
                job,
                seq,
                fed: cached,
                cached,
                next: None,
                generated: 0,
                sampler,
                admitted: Instant::now(),
                first_token: None,
                last_token: None,
                counts: HashMap::new(),
                constraint,
            });
            self.shared.running.store(self.running.len(), Ordering::SeqCst);
        }
    }

    fn publish(&self) {
        self.shared.running.store(self.running.len(), Ordering::SeqCst);
        self.metrics.queue_depth.store(self.shared.pending.load(Ordering::SeqCst), Ordering::Relaxed);
        self.metrics.running.store(self.running.len(), Ordering::Relaxed);
        self.metrics.kv_cache_bytes.store(self.exec.cache_bytes(), Ordering::Relaxed);
        self.metrics.set_prefix_cache(self.exec.prefix_cache_stats());
    }

    fn step(&mut self) {
        let progress: Vec<Progress> = self
            .running
            .iter()
            .map(|r| Progress {
                prompt_len: r.job.spec.prompt.len(),
                fed: r.fed,
                max_chunk: if r.job.spec.prompt_logprobs { PROMPT_LOGPROBS_CHUNK } else { usize::MAX },
            })
            .collect();
        let work = schedule(&progress, self.cfg.step_tokens);
        // On a device that picks tokens beside the logits, a step whose sampled rows all use
        // plain sampling settings (no penalties, biases or prompt log-probabilities) gets its
        // tokens without the logits crossing the bus.
        let plain = |r: &Running| {
            let s = &r.job.spec;
            s.presence_penalty == 0.0
                && s.frequency_penalty == 0.0
                && s.logit_bias.is_empty()
                && !s.prompt_logprobs
                && s.top_logprobs <= gptoss_engine::runner::MAX_PICK_ALTERNATIVES
                && r.constraint.is_none()
        };
        let on_device = self.exec.picks_on_device()
            && work.iter().all(|w| match *w {
                Work::Decode(i) | Work::Prefill { index: i, .. } => plain(&self.running[i]),
            });
        // One pick per chunk that asks for its last logits (decodes, prompts' last chunks), in
        // batch order, drawn from each sequence's own sampler as sampling it here would.
        let mut picks = Vec::new();
        if on_device {
            for w in &work {
                let i = match *w {
                    Work::Decode(i) => i,
                    Work::Prefill { index, end, .. } if end == self.running[index].job.spec.prompt.len() => index,
                    Work::Prefill { .. } => continue,
                };
                let r = &mut self.running[i];
                let n = r.job.spec.top_logprobs;
                picks.push(r.sampler.pick_spec(n));
            }
        }
        let decode_tokens: Vec<[u32; 1]> = work
            .iter()
            .map(|w| match w {
                Work::Decode(i) => [self.running[*i].next.unwrap_or_default()],
                Work::Prefill { .. } => [0],
            })
            .collect();
        let chunks: Vec<SeqChunk> = work
            .iter()
            .zip(&decode_tokens)
            .map(|(w, tok)| match *w {
                Work::Decode(i) => SeqChunk { seq: self.running[i].seq, tokens: tok, logits: LogitsRequest::Last },
                Work::Prefill { index, start, end } => {
                    let r = &self.running[index];
                    let last = end == r.job.spec.prompt.len();
                    let logits = if r.job.spec.prompt_logprobs {
                        LogitsRequest::All
                    } else if last {
                        LogitsRequest::Last
                    } else {
                        LogitsRequest::None
                    };
                    SeqChunk { seq: r.seq, tokens: &r.job.spec.prompt[start..end], logits }
                }
            })
            .collect();
        self.metrics.steps.fetch_add(1, Ordering::Relaxed);
        self.metrics.batch_size.observe(chunks.len() as f64);
        let prompt_fed: usize =
            work.iter().map(|w| if let Work::Prefill { start, end, .. } = w { end - start } else { 0 }).sum();
        self.metrics.prompt_tokens.fetch_add(prompt_fed as u64, Ordering::Relaxed);

        let result = if on_device {
            self.exec.forward_pick(&chunks, &picks).map(StepOut::Picked)
        } else {
            self.exec.forward(&chunks).map(StepOut::Logits)
        };
        let out = match result {
            Ok(l) => l,
            Err(e) => {
                // A check that failed before the pass changed anything names the sequence at
                // fault: it fails alone, and the rest of the batch runs next step unchanged.
                if let Some(seq) = culprit(&e, &chunks) {
                    drop(chunks);
                    if let Some(i) = self.running.iter().position(|r| r.seq == seq) {
                        let r = self.running.swap_remove(i);
                        self.exec.remove_sequence(r.seq);
                        r.finish(FinishReason::Error(format!("the model refused this request: {e}")));
                        return;
                    }
                }
                // Nothing in this batch can go on; the others are unaffected.
                let message = format!("the model failed on this batch: {e}");
                let mut failed: Vec<usize> = work
                    .iter()
                    .map(|w| match *w {
                        Work::Decode(i) | Work::Prefill { index: i, .. } => i,
                    })
                    .collect();
                failed.sort_unstable();
                for &i in failed.iter().rev() {
                    let r = self.running.swap_remove(i);
                    self.exec.remove_sequence(r.seq);
                    r.finish(FinishReason::Error(message.clone()));
                }
                return;
            }
        };
        // Picked tokens by batch item.
        let mut picked: Vec<Option<Sampled>> = vec![None; chunks.len()];
        let empty = Logits::default();
        let logits = match &out {
            StepOut::Logits(l) => l,
            StepOut::Picked(p) => {
                let mut next = p.iter();
                for (item, c) in chunks.iter().enumerate() {
                    if c.logits == LogitsRequest::Last {
                        picked[item] = next.next().cloned();
                    }
                }
                &empty
            }
        };
        drop(chunks);

        let mut finished: Vec<(usize, FinishReason)> = Vec::new();
        for (item, w) in work.iter().enumerate() {
            let i = match *w {
                Work::Decode(i) => {
                    self.running[i].next = None;
                    i
                }
                Work::Prefill { index, end, .. } => {
                    let r = &mut self.running[index];
                    r.fed = end;
                    if r.job.spec.prompt_logprobs {
                        let prompt = &r.job.spec.prompt;
                        let rows: Vec<Sampled> = logits
                            .rows
                            .iter()
                            .enumerate()
                            .filter(|(_, row)| row.item == item && row.position + 1 < prompt.len())
                            .map(|(k, row)| {
                                let z = logits.row(k);
                                let lse = log_sum_exp(z);
                                let token = prompt[row.position + 1];
                                Sampled {
                                    token,
                                    logprob: logprob(z[token as usize], lse),
                                    top_logprobs: top_logprobs(z, r.job.spec.top_logprobs, lse),
                                }
                            })
                            .collect();
                        let _ = r.job.events.send(Event::PromptLogprobs(rows));
                    }
                    if end < r.job.spec.prompt.len() {
                        continue;
                    }
                    index
                }
            };
            let sampled = match (&out, picked[item].take()) {
                (StepOut::Picked(_), Some(s)) => s,
                (StepOut::Logits(_), _) => match logits.last_for(item) {
                    Some(z) => {
                        let r = &self.running[i];
                        let left = r.job.spec.max_tokens.saturating_sub(r.generated);
                        let room = self.exec.max_context().saturating_sub(r.job.spec.prompt.len() + r.generated);
                        self.running[i].sample(z, left.min(room))
                    }
                    None => {
                        // The executor broke its contract; this sequence cannot go on.
                        finished.push((i, FinishReason::Error("no logits for the sequence's next token".into())));
                        continue;
                    }
                },
                (StepOut::Picked(_), None) => {
                    finished.push((i, FinishReason::Error("no token picked for the sequence".into())));
                    continue;
                }
            };
            let r = &mut self.running[i];
            let now = Instant::now();
            match r.last_token {
                None => self.metrics.time_to_first_token.observe((now - r.job.arrived).as_secs_f64()),
                Some(t) => self.metrics.inter_token_latency.observe((now - t).as_secs_f64()),
            }
            r.first_token.get_or_insert(now);
            r.last_token = Some(now);
            r.generated += 1;
            *r.counts.entry(sampled.token).or_default() += 1;
            self.metrics.generation_tokens.fetch_add(1, Ordering::Relaxed);
            let token = sampled.token;
            let _ = r.job.events.send(Event::Token(sampled));
            let spec = &r.job.spec;
            if spec.stop_tokens.contains(&token) {
                finished.push((i, FinishReason::Stop(token)));
            } else if r.generated >= spec.max_tokens || spec.prompt.len() + r.generated >= self.exec.max_context() {
                finished.push((i, FinishReason::Length));
            } else {
                r.next = Some(token);
            }
        }
        if let StepOut::Logits(l) = out {
            self.exec.reclaim(l);
        }
        finished.sort_unstable_by_key(|(i, _)| *i);
        for (i, reason) in finished.into_iter().rev() {
            let r = self.running.swap_remove(i);
            self.exec.remove_sequence(r.seq);
            self.metrics.request_latency.observe(r.job.arrived.elapsed().as_secs_f64());
            r.finish(reason);
        }
    }
}

/// The one sequence an error is about, when the executor refused the batch in its checks
/// before changing anything ([`gptoss_engine::model::check_batch`]); `None` for failures of
/// the pass itself, which leave every sequence in the batch in an unknown state.
fn culprit(e: &EngineError, chunks: &[SeqChunk]) -> Option<SeqId> {
    match *e {
        EngineError::UnknownSequence(id)
        | EngineError::DuplicateSequence(id)
        | EngineError::EmptyChunk(id)
        | EngineError::ContextOverflow { seq: id, .. } => Some(SeqId(id)),
        EngineError::TokenOutOfVocab { vocab, .. } => {
            chunks.iter().find(|c| c.tokens.iter().any(|&t| t as usize >= vocab)).map(|c| c.seq)
        }
        _ => None,
    }
}

impl Running {
    /// The next token, `remaining` tokens (this one included) left to generate.
    fn sample(&mut self, logits: &[f32], remaining: usize) -> Sampled {
        let spec = &self.job.spec;
        let adjust = spec.presence_penalty != 0.0 || spec.frequency_penalty != 0.0 || !spec.logit_bias.is_empty();
        if !adjust && self.constraint.is_none() {
            return self.sampler.sample(logits, spec.top_logprobs);
        }
        let constrained_since = self.constraint.is_some().then(Instant::now);
        // Penalties and biases shape what is sampled; the reported log-probabilities stay the
        // model's own, as OpenAI reports them.
        let mut z = logits.to_vec();
        for (&t, &n) in &self.counts {
            if let Some(v) = z.get_mut(t as usize) {
                *v -= spec.presence_penalty + spec.frequency_penalty * n as f32;
            }
        }
        for &(t, b) in &spec.logit_bias {
            if let Some(v) = z.get_mut(t as usize) {
                *v += b;
            }
        }
        // The constraint narrows what penalties and biases left: a token it forces, or only
        // the tokens it allows.
        let forced = self.constraint.as_mut().and_then(|c| restrict(c.next(remaining), &mut z));
        let token = forced.unwrap_or_else(|| self.sampler.sample(&z, 0).token);
        if let Some(c) = &mut self.constraint {
            c.commit(token);
            c.sampled_in(constrained_since.map(|t| t.elapsed()).unwrap_or_default());
        }
        let lse = log_sum_exp(logits);
        Sampled {
            token,
            logprob: logprob(logits[token as usize], lse),
            top_logprobs: top_logprobs(logits, spec.top_logprobs, lse),
        }
    }

    fn finish(self, reason: FinishReason) {
        finish_job(&self.job, reason, self.cached, self.generated, Some(self.admitted), self.first_token);
    }
}

fn finish_job(
    job: &Job,
    reason: FinishReason,
    cached_tokens: usize,
    generated: usize,
    admitted: Option<Instant>,
    first: Option<Instant>,
) {
    let queued = admitted.unwrap_or_else(Instant::now) - job.arrived;
    let _ = job.events.send(Event::Finished(Finish {
        reason,
        prompt_tokens: job.spec.prompt.len(),
        cached_tokens,
        generated,
        queued,
        ttft: first.map(|t| t - job.arrived),
    }));
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

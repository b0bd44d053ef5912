//! The step loop. One thread owns the model; each step it takes in new requests, drops the
//! ones whose client went away, admits waiting ones while the batch has room, schedules
//! (every running sequence decodes one token; prompts are fed in chunks beside them),
//! executes one batched forward pass, and hands each sequence its token.
//!
//! The scheduler ([`schedule`]) is a pure function of the sequences' progress, so it is
//! tested without a model; the model itself is behind [`Executor`], so the same loop runs
//! a scripted token source for protocol tests.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gptoss_engine::model::{Logits, LogitsRequest, SeqChunk};
use gptoss_engine::sampler::{log_sum_exp, logprob, top_logprobs};
use gptoss_engine::{EngineError, Sampled, Sampler, SamplingParams, SeqId};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

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
}

#[derive(Clone, Debug)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
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
}

struct Job {
    spec: JobSpec,
    events: UnboundedSender<Event>,
    arrived: Instant,
}

/// The HTTP side's handle: submit jobs, each answered by a stream of events. Dropping the
/// receiver cancels the job.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
    pub max_context: usize,
    pub vocab: usize,
}

impl EngineHandle {
    pub fn submit(&self, spec: JobSpec) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        if before >= self.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(before));
        }
        let (events, rx) = unbounded_channel();
        if self.tx.send(Job { spec, events, arrived: Instant::now() }).is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        Ok(rx)
    }

    /// Requests accepted but not yet running.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
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
    let waiting = Arc::new(AtomicUsize::new(0));
    let handle = EngineHandle {
        tx,
        waiting: waiting.clone(),
        max_queue: cfg.max_queue,
        max_context: exec.max_context(),
        vocab: exec.vocab(),
    };
    // More running sequences than the executor has slots would fail in add_sequence.
    let max_batch = cfg.max_batch.min(exec.max_sequences()).max(1);
    let step_tokens = cfg.step_tokens.max(max_batch + 1);
    let mut engine = EngineLoop {
        exec,
        cfg: EngineConfig { step_tokens, max_batch, ..cfg },
        rx,
        waiting_count: waiting,
        waiting: VecDeque::new(),
        running: Vec::new(),
        metrics,
    };
    let thread = std::thread::Builder::new().name("gptoss-engine".into()).spawn(move || engine.run())?;
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
    /// The last sampled token, to be fed next step.
    next: Option<u32>,
    generated: usize,
    sampler: Sampler,
    admitted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// How often each token was generated, for the penalties.
    counts: HashMap<u32, u32>,
}

struct EngineLoop<E> {
    exec: E,
    cfg: EngineConfig,
    rx: mpsc::Receiver<Job>,
    waiting_count: Arc<AtomicUsize>,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    metrics: Arc<Metrics>,
}

impl<E: Executor> EngineLoop<E> {
    fn run(&mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = self.rx.try_recv() {
                self.waiting.push_back(job);
            }
            self.drop_cancelled();
            self.admit();
            self.publish();
            if !self.running.is_empty() {
                self.step();
            }
            self.publish();
        }
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|j| !j.events.is_closed());
        let gone = before - self.waiting.len();
        self.waiting_count.fetch_sub(gone, Ordering::SeqCst);
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
            self.waiting_count.fetch_sub(1, Ordering::SeqCst);
            let sampler = match Sampler::new(job.spec.sampling.clone()) {
                Ok(s) => s,
                Err(e) => {
                    finish_job(&job, FinishReason::Error(e.to_string()), 0, None, None);
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
                    self.waiting_count.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    finish_job(&job, FinishReason::Error(format!("cannot start the sequence: {e}")), 0, None, None);
                    continue;
                }
            };
            self.running.push(Running {
                job,
                seq,
                fed: 0,
                next: None,
                generated: 0,
                sampler,
                admitted: Instant::now(),
                first_token: None,
                last_token: None,
                counts: HashMap::new(),
            });
        }
    }

    fn publish(&self) {
        self.metrics.queue_depth.store(self.waiting_count.load(Ordering::SeqCst), Ordering::Relaxed);
        self.metrics.running.store(self.running.len(), Ordering::Relaxed);
        self.metrics.kv_cache_bytes.store(self.exec.cache_bytes(), Ordering::Relaxed);
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
                    Some(z) => self.running[i].sample(z),
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

impl Running {
    fn sample(&mut self, logits: &[f32]) -> Sampled {
        let spec = &self.job.spec;
        let adjust = spec.presence_penalty != 0.0 || spec.frequency_penalty != 0.0 || !spec.logit_bias.is_empty();
        if !adjust {
            return self.sampler.sample(logits, spec.top_logprobs);
        }
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
        let token = self.sampler.sample(&z, 0).token;
        let lse = log_sum_exp(logits);
        Sampled {
            token,
            logprob: logprob(logits[token as usize], lse),
            top_logprobs: top_logprobs(logits, spec.top_logprobs, lse),
        }
    }

    fn finish(self, reason: FinishReason) {
        finish_job(&self.job, reason, self.generated, Some(self.admitted), self.first_token);
    }
}

fn finish_job(job: &Job, reason: FinishReason, generated: usize, admitted: Option<Instant>, first: Option<Instant>) {
    let queued = admitted.unwrap_or_else(Instant::now) - job.arrived;
    let _ = job.events.send(Event::Finished(Finish {
        reason,
        prompt_tokens: job.spec.prompt.len(),
        generated,
        queued,
        ttft: first.map(|t| t - job.arrived),
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(prompt_len: usize, fed: usize) -> Progress {
        Progress { prompt_len, fed, max_chunk: usize::MAX }
    }

    #[test]
    fn decodes_everyone_then_fills_budget_with_prompts_in_order() {
        let seqs = [p(10, 10), p(1000, 0), p(5, 0), p(3, 3)];
        let w = schedule(&seqs, 64);
        assert_eq!(w, vec![Work::Decode(0), Work::Decode(3), Work::Prefill { index: 1, start: 0, end: 62 }]);
    }

    #[test]
    fn later_prompts_get_what_earlier_ones_leave() {
        let seqs = [p(20, 15), p(100, 0), p(4, 0)];
        let w = schedule(&seqs, 30);
        assert_eq!(
            w,
            vec![Work::Prefill { index: 0, start: 15, end: 20 }, Work::Prefill { index: 1, start: 0, end: 25 },]
        );
    }

    #[test]
    fn a_capped_prompt_leaves_the_budget_to_the_next() {
        let seqs = [Progress { prompt_len: 100, fed: 0, max_chunk: 32 }, p(50, 0)];
        assert_eq!(
            schedule(&seqs, 64),
            vec![Work::Prefill { index: 0, start: 0, end: 32 }, Work::Prefill { index: 1, start: 0, end: 32 }]
        );
    }

    #[test]
    fn every_token_is_scheduled_exactly_once_until_done() {
        // Simulate: prompts of ragged lengths finish prefill in order, never exceeding the budget.
        let mut seqs = vec![p(700, 0), p(3, 0), p(129, 0), p(1, 0)];
        let mut fed_total = 0;
        for _ in 0..10 {
            let w = schedule(&seqs, 256);
            let tokens: usize = w
                .iter()
                .map(|w| match w {
                    Work::Decode(_) => 1,
                    Work::Prefill { start, end, .. } => end - start,
                })
                .sum();
            assert!(tokens <= 256);
            for w in &w {
                if let Work::Prefill { index, start, end } = *w {
                    assert_eq!(start, seqs[index].fed);
                    seqs[index].fed = end;
                    fed_total += end - start;
                }
            }
        }
        assert_eq!(fed_total, 700 + 3 + 129 + 1);
        assert!(seqs.iter().all(|s| s.fed == s.prompt_len));
    }

    use std::collections::HashSet;
    use std::sync::Mutex;

    use gptoss_engine::model::LogitsRow;
    use gptoss_engine::{EngineError, Logits};

    /// What a [`Fake`] executor did, shared with the test that drives the engine thread.
    #[derive(Default)]
    struct FakeState {
        live: HashSet<SeqId>,
        most_live: usize,
        /// add_sequence calls refused for want of a slot.
        refused: usize,
        /// Forward passes still to fail with a device error.
        failures: usize,
        /// Steps that had their tokens picked by the executor (`forward_pick`).
        picked_steps: usize,
    }

    /// Every sequence's next token is 3. It has `slots` sequence slots, and says it has
    /// `claimed` (more, to test an executor that is wrong about it).
    struct Fake {
        state: Arc<Mutex<FakeState>>,
        slots: usize,
        claimed: usize,
        next_id: u64,
        lens: HashMap<SeqId, usize>,
        /// Says it picks tokens on its device.
        picks: bool,
    }

    const VOCAB: usize = 8;

    fn fake(slots: usize, claimed: usize, failures: usize) -> (Fake, Arc<Mutex<FakeState>>) {
        let state = Arc::new(Mutex::new(FakeState { failures, ..FakeState::default() }));
        (Fake { state: state.clone(), slots, claimed, next_id: 0, lens: HashMap::new(), picks: false }, state)
    }

    impl Executor for Fake {
        fn vocab(&self) -> usize {
            VOCAB
        }
        fn max_context(&self) -> usize {
            1024
        }
        fn max_sequences(&self) -> usize {
            self.claimed
        }
        fn add_sequence(&mut self) -> Result<SeqId, EngineError> {
            let mut st = self.state.lock().unwrap();
            if st.live.len() >= self.slots {
                st.refused += 1;
                return Err(EngineError::NoSequenceSlot { limit: self.slots });
            }
            let id = SeqId(self.next_id);
            self.next_id += 1;
            st.live.insert(id);
            st.most_live = st.most_live.max(st.live.len());
            self.lens.insert(id, 0);
            Ok(id)
        }
        fn remove_sequence(&mut self, seq: SeqId) {
            self.state.lock().unwrap().live.remove(&seq);
            self.lens.remove(&seq);
        }
        fn forward(&mut self, batch: &[SeqChunk]) -> Result<Logits, EngineError> {
            {
                let mut st = self.state.lock().unwrap();
                if st.failures > 0 {
                    st.failures -= 1;
                    return Err(EngineError::Device("the GPU fell off the bus".into()));
                }
            }
            let mut out = Logits { vocab: VOCAB, data: Vec::new(), rows: Vec::new() };
            for (item, chunk) in batch.iter().enumerate() {
                let len = self.lens.get_mut(&chunk.seq).ok_or(EngineError::UnknownSequence(chunk.seq.0))?;
                *len += chunk.tokens.len();
                if chunk.logits != LogitsRequest::None {
                    let mut row = [f32::NEG_INFINITY; VOCAB];
                    row[3] = 0.0;
                    out.data.extend_from_slice(&row);
                    out.rows.push(LogitsRow { item, position: *len - 1 });
                }
            }
            Ok(out)
        }
        fn cache_bytes(&self) -> usize {
            0
        }
        fn picks_on_device(&self) -> bool {
            self.picks
        }
        fn forward_pick(
            &mut self,
            batch: &[SeqChunk],
            picks: &[gptoss_engine::sampler::PickSpec],
        ) -> Result<Vec<Sampled>, EngineError> {
            self.state.lock().unwrap().picked_steps += 1;
            let logits = self.forward(batch)?;
            assert_eq!(logits.rows.len(), picks.len(), "one pick per row of logits");
            Ok(picks.iter().enumerate().map(|(i, p)| gptoss_engine::sampler::pick_on_host(logits.row(i), p)).collect())
        }
    }

    #[test]
    fn a_device_that_picks_gets_plain_steps_and_the_host_keeps_the_rest() {
        let (mut exec, state) = fake(16, 16, 0);
        exec.picks = true;
        let (handle, thread) = engine(exec, 16);
        let (tokens, reason) = wait(handle.submit(JobSpec::new(vec![1, 2, 3], 4)).unwrap());
        assert_eq!((tokens, reason), (vec![3; 4], Some(FinishReason::Length)));
        let picked = state.lock().unwrap().picked_steps;
        assert_eq!(picked, 4, "the prompt's last chunk and three decodes");
        // A penalty needs the logits on the host: no picks on the device for that request.
        let mut spec = JobSpec::new(vec![1, 2, 3], 4);
        spec.presence_penalty = 0.5;
        let (tokens, _) = wait(handle.submit(spec).unwrap());
        assert_eq!(tokens, vec![3; 4]);
        assert_eq!(state.lock().unwrap().picked_steps, picked);
        drop(handle);
        thread.join().unwrap();
    }

    fn engine(exec: Fake, max_batch: usize) -> (EngineHandle, std::thread::JoinHandle<()>) {
        let cfg = EngineConfig { max_batch, max_queue: 64, step_tokens: 64 };
        start(exec, cfg, Arc::new(Metrics::default())).unwrap()
    }

    /// The tokens a job got, and how it finished.
    fn wait(mut rx: UnboundedReceiver<Event>) -> (Vec<u32>, Option<FinishReason>) {
        let mut tokens = Vec::new();
        while let Some(e) = rx.blocking_recv() {
            match e {
                Event::Token(s) => tokens.push(s.token),
                Event::Finished(f) => return (tokens, Some(f.reason)),
                Event::PromptLogprobs(_) => {}
            }
        }
        (tokens, None)
    }

    #[test]
    fn a_device_error_fails_its_batch_and_the_server_goes_on() {
        let (exec, state) = fake(16, 16, 1);
        let (handle, thread) = engine(exec, 16);
        let (tokens, reason) = wait(handle.submit(JobSpec::new(vec![1, 2, 3], 4)).unwrap());
        assert!(tokens.is_empty());
        match reason {
            Some(FinishReason::Error(m)) => assert!(m.contains("the GPU fell off the bus"), "{m}"),
            other => panic!("expected an error, got {other:?}"),
        }
        // Its sequence was freed, and the next request runs as if nothing happened.
        let (tokens, reason) = wait(handle.submit(JobSpec::new(vec![1, 2, 3], 4)).unwrap());
        assert_eq!((tokens, reason), (vec![3; 4], Some(FinishReason::Length)));
        drop(handle);
        thread.join().unwrap();
        assert!(state.lock().unwrap().live.is_empty());
    }

    #[test]
    fn never_runs_more_sequences_than_the_executor_has_slots() {
        let (exec, state) = fake(2, 2, 0);
        let (handle, thread) = engine(exec, 8);
        let jobs: Vec<_> = (0..5).map(|_| handle.submit(JobSpec::new(vec![1, 2], 3)).unwrap()).collect();
        for rx in jobs {
            assert_eq!(wait(rx), (vec![3; 3], Some(FinishReason::Length)));
        }
        drop(handle);
        thread.join().unwrap();
        // Held to the executor's slots by the batch limit, not by refusals.
        let st = state.lock().unwrap();
        assert_eq!((st.most_live, st.refused), (2, 0));
    }

    #[test]
    fn a_job_without_a_slot_waits_for_one_or_fails_when_none_can_free() {
        // The executor claims more slots than it has: jobs past its one slot wait their turn.
        let (exec, state) = fake(1, usize::MAX, 0);
        let (handle, thread) = engine(exec, 8);
        let jobs: Vec<_> = (0..3).map(|_| handle.submit(JobSpec::new(vec![1, 2], 3)).unwrap()).collect();
        for rx in jobs {
            assert_eq!(wait(rx), (vec![3; 3], Some(FinishReason::Length)));
        }
        drop(handle);
        thread.join().unwrap();
        assert_eq!(state.lock().unwrap().most_live, 1);

        // No slot at all: nothing running will ever free one, so the job fails at once.
        let (exec, _) = fake(0, usize::MAX, 0);
        let (handle, thread) = engine(exec, 8);
        match wait(handle.submit(JobSpec::new(vec![1, 2], 3)).unwrap()) {
            (tokens, Some(FinishReason::Error(m))) => {
                assert!(tokens.is_empty());
                assert!(m.contains("sequence slots"), "{m}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        drop(handle);
        thread.join().unwrap();
    }
}

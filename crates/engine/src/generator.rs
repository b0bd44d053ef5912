//! Token sources: what chat, run and the server generate from. [`ModelSource`] runs the
//! model on a [`Runner`], whose KV cache is reused across calls when a new prompt extends what
//! is already cached; [`ScriptedSource`] replays fixed completions, so protocol handling can
//! be tested with exactly the model output a case needs.

use std::collections::VecDeque;
use std::time::Instant;

use crate::error::EngineError;
use crate::kv_cache::SeqId;
use crate::model::{LogitsRequest, SeqChunk};
use crate::runner::{Runner, Snapshot};
use crate::sampler::{Sampled, Sampler};

/// Prompt tokens per forward call.
pub const PREFILL_CHUNK: usize = 512;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Tokens to generate at most (stop token included).
    pub max_tokens: usize,
    /// Generation ends after emitting one of these.
    pub stop_tokens: Vec<u32>,
    /// Alternatives reported with each token.
    pub top_logprobs: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was generated (it was passed to the callback).
    Stop(u32),
    /// `max_tokens` or the context limit was reached.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already cached.
    pub reused_tokens: usize,
    pub generated: usize,
    pub prompt_secs: f64,
    pub gen_secs: f64,
    pub stop: StopReason,
}

pub trait TokenSource {
    /// Generates after `prompt`, handing each token to `on_token` (which returns false to
    /// stop), until a stop token, `max_tokens` or the context limit.
    fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(&Sampled) -> bool,
    ) -> Result<Generation, EngineError>;
}

/// Hands a token to the callback; the reason generation ends there, if it does.
fn emit(s: &Sampled, opts: &GenerateOptions, on_token: &mut dyn FnMut(&Sampled) -> bool) -> Option<StopReason> {
    if !on_token(s) {
        return Some(StopReason::Cancelled);
    }
    opts.stop_tokens.contains(&s.token).then_some(StopReason::Stop(s.token))
}

/// One sequence of a [`Runner`], and a sampler. The runner is borrowed, not owned, so a
/// command can keep it (and its device memory) across sources; the sequence is returned to
/// the runner when the source is dropped.
pub struct ModelSource<'r> {
    runner: &'r mut dyn Runner,
    seq: SeqId,
    /// Tokens whose keys and values are in the cache, in order.
    cached: Vec<u32>,
    /// Logits after the last cached token.
    last_logits: Option<Vec<f32>>,
    /// The cache as it was at the end of the last prompt, with that position's logits: a
    /// chat's next prompt repeats the last one but not what was generated after it (harmony
    /// drops the reasoning), so this is where it can resume.
    prompt_end: Option<(Snapshot, Vec<f32>)>,
    sampler: Sampler,
}

impl<'r> ModelSource<'r> {
    /// Takes one of the runner's sequence slots; an error when it has none free.
    pub fn new(runner: &'r mut dyn Runner, sampler: Sampler) -> Result<Self, EngineError> {
        let seq = runner.add_sequence()?;
        Ok(ModelSource { runner, seq, cached: Vec::new(), last_logits: None, prompt_end: None, sampler })
    }

    /// Forgets the cache.
    pub fn reset(&mut self) -> Result<(), EngineError> {
        self.cached.clear();
        self.last_logits = None;
        self.prompt_end = None;
        // Removed first: a runner with one slot has room for the new sequence only then.
        self.runner.remove_sequence(self.seq);
        self.seq = self.runner.add_sequence()?;
        Ok(())
    }

    fn feed(&mut self, tokens: &[u32]) -> Result<(), EngineError> {
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            let batch = [SeqChunk { seq: self.seq, tokens: chunk, logits: LogitsRequest::Last }];
            let logits = match self.runner.forward(&batch) {
                Ok(logits) => logits,
                Err(e) => {
                    // A device fault may have left any part of the sequence's cache written or
                    // not: nothing of it is trusted again (generate starts over).
                    if matches!(e, EngineError::Device(_)) {
                        self.cached.clear();
                        self.last_logits = None;
                        self.prompt_end = None;
                    }
                    return Err(e);
                }
            };
            self.cached.extend_from_slice(chunk);
            match (&mut self.last_logits, logits.last_for(0)) {
                (Some(last), Some(row)) => {
                    last.clear();
                    last.extend_from_slice(row);
                }
                (last, row) => *last = row.map(<[f32]>::to_vec),
            }
        }
        Ok(())
    }

    /// Feeds one token and has the runner pick the next beside its logits (a GPU), which
    /// then never cross to the host: the logits after the token stay unknown here.
    fn feed_pick(&mut self, token: u32, top_n: usize) -> Result<Sampled, EngineError> {
        let batch = [SeqChunk { seq: self.seq, tokens: &[token], logits: LogitsRequest::Last }];
        let spec = self.sampler.pick_spec(top_n);
        self.last_logits = None;
        match self.runner.forward_pick(&batch, &[spec]) {
            Ok(mut picked) => {
                self.cached.push(token);
                picked.pop().ok_or(EngineError::PickCount { rows: 0, picks: 1 })
            }
            Err(e) => {
                if matches!(e, EngineError::Device(_)) {
                    self.cached.clear();
                    self.prompt_end = None;
                }
                Err(e)
            }
        }
    }
}

impl Drop for ModelSource<'_> {
    fn drop(&mut self) {
        self.runner.remove_sequence(self.seq);
    }
}

impl TokenSource for ModelSource<'_> {
    fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(&Sampled) -> bool,
    ) -> Result<Generation, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyChunk(self.seq.0));
        }
        crate::model::check_tokens(prompt, self.runner.config().vocab_size)?;
        let limit = self.runner.max_context();
        if prompt.len() > limit {
            return Err(EngineError::ContextOverflow { seq: self.seq.0, needed: prompt.len(), limit });
        }
        // After a device fault (see `feed`), or should the runner have lost the sequence, it
        // no longer holds what `cached` says.
        if self.runner.seq_len(self.seq) != Some(self.cached.len()) {
            self.reset()?;
        }
        // Reuse the cache when it holds a prefix of the prompt, or can be rewound to the end of
        // the last prompt; sliding-window rings cannot be rewound anywhere else.
        let common = self.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        if common < self.cached.len() {
            match self.prompt_end.take() {
                Some((snap, logits)) if snap.len <= common && self.runner.restore(self.seq, &snap) => {
                    self.cached.truncate(snap.len);
                    self.last_logits = Some(logits.clone());
                    self.prompt_end = Some((snap, logits));
                }
                _ => self.reset()?,
            }
        }
        // The whole prompt is cached but not the logits after it (the runner picked the last
        // token on its device): start over rather than guess.
        if self.cached.len() == prompt.len() && self.last_logits.is_none() {
            self.reset()?;
        }
        // Starting over: the runner's prefix cache may hold the prompt's first blocks (an
        // earlier conversation, a turn this source could not rewind to).
        if self.cached.is_empty() {
            let attached = self.runner.attach_prefix(self.seq, prompt);
            self.cached.extend_from_slice(&prompt[..attached]);
        }
        let reused = self.cached.len();
        let t0 = Instant::now();
        self.feed(&prompt[reused..])?;
        if reused < prompt.len() || self.prompt_end.as_ref().is_none_or(|(s, _)| s.len != prompt.len()) {
            if let (Some(snap), Some(logits)) = (self.runner.snapshot(self.seq), &self.last_logits) {
                self.prompt_end = Some((snap, logits.clone()));
            }
        }
        let prompt_secs = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let (mut generated, mut stop) = (0, StopReason::Length);
        // After the prompt, a runner that picks on its device hands back tokens, not logits.
        let on_device = self.runner.picks_on_device();
        let mut pending: Option<Sampled> = None;
        while generated < opts.max_tokens {
            let sampled = match pending.take() {
                Some(s) => s,
                None => {
                    let Some(logits) = self.last_logits.as_deref() else { break };
                    self.sampler.sample(logits, opts.top_logprobs)
                }
            };
            generated += 1;
            if let Some(reason) = emit(&sampled, opts, on_token) {
                stop = reason;
                break;
            }
            if generated == opts.max_tokens || self.cached.len() >= limit {
                break;
            }
            if on_device {
                pending = Some(self.feed_pick(sampled.token, opts.top_logprobs)?);
            } else {
                self.feed(&[sampled.token])?;
            }
        }
        Ok(Generation {
            prompt_tokens: prompt.len(),
            reused_tokens: reused,
            generated,
            prompt_secs,
            gen_secs: t1.elapsed().as_secs_f64(),
            stop,
        })
    }
}

/// Replays completions in order, one per call, whatever the prompt.
#[derive(Default)]
pub struct ScriptedSource {
    turns: VecDeque<Vec<u32>>,
    /// Every prompt it was given.
    pub prompts: Vec<Vec<u32>>,
}

impl ScriptedSource {
    pub fn new(turns: impl IntoIterator<Item = Vec<u32>>) -> Self {
        ScriptedSource { turns: turns.into_iter().collect(), prompts: Vec::new() }
    }
}

impl TokenSource for ScriptedSource {
    fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(&Sampled) -> bool,
    ) -> Result<Generation, EngineError> {
        self.prompts.push(prompt.to_vec());
        let turn = self.turns.pop_front().unwrap_or_default();
        let (mut generated, mut stop) = (0, StopReason::Length);
        for &token in turn.iter().take(opts.max_tokens) {
            generated += 1;
            if let Some(reason) = emit(&Sampled { token, logprob: 0.0, top_logprobs: Vec::new() }, opts, on_token) {
                stop = reason;
                break;
            }
        }
        Ok(Generation {
            prompt_tokens: prompt.len(),
            reused_tokens: 0,
            generated,
            prompt_secs: 0.0,
            gen_secs: 0.0,
            stop,
        })
    }
}

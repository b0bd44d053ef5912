//! What the step loop runs: the model with its KV cache on some device (a [`Runner`]), or a
//! script. Both answer a batch of chunks with next-token logits, so everything above them
//! (scheduling, sampling, parsing, the HTTP APIs) is the same code.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use gptoss_engine::model::LogitsRow;
use gptoss_engine::prefix_cache::PrefixCacheStats;
use gptoss_engine::sampler::{pick_on_host, PickSpec, Sampled};
use gptoss_engine::tokenizer::{Tokenizer, END_OF_TEXT};
use gptoss_engine::{EngineError, Logits, LogitsRequest, Runner, SeqChunk, SeqId};
use serde_json::Value;

pub trait Executor: Send {
    fn vocab(&self) -> usize;
    /// Tokens one sequence may hold.
    fn max_context(&self) -> usize;
    /// Sequences it can hold at once; the engine never runs more (a GPU's cache has a fixed
    /// number of slots).
    fn max_sequences(&self) -> usize {
        usize::MAX
    }
    /// A new empty sequence; [`EngineError::NoSequenceSlot`] when every slot is taken.
    fn add_sequence(&mut self) -> Result<SeqId, EngineError>;
    fn remove_sequence(&mut self, seq: SeqId);
    /// Appends each chunk to its sequence; logits for the positions the chunks ask for.
    fn forward(&mut self, batch: &[SeqChunk]) -> Result<Logits, EngineError>;
    /// Takes back logits returned by `forward` once read, so the next step can reuse them
    /// (a step's logits are a large buffer: one allocation and page-faulting each step).
    fn reclaim(&mut self, _logits: Logits) {}
    /// Bytes held for sequences' keys and values.
    fn cache_bytes(&self) -> usize;
    /// Gives an empty sequence the longest cached prefix of `prompt` (leaving its last token
    /// to compute); how many tokens it now holds.
    fn attach_prefix(&mut self, _seq: SeqId, _prompt: &[u32]) -> usize {
        0
    }
    fn prefix_cache_stats(&self) -> PrefixCacheStats {
        PrefixCacheStats::default()
    }
    /// Whether [`Executor::forward_pick`] picks next to the logits (a GPU), so a step need
    /// not copy them back.
    fn picks_on_device(&self) -> bool {
        false
    }
    /// [`Executor::forward`] with each logits row's next token picked as `picks[row]` says.
    fn forward_pick(&mut self, batch: &[SeqChunk], picks: &[PickSpec]) -> Result<Vec<Sampled>, EngineError> {
        let logits = self.forward(batch)?;
        if logits.rows.len() != picks.len() {
            return Err(EngineError::PickCount { rows: logits.rows.len(), picks: picks.len() });
        }
        let out = picks.iter().enumerate().map(|(i, p)| pick_on_host(logits.row(i), p)).collect();
        self.reclaim(logits);
        Ok(out)
    }
}

/// The model on whichever device its runner uses.
pub struct ModelExecutor {
    runner: Box<dyn Runner>,
}

impl ModelExecutor {
    pub fn new(runner: Box<dyn Runner>) -> Self {
        ModelExecutor { runner }
    }

    /// Where the model runs, for logs.
    pub fn device(&self) -> String {
        self.runner.device()
    }
}

impl Executor for ModelExecutor {
    fn vocab(&self) -> usize {
        self.runner.config().vocab_size
    }

    fn max_context(&self) -> usize {
        self.runner.max_context()
    }

    fn max_sequences(&self) -> usize {
        self.runner.max_sequences()
    }

    fn add_sequence(&mut self) -> Result<SeqId, EngineError> {
        self.runner.add_sequence()
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        self.runner.remove_sequence(seq);
    }

    fn forward(&mut self, batch: &[SeqChunk]) -> Result<Logits, EngineError> {
        self.runner.forward(batch)?;
        Ok(self.runner.take_logits())
    }

    fn reclaim(&mut self, logits: Logits) {
        self.runner.restore_logits(logits);
    }

    fn cache_bytes(&self) -> usize {
        self.runner.cache_bytes()
    }

    fn attach_prefix(&mut self, seq: SeqId, prompt: &[u32]) -> usize {
        self.runner.attach_prefix(seq, prompt)
    }

    fn prefix_cache_stats(&self) -> PrefixCacheStats {
        self.runner.prefix_cache_stats()
    }

    fn picks_on_device(&self) -> bool {
        self.runner.picks_on_device()
    }

    fn forward_pick(&mut self, batch: &[SeqChunk], picks: &[PickSpec]) -> Result<Vec<Sampled>, EngineError> {
        self.runner.forward_pick(batch, picks)
    }
}

/// One scripted completion: chosen for a prompt that contains `when`.
#[derive(Clone, Debug)]
pub struct Script {
    pub when: String,
    pub tokens: Vec<u32>,
}

/// Replays scripted completions as one-hot logits, so sampling, parsing and every API path
/// above run exactly as with a model. A sequence gets the script whose `when` text occurs
/// last in its prompt (the most recent turn decides); a script with an empty `when` is the
/// fallback. Past its end a script says `<|endoftext|>`.
pub struct ScriptedExecutor {
    tok: Tokenizer,
    scripts: Vec<Script>,
    max_context: usize,
    /// Pause per step, to make generation slow enough to watch (queueing, disconnects).
    delay: Duration,
    next_id: u64,
    seqs: HashMap<SeqId, ScriptedSeq>,
}

#[derive(Default)]
struct ScriptedSeq {
    fed: Vec<u32>,
    /// Chosen when the prompt is complete, with how many tokens were fed by then.
    script: Option<(usize, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read script {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("script {path}: {reason}")]
    Bad { path: String, reason: String },
}

impl ScriptedExecutor {
    pub fn new(tok: Tokenizer, scripts: Vec<Script>, max_context: usize, delay: Duration) -> Self {
        ScriptedExecutor { tok, scripts, max_context, delay, next_id: 0, seqs: HashMap::new() }
    }

    /// Reads `{"delay_ms": N, "scripts": [{"when": "text", "output": "<|channel|>final..."}]}`.
    /// Outputs are harmony text: special tokens are written by name (this is trusted test
    /// input, never user text).
    pub fn from_file(path: &Path, tok: Tokenizer, max_context: usize) -> Result<Self, ScriptError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ScriptError::Read { path: p.clone(), reason: e.to_string() })?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| ScriptError::Bad { path: p.clone(), reason: e.to_string() })?;
        let bad = |reason: &str| ScriptError::Bad { path: p.clone(), reason: reason.to_string() };
        let delay = Duration::from_millis(v.get("delay_ms").and_then(Value::as_u64).unwrap_or(0));
        let items = v.get("scripts").and_then(Value::as_array).ok_or_else(|| bad("`scripts` must be an array"))?;
        let mut scripts = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let when = item.get("when").and_then(Value::as_str).unwrap_or("").to_string();
            let output = item
                .get("output")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("scripts[{i}].output must be a string")))?;
            scripts.push(Script { when, tokens: tok.encode_with_special_tokens(output) });
        }
        Ok(Self::new(tok, scripts, max_context, delay))
    }

    fn choose(&self, prompt: &[u32]) -> Option<usize> {
        let text = self.tok.decode_lossy(prompt).unwrap_or_default();
        self.scripts
            .iter()
            .enumerate()
            .filter_map(
                |(i, s)| if s.when.is_empty() { Some((0, i)) } else { text.rfind(&s.when).map(|at| (at + 1, i)) },
            )
            .max_by_key(|&(at, i)| (at, std::cmp::Reverse(i)))
            .map(|(_, i)| i)
    }
}

impl Executor for ScriptedExecutor {
    fn vocab(&self) -> usize {
        gptoss_engine::tokenizer::VOCAB_SIZE as usize
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn add_sequence(&mut self) -> Result<SeqId, EngineError> {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.seqs.insert(id, ScriptedSeq::default());
        Ok(id)
    }

    fn remove_sequence(&mut self, seq: SeqId) {
        self.seqs.remove(&seq);
    }

    fn forward(&mut self, batch: &[SeqChunk]) -> Result<Logits, EngineError> {
        std::thread::sleep(self.delay);
        let vocab = self.vocab();
        let mut out = Logits { vocab, data: Vec::new(), rows: Vec::new() };
        for (item, chunk) in batch.iter().enumerate() {
            if !self.seqs.contains_key(&chunk.seq) {
                return Err(EngineError::UnknownSequence(chunk.seq.0));
            }
            let wants_logits = chunk.logits != LogitsRequest::None;
            let script = if wants_logits && self.seqs[&chunk.seq].script.is_none() {
                let mut prompt = self.seqs[&chunk.seq].fed.clone();
                prompt.extend_from_slice(chunk.tokens);
                self.choose(&prompt).map(|i| (i, prompt.len()))
            } else {
                None
            };
            let s = self.seqs.get_mut(&chunk.seq).ok_or(EngineError::UnknownSequence(chunk.seq.0))?;
            s.fed.extend_from_slice(chunk.tokens);
            if s.fed.len() > self.max_context {
                return Err(EngineError::ContextOverflow {
                    seq: chunk.seq.0,
                    needed: s.fed.len(),
                    limit: self.max_context,
                });
            }
            if script.is_some() {
                s.script = script;
            }
            let first = match chunk.logits {
                LogitsRequest::None => continue,
                LogitsRequest::Last => chunk.tokens.len() - 1,
                LogitsRequest::All => 0,
            };
            let start = s.fed.len() - chunk.tokens.len();
            for k in first..chunk.tokens.len() {
                let position = start + k;
                let next = match s.script {
                    Some((i, prompt_len)) if position + 1 >= prompt_len => {
                        self.scripts[i].tokens.get(position + 1 - prompt_len).copied().unwrap_or(END_OF_TEXT)
                    }
                    _ => END_OF_TEXT,
                };
                let mut row = vec![f32::NEG_INFINITY; vocab];
                row[next as usize] = 0.0;
                out.data.extend_from_slice(&row);
                out.rows.push(LogitsRow { item, position });
            }
        }
        Ok(out)
    }

    fn cache_bytes(&self) -> usize {
        self.seqs.values().map(|s| s.fed.len() * 4).sum()
    }
}

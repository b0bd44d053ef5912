//! Constrained decoding (spec harmony §4.6): `response_format` (`json_schema` with `strict`,
//! `json_object`) and the arguments of `strict` function tools are enforced while sampling,
//! with llguidance's JSON-schema grammars over the o200k_harmony vocabulary.
//!
//! The grammar covers only what must parse. A per-sequence state machine follows the harmony
//! message structure by token id: reasoning and headers are sampled freely (no mask is
//! computed for them), and a grammar is switched on only for a message body that must be
//! JSON: the final answer under a response format (its header is written for the model:
//! `<|channel|>final <|constrain|>json<|message|>`, then `<|return|>` once the document is
//! complete), or the arguments after a `to=functions.NAME` header of a strict tool (then
//! `<|call|>`).
//!
//! The token budget is part of the contract: a constrained answer must fit in `max_tokens`.
//! When the budget left falls to a reserve, the reasoning is ended and the answer begun; when
//! it falls to a smaller reserve inside the JSON, the document is closed by the shortest
//! means the grammar allows (closing strings, objects and arrays, filling what is required).
//! So a constrained answer ends with `finish_reason: stop` and parses whenever `max_tokens`
//! leaves room for the smallest valid document.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use gptoss_engine::tokenizer::{
    special_name, Tokenizer, CALL, CHANNEL, CONSTRAIN, END, END_OF_TEXT, MESSAGE, NUM_ORDINARY, RETURN, START,
    VOCAB_SIZE,
};
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Tokens left at which the JSON is closed as quickly as the grammar allows.
pub const CLOSE_RESERVE: usize = 64;
/// Tokens left at which reasoning ends and the answer starts, at most (a quarter of the
/// budget when that is less, but never under [`CLOSE_RESERVE`] plus a header).
pub const ANSWER_RESERVE_MAX: usize = 1024;

/// The o200k_harmony vocabulary as llguidance sees it: every ordinary token's bytes, and the
/// special tokens marked special, so that no text the grammar allows can be one of them.
struct HarmonyEnv {
    tok: Tokenizer,
    trie: TokTrie,
}

impl TokenizerEnv for HarmonyEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.tok.encode(&String::from_utf8_lossy(s))
    }
}

/// Token ids the state machine writes or watches.
struct Ids {
    assistant: Vec<u32>,
    analysis: Vec<u32>,
    final_: Vec<u32>,
    commentary: Vec<u32>,
    /// ` <|constrain|>json<|message|>` after the channel name.
    json_header: Vec<u32>,
    /// Single-character tokens tried first when a document must be closed, best first.
    closers: Vec<u32>,
}

/// Built once per server: the token environment and the grammar compiler.
pub struct Grammars {
    factory: ParserFactory,
    ids: Ids,
    /// How long building took, for the log.
    pub built_in: std::time::Duration,
}

impl Grammars {
    pub fn new() -> Result<Self, String> {
        let t0 = Instant::now();
        let tok = Tokenizer::o200k_harmony().map_err(|e| e.to_string())?;
        let mut words: Vec<Vec<u8>> = Vec::with_capacity(VOCAB_SIZE as usize);
        for id in 0..VOCAB_SIZE {
            if id < NUM_ORDINARY {
                words.push(tok.token_bytes(id).map_err(|e| e.to_string())?.into_owned());
            } else {
                let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                w.extend_from_slice(special_name(id).unwrap_or_else(|| format!("<|reserved_{id}|>")).as_bytes());
                words.push(w);
            }
        }
        // The grammar's end of document; mapped to the message's terminator when sampling.
        let trie = TokTrie::from(&TokRxInfo::new(VOCAB_SIZE, END_OF_TEXT), &words);
        let enc = |s: &str| tok.encode(s);
        let mut json_header = enc(" ");
        json_header.push(CONSTRAIN);
        json_header.extend(enc("json"));
        json_header.push(MESSAGE);
        let mut closers = Vec::new();
        for c in ["\"", "}", "]", ",", ":", "@", "1", "0", "a", "{", "["] {
            if let [id] = enc(c)[..] {
                closers.push(id);
            }
        }
        let ids = Ids {
            assistant: enc("assistant"),
            analysis: enc("analysis"),
            final_: enc("final"),
            commentary: enc("commentary"),
            json_header,
            closers,
        };
        let env: TokEnv = Arc::new(HarmonyEnv { tok, trie });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars { factory, ids, built_in: t0.elapsed() })
    }

    /// Compiles a JSON schema; the error names what llguidance could not handle. Documents
    /// are written compactly (`", "` and `": "` between items, no other whitespace), so a
    /// model cannot pad them without end; a schema's own `x-guidance` options win.
    pub fn compile(&self, schema: &Value) -> Result<TokenParser, String> {
        let mut schema = schema.clone();
        if let Value::Object(m) = &mut schema {
            if !m.contains_key("x-guidance") {
                m.insert(
                    "x-guidance".into(),
                    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
                );
            }
        }
        self.factory.create_parser(TopLevelGrammar::from_json_schema(schema)).map_err(|e| e.to_string())
    }
}

/// The server's grammars, built on first use (or ahead, by [`prepare`]) and shared.
static GRAMMARS: OnceLock<Result<Grammars, String>> = OnceLock::new();

pub fn grammars() -> Result<&'static Grammars, ApiError> {
    GRAMMARS
        .get_or_init(Grammars::new)
        .as_ref()
        .map_err(|e| ApiError::engine(format!("cannot build the grammar compiler: {e}")))
}

/// Builds the grammars on a thread of their own, so the first constrained request finds
/// them ready; says how long it took.
pub fn prepare() {
    let _ = std::thread::Builder::new().name("gptoss-grammars".into()).spawn(|| match grammars() {
        Ok(g) => eprintln!("constrained decoding ready ({} ms to index the vocabulary)", g.built_in.as_millis()),
        Err(e) => eprintln!("constrained decoding unavailable: {}", e.message),
    });
}

/// What a request's job carries: the compiled constraints and the prompt's forced tail.
#[derive(Clone, Debug)]
pub struct JobConstraint {
    pub spec: Arc<ConstraintSpec>,
    pub forced: Vec<u32>,
}

/// A compiled grammar; each sequence runs its own copy.
pub struct Grammar(Mutex<TokenParser>);

impl Grammar {
    fn matcher(&self) -> Matcher {
        let p = self.0.lock().unwrap_or_else(|e| e.into_inner()).deep_clone();
        Matcher::new(Ok(p))
    }
}

/// What one request's output must satisfy, compiled when the request is read.
pub struct ConstraintSpec {
    /// The final answer's JSON (`response_format`).
    pub format: Option<Grammar>,
    /// Strict tools by the recipient the model writes (`functions.x`, `ns.y`), with their
    /// arguments' grammar.
    pub tools: Vec<(String, Grammar)>,
    /// Whether function tools are offered at all (the answer may be preceded by calls).
    pub tools_offered: bool,
}

impl std::fmt::Debug for ConstraintSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintSpec")
            .field("format", &self.format.is_some())
            .field("tools", &self.tools.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .finish()
    }
}

impl ConstraintSpec {
    /// Compiles a schema for `param` (`response_format`, `tools[2].function.parameters`); a
    /// schema llguidance cannot enforce is the client's error, naming the keyword.
    pub fn compile(schema: &Value, param: &str) -> Result<Grammar, ApiError> {
        let g = grammars()?;
        g.compile(schema).map(|p| Grammar(Mutex::new(p))).map_err(|e| {
            let e = e.trim();
            ApiError::invalid(param, format!("`{param}` cannot be enforced: {e}"))
        })
    }
}

/// Where a sequence is in the harmony structure.
enum Phase {
    /// At the start of a message header, right after the role.
    HeaderStart,
    /// Inside a header the model writes itself; collected until `<|message|>`.
    Header(Vec<u32>),
    /// The channel name must be one of these token sequences (a response format's header).
    Choose { matched: Vec<u32>, options: Vec<(Vec<u32>, Channel)> },
    /// These tokens are written for the model, then `then`.
    Forced(VecDeque<u32>, Box<Phase>),
    /// A message body with nothing to enforce; it ends at `<|end|>` (or `<|call|>` when
    /// `call`: it is addressed to a tool).
    Free { call: bool },
    /// A message body that must be JSON, then `end`.
    Json { m: Box<Matcher>, end: u32, closing_repeats: (u32, u32) },
    /// Between messages: `<|start|>` comes next.
    Between,
    /// Generation is over (a stop token, or the grammar failed and nothing is enforced).
    Done,
}

#[derive(Clone, Copy, PartialEq)]
enum Channel {
    Analysis,
    Final,
    Commentary,
}

/// What may come next.
pub enum Next {
    /// Anything the model likes.
    Free,
    /// This token, and nothing else.
    Force(u32),
    /// Any but these.
    Ban(&'static [u32]),
    /// Only tokens set in the mask (and the terminator when `eos` is).
    Mask(SimpleVob, u32),
}

/// Every special token but `<|end|>`: what may not appear inside reasoning that must end in an
/// answer (a stop token, or a header token, would end it or garble it).
static NOT_IN_BODY: OnceLock<Vec<u32>> = OnceLock::new();
static NOT_IN_CALL: OnceLock<Vec<u32>> = OnceLock::new();

fn not_in_body(call: bool) -> &'static [u32] {
    if call {
        NOT_IN_CALL.get_or_init(|| (NUM_ORDINARY..VOCAB_SIZE).filter(|&t| t != END && t != CALL).collect())
    } else {
        NOT_IN_BODY.get_or_init(|| (NUM_ORDINARY..VOCAB_SIZE).filter(|&t| t != END).collect())
    }
}

/// What a header may not hold when an answer must follow: a stop token.
const NOT_IN_HEADER: &[u32] = &[RETURN, CALL, END_OF_TEXT];

/// One sequence's constraint state.
pub struct SeqConstraint {
    spec: Arc<ConstraintSpec>,
    phase: Phase,
    /// Tokens left when generation began, for the reserve.
    answer_reserve: usize,
    metrics: Arc<Metrics>,
}

impl SeqConstraint {
    /// `forced` is the prompt's tail that begins the assistant's message (a forced tool-call
    /// header); `budget` the tokens the sequence may generate.
    pub fn new(spec: Arc<ConstraintSpec>, forced: &[u32], budget: usize, metrics: Arc<Metrics>) -> Self {
        let answer_reserve = (budget / 4).clamp(CLOSE_RESERVE + 16, ANSWER_RESERVE_MAX);
        let mut c = SeqConstraint { spec, phase: Phase::HeaderStart, answer_reserve, metrics };
        for &t in forced {
            c.commit(t);
        }
        c
    }

    /// Counts the time a constrained token's sampling took (copying the logits, the mask,
    /// applying it, drawing), for `/metrics`.
    pub fn sampled_in(&self, d: std::time::Duration) {
        self.metrics.constraint_sample_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.metrics.constraint_samples.fetch_add(1, Ordering::Relaxed);
    }

    fn format(&self) -> bool {
        self.spec.format.is_some()
    }

    /// The tokens that lead from inside a free message to the final answer's body.
    fn to_answer(&self, close_header: bool) -> VecDeque<u32> {
        let ids = &grammars().expect("built before any constraint").ids;
        let mut v = VecDeque::new();
        if close_header {
            v.push_back(MESSAGE);
        }
        v.push_back(END);
        v.push_back(START);
        v.extend(ids.assistant.iter().copied());
        v.push_back(CHANNEL);
        v.extend(ids.final_.iter().copied());
        v.extend(ids.json_header.iter().copied());
        v
    }

    fn answer_body(&self) -> Phase {
        match &self.spec.format {
            Some(g) => Phase::Json { m: Box::new(g.matcher()), end: RETURN, closing_repeats: (0, 0) },
            None => Phase::Free { call: false },
        }
    }

    /// What may come next, with `remaining` tokens left to generate (this one included).
    pub fn next(&mut self, remaining: usize) -> Next {
        let ids = match grammars() {
            Ok(g) => &g.ids,
            Err(_) => return Next::Free,
        };
        // The budget: end the reasoning in time to write the answer.
        if self.format() && remaining <= self.answer_reserve {
            match &self.phase {
                Phase::Free { .. } | Phase::Between => {
                    let mut path = self.to_answer(false);
                    if matches!(self.phase, Phase::Between) {
                        path.pop_front(); // no <|end|> to write
                    }
                    self.phase = Phase::Forced(path, Box::new(self.answer_body()));
                }
                Phase::Header(_) => {
                    self.phase = Phase::Forced(self.to_answer(true), Box::new(self.answer_body()));
                }
                Phase::Choose { matched, options } if matched.is_empty() && options.len() > 1 => {
                    let keep = options.iter().filter(|(_, c)| *c == Channel::Final).cloned().collect();
                    self.phase = Phase::Choose { matched: Vec::new(), options: keep };
                }
                _ => {}
            }
        }
        let format = self.format();
        loop {
            match &mut self.phase {
                Phase::HeaderStart if format => {
                    let mut options =
                        vec![(ids.analysis.clone(), Channel::Analysis), (ids.final_.clone(), Channel::Final)];
                    if self.spec.tools_offered {
                        options.push((ids.commentary.clone(), Channel::Commentary));
                    }
                    let choose = Phase::Choose { matched: Vec::new(), options };
                    self.phase = Phase::Forced(VecDeque::from([CHANNEL]), Box::new(choose));
                }
                Phase::HeaderStart | Phase::Header(_) | Phase::Between | Phase::Free { .. } if !format => {
                    return Next::Free
                }
                Phase::Header(_) => return Next::Ban(NOT_IN_HEADER),
                Phase::HeaderStart | Phase::Done => return Next::Free,
                Phase::Forced(q, _) => match q.front() {
                    Some(&t) => return Next::Force(t),
                    None => {
                        let Phase::Forced(_, then) = std::mem::replace(&mut self.phase, Phase::Done) else {
                            unreachable!()
                        };
                        self.phase = *then;
                    }
                },
                Phase::Choose { matched, options } => {
                    let k = matched.len();
                    let mut allowed: Vec<u32> = options.iter().filter_map(|(s, _)| s.get(k).copied()).collect();
                    allowed.sort_unstable();
                    allowed.dedup();
                    return match allowed[..] {
                        [] => Next::Free, // unreachable: a complete option moves on
                        [t] => Next::Force(t),
                        _ => {
                            let mut m = SimpleVob::alloc(VOCAB_SIZE as usize);
                            for t in allowed {
                                m.allow_token(t);
                            }
                            Next::Mask(m, END_OF_TEXT)
                        }
                    };
                }
                Phase::Free { call } => return Next::Ban(not_in_body(*call)),
                Phase::Between => {
                    let mut q = VecDeque::from([START]);
                    q.extend(ids.assistant.iter().copied());
                    self.phase = Phase::Forced(q, Box::new(Phase::HeaderStart));
                }
                Phase::Json { m, end, closing_repeats } => {
                    let end = *end;
                    if m.is_stopped() {
                        return Next::Force(end);
                    }
                    let t0 = Instant::now();
                    let mask = m.compute_mask();
                    self.metrics.constraint_mask_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    self.metrics.constraint_masks.fetch_add(1, Ordering::Relaxed);
                    let Ok(mut mask) = mask else {
                        // The grammar broke down (it should not): end the message rather than
                        // loop; what was written stays as it is.
                        self.phase = Phase::Done;
                        return Next::Force(end);
                    };
                    let eos = mask.is_allowed(END_OF_TEXT);
                    if remaining <= CLOSE_RESERVE {
                        if eos {
                            return Next::Force(end);
                        }
                        // The first closer the grammar allows, but not one repeated without
                        // end (a fraction's digits); then the model's own choice.
                        for &c in &ids.closers {
                            if mask.is_allowed(c) && !(closing_repeats.0 == c && closing_repeats.1 >= 4) {
                                *closing_repeats =
                                    if closing_repeats.0 == c { (c, closing_repeats.1 + 1) } else { (c, 1) };
                                return Next::Force(c);
                            }
                        }
                    }
                    if eos {
                        mask.disallow_token(END_OF_TEXT);
                    }
                    return Next::Mask(mask, if eos { end } else { END_OF_TEXT });
                }
            }
        }
    }

    /// The token chosen for the sequence moves the state on.
    pub fn commit(&mut self, t: u32) {
        let spec = self.spec.clone();
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        self.phase = match phase {
            Phase::Done => Phase::Done,
            _ if t == RETURN || t == CALL || t == END_OF_TEXT => Phase::Done,
            Phase::Forced(q, then) if q.is_empty() => {
                self.phase = *then;
                return self.commit(t);
            }
            Phase::Forced(mut q, then) => {
                if q.front() == Some(&t) {
                    q.pop_front();
                    Phase::Forced(q, then)
                } else {
                    // The forced token was not the one sampled (the host did not ask): stop
                    // enforcing rather than enforce at the wrong place.
                    Phase::Done
                }
            }
            Phase::HeaderStart => self.header_token(Vec::new(), t, &spec),
            Phase::Header(h) => self.header_token(h, t, &spec),
            Phase::Choose { mut matched, options } => {
                matched.push(t);
                let left: Vec<(Vec<u32>, Channel)> =
                    options.into_iter().filter(|(s, _)| s.starts_with(&matched)).collect();
                match left.iter().find(|(s, _)| s.len() == matched.len()) {
                    Some((_, Channel::Analysis)) => {
                        Phase::Forced(VecDeque::from([MESSAGE]), Box::new(Phase::Free { call: false }))
                    }
                    Some((_, Channel::Final)) => {
                        let ids = &grammars().expect("built").ids;
                        Phase::Forced(ids.json_header.iter().copied().collect(), Box::new(self.answer_body()))
                    }
                    Some((_, Channel::Commentary)) => {
                        let mut h = vec![CHANNEL];
                        h.extend(matched);
                        Phase::Header(h)
                    }
                    None if left.is_empty() => Phase::Done,
                    None => Phase::Choose { matched, options: left },
                }
            }
            Phase::Free { call } => {
                if t == END {
                    Phase::Between
                } else {
                    Phase::Free { call }
                }
            }
            Phase::Between => {
                if t == START {
                    Phase::HeaderStart
                } else if t == END {
                    Phase::Between
                } else {
                    // Text with no `<|start|>`: the parser reads it as a header.
                    self.header_token(Vec::new(), t, &spec)
                }
            }
            Phase::Json { mut m, end, closing_repeats } => {
                if t == end || m.consume_token(t).is_err() {
                    Phase::Done
                } else {
                    Phase::Json { m, end, closing_repeats }
                }
            }
        };
    }

    fn header_token(&self, mut h: Vec<u32>, t: u32, spec: &ConstraintSpec) -> Phase {
        if t == END {
            return Phase::Between;
        }
        if t != MESSAGE {
            h.push(t);
            return Phase::Header(h);
        }
        let text = grammars().ok().map(|g| header_text(g, &h)).unwrap_or_default();
        let to = recipient(&text);
        if let Some(name) = &to {
            if let Some((_, g)) = spec.tools.iter().find(|(n, _)| n == name) {
                return Phase::Json { m: Box::new(g.matcher()), end: CALL, closing_repeats: (0, 0) };
            }
        }
        Phase::Free { call: to.is_some() }
    }
}

fn header_text(g: &Grammars, h: &[u32]) -> String {
    let env = g.factory.tok_env();
    let trie = env.tok_trie();
    String::from_utf8_lossy(&trie.decode_ext(h, true)).into_owned()
}

/// The recipient a header addresses: `to=RECIPIENT` anywhere in it (either header order,
/// `functions.NAME` or `namespace.NAME`), or a bare `functions.NAME` in the role's place.
fn recipient(header: &str) -> Option<String> {
    let at = header.find("to=").map(|i| i + "to=".len()).or_else(|| {
        let t = header.trim_start();
        t.starts_with("functions.").then(|| header.len() - t.len())
    })?;
    let rest = &header[at..];
    let end = rest.find(|c: char| c.is_whitespace() || c == '<').unwrap_or(rest.len());
    (end > 0).then(|| rest[..end].to_string())
}

/// Applies what [`SeqConstraint::next`] allows to `z` (a copy of the logits, with penalties
/// and biases applied). Returns the token when the choice is made (forced); otherwise leaves
/// only the allowed tokens finite, and if the model gives every allowed token no weight at
/// all, gives them equal weight.
pub fn restrict(next: Next, z: &mut [f32]) -> Option<u32> {
    match next {
        Next::Free => None,
        Next::Force(t) => Some(t),
        Next::Ban(list) => {
            for &t in list {
                if let Some(v) = z.get_mut(t as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
            None
        }
        Next::Mask(mask, eos_as) => {
            let mut max = f32::NEG_INFINITY;
            let keep_eos = eos_as != END_OF_TEXT;
            let eos_logit = z.get(eos_as as usize).copied().unwrap_or(f32::NEG_INFINITY);
            for (i, v) in z.iter_mut().enumerate() {
                if mask.is_allowed(i as u32) {
                    if v.is_finite() {
                        max = max.max(*v);
                    }
                } else {
                    *v = f32::NEG_INFINITY;
                }
            }
            if keep_eos {
                if let Some(v) = z.get_mut(eos_as as usize) {
                    *v = eos_logit;
                    if eos_logit.is_finite() {
                        max = max.max(eos_logit);
                    }
                }
            }
            if max == f32::NEG_INFINITY {
                let mut any = None;
                for (i, v) in z.iter_mut().enumerate() {
                    if mask.is_allowed(i as u32) || (keep_eos && i == eos_as as usize) {
                        *v = 0.0;
                        any.get_or_insert(i as u32);
                    }
                }
                if any.is_none() {
                    return Some(if keep_eos { eos_as } else { END_OF_TEXT });
                }
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a constraint with a model that has no preference (every logit 0, greedy: the
    /// lowest allowed id wins), as the engine does; returns the tokens written.
    fn drive(c: &mut SeqConstraint, budget: usize) -> Vec<u32> {
        let mut out = Vec::new();
        for i in 0..budget {
            let mut z = vec![0.0f32; VOCAB_SIZE as usize];
            let t = restrict(c.next(budget - i), &mut z)
                .unwrap_or_else(|| z.iter().position(|v| v.is_finite()).expect("something allowed") as u32);
            c.commit(t);
            out.push(t);
            if [RETURN, CALL, END_OF_TEXT].contains(&t) {
                break;
            }
        }
        out
    }

    fn text(tokens: &[u32]) -> String {
        let g = grammars().unwrap();
        header_text(g, tokens)
    }

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "name": {"type": "string"}, "n": {"type": "integer", "minimum": 3},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
            "required": ["name", "n", "tags"], "additionalProperties": false})
    }

    #[test]
    fn a_format_writes_the_final_header_and_closes_the_json_within_the_budget() {
        let spec = ConstraintSpec {
            format: Some(ConstraintSpec::compile(&schema(), "x").unwrap()),
            tools: Vec::new(),
            tools_offered: false,
        };
        for budget in [90, 300] {
            let mut c = SeqConstraint::new(Arc::new(spec_clone(&spec)), &[], budget, Arc::new(Metrics::default()));
            let out = drive(&mut c, budget);
            assert_eq!(out.last(), Some(&RETURN), "{}", text(&out));
            let s = text(&out[..out.len() - 1]);
            let body = s.rsplit_once("<|constrain|>json<|message|>").expect("the final header").1;
            assert!(s.contains("<|channel|>final <|constrain|>json<|message|>"), "{s}");
            let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
            assert!(v["n"].as_i64().unwrap() >= 3 && !v["tags"].as_array().unwrap().is_empty(), "{v}");
        }
    }

    fn spec_clone(s: &ConstraintSpec) -> ConstraintSpec {
        let g = |x: &Grammar| Grammar(Mutex::new(x.0.lock().unwrap().deep_clone()));
        ConstraintSpec {
            format: s.format.as_ref().map(g),
            tools: s.tools.iter().map(|(n, x)| (n.clone(), g(x))).collect(),
            tools_offered: s.tools_offered,
        }
    }

    #[test]
    fn a_strict_tool_after_a_forced_header_gets_valid_arguments_then_call() {
        let tool = ConstraintSpec::compile(&schema(), "tools[0].function.parameters").unwrap();
        let spec = ConstraintSpec { format: None, tools: vec![("functions.f".into(), tool)], tools_offered: true };
        let tok = Tokenizer::o200k_harmony().unwrap();
        let mut forced = vec![CHANNEL];
        forced.extend(tok.encode("commentary to=functions.f "));
        forced.push(CONSTRAIN);
        forced.extend(tok.encode("json"));
        forced.push(MESSAGE);
        let mut c = SeqConstraint::new(Arc::new(spec), &forced, 120, Arc::new(Metrics::default()));
        let out = drive(&mut c, 120);
        assert_eq!(out.last(), Some(&CALL));
        let body = text(&out[..out.len() - 1]);
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(v["tags"].is_array(), "{v}");
    }

    #[test]
    fn free_text_is_left_alone_without_a_format() {
        let tool = ConstraintSpec::compile(&schema(), "p").unwrap();
        let spec = ConstraintSpec { format: None, tools: vec![("functions.f".into(), tool)], tools_offered: true };
        let mut c = SeqConstraint::new(Arc::new(spec), &[], 100, Arc::new(Metrics::default()));
        assert!(matches!(c.next(100), Next::Free));
        c.commit(CHANNEL);
        assert!(matches!(c.next(99), Next::Free));
    }

    #[test]
    fn an_unsupported_keyword_is_named() {
        let Err(e) = ConstraintSpec::compile(&json!({"type": "array", "uniqueItems": true}), "response_format") else {
            panic!("compiled")
        };
        assert_eq!(e.param.as_deref(), Some("response_format"));
        assert!(e.message.contains("uniqueItems"), "{}", e.message);
    }

    #[test]
    fn recipient_in_either_header_order() {
        assert_eq!(
            recipient("<|channel|>commentary to=functions.get_weather <|constrain|>json").as_deref(),
            Some("functions.get_weather")
        );
        assert_eq!(recipient("assistant to=functions.f<|channel|>commentary").as_deref(), Some("functions.f"));
        assert_eq!(recipient(" to=functions.f<|channel|>commentary<|constrain|>json").as_deref(), Some("functions.f"));
        assert_eq!(recipient("functions.f<|channel|>commentary").as_deref(), Some("functions.f"));
        assert_eq!(recipient("<|channel|>commentary to=shell.exec <|constrain|>json").as_deref(), Some("shell.exec"));
        assert_eq!(recipient("<|channel|>analysis").as_deref(), None);
    }
}

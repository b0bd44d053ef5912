//! Generated tokens to what the APIs return: reasoning, answer text and tool calls, as items
//! in generation order, streamed as begin / delta / end pieces. Shared by the chat and
//! responses endpoints so both see the same parse (spec harmony §3.3, §4.4).
//!
//! Built on the total harmony parser: malformed output is recovered, never an error. Only
//! calls to declared functions become tool calls; anything else the model addresses (an
//! undeclared tool, a built-in we do not run) is kept as reasoning, so no text is lost and
//! nothing is surfaced that the client cannot handle.

use std::collections::HashMap;

use gptoss_engine::harmony::Role;
use gptoss_engine::harmony::{Header, ParseEvent, StreamParser};
use gptoss_engine::rng::Rng;
use gptoss_engine::tokenizer::{Tokenizer, END_OF_TEXT};
use gptoss_engine::Sampled;

/// A declared tool as the client names it: a function or a custom (free-form) tool, in a
/// namespace or not (the harmony `functions` namespace).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ToolRef {
    pub namespace: Option<String>,
    pub name: String,
    pub custom: bool,
}

impl ToolRef {
    pub fn function(name: impl Into<String>) -> Self {
        ToolRef { namespace: None, name: name.into(), custom: false }
    }

    /// The recipient a history message carries before the request's tools rename it (see
    /// `prompt::PromptSpec::render`). Names never hold control characters (they are refused),
    /// so U+001F cannot be part of one.
    pub fn client_recipient(&self) -> String {
        let kind = if self.custom { 'c' } else { 'f' };
        format!("\u{1f}{kind}\u{1f}{}\u{1f}{}", self.namespace.as_deref().unwrap_or(""), self.name)
    }

    /// The inverse of [`ToolRef::client_recipient`].
    pub fn from_client_recipient(s: &str) -> Option<Self> {
        let mut parts = s.strip_prefix('\u{1f}')?.splitn(3, '\u{1f}');
        let custom = match parts.next()? {
            "c" => true,
            "f" => false,
            _ => return None,
        };
        let ns = parts.next()?;
        let name = parts.next()?;
        Some(ToolRef { namespace: (!ns.is_empty()).then(|| ns.to_string()), name: name.to_string(), custom })
    }
}

/// Declared tools. Names the model sees are sanitized to TypeScript identifiers (spec §6:
/// Ollama's rule), namespaces too, and mapped back here. A tool outside a namespace is in
/// harmony's `functions`.
#[derive(Clone, Debug, Default)]
pub struct ToolNames {
    /// rendered recipient (`functions.x`, `ns.y`) → the client's tool
    to_client: HashMap<String, ToolRef>,
    /// the client's namespace → its rendered name
    namespaces: HashMap<String, String>,
}

impl ToolNames {
    /// Registers the client's tools; returns the rendered (namespace, name) of each, in order.
    pub fn register(&mut self, tools: &[ToolRef]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for t in tools {
            let ns = match &t.namespace {
                None => "functions".to_string(),
                Some(client) => match self.namespaces.get(client) {
                    Some(r) => r.clone(),
                    None => {
                        let base = sanitize(client);
                        let taken: Vec<&String> = self.namespaces.values().collect();
                        let mut rendered = base.clone();
                        let mut n = 2;
                        while rendered == "functions" || taken.contains(&&rendered) {
                            rendered = format!("{base}_{n}");
                            n += 1;
                        }
                        self.namespaces.insert(client.clone(), rendered.clone());
                        rendered
                    }
                },
            };
            let base = sanitize(&t.name);
            let mut rendered = base.clone();
            let mut n = 2;
            while self.to_client.contains_key(&format!("{ns}.{rendered}")) {
                rendered = format!("{base}_{n}");
                n += 1;
            }
            self.to_client.insert(format!("{ns}.{rendered}"), t.clone());
            out.push((ns, rendered));
        }
        out
    }

    /// The recipient the model uses for a client's tool (`functions.x`, `ns.y`).
    pub fn rendered(&self, client: &ToolRef) -> Option<&str> {
        self.to_client.iter().find(|(_, c)| *c == client).map(|(r, _)| r.as_str())
    }

    /// The recipient for a tool that may not be declared in this request (history from an
    /// earlier one): its rendered name if declared, else its sanitized name.
    pub fn recipient(&self, client: &ToolRef) -> String {
        match self.rendered(client) {
            Some(r) => r.to_string(),
            None => {
                let ns = match &client.namespace {
                    None => "functions".to_string(),
                    Some(n) => self.namespaces.get(n).cloned().unwrap_or_else(|| sanitize(n)),
                };
                format!("{ns}.{}", sanitize(&client.name))
            }
        }
    }

    /// The client's tool for a recipient the model wrote (`functions.x`, `ns.y`, or a bare `x`
    /// for a function).
    pub fn resolve(&self, recipient: &str) -> Option<&ToolRef> {
        self.to_client.get(recipient).or_else(|| self.to_client.get(&format!("functions.{recipient}")))
    }
}

/// A TypeScript identifier for a tool name: spaces, `-` and `.` become `_`, other
/// characters outside `[A-Za-z0-9_$]` are dropped, a leading digit gets a `_`.
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .filter_map(|c| match c {
            ' ' | '-' | '.' => Some('_'),
            c if c.is_ascii_alphanumeric() || c == '_' || c == '$' => Some(c),
            _ => None,
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Reasoning,
    Text,
    ToolCall { tool: ToolRef, call_id: String },
}

#[derive(Clone, Debug)]
pub struct Item {
    pub kind: Kind,
    /// The harmony channel it was written on.
    pub channel: Option<String>,
    pub id: String,
    pub text: String,
    /// Closed by a terminator (not cut off).
    pub complete: bool,
    /// Log-probabilities of the tokens of a text item.
    pub logprobs: Vec<Sampled>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Begin(usize),
    Delta(usize, String),
    End(usize),
}

/// Applies stop strings to streamed text: releases what cannot be the start of one, and
/// stops at the first one met. Released text never ends with the start of a stop string, so
/// a stop string always lies wholly in the held text.
#[derive(Clone, Debug, Default)]
pub struct StopFilter {
    stop: Vec<String>,
    held: String,
    pub hit: bool,
}

impl StopFilter {
    pub fn new(stop: Vec<String>) -> Self {
        StopFilter { stop, held: String::new(), hit: false }
    }

    /// More text; returns what can be shown now. After a hit, nothing more is taken.
    pub fn push(&mut self, text: &str) -> String {
        if self.hit {
            return String::new();
        }
        if self.stop.is_empty() {
            return text.to_string();
        }
        self.held.push_str(text);
        if let Some(at) = self.stop.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.hit = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        let mut hold = 0;
        for s in &self.stop {
            for k in (1..s.len().min(self.held.len() + 1)).rev() {
                if s.is_char_boundary(k) && self.held.ends_with(&s[..k]) {
                    hold = hold.max(k);
                    break;
                }
            }
        }
        self.held.drain(..self.held.len() - hold).collect()
    }

    /// Bytes of text received but not yet released.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// The text held back, at the end of the stream.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

pub struct Output<'t> {
    tok: &'t Tokenizer,
    parser: StreamParser<'t>,
    events: Vec<ParseEvent>,
    tools: ToolNames,
    pub items: Vec<Item>,
    current: Option<usize>,
    stop: StopFilter,
    /// A stop string was met; nothing more is taken.
    pub stopped: bool,
    pub reasoning_tokens: usize,
    rng: Rng,
    /// Ordinary tokens read as a header; if the header turns out to be text (no `<|message|>`
    /// came), the text item's logprobs start with them.
    pending: Vec<Sampled>,
    /// A header was taken as text during the current token.
    salvaged: bool,
}

pub fn random_id(rng: &mut Rng, prefix: &str, hex_chars: usize) -> String {
    let mut s = String::from(prefix);
    while s.len() < prefix.len() + hex_chars {
        s.push_str(&format!("{:016x}", rng.next_u64()));
    }
    s.truncate(prefix.len() + hex_chars);
    s
}

impl<'t> Output<'t> {
    /// Parses a completion of a prompt that ends with `<|start|>assistant`.
    pub fn new(tok: &'t Tokenizer, tools: ToolNames, stop: Vec<String>) -> Self {
        Output {
            tok,
            parser: StreamParser::new(tok, Some(Role::Assistant)),
            events: Vec::new(),
            tools,
            items: Vec::new(),
            current: None,
            stop: StopFilter::new(stop),
            stopped: false,
            reasoning_tokens: 0,
            rng: Rng::new(Rng::entropy_seed()),
            pending: Vec::new(),
            salvaged: false,
        }
    }

    pub fn push(&mut self, s: &Sampled, out: &mut Vec<Piece>) {
        if self.stopped || s.token == END_OF_TEXT {
            return;
        }
        let was_reasoning = self.current_kind() == Some(&Kind::Reasoning);
        if self.current.is_none() && !Tokenizer::is_special(s.token) {
            self.pending.push(s.clone());
        }
        self.salvaged = false;
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.parser.push(s.token, &mut events);
        for e in &events {
            self.apply(e, out);
        }
        self.events = events;
        if was_reasoning || self.current_kind() == Some(&Kind::Reasoning) {
            self.reasoning_tokens += 1;
        }
        if let Some(i) = self.current {
            if self.items[i].kind == Kind::Text && !Tokenizer::is_special(s.token) && !self.salvaged {
                self.items[i].logprobs.push(s.clone());
            }
            self.pending.clear();
        }
    }

    /// The end of generation: closes whatever message is open.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        if self.stopped {
            return;
        }
        let mut events = Vec::new();
        self.parser.finish(&mut events);
        for e in &events {
            self.apply(e, out);
        }
        if let Some(i) = self.current.take() {
            self.flush_held(i, out);
            out.push(Piece::End(i));
        }
    }

    pub fn current_kind(&self) -> Option<&Kind> {
        self.current.map(|i| &self.items[i].kind)
    }

    fn classify(&mut self, h: &Header) -> Kind {
        if h.author.role != Role::Assistant {
            return Kind::Reasoning;
        }
        if let Some(r) = h.recipient.as_deref() {
            return match self.tools.resolve(r) {
                Some(tool) => Kind::ToolCall { tool: tool.clone(), call_id: random_id(&mut self.rng, "call_", 24) },
                None => Kind::Reasoning,
            };
        }
        match h.channel.as_deref() {
            None | Some("final") | Some("commentary") => Kind::Text,
            Some(_) => Kind::Reasoning,
        }
    }

    fn apply(&mut self, e: &ParseEvent, out: &mut Vec<Piece>) {
        match e {
            ParseEvent::Start(h) => {
                if let Some(i) = self.current.take() {
                    self.flush_held(i, out);
                    out.push(Piece::End(i));
                }
                let kind = self.classify(h);
                let prefix = match kind {
                    Kind::Reasoning => "rs_",
                    Kind::Text => "msg_",
                    Kind::ToolCall { .. } => "fc_",
                };
                let id = random_id(&mut self.rng, prefix, 32);
                let channel = h.channel.clone();
                self.items.push(Item { kind, channel, id, text: String::new(), complete: false, logprobs: Vec::new() });
                let i = self.items.len() - 1;
                self.current = Some(i);
                out.push(Piece::Begin(i));
            }
            ParseEvent::Text(t) => {
                let Some(i) = self.current else { return };
                if self.items[i].text.is_empty() && !self.pending.is_empty() {
                    self.take_pending(i, t.len());
                }
                // Stop strings apply to the answer only (spec harmony §3.5), not to preambles.
                let answer = self.items[i].kind == Kind::Text && self.items[i].channel.as_deref() != Some("commentary");
                if answer {
                    let released = self.stop.push(t);
                    if !released.is_empty() {
                        self.items[i].text.push_str(&released);
                        out.push(Piece::Delta(i, released));
                    }
                    if self.stop.hit {
                        self.items[i].complete = true;
                        self.current = None;
                        out.push(Piece::End(i));
                        self.stopped = true;
                    }
                } else {
                    self.items[i].text.push_str(t);
                    out.push(Piece::Delta(i, t.clone()));
                }
            }
            ParseEvent::End { terminator, .. } => {
                if let Some(i) = self.current.take() {
                    self.flush_held(i, out);
                    self.items[i].complete = terminator.is_some();
                    out.push(Piece::End(i));
                }
            }
            ParseEvent::Problem(_) => {}
        }
    }

    /// The first text of an item came from tokens read as a header (the model wrote no
    /// header, or no `<|message|>`): those tokens are the text's, as many from the end as
    /// the text holds (the salvaged text joins the header's words with one space).
    fn take_pending(&mut self, i: usize, text_len: usize) {
        let pending = std::mem::take(&mut self.pending);
        self.salvaged = true;
        if self.items[i].kind != Kind::Text {
            return;
        }
        let mut bytes = 0;
        let mut first = pending.len();
        for (k, s) in pending.iter().enumerate().rev() {
            bytes += self.tok.token_bytes(s.token).map_or(0, |b| b.len());
            if bytes > text_len + 1 {
                break;
            }
            first = k;
        }
        self.items[i].logprobs.extend_from_slice(&pending[first..]);
    }

    fn flush_held(&mut self, i: usize, out: &mut Vec<Piece>) {
        let piece = self.stop.flush();
        if !piece.is_empty() {
            self.items[i].text.push_str(&piece);
            out.push(Piece::Delta(i, piece));
        }
    }

    /// The token's text for logprobs (lossy for a partial UTF-8 character) and its bytes.
    pub fn token_text(&self, token: u32) -> (String, Vec<u8>) {
        let bytes = self.tok.token_bytes(token).map(|b| b.into_owned()).unwrap_or_default();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    pub fn has_tool_calls(&self) -> bool {
        self.items.iter().any(|it| matches!(it.kind, Kind::ToolCall { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> Tokenizer {
        Tokenizer::o200k_harmony().unwrap()
    }

    fn run(out: &mut Output, tok: &Tokenizer, text: &str) -> Vec<Piece> {
        let mut pieces = Vec::new();
        for t in tok.encode_with_special_tokens(text) {
            out.push(&Sampled { token: t, logprob: 0.0, top_logprobs: vec![] }, &mut pieces);
        }
        out.finish(&mut pieces);
        pieces
    }

    #[test]
    fn reasoning_then_call_to_a_declared_tool() {
        let tok = tok();
        let mut names = ToolNames::default();
        let r = names.register(&[ToolRef::function("get-weather")]);
        assert_eq!(r, vec![("functions".to_string(), "get_weather".to_string())]);
        let mut out = Output::new(&tok, names, vec![]);
        run(
            &mut out,
            &tok,
            "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>",
        );
        assert_eq!(out.items.len(), 2);
        assert_eq!(out.items[0].kind, Kind::Reasoning);
        assert_eq!(out.items[0].text, "Need weather.");
        assert!(matches!(&out.items[1].kind, Kind::ToolCall { tool, .. } if tool.name == "get-weather"));
        assert_eq!(out.items[1].text, "{\"city\":\"Paris\"}");
        assert!(out.items[1].complete);
    }

    #[test]
    fn undeclared_recipients_stay_reasoning() {
        let tok = tok();
        let mut out = Output::new(&tok, ToolNames::default(), vec![]);
        run(&mut out, &tok, "<|channel|>analysis to=browser.search<|message|>{\"q\":1}<|call|>");
        assert_eq!(out.items[0].kind, Kind::Reasoning);
        assert!(!out.has_tool_calls());
    }

    #[test]
    fn stop_strings_cut_the_answer_even_across_tokens() {
        let tok = tok();
        for stop in ["STOP", "P here", "Hello"] {
            let mut out = Output::new(&tok, ToolNames::default(), vec![stop.to_string()]);
            let pieces = run(&mut out, &tok, "<|channel|>final<|message|>Hello. STOP here please<|return|>");
            let expected = &"Hello. STOP here please"[.."Hello. STOP here please".find(stop).unwrap()];
            assert_eq!(out.items[0].text, expected, "stop {stop:?}");
            let streamed: String = pieces
                .iter()
                .filter_map(|p| if let Piece::Delta(_, t) = p { Some(t.as_str()) } else { None })
                .collect();
            assert_eq!(streamed, expected);
            assert!(out.stopped);
        }
        // A partial match at the end is released when the message ends.
        let mut out = Output::new(&tok, ToolNames::default(), vec!["STOPPER".to_string()]);
        run(&mut out, &tok, "<|channel|>final<|message|>Hello STOP<|return|>");
        assert_eq!(out.items[0].text, "Hello STOP");
        assert!(!out.stopped);
    }

    #[test]
    fn text_without_a_header_keeps_its_logprobs() {
        let tok = tok();
        let lp_text =
            |out: &Output| -> String { out.items[0].logprobs.iter().map(|s| out.token_text(s.token).0).collect() };
        let mut out = Output::new(&tok, ToolNames::default(), vec![]);
        run(&mut out, &tok, "Plain text with no header<|end|>");
        assert_eq!(out.items[0].text, "Plain text with no header");
        assert_eq!(lp_text(&out), "Plain text with no header");
        let mut out = Output::new(&tok, ToolNames::default(), vec![]);
        run(&mut out, &tok, "<|channel|>final Salvaged answer, then more<|return|>");
        assert_eq!(out.items[0].text, "Salvaged answer, then more");
        assert_eq!(lp_text(&out).trim_start(), "Salvaged answer, then more");
        // A well-formed answer: only its content tokens.
        let mut out = Output::new(&tok, ToolNames::default(), vec![]);
        run(&mut out, &tok, "<|channel|>final<|message|>Fine.<|return|>");
        assert_eq!(lp_text(&out), "Fine.");
    }

    #[test]
    fn sanitized_names_are_unique() {
        let mut names = ToolNames::default();
        let r = names.register(&[ToolRef::function("a.b"), ToolRef::function("a-b"), ToolRef::function("9x")]);
        let names_only: Vec<&str> = r.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names_only, vec!["a_b", "a_b_2", "_9x"]);
        assert_eq!(names.resolve("functions.a_b_2").map(|t| t.name.as_str()), Some("a-b"));
        assert_eq!(names.resolve("_9x").map(|t| t.name.as_str()), Some("9x"));
        assert_eq!(names.resolve("functions.nope"), None);
        // Namespaces are sanitized and kept apart from `functions`; a bare name is a function.
        let ns = ToolRef { namespace: Some("multi-agent".into()), name: "spawn".into(), custom: false };
        let r = names.register(&[ns.clone(), ToolRef { namespace: Some("functions".into()), ..ns.clone() }]);
        assert_eq!(r[0], ("multi_agent".to_string(), "spawn".to_string()));
        assert_eq!(r[1].0, "functions_2");
        assert_eq!(names.resolve("multi_agent.spawn"), Some(&ns));
        assert_eq!(names.resolve("spawn"), None);
        assert_eq!(ToolRef::from_client_recipient(&ns.client_recipient()), Some(ns));
    }
}

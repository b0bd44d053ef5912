//! Model output tokens to harmony messages, one token at a time (spec harmony §3).
//!
//! On well-formed output this gives what openai-harmony's `StreamableParser` gives. Unlike
//! it, this parser is total: malformed output (a missing `<|message|>`, text with no header,
//! stray terminators, a header that never ends, garbled recipients) never fails and never
//! loses text. It recovers and reports each thing it could not place as a `Problem` event.

use super::conversation::{Author, Content, Message, Role};
use crate::tokenizer::{special_name, StreamDecoder, Tokenizer, CALL, CONSTRAIN, END, MESSAGE, RETURN, START};

/// Longest header we wait for; past this the "header" is taken to be content whose
/// `<|message|>` the model forgot, so it is streamed rather than held back forever.
const MAX_HEADER_TOKENS: usize = 128;

/// A parsed message header.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub author: Author,
    pub channel: Option<String>,
    pub recipient: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ParseEvent {
    /// A message's header is complete; its content follows.
    Start(Header),
    /// More content of the current message (whole characters only).
    Text(String),
    /// The message is complete. `terminator` is the token that closed it
    /// (`<|end|>`, `<|return|>`, `<|call|>`), or None at the end of the stream.
    End { message: Message, terminator: Option<u32> },
    /// Output that broke the format, and what was made of it.
    Problem(String),
}

enum State {
    ExpectStart,
    Header(Vec<u32>),
    Content,
}

pub struct StreamParser<'t> {
    tok: &'t Tokenizer,
    state: State,
    /// The role of a message whose header does not name one (the first of a completion).
    role: Option<Role>,
    /// Header of the message being read.
    header: Option<Header>,
    content: String,
    decoder: StreamDecoder,
    messages: Vec<Message>,
    problems: Vec<String>,
}

impl<'t> StreamParser<'t> {
    /// `role`: Some(Assistant) to parse a completion of a prompt that ended with
    /// `<|start|>assistant`; None when the tokens begin with `<|start|>`.
    pub fn new(tok: &'t Tokenizer, role: Option<Role>) -> Self {
        let state = if role.is_some() { State::Header(Vec::new()) } else { State::ExpectStart };
        StreamParser {
            tok,
            state,
            role,
            header: None,
            content: String::new(),
            decoder: StreamDecoder::default(),
            messages: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Completed messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn into_messages(self) -> Vec<Message> {
        self.messages
    }

    /// Everything that did not follow the format.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Feeds one token; what it completes is appended to `events`.
    pub fn push(&mut self, token: u32, events: &mut Vec<ParseEvent>) {
        let is_stop = matches!(token, END | RETURN | CALL);
        match &mut self.state {
            State::ExpectStart => {
                if token == START {
                    self.state = State::Header(Vec::new());
                } else if is_stop {
                    self.problem(events, format!("stray {} between messages ignored", self.token_name(token)));
                } else {
                    self.problem(
                        events,
                        "a message began without <|start|>; reading it as an assistant message".into(),
                    );
                    self.role = Some(Role::Assistant);
                    self.state = State::Header(vec![token]);
                }
            }
            State::Header(tokens) => {
                if token == MESSAGE {
                    let text = String::from_utf8_lossy(&header_bytes(self.tok, tokens)).into_owned();
                    let (header, problems) = parse_header(&text, self.role.take());
                    for p in problems {
                        self.problem(events, p);
                    }
                    self.open(header, events);
                } else if is_stop || token == START {
                    let tokens = std::mem::take(tokens);
                    if tokens.is_empty() {
                        self.problem(events, format!("empty message header before {}", self.token_name(token)));
                        self.role = None;
                    } else {
                        self.salvage_header(&tokens, events);
                        self.close(is_stop.then_some(token), events);
                    }
                    self.state = if token == START { State::Header(Vec::new()) } else { State::ExpectStart };
                } else {
                    tokens.push(token);
                    if tokens.len() > MAX_HEADER_TOKENS {
                        let tokens = std::mem::take(tokens);
                        self.salvage_header(&tokens, events);
                    }
                }
            }
            State::Content => {
                if is_stop {
                    self.close(Some(token), events);
                } else if token == START {
                    self.problem(events, "a message was not terminated before the next <|start|>".into());
                    self.close(None, events);
                    self.state = State::Header(Vec::new());
                } else {
                    let piece = match self.decoder.push(self.tok, token) {
                        Ok(piece) => piece,
                        Err(e) => {
                            self.problem(events, format!("{e}; replaced by U+FFFD"));
                            "\u{fffd}".into()
                        }
                    };
                    self.text(piece, events);
                }
            }
        }
    }

    /// End of the stream: closes an open message, salvaging an unfinished header.
    pub fn finish(&mut self, events: &mut Vec<ParseEvent>) {
        match std::mem::replace(&mut self.state, State::ExpectStart) {
            State::ExpectStart => {}
            State::Header(tokens) => {
                if !tokens.is_empty() {
                    self.problem(events, "the output ended inside a message header".into());
                    self.salvage_header(&tokens, events);
                    self.close(None, events);
                }
            }
            State::Content => self.close(None, events),
        }
    }

    fn open(&mut self, header: Header, events: &mut Vec<ParseEvent>) {
        events.push(ParseEvent::Start(header.clone()));
        self.header = Some(header);
        self.content.clear();
        self.state = State::Content;
    }

    /// A header that never reached `<|message|>`: its channel is kept, and the rest of its
    /// text is taken as content (`<|channel|>final Hello<|end|>` is a final "Hello").
    fn salvage_header(&mut self, tokens: &[u32], events: &mut Vec<ParseEvent>) {
        // An unfinished character at the end stays in the decoder for the content that follows.
        let bytes = header_bytes(self.tok, tokens);
        let text = self.decoder.push_bytes(&bytes);
        self.problem(events, format!("message header without <|message|>: {:?}", clip(&text)));
        let (header, content) = salvage(&text, self.role.take());
        self.open(header, events);
        self.text(content, events);
    }

    fn text(&mut self, piece: String, events: &mut Vec<ParseEvent>) {
        if !piece.is_empty() {
            self.content.push_str(&piece);
            events.push(ParseEvent::Text(piece));
        }
    }

    fn close(&mut self, terminator: Option<u32>, events: &mut Vec<ParseEvent>) {
        let rest = self.decoder.finish();
        self.text(rest, events);
        let Some(h) = self.header.take() else { return };
        let message = Message {
            author: h.author,
            content: vec![Content::Text(std::mem::take(&mut self.content))],
            channel: h.channel,
            recipient: h.recipient,
            content_type: h.content_type,
        };
        self.messages.push(message.clone());
        events.push(ParseEvent::End { message, terminator });
        self.state = State::ExpectStart;
    }

    fn problem(&mut self, events: &mut Vec<ParseEvent>, p: String) {
        self.problems.push(p.clone());
        events.push(ParseEvent::Problem(p));
    }

    fn token_name(&self, id: u32) -> String {
        special_name(id).unwrap_or_else(|| format!("token {id}"))
    }
}

/// The bytes of header tokens; an id outside the vocabulary stands as U+FFFD.
fn header_bytes(tok: &Tokenizer, tokens: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    for &t in tokens {
        match tok.token_bytes(t) {
            Ok(b) => out.extend_from_slice(&b),
            Err(_) => out.extend_from_slice("\u{fffd}".as_bytes()),
        }
    }
    out
}

/// Removes `<|channel|>NAME` (NAME ends at whitespace or `<`) and returns NAME.
fn take_channel(text: &str) -> (Option<String>, String, Option<String>) {
    const MARKER: &str = "<|channel|>";
    let Some(i) = text.find(MARKER) else { return (None, text.to_string(), None) };
    let after = &text[i + MARKER.len()..];
    let word_end = |s: &str| s.find(|c: char| c.is_whitespace() || c == '<').unwrap_or(s.len());
    let end = word_end(after);
    if end > 0 {
        return (Some(after[..end].to_string()), format!("{}{}", &text[..i], &after[end..]), None);
    }
    // `<|channel|> final`: the name came after a space.
    let skipped = after.len() - after.trim_start().len();
    let end = skipped + word_end(&after[skipped..]);
    let rest = format!("{}{}", &text[..i], &after[end..]);
    if end > skipped {
        (Some(after[skipped..end].to_string()), rest, Some("space between <|channel|> and the channel name".into()))
    } else {
        (None, rest, Some("<|channel|> without a channel name".into()))
    }
}

/// openai-harmony's header grammar (spec harmony §3.2), made total: where the library
/// fails, the header keeps what could be read and the rest is reported.
fn parse_header(text: &str, role: Option<Role>) -> (Header, Vec<String>) {
    let mut problems = Vec::new();
    let (channel, rest, p) = take_channel(text);
    problems.extend(p);
    let mut rest = rest.trim().to_string();
    let marker = special_name(CONSTRAIN).expect("named");
    if rest.contains(&marker) {
        // `to=functions.f<|constrain|>json`: the content type is its own part.
        rest = rest.replace(&marker, &format!(" {marker}")).trim().to_string();
    }
    let mut parts: Vec<&str> = rest.split_ascii_whitespace().collect();
    let mut name = None;
    let role = match (role, parts.first().copied()) {
        (Some(r), _) => r,
        (None, None) => {
            problems.push("empty message header".into());
            Role::Assistant
        }
        (None, Some(first)) => match (Role::parse(first), first.split_once(':')) {
            (Some(r), _) => {
                name = (r == Role::Tool).then(|| first.to_string());
                r
            }
            // `user:alice`: a named author.
            (None, Some((r, n))) if Role::parse(r).is_some() => {
                parts.remove(0);
                name = Some(n.to_string());
                Role::parse(r).expect("checked")
            }
            (None, _) if first.starts_with("to=") => {
                problems.push(format!("header names no author: {:?}", clip(text)));
                Role::Assistant
            }
            // `browser.search to=assistant`, `functions.get_weather`: a tool speaks.
            (None, _) => {
                parts.remove(0);
                name = Some(first.to_string());
                Role::Tool
            }
        },
    };
    if parts.first() == Some(&role.as_str()) {
        parts.remove(0);
    }
    let (mut recipient, mut content_type) = (None, None);
    if let Some(last) = parts.pop() {
        if let Some(r) = last.strip_prefix("to=") {
            recipient = Some(r.to_string());
        } else if parts.is_empty() && !last.starts_with(&marker) {
            recipient = Some(last.to_string()); // a bare recipient
        } else {
            content_type = Some(last.to_string());
            if let Some(r) = parts.pop() {
                recipient = Some(r.strip_prefix("to=").unwrap_or(r).to_string());
            }
        }
    }
    if !parts.is_empty() {
        problems.push(format!("unexpected text in message header ignored: {:?}", parts.join(" ")));
    }
    (Header { author: Author { role, name }, channel, recipient, content_type }, problems)
}

/// A header that never closed: its channel and role, and the rest as content.
fn salvage(text: &str, role: Option<Role>) -> (Header, String) {
    let (channel, rest, _) = take_channel(text);
    let rest = rest.trim_start();
    let first = rest.split_ascii_whitespace().next().unwrap_or("");
    let (role, rest) = match role.or_else(|| Role::parse(first)) {
        Some(r) if first == r.as_str() => (r, &rest[first.len()..]),
        Some(r) => (r, rest),
        None => (Role::Assistant, rest),
    };
    let header = Header { author: Author { role, name: None }, channel, recipient: None, content_type: None };
    (header, rest.trim_start().to_string())
}

fn clip(s: &str) -> String {
    if s.chars().count() > 80 {
        s.chars().take(80).collect::<String>() + "…"
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str, role: Option<Role>) -> (Header, Vec<String>) {
        parse_header(text, role)
    }

    #[test]
    fn header_forms() {
        // spec harmony §3.2 table
        let a = Some(Role::Assistant);
        let (h, p) = header("<|channel|>analysis", a);
        assert_eq!((h.channel.as_deref(), h.recipient, h.content_type, p.len()), (Some("analysis"), None, None, 0));
        for text in [
            "<|channel|>commentary to=functions.f <|constrain|>json",
            " to=functions.f<|channel|>commentary<|constrain|>json",
        ] {
            let (h, p) = header(text, a);
            assert_eq!(h.recipient.as_deref(), Some("functions.f"), "{text}");
            assert_eq!(h.content_type.as_deref(), Some("<|constrain|>json"), "{text}");
            assert_eq!((h.channel.as_deref(), p.len()), (Some("commentary"), 0));
        }
        let (h, _) = header(" to=lookup_weather<|channel|>analysis code", a);
        assert_eq!((h.recipient.as_deref(), h.content_type.as_deref()), (Some("lookup_weather"), Some("code")));
        let (h, _) = header("browser.search to=assistant<|channel|>commentary", None);
        assert_eq!(
            (h.author.role, h.author.name.as_deref(), h.recipient.as_deref()),
            (Role::Tool, Some("browser.search"), Some("assistant"))
        );
        // The openai/harmony#144 bug: a lone <|constrain|>json is a content type.
        let (h, _) = header("<|channel|>final <|constrain|>json", a);
        assert_eq!((h.recipient, h.content_type.as_deref()), (None, Some("<|constrain|>json")));
        let (h, _) = header("assistant<|channel|>final", None);
        assert_eq!((h.author.role, h.channel.as_deref()), (Role::Assistant, Some("final")));
    }

    #[test]
    fn header_failures_recover() {
        let (h, p) = header("<|channel|>commentary to=functions.f to=functions.f", Some(Role::Assistant));
        assert_eq!(h.recipient.as_deref(), Some("functions.f"));
        assert_eq!(p.len(), 1);
        let (h, p) = header("<|channel|> final", Some(Role::Assistant));
        assert_eq!((h.channel.as_deref(), h.recipient, p.len()), (Some("final"), None, 1));
        let (h, p) = header("<|channel|>", Some(Role::Assistant));
        assert!(h.channel.is_none() && p[0].contains("without a channel name"));
        let (h, p) = header("to=functions.f<|channel|>commentary", None);
        assert_eq!((h.author.role, h.recipient.as_deref(), p.len()), (Role::Assistant, Some("functions.f"), 1));
        let (h, p) = header("", None);
        assert_eq!((h.author.role, p.len()), (Role::Assistant, 1));
    }

    #[test]
    fn authors() {
        // A tool message rendered without channel or recipient (openai/harmony
        // test_does_not_drop_if_ongoing_analysis) parses back as the tool speaking.
        let (h, p) = header("functions.lookup_weather", None);
        assert_eq!(
            (h.author.role, h.author.name.as_deref(), h.recipient, p.len()),
            (Role::Tool, Some("functions.lookup_weather"), None, 0)
        );
        let (h, _) = header("user:alice", None);
        assert_eq!((h.author.role, h.author.name.as_deref(), h.recipient), (Role::User, Some("alice"), None));
        let (h, _) = header("tool", None);
        assert_eq!((h.author.role, h.author.name.as_deref()), (Role::Tool, Some("tool")));
    }
}

//! A multi-turn harmony chat: the conversation, one turn of generation parsed as it streams,
//! and harmony's history rule: once a turn has a final answer, its chain of thought is
//! dropped from the history the model sees next (spec harmony §2.7).

use serde_json::Value;

use crate::error::EngineError;
use crate::generator::{GenerateOptions, Generation, TokenSource};
use crate::harmony::{
    Content, Conversation, DeveloperContent, HarmonyError, Message, ParseEvent, RenderOptions, Renderer, Role,
    StreamParser, SystemContent,
};
use crate::tokenizer::{Tokenizer, CALL, END_OF_TEXT, RETURN};

/// Sampling stops here: the end of an answer, a tool call, or end of text.
pub const STOP_TOKENS: [u32; 3] = [RETURN, CALL, END_OF_TEXT];

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Harmony(#[from] HarmonyError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatSession {
    pub system: SystemContent,
    /// The developer message: instructions, and whatever tools a loaded conversation had.
    pub developer: Option<DeveloperContent>,
    /// Everything after the system and developer messages.
    pub history: Vec<Message>,
    /// Keep the analysis of finished turns in the history (off: harmony's rule).
    pub keep_analysis: bool,
}

/// What one turn produced.
#[derive(Debug)]
pub struct Turn {
    /// The assistant's messages, as parsed.
    pub messages: Vec<Message>,
    pub generation: Generation,
    /// Where the model's output broke the format.
    pub problems: Vec<String>,
}

impl Turn {
    /// The text of the final answer (final-channel messages without a recipient).
    pub fn answer(&self) -> Option<String> {
        let parts: Vec<String> = self
            .messages
            .iter()
            .filter(|m| m.is_channel("final") && m.recipient.is_none())
            .map(Message::text_content)
            .collect();
        (!parts.is_empty()).then(|| parts.concat())
    }
}

impl ChatSession {
    /// `instructions`: the developer message's `# Instructions`, if any.
    pub fn new(system: SystemContent, instructions: Option<String>) -> Self {
        let developer = instructions.map(|i| DeveloperContent { instructions: Some(i), ..Default::default() });
        ChatSession { system, developer, history: Vec::new(), keep_analysis: false }
    }

    /// The whole conversation: system, developer (if it has instructions), history.
    pub fn messages(&self) -> Vec<Message> {
        let mut out = vec![Message::new(Role::System, Content::System(self.system.clone()))];
        if let Some(dev) = &self.developer {
            out.push(Message::new(Role::Developer, Content::Developer(dev.clone())));
        }
        out.extend(self.history.iter().cloned());
        out
    }

    pub fn to_json(&self) -> Value {
        Conversation::new(self.messages()).to_json()
    }

    /// A saved conversation; its system and developer messages, when present, replace ours.
    /// It must render, and the history rule applies to it from the start.
    pub fn load(&mut self, conv: Conversation, tok: &Tokenizer) -> Result<(), HarmonyError> {
        let mut loaded = self.clone();
        loaded.history.clear();
        for m in conv.messages {
            match (m.author.role, m.content.first()) {
                (Role::System, Some(Content::System(s))) => loaded.system = s.clone(),
                (Role::Developer, Some(Content::Developer(d))) => loaded.developer = Some(d.clone()),
                _ => loaded.history.push(m),
            }
        }
        if !loaded.keep_analysis {
            drop_finished_analysis(&mut loaded.history);
        }
        loaded.prompt(tok)?;
        *self = loaded;
        Ok(())
    }

    /// The prompt for the assistant's next message.
    pub fn prompt(&self, tok: &Tokenizer) -> Result<Vec<u32>, HarmonyError> {
        // The history is already pruned by `turn`, so nothing more is dropped here.
        Renderer::new(tok).render_for_completion(
            &self.messages(),
            Role::Assistant,
            RenderOptions { auto_drop_analysis: false },
        )
    }

    /// Adds the user's message and lets the assistant answer. `on_event` sees the answer as
    /// it streams and returns false to stop it; whatever was said is kept.
    pub fn turn(
        &mut self,
        user: &str,
        tok: &Tokenizer,
        source: &mut dyn TokenSource,
        max_tokens: usize,
        on_event: &mut dyn FnMut(&ParseEvent) -> bool,
    ) -> Result<Turn, ChatError> {
        self.history.push(Message::text(Role::User, user));
        let prompt = match self.prompt(tok) {
            Ok(p) => p,
            Err(e) => {
                self.history.pop(); // the turn did not happen
                return Err(e.into());
            }
        };
        let mut parser = StreamParser::new(tok, Some(Role::Assistant));
        let mut events = Vec::new();
        let opts = GenerateOptions { max_tokens, stop_tokens: STOP_TOKENS.to_vec(), top_logprobs: 0 };
        let generated = source.generate(&prompt, &opts, &mut |s| {
            if s.token == END_OF_TEXT {
                return true; // ends generation; not part of any message
            }
            events.clear();
            parser.push(s.token, &mut events);
            // Every event is shown, even after a stop request, so the history holds
            // nothing the user did not see.
            let mut go = true;
            for e in &events {
                go &= on_event(e);
            }
            go
        });
        let generation = match generated {
            Ok(g) => g,
            Err(e) => {
                self.history.pop(); // the turn did not happen
                return Err(e.into());
            }
        };
        events.clear();
        parser.finish(&mut events);
        events.iter().for_each(|e| {
            on_event(e);
        });
        let problems = parser.problems().to_vec();
        let messages = parser.into_messages();
        self.history.extend(messages.iter().cloned());
        if !self.keep_analysis {
            drop_finished_analysis(&mut self.history);
        }
        Ok(Turn { messages, generation, problems })
    }
}

/// Removes the analysis messages that come before the last final answer: those turns are
/// finished. Analysis after it (a turn still calling tools) stays.
pub fn drop_finished_analysis(history: &mut Vec<Message>) {
    let Some(last_final) = history.iter().rposition(|m| m.author.role == Role::Assistant && m.is_channel("final"))
    else {
        return;
    };
    let mut i = 0;
    history.retain(|m| {
        let keep = i > last_final || !m.is_channel("analysis");
        i += 1;
        keep
    });
}

/// Today's date in UTC as `YYYY-MM-DD`, for the system message.
pub fn today_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    date_from_unix_days((secs / 86_400) as i64)
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn date_from_unix_days(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::ScriptedSource;

    fn tok() -> &'static Tokenizer {
        static T: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
        T.get_or_init(|| Tokenizer::o200k_harmony().unwrap())
    }

    #[test]
    fn dates() {
        assert_eq!(date_from_unix_days(0), "1970-01-01");
        assert_eq!(date_from_unix_days(19_782), "2024-02-29");
        assert_eq!(date_from_unix_days(20_415), "2025-11-23");
        assert_eq!(date_from_unix_days(-1), "1969-12-31");
    }

    #[test]
    fn turns_drop_the_reasoning_of_finished_turns() {
        let t = tok();
        let script = |s: &str| t.encode_with_special_tokens(s);
        let mut source = ScriptedSource::new([
            script("<|channel|>analysis<|message|>Think one.<|end|><|start|>assistant<|channel|>final<|message|>One.<|return|>"),
            script("<|channel|>analysis<|message|>Think two.<|end|><|start|>assistant<|channel|>final<|message|>Two.<|return|>"),
        ]);
        let mut chat = ChatSession::new(SystemContent::new(), Some("Be brief.".into()));
        let mut seen = Vec::new();
        let turn = chat
            .turn("first", t, &mut source, 100, &mut |e| {
                seen.push(e.clone());
                true
            })
            .unwrap();
        assert_eq!(turn.answer().as_deref(), Some("One."));
        assert!(turn.problems.is_empty());
        assert!(matches!(seen[0], ParseEvent::Start(ref h) if h.channel.as_deref() == Some("analysis")));
        // After a finished turn only user + final remain in the history.
        let channels: Vec<_> = chat.history.iter().map(|m| (m.author.role, m.channel.clone())).collect();
        assert_eq!(channels, [(Role::User, None), (Role::Assistant, Some("final".into()))]);

        chat.turn("second", t, &mut source, 100, &mut |_| true).unwrap();
        // The second prompt carries the first answer (ended by <|end|>, not <|return|>) but
        // not its reasoning.
        let second = t.decode_lossy(&source.prompts[1]).unwrap();
        assert!(second
            .contains("<|channel|>final<|message|>One.<|end|><|start|>user<|message|>second<|end|><|start|>assistant"));
        assert!(!second.contains("Think one."));
        assert!(second.contains("<|start|>developer<|message|># Instructions\n\nBe brief.<|end|>"));
        assert_eq!(chat.history.len(), 4);
    }

    #[test]
    fn stopping_keeps_what_was_said() {
        let t = tok();
        let mut source =
            ScriptedSource::new([t.encode_with_special_tokens("<|channel|>final<|message|>a b c d e f<|return|>")]);
        let mut chat = ChatSession::new(SystemContent::new(), None);
        let mut texts = 0;
        let turn = chat
            .turn("hi", t, &mut source, 100, &mut |e| {
                texts += matches!(e, ParseEvent::Text(_)) as usize;
                texts < 2
            })
            .unwrap();
        assert_eq!(turn.generation.stop, crate::generator::StopReason::Cancelled);
        assert_eq!(turn.messages.len(), 1);
        assert!(!turn.messages[0].text_content().is_empty());
    }

    #[test]
    fn sessions_save_and_load() {
        let mut chat = ChatSession::new(SystemContent::new(), Some("x".into()));
        chat.history.push(Message::text(Role::User, "hello"));
        let json = chat.to_json();
        let mut other = ChatSession::new(SystemContent::default(), None);
        other.load(Conversation::from_json(&json).unwrap(), tok()).unwrap();
        assert_eq!(other, chat);
        // Loading applies the history rule and refuses what cannot be rendered.
        let mut finished = chat.messages();
        finished.push(Message::text(Role::Assistant, "thinking").with_channel("analysis"));
        finished.push(Message::text(Role::Assistant, "done").with_channel("final"));
        other.load(Conversation::new(finished), tok()).unwrap();
        assert_eq!(other.history.len(), 2);
        let mut nameless = Message::text(Role::Tool, "x");
        nameless.author.name = None;
        assert!(other.load(Conversation::new(vec![nameless]), tok()).is_err());
        assert_eq!(other.history.len(), 2, "a failed load changes nothing");
    }
}

//! Conversations to token ids, exactly as openai-harmony renders them (spec harmony §2).
//!
//! Every piece of text (role names, recipients, channels, contents, system and developer
//! sections) is encoded as ordinary text, fragment by fragment; structural tokens are only
//! ever inserted by id, so no user or tool text can become a special token.

use super::conversation::{Content, DeveloperContent, Message, Role, SystemContent, Tools};
use super::schema_ts::schema_to_typescript;
use super::HarmonyError;
use crate::tokenizer::{Tokenizer, CALL, CHANNEL, CONSTRAIN, END, MESSAGE, START};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// openai-harmony's `auto_drop_analysis`: when the last assistant message is on `final`,
    /// drop the `analysis` messages before the first `final` (the finished turn's reasoning).
    pub auto_drop_analysis: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions { auto_drop_analysis: true }
    }
}

pub struct Renderer<'t> {
    tok: &'t Tokenizer,
}

impl<'t> Renderer<'t> {
    pub fn new(tok: &'t Tokenizer) -> Self {
        Renderer { tok }
    }

    /// The messages one after another.
    pub fn render_conversation(&self, messages: &[Message], opts: RenderOptions) -> Result<Vec<u32>, HarmonyError> {
        let mut out = Vec::new();
        self.render_conversation_into(messages, opts, &mut out)?;
        Ok(out)
    }

    /// The conversation followed by `<|start|>{next_role}`: the prompt for the next message.
    pub fn render_for_completion(
        &self,
        messages: &[Message],
        next_role: Role,
        opts: RenderOptions,
    ) -> Result<Vec<u32>, HarmonyError> {
        let mut out = Vec::new();
        self.render_conversation_into(messages, opts, &mut out)?;
        out.push(START);
        self.text(next_role.as_str(), &mut out);
        Ok(out)
    }

    fn render_conversation_into(
        &self,
        messages: &[Message],
        opts: RenderOptions,
        out: &mut Vec<u32>,
    ) -> Result<(), HarmonyError> {
        let has_function_tools = messages.iter().flat_map(|m| &m.content).any(|c| {
            matches!(c, Content::Developer(DeveloperContent { tools: Some(t), .. })
                if t.get("functions").is_some_and(|ns| !ns.tools.is_empty()))
        });
        let last_assistant_is_final =
            messages.iter().rev().find(|m| m.author.role == Role::Assistant).is_some_and(|m| m.is_channel("final"));
        let first_final = messages.iter().position(|m| m.is_channel("final"));
        let drop_before = match first_final {
            Some(i) if opts.auto_drop_analysis && last_assistant_is_final => i,
            _ => 0,
        };
        for (i, m) in messages.iter().enumerate() {
            if i < drop_before && m.is_channel("analysis") {
                continue;
            }
            self.render_message(m, has_function_tools, out)?;
        }
        Ok(())
    }

    /// One message. `has_function_tools` adds the commentary-channel rule to the system message.
    pub fn render_message(
        &self,
        m: &Message,
        has_function_tools: bool,
        out: &mut Vec<u32>,
    ) -> Result<(), HarmonyError> {
        out.push(START);
        match (m.author.role, &m.author.name) {
            (Role::Tool, Some(name)) => self.text(name, out),
            (Role::Tool, None) => {
                return Err(HarmonyError::Render("a tool message needs the tool's name as its author".into()))
            }
            (role, name) => {
                self.text(role.as_str(), out);
                if let Some(name) = name {
                    self.text(&format!(":{name}"), out);
                }
            }
        }
        if let Some(recipient) = m.recipient.as_deref().filter(|r| *r != "all") {
            self.text(&format!(" to={recipient}"), out);
        }
        if let Some(channel) = &m.channel {
            out.push(CHANNEL);
            self.text(channel, out);
        }
        if let Some(ct) = &m.content_type {
            match ct.strip_prefix("<|constrain|>") {
                Some(rest) => {
                    self.text(" ", out);
                    out.push(CONSTRAIN);
                    self.text(rest, out);
                }
                None => self.text(&format!(" {ct}"), out),
            }
        }
        out.push(MESSAGE);
        for c in &m.content {
            match c {
                Content::Text(t) => self.text(t, out),
                Content::System(s) if m.author.role == Role::System => {
                    self.text(&system_text(s, has_function_tools), out)
                }
                Content::Developer(d) if m.author.role == Role::Developer => self.text(&developer_text(d), out),
                Content::System(_) => {
                    return Err(HarmonyError::Render(format!("system content in a {} message", m.author.role.as_str())))
                }
                Content::Developer(_) => {
                    return Err(HarmonyError::Render(format!(
                        "developer content in a {} message",
                        m.author.role.as_str()
                    )))
                }
            }
        }
        out.push(if m.author.role == Role::Assistant && m.recipient.is_some() { CALL } else { END });
        Ok(())
    }

    fn text(&self, s: &str, out: &mut Vec<u32>) {
        self.tok.encode_into(s, out);
    }
}

/// Sections joined by a blank line: identity/cutoff/date, reasoning, tools, channels.
fn system_text(s: &SystemContent, has_function_tools: bool) -> String {
    let mut sections = Vec::new();
    let top: Vec<String> = [
        s.model_identity.clone(),
        s.knowledge_cutoff.as_ref().map(|c| format!("Knowledge cutoff: {c}")),
        s.conversation_start_date.as_ref().map(|d| format!("Current date: {d}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !top.is_empty() {
        sections.push(top.join("\n"));
    }
    if let Some(effort) = s.reasoning_effort {
        sections.push(format!("Reasoning: {}", effort.as_str()));
    }
    if let Some(tools) = s.tools.as_ref().filter(|t| !t.is_empty()) {
        sections.push(tools_section(tools));
    }
    if let Some(cc) = s.channel_config.as_ref().filter(|c| !c.valid_channels.is_empty()) {
        let mut channels = format!("# Valid channels: {}.", cc.valid_channels.join(", "));
        if cc.channel_required {
            channels.push_str(" Channel must be included for every message.");
        }
        if has_function_tools {
            channels.push_str("\nCalls to these tools must go to the commentary channel: 'functions'.");
        }
        sections.push(channels);
    }
    sections.join("\n\n")
}

/// `# Instructions`, the instructions, the tools, then the response formats, joined by blank
/// lines.
fn developer_text(d: &DeveloperContent) -> String {
    let mut sections = Vec::new();
    if let Some(instructions) = &d.instructions {
        sections.push("# Instructions".to_string());
        sections.push(instructions.clone());
    }
    if let Some(tools) = d.tools.as_ref().filter(|t| !t.is_empty()) {
        sections.push(tools_section(tools));
    }
    if !d.response_formats.is_empty() {
        sections.push("# Response Formats".to_string());
        for f in &d.response_formats {
            let comment = f.description.as_ref().map(|d| format!("// {d}\n")).unwrap_or_default();
            sections.push(format!("## {}\n\n{comment}{}", f.name, f.schema));
        }
    }
    sections.join("\n\n")
}

/// `# Tools` and one `## namespace` block per namespace, in name order (spec harmony §2.4.1).
fn tools_section(tools: &Tools) -> String {
    let mut sections = vec!["# Tools".to_string()];
    for ns in tools.values() {
        let mut lines = vec![format!("## {}\n", ns.name)];
        // A namespace without tools is described in plain paragraphs; with tools, in comments.
        for line in ns.description.as_deref().unwrap_or("").lines() {
            lines.push(if ns.tools.is_empty() { line.to_string() } else { format!("// {line}") });
        }
        if !ns.tools.is_empty() {
            lines.push(format!("namespace {} {{\n", ns.name));
            for tool in &ns.tools {
                lines.extend(tool.description.lines().map(|l| format!("// {l}")));
                lines.push(match &tool.parameters {
                    Some(p) => format!("type {} = (_: {}) => any;\n", tool.name, schema_to_typescript(p, "")),
                    None => format!("type {} = () => any;\n", tool.name),
                });
            }
            lines.push(format!("}} // namespace {}", ns.name));
        }
        sections.push(lines.join("\n"));
    }
    sections.join("\n\n")
}

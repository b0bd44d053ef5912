//! Harmony conversations and their JSON form, which is openai-harmony's own serialization
//! (`Conversation.to_json()`), so prompts can be written, saved and compared with the
//! official library.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::HarmonyError;

/// Roles, highest authority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningEffort {
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    /// As rendered in the system message (`Reasoning: high`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }

    /// `low`, `medium`, `high` in any case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(ReasoningEffort::Low),
            "medium" => Some(ReasoningEffort::Medium),
            "high" => Some(ReasoningEffort::High),
            _ => None,
        }
    }

    /// The JSON form's spelling (`"High"`).
    fn json_name(self) -> &'static str {
        match self {
            ReasoningEffort::Low => "Low",
            ReasoningEffort::Medium => "Medium",
            ReasoningEffort::High => "High",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChannelConfig {
    pub valid_channels: Vec<String>,
    pub channel_required: bool,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            valid_channels: vec!["analysis".into(), "commentary".into(), "final".into()],
            channel_required: true,
        }
    }
}

/// One tool the model may call: `{namespace}.{name}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolDescription {
    pub name: String,
    pub description: String,
    /// A JSON Schema, rendered as a TypeScript-like type; None renders `() => any`.
    pub parameters: Option<Value>,
}

/// A group of tools (`functions`, `browser`, `python`).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolNamespace {
    pub name: String,
    pub description: Option<String>,
    pub tools: Vec<ToolDescription>,
}

impl ToolNamespace {
    /// The built-in browser gpt-oss was trained with (spec harmony §2.4.1), exactly as
    /// openai-harmony defines it. Calls go to `browser.search`, `.open`, `.find`.
    pub fn browser() -> Self {
        ToolNamespace {
            name: "browser".into(),
            description: Some(BROWSER_DESCRIPTION.into()),
            tools: vec![
            ToolDescription {
                name: "search".into(),
                description: "Searches for information related to `query` and displays `topn` results.".into(),
                parameters: Some(json!({"type": "object", "properties": {"query": {"type": "string"}, "topn": {"type": "number", "default": 10}, "source": {"type": "string"}}, "required": ["query"]})),
            },
            ToolDescription {
                name: "open".into(),
                description: "Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, showing `num_lines` lines.\nValid link ids are displayed with the formatting: `【{id}†.*】`.\nIf `cursor` is not provided, the most recent page is implied.\nIf `id` is a string, it is treated as a fully qualified URL associated with `source`.\nIf `loc` is not provided, the viewport will be positioned at the beginning of the document or centered on the most relevant passage, if available.\nUse this function without `id` to scroll to a new location of an opened page.".into(),
                parameters: Some(json!({"type": "object", "properties": {"id": {"type": ["number", "string"], "default": -1}, "cursor": {"type": "number", "default": -1}, "loc": {"type": "number", "default": -1}, "num_lines": {"type": "number", "default": -1}, "view_source": {"type": "boolean", "default": false}, "source": {"type": "string"}}})),
            },
            ToolDescription {
                name: "find".into(),
                description: "Finds exact matches of `pattern` in the current page, or the page given by `cursor`.".into(),
                parameters: Some(json!({"type": "object", "properties": {"pattern": {"type": "string"}, "cursor": {"type": "number", "default": -1}}, "required": ["pattern"]})),
            },
            ],
        }
    }

    /// The built-in python tool; calls go to `python` with code as content.
    pub fn python() -> Self {
        ToolNamespace { name: "python".into(), description: Some(PYTHON_DESCRIPTION.into()), tools: Vec::new() }
    }
}

const BROWSER_DESCRIPTION: &str = "Tool for browsing.\nThe `cursor` appears in brackets before each browsing display: `[{cursor}]`.\nCite information from the tool using the following format:\n`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\nDo not quote more than 10 words directly from the tool output.\nsources=web (default: web)";

const PYTHON_DESCRIPTION: &str = "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. This tool should be used for internal reasoning, but not for code that is intended to be visible to the user (e.g. when creating plots, tables, or files).\n\nWhen you send a message containing Python code to python, it will be executed in a stateful Jupyter notebook environment. python will respond with the output of the execution or time out after 120.0 seconds. The drive at '/mnt/data' can be used to save and persist user files. Internet access for this session is UNKNOWN. Depends on the cluster.";

/// Namespaces by name; they render in name order.
pub type Tools = BTreeMap<String, ToolNamespace>;

/// The system message's content. Absent fields are not rendered.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SystemContent {
    pub model_identity: Option<String>,
    pub reasoning_effort: Option<ReasoningEffort>,
    /// `YYYY-MM-DD`.
    pub conversation_start_date: Option<String>,
    pub knowledge_cutoff: Option<String>,
    pub channel_config: Option<ChannelConfig>,
    pub tools: Option<Tools>,
}

impl SystemContent {
    /// openai-harmony's `SystemContent.new()`: identity, knowledge cutoff 2024-06, medium
    /// effort, the three channels; no date.
    pub fn new() -> Self {
        SystemContent {
            model_identity: Some("You are ChatGPT, a large language model trained by OpenAI.".into()),
            reasoning_effort: Some(ReasoningEffort::Medium),
            conversation_start_date: None,
            knowledge_cutoff: Some("2024-06".into()),
            channel_config: Some(ChannelConfig::default()),
            tools: None,
        }
    }
}

/// The developer message's content: instructions, function tools and response formats.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DeveloperContent {
    pub instructions: Option<String>,
    pub tools: Option<Tools>,
    /// Structured-output schemas (`# Response Formats`, harmony's docs/format.md). Not in
    /// openai-harmony's types; in the JSON form it is `response_formats`, written only
    /// when there are some.
    pub response_formats: Vec<ResponseFormat>,
}

/// A JSON Schema the answer should follow, named as in the Responses API.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponseFormat {
    pub name: String,
    pub description: Option<String>,
    pub schema: Value,
}

impl DeveloperContent {
    /// Function tools go into the `functions` namespace.
    pub fn with_function_tools(mut self, tools: Vec<ToolDescription>) -> Self {
        let ns = ToolNamespace { name: "functions".into(), description: None, tools };
        self.tools.get_or_insert_with(Tools::new).insert("functions".into(), ns);
        self
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Content {
    Text(String),
    System(SystemContent),
    Developer(DeveloperContent),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Author {
    pub role: Role,
    /// For tool messages, the tool that speaks (`functions.get_weather`).
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub author: Author,
    pub content: Vec<Content>,
    pub channel: Option<String>,
    pub recipient: Option<String>,
    /// `<|constrain|>json`, `json`, `code`...
    pub content_type: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: Content) -> Self {
        Message {
            author: Author { role, name: None },
            content: vec![content],
            channel: None,
            recipient: None,
            content_type: None,
        }
    }

    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self::new(role, Content::Text(text.into()))
    }

    /// A message from a tool (`functions.get_weather`) back to the assistant.
    pub fn from_tool(name: impl Into<String>, text: impl Into<String>) -> Self {
        let mut m = Self::text(Role::Tool, text);
        m.author.name = Some(name.into());
        m.recipient = Some("assistant".into());
        m
    }

    pub fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = Some(channel.into());
        self
    }

    pub fn with_recipient(mut self, recipient: impl Into<String>) -> Self {
        self.recipient = Some(recipient.into());
        self
    }

    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// The text parts, concatenated.
    pub fn text_content(&self) -> String {
        self.content.iter().filter_map(|c| if let Content::Text(t) = c { Some(t.as_str()) } else { None }).collect()
    }

    pub fn is_channel(&self, channel: &str) -> bool {
        self.channel.as_deref() == Some(channel)
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

impl Conversation {
    pub fn new(messages: Vec<Message>) -> Self {
        Conversation { messages }
    }

    /// Reads openai-harmony's JSON form: `{"messages": [...]}` (a bare array of messages is
    /// accepted too). Errors name the offending field, e.g. `messages[2].role`.
    pub fn from_json(value: &Value) -> Result<Self, HarmonyError> {
        let messages = match value {
            Value::Array(items) => items,
            Value::Object(o) => match o.get("messages") {
                Some(Value::Array(items)) => items,
                _ => return Err(bad("messages", "must be an array of messages")),
            },
            _ => return Err(bad("", "a conversation is an object with a `messages` array")),
        };
        let messages = messages
            .iter()
            .enumerate()
            .map(|(i, m)| message_from_json(m, &format!("messages[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Conversation { messages })
    }

    pub fn to_json(&self) -> Value {
        json!({ "messages": self.messages.iter().map(message_to_json).collect::<Vec<_>>() })
    }
}

fn bad(path: &str, problem: &str) -> HarmonyError {
    HarmonyError::Json { path: path.to_string(), problem: problem.to_string() }
}

/// Field access on a JSON object that names the field path in errors.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: &'a str) -> Result<Self, HarmonyError> {
        v.as_object().map(|map| Obj { map, path }).ok_or_else(|| bad(path, "must be an object"))
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>, HarmonyError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(&self.field(key), "must be a string")),
        }
    }

    fn str(&self, key: &str) -> Result<String, HarmonyError> {
        self.opt_str(key)?.ok_or_else(|| bad(&self.field(key), "is missing"))
    }
}

fn message_from_json(v: &Value, path: &str) -> Result<Message, HarmonyError> {
    let o = Obj::new(v, path)?;
    let role_str = o.str("role")?;
    let role = Role::parse(&role_str).ok_or_else(|| {
        bad(&o.field("role"), &format!("unknown role `{role_str}` (system, developer, user, assistant, tool)"))
    })?;
    let content = match o.get("content") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![Content::Text(s.clone())],
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(i, p)| content_from_json(p, &format!("{}[{i}]", o.field("content"))))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad(&o.field("content"), "must be an array of content parts")),
    };
    Ok(Message {
        author: Author { role, name: o.opt_str("name")? },
        content,
        channel: o.opt_str("channel")?,
        recipient: o.opt_str("recipient")?,
        content_type: o.opt_str("content_type")?,
    })
}

fn content_from_json(v: &Value, path: &str) -> Result<Content, HarmonyError> {
    let o = Obj::new(v, path)?;
    let kind = o.str("type")?;
    match kind.as_str() {
        "text" => Ok(Content::Text(o.str("text")?)),
        "system_content" => {
            let effort = match o.opt_str("reasoning_effort")? {
                None => None,
                Some(e) => Some(
                    ReasoningEffort::parse(&e)
                        .ok_or_else(|| bad(&o.field("reasoning_effort"), "must be Low, Medium or High"))?,
                ),
            };
            let channel_config = match o.get("channel_config") {
                None => None,
                Some(c) => {
                    let cpath = o.field("channel_config");
                    let co = Obj::new(c, &cpath)?;
                    let channels = match co.get("valid_channels") {
                        None => Vec::new(),
                        Some(Value::Array(a)) => a
                            .iter()
                            .map(|c| c.as_str().map(str::to_string))
                            .collect::<Option<_>>()
                            .ok_or_else(|| bad(&co.field("valid_channels"), "must be an array of strings"))?,
                        Some(_) => return Err(bad(&co.field("valid_channels"), "must be an array of strings")),
                    };
                    let required = match co.get("channel_required") {
                        None => false,
                        Some(Value::Bool(b)) => *b,
                        Some(_) => return Err(bad(&co.field("channel_required"), "must be a boolean")),
                    };
                    Some(ChannelConfig { valid_channels: channels, channel_required: required })
                }
            };
            Ok(Content::System(SystemContent {
                model_identity: o.opt_str("model_identity")?,
                reasoning_effort: effort,
                conversation_start_date: o.opt_str("conversation_start_date")?,
                knowledge_cutoff: o.opt_str("knowledge_cutoff")?,
                channel_config,
                tools: tools_from_json(o.get("tools"), &o.field("tools"))?,
            }))
        }
        "developer_content" => Ok(Content::Developer(DeveloperContent {
            instructions: o.opt_str("instructions")?,
            tools: tools_from_json(o.get("tools"), &o.field("tools"))?,
            response_formats: response_formats_from_json(o.get("response_formats"), &o.field("response_formats"))?,
        })),
        other => Err(bad(
            &o.field("type"),
            &format!("unknown content type `{other}` (text, system_content, developer_content)"),
        )),
    }
}

fn response_formats_from_json(v: Option<&Value>, path: &str) -> Result<Vec<ResponseFormat>, HarmonyError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let items = v.as_array().ok_or_else(|| bad(path, "must be an array"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let fpath = format!("{path}[{i}]");
            let f = Obj::new(f, &fpath)?;
            Ok(ResponseFormat {
                name: f.str("name")?,
                description: f.opt_str("description")?,
                schema: f.get("schema").cloned().ok_or_else(|| bad(&f.field("schema"), "is missing"))?,
            })
        })
        .collect()
}

fn tools_from_json(v: Option<&Value>, path: &str) -> Result<Option<Tools>, HarmonyError> {
    let Some(v) = v else { return Ok(None) };
    let o = Obj::new(v, path)?;
    let mut tools = Tools::new();
    for (key, ns) in o.map {
        let ns_path = o.field(key);
        let n = Obj::new(ns, &ns_path)?;
        let list = match n.get("tools") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let tpath = format!("{}[{i}]", n.field("tools"));
                    let t = Obj::new(t, &tpath)?;
                    Ok(ToolDescription {
                        name: t.str("name")?,
                        description: t.opt_str("description")?.unwrap_or_default(),
                        parameters: t.get("parameters").cloned(),
                    })
                })
                .collect::<Result<_, HarmonyError>>()?,
            Some(_) => return Err(bad(&n.field("tools"), "must be an array of tools")),
        };
        let name = n.opt_str("name")?.unwrap_or_else(|| key.clone());
        tools.insert(key.clone(), ToolNamespace { name, description: n.opt_str("description")?, tools: list });
    }
    Ok(Some(tools))
}

/// Field order and omissions follow openai-harmony's serializer.
pub(crate) fn message_to_json(m: &Message) -> Value {
    let mut o = Map::new();
    o.insert("role".into(), m.author.role.as_str().into());
    o.insert("name".into(), m.author.name.clone().map_or(Value::Null, Value::String));
    o.insert("content".into(), m.content.iter().map(content_to_json).collect::<Vec<_>>().into());
    for (key, v) in [("channel", &m.channel), ("recipient", &m.recipient), ("content_type", &m.content_type)] {
        if let Some(v) = v {
            o.insert(key.into(), v.clone().into());
        }
    }
    Value::Object(o)
}

fn content_to_json(c: &Content) -> Value {
    let mut o = Map::new();
    let mut put = |key: &str, v: Option<Value>| {
        if let Some(v) = v {
            o.insert(key.into(), v);
        }
    };
    match c {
        Content::Text(t) => {
            put("type", Some("text".into()));
            put("text", Some(t.clone().into()));
        }
        Content::System(s) => {
            put("model_identity", s.model_identity.clone().map(Value::from));
            put("reasoning_effort", s.reasoning_effort.map(|e| e.json_name().into()));
            put("conversation_start_date", s.conversation_start_date.clone().map(Value::from));
            put("knowledge_cutoff", s.knowledge_cutoff.clone().map(Value::from));
            put(
                "channel_config",
                s.channel_config
                    .as_ref()
                    .map(|c| json!({"valid_channels": c.valid_channels, "channel_required": c.channel_required})),
            );
            put("tools", s.tools.as_ref().map(tools_to_json));
            put("type", Some("system_content".into()));
        }
        Content::Developer(d) => {
            put("instructions", d.instructions.clone().map(Value::from));
            put("tools", d.tools.as_ref().map(tools_to_json));
            if !d.response_formats.is_empty() {
                let formats = d.response_formats.iter().map(|f| {
                    let mut m = Map::new();
                    m.insert("name".into(), f.name.clone().into());
                    if let Some(desc) = &f.description {
                        m.insert("description".into(), desc.clone().into());
                    }
                    m.insert("schema".into(), f.schema.clone());
                    Value::Object(m)
                });
                put("response_formats", Some(Value::Array(formats.collect())));
            }
            put("type", Some("developer_content".into()));
        }
    }
    Value::Object(o)
}

fn tools_to_json(tools: &Tools) -> Value {
    let mut o = Map::new();
    for (key, ns) in tools {
        let mut n = Map::new();
        n.insert("name".into(), ns.name.clone().into());
        if let Some(d) = &ns.description {
            n.insert("description".into(), d.clone().into());
        }
        let list: Vec<Value> = ns
            .tools
            .iter()
            .map(|t| {
                let mut m = Map::new();
                m.insert("name".into(), t.name.clone().into());
                m.insert("description".into(), t.description.clone().into());
                if let Some(p) = &t.parameters {
                    m.insert("parameters".into(), p.clone());
                }
                Value::Object(m)
            })
            .collect();
        n.insert("tools".into(), list.into());
        o.insert(key.clone(), Value::Object(n));
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let err = |v: Value| Conversation::from_json(&v).unwrap_err().to_string();
        assert!(err(json!({"messages": [{"role": "robot", "content": []}]})).contains("messages[0].role"));
        let e = err(json!({"messages": [{"role": "user", "content": [{"type": "image"}]}]}));
        assert!(e.contains("messages[0].content[0].type") && e.contains("image"), "{e}");
        let e = err(json!({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}));
        assert!(e.contains("messages[0].content[0].text") && e.contains("string"), "{e}");
        assert!(err(json!({"msgs": []})).contains("messages"));
        let e =
            err(json!([{"role": "system", "content": [{"type": "system_content", "reasoning_effort": "extreme"}]}]));
        assert!(e.contains("messages[0].content[0].reasoning_effort"), "{e}");
    }
}

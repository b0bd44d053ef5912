//! Requests to harmony prompts (spec harmony §4.2, §5.2): the system message with date and
//! reasoning effort, a developer message with instructions, function tools and response
//! formats, then the conversation with finished turns' reasoning dropped, ready for
//! `<|start|>assistant`. All client text is encoded as ordinary text by the renderer.

use gptoss_engine::chat::{drop_finished_analysis, today_utc};
use gptoss_engine::harmony::{
    DeveloperContent, Message, ReasoningEffort, RenderOptions, Renderer, ResponseFormat, Role, SystemContent,
    ToolDescription, ToolNamespace, Tools,
};
use gptoss_engine::tokenizer::{Tokenizer, CHANNEL, CONSTRAIN, MESSAGE};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::fields::{wrong, Obj, Result};
use crate::output::{ToolNames, ToolRef};

#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(ToolRef),
}

/// A declared tool, by the client's names: a function (JSON arguments) or a custom tool
/// (free-form text input), maybe in a namespace.
#[derive(Clone, Debug)]
pub struct Tool {
    pub tool: ToolRef,
    pub description: String,
    pub parameters: Option<Value>,
    /// The description of its namespace, for the namespace's `## name` section.
    pub namespace_description: Option<String>,
    /// `strict: true` (a function, not a custom tool): the arguments are enforced to match
    /// `parameters` while sampling.
    pub strict: bool,
    /// Where `parameters` is in the request, for errors.
    pub param_path: String,
}

/// Hosted tools OpenAI runs on its side; this server runs none of them, so they are left out
/// of the prompt (the model cannot call what it is not shown).
const HOSTED_TOOLS: &[&str] = &[
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "web_search_2025_08_26",
    "file_search",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "computer_use_preview",
    "computer_use",
    "apply_patch",
    "tool_search",
];

#[derive(Clone, Debug)]
pub struct PromptSpec {
    pub effort: ReasoningEffort,
    pub instructions: Vec<String>,
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    pub response_formats: Vec<ResponseFormat>,
    /// The conversation after the system and developer messages; tool authors and
    /// recipients use the client's tool names.
    pub messages: Vec<Message>,
}

pub struct Prompt {
    /// The rendered prompt, ending `<|start|>assistant` and any forced header.
    pub tokens: Vec<u32>,
    /// The tail of `tokens` that begins the assistant's message (a forced tool-call header);
    /// the parser reads it as if generated.
    pub forced: Vec<u32>,
    pub tools: ToolNames,
}

/// `reasoning_effort` or `reasoning.effort`; `minimal` counts as low. Default medium.
pub fn parse_effort(o: &Obj) -> Result<ReasoningEffort> {
    let (path, value) = match o.str("reasoning_effort")? {
        Some(s) => ("reasoning_effort".to_string(), Some(s)),
        None => match o.obj("reasoning")? {
            Some(r) => ("reasoning.effort".to_string(), Obj::new(r, "reasoning").str("effort")?),
            None => (String::new(), None),
        },
    };
    match value {
        None => Ok(ReasoningEffort::Medium),
        Some("minimal") => Ok(ReasoningEffort::Low),
        Some(s) => ReasoningEffort::parse(s).ok_or_else(|| {
            ApiError::invalid(
                &path,
                format!("`{path}` must be one of low, medium, high (gpt-oss always reasons), got {s:?}"),
            )
        }),
    }
}

fn check_schema(v: &Value, path: &str) -> Result<()> {
    let Value::Object(m) = v else {
        return Err(wrong(path, "a JSON Schema object", v));
    };
    if let Some(t) = m.get("type") {
        let ok = t.is_string() || t.as_array().is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err(ApiError::invalid(
                format!("{path}.type"),
                format!("`{path}.type` must be a type name or a list of them"),
            ));
        }
    }
    if let Some(props) = m.get("properties") {
        let Value::Object(p) = props else {
            return Err(wrong(&format!("{path}.properties"), "an object", props));
        };
        for (k, sub) in p {
            check_schema(sub, &format!("{path}.properties.{k}"))?;
        }
    }
    if let Some(items) = m.get("items") {
        if items.is_object() {
            check_schema(items, &format!("{path}.items"))?;
        }
    }
    if let Some(req) = m.get("required") {
        if !req.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            return Err(wrong(&format!("{path}.required"), "an array of property names", req));
        }
    }
    Ok(())
}

fn check_name(name: &str, path: &str, what: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            path,
            format!("a {what} name must be 1 to 64 characters with no control characters"),
        ));
    }
    Ok(())
}

/// One function (`{name, description, parameters}`) or custom tool (`{name, description,
/// format}`) at `o`.
fn parse_tool(o: &Obj, custom: bool, namespace: Option<(&str, &str)>) -> Result<Tool> {
    let name = o.req_str("name")?;
    check_name(name, &o.path("name"), if custom { "tool" } else { "function" })?;
    let mut description = o.str("description")?.unwrap_or("").to_string();
    let parameters = if custom {
        // Free-form input: the model writes the raw text as the call's whole message.
        let mut lines = vec!["Input: free-form text (not JSON), written as the whole message.".to_string()];
        if let Some(f) = o.obj("format")? {
            let fpath = o.path("format");
            let f = Obj::new(f, &fpath);
            if f.str("type")? == Some("grammar") {
                let syntax = f.str("syntax")?.unwrap_or("lark");
                lines.push(format!("The input must follow this {syntax} grammar:"));
                lines.extend(f.str("definition")?.unwrap_or("").lines().map(str::to_string));
            }
        }
        if !description.is_empty() {
            description.push('\n');
        }
        description.push_str(&lines.join("\n"));
        Some(serde_json::json!({"type": "string"}))
    } else {
        match o.get("parameters") {
            None | Some(Value::Null) => None,
            Some(p) => {
                check_schema(p, &o.path("parameters"))?;
                Some(p.clone())
            }
        }
    };
    let tool = ToolRef { namespace: namespace.map(|(n, _)| n.to_string()), name: name.to_string(), custom };
    let strict = !custom && o.bool("strict")?.unwrap_or(false);
    Ok(Tool {
        tool,
        description,
        parameters,
        namespace_description: namespace.map(|(_, d)| d.to_string()),
        strict,
        param_path: o.path("parameters"),
    })
}

/// Chat Completions tools (`{type:"function", function:{name, ...}}`) when `nested`, the
/// Responses API's flat form otherwise: `function`, `custom` (free-form input) and
/// `namespace` (a group of functions and custom tools, harmony's own namespaces). Hosted
/// tools the server does not run (`web_search`, `file_search`, `mcp`, ... and any other typed
/// tool) are left out of the Responses prompt with a log line rather than refused, so clients
/// that always send them (Codex CLI) work.
pub fn parse_tools(o: &Obj, nested: bool) -> Result<Vec<Tool>> {
    let Some(list) = o.arr("tools")? else { return Ok(Vec::new()) };
    let mut tools: Vec<Tool> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools[{i}]");
        let Value::Object(m) = t else { return Err(wrong(&path, "an object", t)) };
        let to = Obj::new(m, &path);
        let kind = to.str("type")?.unwrap_or("function");
        if nested {
            if kind != "function" {
                return Err(ApiError::invalid(
                    format!("{path}.type"),
                    format!("tool type {kind:?} is not supported; only \"function\" tools are"),
                ));
            }
            let fpath = format!("{path}.function");
            let f = Obj::new(
                to.obj("function")?.ok_or_else(|| ApiError::invalid(&fpath, format!("`{fpath}` is required")))?,
                &fpath,
            );
            push_unique(&mut tools, parse_tool(&f, false, None)?, &f.path("name"))?;
            continue;
        }
        match kind {
            "function" | "custom" => {
                push_unique(&mut tools, parse_tool(&to, kind == "custom", None)?, &to.path("name"))?
            }
            "namespace" => {
                let ns = to.req_str("name")?;
                check_name(ns, &to.path("name"), "namespace")?;
                let description = to.str("description")?.unwrap_or("");
                let members = to.arr("tools")?.map(Vec::as_slice).unwrap_or(&[]);
                for (k, member) in members.iter().enumerate() {
                    let mpath = format!("{path}.tools[{k}]");
                    let Value::Object(mm) = member else { return Err(wrong(&mpath, "an object", member)) };
                    let mo = Obj::new(mm, &mpath);
                    match mo.str("type")?.unwrap_or("function") {
                        k @ ("function" | "custom") => push_unique(
                            &mut tools,
                            parse_tool(&mo, k == "custom", Some((ns, description)))?,
                            &mo.path("name"),
                        )?,
                        other => {
                            return Err(ApiError::invalid(
                                mo.path("type"),
                                format!("a namespace holds function and custom tools, not {other:?}"),
                            ))
                        }
                    }
                }
            }
            other if HOSTED_TOOLS.contains(&other) => skipped.push(other.to_string()),
            other => skipped.push(format!("{other:?} (unknown)")),
        }
    }
    if !skipped.is_empty() {
        eprintln!("tools this server does not run, left out of the prompt: {}", skipped.join(", "));
    }
    Ok(tools)
}

fn push_unique(tools: &mut Vec<Tool>, t: Tool, path: &str) -> Result<()> {
    if tools.iter().any(|o| o.tool.namespace == t.tool.namespace && o.tool.name == t.tool.name) {
        let what = match &t.tool.namespace {
            Some(ns) => format!("{ns}.{}", t.tool.name),
            None => t.tool.name.clone(),
        };
        let kind = if t.tool.custom || t.tool.namespace.is_some() { "tool" } else { "function" };
        return Err(ApiError::invalid(path, format!("{kind} {what:?} is declared twice")));
    }
    tools.push(t);
    Ok(())
}

/// `tool_choice`: auto, none, required, or a named function (nested or flat form).
pub fn parse_tool_choice(o: &Obj, tools: &[Tool]) -> Result<ToolChoice> {
    let choice = match o.get("tool_choice") {
        None => return Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` must be auto, none, required or a function, got {other:?}"),
                ))
            }
        },
        Some(Value::Object(m)) => {
            let c = Obj::new(m, "tool_choice");
            let custom = match c.str("type")? {
                Some("function") => false,
                Some("custom") => true,
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice.type",
                        "`tool_choice.type` must be \"function\" or \"custom\"",
                    ))
                }
            };
            let name = match c.obj("function")? {
                Some(f) => Obj::new(f, "tool_choice.function").req_str("name")?,
                None => match c.obj("custom")? {
                    Some(f) => Obj::new(f, "tool_choice.custom").req_str("name")?,
                    None => c.req_str("name")?,
                },
            };
            let namespace = c.str("namespace")?.map(str::to_string);
            ToolChoice::Named(ToolRef { namespace, name: name.to_string(), custom })
        }
        Some(v) => return Err(wrong("tool_choice", "a string or an object", v)),
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => {
            Err(ApiError::invalid("tool_choice", "`tool_choice` is \"required\" but no tools were given"))
        }
        ToolChoice::Named(n) if !tools.iter().any(|t| &t.tool == n) => Err(ApiError::invalid(
            "tool_choice",
            format!(
                "`tool_choice` names {} {:?}, which is not in `tools`",
                if n.custom { "tool" } else { "function" },
                n.name
            ),
        )),
        _ => Ok(choice),
    }
}

/// Message content: a string, or an array of text parts (joined). Other parts are refused:
/// gpt-oss reads text only.
pub fn text_content(v: Option<&Value>, path: &str) -> Result<String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (i, p) in parts.iter().enumerate() {
                let pp = format!("{path}[{i}]");
                let Value::Object(m) = p else { return Err(wrong(&pp, "a content part object", p)) };
                let po = Obj::new(m, &pp);
                match po.str("type")? {
                    Some("text" | "input_text" | "output_text" | "reasoning_text" | "summary_text") | None => {
                        out.push_str(po.req_str("text")?)
                    }
                    Some(other) => {
                        return Err(ApiError::invalid(
                            format!("{pp}.type"),
                            format!("content part type {other:?} is not supported: gpt-oss reads text only"),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(v) => Err(wrong(path, "a string or an array of content parts", v)),
    }
}

/// A tool call in history: `to=NAMESPACE.NAME` on commentary, a function's arguments as JSON
/// content, a custom tool's input as plain text. The recipient is the client's tool until
/// [`PromptSpec::render`] names it as the model sees it.
pub fn call_message(tool: &ToolRef, arguments: String) -> Message {
    let m =
        Message::text(Role::Assistant, arguments).with_channel("commentary").with_recipient(tool.client_recipient());
    if tool.custom {
        m
    } else {
        m.with_content_type("<|constrain|>json")
    }
}

/// A tool's result, as the tool speaking to the assistant.
pub fn result_message(tool: &ToolRef, output: String) -> Message {
    Message::from_tool(tool.client_recipient(), output).with_channel("commentary")
}

/// Chat Completions `messages` → (instructions, conversation). Leading system and developer
/// messages are the instructions; later ones become developer messages in place.
pub fn chat_messages(list: &[Value]) -> Result<(Vec<String>, Vec<Message>)> {
    if list.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must contain at least one message"));
    }
    let mut instructions = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    // tool_call_id → function name, from earlier assistant messages.
    let mut calls: Vec<(String, ToolRef)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        let Value::Object(map) = m else { return Err(wrong(&path, "a message object", m)) };
        let o = Obj::new(map, &path);
        let role = o.req_str("role")?;
        let content_path = o.path("content");
        match role {
            "system" | "developer" => {
                let text = text_content(o.get("content"), &content_path)?;
                if messages.is_empty() {
                    instructions.push(text);
                } else {
                    let dev = DeveloperContent { instructions: Some(text), ..Default::default() };
                    messages.push(Message::new(Role::Developer, gptoss_engine::harmony::Content::Developer(dev)));
                }
            }
            "user" => messages.push(Message::text(Role::User, text_content(o.get("content"), &content_path)?)),
            "assistant" => {
                let mut reasoning = String::new();
                for key in ["reasoning", "reasoning_content", "thinking"] {
                    if let Some(r) = o.str(key)? {
                        if !r.is_empty() {
                            reasoning = r.to_string();
                            break;
                        }
                    }
                }
                let content = text_content(o.get("content"), &content_path)?;
                let tool_calls = o.arr("tool_calls")?.map(Vec::as_slice).unwrap_or(&[]);
                if !reasoning.is_empty() {
                    messages.push(Message::text(Role::Assistant, reasoning).with_channel("analysis"));
                }
                if tool_calls.is_empty() {
                    if !content.is_empty() {
                        messages.push(Message::text(Role::Assistant, content).with_channel("final"));
                    }
                    continue;
                }
                if !content.is_empty() {
                    messages.push(Message::text(Role::Assistant, content).with_channel("commentary"));
                }
                for (k, c) in tool_calls.iter().enumerate() {
                    let cpath = format!("{path}.tool_calls[{k}]");
                    let Value::Object(cm) = c else { return Err(wrong(&cpath, "a tool call object", c)) };
                    let co = Obj::new(cm, &cpath);
                    let fpath = co.path("function");
                    let f = Obj::new(
                        co.obj("function")?
                            .ok_or_else(|| ApiError::invalid(&fpath, format!("`{fpath}` is required")))?,
                        &fpath,
                    );
                    let name = f.req_str("name")?;
                    let arguments = match f.get("arguments") {
                        None => "{}".to_string(),
                        Some(Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                    };
                    let tool = ToolRef::function(name);
                    if let Some(id) = co.str("id")? {
                        calls.push((id.to_string(), tool.clone()));
                    }
                    messages.push(call_message(&tool, arguments));
                }
            }
            "tool" | "function" => {
                let content = text_content(o.get("content"), &content_path)?;
                let by_id =
                    o.str("tool_call_id")?.map(|id| calls.iter().rev().find(|(c, _)| c == id).map(|(_, n)| n.clone()));
                let tool = match (by_id, o.str("name")?) {
                    (Some(Some(n)), _) => n,
                    (_, Some(n)) => ToolRef::function(n),
                    (Some(None), None) => {
                        return Err(ApiError::invalid(
                            o.path("tool_call_id"),
                            format!(
                                "`{}` does not match the id of any earlier assistant tool call",
                                o.path("tool_call_id")
                            ),
                        ))
                    }
                    (None, None) => {
                        return Err(ApiError::invalid(
                            o.path("tool_call_id"),
                            format!("`{}` is required on tool messages", o.path("tool_call_id")),
                        ))
                    }
                };
                messages.push(result_message(&tool, content));
            }
            other => {
                return Err(ApiError::invalid(
                    o.path("role"),
                    format!("unknown role {other:?}: expected system, developer, user, assistant or tool"),
                ))
            }
        }
    }
    Ok((instructions, messages))
}

/// `response_format` (chat) or `text.format` (responses): text, json_object or json_schema.
pub fn parse_response_format(v: Option<&Map<String, Value>>, path: &str, nested: bool) -> Result<Vec<ResponseFormat>> {
    let Some(m) = v else { return Ok(Vec::new()) };
    let o = Obj::new(m, path);
    match o.req_str("type")? {
        "text" => Ok(Vec::new()),
        "json_object" => Ok(vec![ResponseFormat {
            name: "json_object".into(),
            description: Some("Any JSON object.".into()),
            schema: serde_json::json!({"type": "object"}),
        }]),
        "json_schema" => {
            let spath = o.path("json_schema");
            let s = if nested {
                Obj::new(
                    o.obj("json_schema")?.ok_or_else(|| ApiError::invalid(&spath, format!("`{spath}` is required")))?,
                    &spath,
                )
            } else {
                o
            };
            let name = s.req_str("name")?.to_string();
            let schema = s.get("schema").cloned().unwrap_or_else(|| serde_json::json!({}));
            check_schema(&schema, &s.path("schema"))?;
            Ok(vec![ResponseFormat { name, description: s.str("description")?.map(str::to_string), schema }])
        }
        other => Err(ApiError::invalid(
            o.path("type"),
            format!("`{}` must be text, json_object or json_schema, got {other:?}", o.path("type")),
        )),
    }
}

/// The schema a `response_format` (chat) or `text.format` (responses) asks to enforce:
/// `json_object` always, `json_schema` when `strict` is true (without it, the schema only
/// guides the model through the prompt, as OpenAI's non-strict mode does).
pub fn format_schema(v: Option<&Map<String, Value>>, path: &str, nested: bool) -> Result<Option<(Value, String)>> {
    let Some(m) = v else { return Ok(None) };
    let o = Obj::new(m, path);
    match o.str("type")? {
        Some("json_object") => Ok(Some((serde_json::json!({"type": "object"}), path.to_string()))),
        Some("json_schema") => {
            let s = if nested {
                match o.obj("json_schema")? {
                    Some(s) => Obj::new(s, path),
                    None => return Ok(None),
                }
            } else {
                o
            };
            if !s.bool("strict")?.unwrap_or(false) {
                return Ok(None);
            }
            let schema = s.get("schema").cloned().unwrap_or_else(|| serde_json::json!({}));
            let spath = if nested { format!("{path}.json_schema.schema") } else { format!("{path}.schema") };
            Ok(Some((schema, spath)))
        }
        _ => Ok(None),
    }
}

/// Compiles what a request's output must satisfy: the response format's schema, and the
/// parameters of the strict tools offered. `None` when nothing is enforced, so unconstrained
/// requests sample exactly as before.
pub fn constraint(
    format: Option<(Value, String)>,
    spec: &PromptSpec,
    prompt: &Prompt,
) -> Result<Option<crate::constrain::JobConstraint>> {
    use crate::constrain::{ConstraintSpec, JobConstraint};
    let offered = if spec.tool_choice == ToolChoice::None { &[][..] } else { &spec.tools[..] };
    if format.is_none() && !offered.iter().any(|t| t.strict) {
        return Ok(None);
    }
    let format = match format {
        Some((schema, path)) => Some(ConstraintSpec::compile(&schema, &path)?),
        None => None,
    };
    let mut tools = Vec::new();
    for t in offered.iter().filter(|t| t.strict) {
        let schema = t.parameters.clone().unwrap_or_else(|| serde_json::json!({"type": "object"}));
        let g = ConstraintSpec::compile(&schema, &t.param_path)?;
        // The recipient the model writes for it: `functions.x`, or `ns.y` in a namespace.
        let to = prompt.tools.recipient(&t.tool);
        tools.push((to, g));
    }
    let spec = ConstraintSpec { format, tools, tools_offered: !offered.is_empty() };
    Ok(Some(JobConstraint { spec: std::sync::Arc::new(spec), forced: prompt.forced.clone() }))
}

impl PromptSpec {
    /// A Chat Completions request's prompt: `messages`, `tools`, `tool_choice`, the reasoning
    /// effort and `response_format`.
    pub fn from_chat(o: &Obj) -> Result<Self> {
        let list = o.arr("messages")?.ok_or_else(|| ApiError::invalid("messages", "`messages` is required"))?;
        let (instructions, messages) = chat_messages(list)?;
        let tools = parse_tools(o, true)?;
        let tool_choice = parse_tool_choice(o, &tools)?;
        Ok(PromptSpec {
            effort: parse_effort(o)?,
            instructions,
            tools,
            tool_choice,
            response_formats: parse_response_format(o.obj("response_format")?, "response_format", true)?,
            messages,
        })
    }

    pub fn render(&self, tok: &Tokenizer) -> Result<Prompt> {
        self.render_with(tok, "messages")
    }

    /// The prompt; a conversation that cannot be rendered is the fault of `param`.
    pub fn render_with(&self, tok: &Tokenizer, param: &str) -> Result<Prompt> {
        let mut names = ToolNames::default();
        let offered = if self.tool_choice == ToolChoice::None { &[][..] } else { &self.tools[..] };
        let rendered = names.register(&offered.iter().map(|t| t.tool.clone()).collect::<Vec<_>>());

        let mut system = SystemContent::new();
        system.reasoning_effort = Some(self.effort);
        system.conversation_start_date = Some(today_utc());
        let mut all = vec![Message::new(Role::System, gptoss_engine::harmony::Content::System(system))];
        let instructions = self.instructions.iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join("\n\n");
        if !instructions.is_empty() || !offered.is_empty() || !self.response_formats.is_empty() {
            let mut dev = DeveloperContent {
                instructions: (!instructions.is_empty()).then_some(instructions),
                tools: None,
                response_formats: self.response_formats.clone(),
            };
            if !offered.is_empty() {
                // Each namespace is its own `## name` section, as harmony renders `functions`.
                let mut namespaces = Tools::new();
                for (t, (ns, name)) in offered.iter().zip(&rendered) {
                    let entry = namespaces.entry(ns.clone()).or_insert_with(|| ToolNamespace {
                        name: ns.clone(),
                        description: t.namespace_description.clone().filter(|d| !d.is_empty()),
                        tools: Vec::new(),
                    });
                    entry.tools.push(ToolDescription {
                        name: name.clone(),
                        description: t.description.clone(),
                        parameters: t.parameters.clone(),
                    });
                }
                dev.tools = Some(namespaces);
            }
            all.push(Message::new(Role::Developer, gptoss_engine::harmony::Content::Developer(dev)));
        }
        let mut conversation = self.messages.clone();
        for m in &mut conversation {
            // Tool names as the model sees them.
            if let Some(t) = m.recipient.as_deref().and_then(ToolRef::from_client_recipient) {
                m.recipient = Some(names.recipient(&t));
            }
            if let Some(t) = m.author.name.as_deref().and_then(ToolRef::from_client_recipient) {
                m.author.name = Some(names.recipient(&t));
            }
        }
        drop_finished_analysis(&mut conversation);
        all.extend(conversation);
        let mut tokens = Renderer::new(tok)
            .render_for_completion(&all, Role::Assistant, RenderOptions { auto_drop_analysis: false })
            .map_err(|e| ApiError::invalid(param, e.to_string()))?;

        // Without a grammar, `required` and a named tool are enforced by writing the start
        // of the call's header for the model; it fills in the rest.
        let mut forced = Vec::new();
        let single = if offered.len() == 1 { Some(offered[0].tool.clone()) } else { None };
        let target = match &self.tool_choice {
            ToolChoice::Named(n) => Some(Some(n.clone())),
            ToolChoice::Required => Some(single),
            _ => None,
        };
        if let Some(tool) = target {
            forced.push(CHANNEL);
            match tool {
                Some(t) => {
                    if t.custom {
                        tok.encode_into(&format!("commentary to={}", names.recipient(&t)), &mut forced);
                    } else {
                        tok.encode_into(&format!("commentary to={} ", names.recipient(&t)), &mut forced);
                        forced.push(CONSTRAIN);
                        tok.encode_into("json", &mut forced);
                    }
                    forced.push(MESSAGE);
                }
                None if offered.iter().all(|t| t.tool.namespace.is_none()) => {
                    tok.encode_into("commentary to=functions.", &mut forced)
                }
                None => tok.encode_into("commentary to=", &mut forced),
            }
        }
        tokens.extend_from_slice(&forced);
        Ok(Prompt { tokens, forced, tools: names })
    }
}

//! Requests to harmony prompts (spec harmony §4.2, §5.2): the system message with date and
//! reasoning effort, a developer message with instructions, function tools and response
//! formats, then the conversation with finished turns' reasoning dropped, ready for
//! `<|start|>assistant`. All client text is encoded as ordinary text by the renderer.

use gptoss_engine::chat::{drop_finished_analysis, today_utc};
use gptoss_engine::harmony::{
    DeveloperContent, Message, ReasoningEffort, RenderOptions, Renderer, ResponseFormat, Role, SystemContent,
    ToolDescription,
};
use gptoss_engine::tokenizer::{Tokenizer, CHANNEL, CONSTRAIN, MESSAGE};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::fields::{wrong, Obj, Result};
use crate::output::ToolNames;

#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// A declared function, by the client's name.
#[derive(Clone, Debug)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub parameters: Option<Value>,
    /// `strict: true`: the arguments are enforced to match `parameters` while sampling.
    pub strict: bool,
    /// Where `parameters` is in the request, for errors.
    pub param_path: String,
}

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

/// Chat Completions tools (`{type:"function", function:{name, ...}}`) when `nested`, the
/// Responses API's flat form (`{type:"function", name, ...}`) otherwise.
pub fn parse_tools(o: &Obj, nested: bool) -> Result<Vec<Tool>> {
    let Some(list) = o.arr("tools")? else { return Ok(Vec::new()) };
    let mut tools: Vec<Tool> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let path = format!("tools[{i}]");
        let Value::Object(m) = t else { return Err(wrong(&path, "an object", t)) };
        let to = Obj::new(m, &path);
        let kind = to.str("type")?.unwrap_or("function");
        if kind != "function" {
            return Err(ApiError::invalid(
                format!("{path}.type"),
                format!("tool type {kind:?} is not supported; only \"function\" tools are"),
            ));
        }
        let fpath = format!("{path}.function");
        let f = if nested {
            Obj::new(
                to.obj("function")?.ok_or_else(|| ApiError::invalid(&fpath, format!("`{fpath}` is required")))?,
                &fpath,
            )
        } else {
            to
        };
        let name = f.req_str("name")?;
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                f.path("name"),
                "a function name must be 1 to 64 characters with no control characters",
            ));
        }
        if tools.iter().any(|t| t.name == name) {
            return Err(ApiError::invalid(f.path("name"), format!("function {name:?} is declared twice")));
        }
        let description = f.str("description")?.unwrap_or("").to_string();
        let parameters = match f.get("parameters") {
            None => None,
            Some(p) => {
                check_schema(p, &f.path("parameters"))?;
                Some(p.clone())
            }
        };
        let strict = f.bool("strict")?.unwrap_or(false);
        tools.push(Tool { name: name.to_string(), description, parameters, strict, param_path: f.path("parameters") });
    }
    Ok(tools)
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
            if c.str("type")? != Some("function") {
                return Err(ApiError::invalid("tool_choice.type", "`tool_choice.type` must be \"function\""));
            }
            let name = match c.obj("function")? {
                Some(f) => Obj::new(f, "tool_choice.function").req_str("name")?,
                None => c.req_str("name")?,
            };
            ToolChoice::Named(name.to_string())
        }
        Some(v) => return Err(wrong("tool_choice", "a string or an object", v)),
    };
    match &choice {
        ToolChoice::Required if tools.is_empty() => {
            Err(ApiError::invalid("tool_choice", "`tool_choice` is \"required\" but no tools were given"))
        }
        ToolChoice::Named(n) if !tools.iter().any(|t| &t.name == n) => Err(ApiError::invalid(
            "tool_choice",
            format!("`tool_choice` names function {n:?}, which is not in `tools`"),
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

/// A tool call in history: `to=functions.NAME` on commentary, arguments as JSON content.
pub fn call_message(name: &str, arguments: String) -> Message {
    Message::text(Role::Assistant, arguments)
        .with_channel("commentary")
        .with_recipient(format!("functions.{name}"))
        .with_content_type("<|constrain|>json")
}

/// A tool's result, as the tool speaking to the assistant.
pub fn result_message(name: &str, output: String) -> Message {
    Message::from_tool(format!("functions.{name}"), output).with_channel("commentary")
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
    let mut calls: Vec<(String, String)> = Vec::new();
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
                    if let Some(id) = co.str("id")? {
                        calls.push((id.to_string(), name.to_string()));
                    }
                    messages.push(call_message(name, arguments));
                }
            }
            "tool" | "function" => {
                let content = text_content(o.get("content"), &content_path)?;
                let by_id =
                    o.str("tool_call_id")?.map(|id| calls.iter().rev().find(|(c, _)| c == id).map(|(_, n)| n.clone()));
                let name = match (by_id, o.str("name")?) {
                    (Some(Some(n)), _) => n,
                    (_, Some(n)) => n.to_string(),
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
                messages.push(result_message(&name, content));
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
        let name = prompt.tools.rendered(&t.name).unwrap_or(&t.name).to_string();
        tools.push((name, g));
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
        let mut names = ToolNames::default();
        let offered = if self.tool_choice == ToolChoice::None { &[][..] } else { &self.tools[..] };
        let rendered = names.register(&offered.iter().map(|t| t.name.clone()).collect::<Vec<_>>());
        let rename = |client: &str| {
            names.rendered(client).map(str::to_string).unwrap_or_else(|| crate::output::sanitize(client))
        };

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
                let descs = offered
                    .iter()
                    .zip(&rendered)
                    .map(|(t, r)| ToolDescription {
                        name: r.clone(),
                        description: t.description.clone(),
                        parameters: t.parameters.clone(),
                    })
                    .collect();
                dev = dev.with_function_tools(descs);
            }
            all.push(Message::new(Role::Developer, gptoss_engine::harmony::Content::Developer(dev)));
        }
        let mut conversation = self.messages.clone();
        for m in &mut conversation {
            // Tool names as the model sees them.
            if let Some(r) = m.recipient.as_mut().and_then(|r| r.strip_prefix("functions.").map(rename)) {
                m.recipient = Some(format!("functions.{r}"));
            }
            if let Some(n) = m.author.name.as_mut().and_then(|n| n.strip_prefix("functions.").map(rename)) {
                m.author.name = Some(format!("functions.{n}"));
            }
        }
        drop_finished_analysis(&mut conversation);
        all.extend(conversation);
        let mut tokens = Renderer::new(tok)
            .render_for_completion(&all, Role::Assistant, RenderOptions { auto_drop_analysis: false })
            .map_err(|e| ApiError::invalid("messages", e.to_string()))?;

        // Without a grammar, `required` and a named function are enforced by writing the
        // start of the call's header for the model; it fills in the rest.
        let mut forced = Vec::new();
        let single = if offered.len() == 1 { Some(rendered[0].clone()) } else { None };
        let target = match &self.tool_choice {
            ToolChoice::Named(n) => Some(Some(rename(n))),
            ToolChoice::Required => Some(single),
            _ => None,
        };
        if let Some(name) = target {
            forced.push(CHANNEL);
            match name {
                Some(n) => {
                    tok.encode_into(&format!("commentary to=functions.{n} "), &mut forced);
                    forced.push(CONSTRAIN);
                    tok.encode_into("json", &mut forced);
                    forced.push(MESSAGE);
                }
                None => tok.encode_into("commentary to=functions.", &mut forced),
            }
        }
        tokens.extend_from_slice(&forced);
        Ok(Prompt { tokens, forced, tools: names })
    }
}

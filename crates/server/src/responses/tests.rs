use super::events::{extend_history, item_json};
use super::*;
use gptoss_engine::Tokenizer;

fn tok() -> &'static Tokenizer {
    static T: std::sync::OnceLock<Tokenizer> = std::sync::OnceLock::new();
    T.get_or_init(|| Tokenizer::o200k_harmony().unwrap())
}

fn tools() -> Value {
    json!([
        {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [
            {"type": "function", "name": "spawn_agent", "description": "Spawn one.",
             "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]},
        {"type": "custom", "name": "apply_patch", "description": "Edit files.",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: \"*** Begin Patch\""}},
        {"type": "web_search", "external_web_access": true},
    ])
}

fn request(input: Value, previous: Option<&str>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("input".into(), input);
    m.insert("tools".into(), tools());
    m.insert("instructions".into(), json!("Be helpful."));
    if let Some(p) = previous {
        m.insert("previous_response_id".into(), json!(p));
    }
    m
}

/// The rendered prompt (as text and tokens), and what storing a response to it keeps.
fn render(req: &Map<String, Value>, previous: Option<&Stored>) -> (Vec<u32>, prompt::Prompt, Input, Vec<String>) {
    let o = Obj::new(req, "");
    let (spec, input, instr) = spec_of(&o, previous.cloned(), true).unwrap();
    let prompt = spec.render_with(tok(), "input").unwrap();
    (prompt.tokens.clone(), prompt, input, instr)
}

fn without_phase(items: &[Value]) -> Vec<Value> {
    items
        .iter()
        .map(|v| {
            let mut v = v.clone();
            if let Value::Object(m) = &mut v {
                m.remove("phase");
            }
            v
        })
        .collect()
}

/// Each turn's output is sent back two ways: by `previous_response_id` (the store) and as
/// items (a stateless client, with and without `phase`). The prompts must be the same tokens.
#[test]
fn stateless_history_renders_as_previous_response_id_does() {
    let turns = [
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary<|message|>Checking the weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>",
        "<|channel|>analysis<|message|>Spawn a helper.<|end|><|start|>assistant<|channel|>commentary to=multi_agent_v1.spawn_agent <|constrain|>json<|message|>{\"task\":\"x\"}<|call|>",
        "<|channel|>analysis<|message|>Patch it.<|end|><|start|>assistant<|channel|>commentary<|message|>Editing.<|end|><|start|>assistant<|channel|>commentary to=functions.apply_patch<|message|>*** Begin Patch\n*** End Patch<|call|>",
        "<|channel|>analysis<|message|>Done.<|end|><|start|>assistant<|channel|>final<|message|>All done.<|return|>",
        "<|channel|>analysis<|message|>Again.<|end|><|start|>assistant<|channel|>commentary<|message|>Once more.<|end|><|start|>assistant<|channel|>commentary to=apply_patch<|message|>\"*** Begin Patch\"<|call|>",
    ];
    let first = json!([
        {"type": "message", "role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
    ]);
    let mut all_items: Vec<Value> = first.as_array().unwrap().clone();
    let (_, mut prompt, input, mut instr) = render(&request(first, None), None);
    let mut stored: Option<Stored>;
    let mut conversation = input.messages;
    let mut calls = input.calls;
    let mut kinds_seen = std::collections::HashSet::new();
    for (k, completion) in turns.iter().enumerate() {
        let mut out = Output::new(tok(), prompt.tools.clone(), Vec::new());
        let mut pieces = Vec::new();
        for t in tok().encode_with_special_tokens(completion) {
            out.push(&Sampled { token: t, logprob: 0.0, top_logprobs: vec![] }, &mut pieces);
        }
        out.finish(&mut pieces);
        extend_history(&out.items, &mut conversation, &mut calls);
        stored = Some(Stored {
            messages: conversation.clone(),
            calls: calls.clone(),
            input_instructions: instr.clone(),
            input_items: vec![],
            object: Value::Null,
        });
        let output: Vec<Value> = out.items.iter().map(|i| item_json(i, true, &out, None)).collect();
        for o in &output {
            kinds_seen.insert(format!(
                "{}{}",
                o["type"].as_str().unwrap(),
                o.get("phase").and_then(Value::as_str).map_or("".into(), |p| format!(":{p}"))
            ));
            if o.get("namespace").is_some() {
                kinds_seen.insert("namespace".into());
            }
        }
        // The next input: each call's result, or a user message after an answer.
        let next: Vec<Value> = output
            .iter()
            .filter_map(|o| match o["type"].as_str() {
                Some("function_call") => {
                    Some(json!({"type": "function_call_output", "call_id": o["call_id"], "output": "{\"ok\": true}"}))
                }
                Some("custom_tool_call") => {
                    Some(json!({"type": "custom_tool_call_output", "call_id": o["call_id"], "output": "patched"}))
                }
                _ => None,
            })
            .collect();
        let next = if next.is_empty() { vec![json!({"role": "user", "content": "Thanks. Again?"})] } else { next };
        let (by_id, p, input, i2) = render(&request(json!(next), Some("resp_x")), stored.as_ref());
        all_items.extend(output.iter().cloned());
        all_items.extend(next.iter().cloned());
        let (stateless, _, _, _) = render(&request(json!(all_items), None), None);
        assert_eq!(tok().decode_lossy(&stateless).unwrap(), tok().decode_lossy(&by_id).unwrap(), "turn {k}");
        assert_eq!(stateless, by_id, "turn {k}");
        let (no_phase, _, _, _) = render(&request(json!(without_phase(&all_items)), None), None);
        assert_eq!(no_phase, by_id, "turn {k} without phase");
        prompt = p;
        conversation = input.messages;
        calls = input.calls;
        instr = i2;
    }
    for kind in
        ["reasoning", "message:commentary", "message:final_answer", "function_call", "custom_tool_call", "namespace"]
    {
        assert!(kinds_seen.contains(kind), "{kind} not covered: {kinds_seen:?}");
    }
    // The custom call's JSON-quoted input was unquoted; the raw one kept as written.
    let text = tok().decode_lossy(&prompt.tokens).unwrap();
    assert!(
        text.contains("to=functions.apply_patch<|channel|>commentary<|message|>*** Begin Patch\n*** End Patch<|call|>"),
        "{text}"
    );
    assert!(text.contains("<|start|>assistant to=multi_agent_v1.spawn_agent<|channel|>commentary <|constrain|>json<|message|>{\"task\":\"x\"}<|call|>"), "{text}");
    assert!(
        text.contains(
            "<|start|>multi_agent_v1.spawn_agent to=assistant<|channel|>commentary<|message|>{\"ok\": true}<|end|>"
        ),
        "{text}"
    );
    assert!(text.contains("<|start|>assistant<|channel|>commentary<|message|>Once more.<|end|>"), "{text}");
}

#[test]
fn namespaces_and_custom_tools_render_and_hosted_tools_are_left_out() {
    let (tokens, prompt, _, _) = render(&request(json!("hi"), None), None);
    let text = tok().decode_lossy(&tokens).unwrap();
    assert!(text.contains("## functions\n\nnamespace functions {\n\ntype get_weather = (_: {\ncity?: string,\n}) => any;\n\n// Edit files.\n// Input: free-form text (not JSON), written as the whole message.\n// The input must follow this lark grammar:\n// start: \"*** Begin Patch\"\ntype apply_patch = (_: string) => any;\n\n} // namespace functions"), "{text}");
    assert!(text.contains("## multi_agent_v1\n\n// Sub-agents.\nnamespace multi_agent_v1 {\n\n// Spawn one.\ntype spawn_agent = (_: {\ntask?: string,\n}) => any;\n\n} // namespace multi_agent_v1"), "{text}");
    assert!(!text.contains("web_search"));
    let spawn = prompt.tools.resolve("multi_agent_v1.spawn_agent").unwrap();
    assert_eq!(spawn.namespace.as_deref(), Some("multi_agent_v1"));
    assert!(prompt.tools.resolve("apply_patch").unwrap().custom);
}

#[test]
fn phase_on_input_picks_the_channel() {
    let items = json!([
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "pre", "phase": "commentary"},
        {"role": "assistant", "content": "ans", "phase": "final_answer"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "plan"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "r"}]},
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "x"},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "ok"},
        {"role": "assistant", "content": "done"},
    ]);
    let req = request(items, None);
    let input = input_items(&Obj::new(&req, ""), None, true).unwrap();
    let channels: Vec<Option<&str>> = input.messages.iter().map(|m| m.channel.as_deref()).collect();
    assert_eq!(
        channels,
        [
            None,
            Some("commentary"),
            Some("final"),
            None,
            Some("commentary"),
            Some("analysis"),
            Some("commentary"),
            Some("commentary"),
            Some("final")
        ]
    );
    assert_eq!(input.items.len(), 9);
    assert!(input.items.iter().all(|i| i["id"].is_string()));
    let bad = request(json!([{"role": "assistant", "content": "x", "phase": "middle"}]), None);
    assert_eq!(input_items(&Obj::new(&bad, ""), None, true).err().unwrap().param.as_deref(), Some("input[0].phase"));
}

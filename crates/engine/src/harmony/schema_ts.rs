//! JSON Schema to the TypeScript-like types gpt-oss was trained to read in tool definitions
//! (spec harmony §2.5.1). The output must match openai-harmony byte for byte, quirks
//! included: the odd indentation of nested objects, a described nested object printing its
//! description twice, and three spellings of defaults.

use serde_json::Value;

/// `TS(schema, indent)`: the type of a tool's parameters (or of one property).
pub fn schema_to_typescript(schema: &Value, indent: &str) -> String {
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        return one_of_variants(variants, indent);
    }
    if let Some(types) = schema.get("type").and_then(Value::as_array) {
        let names: Vec<&str> =
            types.iter().filter_map(Value::as_str).map(|t| if t == "integer" { "number" } else { t }).collect();
        if !names.is_empty() {
            return names.join(" | ");
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => object(schema, indent),
        Some("string") => {
            let values: Vec<String> = schema
                .get("enum")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(|s| format!("\"{s}\"")).collect())
                .unwrap_or_default();
            if values.is_empty() {
                "string".into()
            } else {
                values.join(" | ")
            }
        }
        Some("number") | Some("integer") => "number".into(),
        Some("boolean") => "boolean".into(),
        Some("array") => match schema.get("items") {
            Some(items) => format!("{}[]", schema_to_typescript(items, indent)),
            None => "Array<any>".into(),
        },
        _ => "any".into(),
    }
}

/// A `oneOf` at the top of a schema: one `| variant` line each.
fn one_of_variants(variants: &[Value], indent: &str) -> String {
    let mut out = String::new();
    for v in variants {
        out.push_str(&format!("\n{indent} | "));
        out.push_str(&with_nullable(v, schema_to_typescript(v, &format!("{indent}   "))));
        let mut comments: Vec<String> =
            v.get("description").and_then(Value::as_str).map(str::to_string).into_iter().collect();
        if let Some(d) = v.get("default") {
            // Here an enum's string default keeps its JSON quotes, unlike in properties.
            comments.push(match d.as_str() {
                Some(s) if !is_enum(v) => format!("default: \"{s}\""),
                _ => format!("default: {d}"),
            });
        }
        if !comments.is_empty() {
            out.push_str(&format!(" // {}", comments.join(" ")));
        }
    }
    out
}

fn object(schema: &Value, indent: &str) -> String {
    let mut out = String::new();
    if let Some(desc) = schema.get("description").and_then(Value::as_str) {
        out.push_str(&format!("{indent}// {desc}\n"));
    }
    out.push_str("{\n");
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, prop) in props {
            let optional = if required.contains(&key.as_str()) { "" } else { "?" };
            if let Some(title) = prop.get("title").and_then(Value::as_str) {
                out.push_str(&format!("{indent}// {title}\n{indent}//\n"));
            }
            let has_one_of = prop.get("oneOf").is_some();
            let description = prop.get("description").and_then(Value::as_str);
            if !has_one_of {
                if let Some(desc) = description {
                    out.push_str(&format!("{indent}// {desc}\n"));
                }
            }
            if let Some(examples) = prop.get("examples").and_then(Value::as_array).filter(|a| !a.is_empty()) {
                out.push_str(&format!("{indent}// Examples:\n"));
                for ex in examples.iter().filter_map(Value::as_str) {
                    out.push_str(&format!("{indent}// - \"{ex}\"\n"));
                }
            }
            if let Some(variants) = prop.get("oneOf").and_then(Value::as_array) {
                one_of_property(&mut out, key, optional, prop, variants, description, indent);
                continue;
            }
            out.push_str(&format!("{indent}{key}{optional}: "));
            out.push_str(&with_nullable(prop, schema_to_typescript(prop, &format!("{indent}    "))));
            out.push(',');
            if !has_one_of {
                if let Some(d) = prop.get("default") {
                    out.push_str(&format!(" // {}", default_comment(prop, d)));
                }
            }
            out.push('\n');
        }
    }
    out.push_str(&format!("{indent}}}"));
    out
}

/// A property whose schema is a `oneOf`: comments above, then one `| variant` line each.
fn one_of_property(
    out: &mut String,
    key: &str,
    optional: &str,
    prop: &Value,
    variants: &[Value],
    description: Option<&str>,
    indent: &str,
) {
    let first_variant_desc = variants.first().and_then(|v| v.get("description")).and_then(Value::as_str);
    let desc_above = description.filter(|d| Some(*d) != first_variant_desc);
    if let Some(desc) = desc_above {
        out.push_str(&format!("{indent}// {desc}\n"));
    }
    if let Some(d) = prop.get("default") {
        out.push_str(&format!("{indent}// {}\n", default_comment(prop, d)));
    }
    out.push_str(&format!("{indent}{key}{optional}:\n"));
    for (i, v) in variants.iter().enumerate() {
        out.push_str(&format!("{indent} | "));
        out.push_str(&with_nullable(v, schema_to_typescript(v, &format!("{indent}   "))));
        let mut comments = Vec::new();
        if !(i == 0 && desc_above.is_some()) {
            if let Some(d) = v.get("description").and_then(Value::as_str).filter(|d| Some(*d) != description) {
                comments.push(d.to_string());
            }
        }
        if let Some(d) = v.get("default") {
            comments.push(default_comment(v, d));
        }
        if !comments.is_empty() {
            out.push_str(&format!(" // {}", comments.join(" ")));
        }
        out.push('\n');
    }
    out.push_str(&format!("{indent},\n"));
}

/// `default: "x"` for a free string, `default: x` for an enum's string, JSON otherwise.
fn default_comment(schema: &Value, default: &Value) -> String {
    match default.as_str() {
        Some(s) if !is_enum(schema) => format!("default: \"{s}\""),
        Some(s) => format!("default: {s}"),
        None => format!("default: {default}"),
    }
}

fn is_enum(schema: &Value) -> bool {
    schema.get("enum").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

fn with_nullable(schema: &Value, ty: String) -> String {
    if schema.get("nullable").and_then(Value::as_bool) == Some(true) && !ty.contains("null") {
        format!("{ty} | null")
    } else {
        ty
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(v: Value) -> String {
        schema_to_typescript(&v, "")
    }

    #[test]
    fn golden_kitchensink() {
        // openai/harmony test-data/test_render_functions_with_parameters.txt
        let schema = json!({
            "type": "object",
            "description": "params object",
            "properties": {
                "string": {"type": "string", "title": "STRING", "description": "A string", "examples": ["hello", "world"]},
                "string_nullable": {"type": "string", "nullable": true, "description": "A nullable string", "default": "the default"},
                "string_enum": {"type": "string", "enum": ["a", "b", "c"]},
                "oneof_string_or_number": {
                    "oneOf": [
                        {"type": "string", "default": "default_string_in_oneof"},
                        {"type": "number", "description": "numbers can happen too"}
                    ],
                    "description": "a oneof",
                    "default": 20
                }
            }
        });
        let want = "// params object\n{\n// STRING\n//\n// A string\n// Examples:\n// - \"hello\"\n// - \"world\"\nstring?: string,\n// A nullable string\nstring_nullable?: string | null, // default: \"the default\"\nstring_enum?: \"a\" | \"b\" | \"c\",\n// a oneof\n// default: 20\noneof_string_or_number?:\n | string // default: \"default_string_in_oneof\"\n | number // numbers can happen too\n,\n}";
        assert_eq!(ts(schema), want);
    }

    #[test]
    fn nested_objects_arrays_and_fallbacks() {
        // spec harmony §2.5.1, "nested objects / arrays of objects / anyOf"
        let schema = json!({
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "Search text"},
                "filters": {"type": "object", "description": "Optional filters", "properties": {
                    "year": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["year"]},
                "items": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "qty": {"type": "integer", "default": 1}}, "required": ["id"]}},
                "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                "limit": {"type": ["integer", "null"], "default": null},
                "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "flag": {"type": "boolean", "default": false},
                "level": {"type": "integer", "enum": [1, 2, 3]},
                "ref": {"$ref": "#/$defs/thing"}
            },
            "required": ["query"]
        });
        let want = "{\n// Search text\nquery: string,\n// Optional filters\nfilters?:     // Optional filters\n{\n    year: number,\n    tags?: string[],\n    },\nitems?: {\n    id: number,\n    qty?: number, // default: 1\n    }[],\nmode?: \"fast\" | \"slow\", // default: fast\nlimit?: number | null, // default: null\nmaybe?: any,\nflag?: boolean, // default: false\nlevel?: number,\nref?: any,\n}";
        assert_eq!(ts(schema), want);
    }

    #[test]
    fn small_cases() {
        assert_eq!(ts(json!({"type": "object", "properties": {}})), "{\n}");
        assert_eq!(ts(json!({"type": "array"})), "Array<any>");
        assert_eq!(ts(json!({"type": ["number", "string"]})), "number | string");
        assert_eq!(ts(json!({"type": "null"})), "any");
        assert_eq!(ts(json!({})), "any");
        assert_eq!(
            ts(json!({"oneOf": [{"type": "string", "enum": ["x"], "default": "x"}]})),
            "\n | \"x\" // default: \"x\""
        );
    }
}

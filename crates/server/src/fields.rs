//! Typed access to a request's JSON fields. Errors name the field by its path
//! (`messages[2].content`) and say what was expected, so a client can fix its request.

use serde_json::{Map, Value};

use crate::error::ApiError;

pub type Result<T> = std::result::Result<T, ApiError>;

#[derive(Clone, Copy)]
pub struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    pub path: &'a str,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn wrong(path: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(path, format!("`{path}` must be {expected}, got {}", type_name(got)))
}

/// The request body as a JSON object.
pub fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::invalid("", format!("the body must be a JSON object, got {}", type_name(&other)))),
        Err(e) => Err(ApiError::malformed_json(e)),
    }
}

impl<'a> Obj<'a> {
    pub fn new(map: &'a Map<String, Value>, path: &'a str) -> Self {
        Obj { map, path }
    }

    pub fn path(&self, key: &str) -> String {
        join(self.path, key)
    }

    /// The value, with null treated as absent (clients send explicit nulls for defaults).
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong(&self.path(key), "a string", v)),
        }
    }

    pub fn req_str(&self, key: &str) -> Result<&'a str> {
        self.str(key)?.ok_or_else(|| ApiError::invalid(self.path(key), format!("`{}` is required", self.path(key))))
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong(&self.path(key), "a boolean", v)),
        }
    }

    pub fn f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64().map(|f| f as f32)),
            Some(v) => Err(wrong(&self.path(key), "a number", v)),
        }
    }

    /// A number in `lo..=hi`.
    pub fn f32_in(&self, key: &str, lo: f32, hi: f32) -> Result<Option<f32>> {
        let v = self.f32(key)?;
        match v {
            Some(x) if !(lo..=hi).contains(&x) => Err(ApiError::invalid(
                self.path(key),
                format!("`{}` must be between {lo} and {hi}, got {x}", self.path(key)),
            )),
            _ => Ok(v),
        }
    }

    pub fn i64(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.as_i64().unwrap_or(i64::MAX))),
            Some(v) => Err(wrong(&self.path(key), "an integer", v)),
        }
    }

    /// An integer in `lo..=hi`.
    pub fn usize_in(&self, key: &str, lo: usize, hi: usize) -> Result<Option<usize>> {
        match self.i64(key)? {
            None => Ok(None),
            Some(x) if x < lo as i64 || x > hi as i64 => Err(ApiError::invalid(
                self.path(key),
                format!("`{}` must be an integer from {lo} to {hi}, got {x}", self.path(key)),
            )),
            Some(x) => Ok(Some(x as usize)),
        }
    }

    pub fn obj(&self, key: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(wrong(&self.path(key), "an object", v)),
        }
    }

    pub fn arr(&self, key: &str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(wrong(&self.path(key), "an array", v)),
        }
    }
}

/// `stop`: a string or up to 4 strings; empty strings are ignored.
pub fn stop_strings(o: &Obj, key: &str) -> Result<Vec<String>> {
    let path = o.path(key);
    let list = match o.get(key) {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| v.as_str().map(str::to_string).ok_or_else(|| wrong(&format!("{path}[{i}]"), "a string", v)))
            .collect::<Result<Vec<_>>>()?,
        Some(v) => return Err(wrong(&path, "a string or an array of strings", v)),
    };
    if list.len() > 4 {
        return Err(ApiError::invalid(path, format!("`{key}` takes at most 4 sequences, got {}", list.len())));
    }
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

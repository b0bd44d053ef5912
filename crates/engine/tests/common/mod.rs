//! Shared test helpers: fixture paths, the reference outputs, header surgery.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use gptoss_engine::safetensors::{DType, SafeTensors};
use gptoss_engine::{LoadError, Model};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn tiny(layout: &str) -> PathBuf {
    fixtures().join("tiny").join(layout)
}

/// OpenAI's reference outputs for the tiny checkpoint (fixtures/README.md).
pub struct Reference {
    pub tokens: Vec<u32>,
    pub next_token_nll: Vec<f64>,
    pub top8_ids: Vec<Vec<u32>>,
    pub top8_logprobs: Vec<Vec<f64>>,
    pub full_logits_positions: Vec<usize>,
    pub full_logits: Vec<Vec<f32>>,
    pub greedy_prompt_len: usize,
    pub greedy_tokens: Vec<u32>,
}

pub fn reference() -> Reference {
    let st = SafeTensors::open(&fixtures().join("tiny/reference.safetensors")).unwrap();
    let raw = |name: &str, dtype: DType| {
        let info = st.get(name).unwrap_or_else(|| panic!("reference has no {name}"));
        assert_eq!(info.dtype, dtype, "{name}");
        st.bytes(info).as_slice().to_vec()
    };
    let i64s = |name: &str| -> Vec<i64> {
        raw(name, DType::I64).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let f64s = |name: &str| -> Vec<f64> {
        raw(name, DType::F64).chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let f32s = |name: &str| -> Vec<f32> {
        raw(name, DType::F32).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let ids = |v: Vec<i64>| v.into_iter().map(|x| x as u32).collect::<Vec<u32>>();
    Reference {
        tokens: ids(i64s("tokens")),
        next_token_nll: f64s("next_token_nll"),
        top8_ids: ids(i64s("top8_ids")).chunks(8).map(<[u32]>::to_vec).collect(),
        top8_logprobs: f64s("top8_logprobs").chunks(8).map(<[f64]>::to_vec).collect(),
        full_logits_positions: i64s("full_logits_positions").into_iter().map(|p| p as usize).collect(),
        full_logits: f32s("full_logits").chunks(1024).map(<[f32]>::to_vec).collect(),
        greedy_prompt_len: i64s("greedy_prompt_len")[0] as usize,
        greedy_tokens: ids(i64s("greedy_tokens")),
    }
}

/// log-softmax in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64));
    let lse = max + logits.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&z| z as f64 - lse).collect()
}

/// Copies a fixture folder somewhere writable.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Rewrites a safetensors file's JSON header with `edit`, keeping the data section as is.
pub fn edit_header(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_vec(&header).unwrap();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// The error loading `path` gives, and its message; panics if it loads.
pub fn load_err(path: &Path) -> (LoadError, String) {
    match Model::load(path) {
        Ok(_) => panic!("{} loaded although it is broken", path.display()),
        Err(e) => {
            let msg = e.to_string();
            (e, msg)
        }
    }
}

//! Every way a checkpoint can be broken gives an error naming the file and the tensor or
//! field, never a panic.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, edit_header, load_err, tiny};
use gptoss_engine::{LoadError, Model};
use serde_json::json;

const SHARD0: &str = "model-00000-of-00002.safetensors";

fn broken_hf(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model");
    copy_dir(&tiny("hf"), &path);
    edit(&path);
    (dir, path)
}

#[test]
fn missing_tensor() {
    let (_d, path) = broken_hf(|p| {
        // Renamed, not removed: its bytes still tile the data section, as a valid file's must.
        edit_header(&p.join(SHARD0), |h| {
            let t = h.remove("model.norm.weight").unwrap();
            h.insert("model.norm.unused".into(), t);
        });
        let index = p.join("model.safetensors.index.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        v["weight_map"].as_object_mut().unwrap().remove("model.norm.weight");
        std::fs::write(&index, v.to_string()).unwrap();
    });
    let (err, msg) = load_err(&path);
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("`model.norm.weight`") && msg.contains("model"), "{msg}");
}

#[test]
fn index_points_at_a_file_without_the_tensor() {
    let (_d, path) = broken_hf(|p| {
        edit_header(&p.join(SHARD0), |h| {
            let t = h.remove("model.norm.weight").unwrap();
            h.insert("model.norm.unused".into(), t);
        })
    });
    let (_, msg) = load_err(&path);
    assert!(msg.contains("model.safetensors.index.json") && msg.contains("`model.norm.weight`"), "{msg}");
}

#[test]
fn wrong_shape() {
    let (_d, path) = broken_hf(|p| {
        edit_header(&p.join(SHARD0), |h| h["lm_head.weight"]["shape"] = json!([2048, 32]));
    });
    let (err, msg) = load_err(&path);
    assert!(matches!(err, LoadError::WrongShape { .. }), "{msg}");
    assert!(msg.contains(SHARD0) && msg.contains("`lm_head.weight`") && msg.contains("[1024, 64]"), "{msg}");
}

#[test]
fn wrong_dtype() {
    let (_d, path) = broken_hf(|p| {
        edit_header(&p.join(SHARD0), |h| h["lm_head.weight"]["dtype"] = json!("F16"));
    });
    let (err, msg) = load_err(&path);
    assert!(matches!(err, LoadError::WrongDtype { .. }), "{msg}");
    assert!(
        msg.contains(SHARD0) && msg.contains("`lm_head.weight`") && msg.contains("F16") && msg.contains("BF16"),
        "{msg}"
    );
}

#[test]
fn unknown_dtype() {
    let (_d, path) = broken_hf(|p| {
        edit_header(&p.join(SHARD0), |h| h["model.norm.weight"]["dtype"] = json!("BF17"));
    });
    let (err, msg) = load_err(&path);
    assert!(matches!(err, LoadError::UnknownDtype { .. }), "{msg}");
    assert!(msg.contains(SHARD0) && msg.contains("`model.norm.weight`") && msg.contains("BF17"), "{msg}");
}

#[test]
fn truncated_file() {
    let (_d, path) = broken_hf(|p| {
        let f = p.join(SHARD0);
        let len = std::fs::metadata(&f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 1000).unwrap();
    });
    let (err, msg) = load_err(&path);
    assert!(matches!(err, LoadError::Truncated { .. }), "{msg}");
    assert!(msg.contains(SHARD0) && msg.contains("truncated") && msg.contains('`'), "{msg}");
}

#[test]
fn corrupt_header() {
    let (_d, path) = broken_hf(|p| {
        let f = p.join(SHARD0);
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[8..24].copy_from_slice(b"\x00garbage\xffgarbage");
        std::fs::write(&f, bytes).unwrap();
    });
    let (err, msg) = load_err(&path);
    assert!(matches!(err, LoadError::BadHeader { .. }), "{msg}");
    assert!(msg.contains(SHARD0) && msg.contains("header"), "{msg}");
}

#[test]
fn header_length_past_the_end() {
    let (_d, path) = broken_hf(|p| {
        let f = p.join(SHARD0);
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&f, bytes).unwrap();
    });
    let (_, msg) = load_err(&path);
    assert!(msg.contains(SHARD0) && msg.contains("header length"), "{msg}");
}

#[test]
fn tiny_file() {
    let (_d, path) = broken_hf(|p| std::fs::write(p.join(SHARD0), b"abc").unwrap());
    let (_, msg) = load_err(&path);
    assert!(msg.contains(SHARD0) && msg.contains("too short"), "{msg}");
}

#[test]
fn offsets_disagree_with_the_shape() {
    let (_d, path) = broken_hf(|p| {
        edit_header(&p.join(SHARD0), |h| h["model.norm.weight"]["shape"] = json!([65]));
    });
    let (_, msg) = load_err(&path);
    assert!(msg.contains("`model.norm.weight`") && msg.contains("needs 130 bytes"), "{msg}");
}

#[test]
fn missing_config_field() {
    let (_d, path) = broken_hf(|p| {
        let f = p.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("num_attention_heads");
        std::fs::write(&f, v.to_string()).unwrap();
    });
    let (err, msg) = load_err(&path);
    assert!(matches!(err, LoadError::MissingField { .. }), "{msg}");
    assert!(msg.contains("config.json") && msg.contains("`num_attention_heads`"), "{msg}");
}

#[test]
fn malformed_config_fields_are_named() {
    let set = |key: &str, value: serde_json::Value| {
        let (_d, path) = broken_hf(|p| {
            let f = p.join("config.json");
            let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
            let (obj, k) = match key.split_once('.') {
                Some((outer, inner)) => (&mut v[outer], inner),
                None => (&mut v, key),
            };
            obj[k] = value;
            std::fs::write(&f, v.to_string()).unwrap();
        });
        load_err(&path).1
    };
    let msg = set("rope_scaling.factor", json!("32"));
    assert!(msg.contains("`rope_scaling.factor` must be a number"), "{msg}");
    let msg = set("rope_scaling.original_max_position_embeddings", json!(0));
    assert!(msg.contains("`rope_scaling.original_max_position_embeddings` must be positive"), "{msg}");
    let msg = set("rope_scaling.beta_slow", json!(64.0));
    assert!(msg.contains("`rope_scaling.beta_fast`") && msg.contains("greater than"), "{msg}");
    let msg = set("rms_norm_eps", json!(-1.0));
    assert!(msg.contains("`rms_norm_eps`"), "{msg}");
    let msg = set("num_experts_per_tok", json!("four"));
    assert!(msg.contains("`num_experts_per_tok` must be a non-negative integer"), "{msg}");
    let msg = set("hidden_size", json!(100));
    assert!(msg.contains("`hidden_size` (100) is not a multiple of 32"), "{msg}");
    let msg = set("vocab_size", json!(0));
    assert!(msg.contains("`vocab_size` is 0"), "{msg}");
}

#[test]
fn offsets_past_the_end_of_memory() {
    let (_d, path) = broken_hf(|p| {
        edit_header(&p.join(SHARD0), |h| {
            let end = u64::MAX;
            h["model.norm.weight"]["data_offsets"] = json!([end - 128, end]);
        })
    });
    let (err, msg) = load_err(&path);
    assert!(matches!(err, LoadError::Truncated { .. }), "{msg}");
}

#[test]
fn config_disagrees_with_the_tensors() {
    let (_d, path) = broken_hf(|p| {
        let f = p.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        v["num_local_experts"] = json!(16);
        std::fs::write(&f, v.to_string()).unwrap();
    });
    let (err, msg) = load_err(&path);
    assert!(matches!(err, LoadError::WrongShape { .. }), "{msg}");
    assert!(msg.contains("model.layers.0."), "{msg}");
}

#[test]
fn config_not_json() {
    let (_d, path) = broken_hf(|p| std::fs::write(p.join("config.json"), "{ not json").unwrap());
    let (_, msg) = load_err(&path);
    assert!(msg.contains("config.json") && msg.contains("not valid JSON"), "{msg}");
}

#[test]
fn not_a_checkpoint_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("no config.json"), "{msg}");
    let (_, msg) = load_err(&dir.path().join("nope"));
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn missing_shard() {
    let (_d, path) = broken_hf(|p| std::fs::remove_file(p.join(SHARD0)).unwrap());
    let (_, msg) = load_err(&path);
    assert!(
        msg.contains("model.safetensors.index.json") && msg.contains(SHARD0) && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn duplicate_tensor_across_files() {
    // The original layout scans every *.safetensors: a second copy of the file duplicates all.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&tiny("original"), dir.path());
    std::fs::copy(dir.path().join("model.safetensors"), dir.path().join("model-copy.safetensors")).unwrap();
    let (err, msg) = load_err(dir.path());
    assert!(matches!(err, LoadError::DuplicateTensor { .. }), "{msg}");
}

#[test]
fn dequantized_experts_are_named_as_such() {
    let (_d, path) = broken_hf(|p| {
        for shard in std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        {
            edit_header(&shard, |h| {
                if let Some(v) = h.remove("model.layers.0.mlp.experts.gate_up_proj_blocks") {
                    h.insert("model.layers.0.mlp.experts.gate_up_proj".into(), v);
                }
            });
        }
        std::fs::remove_file(p.join("model.safetensors.index.json")).unwrap();
    });
    let (_, msg) = load_err(&path);
    assert!(msg.contains("not MXFP4") && msg.contains("gate_up_proj"), "{msg}");
}

#[test]
fn layouts_are_detected_and_a_hub_root_loads_the_root() {
    let dir = tempfile::tempdir().unwrap();
    // A Hub-style repository: HF files at the root, OpenAI files under original/.
    copy_dir(&tiny("hf"), dir.path());
    copy_dir(&tiny("original"), &dir.path().join("original"));
    let root = Model::load(dir.path()).unwrap();
    assert_eq!(root.layout, gptoss_engine::Layout::HuggingFace);
    let orig = Model::load(&dir.path().join("original")).unwrap();
    assert_eq!(orig.layout, gptoss_engine::Layout::Original);
    // A folder with only original/ inside loads that.
    let only = tempfile::tempdir().unwrap();
    copy_dir(&tiny("original"), &only.path().join("original"));
    assert_eq!(Model::load(only.path()).unwrap().layout, gptoss_engine::Layout::Original);
    // A root config with only original/ weights falls back to original/.
    let root_config_only = tempfile::tempdir().unwrap();
    std::fs::copy(tiny("hf").join("config.json"), root_config_only.path().join("config.json")).unwrap();
    copy_dir(&tiny("original"), &root_config_only.path().join("original"));
    assert_eq!(Model::load(root_config_only.path()).unwrap().layout, gptoss_engine::Layout::Original);
    // HF without an index: every *.safetensors is scanned.
    let no_index = tempfile::tempdir().unwrap();
    copy_dir(&tiny("hf"), no_index.path());
    std::fs::remove_file(no_index.path().join("model.safetensors.index.json")).unwrap();
    assert_eq!(Model::load(no_index.path()).unwrap().layout, gptoss_engine::Layout::HuggingFace);
}

//! W4A16 checkpoints (llm-compressor's compressed-tensors int4 of the tiny model) against
//! transformers on the exactly dequantized weights (`w = (q − z)·s` in f32): per-token NLL and
//! all logits within 1e-4 on the scalar path, greedy tokens identical; the fast kernels within
//! the fast-path bar; bad files refused with the tensor named.

mod common;

use std::path::PathBuf;

use common::{copy_dir, edit_header, fixtures, load_err, log_softmax};
use gptoss_engine::safetensors::{DType, SafeTensors};
use gptoss_engine::{KvCache, Layout, LogitsRequest, Model, SeqChunk};
use gptoss_kernels::{Isa, Kernels};

fn w4a16(variant: &str) -> PathBuf {
    fixtures().join("w4a16").join(variant)
}

struct Exact {
    tokens: Vec<u32>,
    nll: Vec<f64>,
    logits: Vec<Vec<f32>>,
    greedy_prompt_len: usize,
    greedy: Vec<u32>,
}

fn exact_reference(variant: &str) -> Exact {
    let st = SafeTensors::open(&w4a16(variant).join("reference.safetensors")).unwrap();
    let raw = |name: &str, dtype: DType| {
        let info = st.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(info.dtype, dtype, "{name}");
        st.bytes(info).as_slice().to_vec()
    };
    let i64s = |n: &str| {
        raw(n, DType::I64).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>()
    };
    let f64s =
        |n: &str| raw(n, DType::F64).chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
    let f32s: Vec<f32> = raw("all_logits_exact_fp32_dequant", DType::F32)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Exact {
        tokens: i64s("tokens").into_iter().map(|t| t as u32).collect(),
        nll: f64s("next_token_nll_exact_fp32_dequant"),
        logits: f32s.chunks(1024).map(<[f32]>::to_vec).collect(),
        greedy_prompt_len: i64s("greedy_prompt_len")[0] as usize,
        greedy: i64s("greedy_tokens_exact_fp32_dequant").into_iter().map(|t| t as u32).collect(),
    }
}

fn all_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(&model.config, 4096);
    let seq = cache.add_sequence();
    let logits = model.forward(&mut cache, &[SeqChunk { seq, tokens, logits: LogitsRequest::All }]).unwrap();
    (0..tokens.len()).map(|i| logits.row(i).to_vec()).collect()
}

fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = KvCache::new(&model.config, 4096);
    let seq = cache.add_sequence();
    let mut logits =
        model.forward(&mut cache, &[SeqChunk { seq, tokens: prompt, logits: LogitsRequest::Last }]).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = gptoss_engine::sampler::argmax(logits.last_for(0).unwrap());
        out.push(next);
        logits = model.forward(&mut cache, &[SeqChunk { seq, tokens: &[next], logits: LogitsRequest::Last }]).unwrap();
    }
    out
}

#[test]
fn w4a16_checkpoints_match_the_exact_dequantized_reference() {
    for variant in ["w4a16-g32-sym", "w4a16-g32-asym-fp16", "w4a16-g32-sym-llmc013-halfsplit"] {
        let r = exact_reference(variant);
        let mut model = Model::load(&w4a16(variant)).unwrap();
        assert_eq!(model.layout, Layout::CompressedTensors, "{variant}");
        model.set_kernels(Kernels::scalar());
        let logits = all_logits(&model, &r.tokens);
        let nll = |l: &[Vec<f32>]| -> f64 {
            r.nll
                .iter()
                .enumerate()
                .map(|(i, w)| (-log_softmax(&l[i])[r.tokens[i + 1] as usize] - w).abs())
                .fold(0.0, f64::max)
        };
        let max_logit =
            logits.iter().flatten().zip(r.logits.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let max_nll = nll(&logits);
        eprintln!("{variant} (scalar): max |Δnll| = {max_nll:.3e}, max |Δlogit| over 300×1024 = {max_logit:.3e}");
        assert!(max_nll < 1e-4 && max_logit < 1e-4, "{variant}: NLL {max_nll}, logit {max_logit}");
        assert_eq!(greedy(&model, &r.tokens[..r.greedy_prompt_len], r.greedy.len()), r.greedy, "{variant}");

        let argmax = gptoss_engine::sampler::argmax;
        for fast in Isa::FAST.into_iter().filter_map(Kernels::for_isa) {
            model.set_kernels(fast);
            let got = all_logits(&model, &r.tokens);
            let agree = got.iter().zip(&r.logits).filter(|(a, b)| argmax(a) == argmax(b)).count();
            let max_nll = nll(&got);
            eprintln!("{variant} ({}): max |Δnll| = {max_nll:.3e}, top-1 {agree}/300", fast.isa.name());
            assert!(max_nll <= 0.01 && agree >= 297, "{variant} {}: NLL {max_nll}, top-1 {agree}", fast.isa.name());
        }
    }
}

#[test]
fn layers_stay_packed_and_ignored_ones_stay_bf16() {
    let model = Model::load(&w4a16("w4a16-g32-sym")).unwrap();
    let w = &model.weights;
    assert_eq!(w.layers[0].attn.q.format(), "affine 4-bit g32");
    assert_eq!(w.layers[0].moe.gate_up.format(), "affine 4-bit g32");
    assert_eq!(w.layers[0].moe.down.format(), "affine 4-bit g32");
    // The recipe ignores lm_head and the routers.
    assert_eq!((w.unembedding.format(), w.layers[0].moe.router.format()), ("bf16".into(), "bf16".into()));
}

/// An fp16 model's conversion: asymmetric zero points, f16 scales, and the layers the recipe
/// ignored kept in f16, widened exactly to f32.
#[test]
fn fp16_unquantized_layers_are_widened_to_f32() {
    let model = Model::load(&w4a16("w4a16-g32-asym-fp16")).unwrap();
    let w = &model.weights;
    assert_eq!(w.layers[0].attn.q.format(), "affine 4-bit g32");
    assert_eq!(
        (w.unembedding.format(), w.embedding.format()),
        ("f32 (widened from f16)".into(), "f32 (widened from f16)".into())
    );
}

fn broken(variant: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(variant);
    copy_dir(&w4a16(variant), &path);
    (dir, path)
}

#[test]
fn bad_files_name_the_tensor() {
    // A missing scale.
    let (_d, path) = broken("w4a16-g32-sym-llmc013-halfsplit");
    // Renamed, not removed: its bytes still tile the data section, as a valid file's must.
    edit_header(&path.join("model.safetensors"), |h| {
        let t = h.remove("model.layers.1.self_attn.v_proj.weight_scale").unwrap();
        h.insert("unused".into(), t);
    });
    let (_, msg) = load_err(&path);
    eprintln!("{msg}");
    assert!(msg.contains("model.layers.1.self_attn.v_proj.weight_scale"), "{msg}");
    // A packed shape that does not match the layer.
    let (_d, path) = broken("w4a16-g32-sym-llmc013-halfsplit");
    edit_header(&path.join("model.safetensors"), |h| {
        let t = h.get_mut("model.layers.2.mlp.experts.3.down_proj.weight_packed").unwrap();
        let s: Vec<u64> = t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        t["shape"] = serde_json::json!([s[0] / 2, s[1] * 2]);
    });
    let (_, msg) = load_err(&path);
    eprintln!("{msg}");
    assert!(msg.contains("model.layers.2.mlp.experts.3.down_proj.weight_packed"), "{msg}");
    // A config that disagrees with the tensors: group 64 where the scales are per 32.
    let (_d, path) = broken("w4a16-g32-sym-llmc013-halfsplit");
    let config = path.join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = 64.into();
    std::fs::write(&config, c.to_string()).unwrap();
    let (_, msg) = load_err(&path);
    eprintln!("{msg}");
    assert!(msg.contains("weight_scale"), "{msg}");
}

/// `synth`'s W4A16 checkpoints load as compressed-tensors and run.
#[test]
fn synth_writes_loadable_w4a16_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = gptoss_engine::ModelConfig::tiny();
    let out = dir.path().join("w4a16");
    gptoss_engine::synth::write_w4a16_checkpoint(&cfg, 32, &out, 3, |_, _| {}).unwrap();
    let model = Model::load(&out).unwrap();
    assert_eq!(model.layout, Layout::CompressedTensors);
    let w = &model.weights;
    assert_eq!(
        (w.layers[1].attn.out.format(), w.layers[1].moe.down.format()),
        ("affine 4-bit g32".into(), "affine 4-bit g32".into())
    );
    let logits = all_logits(&model, &[5, 6, 7]);
    assert!(logits.iter().flatten().all(|v| v.is_finite()));
}

//! MLX checkpoints (mlx-lm's conversions of the tiny model) against mlx-lm's own float32
//! forward pass with exact YaRN: per-token NLL and logits within 1e-4 on the scalar path,
//! greedy tokens identical; the fast kernels within the fast-path bar; bad files refused
//! with the tensor named.

mod common;

use std::path::PathBuf;

use common::{copy_dir, edit_header, fixtures, load_err, log_softmax};
use gptoss_engine::weights::{Dense, Mxfp4Layout};
use gptoss_engine::{KvCache, Layout, LogitsRequest, Model, SeqChunk};
use gptoss_kernels::{Isa, Kernels};
use serde_json::Value;

fn mlx(variant: &str) -> PathBuf {
    fixtures().join("mlx").join(variant)
}

struct MlxReference {
    tokens: Vec<u32>,
    nll: Vec<f64>,
    positions: Vec<usize>,
    logits: Vec<Vec<f32>>,
    greedy_from_200: Vec<u32>,
}

fn reference(variant: &str) -> MlxReference {
    let text = std::fs::read_to_string(mlx(variant).join("reference.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    let ints = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let e = &r["exact_yarn"];
    MlxReference {
        tokens: ints(&r["tokens"]),
        nll: e["next_token_nll"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect(),
        positions: ints(&r["logits_positions"]).into_iter().map(|p| p as usize).collect(),
        logits: e["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect(),
        greedy_from_200: ints(&e["greedy_from_200"]),
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

/// (max |ΔNLL|, max |Δlogit| at the listed positions, top-1 agreement with the reference's
/// next token argmax of its own logits is not stored, so against the scalar path's).
fn compare(model: &Model, r: &MlxReference) -> (f64, f32, Vec<Vec<f32>>) {
    let logits = all_logits(model, &r.tokens);
    let max_nll = r
        .nll
        .iter()
        .enumerate()
        .map(|(i, want)| (-log_softmax(&logits[i])[r.tokens[i + 1] as usize] - want).abs())
        .fold(0f64, f64::max);
    let mut max_logit = 0f32;
    for (&p, want) in r.positions.iter().zip(&r.logits) {
        for (a, b) in logits[p].iter().zip(want) {
            max_logit = max_logit.max((a - b).abs());
        }
    }
    (max_nll, max_logit, logits)
}

#[test]
fn mlx_conversions_match_mlx_lm_with_exact_yarn() {
    for variant in ["bf16", "mxfp4", "mxfp4-q4", "mxfp4-q8", "4bit"] {
        let r = reference(variant);
        let mut model = Model::load(&mlx(variant)).unwrap();
        assert_eq!(model.layout, Layout::Mlx, "{variant}");
        model.set_kernels(Kernels::scalar());
        let (max_nll, max_logit, scalar_logits) = compare(&model, &r);
        eprintln!("{variant} (scalar): max |Δnll| = {max_nll:.3e}, max |Δlogit| = {max_logit:.3e}");
        assert!(max_nll < 1e-4 && max_logit < 1e-4, "{variant}: NLL {max_nll}, logit {max_logit}");
        assert_eq!(greedy(&model, &r.tokens[..200], r.greedy_from_200.len()), r.greedy_from_200, "{variant}");

        // Every fast set on this CPU: the fast-path bar against the reference.
        for fast in Isa::FAST.into_iter().filter_map(Kernels::for_isa) {
            model.set_kernels(fast);
            let (max_nll, max_logit, logits) = compare(&model, &r);
            let argmax = gptoss_engine::sampler::argmax;
            let agree = logits.iter().zip(&scalar_logits).filter(|(a, b)| argmax(a) == argmax(b)).count();
            eprintln!(
                "{variant} ({}): max |Δnll| = {max_nll:.3e}, max |Δlogit| = {max_logit:.3e}, top-1 {agree}/{}",
                fast.isa.name(),
                logits.len()
            );
            assert!(max_nll <= 0.01, "{variant} {}: NLL {max_nll}", fast.isa.name());
            assert!(agree * 100 >= 99 * logits.len(), "{variant} {}: top-1 {agree}", fast.isa.name());
        }
    }
}

#[test]
fn mlx_modules_stay_packed() {
    let model = Model::load(&mlx("mxfp4-q4")).unwrap();
    let w = &model.weights;
    let formats = |d: &Dense| d.format();
    assert_eq!(formats(&w.embedding), "affine 4-bit g64");
    assert_eq!(formats(&w.unembedding), "affine 4-bit g64");
    assert_eq!(formats(&w.layers[0].attn.q), "affine 4-bit g64");
    assert_eq!(formats(&w.layers[3].moe.router), "affine 8-bit g64");
    let plain = Model::load(&mlx("mxfp4")).unwrap();
    assert_eq!(formats(&plain.weights.unembedding), "bf16");
    // 4 bits + a scale and a zero point per 64 (held as f32; 5 bits a weight), or with the
    // integer kernels an f32 scale per 32 (5.5 bits), instead of 16 bits.
    assert!(w.unembedding.bytes() * 5 / 2 < plain.weights.unembedding.bytes());
    // Repacked for the integer kernels where the set has them; the embedding stays in rows.
    let repacked = model.kernels().i16_act.as_ref().is_some_and(|ia| ia.matmul_rows_i16a_affine4r16w.is_some());
    let layout = |d: &Dense| match d {
        Dense::Affine(m) => m.layout,
        _ => panic!("affine"),
    };
    let want = if repacked { Mxfp4Layout::Rows16 } else { Mxfp4Layout::Rows };
    assert_eq!((layout(&w.unembedding), layout(&w.layers[1].attn.out)), (want, want));
    assert_eq!(layout(&w.embedding), Mxfp4Layout::Rows);
}

/// The embedding of a repacked matrix reads the same rows as the checkpoint's.
#[test]
fn repacked_affine_rows_decode_as_stored() {
    let mut model = Model::load(&mlx("mxfp4-q4")).unwrap();
    model.set_kernels(Kernels::scalar());
    let k = model.config.hidden_size;
    let rows: Vec<Vec<f32>> = (0..40)
        .map(|r| {
            let mut v = vec![0f32; k];
            model.weights.unembedding.row_f32(r * 7, &mut v);
            v
        })
        .collect();
    model.weights.set_affine_layout(Mxfp4Layout::Rows16);
    for (i, want) in rows.iter().enumerate() {
        let mut v = vec![0f32; k];
        model.weights.unembedding.row_f32(i * 7, &mut v);
        assert_eq!(&v, want, "row {}", i * 7);
    }
    // And back.
    model.weights.set_affine_layout(Mxfp4Layout::Rows);
    let mut v = vec![0f32; k];
    model.weights.unembedding.row_f32(7, &mut v);
    assert_eq!(v, rows[1]);
}

/// The `4bit` recipe: affine experts (4-bit, group 32) stay packed.
#[test]
fn affine_experts_stay_packed() {
    let model = Model::load(&mlx("4bit")).unwrap();
    let m = &model.weights.layers[2].moe;
    assert_eq!((m.gate_up.format(), m.down.format()), ("affine 4-bit g32".to_string(), "affine 4-bit g32".to_string()));
    assert_eq!((m.gate_up.experts(), m.gate_up.rows(), m.down.rows()), (8, 192, 64));
}

fn broken(variant: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(variant);
    copy_dir(&mlx(variant), &path);
    (dir, path)
}

#[test]
fn a_missing_scale_is_named() {
    let (_dir, path) = broken("mxfp4-q4");
    // Renamed, not removed: its bytes still tile the data section, as a valid file's must.
    edit_header(&path.join("model.safetensors"), |h| {
        let t = h.remove("model.layers.1.self_attn.k_proj.scales").unwrap();
        h.insert("unused".into(), t);
    });
    let index = path.join("model.safetensors.index.json");
    let mut ix: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    ix["weight_map"].as_object_mut().unwrap().remove("model.layers.1.self_attn.k_proj.scales");
    std::fs::write(&index, ix.to_string()).unwrap();
    let (_, msg) = load_err(&path);
    eprintln!("{msg}");
    assert!(msg.contains("model.layers.1.self_attn.k_proj") && msg.contains("scales"), "{msg}");
}

#[test]
fn a_wrong_packed_shape_is_named() {
    let (_dir, path) = broken("mxfp4-q4");
    edit_header(&path.join("model.safetensors"), |h| {
        // [64, 8] U32 words (4-bit codes of 64 inputs) claimed as [32, 16]: same bytes.
        let t = h.get_mut("model.layers.2.self_attn.q_proj.weight").unwrap();
        let shape = t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect::<Vec<_>>();
        t["shape"] = serde_json::json!([shape[0] / 2, shape[1] * 2]);
    });
    let (_, msg) = load_err(&path);
    eprintln!("{msg}");
    assert!(msg.contains("model.layers.2.self_attn.q_proj"), "{msg}");
}

#[test]
fn a_config_that_disagrees_with_the_tensors_is_named() {
    let (_dir, path) = broken("mxfp4-q4");
    let config = path.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["quantization"]["model.layers.0.self_attn.o_proj"]["bits"] = Value::from(8);
    std::fs::write(&config, c.to_string()).unwrap();
    let (_, msg) = load_err(&path);
    eprintln!("{msg}");
    assert!(msg.contains("model.layers.0.self_attn.o_proj") && msg.contains("config.json says"), "{msg}");
}

/// `synth`'s MLX conversions load as MLX, with the recipes' formats, and run.
#[test]
fn synth_writes_loadable_mlx_conversions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = gptoss_engine::ModelConfig::tiny();
    for bits in [4, 8] {
        let out = dir.path().join(format!("q{bits}"));
        gptoss_engine::synth::write_mlx_checkpoint(&cfg, bits, &out, 1, |_, _| {}).unwrap();
        let model = Model::load(&out).unwrap();
        assert_eq!(model.layout, Layout::Mlx);
        let w = &model.weights;
        assert_eq!(w.unembedding.format(), format!("affine {bits}-bit g64"));
        assert_eq!(w.layers[0].moe.router.format(), "affine 8-bit g64");
        let logits = all_logits(&model, &[1, 2, 3, 4]);
        assert!(logits.iter().flatten().all(|v| v.is_finite()));
    }
}

/// f32 as IEEE half bits, for values a bf16 holds (exact in f16's normal range: 7 mantissa
/// bits fit in 10); below it, rounded to f16's subnormal step.
fn f16_bits(x: f32) -> u16 {
    let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
    let a = x.abs() as f64;
    assert!(a < 65504.0, "{x} overflows f16");
    if a < 2f64.powi(-14) {
        return sign | (a / 2f64.powi(-24)).round() as u16;
    }
    let e = a.log2().floor() as i32;
    let m = ((a / 2f64.powi(e) - 1.0) * 1024.0).round() as u16;
    sign | (((e + 15) as u16) << 10) | m
}

/// Rewrites the bf16 conversion with `to[name] = "F32" | "F16"` for the named tensors (an
/// unquantized MLX module in another float type), rebuilding the data section.
fn widened(to: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = broken("bf16");
    let file = path.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    names.sort_by_key(|k| header[*k]["data_offsets"][0].as_u64().unwrap());
    let (mut out_header, mut out_data) = (serde_json::Map::new(), Vec::new());
    if let Some(m) = header.get("__metadata__") {
        out_header.insert("__metadata__".into(), m.clone());
    }
    for name in names {
        let mut t = header[name].clone();
        let (a, b) = (t["data_offsets"][0].as_u64().unwrap() as usize, t["data_offsets"][1].as_u64().unwrap() as usize);
        let raw = &data[a..b];
        let start = out_data.len();
        match to.iter().find(|(n, _)| n == name).map(|(_, d)| *d) {
            Some(dtype) => {
                assert_eq!(t["dtype"], "BF16", "{name}");
                for c in raw.chunks_exact(2) {
                    let x = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
                    match dtype {
                        "F32" => out_data.extend_from_slice(&x.to_le_bytes()),
                        _ => out_data.extend_from_slice(&f16_bits(x).to_le_bytes()),
                    }
                }
                t["dtype"] = Value::from(dtype);
            }
            None => out_data.extend_from_slice(raw),
        }
        t["data_offsets"] = serde_json::json!([start, out_data.len()]);
        out_header.insert(name.clone(), t);
    }
    let mut text = serde_json::to_vec(&out_header).unwrap();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&out_data);
    std::fs::write(&file, out).unwrap();
    (dir, path)
}

/// mlx-lm keeps unquantized modules in the source's float type: f16 and f32 ones load
/// (widened exactly to f32) and give mlx-lm's results; f32 experts are refused by name.
#[test]
fn unquantized_f16_and_f32_modules_load_and_match() {
    let (_dir, path) = widened(&[
        ("model.layers.0.self_attn.q_proj.weight", "F32"),
        ("model.layers.1.self_attn.o_proj.weight", "F16"),
        ("lm_head.weight", "F16"),
    ]);
    let mut model = Model::load(&path).unwrap();
    let q = &model.weights.layers[0].attn.q;
    assert!(matches!(q, Dense::F32(_)), "q_proj is {}", q.format());
    assert!(matches!(model.weights.unembedding, Dense::F32(_)));
    let r = reference("bf16");
    model.set_kernels(Kernels::scalar());
    let (max_nll, max_logit, _) = compare(&model, &r);
    eprintln!("bf16 with f32/f16 modules (scalar): max |Δnll| = {max_nll:.3e}, max |Δlogit| = {max_logit:.3e}");
    assert!(max_nll < 1e-4 && max_logit < 1e-4, "NLL {max_nll}, logit {max_logit}");
    for fast in
        [Isa::Avx2, Isa::AvxVnni, Isa::Avx512Bf16, Isa::Neon, Isa::NeonBf16].into_iter().filter_map(Kernels::for_isa)
    {
        model.set_kernels(fast);
        let (max_nll, _, _) = compare(&model, &r);
        assert!(max_nll <= 0.01, "{}: NLL {max_nll}", fast.isa.name());
    }

    let (_dir, path) = widened(&[("model.layers.2.mlp.experts.down_proj.weight", "F32")]);
    let (_, msg) = load_err(&path);
    eprintln!("{msg}");
    assert!(msg.contains("model.layers.2.mlp.experts.down_proj") && msg.contains("F32"), "{msg}");
}

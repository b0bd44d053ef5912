//! The deterministic hash model of spec §6.13, rebuilt from its integer hash: a 2-layer
//! gpt-oss with a window of 4 on layer 0, head_dim 16, 8 experts, top-2. Its expected
//! outputs came from a clean-room implementation that agrees with transformers to 4.4e-6,
//! and each known trap moves them by far more than the tolerance (spec: window 5 -> 2.4,
//! interleaved RoPE -> 6.5, no concentration -> 3.4, sinks ignored -> 6.4, swapped nibbles
//! -> 9.4, gate/up as halves -> 11.7, truncated YaRN -> 0.009).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use gptoss_engine::safetensors::{write_safetensors, DType, TensorSpec};
use gptoss_engine::{KvCache, LogitsRequest, Model, SeqChunk};
use gptoss_kernels::bf16::f32_to_bf16;

fn h(t: u32, i: u32) -> u32 {
    let mut a = i.wrapping_mul(2654435761).wrapping_add(t.wrapping_mul(2246822519)).wrapping_add(374761393);
    a ^= a >> 15;
    a = a.wrapping_mul(2246822519);
    a ^= a >> 13;
    a
}

fn val(t: u32, i: u32, den: f32, off: f32) -> f32 {
    off + ((h(t, i) % 33) as f32 - 16.0) / den
}

enum Gen {
    Val { t: u32, den: f32, off: f32 },
    Byte { t: u32 },
    Scale { t: u32, base: u8 },
}

/// Writes the model in the original layout into `dir`.
fn write_hash_model(dir: &Path) {
    let mut tensors: Vec<(TensorSpec, Gen)> = Vec::new();
    fn bf16(tensors: &mut Vec<(TensorSpec, Gen)>, name: String, shape: &[usize], t: u32, den: f32, off: f32) {
        tensors.push((TensorSpec::new(name, DType::BF16, shape), Gen::Val { t, den, off }))
    }
    bf16(&mut tensors, "embedding.weight".into(), &[32, 64], 1, 16.0, 0.0);
    bf16(&mut tensors, "norm.scale".into(), &[64], 2, 64.0, 1.0);
    bf16(&mut tensors, "unembedding.weight".into(), &[32, 64], 3, 32.0, 0.0);
    for n in 0..2u32 {
        let b = 100 + 20 * n;
        let p = |s: &str| format!("block.{n}.{s}");
        bf16(&mut tensors, p("attn.norm.scale"), &[64], b, 64.0, 1.0);
        bf16(&mut tensors, p("attn.qkv.weight"), &[128, 64], b + 1, 64.0, 0.0);
        bf16(&mut tensors, p("attn.qkv.bias"), &[128], b + 2, 64.0, 0.0);
        bf16(&mut tensors, p("attn.sinks"), &[4], b + 3, 8.0, 0.0);
        bf16(&mut tensors, p("attn.out.weight"), &[64, 64], b + 4, 128.0, 0.0);
        bf16(&mut tensors, p("attn.out.bias"), &[64], b + 5, 64.0, 0.0);
        bf16(&mut tensors, p("mlp.norm.scale"), &[64], b + 6, 64.0, 1.0);
        bf16(&mut tensors, p("mlp.gate.weight"), &[8, 64], b + 7, 32.0, 0.0);
        bf16(&mut tensors, p("mlp.gate.bias"), &[8], b + 8, 32.0, 0.0);
        bf16(&mut tensors, p("mlp.mlp1_bias"), &[8, 128], b + 11, 16.0, 0.0);
        bf16(&mut tensors, p("mlp.mlp2_bias"), &[8, 64], b + 14, 64.0, 0.0);
        tensors
            .push((TensorSpec::new(p("mlp.mlp1_weight.blocks"), DType::U8, &[8, 128, 2, 16]), Gen::Byte { t: b + 9 }));
        tensors.push((
            TensorSpec::new(p("mlp.mlp1_weight.scales"), DType::U8, &[8, 128, 2]),
            Gen::Scale { t: b + 10, base: 123 },
        ));
        tensors
            .push((TensorSpec::new(p("mlp.mlp2_weight.blocks"), DType::U8, &[8, 64, 2, 16]), Gen::Byte { t: b + 12 }));
        tensors.push((
            TensorSpec::new(p("mlp.mlp2_weight.scales"), DType::U8, &[8, 64, 2]),
            Gen::Scale { t: b + 13, base: 120 },
        ));
    }
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    write_safetensors(&dir.join("model.safetensors"), &specs, &BTreeMap::new(), |i, w| {
        let (spec, gen) = &tensors[i];
        let n = spec.shape.iter().product::<usize>() as u32;
        let bytes: Vec<u8> = match *gen {
            Gen::Val { t, den, off } => (0..n).flat_map(|i| f32_to_bf16(val(t, i, den, off)).to_le_bytes()).collect(),
            Gen::Byte { t } => (0..n).map(|i| (h(t, i) & 0xff) as u8).collect(),
            Gen::Scale { t, base } => (0..n).map(|i| base + (h(t, i) % 3) as u8).collect(),
        };
        w.write_all(&bytes)
    })
    .unwrap();
    let config = serde_json::json!({
        "num_hidden_layers": 2, "num_experts": 8, "experts_per_token": 2, "vocab_size": 32,
        "hidden_size": 64, "intermediate_size": 64, "swiglu_limit": 7.0, "head_dim": 16,
        "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 4,
        "initial_context_length": 4096, "rope_theta": 150000.0, "rope_scaling_factor": 32.0,
        "rope_ntk_alpha": 1.0, "rope_ntk_beta": 32.0
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

const TOKENS: [u32; 10] = [1, 5, 9, 13, 17, 21, 25, 29, 3, 7];

/// Traced intermediates by (name, layer).
type Traced = HashMap<(String, Option<usize>), Vec<f32>>;

/// Runs the model; returns the logits `[10, 32]` and every traced intermediate.
fn run() -> (Vec<Vec<f32>>, Traced) {
    let dir = tempfile::tempdir().unwrap();
    write_hash_model(dir.path());
    // The spec's checkpoints are float32 math: the reference kernels.
    let mut model = Model::load(dir.path()).unwrap();
    model.set_kernels(gptoss_kernels::Kernels::scalar());
    let mut cache = KvCache::new(&model.config, 64);
    let seq = cache.add_sequence();
    let mut traced = HashMap::new();
    let logits = model
        .forward_traced(
            &mut cache,
            &[SeqChunk { seq, tokens: &TOKENS, logits: LogitsRequest::All }],
            &mut |name, layer, data| {
                traced.insert((name.to_string(), layer), data.to_vec());
            },
        )
        .unwrap();
    ((0..10).map(|i| logits.row(i).to_vec()).collect(), traced)
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, expected {w}\n got {got:?}");
    }
}

#[test]
fn hash_generator_check_values() {
    assert_eq!((h(1, 0), h(1, 1), h(109, 0), h(110, 0)), (2977703481, 105632473, 1892088022, 1443556793));
    let emb: Vec<f32> = (0..4).map(|i| val(1, i, 16.0, 0.0)).collect();
    assert_eq!(emb, [0.6875, -0.9375, -0.5625, -0.0625]);
    assert_eq!((0..4).map(|i| val(103, i, 8.0, 0.0)).collect::<Vec<_>>(), [0.0, 0.25, 2.0, 0.375]);
}

#[test]
fn logits_match_the_spec() {
    let (logits, _) = run();
    let argmax: Vec<usize> = logits.iter().map(|l| gptoss_engine::sampler::argmax(l) as usize).collect();
    assert_eq!(argmax, [0, 24, 30, 19, 13, 6, 1, 17, 23, 28]);
    let sums: Vec<f32> = logits.iter().map(|l| l.iter().sum()).collect();
    close(
        &sums,
        &[5.01637, -4.28643, 3.11257, 14.87411, -11.02984, 2.10807, 9.87325, -20.92802, 25.68854, -6.4456],
        2e-4,
        "logit sums",
    );
    close(
        &logits[0][..8],
        &[3.77206, -3.55658, 0.23615, -0.26451, 1.84734, 3.7369, 3.20619, 2.65101],
        1e-4,
        "logits[0]",
    );
    close(
        &logits[9],
        &[
            -2.07879, 2.54092, 0.96384, 3.23832, -0.47562, -7.36001, -3.75546, -1.27978, -2.60899, -0.70262, 0.3417,
            0.78285, -0.78822, -1.47152, 1.57213, -0.57334, -3.1491, -2.79587, -4.02964, 2.79021, 3.58419, 4.38753,
            4.16071, 0.26043, -0.04712, -2.80051, 1.48166, -1.46866, 6.00893, 1.2967, -1.62561, -2.84488,
        ],
        1e-4,
        "logits[9]",
    );
}

#[test]
fn residual_stream_checkpoints_match_the_spec() {
    let (_, traced) = run();
    let first4 = |name: &str, layer: usize, tok: usize| {
        traced[&(name.to_string(), Some(layer))][tok * 64..tok * 64 + 4].to_vec()
    };
    let cases: [(&str, usize, [f32; 4], [f32; 4]); 4] = [
        ("attn_residual", 0, [0.675054, 0.643309, 0.129425, 0.161811], [0.859984, 0.149882, 0.036681, 0.138841]),
        ("moe_residual", 0, [-2.475845, 3.080401, 2.937434, -1.8172], [-2.527807, 2.372975, -1.963043, 3.699308]),
        ("attn_residual", 1, [-1.937629, 2.675422, 3.173847, -1.110403], [-2.222789, 2.549181, -2.188225, 4.167008]),
        ("moe_residual", 1, [-10.14587, 8.450836, 3.852249, -2.61056], [-4.096966, 2.789406, 3.040513, 8.333276]),
    ];
    for (name, layer, tok0, tok9) in cases {
        close(&first4(name, layer, 0), &tok0, 2e-5, &format!("{name} layer {layer} token 0"));
        close(&first4(name, layer, 9), &tok9, 2e-5, &format!("{name} layer {layer} token 9"));
    }
}

#[test]
fn router_selects_the_spec_experts() {
    let (_, traced) = run();
    let router = |l: usize| traced[&("router_logits".to_string(), Some(l))].clone();
    close(
        &router(0)[..8],
        &[1.13501, 2.03232, -0.81415, -2.99364, 2.50707, 1.77017, 4.21216, 3.11812],
        1e-4,
        "layer 0 router",
    );
    close(
        &router(1)[..8],
        &[2.628, 2.49909, 1.38133, 0.50813, 1.18541, -1.11036, -4.3728, 2.46542],
        1e-4,
        "layer 1 router",
    );
    let expected: [[[usize; 2]; 10]; 2] = [
        [[6, 7], [4, 7], [6, 1], [7, 6], [4, 7], [3, 2], [4, 6], [0, 3], [7, 3], [3, 4]],
        [[0, 1], [0, 2], [6, 0], [7, 5], [0, 4], [6, 3], [0, 5], [5, 4], [2, 5], [5, 2]],
    ];
    for (l, want) in expected.iter().enumerate() {
        let logits = router(l);
        for (t, pair) in want.iter().enumerate() {
            let (mut e, mut w) = ([0usize; 2], [0f32; 2]);
            gptoss_kernels::scalar::router_top_k(&logits[t * 8..(t + 1) * 8], &mut e, &mut w);
            assert_eq!(&e, pair, "layer {l} token {t}");
            if (l, t) == (0, 0) {
                close(&w, &[0.749142, 0.250858], 1e-5, "layer 0 token 0 routing weights");
            }
        }
    }
}

#[test]
fn incremental_decoding_matches_the_full_pass() {
    // Token by token through the cache (window 4 is crossed at position 4).
    let (full, _) = run();
    let dir = tempfile::tempdir().unwrap();
    write_hash_model(dir.path());
    // The spec's checkpoints are float32 math: the reference kernels.
    let mut model = Model::load(dir.path()).unwrap();
    model.set_kernels(gptoss_kernels::Kernels::scalar());
    let mut cache = KvCache::new(&model.config, 64);
    let seq = cache.add_sequence();
    for (i, tok) in TOKENS.iter().enumerate() {
        let l = model
            .forward(&mut cache, &[SeqChunk { seq, tokens: std::slice::from_ref(tok), logits: LogitsRequest::Last }])
            .unwrap();
        assert_eq!(l.rows[0].position, i);
        assert!(l.row(0).iter().zip(&full[i]).all(|(a, b)| a.to_bits() == b.to_bits()), "position {i}");
    }
}

//! `bench --profile`'s per-stage work: the weight bytes each stage reads per decoded token
//! and the floating-point operations per prompt token, against the model's shapes.

mod common;

use common::tiny;
use gptoss_engine::profile::{stage_flops, Stage};
use gptoss_engine::Model;

#[test]
fn stage_bytes_follow_the_shapes_and_add_up() {
    let model = Model::load(&tiny("hf")).unwrap();
    let c = &model.config;
    let (h, i, v, k, l) = (c.hidden_size, c.intermediate_size, c.vocab_size, c.experts_per_token, c.num_layers);
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    let bytes = model.weights.stage_bytes(k);
    let of = |s: Stage| bytes.iter().find(|b| b.0 == s).map(|b| b.1 as usize).unwrap();
    // bf16 matrices, f32 biases; MXFP4 experts: half a byte per weight, a scale per 32.
    assert_eq!(of(Stage::Qkv), l * ((qd + 2 * kvd) * h * 2 + 4 * (qd + 2 * kvd)));
    assert_eq!(of(Stage::AttnOut), l * (h * qd * 2 + 4 * h));
    assert_eq!(of(Stage::Unembedding), v * h * 2);
    assert_eq!(of(Stage::Embedding), h * 2);
    let mxfp4 = |rows: usize, cols: usize| rows * cols / 2 + rows * cols / 32 + 4 * rows;
    assert_eq!(of(Stage::GateUp), l * k * mxfp4(2 * i, h));
    assert_eq!(of(Stage::Down), l * k * mxfp4(h, i));
    let total: u64 = bytes.iter().map(|b| b.1).sum();
    assert_eq!(total, model.weights.bytes_per_token(k));
    // The config's estimate counts biases as bf16; the loaded model holds them as f32.
    let estimate = c.bytes_read_per_token();
    assert!(total > estimate && total < estimate + estimate / 20, "{total} vs {estimate}");
}

#[test]
fn stage_flops_count_the_matmuls_and_the_keys_each_position_sees() {
    let model = Model::load(&tiny("hf")).unwrap();
    let c = &model.config;
    let (h, i, k, l) = (c.hidden_size as f64, c.intermediate_size as f64, c.experts_per_token as f64, c.num_layers);
    assert_eq!(stage_flops(c, Stage::Down, 7), l as f64 * k * 2.0 * h * i);
    assert_eq!(stage_flops(c, Stage::GateUp, 7), 2.0 * stage_flops(c, Stage::Down, 7));
    assert_eq!(stage_flops(c, Stage::Unembedding, 4), 2.0 * (c.vocab_size as f64) * h / 4.0);
    assert_eq!(stage_flops(c, Stage::Swiglu, 7), 0.0);
    // One token sees one key in every layer; a long prompt's sliding layers see at most
    // the window, its full ones half the prompt on average.
    let per_key = 4.0 * (c.num_heads * c.head_dim) as f64;
    assert_eq!(stage_flops(c, Stage::Attention, 1), per_key * l as f64);
    let n = 4 * c.sliding_window;
    let full = (0..l).filter(|&x| c.window(x).is_none()).count() as f64;
    let sliding = l as f64 - full;
    // Position p sees min(p + 1, W) keys in a sliding layer: a triangle, then W each.
    let w = c.sliding_window as f64;
    let sliding_mean = (w * (w + 1.0) / 2.0 + (n as f64 - w) * w) / n as f64;
    let want = per_key * (full * (n + 1) as f64 / 2.0 + sliding * sliding_mean);
    let got = stage_flops(c, Stage::Attention, n);
    assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
}

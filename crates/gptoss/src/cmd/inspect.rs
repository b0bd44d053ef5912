//! `gptoss inspect`: what a checkpoint is and what running it costs.

use std::path::Path;

use anyhow::Result;

use super::{human_bytes, human_count};
use gptoss_engine::checkpoint::Checkpoint;
use gptoss_engine::weights::ModelWeights;

pub fn run(path: &Path, json: bool) -> Result<()> {
    let ck = Checkpoint::open(path)?;
    // Loading the weights checks every tensor's presence, dtype and shape.
    let complete = ModelWeights::load(&ck).map(|_| ());
    let c = &ck.config;
    let params = c.param_counts();
    let (kv_per_token, kv_sliding) = c.kv_bytes();
    let files: Vec<String> = ck.files.iter().map(|f| f.path.display().to_string()).collect();
    let sliding: Vec<usize> = (0..c.num_layers).filter(|&l| c.sliding_layers[l]).collect();
    if json {
        let v = serde_json::json!({
            "path": ck.dir.display().to_string(),
            "layout": ck.layout.name(),
            "files": files,
            "complete": complete.is_ok(),
            "problem": complete.as_ref().err().map(|e| e.to_string()),
            "config": {
                "num_layers": c.num_layers, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
                "head_dim": c.head_dim, "num_heads": c.num_heads, "num_kv_heads": c.num_kv_heads,
                "num_experts": c.num_experts, "experts_per_token": c.experts_per_token, "vocab_size": c.vocab_size,
                "sliding_window": c.sliding_window, "sliding_layers": sliding, "max_context": c.max_context,
                "rope_theta": c.rope_theta, "rope_factor": c.rope_factor, "rope_original_context": c.rope_original_context,
                "rope_beta_fast": c.rope_beta_fast, "rope_beta_slow": c.rope_beta_slow, "swiglu_limit": c.swiglu_limit,
            },
            "params_total": params.total,
            "params_active": params.active,
            "bytes_on_disk": ck.bytes_on_disk(),
            "weights_bytes": ck.tensor_data_bytes(),
            "bytes_read_per_token": c.bytes_read_per_token(),
            "kv_bytes_per_1k_tokens": kv_per_token * 1000,
            "kv_bytes_fixed_per_sequence": kv_sliding,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let pattern = if sliding.iter().copied().eq((0..c.num_layers).step_by(2)) {
            "even layers".to_string()
        } else {
            format!("layers {sliding:?}")
        };
        println!("checkpoint   {} ({} layout)", ck.dir.display(), ck.layout.name());
        println!("files        {} safetensors file(s), {} on disk", files.len(), human_bytes(ck.bytes_on_disk()));
        for f in &files {
            println!("             {f}");
        }
        match &complete {
            Ok(()) => println!("tensors      all present, dtypes and shapes match the config"),
            Err(e) => println!("tensors      PROBLEM: {e}"),
        }
        println!(
            "config       {} layers, hidden {}, {} query / {} kv heads x {}, {} experts (top {}) x {}, vocab {}",
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.num_experts,
            c.experts_per_token,
            c.intermediate_size,
            c.vocab_size
        );
        println!(
            "attention    window {} on {pattern}, full elsewhere; context {}; YaRN x{} over {} (theta {}, beta {}/{})",
            c.sliding_window,
            c.max_context,
            c.rope_factor,
            c.rope_original_context,
            c.rope_theta,
            c.rope_beta_fast,
            c.rope_beta_slow
        );
        println!(
            "parameters   {} total, {} active per token (embedding table excluded)",
            human_count(params.total),
            human_count(params.active)
        );
        println!("weights      {} memory-mapped (MXFP4 experts stay packed)", human_bytes(ck.tensor_data_bytes()));
        println!("per token    {} of weights read per generated token", human_bytes(c.bytes_read_per_token()));
        println!(
            "KV cache     {} per 1k tokens (full-attention layers, f32) + {} per sequence (sliding layers)",
            human_bytes(kv_per_token * 1000),
            human_bytes(kv_sliding)
        );
    }
    complete.map_err(Into::into)
}

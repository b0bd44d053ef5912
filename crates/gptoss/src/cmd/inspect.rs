//! `gptoss inspect`: what a checkpoint (folder or GGUF file) is and what running it costs.

use std::path::Path;

use anyhow::Result;

use super::{human_bytes, human_count};
use gptoss_engine::checkpoint::Checkpoint;
use gptoss_engine::weights::ModelWeights;

/// `ctx`: the context the GPU section checks the model against, with one sequence.
pub fn run(path: &Path, json: bool, ctx: usize) -> Result<()> {
    let ck = Checkpoint::open(path)?;
    // Loading the weights checks every tensor's presence, dtype and shape.
    let loaded = ModelWeights::load(&ck);
    // How each class of matrix is held and what a generated token reads, as loaded.
    let (formats, bytes_per_token) = match &loaded {
        Ok(w) => (w.formats(), w.bytes_per_token(ck.config.experts_per_token)),
        Err(_) => (Vec::new(), ck.config.bytes_read_per_token()),
    };
    let complete = loaded.map(|_| ());
    let c = &ck.config;
    let params = c.param_counts();
    let (kv_per_token, kv_sliding) = c.kv_bytes();
    let files: Vec<String> = ck
        .files
        .iter()
        .map(|f| f.path.display().to_string())
        .chain(ck.gguf.iter().flat_map(|g| g.files.iter().map(|f| f.path.display().to_string())))
        .collect();
    // GGUF: its version, the tensor types it holds and what had to be rounded to bf16
    // (known once the weights are loaded above).
    let gguf = ck.gguf.as_ref().map(|g| {
        let types: Vec<(String, usize)> =
            g.type_counts().into_iter().map(|(t, n)| (t.name().unwrap_or("unknown").to_string(), n)).collect();
        let rounded: Vec<(String, String, usize, usize)> = g
            .rounded_tensors()
            .into_iter()
            .map(|(name, r)| (name, r.ty.name().unwrap_or("unknown").to_string(), r.changed, r.total))
            .collect();
        (g.meta().version, g.meta().alignment, g.tensor_count(), types, rounded)
    });
    let sliding: Vec<usize> = (0..c.num_layers).filter(|&l| c.sliding_layers[l]).collect();
    let gpus = gptoss_cuda::devices();
    let gpu_ctx = ctx.min(c.max_context);
    let needs = gptoss_cuda::memory_needs(c, gpu_ctx, 1);
    if json {
        let v = serde_json::json!({
            "path": ck.dir.display().to_string(),
            "layout": ck.layout.name(),
            "files": files,
            "gguf": gguf.as_ref().map(|(version, alignment, count, types, rounded)| serde_json::json!({
                "version": version,
                "alignment": alignment,
                "tensors": count,
                "tensor_types": types.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "rounded_to_bf16": rounded.iter().map(|(name, ty, changed, total)| serde_json::json!({
                    "tensor": name, "type": ty, "values_changed": changed, "values": total,
                })).collect::<Vec<_>>(),
            })),
            "complete": complete.is_ok(),
            "formats": formats.iter().map(|(class, format, bits)| serde_json::json!({
                "tensors": class, "format": format, "bits_per_weight": bits,
            })).collect::<Vec<_>>(),
            "bytes_per_token": bytes_per_token,
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
            "gpus": gpus.iter().map(|g| serde_json::json!({
                "ordinal": g.ordinal,
                "name": g.name,
                "compute_capability": format!("{}.{}", g.compute_capability.0, g.compute_capability.1),
                "free_bytes": g.free_bytes,
                "total_bytes": g.total_bytes,
                "context": gpu_ctx,
                "sequences": 1,
                "needs_bytes": {
                    "weights": needs.weights, "kv": needs.kv, "buffers": needs.buffers, "total": needs.total(),
                },
                "fits": g.free_bytes >= needs.total(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let pattern = if sliding.iter().copied().eq((0..c.num_layers).step_by(2)) {
            "even layers".to_string()
        } else {
            format!("layers {sliding:?}")
        };
        println!("checkpoint   {} ({} layout)", ck.dir.display(), ck.layout.name());
        match &gguf {
            None => {
                println!(
                    "files        {} safetensors file(s), {} on disk",
                    files.len(),
                    human_bytes(ck.bytes_on_disk())
                );
                for f in &files {
                    println!("             {f}");
                }
            }
            Some((version, alignment, count, types, _)) => {
                let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
                println!("file         {}, {} on disk", files.join(", "), human_bytes(ck.bytes_on_disk()));
                println!(
                    "gguf         version {version}, alignment {alignment}, {count} tensors: {}",
                    types.join(", ")
                );
            }
        }
        match &complete {
            Ok(()) => println!("tensors      all present, dtypes and shapes match the config"),
            Err(e) => println!("tensors      PROBLEM: {e}"),
        }
        if let Some((_, _, _, _, rounded)) = &gguf {
            if rounded.is_empty() && complete.is_ok() {
                println!("exactness    every weight is used exactly as stored");
            }
            for (name, ty, changed, total) in rounded {
                println!("rounded      {name} ({ty}): {changed} of {total} values rounded to bf16");
            }
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
        if gguf.is_some() {
            println!(
                "weights      {} in the file (MXFP4 experts re-laid into memory at load, still packed)",
                human_bytes(ck.tensor_data_bytes())
            );
        } else {
            println!("weights      {} memory-mapped (MXFP4 experts stay packed)", human_bytes(ck.tensor_data_bytes()));
        }
        for (i, (class, format, bits)) in formats.iter().enumerate() {
            let label = if i == 0 { "formats" } else { "" };
            println!("{label:<12} {class}: {format} ({bits:.2} bits/weight)");
        }
        println!("per token    {} of weights read per generated token", human_bytes(bytes_per_token));
        println!(
            "KV cache     {} per 1k tokens (full-attention layers, f32) + {} per sequence (sliding layers)",
            human_bytes(kv_per_token * 1000),
            human_bytes(kv_sliding)
        );
        if gpus.is_empty() {
            println!("GPUs         {}", super::NO_GPU);
        } else {
            println!("GPUs         the model needs {}", super::needs_text(&needs, gpu_ctx, 1));
        }
        for g in &gpus {
            let fits = if g.free_bytes >= needs.total() { "fits" } else { "does not fit" };
            println!(
                "             cuda:{} {}, compute {}.{}, {} free of {}: {fits}",
                g.ordinal,
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                human_bytes(g.free_bytes),
                human_bytes(g.total_bytes)
            );
        }
    }
    complete.map_err(Into::into)
}

//! Random-weight checkpoints with the real tensor names, shapes, dtypes and config of a
//! gpt-oss shape, in either layout, for benchmarks and large-shape tests. Written shard by
//! shard and tensor by tensor, so memory use stays at one buffer whatever the size.
//!
//! Values are scaled so activations stay in the range a trained model sees (unit-variance
//! inputs to every matmul), which keeps the forward pass free of overflow; the text they
//! produce is meaningless.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use gptoss_kernels::bf16::f32_to_bf16;
use gptoss_kernels::mxfp4;

use crate::checkpoint::{LayerTensor, TensorNames};
use crate::config::{Layout, ModelConfig};
use crate::rng::Rng;
use crate::safetensors::{write_safetensors, DType, TensorSpec};

/// Shards are cut at about this size, like the published checkpoints.
const SHARD_BYTES: usize = 4 << 30;

/// How a tensor's bytes are drawn.
#[derive(Clone, Copy, Debug)]
enum Fill {
    /// bf16 uniform in [center - half_width, center + half_width].
    Uniform { center: f32, half_width: f32 },
    /// Random MXFP4 code bytes.
    Codes,
    /// E8M0 scales in base..base+3.
    Scales { base: u8 },
}

pub struct SynthSummary {
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    pub tensors: usize,
}

/// Writes `config.json` and the tensors of `cfg` in `layout` into `out` (created if needed).
/// `progress(bytes_written, bytes_total)` is called after every tensor.
pub fn write_checkpoint(
    cfg: &ModelConfig,
    layout: Layout,
    out: &Path,
    seed: u64,
    progress: impl FnMut(u64, u64),
) -> io::Result<SynthSummary> {
    if matches!(layout, Layout::Gguf | Layout::Mlx) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("synth writes the Hugging Face and original layouts only, not {}", layout.name()),
        ));
    }
    let config = match layout {
        Layout::HuggingFace | Layout::Mlx | Layout::Gguf => cfg.to_hf_json(),
        Layout::Original => cfg.to_original_json(),
    };
    write_plan(layout, tensor_plan(cfg, layout), config, out, seed, progress)
}

/// An MLX conversion of `cfg` as mlx-lm's `convert -q` writes it (mlx-community's
/// `MXFP4-Q4` with `dense_bits` 4, `MXFP4-Q8` with 8): experts MXFP4, gate and up apart;
/// attention, embedding and unembedding affine `dense_bits`-bit in groups of 64; routers
/// affine 8-bit; bf16 scales and zero points drawn so weights span the bf16 checkpoint's range.
pub fn write_mlx_checkpoint(
    cfg: &ModelConfig,
    dense_bits: u32,
    out: &Path,
    seed: u64,
    progress: impl FnMut(u64, u64),
) -> io::Result<SynthSummary> {
    if !matches!(dense_bits, 4 | 8) {
        return Err(io::Error::new(io::ErrorKind::Unsupported, format!("MLX dense bits {dense_bits}: 4 or 8")));
    }
    let (tensors, quantization) = mlx_plan(cfg, dense_bits);
    let mut config = cfg.to_hf_json();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("quantization".into(), quantization.clone());
        obj.insert("quantization_config".into(), quantization);
    }
    write_plan(Layout::Mlx, tensors, config, out, seed, progress)
}

/// Writes `config` and `tensors` in shards of about [`SHARD_BYTES`], named as `layout`'s
/// published files are, with the index file where that layout has one.
fn write_plan(
    layout: Layout,
    tensors: Vec<(TensorSpec, Fill)>,
    config: serde_json::Value,
    out: &Path,
    seed: u64,
    mut progress: impl FnMut(u64, u64),
) -> io::Result<SynthSummary> {
    std::fs::create_dir_all(out)?;
    let total: u64 = tensors.iter().map(|(s, _)| s.byte_len() as u64).sum();

    // Pack tensors into shards in order.
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0;
    for (i, (spec, _)) in tensors.iter().enumerate() {
        if size > 0 && size + spec.byte_len() > SHARD_BYTES {
            shards.push(vec![]);
            size = 0;
        }
        shards.last_mut().expect("one shard").push(i);
        size += spec.byte_len();
    }
    let n = shards.len();
    let shard_name = |s: usize| match (layout, n) {
        (Layout::Original, 1) => "model.safetensors".to_string(),
        // The published original/ shards have a double dash.
        (Layout::Original, _) => format!("model--{:05}-of-{:05}.safetensors", s + 1, n),
        (Layout::HuggingFace | Layout::Mlx | Layout::Gguf, 1) => "model.safetensors".to_string(),
        // mlx-lm counts its shards from 1.
        (Layout::Mlx, _) => format!("model-{:05}-of-{:05}.safetensors", s + 1, n),
        // The published HF shards count from 0 and name the last index, not the count.
        (Layout::HuggingFace | Layout::Gguf, _) => format!("model-{:05}-of-{:05}.safetensors", s, n - 1),
    };

    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config)? + "\n")?;

    let mut written = 0u64;
    let mut files = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut buf = Vec::new();
    for (s, members) in shards.iter().enumerate() {
        let path = out.join(shard_name(s));
        let specs: Vec<TensorSpec> = members.iter().map(|&i| tensors[i].0.clone()).collect();
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        write_safetensors(&path, &specs, &metadata, |j, w| {
            let (spec, fill) = &tensors[members[j]];
            // Each tensor has its own stream, so any shard can be rebuilt alone.
            let mut rng = Rng::new(seed ^ hash_name(&spec.name));
            fill_tensor(spec, *fill, &mut rng, &mut buf, w)?;
            written += spec.byte_len() as u64;
            progress(written, total);
            Ok(())
        })?;
        for spec in &specs {
            weight_map.insert(spec.name.clone(), shard_name(s));
        }
        files.push(path);
    }
    if (layout == Layout::HuggingFace && n > 1) || layout == Layout::Mlx {
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        std::fs::write(out.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index)? + "\n")?;
    }
    if layout == Layout::Original {
        let dtypes: BTreeMap<&str, &str> = tensors
            .iter()
            .map(|(s, f)| {
                (
                    s.name.as_str(),
                    match f {
                        Fill::Codes => "FP4",
                        Fill::Scales { .. } => "UE8",
                        Fill::Uniform { .. } => "BF16",
                    },
                )
            })
            .collect();
        std::fs::write(out.join("dtypes.json"), serde_json::to_string_pretty(&dtypes)? + "\n")?;
    }
    Ok(SynthSummary { files, bytes: total, tensors: tensors.len() })
}

/// The tensors of an MLX conversion (see [`write_mlx_checkpoint`]) and its `quantization`.
fn mlx_plan(cfg: &ModelConfig, dense_bits: u32) -> (Vec<(TensorSpec, Fill)>, serde_json::Value) {
    let (h, i, e, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.vocab_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let gain = Fill::Uniform { center: 1.0, half_width: 0.05 };
    let bias = Fill::Uniform { center: 0.0, half_width: 0.02 };
    let scales = |fan_in: usize| {
        let target = 1.0 / (2.93 * (fan_in as f64).sqrt());
        Fill::Scales { base: (127.0 + target.log2().floor() - 2.0) as u8 }
    };
    let spec = |name: String, dtype, shape: &[usize], f: Fill| (TensorSpec::new(name, dtype, shape), f);
    let mut quant = serde_json::Map::new();
    quant.insert("group_size".into(), 32.into());
    quant.insert("bits".into(), 4.into());
    quant.insert("mode".into(), "mxfp4".into());
    let mut t = Vec::new();
    // Affine `bits`-bit, group 64: w = s·q + b spans ±sqrt(3/fan_in) like the bf16 weights.
    let mut affine =
        |t: &mut Vec<(TensorSpec, Fill)>, module: String, rows: &[usize], cols: usize, bits: u32, mode: bool| {
            let half = (3.0 / cols as f32).sqrt();
            let step = 2.0 * half / ((1u32 << bits) - 1) as f32;
            let lead = &rows[..rows.len() - 1];
            let shape = |last: usize| [lead, &[rows[rows.len() - 1], last]].concat();
            t.push(spec(format!("{module}.weight"), DType::U32, &shape(cols * bits as usize / 32), Fill::Codes));
            t.push(spec(
                format!("{module}.scales"),
                DType::BF16,
                &shape(cols / 64),
                Fill::Uniform { center: step, half_width: 0.0 },
            ));
            t.push(spec(
                format!("{module}.biases"),
                DType::BF16,
                &shape(cols / 64),
                Fill::Uniform { center: -half, half_width: 0.0 },
            ));
            let mut entry = serde_json::json!({"group_size": 64, "bits": bits});
            if mode {
                entry["mode"] = "affine".into();
            }
            quant.insert(module, entry);
        };
    affine(&mut t, "model.embed_tokens".into(), &[v], h, dense_bits, true);
    for l in 0..cfg.num_layers {
        let m = |s: &str| format!("model.layers.{l}.{s}");
        t.push(spec(m("input_layernorm.weight"), DType::BF16, &[h], gain));
        for (p, rows, cols) in [("q_proj", qd, h), ("k_proj", kvd, h), ("v_proj", kvd, h), ("o_proj", h, qd)] {
            affine(&mut t, m(&format!("self_attn.{p}")), &[rows], cols, dense_bits, true);
            t.push(spec(m(&format!("self_attn.{p}.bias")), DType::BF16, &[rows], bias));
        }
        t.push(spec(
            m("self_attn.sinks"),
            DType::BF16,
            &[cfg.num_heads],
            Fill::Uniform { center: 0.0, half_width: 1.0 },
        ));
        t.push(spec(m("post_attention_layernorm.weight"), DType::BF16, &[h], gain));
        affine(&mut t, m("mlp.router"), &[e], h, 8, false);
        t.push(spec(m("mlp.router.bias"), DType::BF16, &[e], Fill::Uniform { center: 0.0, half_width: 0.1 }));
        for (p, rows, cols) in [("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)] {
            let module = m(&format!("mlp.experts.{p}"));
            t.push(spec(format!("{module}.weight"), DType::U32, &[e, rows, cols / 8], Fill::Codes));
            t.push(spec(format!("{module}.scales"), DType::U8, &[e, rows, cols / 32], scales(cols)));
            t.push(spec(format!("{module}.bias"), DType::BF16, &[e, rows], bias));
        }
    }
    t.push(spec("model.norm.weight".into(), DType::BF16, &[h], gain));
    affine(&mut t, "lm_head".into(), &[v], h, dense_bits, true);
    (t, serde_json::Value::Object(quant))
}

/// Every tensor of the checkpoint, in file order, with how to fill it.
fn tensor_plan(cfg: &ModelConfig, layout: Layout) -> Vec<(TensorSpec, Fill)> {
    use LayerTensor::*;
    let names = TensorNames { layout };
    let (h, i, e, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.vocab_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    // Unit-variance outputs for unit-variance inputs: uniform ±sqrt(3/fan_in).
    let dense = |fan_in: usize| Fill::Uniform { center: 0.0, half_width: (3.0 / fan_in as f32).sqrt() };
    let gain = Fill::Uniform { center: 1.0, half_width: 0.1 };
    let bias = Fill::Uniform { center: 0.0, half_width: 0.02 };
    // MXFP4 codes have an RMS of about 2.93; pick the scale so weights have RMS ~1/sqrt(fan_in).
    let scales = |fan_in: usize| {
        let target = 1.0 / (2.93 * (fan_in as f64).sqrt());
        Fill::Scales { base: (127.0 + target.log2().floor() - 2.0) as u8 }
    };
    let bf16 = |name: String, shape: &[usize], f: Fill| (TensorSpec::new(name, DType::BF16, shape), f);
    let u8t = |name: String, shape: &[usize], f: Fill| (TensorSpec::new(name, DType::U8, shape), f);

    let mut t = vec![bf16(names.embedding().into(), &[v, h], Fill::Uniform { center: 0.0, half_width: 1.0 })];
    for l in 0..cfg.num_layers {
        let n = |x| names.layer(l, x);
        t.push(bf16(n(AttnNorm), &[h], gain));
        match layout {
            Layout::HuggingFace | Layout::Mlx | Layout::Gguf => {
                t.push(bf16(n(QWeight), &[qd, h], dense(h)));
                t.push(bf16(n(QBias), &[qd], bias));
                t.push(bf16(n(KWeight), &[kvd, h], dense(h)));
                t.push(bf16(n(KBias), &[kvd], bias));
                t.push(bf16(n(VWeight), &[kvd, h], dense(h)));
                t.push(bf16(n(VBias), &[kvd], bias));
            }
            Layout::Original => {
                t.push(bf16(n(QkvWeight), &[qd + 2 * kvd, h], dense(h)));
                t.push(bf16(n(QkvBias), &[qd + 2 * kvd], bias));
            }
        }
        t.push(bf16(n(OutWeight), &[h, qd], dense(qd)));
        t.push(bf16(n(OutBias), &[h], bias));
        t.push(bf16(n(Sinks), &[cfg.num_heads], Fill::Uniform { center: 0.0, half_width: 1.0 }));
        t.push(bf16(n(MlpNorm), &[h], gain));
        t.push(bf16(n(RouterWeight), &[e, h], dense(h)));
        t.push(bf16(n(RouterBias), &[e], Fill::Uniform { center: 0.0, half_width: 0.1 }));
        t.push(u8t(n(GateUpBlocks), &[e, 2 * i, h / 32, 16], Fill::Codes));
        t.push(u8t(n(GateUpScales), &[e, 2 * i, h / 32], scales(h)));
        t.push(bf16(n(GateUpBias), &[e, 2 * i], bias));
        t.push(u8t(n(DownBlocks), &[e, h, i / 32, 16], Fill::Codes));
        t.push(u8t(n(DownScales), &[e, h, i / 32], scales(i)));
        t.push(bf16(n(DownBias), &[e, h], bias));
    }
    t.push(bf16(names.final_norm().into(), &[h], gain));
    t.push(bf16(names.unembedding().into(), &[v, h], dense(h)));
    debug_assert!(t.iter().all(|(s, f)| !matches!(f, Fill::Codes) || s.shape[3] == mxfp4::BLOCK_BYTES));
    t
}

fn fill_tensor(spec: &TensorSpec, fill: Fill, rng: &mut Rng, buf: &mut Vec<u8>, w: &mut dyn Write) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let mut left = spec.byte_len();
    while left > 0 {
        let n = left.min(CHUNK);
        buf.resize(n, 0);
        match fill {
            Fill::Codes => rng.fill_bytes(buf),
            Fill::Scales { base } => buf.iter_mut().for_each(|b| *b = base + (rng.next_u64() % 3) as u8),
            Fill::Uniform { center, half_width } => {
                for pair in buf.chunks_exact_mut(2) {
                    let r = (rng.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32); // [0, 1)
                    let x = center + half_width * (2.0 * r - 1.0);
                    pair.copy_from_slice(&f32_to_bf16(x).to_le_bytes());
                }
            }
        }
        w.write_all(buf)?;
        left -= n;
    }
    Ok(())
}

fn hash_name(name: &str) -> u64 {
    // FNV-1a: stable across runs and platforms.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(plan: &[(TensorSpec, Fill)], f: impl Fn(&Fill) -> bool) -> usize {
        plan.iter().filter(|(_, fill)| f(fill)).count()
    }

    #[test]
    fn plans_match_the_published_tensor_lists() {
        // original/dtypes.json of gpt-oss-20b: 267 BF16 + 48 FP4 + 48 UE8 (spec §1.3).
        let plan = tensor_plan(&ModelConfig::gpt_oss_20b(), Layout::Original);
        assert_eq!(count(&plan, |f| matches!(f, Fill::Uniform { .. })), 267);
        assert_eq!(count(&plan, |f| matches!(f, Fill::Codes)), 48);
        assert_eq!(count(&plan, |f| matches!(f, Fill::Scales { .. })), 48);
        // The HF layout splits qkv: 3 + 24 × 19 tensors.
        let hf = tensor_plan(&ModelConfig::gpt_oss_20b(), Layout::HuggingFace);
        assert_eq!(hf.len(), 459);
        let bytes = |p: &[(TensorSpec, Fill)]| p.iter().map(|(s, _)| s.byte_len() as u64).sum::<u64>();
        assert_eq!(bytes(&hf), bytes(&plan), "both layouts hold the same bytes");
        assert_eq!(format!("{:.2}", bytes(&hf) as f64 / 1e9), "13.76");
        let big = tensor_plan(&ModelConfig::gpt_oss_120b(), Layout::HuggingFace);
        assert_eq!(big.len(), 3 + 36 * 19);
        assert_eq!(format!("{:.1}", bytes(&big) as f64 / 1e9), "65.2");
    }
}

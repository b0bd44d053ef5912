//! The two `config.json` dialects (Hugging Face and OpenAI `original/`, spec §1.2–1.3) read
//! into one validated config with the derived shapes.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::LoadError;

/// Which dialect a config file was written in; it also decides the tensor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `model.layers.N.*`, split q/k/v, `*_blocks` / `*_scales` experts.
    HuggingFace,
    /// `block.N.*`, fused `attn.qkv`, `mlp1_weight.blocks` experts.
    Original,
    /// An mlx-lm conversion: the Hugging Face names and config, experts as
    /// `mlp.experts.{gate,up,down}_proj`, any module possibly quantized ([`crate::mlx`]).
    Mlx,
    /// One llama.cpp `.gguf` file: `blk.N.*`, config in its metadata, experts in ggml's
    /// MXFP4 blocks with gate and up split or concatenated (spec §1.5, §2.5, §3.5).
    Gguf,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::HuggingFace => "Hugging Face",
            Layout::Mlx => "MLX",
            Layout::Original => "OpenAI original",
            Layout::Gguf => "llama.cpp GGUF",
        }
    }

    /// The name a config field has in this dialect, given its Hugging Face name: errors
    /// name what the user can find in the file.
    pub fn field_name(self, hf: &'static str) -> &'static str {
        match self {
            Layout::HuggingFace | Layout::Mlx => hf,
            Layout::Original => match hf {
                "num_local_experts" => "num_experts",
                "num_experts_per_tok" => "experts_per_token",
                "rope_scaling.factor" => "rope_scaling_factor",
                "rope_scaling.beta_fast" => "rope_ntk_beta",
                "rope_scaling.beta_slow" => "rope_ntk_alpha",
                "rope_scaling.original_max_position_embeddings" => "initial_context_length",
                other => other,
            },
            Layout::Gguf => match hf {
                "num_hidden_layers" => "gpt-oss.block_count",
                "hidden_size" => "gpt-oss.embedding_length",
                "intermediate_size" => "gpt-oss.expert_feed_forward_length",
                "head_dim" => "gpt-oss.attention.key_length",
                "num_attention_heads" => "gpt-oss.attention.head_count",
                "num_key_value_heads" => "gpt-oss.attention.head_count_kv",
                "num_local_experts" => "gpt-oss.expert_count",
                "num_experts_per_tok" => "gpt-oss.expert_used_count",
                "vocab_size" => "token_embd.weight (rows)",
                "sliding_window" => "gpt-oss.attention.sliding_window",
                "rope_theta" => "gpt-oss.rope.freq_base",
                "rope_scaling.factor" => "gpt-oss.rope.scaling.factor",
                "rope_scaling.beta_fast" => "gpt-oss.rope.scaling.yarn_beta_fast",
                "rope_scaling.beta_slow" => "gpt-oss.rope.scaling.yarn_beta_slow",
                "rope_scaling.original_max_position_embeddings" => "gpt-oss.rope.scaling.original_context_length",
                "max_position_embeddings" => "gpt-oss.context_length",
                "rms_norm_eps" => "gpt-oss.attention.layer_norm_rms_epsilon",
                other => other,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub num_layers: usize,
    /// Residual width H (2880). Not num_heads·head_dim.
    pub hidden_size: usize,
    /// Per-expert intermediate width I (2880); gate_up is 2I wide.
    pub intermediate_size: usize,
    pub head_dim: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub num_experts: usize,
    pub experts_per_token: usize,
    pub vocab_size: usize,
    /// Keys a sliding layer sees, the current token included.
    pub sliding_window: usize,
    /// `[num_layers]`: true where the layer attends through the sliding window.
    pub sliding_layers: Vec<bool>,
    pub rope_theta: f64,
    /// YaRN factor; 1 disables YaRN.
    pub rope_factor: f64,
    pub rope_original_context: usize,
    pub rope_beta_fast: f64,
    pub rope_beta_slow: f64,
    /// Hugging Face's `truncate`; the published checkpoints (and OpenAI's code) use false.
    pub rope_truncate: bool,
    pub swiglu_limit: f32,
    pub rms_norm_eps: f32,
    pub max_context: usize,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The window of layer `l`, or None for full attention.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_layers[layer].then_some(self.sliding_window)
    }

    /// Parameters (MXFP4 weights counted as values) in the whole model and those a single
    /// token uses: its 4 experts of each layer and everything else but the embedding table.
    pub fn param_counts(&self) -> ParamCounts {
        let (h, i, e, v) = (self.hidden_size, self.intermediate_size, self.num_experts, self.vocab_size);
        let (qd, kvd) = (self.q_dim(), self.kv_dim());
        let attention = h + (qd + 2 * kvd) * (h + 1) + h * qd + h + self.num_heads;
        let router = h + e * h + e;
        let expert = 2 * i * h + 2 * i + h * i + h;
        let per_layer = attention + router + e * expert;
        let total = 2 * v * h + self.num_layers * per_layer + h;
        let active = total - v * h - self.num_layers * (e - self.experts_per_token) * expert;
        ParamCounts { total: total as u64, active: active as u64 }
    }

    /// Bytes of weights one generated token reads: bf16 attention, router and unembedding,
    /// and the MXFP4 codes, scales and bf16 biases of its experts in every layer.
    pub fn bytes_read_per_token(&self) -> u64 {
        let (h, i, e, k, v) =
            (self.hidden_size, self.intermediate_size, self.num_experts, self.experts_per_token, self.vocab_size);
        let (qd, kvd) = (self.q_dim(), self.kv_dim());
        let attention = 2 * ((qd + 2 * kvd) * (h + 1) + h * qd + h + self.num_heads + 2 * h);
        let router = 2 * (e * h + e);
        let mxfp4 = |rows: usize, cols: usize| rows * cols / 2 + rows * cols / 32 + 2 * rows;
        let experts = k * (mxfp4(2 * i, h) + mxfp4(h, i));
        let per_layer = attention + router + experts;
        (self.num_layers * per_layer + 2 * v * h + 2 * h + 2 * h) as u64
    }

    /// Bytes of f32 keys and values per token in the full-attention layers (which grow with
    /// the context) and per sequence in the sliding ones (fixed at the window).
    pub fn kv_bytes(&self) -> (u64, u64) {
        let per_layer_token = 2 * self.kv_dim() as u64 * 4;
        let full = self.sliding_layers.iter().filter(|s| !**s).count() as u64;
        let sliding = self.num_layers as u64 - full;
        (full * per_layer_token, sliding * per_layer_token * self.sliding_window as u64)
    }

    /// Reads `path` and decides the dialect from the keys present.
    pub fn from_file(path: &Path) -> Result<(Self, Layout), LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| LoadError::BadCheckpoint {
            path: path.into(),
            reason: format!("config is not valid JSON: {e}"),
        })?;
        Self::from_json(path, &value)
    }

    pub fn from_json(path: &Path, value: &Value) -> Result<(Self, Layout), LoadError> {
        let Some(obj) = value.as_object() else {
            return Err(LoadError::BadCheckpoint { path: path.into(), reason: "config is not a JSON object".into() });
        };
        let f = Fields { path, obj, prefix: "" };
        let (config, layout) = if obj.contains_key("num_experts") || obj.contains_key("rope_scaling_factor") {
            (Self::from_original(&f)?, Layout::Original)
        } else if obj.contains_key("num_local_experts")
            || obj.contains_key("model_type")
            || obj.contains_key("rope_scaling")
        {
            (Self::from_hf(&f)?, Layout::HuggingFace)
        } else {
            return Err(LoadError::BadCheckpoint {
                path: path.into(),
                reason: "config has neither Hugging Face (`num_local_experts`) nor original (`num_experts`) fields"
                    .into(),
            });
        };
        config.validate(path, layout)?;
        Ok((config, layout))
    }

    fn from_hf(f: &Fields) -> Result<Self, LoadError> {
        let num_layers = f.usize("num_hidden_layers")?;
        let experts_per_token = match (f.opt_usize("num_experts_per_tok")?, f.opt_usize("experts_per_token")?) {
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => return Err(f.missing("num_experts_per_tok")),
        };
        let sliding_layers = match f.obj.get("layer_types") {
            None | Some(Value::Null) => (0..num_layers).map(|l| l % 2 == 0).collect(),
            Some(Value::Array(types)) => {
                if types.len() != num_layers {
                    return Err(f.bad("layer_types", format!("has {} entries for {num_layers} layers", types.len())));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(f.bad("layer_types", format!("has unknown entry {t}"))),
                    })
                    .collect::<Result<_, _>>()?
            }
            Some(_) => return Err(f.bad("layer_types", "must be an array".into())),
        };
        let (rope_factor, rope_original_context, rope_beta_fast, rope_beta_slow, rope_truncate) = match f
            .obj
            .get("rope_scaling")
        {
            None | Some(Value::Null) => (1.0, f.opt_usize("initial_context_length")?.unwrap_or(4096), 32.0, 1.0, false),
            Some(Value::Object(rs)) => {
                let sub = Fields { path: f.path, obj: rs, prefix: "rope_scaling." };
                let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or("yarn");
                if kind != "yarn" {
                    return Err(sub.bad("rope_type", format!("is `{kind}`; gpt-oss uses `yarn`")));
                }
                let truncate = match rs.get("truncate") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(sub.bad("truncate", "must be a boolean".into())),
                };
                (
                    sub.f64("factor")?,
                    sub.usize("original_max_position_embeddings")?,
                    sub.f64("beta_fast")?,
                    sub.f64("beta_slow")?,
                    truncate,
                )
            }
            Some(_) => return Err(f.bad("rope_scaling", "must be an object".into())),
        };
        let max_context = match f.opt_usize("max_position_embeddings")? {
            Some(n) => n,
            None => (rope_original_context as f64 * rope_factor) as usize,
        };
        Ok(ModelConfig {
            num_layers,
            hidden_size: f.usize("hidden_size")?,
            intermediate_size: f.usize("intermediate_size")?,
            head_dim: f.usize("head_dim")?,
            num_heads: f.usize("num_attention_heads")?,
            num_kv_heads: f.usize("num_key_value_heads")?,
            num_experts: f.usize("num_local_experts")?,
            experts_per_token,
            vocab_size: f.usize("vocab_size")?,
            sliding_window: f.usize("sliding_window")?,
            sliding_layers,
            rope_theta: f.f64("rope_theta")?,
            rope_factor,
            rope_original_context,
            rope_beta_fast,
            rope_beta_slow,
            rope_truncate,
            swiglu_limit: f.f64("swiglu_limit")? as f32,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-5) as f32,
            max_context,
        })
    }

    fn from_original(f: &Fields) -> Result<Self, LoadError> {
        let num_layers = f.usize("num_hidden_layers")?;
        let rope_original_context = f.usize("initial_context_length")?;
        let rope_factor = f.f64("rope_scaling_factor")?;
        Ok(ModelConfig {
            num_layers,
            hidden_size: f.usize("hidden_size")?,
            intermediate_size: f.usize("intermediate_size")?,
            head_dim: f.usize("head_dim")?,
            num_heads: f.usize("num_attention_heads")?,
            num_kv_heads: f.usize("num_key_value_heads")?,
            num_experts: f.usize("num_experts")?,
            experts_per_token: f.usize("experts_per_token")?,
            vocab_size: f.usize("vocab_size")?,
            sliding_window: f.usize("sliding_window")?,
            // OpenAI's reference: `sliding_window if layer_idx % 2 == 0 else 0`.
            sliding_layers: (0..num_layers).map(|l| l % 2 == 0).collect(),
            rope_theta: f.f64("rope_theta")?,
            rope_factor,
            rope_original_context,
            // The original names are swapped relative to YaRN's: alpha is β_slow, beta is β_fast.
            rope_beta_fast: f.f64("rope_ntk_beta")?,
            rope_beta_slow: f.f64("rope_ntk_alpha")?,
            rope_truncate: false,
            swiglu_limit: f.f64("swiglu_limit")? as f32,
            rms_norm_eps: 1e-5,
            max_context: (rope_original_context as f64 * rope_factor.max(1.0)) as usize,
        })
    }

    // `!(x > 0.0)` on purpose: it also rejects NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub(crate) fn validate(&self, path: &Path, layout: Layout) -> Result<(), LoadError> {
        // Field names as the file spells them.
        let bad = |field: &'static str, problem: String| LoadError::BadField {
            path: path.into(),
            field: layout.field_name(field).into(),
            problem,
        };
        let (experts, per_token) = ("num_local_experts", "num_experts_per_tok");
        // Generous bounds that keep every derived size far from overflow.
        for (field, v, limit) in [
            ("num_hidden_layers", self.num_layers, 1 << 10),
            ("hidden_size", self.hidden_size, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 16),
            ("head_dim", self.head_dim, 1 << 12),
            ("num_attention_heads", self.num_heads, 1 << 12),
            ("num_key_value_heads", self.num_kv_heads, 1 << 12),
            (experts, self.num_experts, 1 << 12),
            (per_token, self.experts_per_token, 1 << 12),
            ("vocab_size", self.vocab_size, 1 << 22),
            ("sliding_window", self.sliding_window, 1 << 24),
        ] {
            if v == 0 || v > limit {
                return Err(bad(field, format!("is {v}; it must be between 1 and {limit}")));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "({}) does not divide {} ({})",
                    self.num_kv_heads,
                    layout.field_name("num_attention_heads"),
                    self.num_heads
                ),
            ));
        }
        if self.experts_per_token > self.num_experts {
            return Err(bad(
                per_token,
                format!("({}) exceeds the number of experts ({})", self.experts_per_token, self.num_experts),
            ));
        }
        for (field, v) in [("hidden_size", self.hidden_size), ("intermediate_size", self.intermediate_size)] {
            if v % 32 != 0 {
                return Err(bad(field, format!("({v}) is not a multiple of 32, the MXFP4 block size")));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad("head_dim", format!("({}) must be even for RoPE", self.head_dim)));
        }
        if !(self.rope_theta > 1.0) {
            return Err(bad("rope_theta", format!("is {}; it must be greater than 1", self.rope_theta)));
        }
        let factor = "rope_scaling.factor";
        if !(self.rope_factor > 0.0) {
            return Err(bad(factor, format!("is {}; it must be positive", self.rope_factor)));
        }
        if self.rope_factor > 1.0 {
            let (fast, slow) = ("rope_scaling.beta_fast", "rope_scaling.beta_slow");
            if self.rope_original_context == 0 {
                return Err(bad("rope_scaling.original_max_position_embeddings", "must be positive".into()));
            }
            if !(self.rope_beta_slow > 0.0) {
                return Err(bad(slow, format!("is {}; it must be positive", self.rope_beta_slow)));
            }
            if !(self.rope_beta_fast > self.rope_beta_slow) {
                return Err(bad(
                    fast,
                    format!(
                        "({}) must be greater than {} ({})",
                        self.rope_beta_fast,
                        layout.field_name(slow),
                        self.rope_beta_slow
                    ),
                ));
            }
        }
        if self.max_context == 0 || self.max_context > 1 << 24 {
            return Err(bad(
                "max_position_embeddings",
                format!("is {}; it must be between 1 and {}", self.max_context, 1 << 24),
            ));
        }
        if !(self.rms_norm_eps >= 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(bad("rms_norm_eps", format!("is {}; it must be a finite number >= 0", self.rms_norm_eps)));
        }
        if !(self.swiglu_limit > 0.0 && self.swiglu_limit.is_finite()) {
            return Err(bad("swiglu_limit", format!("is {}; it must be positive", self.swiglu_limit)));
        }
        Ok(())
    }

    /// gpt-oss-20b as published.
    pub fn gpt_oss_20b() -> Self {
        Self::gpt_oss(24, 32)
    }

    /// gpt-oss-120b as published.
    pub fn gpt_oss_120b() -> Self {
        Self::gpt_oss(36, 128)
    }

    fn gpt_oss(num_layers: usize, num_experts: usize) -> Self {
        ModelConfig {
            num_layers,
            hidden_size: 2880,
            intermediate_size: 2880,
            head_dim: 64,
            num_heads: 64,
            num_kv_heads: 8,
            num_experts,
            experts_per_token: 4,
            vocab_size: 201_088,
            sliding_window: 128,
            sliding_layers: (0..num_layers).map(|l| l % 2 == 0).collect(),
            rope_theta: 150_000.0,
            rope_factor: 32.0,
            rope_original_context: 4096,
            rope_beta_fast: 32.0,
            rope_beta_slow: 1.0,
            rope_truncate: false,
            swiglu_limit: 7.0,
            rms_norm_eps: 1e-5,
            max_context: 131_072,
        }
    }

    /// The test fixture's shape (4 layers, 8 experts, hidden 64) with the full vocabulary.
    pub fn tiny() -> Self {
        ModelConfig {
            num_layers: 4,
            hidden_size: 64,
            intermediate_size: 96,
            num_heads: 4,
            num_kv_heads: 2,
            num_experts: 8,
            ..Self::gpt_oss(4, 8)
        }
    }

    /// The Hugging Face `config.json` for these shapes.
    pub fn to_hf_json(&self) -> Value {
        let layer_types: Vec<&str> =
            self.sliding_layers.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect();
        json!({
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "attention_bias": true,
            "attention_dropout": 0.0,
            "eos_token_id": 200002,
            "pad_token_id": 199999,
            "experts_per_token": self.experts_per_token,
            "num_experts_per_tok": self.experts_per_token,
            "num_local_experts": self.num_experts,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.rope_original_context,
            "intermediate_size": self.intermediate_size,
            "layer_types": layer_types,
            "max_position_embeddings": self.max_context,
            "num_attention_heads": self.num_heads,
            "num_hidden_layers": self.num_layers,
            "num_key_value_heads": self.num_kv_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": {
                "beta_fast": self.rope_beta_fast,
                "beta_slow": self.rope_beta_slow,
                "factor": self.rope_factor,
                "original_max_position_embeddings": self.rope_original_context,
                "rope_type": "yarn",
                "truncate": self.rope_truncate,
            },
            "rope_theta": self.rope_theta,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": false,
            "vocab_size": self.vocab_size,
            "quantization_config": {
                "quant_method": "mxfp4",
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
            },
        })
    }

    /// The OpenAI `original/config.json` (its 16 keys) for these shapes.
    pub fn to_original_json(&self) -> Value {
        json!({
            "num_hidden_layers": self.num_layers,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": self.rope_original_context,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": self.rope_factor,
            "rope_ntk_alpha": self.rope_beta_slow,
            "rope_ntk_beta": self.rope_beta_fast,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: u64,
    pub active: u64,
}

/// Field access that names the file and the field in every error.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
    /// Path of `obj` inside the file, e.g. `rope_scaling.`.
    prefix: &'a str,
}

impl Fields<'_> {
    fn missing(&self, field: &str) -> LoadError {
        LoadError::MissingField { path: self.path.into(), field: format!("{}{field}", self.prefix) }
    }

    fn bad(&self, field: &str, problem: String) -> LoadError {
        LoadError::BadField { path: self.path.into(), field: format!("{}{field}", self.prefix), problem }
    }

    fn f64(&self, field: &str) -> Result<f64, LoadError> {
        self.opt_f64(field)?.ok_or_else(|| self.missing(field))
    }

    fn opt_f64(&self, field: &str) -> Result<Option<f64>, LoadError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.bad(field, format!("must be a number, found {v}"))),
        }
    }

    fn usize(&self, field: &str) -> Result<usize, LoadError> {
        self.opt_usize(field)?.ok_or_else(|| self.missing(field))
    }

    /// Integers written as `150000.0` are accepted, as copies of the configs do that.
    fn opt_usize(&self, field: &str) -> Result<Option<usize>, LoadError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let n = v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|x| *x >= 0.0 && x.fract() == 0.0 && *x < 1e15).map(|x| x as u64));
                n.map(|n| Some(n as usize))
                    .ok_or_else(|| self.bad(field, format!("must be a non-negative integer, found {v}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_both_dialects() {
        for cfg in [ModelConfig::gpt_oss_20b(), ModelConfig::gpt_oss_120b(), ModelConfig::tiny()] {
            let (hf, layout) = ModelConfig::from_json(Path::new("x"), &cfg.to_hf_json()).unwrap();
            assert_eq!((hf, layout), (cfg.clone(), Layout::HuggingFace));
            let (orig, layout) = ModelConfig::from_json(Path::new("x"), &cfg.to_original_json()).unwrap();
            assert_eq!((orig, layout), (cfg.clone(), Layout::Original));
        }
    }

    #[test]
    fn parameter_counts_match_the_published_figures() {
        // spec §1.1: 20.91 B / 3.61 B active and 116.83 B / 5.13 B active.
        let c20 = ModelConfig::gpt_oss_20b().param_counts();
        let c120 = ModelConfig::gpt_oss_120b().param_counts();
        let billions = |n: u64| format!("{:.2}", n as f64 / 1e9);
        assert_eq!((billions(c20.total), billions(c20.active)), ("20.91".into(), "3.61".into()));
        assert_eq!((billions(c120.total), billions(c120.active)), ("116.83".into(), "5.13".into()));
    }

    #[test]
    fn sliding_layers_are_the_even_ones() {
        let cfg = ModelConfig::gpt_oss_20b();
        assert_eq!(cfg.window(0), Some(128));
        assert_eq!(cfg.window(1), None);
        assert_eq!(cfg.window(22), Some(128));
        assert_eq!(cfg.window(23), None);
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = ModelConfig::gpt_oss_20b().to_hf_json();
        v.as_object_mut().unwrap().remove("hidden_size");
        let err = ModelConfig::from_json(Path::new("cfg.json"), &v).unwrap_err().to_string();
        assert!(err.contains("cfg.json") && err.contains("`hidden_size`"), "{err}");
        let mut v = ModelConfig::gpt_oss_20b().to_original_json();
        v["num_key_value_heads"] = json!(7);
        let err = ModelConfig::from_json(Path::new("cfg.json"), &v).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads") && err.contains("does not divide"), "{err}");
        v["num_key_value_heads"] = json!("eight");
        let err = ModelConfig::from_json(Path::new("cfg.json"), &v).unwrap_err().to_string();
        assert!(err.contains("must be a non-negative integer"), "{err}");
    }
}

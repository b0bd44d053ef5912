//! The model config from a GGUF's metadata (spec §1.5).

use super::{GgufFile, GgufModel, MetaValue, ARCHITECTURE};
use crate::config::{Layout, ModelConfig};
use crate::error::LoadError;

impl GgufFile {
    /// `general.architecture`, which must be `gpt-oss`.
    pub fn check_architecture(&self) -> Result<(), LoadError> {
        match self.get("general.architecture") {
            None => Err(LoadError::MissingField { path: self.path.clone(), field: "general.architecture".into() }),
            Some(MetaValue::Str(a)) if a == ARCHITECTURE => Ok(()),
            Some(MetaValue::Str(a)) => Err(LoadError::WrongArchitecture { path: self.path.clone(), found: a.clone() }),
            Some(v) => Err(LoadError::BadField {
                path: self.path.clone(),
                field: "general.architecture".into(),
                problem: format!("is {}, not a string", v.describe()),
            }),
        }
    }
}

impl GgufModel {
    /// The model config from the metadata (spec §1.5), with llama.cpp's defaults where a key
    /// is optional: sliding-window pattern period 2 (even layers slide), YaRN β 32 / 1.
    /// What GGUF has no key for is gpt-oss's fixed value: SwiGLU limit 7 (alpha 1.702 is a
    /// constant of the kernels), YaRN `truncate` false as in the Hugging Face config.
    pub fn config(&self) -> Result<ModelConfig, LoadError> {
        let m = Meta { file: self.meta() };
        m.file.check_architecture()?;
        let num_layers = m.usize("gpt-oss.block_count")?;
        let num_heads = m.usize("gpt-oss.attention.head_count")?;
        let hidden_size = m.usize("gpt-oss.embedding_length")?;
        let intermediate_size = match m.opt_usize("gpt-oss.expert_feed_forward_length")? {
            Some(i) => i,
            None => m.usize("gpt-oss.feed_forward_length")?,
        };
        // head_dim is not hidden/heads in gpt-oss (2880/64 = 45 would be wrong): take the
        // key length, else the q projection's rows per head.
        let head_dim = match m.opt_usize("gpt-oss.attention.key_length")? {
            Some(d) => d,
            None => {
                let (_, q) =
                    self.tensor("blk.0.attn_q.weight").ok_or_else(|| m.missing("gpt-oss.attention.key_length"))?;
                let rows = q.dims.get(1).copied().unwrap_or(0) as usize;
                rows / num_heads.max(1)
            }
        };
        if let Some(v) = m.opt_usize("gpt-oss.attention.value_length")? {
            if v != head_dim {
                return Err(m.bad(
                    "gpt-oss.attention.value_length",
                    format!("({v}) differs from the key length ({head_dim}); gpt-oss uses one head size"),
                ));
            }
        }
        let (embd_file, embd) = self.tensor("token_embd.weight").ok_or_else(|| LoadError::MissingTensor {
            dir: self.path().to_path_buf(),
            tensor: "token_embd.weight".into(),
            layout: Layout::Gguf.name(),
        })?;
        let vocab_size = match embd.dims.as_slice() {
            [h, v] if *h == hidden_size as u64 => *v as usize,
            _ => {
                return Err(LoadError::WrongShape {
                    path: embd_file.path.clone(),
                    tensor: embd.name.clone(),
                    found: embd.shape(),
                    expected: vec![embd.dims.get(1).map_or(0, |&v| v as usize), hidden_size],
                })
            }
        };
        if let Some(v) = m.opt_usize("gpt-oss.vocab_size")? {
            if v != vocab_size {
                return Err(
                    m.bad("gpt-oss.vocab_size", format!("({v}) disagrees with token_embd.weight ({vocab_size} rows)"))
                );
            }
        }
        let sliding_layers = match m.file.get("gpt-oss.attention.sliding_window_pattern") {
            None => sliding_pattern(num_layers, 2),
            Some(v) => match (v.as_u64(), v) {
                (Some(period), _) => sliding_pattern(num_layers, period),
                // One bool per layer (true = sliding); decoded only at the expected length.
                (None, MetaValue::Array { elem: 7, len, .. }) if *len == num_layers as u64 => {
                    m.file.array(v).unwrap_or_default().iter().map(|b| b.as_bool() == Some(true)).collect()
                }
                _ => {
                    return Err(m.bad(
                        "gpt-oss.attention.sliding_window_pattern",
                        format!("is {}; expected a period or {num_layers} booleans", v.describe()),
                    ))
                }
            },
        };
        let rope_factor = match m.opt_str("gpt-oss.rope.scaling.type")? {
            None | Some("yarn") => m.opt_f64("gpt-oss.rope.scaling.factor")?.unwrap_or(1.0),
            Some("none") => 1.0,
            Some(other) => {
                return Err(m.bad("gpt-oss.rope.scaling.type", format!("is `{other}`; gpt-oss uses `yarn`")));
            }
        };
        let rope_original_context = match m.opt_usize("gpt-oss.rope.scaling.original_context_length")? {
            Some(n) => n,
            None if rope_factor > 1.0 => return Err(m.missing("gpt-oss.rope.scaling.original_context_length")),
            None => 4096,
        };
        let max_context = match m.opt_usize("gpt-oss.context_length")? {
            Some(n) => n,
            None => (rope_original_context as f64 * rope_factor.max(1.0)) as usize,
        };
        let config = ModelConfig {
            num_layers,
            hidden_size,
            intermediate_size,
            head_dim,
            num_heads,
            num_kv_heads: m.usize("gpt-oss.attention.head_count_kv")?,
            num_experts: m.usize("gpt-oss.expert_count")?,
            experts_per_token: m.usize("gpt-oss.expert_used_count")?,
            vocab_size,
            sliding_window: m.usize("gpt-oss.attention.sliding_window")?,
            sliding_layers,
            rope_theta: m.f64("gpt-oss.rope.freq_base")?,
            rope_factor,
            rope_original_context,
            rope_beta_fast: m.opt_f64("gpt-oss.rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
            rope_beta_slow: m.opt_f64("gpt-oss.rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
            rope_truncate: false,
            swiglu_limit: 7.0,
            rms_norm_eps: m.opt_f64("gpt-oss.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
            max_context,
        };
        config.validate(self.path(), Layout::Gguf)?;
        Ok(config)
    }
}

/// llama.cpp's `set_swa_pattern`: layer `l` slides when `l % period < period - 1`, so
/// period 2 makes the even layers sliding; period 0 makes every layer sliding.
fn sliding_pattern(num_layers: usize, period: u64) -> Vec<bool> {
    (0..num_layers as u64).map(|l| period == 0 || l % period < period - 1).collect()
}

/// Typed metadata access whose errors name the file and the key.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl Meta<'_> {
    fn missing(&self, key: &str) -> LoadError {
        LoadError::MissingField { path: self.file.path.clone(), field: key.into() }
    }

    fn bad(&self, key: &str, problem: String) -> LoadError {
        LoadError::BadField { path: self.file.path.clone(), field: key.into(), problem }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, LoadError> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.bad(key, format!("is {}; expected a non-negative integer", v.describe()))),
        }
    }

    fn usize(&self, key: &str) -> Result<usize, LoadError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, LoadError> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| self.bad(key, format!("is {}; expected a number", v.describe())))
            }
        }
    }

    fn f64(&self, key: &str) -> Result<f64, LoadError> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>, LoadError> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_str().map(Some).ok_or_else(|| self.bad(key, format!("is {}; expected a string", v.describe())))
            }
        }
    }
}

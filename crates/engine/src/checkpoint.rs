//! Finding a checkpoint's files and naming its tensors: a folder in the Hugging Face layout
//! (`config.json` + `model*.safetensors`, with or without `model.safetensors.index.json`) or
//! the OpenAI `original/` layout, detected from the config, or a llama.cpp GGUF file
//! (detected by its magic; split ones with all their parts; a folder holding no config and
//! just one `.gguf`, or the parts of one split model, loads that).
//! A Hub repository root holding both safetensors layouts loads the root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{Layout, ModelConfig};
use crate::error::LoadError;
use crate::gguf::GgufModel;
use crate::safetensors::{SafeTensors, TensorInfo};

pub struct Checkpoint {
    /// The folder holding the config and tensor files that were loaded; for a GGUF, the file.
    pub dir: PathBuf,
    pub layout: Layout,
    pub config: ModelConfig,
    /// The safetensors files (none for a GGUF).
    pub files: Vec<SafeTensors>,
    /// The GGUF file (or the parts of a split one): config and tensors ([`Layout::Gguf`]).
    pub gguf: Option<GgufModel>,
    /// tensor name -> index into `files`.
    names: HashMap<String, usize>,
    /// An MLX conversion's per-module quantization ([`Layout::Mlx`] only).
    pub mlx: Option<crate::mlx::MlxQuant>,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let meta = std::fs::metadata(path).map_err(|e| LoadError::io(path, e))?;
        if !meta.is_dir() {
            // By magic first: a GGUF need not be named *.gguf; one that is named so but has
            // another magic gets the GGUF reader's "bad magic" error.
            if crate::gguf::has_magic(path) || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
                return Self::open_gguf(path);
            }
            return Err(LoadError::BadCheckpoint {
                path: path.into(),
                reason: "expected a checkpoint folder (config.json and *.safetensors) or a llama.cpp .gguf file".into(),
            });
        }
        let dir = if path.join("config.json").is_file() {
            path.to_path_buf()
        } else if path.join("original").join("config.json").is_file() {
            path.join("original")
        } else {
            let ggufs = list_files(path, "gguf")?;
            if let [one] = ggufs.as_slice() {
                return Self::open_gguf(one);
            }
            // Or the parts of one split model, named NAME-0000i-of-0000n.gguf: open the first.
            let first_part = format!("-00001-of-{:05}.gguf", ggufs.len());
            if let Some(first) = ggufs.iter().find(|p| p.to_string_lossy().ends_with(&first_part)) {
                return Self::open_gguf(first);
            }
            let reason = if ggufs.is_empty() {
                "no config.json here (nor original/config.json): not a gpt-oss checkpoint folder".to_string()
            } else {
                format!("no config.json here but {} .gguf files: pass the one to load", ggufs.len())
            };
            return Err(LoadError::BadCheckpoint { path: path.into(), reason });
        };
        let (config, layout) = ModelConfig::from_file(&dir.join("config.json"))?;
        let index = dir.join("model.safetensors.index.json");
        let (paths, expected) = if layout == Layout::HuggingFace && index.is_file() {
            read_index(&index)?
        } else if layout == Layout::HuggingFace && dir.join("model.safetensors").is_file() {
            (vec![dir.join("model.safetensors")], Vec::new())
        } else {
            (list_files(&dir, "safetensors")?, Vec::new())
        };
        if paths.is_empty() && dir == path && path.join("original").join("config.json").is_file() {
            // A Hub repository downloaded with only its original/ weights.
            return Self::open(&path.join("original"));
        }
        if paths.is_empty() {
            return Err(LoadError::BadCheckpoint { path: dir, reason: "no *.safetensors files".into() });
        }
        let mut files = Vec::with_capacity(paths.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        for p in &paths {
            let st = SafeTensors::open(p)?;
            for name in st.tensors.keys() {
                if let Some(&other) = names.get(name) {
                    return Err(LoadError::DuplicateTensor {
                        path: p.clone(),
                        tensor: name.clone(),
                        other: paths[other].clone(),
                    });
                }
                names.insert(name.clone(), files.len());
            }
            files.push(st);
        }
        for (tensor, file) in expected {
            let found = names.get(&tensor).map(|&i| &files[i].path);
            if found != Some(&file) {
                return Err(LoadError::BadCheckpoint {
                    path: index.clone(),
                    reason: format!("maps tensor `{tensor}` to {} but that file does not hold it", file.display()),
                });
            }
        }
        // mlx-lm keeps the Hugging Face config and names, but for the experts.
        let (layout, mlx) = if layout == Layout::HuggingFace && crate::mlx::has_mlx_names(|n| names.contains_key(n)) {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path).map_err(|e| LoadError::io(&path, e))?;
            let value: Value = serde_json::from_str(&text).map_err(|e| LoadError::BadCheckpoint {
                path: path.clone(),
                reason: format!("config is not valid JSON: {e}"),
            })?;
            (Layout::Mlx, Some(crate::mlx::MlxQuant::from_config(&path, &value)?))
        } else {
            (layout, None)
        };
        Ok(Checkpoint { dir, layout, config, files, gguf: None, names, mlx })
    }

    /// One GGUF file, or every part of a split one: the metadata is the config, the
    /// tensors the weights.
    fn open_gguf(path: &Path) -> Result<Self, LoadError> {
        let file = GgufModel::open(path)?;
        let config = file.config()?;
        Ok(Checkpoint {
            dir: file.path().to_path_buf(),
            layout: Layout::Gguf,
            config,
            files: Vec::new(),
            gguf: Some(file),
            mlx: None,
            names: HashMap::new(),
        })
    }

    /// The file and header entry of a tensor, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<(&SafeTensors, &TensorInfo), LoadError> {
        let file = self.names.get(name).map(|&i| &self.files[i]).ok_or_else(|| self.missing(name))?;
        let info = file.get(name).ok_or_else(|| self.missing(name))?;
        Ok((file, info))
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.gguf {
            Some(g) => g.tensor(name).is_some(),
            None => self.names.contains_key(name),
        }
    }

    fn missing(&self, name: &str) -> LoadError {
        LoadError::MissingTensor { dir: self.dir.clone(), tensor: name.into(), layout: self.layout.name() }
    }

    /// Size of the tensor files on disk.
    pub fn bytes_on_disk(&self) -> u64 {
        let gguf = self.gguf.iter().map(|g| g.bytes_on_disk());
        self.files.iter().filter_map(|f| std::fs::metadata(&f.path).ok()).map(|m| m.len()).chain(gguf).sum()
    }

    /// Bytes of tensor data (what the weights occupy once mapped).
    pub fn tensor_data_bytes(&self) -> u64 {
        let gguf = self.gguf.iter().map(|g| g.tensor_data_bytes());
        self.files.iter().flat_map(|f| f.tensors.values()).map(|t| t.range.len() as u64).chain(gguf).sum()
    }
}

/// `{"weight_map": {tensor: file}}` -> the files in first-seen order, and each mapping.
type IndexMap = (Vec<PathBuf>, Vec<(String, PathBuf)>);

fn read_index(index: &Path) -> Result<IndexMap, LoadError> {
    let bad = |reason: String| LoadError::BadCheckpoint { path: index.into(), reason };
    let text = std::fs::read_to_string(index).map_err(|e| LoadError::io(index, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = value.get("weight_map").and_then(Value::as_object).ok_or_else(|| bad("no `weight_map` object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    let mut expected = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("`weight_map.{tensor}` is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(bad(format!("`weight_map.{tensor}` names `{file}`, which is not a plain file name")));
        }
        let path = dir.join(file);
        if !files.contains(&path) {
            if !path.is_file() {
                return Err(bad(format!("names shard {file}, which does not exist")));
            }
            files.push(path.clone());
        }
        expected.push((tensor.clone(), path));
    }
    Ok((files, expected))
}

/// The files of `dir` named `*.{extension}`, sorted.
fn list_files(dir: &Path, extension: &str) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LoadError::io(dir, e))? {
        let path = entry.map_err(|e| LoadError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == extension) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Tensor names of one layout. Per-layer names take the layer index.
pub struct TensorNames {
    pub layout: Layout,
}

impl TensorNames {
    pub fn embedding(&self) -> &'static str {
        match self.layout {
            Layout::HuggingFace | Layout::Mlx => "model.embed_tokens.weight",
            Layout::Original => "embedding.weight",
            Layout::Gguf => "token_embd.weight",
        }
    }

    pub fn final_norm(&self) -> &'static str {
        match self.layout {
            Layout::HuggingFace | Layout::Mlx => "model.norm.weight",
            Layout::Original => "norm.scale",
            Layout::Gguf => "output_norm.weight",
        }
    }

    pub fn unembedding(&self) -> &'static str {
        match self.layout {
            Layout::HuggingFace | Layout::Mlx => "lm_head.weight",
            Layout::Original => "unembedding.weight",
            Layout::Gguf => "output.weight",
        }
    }

    /// The name of a per-layer tensor, given its name in the Hugging Face layout's terms.
    pub fn layer(&self, l: usize, t: LayerTensor) -> String {
        use LayerTensor::*;
        match self.layout {
            // MLX experts are read by module ([`crate::mlx`]); the rest are these names.
            Layout::HuggingFace | Layout::Mlx => {
                let s = match t {
                    AttnNorm => "input_layernorm.weight",
                    QWeight => "self_attn.q_proj.weight",
                    QBias => "self_attn.q_proj.bias",
                    KWeight => "self_attn.k_proj.weight",
                    KBias => "self_attn.k_proj.bias",
                    VWeight => "self_attn.v_proj.weight",
                    VBias => "self_attn.v_proj.bias",
                    QkvWeight | QkvBias => unreachable!("the Hugging Face layout has no fused qkv"),
                    OutWeight => "self_attn.o_proj.weight",
                    OutBias => "self_attn.o_proj.bias",
                    Sinks => "self_attn.sinks",
                    MlpNorm => "post_attention_layernorm.weight",
                    RouterWeight => "mlp.router.weight",
                    RouterBias => "mlp.router.bias",
                    GateUpBlocks => "mlp.experts.gate_up_proj_blocks",
                    GateUpScales => "mlp.experts.gate_up_proj_scales",
                    GateUpBias => "mlp.experts.gate_up_proj_bias",
                    DownBlocks => "mlp.experts.down_proj_blocks",
                    DownScales => "mlp.experts.down_proj_scales",
                    DownBias if self.layout == Layout::Mlx => "mlp.experts.down_proj.bias",
                    DownBias => "mlp.experts.down_proj_bias",
                };
                format!("model.layers.{l}.{s}")
            }
            Layout::Original => {
                let s = match t {
                    AttnNorm => "attn.norm.scale",
                    QkvWeight => "attn.qkv.weight",
                    QkvBias => "attn.qkv.bias",
                    QWeight | QBias | KWeight | KBias | VWeight | VBias => {
                        unreachable!("the original layout fuses q, k and v")
                    }
                    OutWeight => "attn.out.weight",
                    OutBias => "attn.out.bias",
                    Sinks => "attn.sinks",
                    MlpNorm => "mlp.norm.scale",
                    RouterWeight => "mlp.gate.weight",
                    RouterBias => "mlp.gate.bias",
                    GateUpBlocks => "mlp.mlp1_weight.blocks",
                    GateUpScales => "mlp.mlp1_weight.scales",
                    GateUpBias => "mlp.mlp1_bias",
                    DownBlocks => "mlp.mlp2_weight.blocks",
                    DownScales => "mlp.mlp2_weight.scales",
                    DownBias => "mlp.mlp2_bias",
                };
                format!("block.{l}.{s}")
            }
            Layout::Gguf => {
                let s = match t {
                    AttnNorm => "attn_norm.weight",
                    QWeight => "attn_q.weight",
                    QBias => "attn_q.bias",
                    KWeight => "attn_k.weight",
                    KBias => "attn_k.bias",
                    VWeight => "attn_v.weight",
                    VBias => "attn_v.bias",
                    QkvWeight | QkvBias => unreachable!("the GGUF layout has no fused qkv"),
                    OutWeight => "attn_output.weight",
                    OutBias => "attn_output.bias",
                    Sinks => "attn_sinks.weight",
                    MlpNorm => "post_attention_norm.weight",
                    RouterWeight => "ffn_gate_inp.weight",
                    RouterBias => "ffn_gate_inp.bias",
                    // One ggml tensor holds both codes and scales. Gate and up are split
                    // (ffn_gate_exps, ffn_up_exps) or this concatenated tensor.
                    GateUpBlocks | GateUpScales => "ffn_gate_up_exps.weight",
                    GateUpBias => "ffn_gate_up_exps.bias",
                    DownBlocks | DownScales => "ffn_down_exps.weight",
                    DownBias => "ffn_down_exps.bias",
                };
                format!("blk.{l}.{s}")
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerTensor {
    AttnNorm,
    QkvWeight,
    QkvBias,
    QWeight,
    QBias,
    KWeight,
    KBias,
    VWeight,
    VBias,
    OutWeight,
    OutBias,
    Sinks,
    MlpNorm,
    RouterWeight,
    RouterBias,
    GateUpBlocks,
    GateUpScales,
    GateUpBias,
    DownBlocks,
    DownScales,
    DownBias,
}

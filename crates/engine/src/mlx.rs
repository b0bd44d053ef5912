//! MLX checkpoints, as mlx-lm converts gpt-oss (mlx-community's `MXFP4-Q4`, `MXFP4-Q8`,
//! `bf16`, ...; spec quantized-formats.md Part A). The Hugging Face names, except the experts:
//! `mlp.experts.{gate,up,down}_proj.*`, gate and up apart. Every linear module `P` is either
//! plain (`P.weight`, bf16) or quantized (`P.weight` as U32 words, `P.scales`, and for affine
//! `P.biases`), with its parameters in `config.json`'s `quantization` (a per-module entry, else
//! inferred from the shapes as mlx-lm does) and checked against the tensors.
//!
//! Weights stay packed: affine and MXFP4 dense matrices are read in place by their kernels,
//! and MXFP4 experts are the Hugging Face bytes, with gate and up rows interleaved at load into
//! the fused layout the expert kernels read.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use gptoss_kernels::affine::{BITS, GROUPS};
use gptoss_kernels::mxfp4;

use crate::checkpoint::Checkpoint;
use crate::error::LoadError;
use crate::safetensors::{Bytes, DType};
use crate::weights::{floats, AffineMatrix, Bf16Matrix, Dense, Experts, F32Matrix, Mxfp4Experts, Mxfp4Matrix};

/// How one module is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Affine,
    Mxfp4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantSpec {
    pub mode: Mode,
    pub bits: u32,
    pub group: usize,
}

impl std::fmt::Display for QuantSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.mode {
            Mode::Affine => write!(f, "affine {}-bit, group {}", self.bits, self.group),
            Mode::Mxfp4 => write!(f, "mxfp4 ({}-bit, group {})", self.bits, self.group),
        }
    }
}

/// `config.json`'s `quantization`: per-module entries (`None`: left unquantized). The
/// top-level default only sizes modules before loading in mlx-lm; the tensors decide.
#[derive(Clone, Debug, Default)]
pub struct MlxQuant {
    modules: HashMap<String, Option<QuantSpec>>,
}

impl MlxQuant {
    /// Reads `quantization` (or its mirror `quantization_config` without a `quant_method`)
    /// from the config; no such key is an unquantized conversion.
    pub fn from_config(path: &Path, config: &Value) -> Result<MlxQuant, LoadError> {
        let q = match (config.get("quantization"), config.get("quantization_config")) {
            (Some(q), _) => q,
            (None, Some(q)) if q.get("quant_method").is_none() => q,
            _ => return Ok(MlxQuant::default()),
        };
        let bad = |field: String, problem: String| LoadError::BadField { path: path.into(), field, problem };
        let Some(obj) = q.as_object() else {
            return Err(bad("quantization".into(), "is not an object".into()));
        };
        let mut modules = HashMap::new();
        for (key, v) in obj {
            if matches!(key.as_str(), "group_size" | "bits" | "mode") {
                continue;
            }
            let field = format!("quantization.{key}");
            let spec = match v {
                Value::Bool(false) => None,
                Value::Object(_) => Some(spec_of(v).map_err(|p| bad(field, p))?),
                _ => return Err(bad(field, "is neither an object nor false".into())),
            };
            modules.insert(key.clone(), spec);
        }
        Ok(MlxQuant { modules })
    }
}

/// `{"group_size", "bits", "mode"?}`; a missing mode is affine, whatever the top level says.
fn spec_of(v: &Value) -> Result<QuantSpec, String> {
    let num = |k: &str| v.get(k).and_then(Value::as_u64).ok_or_else(|| format!("has no integer `{k}`"));
    let (bits, group) = (num("bits")? as u32, num("group_size")? as usize);
    let mode = match v.get("mode").and_then(Value::as_str).unwrap_or("affine") {
        "affine" => Mode::Affine,
        "mxfp4" => Mode::Mxfp4,
        other => return Err(format!("mode {other:?} is not supported (affine and mxfp4 are)")),
    };
    Ok(QuantSpec { mode, bits, group })
}

/// Whether the tensor names are mlx-lm's (gate and up experts apart).
pub fn has_mlx_names(contains: impl Fn(&str) -> bool) -> bool {
    contains("model.layers.0.mlp.experts.gate_proj.weight")
}

/// A module's tensors, read from an MLX checkpoint.
pub(crate) struct MlxLoader<'a> {
    pub ck: &'a Checkpoint,
    pub quant: &'a MlxQuant,
}

/// What a module's tensors hold.
enum Stored {
    Plain(Bytes),
    /// Unquantized f16 or f32 weights, widened exactly to f32 (bf16 cannot hold f16).
    Wide(Vec<f32>),
    Quantized {
        words: Bytes,
        scales: Bytes,
        scales_dtype: DType,
        biases: Option<(Bytes, DType)>,
        spec: QuantSpec,
    },
}

impl MlxLoader<'_> {
    fn bad(&self, module: &str, reason: String) -> LoadError {
        LoadError::BadCheckpoint { path: self.ck.dir.clone(), reason: format!("`{module}`: {reason}") }
    }

    /// Module `module` with logical shape `[lead.., rows, cols]`.
    fn stored(&self, module: &str, lead: &[usize], rows: usize, cols: usize) -> Result<Stored, LoadError> {
        let weight = format!("{module}.weight");
        let (file, info) = self.ck.tensor(&weight)?;
        let shape_with = |last: usize| [lead, &[rows, last]].concat();
        let scales_name = format!("{module}.scales");
        if !self.ck.contains(&scales_name) {
            if let Some(Some(spec)) = self.quant.modules.get(module) {
                return Err(
                    self.bad(module, format!("config.json quantizes it ({spec}) but there is no `{scales_name}`"))
                );
            }
            check_shape(file.path.as_path(), &weight, &info.shape, &shape_with(cols))?;
            return match info.dtype {
                DType::BF16 => Ok(Stored::Plain(file.bytes(info))),
                DType::F16 | DType::F32 if lead.is_empty() => {
                    let b = file.bytes(info);
                    let w = floats(&b, info.dtype);
                    // A widened copy: the file's pages stop counting in the resident set.
                    b.release();
                    Ok(Stored::Wide(w))
                }
                DType::F16 | DType::F32 => Err(self.bad(
                    module,
                    format!(
                        "unquantized {} experts are not supported (bf16, mxfp4 or affine experts are)",
                        info.dtype.name()
                    ),
                )),
                other => Err(self
                    .bad(module, format!("unquantized weights are {}; bf16, f16 or f32 are supported", other.name()))),
            };
        }
        let (sfile, sinfo) = self.ck.tensor(&scales_name)?;
        if info.dtype != DType::U32 {
            return Err(
                self.bad(module, format!("has scales, so `{weight}` must be U32 words, not {}", info.dtype.name()))
            );
        }
        // Infer (bits, group) from the shapes as mlx-lm does, then check the config agrees.
        let (words, groups) = (info.shape.last().copied().unwrap_or(0), sinfo.shape.last().copied().unwrap_or(0));
        if groups == 0 || !cols.is_multiple_of(groups) || !(words * 32).is_multiple_of(cols) {
            return Err(self.bad(
                module,
                format!("weight {:?} and scales {:?} do not fit {cols} inputs", info.shape, sinfo.shape),
            ));
        }
        let (bits, group) = ((words * 32 / cols) as u32, cols / groups);
        let mode = match sinfo.dtype {
            DType::BF16 | DType::F16 | DType::F32 => Mode::Affine,
            DType::U8 if (bits, group) == (4, 32) => Mode::Mxfp4,
            DType::U8 => {
                return Err(self.bad(
                    module,
                    format!("holds {bits}-bit codes with U8 scales per {group} (mxfp8 or nvfp4): not supported"),
                ))
            }
            other => return Err(self.bad(module, format!("scales are {}, not a float or U8", other.name()))),
        };
        let spec = QuantSpec { mode, bits, group };
        if let Some(entry) = self.quant.modules.get(module) {
            match entry {
                Some(want) if *want != spec => {
                    return Err(self.bad(module, format!("config.json says {want} but the tensors hold {spec}")))
                }
                None => return Err(self.bad(module, "config.json leaves it unquantized but it has scales".into())),
                _ => {}
            }
        }
        if mode == Mode::Affine && (!BITS.contains(&bits) || !GROUPS.contains(&group)) {
            return Err(self
                .bad(module, format!("affine {bits}-bit, group {group}: mlx writes bits 1-6 or 8, groups 32/64/128")));
        }
        check_shape(file.path.as_path(), &weight, &info.shape, &shape_with(cols * bits as usize / 32))?;
        check_shape(sfile.path.as_path(), &scales_name, &sinfo.shape, &shape_with(cols / group))?;
        let biases = match mode {
            Mode::Mxfp4 => None,
            Mode::Affine => {
                let name = format!("{module}.biases");
                let (bfile, binfo) = self
                    .ck
                    .tensor(&name)
                    .map_err(|_| self.bad(module, format!("affine scales but no `{name}` (the zero points)")))?;
                check_shape(bfile.path.as_path(), &name, &binfo.shape, &shape_with(cols / group))?;
                Some((bfile.bytes(binfo), binfo.dtype))
            }
        };
        Ok(Stored::Quantized {
            words: file.bytes(info),
            scales: sfile.bytes(sinfo),
            scales_dtype: sinfo.dtype,
            biases,
            spec,
        })
    }

    /// A dense linear module `[rows, cols]` (`name` may carry the `.weight` suffix).
    pub fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<Dense, LoadError> {
        let module = name.strip_suffix(".weight").unwrap_or(name);
        Ok(match self.stored(module, &[], rows, cols)? {
            Stored::Plain(b) => Dense::Bf16(Bf16Matrix::new(b, rows, cols)),
            Stored::Wide(data) => Dense::F32(F32Matrix { data, rows, cols }),
            Stored::Quantized { words, scales, scales_dtype, biases, spec } => match spec.mode {
                Mode::Affine => {
                    let (zero, zd) = biases.expect("affine modules carry biases");
                    let (s, b) = (floats(&scales, scales_dtype), floats(&zero, zd));
                    // Widened copies: the file's pages stop counting in the resident set.
                    scales.release();
                    zero.release();
                    Dense::Affine(AffineMatrix::new(words, s, b, spec.bits, spec.group, rows, cols))
                }
                Mode::Mxfp4 => Dense::Mxfp4(Mxfp4Matrix { codes: words, scales, rows, cols }),
            },
        })
    }

    /// The experts of layer `l`: gate_up `[E, 2I, H]` (gate and up rows interleaved into
    /// owned memory, as the fused checkpoints hold them) with its bias `[E, 2I]`, and down
    /// `[E, H, I]` in place. MXFP4 experts are the Hugging Face bytes; affine experts (the
    /// `4bit`/`8bit` recipes) stay packed as one affine matrix `[E·rows, cols]`.
    pub fn experts(&self, l: usize, e: usize, i: usize, h: usize) -> Result<(Experts, Vec<f32>, Experts), LoadError> {
        let module = |p: &str| format!("model.layers.{l}.mlp.experts.{p}");
        let part = |p: &str, rows: usize, cols: usize| self.stored(&module(p), &[e], rows, cols);
        let (gate, up, down) = (part("gate_proj", i, h)?, part("up_proj", i, h)?, part("down_proj", h, i)?);
        let gate_bias = self.vector(&format!("{}.bias", module("gate_proj")), &[e, i])?;
        let up_bias = self.vector(&format!("{}.bias", module("up_proj")), &[e, i])?;
        let bias = gate_bias.iter().zip(&up_bias).flat_map(|(&g, &u)| [g, u]).collect();
        // Row 2n is gate unit n, row 2n+1 up unit n: the rows of the fused tensor.
        fn interleave<T: Copy>(gate: &[T], up: &[T], row: usize) -> Vec<T> {
            gate.chunks_exact(row).zip(up.chunks_exact(row)).flat_map(|(g, u)| g.iter().chain(u).copied()).collect()
        }
        let bytes_of = |v: Vec<u8>| Bytes::build(v.len(), |d| d.copy_from_slice(&v));
        let spec_of = |s: &Stored| match s {
            Stored::Quantized { spec, .. } => Some(*spec),
            Stored::Plain(_) | Stored::Wide(_) => None,
        };
        let (gs, us) = (spec_of(&gate), spec_of(&up));
        if gs != us {
            return Err(self.bad(&module("up_proj"), format!("is stored unlike gate_proj ({gs:?} vs {us:?})")));
        }
        let gate_up = match (gate, up) {
            (
                Stored::Quantized { words: gc, scales: gsc, spec: QuantSpec { mode: Mode::Mxfp4, .. }, .. },
                Stored::Quantized { words: uc, scales: usc, .. },
            ) => {
                let codes = bytes_of(interleave(gc.as_slice(), uc.as_slice(), h / 2));
                let scales = bytes_of(interleave(gsc.as_slice(), usc.as_slice(), h / mxfp4::BLOCK));
                // Copied: the file's pages stop counting in the resident set.
                for b in [&gc, &uc, &gsc, &usc] {
                    b.release();
                }
                Experts::Mxfp4(Mxfp4Experts::from_parts(codes, scales, e, 2 * i, h))
            }
            (
                Stored::Quantized { words: gc, scales: gsc, scales_dtype, biases: Some((gz, zd)), spec },
                Stored::Quantized { words: uc, scales: usc, biases: Some((uz, _)), .. },
            ) => {
                let (rb, gpr) = (h * spec.bits as usize / 8, h / spec.group);
                let codes = bytes_of(interleave(gc.as_slice(), uc.as_slice(), rb));
                let scales = interleave(&floats(&gsc, scales_dtype), &floats(&usc, scales_dtype), gpr);
                let zeros = interleave(&floats(&gz, zd), &floats(&uz, zd), gpr);
                for b in [&gc, &uc, &gsc, &usc, &gz, &uz] {
                    b.release();
                }
                let w = AffineMatrix::new(codes, scales, zeros, spec.bits, spec.group, e * 2 * i, h);
                Experts::Affine { w, experts: e }
            }
            (Stored::Plain(g), Stored::Plain(u)) => {
                let w = bytes_of(interleave(g.as_slice(), u.as_slice(), 2 * h));
                g.release();
                u.release();
                Experts::Bf16 { w: Bf16Matrix::new(w, e * 2 * i, h), experts: e }
            }
            _ => unreachable!("both stored alike (checked above); affine modules carry biases; experts never wide"),
        };
        let down = match down {
            Stored::Quantized { words, scales, spec: QuantSpec { mode: Mode::Mxfp4, .. }, .. } => {
                Experts::Mxfp4(Mxfp4Experts::from_parts(words, scales, e, h, i))
            }
            Stored::Quantized { words, scales, scales_dtype, biases: Some((z, zd)), spec } => {
                let (s, zeros) = (floats(&scales, scales_dtype), floats(&z, zd));
                scales.release();
                z.release();
                Experts::Affine { w: AffineMatrix::new(words, s, zeros, spec.bits, spec.group, e * h, i), experts: e }
            }
            Stored::Plain(w) => Experts::Bf16 { w: Bf16Matrix::new(w, e * h, i), experts: e },
            _ => unreachable!("affine modules carry biases; experts are never wide"),
        };
        Ok((gate_up, bias, down))
    }

    fn vector(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (file, info) = self.ck.tensor(name)?;
        check_shape(file.path.as_path(), name, &info.shape, shape)?;
        if !matches!(info.dtype, DType::BF16 | DType::F16 | DType::F32) {
            return Err(LoadError::WrongDtype {
                path: file.path.clone(),
                tensor: name.into(),
                found: info.dtype.name().into(),
                expected: "BF16 or F16 or F32".into(),
            });
        }
        Ok(floats(&file.bytes(info), info.dtype))
    }
}

fn check_shape(path: &Path, tensor: &str, found: &[usize], expected: &[usize]) -> Result<(), LoadError> {
    if found != expected {
        return Err(LoadError::WrongShape {
            path: path.into(),
            tensor: tensor.into(),
            found: found.to_vec(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

//! W4A16 checkpoints as llm-compressor writes them (compressed-tensors `pack-quantized`, int4;
//! AWQ, GPTQ and round-to-nearest alike; spec quantized-formats.md Part B). The Hugging Face
//! names; each quantized linear layer `X` is `X.weight_packed` (8 codes per int32, low nibble
//! first, stored as `q + 8`), `X.weight_scale` `[out, in/G]`, `X.weight_shape`, and when
//! asymmetric `X.weight_zero_point` (int4, packed along the output rows); the experts are
//! per-expert linear layers `mlp.experts.E.{gate,up,down}_proj`.
//!
//! `w = (q − z)·s` is the affine form `w = s·u + b` of the stored nibble `u = q + 8` with
//! `b = −s·(z + 8)`: exact in f32 (a bf16/f16 scale times an integer below 16), so the
//! matrices are [`AffineMatrix`]es read by the affine kernels, packed as they are in the file.

use std::path::Path;

use serde_json::Value;

use crate::checkpoint::Checkpoint;
use crate::error::LoadError;
use crate::safetensors::{Bytes, DType};
use crate::weights::{floats, AffineMatrix, Bf16Matrix, Dense, Experts};

/// The quantization a checkpoint's `config_groups` declare for its linear layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct W4a16Config {
    /// Inputs per scale; `None` for `strategy: "channel"` (one scale per output row).
    pub group: Option<usize>,
    pub symmetric: bool,
    /// llm-compressor 0.12–0.13 split each expert's interleaved gate/up into halves instead
    /// of de-interleaving it (told apart only by compressed-tensors' version, 0.17–0.18).
    pub half_split: bool,
}

impl W4a16Config {
    /// `None` unless the config's `quantization_config` is compressed-tensors; an error for
    /// what is compressed-tensors but not int4 W4A16, naming the field.
    pub fn from_config(path: &Path, config: &Value) -> Result<Option<W4a16Config>, LoadError> {
        let Some(q) = config.get("quantization_config") else { return Ok(None) };
        if q.get("quant_method").and_then(Value::as_str) != Some("compressed-tensors") {
            return Ok(None);
        }
        let bad = |field: &str, problem: String| LoadError::BadField {
            path: path.into(),
            field: format!("quantization_config.{field}"),
            problem,
        };
        let status = q.get("quantization_status").and_then(Value::as_str).unwrap_or("compressed");
        if status != "compressed" {
            return Err(bad(
                "quantization_status",
                format!("is {status:?}; only \"compressed\" files hold packed weights"),
            ));
        }
        let Some(groups) = q.get("config_groups").and_then(Value::as_object) else {
            return Err(bad("config_groups", "is missing".into()));
        };
        let mut found: Option<W4a16Config> = None;
        for (name, g) in groups {
            let field = |k: &str| format!("config_groups.{name}.{k}");
            let format = g.get("format").or(q.get("format")).and_then(Value::as_str).unwrap_or("");
            if format != "pack-quantized" {
                return Err(bad(
                    &field("format"),
                    format!("is {format:?}; only pack-quantized (int4 W4A16) is supported"),
                ));
            }
            if g.get("input_activations").is_some_and(|a| !a.is_null()) {
                return Err(bad(&field("input_activations"), "quantizes activations too: not a W4A16 scheme".into()));
            }
            let w = g.get("weights").ok_or_else(|| bad(&field("weights"), "is missing".into()))?;
            let bits = w.get("num_bits").and_then(Value::as_u64);
            let ty = w.get("type").and_then(Value::as_str);
            if (bits, ty) != (Some(4), Some("int")) {
                return Err(bad(
                    &field("weights"),
                    format!("holds {bits:?}-bit {ty:?} weights; only 4-bit int is supported"),
                ));
            }
            if w.get("actorder").is_some_and(|a| !a.is_null()) {
                return Err(bad(&field("weights.actorder"), "reorders columns (g_idx): not supported".into()));
            }
            let group = match w.get("strategy").and_then(Value::as_str) {
                Some("group") => Some(
                    w.get("group_size")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| bad(&field("weights.group_size"), "is missing".into()))?
                        as usize,
                ),
                Some("channel") => None,
                other => {
                    return Err(bad(
                        &field("weights.strategy"),
                        format!("is {other:?}; group and channel are supported"),
                    ))
                }
            };
            let symmetric = w.get("symmetric").and_then(Value::as_bool).unwrap_or(true);
            let version = q.get("version").and_then(Value::as_str).unwrap_or("");
            let half_split = version.starts_with("0.17") || version.starts_with("0.18");
            let this = W4a16Config { group, symmetric, half_split };
            if found.as_ref().is_some_and(|f| *f != this) {
                return Err(bad(
                    "config_groups",
                    "groups quantize differently (mixed precision): not supported".into(),
                ));
            }
            found = Some(this);
        }
        found.map(Some).ok_or_else(|| bad("config_groups", "is empty".into()))
    }
}

pub(crate) struct W4a16Loader<'a> {
    pub ck: &'a Checkpoint,
    pub cfg: &'a W4a16Config,
}

impl W4a16Loader<'_> {
    fn bad(&self, module: &str, reason: String) -> LoadError {
        LoadError::BadCheckpoint { path: self.ck.dir.clone(), reason: format!("`{module}`: {reason}") }
    }

    /// A tensor's bytes once its dtype and shape are as expected.
    fn tensor(&self, name: &str, dtypes: &[DType], shape: &[usize]) -> Result<(Bytes, DType), LoadError> {
        let (file, info) = self.ck.tensor(name)?;
        if !dtypes.contains(&info.dtype) {
            return Err(LoadError::WrongDtype {
                path: file.path.clone(),
                tensor: name.into(),
                found: info.dtype.name().into(),
                expected: dtypes.iter().map(|d| d.name()).collect::<Vec<_>>().join(" or "),
            });
        }
        if info.shape != shape {
            return Err(LoadError::WrongShape {
                path: file.path.clone(),
                tensor: name.into(),
                found: info.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok((file.bytes(info), info.dtype))
    }

    /// Quantized linear module `[rows, cols]` as affine parts: (codes, scales, zero points).
    fn quantized(
        &self,
        module: &str,
        rows: usize,
        cols: usize,
    ) -> Result<(Bytes, Vec<f32>, Vec<f32>, usize), LoadError> {
        let group = self.cfg.group.unwrap_or(cols);
        if !group.is_multiple_of(32) || !cols.is_multiple_of(group) {
            return Err(self.bad(module, format!("group size {group} does not tile {cols} inputs in multiples of 32")));
        }
        let groups = cols / group;
        let (shape, _) = self.tensor(&format!("{module}.weight_shape"), &[DType::I64], &[2])?;
        let shape: Vec<i64> =
            shape.as_slice().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        if shape != [rows as i64, cols as i64] {
            return Err(self.bad(module, format!("weight_shape is {shape:?}, the config needs [{rows}, {cols}]")));
        }
        let (codes, _) = self.tensor(&format!("{module}.weight_packed"), &[DType::I32], &[rows, cols / 8])?;
        let float = [DType::BF16, DType::F16, DType::F32];
        let (s, sd) = self.tensor(&format!("{module}.weight_scale"), &float, &[rows, groups])?;
        let scales = floats(&s, sd);
        s.release();
        // Stored nibble u = q + 8, so w = (q − z)·s = s·u − s·(z + 8).
        let zero_plus_8: Vec<f32> = if self.cfg.symmetric {
            vec![8.0; rows * groups]
        } else {
            let name = format!("{module}.weight_zero_point");
            let (z, _) = self.tensor(&name, &[DType::I32], &[rows.div_ceil(8), groups])?;
            let z = z.as_slice();
            // Row o's zero point of group g: nibble o % 8 of word (o / 8, g).
            (0..rows * groups)
                .map(|i| {
                    let (o, g) = (i / groups, i % groups);
                    let w = ((o / 8) * groups + g) * 4;
                    let word = u32::from_le_bytes([z[w], z[w + 1], z[w + 2], z[w + 3]]);
                    ((word >> (4 * (o % 8))) & 0xf) as f32
                })
                .collect()
        };
        let biases = scales.iter().zip(&zero_plus_8).map(|(s, z)| -s * z).collect();
        Ok((codes, scales, biases, group))
    }

    /// A dense linear module (`name` with or without `.weight`): int4 if it has
    /// `weight_packed`, else the plain bf16 `weight` (layers the recipe ignored).
    pub fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<Dense, LoadError> {
        let module = name.strip_suffix(".weight").unwrap_or(name);
        if !self.ck.contains(&format!("{module}.weight_packed")) {
            let (b, _) = self.tensor(&format!("{module}.weight"), &[DType::BF16], &[rows, cols])?;
            return Ok(Dense::Bf16(Bf16Matrix::new(b, rows, cols)));
        }
        let (codes, scales, biases, group) = self.quantized(module, rows, cols)?;
        Ok(Dense::Affine(AffineMatrix::new(codes, scales, biases, 4, group, rows, cols)))
    }

    /// Layer `l`'s experts, each expert's three linear layers gathered into one affine matrix
    /// per projection: gate_up `[E·2I, H]` with gate and up rows interleaved (from
    /// de-interleaved or half-split halves), its bias `[E, 2I]`, down `[E·H, I]` and its bias
    /// `[E, H]`.
    #[allow(clippy::type_complexity)]
    pub fn experts(
        &self,
        l: usize,
        e: usize,
        i: usize,
        h: usize,
    ) -> Result<(Experts, Vec<f32>, Experts, Vec<f32>), LoadError> {
        let module = |x: usize, p: &str| format!("model.layers.{l}.mlp.experts.{x}.{p}");
        if !self.ck.contains(&format!("{}.weight_packed", module(0, "gate_proj"))) {
            return Err(self.bad(
                &module(0, "gate_proj"),
                "experts are not int4 per-expert layers (older llm-compressor releases left them bf16): not supported"
                    .into(),
            ));
        }
        let (mut codes, mut scales, mut zeros, mut bias) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut d_codes, mut d_scales, mut d_zeros, mut group) = (Vec::new(), Vec::new(), Vec::new(), 0);
        let float = [DType::BF16, DType::F16, DType::F32];
        for x in 0..e {
            let (gc, gs, gz, g) = self.quantized(&module(x, "gate_proj"), i, h)?;
            let (uc, us, uz, _) = self.quantized(&module(x, "up_proj"), i, h)?;
            let (gb, gbd) = self.tensor(&format!("{}.bias", module(x, "gate_proj")), &float, &[i])?;
            let (ub, ubd) = self.tensor(&format!("{}.bias", module(x, "up_proj")), &float, &[i])?;
            let (gb, ub) = (floats(&gb, gbd), floats(&ub, ubd));
            // Fused row r: de-interleaved files hold gate unit r/2 (even r) and up unit r/2
            // (odd r) apart; half-split ones hold fused rows 0..I in gate_proj, I..2I in up_proj.
            let (rb, gpr) = (h / 2, h / g);
            for r in 0..2 * i {
                let (from_gate, j) = match self.cfg.half_split {
                    false => (r % 2 == 0, r / 2),
                    true => (r < i, r % i),
                };
                let (c, s, z, b) = if from_gate { (&gc, &gs, &gz, &gb) } else { (&uc, &us, &uz, &ub) };
                codes.extend_from_slice(&c.as_slice()[j * rb..(j + 1) * rb]);
                scales.extend_from_slice(&s[j * gpr..(j + 1) * gpr]);
                zeros.extend_from_slice(&z[j * gpr..(j + 1) * gpr]);
                bias.push(b[j]);
            }
            gc.release();
            uc.release();
            let (dc, ds, dz, dg) = self.quantized(&module(x, "down_proj"), h, i)?;
            d_codes.extend_from_slice(dc.as_slice());
            dc.release();
            d_scales.extend(ds);
            d_zeros.extend(dz);
            group = g;
            if dg != g {
                return Err(self.bad(&module(x, "down_proj"), format!("group {dg} unlike gate_proj's {g}")));
            }
        }
        let bytes = |v: Vec<u8>| Bytes::build(v.len(), |d| d.copy_from_slice(&v));
        let gate_up = AffineMatrix::new(bytes(codes), scales, zeros, 4, group, e * 2 * i, h);
        let down_group = self.cfg.group.unwrap_or(i);
        let down = AffineMatrix::new(bytes(d_codes), d_scales, d_zeros, 4, down_group, e * h, i);
        let mut down_bias = Vec::with_capacity(e * h);
        for x in 0..e {
            let (b, bd) = self.tensor(&format!("{}.bias", module(x, "down_proj")), &float, &[h])?;
            down_bias.extend(floats(&b, bd));
        }
        Ok((Experts::Affine { w: gate_up, experts: e }, bias, Experts::Affine { w: down, experts: e }, down_bias))
    }
}

//! GGUF tensors into the in-memory forms [`crate::weights::ModelWeights`] holds.
//!
//! * Vectors (norm gains, biases, sinks; F32, F16 or BF16) widen to f32: exact.
//! * Dense matrices become bf16, the engine's dense form. BF16 stays in the memory map.
//!   F32 and F16 are converted; that is exact whenever every value is a bf16 value, which
//!   holds for every file converted from the published (bf16) checkpoints, llama.cpp's F32
//!   router included. Values bf16 cannot hold are rounded to nearest even, and the tensor is
//!   recorded ([`super::GgufModel::rounded_tensors`], shown by `gptoss inspect`).
//! * Q8_0 matrices (int8 codes, one f16 scale per 32) keep their codes and scales as the
//!   engine's q8 form ([`crate::weights::Q8Matrix`]; the f16 scale widens exactly). The
//!   engine defines a q8 weight as `bf16(code · scale)`, so each weight is rounded to bf16
//!   (relative error at most 2^-9, well inside Q8_0's own step); the embedding, which is
//!   bf16 only, is stored as those same bf16 values. Such tensors are recorded as rounded.
//! * MXFP4 experts are re-laid from ggml's `block_mxfp4` (scale byte, then 16 bytes whose
//!   low nibbles are elements 0–15 and high nibbles 16–31) into the checkpoint layout the
//!   kernels read (codes pairwise, low nibble first, scales apart), scale bytes unchanged:
//!   bit-exact. Gate and up, split (`ffn_gate_exps`, `ffn_up_exps`) or concatenated
//!   (`ffn_gate_up_exps`: all gate rows, then all up rows), are re-interleaved row by row
//!   (gate 0, up 0, gate 1, …) with their biases.
//!
//! Converted tensors live in owned memory; the mapped pages they came from are released.
//! Tensors are looked up across the parts of a split model ([`GgufModel`]).

use gptoss_kernels::bf16::{bf16_to_f32, f32_to_bf16};
use gptoss_kernels::mxfp4;
use rayon::prelude::*;

use super::{GgmlType, GgufFile, GgufModel, GgufTensor};
use crate::config::Layout;
use crate::error::LoadError;
use crate::safetensors::Bytes;
use crate::weights::{f16_to_f32, Bf16Matrix, Dense, Mxfp4Experts, Q8Matrix};

/// Bytes of one ggml `block_mxfp4`: the E8M0 scale byte, then 16 bytes of codes.
pub const GGML_MXFP4_BLOCK_BYTES: usize = 1 + mxfp4::BLOCK_BYTES;
/// Bytes of one ggml `block_q8_0`: an f16 scale, then 32 int8 codes.
const Q8_0_BLOCK_BYTES: usize = 2 + 32;

/// One element's bytes to (bf16 bits, whether that is exact).
type ToBf16 = fn(&[u8]) -> (u16, bool);

/// A tensor whose values were rounded on the way to bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rounding {
    pub ty: GgmlType,
    /// Values that bf16 could not hold exactly.
    pub changed: usize,
    pub total: usize,
}

/// One ggml block (17 bytes) into the checkpoint layout: writes the 16 code bytes (element
/// 2b in the low nibble of byte b, 2b+1 in the high) and returns the scale byte, unchanged:
/// ggml's half scale times its doubled value table is the same number (spec §3.5).
pub fn ggml_mxfp4_block_to_hf(block: &[u8], codes: &mut [u8]) -> u8 {
    let qs = &block[1..GGML_MXFP4_BLOCK_BYTES];
    // ggml: element j < 16 is the low nibble of qs[j], element j + 16 its high nibble. So
    // output byte b < 8 (elements 2b, 2b+1) takes the low nibbles of qs[2b], qs[2b+1], and
    // byte 8 + b (elements 16 + 2b, 17 + 2b) their high nibbles.
    let (lo, hi) = codes[..mxfp4::BLOCK_BYTES].split_at_mut(8);
    for ((l, h), pair) in lo.iter_mut().zip(hi).zip(qs.chunks_exact(2)) {
        *l = (pair[0] & 0x0f) | (pair[1] << 4);
        *h = (pair[0] >> 4) | (pair[1] & 0xf0);
    }
    block[0]
}

/// The inverse: a scale byte and 16 checkpoint-layout code bytes into one ggml block, as
/// llama.cpp's converter writes it (`qs[j] = code[j] | code[j + 16] << 4`).
pub fn hf_mxfp4_block_to_ggml(scale: u8, codes: &[u8], block: &mut [u8]) {
    let code = |e: usize| if e.is_multiple_of(2) { codes[e / 2] & 0x0f } else { codes[e / 2] >> 4 };
    block[0] = scale;
    for (j, q) in block[1..GGML_MXFP4_BLOCK_BYTES].iter_mut().enumerate() {
        *q = code(j) | (code(j + 16) << 4);
    }
}

/// ggml's own decode of one block (`dequantize_row_mxfp4`): the doubled int8 value table
/// times the half scale 2^(e − 128). Kept independent of the engine's decoder for tests.
pub fn ggml_mxfp4_decode_block(block: &[u8]) -> [f32; 32] {
    const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
    let e = block[0];
    // E8M0_TO_FP32_HALF: bit pattern (e − 1) << 23 for e ≥ 2, subnormals below.
    let d = if e < 2 { f32::from_bits(0x0020_0000 << e) } else { f32::from_bits(((e as u32) - 1) << 23) };
    let mut out = [0f32; 32];
    for (j, &q) in block[1..GGML_MXFP4_BLOCK_BYTES].iter().enumerate() {
        out[j] = KVALUES[(q & 0x0f) as usize] as f32 * d;
        out[j + 16] = KVALUES[(q >> 4) as usize] as f32 * d;
    }
    out
}

/// The rows of one ggml MXFP4 tensor `[E, R, C]` (row-major), each `C/32 · 17` bytes.
struct Mxfp4Rows<'a> {
    data: &'a [u8],
    rows: usize,
    row_bytes: usize,
}

impl Mxfp4Rows<'_> {
    fn row(&self, e: usize, r: usize) -> &[u8] {
        let i = e * self.rows + r;
        &self.data[i * self.row_bytes..(i + 1) * self.row_bytes]
    }
}

/// Experts `[E, rows, cols]` in the checkpoint layout, row `j` of expert `e` taken from
/// ggml row `src(e, j)`. Codes `[E, rows, cols/2]` and scales `[E, rows, cols/32]`.
fn relay_experts<'a>(
    experts: usize,
    rows: usize,
    cols: usize,
    src: impl Fn(usize, usize) -> &'a [u8] + Sync,
) -> Mxfp4Experts {
    let (blocks, half) = (cols / mxfp4::BLOCK, cols / 2);
    let scales = Bytes::build(experts * rows * blocks, |dst| {
        dst.par_chunks_mut(blocks).enumerate().for_each(|(i, out)| {
            for (s, block) in out.iter_mut().zip(src(i / rows, i % rows).chunks_exact(GGML_MXFP4_BLOCK_BYTES)) {
                *s = block[0];
            }
        })
    });
    let codes = Bytes::build(experts * rows * half, |dst| {
        dst.par_chunks_mut(half).enumerate().for_each(|(i, out)| {
            let row = src(i / rows, i % rows);
            for (c, block) in out.chunks_exact_mut(mxfp4::BLOCK_BYTES).zip(row.chunks_exact(GGML_MXFP4_BLOCK_BYTES)) {
                ggml_mxfp4_block_to_hf(block, c);
            }
        })
    });
    Mxfp4Experts::from_parts(codes, scales, experts, rows, cols)
}

/// `[E, 2n]` with gate and up interleaved (gate 0, up 0, gate 1, …) from `[E, n]` halves.
fn interleave(gate: &[f32], up: &[f32], n: usize) -> Vec<f32> {
    gate.chunks_exact(n)
        .zip(up.chunks_exact(n))
        .flat_map(|(g, u)| g.iter().zip(u).flat_map(|(&a, &b)| [a, b]))
        .collect()
}

impl GgufModel {
    fn missing(&self, name: &str) -> LoadError {
        LoadError::MissingTensor { dir: self.path().to_path_buf(), tensor: name.into(), layout: Layout::Gguf.name() }
    }

    fn unsupported(f: &GgufFile, t: &GgufTensor, supported: &'static str) -> LoadError {
        LoadError::UnsupportedTensorType {
            path: f.path.clone(),
            tensor: t.name.clone(),
            ggml_type: t.ty.to_string(),
            supported,
        }
    }

    /// The tensor `name`, and the part holding it, once it has the row-major `shape`.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<(&GgufFile, &GgufTensor), LoadError> {
        let (f, t) = self.tensor(name).ok_or_else(|| self.missing(name))?;
        if t.dims.len() != shape.len() || t.dims.iter().rev().zip(shape).any(|(&d, &s)| d != s as u64) {
            return Err(LoadError::WrongShape {
                path: f.path.clone(),
                tensor: name.into(),
                found: t.shape(),
                expected: shape.to_vec(),
            });
        }
        Ok((f, t))
    }

    fn note_rounding(&self, t: &GgufTensor, changed: usize, total: usize) {
        if changed > 0 {
            if let Ok(mut r) = self.rounded.lock() {
                r.insert(t.name.clone(), Rounding { ty: t.ty, changed, total });
            }
        }
    }

    /// A small tensor of `shape` widened to f32 (F32, F16 or BF16; exact).
    pub(crate) fn vector(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let (f, t) = self.checked(name, shape)?;
        let bytes = f.bytes(t);
        let b = bytes.as_slice();
        Ok(match t.ty {
            GgmlType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            GgmlType::F16 => b.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            GgmlType::BF16 => b.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            _ => return Err(Self::unsupported(f, t, "vectors (norms, biases, sinks) must be F32, F16 or BF16")),
        })
    }

    /// A dense `[rows, cols]` matrix as bf16: BF16 in place, F32 / F16 / Q8_0 converted
    /// (exactness in the module doc).
    pub(crate) fn bf16_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Bf16Matrix, LoadError> {
        const SUPPORTED: &str = "dense weights must be BF16, F16, F32 or Q8_0";
        let (f, t) = self.checked(name, &[rows, cols])?;
        let src = f.bytes(t);
        if t.ty == GgmlType::BF16 {
            return Ok(Bf16Matrix::new(src, rows, cols));
        }
        // Each element to (bf16 bits, exact?), converted row by row in parallel.
        let (elem_bytes, to_bf16): (usize, ToBf16) = match t.ty {
            GgmlType::F32 => (4, |c| {
                let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                let b = f32_to_bf16(x);
                (b, bf16_to_f32(b).to_bits() == x.to_bits() || x.is_nan())
            }),
            GgmlType::F16 => (2, |c| {
                let x = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
                let b = f32_to_bf16(x);
                (b, bf16_to_f32(b).to_bits() == x.to_bits() || x.is_nan())
            }),
            GgmlType::Q8_0 => return self.q8_0_as_bf16(f, t, src, rows, cols),
            _ => return Err(Self::unsupported(f, t, SUPPORTED)),
        };
        let s = src.as_slice();
        let mut changed = 0;
        let data = Bytes::build(rows * cols * 2, |dst| {
            changed = dst
                .par_chunks_mut(cols * 2)
                .zip(s.par_chunks(cols * elem_bytes))
                .map(|(out, row)| {
                    let mut n = 0;
                    for (o, c) in out.chunks_exact_mut(2).zip(row.chunks_exact(elem_bytes)) {
                        let (b, exact) = to_bf16(c);
                        o.copy_from_slice(&b.to_le_bytes());
                        n += usize::from(!exact);
                    }
                    n
                })
                .sum();
        });
        src.release();
        self.note_rounding(t, changed, rows * cols);
        Ok(Bf16Matrix::new(data, rows, cols))
    }

    /// Q8_0 into bf16: each weight is `bf16(code · scale)`, the value the q8 kernels use.
    fn q8_0_as_bf16(
        &self,
        f: &GgufFile,
        t: &GgufTensor,
        src: Bytes,
        rows: usize,
        cols: usize,
    ) -> Result<Bf16Matrix, LoadError> {
        let q8 = Self::q8_0(f, t, &src, rows, cols)?;
        let spr = cols / gptoss_kernels::q8::BLOCK;
        let mut changed = 0;
        let data = Bytes::build(rows * cols * 2, |dst| {
            changed = dst
                .par_chunks_mut(cols * 2)
                .enumerate()
                .map(|(r, out)| {
                    let (codes, scales) = (&q8.codes[r * cols..(r + 1) * cols], &q8.scales[r * spr..(r + 1) * spr]);
                    let mut n = 0;
                    for (i, o) in out.chunks_exact_mut(2).enumerate() {
                        let exact = codes[i] as f32 * scales[i / gptoss_kernels::q8::BLOCK];
                        let b = gptoss_kernels::q8::weight_bf16(codes[i], scales[i / gptoss_kernels::q8::BLOCK]);
                        o.copy_from_slice(&b.to_le_bytes());
                        n += usize::from(bf16_to_f32(b) != exact);
                    }
                    n
                })
                .sum();
        });
        src.release();
        self.note_rounding(t, changed, rows * cols);
        Ok(Bf16Matrix::new(data, rows, cols))
    }

    /// Q8_0 blocks into q8 codes `[rows, cols]` and f32 scales `[rows, cols/32]`.
    fn q8_0(f: &GgufFile, t: &GgufTensor, src: &Bytes, rows: usize, cols: usize) -> Result<Q8Matrix, LoadError> {
        const BLOCK: usize = gptoss_kernels::q8::BLOCK;
        let mut codes = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows * cols / BLOCK];
        let finite = codes
            .par_chunks_mut(BLOCK)
            .zip(scales.par_iter_mut())
            .zip(src.as_slice().par_chunks_exact(Q8_0_BLOCK_BYTES))
            .all(|((c, s), block)| {
                // f16 scale d, then 32 int8 codes: weight = code · d (exact in f32).
                *s = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
                for (q, &b) in c.iter_mut().zip(&block[2..]) {
                    *q = b as i8;
                }
                s.is_finite()
            });
        if !finite {
            return Err(LoadError::BadGguf {
                path: f.path.clone(),
                reason: format!("tensor `{}` (Q8_0) has a block scale that is infinite or NaN", t.name),
            });
        }
        Ok(Q8Matrix { codes, scales, rows, cols })
    }

    /// A dense matrix as the forward pass reads it: Q8_0 as q8 (codes and scales kept),
    /// anything else as [`Self::bf16_matrix`].
    pub(crate) fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<Dense, LoadError> {
        let (f, t) = self.checked(name, &[rows, cols])?;
        if t.ty != GgmlType::Q8_0 {
            return Ok(Dense::Bf16(self.bf16_matrix(name, rows, cols)?));
        }
        let src = f.bytes(t);
        let q8 = Self::q8_0(f, t, &src, rows, cols)?;
        src.release();
        // Rounded in the kernels: count what bf16(code · scale) changes.
        let changed = q8
            .codes
            .par_chunks(gptoss_kernels::q8::BLOCK)
            .zip(q8.scales.par_iter())
            .map(|(c, &s)| {
                c.iter().filter(|&&q| bf16_to_f32(gptoss_kernels::q8::weight_bf16(q, s)) != q as f32 * s).count()
            })
            .sum();
        self.note_rounding(t, changed, rows * cols);
        Ok(Dense::Q8(q8))
    }

    /// An MXFP4 tensor `[E, rows, cols]` (row-major), checked, and the bytes it occupies
    /// (to release once converted).
    fn mxfp4_rows(&self, name: &str, shape: &[usize]) -> Result<(Bytes, Mxfp4Rows<'_>), LoadError> {
        let (f, t) = self.checked(name, shape)?;
        if t.ty != GgmlType::MXFP4 {
            return Err(Self::unsupported(f, t, "expert weights must be MXFP4"));
        }
        let (rows, cols) = (shape[1], shape[2]);
        let data = &f.file_bytes()[t.range.clone()];
        Ok((f.bytes(t), Mxfp4Rows { data, rows, row_bytes: cols / mxfp4::BLOCK * GGML_MXFP4_BLOCK_BYTES }))
    }

    /// Experts `[e, rows, cols]` of one MXFP4 tensor, re-laid (bit-exact).
    pub(crate) fn experts(&self, name: &str, e: usize, rows: usize, cols: usize) -> Result<Mxfp4Experts, LoadError> {
        let (mapped, src) = self.mxfp4_rows(name, &[e, rows, cols])?;
        let out = relay_experts(e, rows, cols, |x, r| src.row(x, r));
        mapped.release();
        Ok(out)
    }

    /// Layer `l`'s gate/up experts `[e, 2i, h]` and bias `[e, 2i]`, rows interleaved (row
    /// 2n = gate unit n, row 2n+1 = up unit n), from split or concatenated tensors.
    pub(crate) fn gate_up(
        &self,
        l: usize,
        e: usize,
        i: usize,
        h: usize,
    ) -> Result<(Mxfp4Experts, Vec<f32>), LoadError> {
        let fused = format!("blk.{l}.ffn_gate_up_exps");
        let (gate, up) = (format!("blk.{l}.ffn_gate_exps"), format!("blk.{l}.ffn_up_exps"));
        if self.tensor(&format!("{fused}.weight")).is_some() && self.tensor(&format!("{gate}.weight")).is_none() {
            // Concatenated: rows 0..i are gate, i..2i up (and the bias alike).
            let (mapped, src) = self.mxfp4_rows(&format!("{fused}.weight"), &[e, 2 * i, h])?;
            let w = relay_experts(e, 2 * i, h, |x, j| src.row(x, if j % 2 == 0 { j / 2 } else { i + j / 2 }));
            mapped.release();
            let b = self.vector(&format!("{fused}.bias"), &[e, 2 * i])?;
            let (g, u): (Vec<_>, Vec<_>) = b.chunks_exact(2 * i).map(|r| r.split_at(i)).unzip();
            return Ok((w, interleave(&g.concat(), &u.concat(), i)));
        }
        let (mapped_g, g) = self.mxfp4_rows(&format!("{gate}.weight"), &[e, i, h])?;
        let (mapped_u, u) = self.mxfp4_rows(&format!("{up}.weight"), &[e, i, h])?;
        let w = relay_experts(e, 2 * i, h, |x, j| if j % 2 == 0 { g.row(x, j / 2) } else { u.row(x, j / 2) });
        mapped_g.release();
        mapped_u.release();
        let (gb, ub) = (self.vector(&format!("{gate}.bias"), &[e, i])?, self.vector(&format!("{up}.bias"), &[e, i])?);
        Ok((w, interleave(&gb, &ub, i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §6.2 / §6.3: the same block in both layouts.
    const HF_CODES: [u8; 16] =
        [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
    const GGML_BLOCK: [u8; 17] =
        [0x7f, 0x00, 0x01, 0x12, 0x13, 0x24, 0x25, 0x36, 0x37, 0x48, 0x49, 0x5a, 0x5b, 0x6c, 0x6d, 0x7e, 0x7f];

    #[test]
    fn spec_block_vector_converts_both_ways() {
        let mut codes = [0u8; 16];
        assert_eq!(ggml_mxfp4_block_to_hf(&GGML_BLOCK, &mut codes), 127);
        assert_eq!(codes, HF_CODES);
        let mut block = [0u8; 17];
        hf_mxfp4_block_to_ggml(127, &HF_CODES, &mut block);
        assert_eq!(block, GGML_BLOCK);
    }

    #[test]
    fn spec_block_vector_decodes_to_the_spec_values() {
        // §6.2, scale byte 127: codes 0..15, then 0,0,1,1,…,7,7.
        let want: Vec<f32> =
            (0..16).map(|c| mxfp4::FP4_VALUES[c]).chain((0..16).map(|j| mxfp4::FP4_VALUES[j / 2])).collect();
        let ggml = ggml_mxfp4_decode_block(&GGML_BLOCK);
        let mut ours = [0f32; 32];
        mxfp4::decode_row(&HF_CODES, &[127], &mut ours);
        for j in 0..32 {
            // ggml decodes code 8 as +0 where the checkpoint table has −0: equal as numbers.
            assert_eq!(ggml[j], want[j], "ggml element {j}");
            assert_eq!(ours[j], want[j], "engine element {j}");
        }
        assert_eq!(ours[15], -6.0);
        // Other scales: ×2 and ×2^-7 (§6.2).
        let mut b = GGML_BLOCK;
        b[0] = 128;
        assert_eq!(ggml_mxfp4_decode_block(&b)[15], -12.0);
        b[0] = 120;
        let d = ggml_mxfp4_decode_block(&b);
        assert_eq!((d[1], d[7], d[15]), (0.00390625, 0.046875, -0.046875));
    }

    #[test]
    fn every_scale_byte_decodes_alike_in_both_layouts() {
        // A block holding every code, at every scale byte that is finite in both decoders.
        let codes: Vec<u8> = (0..16u8).map(|b| (b & 0x0f) | ((15 - b) << 4)).collect();
        let mut block = [0u8; 17];
        for s in 1..=254u8 {
            hf_mxfp4_block_to_ggml(s, &codes, &mut block);
            let mut ours = [0f32; 32];
            mxfp4::decode_row(&codes, &[s], &mut ours);
            assert_eq!(ggml_mxfp4_decode_block(&block), ours, "scale byte {s}");
        }
    }

    #[test]
    fn interleave_alternates_gate_and_up() {
        assert_eq!(
            interleave(&[1.0, 2.0, 5.0, 6.0], &[3.0, 4.0, 7.0, 8.0], 2),
            [1.0, 3.0, 2.0, 4.0, 5.0, 7.0, 6.0, 8.0]
        );
    }
}

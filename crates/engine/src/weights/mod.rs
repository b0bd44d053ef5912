//! The model's tensors as typed, shape-checked views of the checkpoint. Matrices stay where
//! they are in the memory map unless the kernels read another layout (MXFP4 experts in
//! 16-row groups, dense bf16 matrices in 8-row tiles), in which case they are repacked into
//! owned memory once at load; small vectors (norm gains, biases, sinks) are widened to f32.

use gptoss_kernels::bf16::bf16_to_f32;
use gptoss_kernels::mxfp4;

use crate::checkpoint::{Checkpoint, LayerTensor, TensorNames};
use crate::config::{Layout, ModelConfig};
use crate::error::LoadError;
use crate::profile::{Stage, STAGES};
use crate::safetensors::{Bytes, DType};

mod bf16;
mod packed;
pub use bf16::{Bf16Layout, Bf16Matrix};
pub use packed::{AffineMatrix, AffineView, Experts, F32Matrix, Mxfp4Matrix, Q8Matrix};

/// The byte order of MXFP4 expert weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mxfp4Layout {
    /// As in the checkpoint: row after row, read in place from its memory map.
    Rows,
    /// Repacked at load for the integer kernels, 16 rows per vector
    /// ([`gptoss_kernels::mxfp4_r16`]); row ranges that are multiples of 16 slice alike.
    Rows16,
}

/// MXFP4 expert weights: codes `[E, rows, cols/2]` bytes and scales `[E, rows, cols/32]`.
#[derive(Clone)]
pub struct Mxfp4Experts {
    pub(crate) codes: Bytes,
    pub(crate) scales: Bytes,
    pub layout: Mxfp4Layout,
    pub experts: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Mxfp4Experts {
    /// Codes `[experts, rows, cols/2]` and scales `[experts, rows, cols/32]` as stored in the
    /// checkpoints (pairwise nibbles, low first).
    pub(crate) fn from_parts(codes: Bytes, scales: Bytes, experts: usize, rows: usize, cols: usize) -> Self {
        assert_eq!(codes.len(), experts * rows * cols / 2, "Mxfp4Experts: code bytes do not match the shape");
        assert_eq!(scales.len(), experts * rows * cols / mxfp4::BLOCK, "Mxfp4Experts: scales do not match the shape");
        Mxfp4Experts { codes, scales, layout: Mxfp4Layout::Rows, experts, rows, cols }
    }

    /// These weights in `layout`: the same numbers, repacked into owned memory when the
    /// layout changes (the map's pages are released, so RSS does not hold both). Stays in
    /// rows when a matrix cannot be repacked (rows not whole groups of 16, or a scale byte of
    /// 0 or 255, which trained weights never use).
    pub fn with_layout(self, layout: Mxfp4Layout) -> Mxfp4Experts {
        use gptoss_kernels::mxfp4_r16;
        use rayon::prelude::*;
        if layout == self.layout
            || (layout == Mxfp4Layout::Rows16 && !mxfp4_r16::can_pack(self.rows, self.cols, self.scales.as_slice()))
        {
            return self;
        }
        let (c, s) = (self.rows * self.cols / 2, self.rows * self.cols / mxfp4::BLOCK);
        let convert = match layout {
            Mxfp4Layout::Rows16 => mxfp4_r16::pack,
            Mxfp4Layout::Rows => mxfp4_r16::unpack,
        };
        // Map the source in bulk rather than a fault per 4 KiB page.
        self.codes.populate();
        let mut scales = vec![0u8; self.scales.len()];
        let codes = Bytes::build(self.codes.len(), |dst| {
            dst.par_chunks_mut(c).zip(scales.par_chunks_mut(s)).enumerate().for_each(|(e, (dc, ds))| {
                let (src_c, src_s) = self.expert(e);
                convert(src_c, src_s, self.cols, dc, ds);
            });
        });
        self.codes.release();
        self.scales.release();
        Mxfp4Experts { codes, scales: Bytes::build(scales.len(), |d| d.copy_from_slice(&scales)), layout, ..self }
    }

    pub fn populate(&self) {
        self.codes.populate();
        self.scales.populate();
    }

    /// Codes and scales of one expert.
    pub fn bytes_per_expert(&self) -> u64 {
        (self.rows * self.cols / 2 + self.rows * self.cols / mxfp4::BLOCK) as u64
    }

    /// (codes `[rows, cols/2]`, scales `[rows, cols/32]`) of expert `e`.
    pub fn expert(&self, e: usize) -> (&[u8], &[u8]) {
        let (c, s) = (self.rows * self.cols / 2, self.rows * self.cols / mxfp4::BLOCK);
        (&self.codes.as_slice()[e * c..(e + 1) * c], &self.scales.as_slice()[e * s..(e + 1) * s])
    }
}

/// A dense matrix as the forward pass reads it: the checkpoint's bf16 (exact) or q8, or the
/// packed formats MLX checkpoints hold.
pub enum Dense {
    Bf16(Bf16Matrix),
    Q8(Q8Matrix),
    Affine(AffineMatrix),
    Mxfp4(Mxfp4Matrix),
    F32(F32Matrix),
}

/// How dense attention and unembedding weights are held (`--dense`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DenseFormat {
    /// As in the checkpoint; exact.
    #[default]
    Bf16,
    /// Requantized to 8 bits at load: about half the bytes per token, at an accuracy cost.
    Q8,
}

impl DenseFormat {
    pub fn name(self) -> &'static str {
        match self {
            DenseFormat::Bf16 => "bf16",
            DenseFormat::Q8 => "q8",
        }
    }
}

impl Dense {
    pub fn rows(&self) -> usize {
        match self {
            Dense::Bf16(m) => m.rows,
            Dense::Q8(m) => m.rows,
            Dense::Affine(m) => m.rows,
            Dense::Mxfp4(m) => m.rows,
            Dense::F32(m) => m.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Dense::Bf16(m) => m.cols,
            Dense::Q8(m) => m.cols,
            Dense::Affine(m) => m.cols,
            Dense::Mxfp4(m) => m.cols,
            Dense::F32(m) => m.cols,
        }
    }

    /// Bytes the forward pass reads for the whole matrix.
    pub fn bytes(&self) -> u64 {
        match self {
            Dense::Bf16(m) => m.bytes(),
            Dense::Q8(m) => (m.codes.len() + 4 * m.scales.len()) as u64,
            Dense::Affine(m) => Dense::affine_bytes(m),
            Dense::Mxfp4(m) => (m.codes.len() + m.scales.len()) as u64,
            Dense::F32(m) => 4 * m.data.len() as u64,
        }
    }

    /// The bf16 matrix, if held as one.
    pub fn as_bf16(&self) -> Option<&Bf16Matrix> {
        match self {
            Dense::Bf16(m) => Some(m),
            _ => None,
        }
    }

    fn affine_bytes(m: &AffineMatrix) -> u64 {
        (m.codes.len() + 4 * (m.scales.len() + m.biases.len())) as u64
    }

    /// Bytes one row takes to look up (the embedding).
    pub fn row_bytes(&self) -> u64 {
        self.bytes() / self.rows().max(1) as u64
    }

    /// The format's name, for `inspect` and errors.
    pub fn format(&self) -> String {
        match self {
            Dense::Bf16(_) => "bf16".into(),
            Dense::Q8(_) => "q8".into(),
            Dense::Affine(m) => format!("affine {}-bit g{}", m.bits, m.group),
            Dense::Mxfp4(_) => "mxfp4".into(),
            Dense::F32(_) => "f32 (widened from f16)".into(),
        }
    }

    /// Row `r` as f32 (the embedding lookup), decoded as the matmuls decode it.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let k = self.cols();
        match self {
            Dense::F32(m) => out.copy_from_slice(&m.data[r * k..(r + 1) * k]),
            Dense::Bf16(m) => gptoss_kernels::bf16::bf16_slice_to_f32(m.row(r), out),
            Dense::Q8(m) => {
                let spr = k / gptoss_kernels::q8::BLOCK;
                gptoss_kernels::q8::dequantize_row(&m.codes[r * k..(r + 1) * k], &m.scales[r * spr..(r + 1) * spr], out)
            }
            Dense::Affine(m) if m.layout == Mxfp4Layout::Rows16 => {
                // Code by code out of the tiles: no buffer, so nothing allocated per token.
                let tiles = m.codes();
                for (j, w) in out.iter_mut().enumerate() {
                    let (b, p) = (j / 32, (j % 32) / 2);
                    let byte =
                        tiles[((r / 16) * (k / 32) + b) * 256 + gptoss_kernels::mxfp4_r16::tile_offset(r % 16, p)];
                    let q = (byte >> (4 * (j % 2))) & 0xf;
                    let s = gptoss_kernels::affine_r16::scale_at(&m.scales, k, r, b);
                    let c = m.biases.get(r * (k / m.group) + j / m.group).copied().unwrap_or(0.0);
                    *w = s * (q as f32 - 8.0) + c;
                }
            }
            Dense::Affine(m) => {
                let (c, s, b) = m.view().row(k, r);
                gptoss_kernels::affine::decode_row(c, s, b, m.bits, m.group, out)
            }
            Dense::Mxfp4(m) => {
                let (cb, sb) = (k / 2, k / mxfp4::BLOCK);
                mxfp4::decode_row(&m.codes()[r * cb..(r + 1) * cb], &m.scales()[r * sb..(r + 1) * sb], out)
            }
        }
    }

    pub fn populate(&self) {
        match self {
            Dense::Bf16(m) => m.populate(),
            Dense::Affine(m) => m.codes.populate(),
            Dense::Mxfp4(m) => {
                m.codes.populate();
                m.scales.populate();
            }
            Dense::Q8(_) | Dense::F32(_) => {}
        }
    }

    /// Only q8 requantizes, and only once (K must be a multiple of 32, as in gpt-oss).
    fn convert_to(&mut self, format: DenseFormat) {
        if let (DenseFormat::Q8, Dense::Bf16(m)) = (format, &mut *self) {
            if m.cols.is_multiple_of(gptoss_kernels::q8::BLOCK) {
                // Requantizing reads rows.
                m.set_layout(Bf16Layout::Rows);
                let q8 = Q8Matrix::from_bf16(m);
                m.data.release();
                *self = Dense::Q8(q8);
            }
        }
    }
}

pub struct AttentionWeights {
    pub norm: Vec<f32>,     // [H]
    pub q: Dense,           // [NQ·HD, H]
    pub k: Dense,           // [NKV·HD, H]
    pub v: Dense,           // [NKV·HD, H]
    pub q_bias: Vec<f32>,   // [NQ·HD]
    pub k_bias: Vec<f32>,   // [NKV·HD]
    pub v_bias: Vec<f32>,   // [NKV·HD]
    pub out: Dense,         // [H, NQ·HD]
    pub out_bias: Vec<f32>, // [H]
    pub sinks: Vec<f32>,    // [NQ]
}

pub struct MoeWeights {
    pub norm: Vec<f32>,        // [H]
    pub router: Dense,         // [E, H]
    pub router_bias: Vec<f32>, // [E]
    /// Rows interleave (gate, up): row 2n is gate unit n, row 2n+1 is up unit n.
    pub gate_up: Experts, // [E, 2I, H]
    pub gate_up_bias: Vec<f32>, // [E, 2I]
    pub down: Experts,         // [E, H, I]
    pub down_bias: Vec<f32>,   // [E, H]
}

pub struct LayerWeights {
    pub attn: AttentionWeights,
    pub moe: MoeWeights,
}

pub struct ModelWeights {
    pub embedding: Dense, // [V, H]
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,     // [H]
    pub unembedding: Dense, // [V, H]
}

impl ModelWeights {
    /// Faults in every page a forward pass reads, except the embedding's, of which each token
    /// reads one row: without this, the first use of each expert stalls on page faults (a
    /// decode then runs at a third of its speed until every expert has been used once).
    pub fn populate(&self) {
        self.unembedding.populate();
        for layer in &self.layers {
            let (a, m) = (&layer.attn, &layer.moe);
            for w in [&a.q, &a.k, &a.v, &a.out] {
                w.populate();
            }
            m.router.populate();
            m.gate_up.populate();
            m.down.populate();
        }
    }

    /// Weight bytes one decoded token reads: every dense matrix and vector, the embedding
    /// row, and `experts_per_token` experts per layer (the KV cache is not counted).
    pub fn bytes_per_token(&self, experts_per_token: usize) -> u64 {
        self.stage_bytes(experts_per_token).iter().map(|s| s.1).sum()
    }

    /// [`ModelWeights::bytes_per_token`] by the stage that reads them, every stage listed.
    pub fn stage_bytes(&self, experts_per_token: usize) -> Vec<(Stage, u64)> {
        let f32s = |vs: &[&Vec<f32>]| vs.iter().map(|v| 4 * v.len() as u64).sum::<u64>();
        let by = |stage: Stage| -> u64 {
            let per_layer = |layer: &LayerWeights| {
                let (a, m) = (&layer.attn, &layer.moe);
                let experts = |w: &Experts, bias: &Vec<f32>| {
                    experts_per_token as u64 * (w.bytes_per_expert() + 4 * bias.len() as u64 / w.experts() as u64)
                };
                match stage {
                    Stage::AttnNorm => f32s(&[&a.norm]),
                    Stage::Qkv => a.q.bytes() + a.k.bytes() + a.v.bytes() + f32s(&[&a.q_bias, &a.k_bias, &a.v_bias]),
                    Stage::Attention => f32s(&[&a.sinks]),
                    Stage::AttnOut => a.out.bytes() + f32s(&[&a.out_bias]),
                    Stage::MlpNorm => f32s(&[&m.norm]),
                    Stage::Router => m.router.bytes() + f32s(&[&m.router_bias]),
                    Stage::GateUp => experts(&m.gate_up, &m.gate_up_bias),
                    Stage::Down => experts(&m.down, &m.down_bias),
                    _ => 0,
                }
            };
            let model = match stage {
                Stage::Embedding => self.embedding.row_bytes(),
                Stage::FinalNorm => f32s(&[&self.norm]),
                Stage::Unembedding => self.unembedding.bytes(),
                _ => 0,
            };
            model + self.layers.iter().map(per_layer).sum::<u64>()
        };
        STAGES.iter().map(|&s| (s, by(s))).collect()
    }

    /// How each class of matrix is held: (class, format, bits per weight as read), for
    /// `inspect`. Layer 0 stands for every layer.
    pub fn formats(&self) -> Vec<(&'static str, String, f64)> {
        let bits = |d: &Dense| 8.0 * d.bytes() as f64 / (d.rows() * d.cols()) as f64;
        let dense = |name, d: &Dense| (name, d.format(), bits(d));
        let mut out = vec![dense("embedding", &self.embedding)];
        if let Some(l) = self.layers.first() {
            let (a, m) = (&l.attn, &l.moe);
            out.push(dense("attention q/k/v", &a.q));
            out.push(dense("attention output", &a.out));
            out.push(dense("router", &m.router));
            let e = &m.gate_up;
            out.push(("experts", e.format(), 8.0 * e.bytes_per_expert() as f64 / (e.rows() * e.cols()) as f64));
        }
        out.push(dense("unembedding", &self.unembedding));
        out
    }

    /// Every tensor is checked for presence, dtype and shape against the config.
    pub fn load(ck: &Checkpoint) -> Result<Self, LoadError> {
        let cfg = &ck.config;
        let names = TensorNames { layout: ck.layout };
        let ld = Loader { ck };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let layers = (0..cfg.num_layers).map(|l| load_layer(&ld, &names, cfg, l)).collect::<Result<Vec<_>, _>>()?;
        Ok(ModelWeights {
            embedding: ld.dense(names.embedding(), v, h)?,
            layers,
            norm: ld.vector(names.final_norm(), &[h])?,
            unembedding: ld.dense(names.unembedding(), v, h)?,
        })
    }

    /// Puts every MXFP4 expert matrix in `layout` (see [`Mxfp4Experts::with_layout`]).
    /// Puts every expert matrix in `layout` (MXFP4) or `affine_layout` (affine experts).
    pub fn set_expert_layout(&mut self, layout: Mxfp4Layout, affine_layout: Mxfp4Layout) {
        for layer in &mut self.layers {
            let m = &mut layer.moe;
            for w in [&mut m.gate_up, &mut m.down] {
                w.set_layout(layout, affine_layout);
            }
        }
    }

    /// Puts the 4-bit affine attention and unembedding matrices in `layout` (the embedding is
    /// read a row at a time and no recipe makes the router 4-bit: both stay in rows).
    pub fn set_affine_layout(&mut self, layout: Mxfp4Layout) {
        self.dense_mut().for_each(|w| {
            if let Dense::Affine(m) = w {
                m.set_layout(layout)
            }
        });
    }

    /// Puts the bf16 attention and unembedding matrices in `layout` (the router stays in rows:
    /// it goes through the f32-activation kernels, and the embedding is read a row at a time).
    ///
    /// In anonymous memory either way (see `Bf16Matrix::moves_for`), all in one map with the
    /// routers ([`Bytes::build_parts`]), all moved to a new one when any moves: with one map
    /// per matrix, the 4 KiB pages at their ends held ~180 of the 2.3 GiB that a 20b token
    /// reads of them, and the routers, read in place, were in the checkpoint's 4 KiB pages.
    pub fn set_dense_layout(&mut self, layout: Bf16Layout) {
        let ModelWeights { layers, unembedding, .. } = self;
        let per_layer = layers.iter_mut().flat_map(|l| {
            let (a, router) = (&mut l.attn, &mut l.moe.router);
            [
                (&mut a.q, layout),
                (&mut a.k, layout),
                (&mut a.v, layout),
                (&mut a.out, layout),
                (router, Bf16Layout::Rows),
            ]
        });
        let mut moving: Vec<(&mut Bf16Matrix, Bf16Layout)> = std::iter::once((unembedding, layout))
            .chain(per_layer)
            .filter_map(|(w, layout)| match w {
                Dense::Bf16(m) => {
                    let target = m.layout_for(layout);
                    Some((m, target))
                }
                _ => None,
            })
            .collect();
        // All or none: a matrix left behind would hold the whole of the old map resident.
        if !moving.iter().any(|(m, target)| m.moves_for(*target)) {
            return;
        }
        let lens: Vec<usize> = moving.iter().map(|(m, _)| m.data.len()).collect();
        let parts = Bytes::build_parts(&lens, |i, dst| moving[i].0.write_in(moving[i].1, dst));
        for ((m, target), data) in moving.iter_mut().zip(parts) {
            m.adopt(data, *target);
        }
    }

    /// The attention and unembedding matrices: the ones `--dense` and the tiled layout apply to.
    fn dense_mut(&mut self) -> impl Iterator<Item = &mut Dense> {
        let attn = self.layers.iter_mut().flat_map(|l| {
            let a = &mut l.attn;
            [&mut a.q, &mut a.k, &mut a.v, &mut a.out]
        });
        std::iter::once(&mut self.unembedding).chain(attn)
    }

    /// Q8 if any attention or unembedding matrix is held as q8, else bf16.
    pub fn dense_format(&self) -> DenseFormat {
        let q8 = |d: &Dense| matches!(d, Dense::Q8(_));
        let attn = self.layers.iter().flat_map(|l| [&l.attn.q, &l.attn.k, &l.attn.v, &l.attn.out]);
        if q8(&self.unembedding) || attn.into_iter().any(q8) {
            DenseFormat::Q8
        } else {
            DenseFormat::Bf16
        }
    }

    /// Converts the attention and unembedding matrices to `format` (the router stays bf16:
    /// its top-k choice is discontinuous and it is tiny).
    pub fn set_dense_format(&mut self, format: DenseFormat) {
        self.dense_mut().for_each(|w| w.convert_to(format));
    }
}

fn load_layer(ld: &Loader, names: &TensorNames, cfg: &ModelConfig, l: usize) -> Result<LayerWeights, LoadError> {
    use LayerTensor::*;
    let n = |t| names.layer(l, t);
    let (h, i, e) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let (q, k, v, q_bias, k_bias, v_bias) = match names.layout {
        Layout::HuggingFace | Layout::Mlx | Layout::CompressedTensors | Layout::Gguf => (
            ld.dense(&n(QWeight), qd, h)?,
            ld.dense(&n(KWeight), kvd, h)?,
            ld.dense(&n(VWeight), kvd, h)?,
            ld.vector(&n(QBias), &[qd])?,
            ld.vector(&n(KBias), &[kvd])?,
            ld.vector(&n(VBias), &[kvd])?,
        ),
        Layout::Original => {
            // Fused rows: Q 0..qd, K qd..qd+kvd, V qd+kvd..qd+2kvd.
            let qkv = ld.matrix(&n(QkvWeight), qd + 2 * kvd, h)?;
            let mut bias = ld.vector(&n(QkvBias), &[qd + 2 * kvd])?;
            let v_bias = bias.split_off(qd + kvd);
            let k_bias = bias.split_off(qd);
            let block = |start, rows| Dense::Bf16(qkv.row_block(start, rows));
            (block(0, qd), block(qd, kvd), block(qd + kvd, kvd), bias, k_bias, v_bias)
        }
    };
    let mut per_expert_down_bias = None;
    let (gate_up, gate_up_bias, down) = match (ld.ck.gguf.as_ref(), ld.mlx(), ld.w4a16()) {
        // ggml stores gate and up apart (or concatenated) in their own MXFP4 blocks.
        (Some(g), _, _) => {
            let (gate_up, bias) = g.gate_up(l, e, i, h)?;
            (Experts::Mxfp4(gate_up), bias, Experts::Mxfp4(g.experts(&n(DownBlocks), e, h, i)?))
        }
        // So does mlx-lm, in the checkpoints' MXFP4 bytes.
        (None, Some(m), _) => m.experts(l, e, i, h)?,
        // llm-compressor writes every expert as its own linear layers, biases included.
        (None, None, Some(w)) => {
            let (gate_up, bias, down, down_bias) = w.experts(l, e, i, h)?;
            per_expert_down_bias = Some(down_bias);
            (gate_up, bias, down)
        }
        (None, None, None) => (
            Experts::Mxfp4(ld.experts(&n(GateUpBlocks), &n(GateUpScales), e, 2 * i, h)?),
            ld.vector(&n(GateUpBias), &[e, 2 * i])?,
            Experts::Mxfp4(ld.experts(&n(DownBlocks), &n(DownScales), e, h, i)?),
        ),
    };
    let down_bias = match per_expert_down_bias {
        Some(b) => b,
        None => ld.vector(&n(DownBias), &[e, h])?,
    };
    Ok(LayerWeights {
        attn: AttentionWeights {
            norm: ld.vector(&n(AttnNorm), &[h])?,
            q,
            k,
            v,
            q_bias,
            k_bias,
            v_bias,
            out: ld.dense(&n(OutWeight), h, qd)?,
            out_bias: ld.vector(&n(OutBias), &[h])?,
            sinks: ld.vector(&n(Sinks), &[cfg.num_heads])?,
        },
        moe: MoeWeights {
            norm: ld.vector(&n(MlpNorm), &[h])?,
            router: ld.router(&n(RouterWeight), e, h)?,
            router_bias: ld.vector(&n(RouterBias), &[e])?,
            gate_up,
            gate_up_bias,
            down,
            down_bias,
        },
    })
}

struct Loader<'a> {
    ck: &'a Checkpoint,
}

impl Loader<'_> {
    /// The tensor's bytes and dtype, once its dtype is one of `dtypes` and its shape is `shape`.
    fn check(&self, name: &str, dtypes: &[DType], shape: &[usize]) -> Result<(Bytes, DType), LoadError> {
        let (file, info) = self.ck.tensor(name).map_err(|e| self.explain_missing(name, e))?;
        if !dtypes.contains(&info.dtype) {
            let expected = dtypes.iter().map(|d| d.name()).collect::<Vec<_>>().join(" or ");
            return Err(LoadError::WrongDtype {
                path: file.path.clone(),
                tensor: name.into(),
                found: info.dtype.name().into(),
                expected,
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

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Bf16Matrix, LoadError> {
        if let Some(g) = &self.ck.gguf {
            return g.bf16_matrix(name, rows, cols);
        }
        Ok(Bf16Matrix::new(self.check(name, &[DType::BF16], &[rows, cols])?.0, rows, cols))
    }

    /// A dense matrix as the forward pass reads it (a GGUF's Q8_0 stays q8, an MLX module
    /// stays in its quantized form).
    fn dense(&self, name: &str, rows: usize, cols: usize) -> Result<Dense, LoadError> {
        if let Some(m) = self.mlx() {
            return m.dense(name, rows, cols);
        }
        if let Some(w) = self.w4a16() {
            return w.dense(name, rows, cols);
        }
        match &self.ck.gguf {
            Some(g) => g.dense(name, rows, cols),
            None => Ok(Dense::Bf16(self.matrix(name, rows, cols)?)),
        }
    }

    /// The router: bf16, except in MLX conversions, which quantize it (8-bit affine), and in
    /// W4A16 ones made from an fp16 model.
    fn router(&self, name: &str, rows: usize, cols: usize) -> Result<Dense, LoadError> {
        match (self.mlx(), self.w4a16()) {
            (Some(m), _) => m.dense(name, rows, cols),
            (None, Some(w)) => w.dense(name, rows, cols),
            (None, None) => Ok(Dense::Bf16(self.matrix(name, rows, cols)?)),
        }
    }

    fn w4a16(&self) -> Option<crate::w4a16::W4a16Loader<'_>> {
        self.ck.w4a16.as_ref().map(|cfg| crate::w4a16::W4a16Loader { ck: self.ck, cfg })
    }

    fn mlx(&self) -> Option<crate::mlx::MlxLoader<'_>> {
        self.ck.mlx.as_ref().map(|quant| crate::mlx::MlxLoader { ck: self.ck, quant })
    }

    /// A small tensor widened to f32; bf16, f16 and f32 are accepted.
    fn vector(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        if let Some(g) = &self.ck.gguf {
            return g.vector(name, shape);
        }
        let (bytes, dtype) = self.check(name, &[DType::BF16, DType::F16, DType::F32], shape)?;
        let b = bytes.as_slice();
        Ok(match dtype {
            DType::BF16 => b.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
            _ => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        })
    }

    fn experts(
        &self,
        blocks: &str,
        scales: &str,
        e: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Mxfp4Experts, LoadError> {
        let g = cols / mxfp4::BLOCK;
        let (codes, _) = self.check(blocks, &[DType::U8], &[e, rows, g, mxfp4::BLOCK_BYTES])?;
        let (scales, _) = self.check(scales, &[DType::U8], &[e, rows, g])?;
        Ok(Mxfp4Experts { codes, scales, layout: Mxfp4Layout::Rows, experts: e, rows, cols })
    }

    /// Dequantized (bf16) expert checkpoints exist; say so instead of "missing tensor".
    fn explain_missing(&self, name: &str, err: LoadError) -> LoadError {
        if let Some(stem) = name.strip_suffix("_blocks").or_else(|| name.strip_suffix(".blocks")) {
            if self.ck.contains(stem) {
                return LoadError::BadCheckpoint {
                    path: self.ck.dir.clone(),
                    reason: format!("expert tensor `{stem}` is not MXFP4 (no `_blocks`/`_scales`); dequantized checkpoints are not supported"),
                };
            }
        }
        err
    }
}

/// bf16, f16 or f32 values widened to f32 (the caller checked the dtype).
pub(crate) fn floats(b: &Bytes, dtype: DType) -> Vec<f32> {
    let b = b.as_slice();
    match dtype {
        DType::BF16 => b.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        DType::F16 => b.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        _ => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
    }
}

pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            let v = m as f32 * 2f32.powi(-24); // subnormal
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | (((e - 15 + 127) as u32) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_matrices_move_into_one_map_in_either_layout() {
        let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny/hf");
        let mut w = ModelWeights::load(&Checkpoint::open(&tiny).unwrap()).unwrap();
        fn bf16(d: &Dense) -> &Bf16Matrix {
            match d {
                Dense::Bf16(m) => m,
                _ => panic!("the tiny model loads bf16"),
            }
        }
        let rows_before = bf16(&w.unembedding).bf16().to_vec();
        assert!(bf16(&w.unembedding).data.is_mapped());
        let mut before: Option<Bytes> = None;
        for layout in [Bf16Layout::Tiles8, Bf16Layout::Rows, Bf16Layout::Rows] {
            w.set_dense_layout(layout);
            let first = bf16(&w.unembedding).data.clone();
            // Untiling moves every matrix (the routers too), so nothing holds the old map.
            if let (Bf16Layout::Rows, Some(old)) = (layout, before.take()) {
                assert!(!old.shares_storage_with(&first));
                assert_eq!(old.storage_holders(), 1, "a matrix still holds the tiled map");
            }
            let attn = w.layers.iter().flat_map(|l| [&l.attn.q, &l.attn.k, &l.attn.v, &l.attn.out]);
            for m in std::iter::once(&w.unembedding).chain(attn).map(bf16) {
                assert!(!m.data.is_mapped());
                assert!(m.data.shares_storage_with(&first), "a dense matrix has a map of its own");
                assert_eq!(m.layout, m.layout_for(layout));
            }
            for router in w.layers.iter().map(|l| bf16(&l.moe.router)) {
                assert!(router.data.shares_storage_with(&first), "a router has a map of its own");
                assert_eq!(router.layout, Bf16Layout::Rows, "a router left rows");
            }
            assert_eq!(bf16(&w.unembedding).layout, layout, "the tiny unembedding tiles");
            before = (layout == Bf16Layout::Tiles8).then_some(first);
        }
        assert_eq!(bf16(&w.unembedding).bf16(), &rows_before[..]);
    }

    #[test]
    fn f16_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
    }
}

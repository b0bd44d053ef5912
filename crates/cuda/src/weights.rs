//! The model's weights in device memory, in the layouts the kernels read: attention (q, k, v
//! fused) and the unembedding as frag16 bf16, the experts as frag4 MXFP4 (4.25 bits a
//! weight, never expanded), the router and embedding as bf16 rows, small vectors as f32.
//!
//! Matrices go up as stored and are re-laid on the device (through one staging buffer, a
//! chunk at a time), so loading costs one pass over the bytes. `--synth` fills the staging
//! buffer with random values on the device instead of copying a checkpoint.

use gptoss_engine::weights::{Dense, ModelWeights, Mxfp4Experts};
use gptoss_engine::ModelConfig;

use crate::args;
use crate::driver::{DevBuf, Gpu};
use crate::layout::TileShape;
use crate::plan::k_slices;
use crate::CudaError;

/// Bytes of the staging buffer matrices pass through on their way up.
pub const STAGING_BYTES: usize = 256 << 20;

pub struct Dense16 {
    pub buf: DevBuf,
    pub shape: TileShape,
    /// K slices (see plan::k_slices).
    pub slices: usize,
}

pub struct Experts4 {
    pub codes: DevBuf,
    pub scales: DevBuf,
    pub shape: TileShape,
    pub experts: usize,
    pub slices: usize,
}

impl Experts4 {
    pub fn code_stride(&self) -> usize {
        self.shape.frag4_code_words() * 4
    }
    pub fn scale_stride_words(&self) -> usize {
        self.shape.frag4_scale_words()
    }
}

pub struct LayerW {
    pub attn_norm: DevBuf,
    pub qkv: Dense16,
    pub qkv_bias: DevBuf,
    pub out: Dense16,
    pub out_bias: DevBuf,
    pub sinks: DevBuf,
    pub mlp_norm: DevBuf,
    pub router: DevBuf,
    pub router_bias: DevBuf,
    pub gate_up: Experts4,
    pub gate_up_bias: DevBuf,
    pub down: Experts4,
    pub down_bias: DevBuf,
}

pub struct DeviceWeights {
    pub embedding: DevBuf,
    pub layers: Vec<LayerW>,
    pub norm: DevBuf,
    pub unembedding: Dense16,
}

/// Device bytes of the weights of `cfg` as held here.
pub fn weight_bytes(cfg: &ModelConfig) -> u64 {
    let (h, i, e, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.vocab_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let f16 = |r, c| TileShape::new(r, c).frag16_words() as u64 * 4;
    let f4 = |r, c| {
        let s = TileShape::new(r, c);
        (s.frag4_code_words() + s.frag4_scale_words()) as u64 * 4
    };
    let per_layer = 4 * (h + (qd + 2 * kvd) + h + cfg.num_heads + h + e + e * 2 * i + e * h) as u64
        + f16(qd + 2 * kvd, h)
        + f16(h, qd)
        + 2 * (e * h) as u64
        + e as u64 * (f4(2 * i, h) + f4(h, i));
    2 * (v * h) as u64 + cfg.num_layers as u64 * per_layer + 4 * h as u64 + f16(v, h)
}

/// Where a matrix's values come from.
pub enum Src<'a> {
    /// bf16 rows, possibly in several blocks stacked (q, k, v).
    Bf16(Vec<&'a [u16]>),
    /// MXFP4 experts as the checkpoint stores them.
    Mxfp4(&'a Mxfp4Experts),
    /// Random: bf16 uniform ±half (dense), or MXFP4 codes with scales base..base+2.
    RandBf16 {
        seed: u64,
        half: f32,
    },
    RandMxfp4 {
        seed: u64,
        scale_base: i32,
    },
}

pub struct Uploader<'g> {
    pub gpu: &'g mut Gpu,
    staging: DevBuf,
}

impl<'g> Uploader<'g> {
    pub fn new(gpu: &'g mut Gpu) -> Result<Self, CudaError> {
        let staging = gpu.alloc(STAGING_BYTES)?;
        Ok(Uploader { gpu, staging })
    }

    fn synth_bf16(&mut self, dst: u64, n: usize, seed: u64, center: f32, half: f32) -> Result<(), CudaError> {
        let (n64, grid) = (n as i64, n.div_ceil(256).min(8192));
        let f = self.gpu.func("synth_bf16", 0)?;
        self.gpu.launch(f, (grid as u32, 1, 1), 256, 0, &mut args![dst, n64, seed, center, half])
    }

    fn synth_bytes(&mut self, dst: u64, n: usize, seed: u64, scale_base: i32) -> Result<(), CudaError> {
        let (n64, grid) = (n as i64, n.div_ceil(256).min(8192));
        let f = self.gpu.func("synth_bytes", 0)?;
        self.gpu.launch(f, (grid as u32, 1, 1), 256, 0, &mut args![dst, n64, seed, scale_base])
    }

    /// f32 vector: host values, or random center ± half.
    pub fn vector(
        &mut self,
        host: Option<&[f32]>,
        n: usize,
        seed: u64,
        center: f32,
        half: f32,
    ) -> Result<DevBuf, CudaError> {
        let buf = self.gpu.alloc(n * 4)?;
        match host {
            Some(v) => {
                assert_eq!(v.len(), n, "vector length");
                self.gpu.upload(buf.ptr, v)?;
            }
            None => {
                let (n64, grid) = (n as i64, n.div_ceil(256).clamp(1, 8192));
                let f = self.gpu.func("synth_f32", 0)?;
                self.gpu.launch(f, (grid as u32, 1, 1), 256, 0, &mut args![buf.ptr, n64, seed, center, half])?;
            }
        }
        Ok(buf)
    }

    /// bf16 rows kept as rows (embedding, router).
    pub fn bf16_rows(&mut self, src: Src, rows: usize, cols: usize) -> Result<DevBuf, CudaError> {
        let buf = self.gpu.alloc(rows * cols * 2)?;
        match src {
            Src::Bf16(blocks) => {
                let mut off = 0;
                for b in blocks {
                    self.gpu.upload(buf.ptr + off as u64, b)?;
                    off += b.len() * 2;
                }
                assert_eq!(off, rows * cols * 2, "bf16 rows: blocks do not make the shape");
            }
            Src::RandBf16 { seed, half } => self.synth_bf16(buf.ptr, rows * cols, seed, 0.0, half)?,
            _ => unreachable!("bf16_rows takes bf16 sources"),
        }
        Ok(buf)
    }

    /// A bf16 matrix `[rows, cols]` into frag16, `items` matrices used per decoded token.
    pub fn dense(&mut self, src: Src, rows: usize, cols: usize, items: usize) -> Result<Dense16, CudaError> {
        let shape = TileShape::new(rows, cols);
        let buf = self.gpu.alloc(shape.frag16_words() * 4)?;
        let words_per_mt = shape.kb * 4 * 32 * 4;
        // Whole 16-row tiles per chunk, as many as the staging buffer holds.
        let mts_per_chunk = (STAGING_BYTES / (16 * cols * 2)).max(1);
        let flat: Vec<u16>;
        let host: Option<&[u16]> = match &src {
            Src::Bf16(blocks) if blocks.len() == 1 => Some(blocks[0]),
            Src::Bf16(blocks) => {
                flat = blocks.concat();
                Some(&flat)
            }
            _ => None,
        };
        let mut mt0 = 0;
        while mt0 < shape.mt {
            let mts = mts_per_chunk.min(shape.mt - mt0);
            let r0 = mt0 * 16;
            let r = (mts * 16).min(rows - r0);
            match (&src, host) {
                (_, Some(h)) => self.gpu.upload(self.staging.ptr, &h[r0 * cols..(r0 + r) * cols])?,
                (Src::RandBf16 { seed, half }, None) => self.synth_bf16(
                    self.staging.ptr,
                    r * cols,
                    seed ^ (r0 as u64).wrapping_mul(0x9e37_79b9),
                    0.0,
                    *half,
                )?,
                _ => unreachable!("dense takes bf16 sources"),
            }
            let (sp, dp) = (self.staging.ptr, buf.ptr + (mt0 * words_per_mt * 4) as u64);
            let (rr, cc, mtc, ks) = (r as i32, cols as i32, mts as i32, (shape.kb * 4) as i32);
            let (sstride, dstride) = (0i64, 0i64);
            let words = mts * words_per_mt;
            let f = self.gpu.func("relayout_frag16", 0)?;
            self.gpu.launch(
                f,
                (words.div_ceil(256) as u32, 1, 1),
                256,
                0,
                &mut args![sp, sstride, rr, cc, dp, dstride, mtc, ks],
            )?;
            self.gpu.sync()?;
            mt0 += mts;
        }
        Ok(Dense16 { buf, shape, slices: k_slices(shape.mt, shape.kb, items) })
    }

    /// MXFP4 experts `[experts, rows, cols]` into frag4.
    pub fn experts(
        &mut self,
        src: Src,
        experts: usize,
        rows: usize,
        cols: usize,
        k: usize,
    ) -> Result<Experts4, CudaError> {
        let shape = TileShape::new(rows, cols);
        let (cw, sw) = (shape.frag4_code_words(), shape.frag4_scale_words());
        let codes = self.gpu.alloc(experts * cw * 4)?;
        let scales = self.gpu.alloc(experts * sw * 4)?;
        let (raw_c, raw_s) = (rows * cols / 2, rows * cols / 32);
        let per_chunk = (STAGING_BYTES / (raw_c + raw_s)).max(1);
        let mut e0 = 0;
        while e0 < experts {
            let n = per_chunk.min(experts - e0);
            let (sc, ss) = (self.staging.ptr, self.staging.ptr + (n * raw_c) as u64);
            match &src {
                Src::Mxfp4(m) => {
                    for j in 0..n {
                        let (c, s) = m.expert(e0 + j);
                        self.gpu.upload(sc + (j * raw_c) as u64, c)?;
                        self.gpu.upload(ss + (j * raw_s) as u64, s)?;
                    }
                }
                Src::RandMxfp4 { seed, scale_base } => {
                    let s = seed ^ (e0 as u64).wrapping_mul(0x85eb_ca6b);
                    self.synth_bytes(sc, n * raw_c, s, -1)?;
                    self.synth_bytes(ss, n * raw_s, s ^ 0x5555, *scale_base)?;
                }
                _ => unreachable!("experts take MXFP4 sources"),
            }
            let (rr, cc, mt, kb) = (rows as i32, cols as i32, shape.mt as i32, shape.kb as i32);
            let (cstride, sstride) = (raw_c as i64, raw_s as i64);
            let (dcw, dsw) = (cw as i64, sw as i64);
            let (dc, ds) = (codes.ptr + (e0 * cw * 4) as u64, scales.ptr + (e0 * sw * 4) as u64);
            let f = self.gpu.func("relayout_frag4_codes", 0)?;
            self.gpu.launch(
                f,
                (cw.div_ceil(256) as u32, n as u32, 1),
                256,
                0,
                &mut args![sc, cstride, rr, cc, dc, dcw, mt, kb],
            )?;
            let f = self.gpu.func("relayout_frag4_scales", 0)?;
            self.gpu.launch(
                f,
                (sw.div_ceil(256) as u32, n as u32, 1),
                256,
                0,
                &mut args![ss, sstride, rr, cc, ds, dsw, mt, kb],
            )?;
            self.gpu.sync()?;
            e0 += n;
        }
        Ok(Experts4 { codes, scales, shape, experts, slices: k_slices(shape.mt, shape.kb, k) })
    }
}

fn bf16_blocks<'a>(d: &'a Dense, what: &str) -> Result<&'a [u16], CudaError> {
    match d {
        Dense::Bf16(m) => {
            if m.layout != gptoss_engine::weights::Bf16Layout::Rows {
                return Err(CudaError::Unsupported(format!("{what}: matrix not held in rows")));
            }
            Ok(m.bf16())
        }
        Dense::Q8(_) => Err(CudaError::Unsupported(format!(
            "{what} is held as Q8_0 (a GGUF quantized dense layer); the CUDA backend runs bf16 dense weights"
        ))),
        other => Err(CudaError::Unsupported(format!(
            "{what} is held as {} (an MLX quantized layer); the CUDA backend runs bf16 dense weights",
            other.format()
        ))),
    }
}

fn mxfp4_experts<'a>(
    e: &'a gptoss_engine::weights::Experts,
    what: &str,
) -> Result<&'a gptoss_engine::weights::Mxfp4Experts, CudaError> {
    e.as_mxfp4().ok_or_else(|| {
        CudaError::Unsupported(format!(
            "{what} are held as {} (an MLX affine recipe); the CUDA backend runs MXFP4 experts",
            e.format()
        ))
    })
}

/// Uploads checkpoint weights.
pub fn upload(gpu: &mut Gpu, w: &ModelWeights, cfg: &ModelConfig) -> Result<DeviceWeights, CudaError> {
    let (h, i, e, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.vocab_size);
    let (qd, kvd, k) = (cfg.q_dim(), cfg.kv_dim(), cfg.experts_per_token);
    let mut up = Uploader::new(gpu)?;
    let embedding = up.bf16_rows(Src::Bf16(vec![bf16_blocks(&w.embedding, "embedding")?]), v, h)?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for (l, lw) in w.layers.iter().enumerate() {
        let (a, m) = (&lw.attn, &lw.moe);
        let name = |t: &str| format!("layer {l} {t}");
        let qkv = Src::Bf16(vec![
            bf16_blocks(&a.q, &name("q"))?,
            bf16_blocks(&a.k, &name("k"))?,
            bf16_blocks(&a.v, &name("v"))?,
        ]);
        let qkv_bias: Vec<f32> = [&a.q_bias[..], &a.k_bias, &a.v_bias].concat();
        layers.push(LayerW {
            attn_norm: up.vector(Some(&a.norm), h, 0, 0.0, 0.0)?,
            qkv: up.dense(qkv, qd + 2 * kvd, h, 1)?,
            qkv_bias: up.vector(Some(&qkv_bias), qd + 2 * kvd, 0, 0.0, 0.0)?,
            out: up.dense(Src::Bf16(vec![bf16_blocks(&a.out, &name("attention output"))?]), h, qd, 1)?,
            out_bias: up.vector(Some(&a.out_bias), h, 0, 0.0, 0.0)?,
            sinks: up.vector(Some(&a.sinks), cfg.num_heads, 0, 0.0, 0.0)?,
            mlp_norm: up.vector(Some(&m.norm), h, 0, 0.0, 0.0)?,
            router: up.bf16_rows(Src::Bf16(vec![bf16_blocks(&m.router, &name("router"))?]), e, h)?,
            router_bias: up.vector(Some(&m.router_bias), e, 0, 0.0, 0.0)?,
            gate_up: up.experts(Src::Mxfp4(mxfp4_experts(&m.gate_up, &name("gate_up experts"))?), e, 2 * i, h, k)?,
            gate_up_bias: up.vector(Some(&m.gate_up_bias), e * 2 * i, 0, 0.0, 0.0)?,
            down: up.experts(Src::Mxfp4(mxfp4_experts(&m.down, &name("down experts"))?), e, h, i, k)?,
            down_bias: up.vector(Some(&m.down_bias), e * h, 0, 0.0, 0.0)?,
        });
    }
    let norm = up.vector(Some(&w.norm), h, 0, 0.0, 0.0)?;
    let unembedding = up.dense(Src::Bf16(vec![bf16_blocks(&w.unembedding, "unembedding")?]), v, h, 1)?;
    Ok(DeviceWeights { embedding, layers, norm, unembedding })
}

/// Random weights of `cfg`'s shape, drawn as `gptoss synth` draws them (unit-variance
/// matmul outputs), made on the device.
pub fn synth(gpu: &mut Gpu, cfg: &ModelConfig, seed: u64) -> Result<DeviceWeights, CudaError> {
    let (h, i, e, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.vocab_size);
    let (qd, kvd, k) = (cfg.q_dim(), cfg.kv_dim(), cfg.experts_per_token);
    let dense = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    let scale_base = |fan_in: usize| {
        let target = 1.0 / (2.93 * (fan_in as f64).sqrt());
        (127.0 + target.log2().floor() - 2.0) as i32
    };
    let mut up = Uploader::new(gpu)?;
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s
    };
    let embedding = up.bf16_rows(Src::RandBf16 { seed: next(), half: 1.0 }, v, h)?;
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for _ in 0..cfg.num_layers {
        layers.push(LayerW {
            attn_norm: up.vector(None, h, next(), 1.0, 0.1)?,
            qkv: up.dense(Src::RandBf16 { seed: next(), half: dense(h) }, qd + 2 * kvd, h, 1)?,
            qkv_bias: up.vector(None, qd + 2 * kvd, next(), 0.0, 0.02)?,
            out: up.dense(Src::RandBf16 { seed: next(), half: dense(qd) }, h, qd, 1)?,
            out_bias: up.vector(None, h, next(), 0.0, 0.02)?,
            sinks: up.vector(None, cfg.num_heads, next(), 0.0, 1.0)?,
            mlp_norm: up.vector(None, h, next(), 1.0, 0.1)?,
            router: up.bf16_rows(Src::RandBf16 { seed: next(), half: dense(h) }, e, h)?,
            router_bias: up.vector(None, e, next(), 0.0, 0.1)?,
            gate_up: up.experts(Src::RandMxfp4 { seed: next(), scale_base: scale_base(h) }, e, 2 * i, h, k)?,
            gate_up_bias: up.vector(None, e * 2 * i, next(), 0.0, 0.02)?,
            down: up.experts(Src::RandMxfp4 { seed: next(), scale_base: scale_base(i) }, e, h, i, k)?,
            down_bias: up.vector(None, e * h, next(), 0.0, 0.02)?,
        });
    }
    let norm = up.vector(None, h, next(), 1.0, 0.1)?;
    let unembedding = up.dense(Src::RandBf16 { seed: next(), half: dense(h) }, v, h, 1)?;
    up.gpu.sync()?;
    Ok(DeviceWeights { embedding, layers, norm, unembedding })
}

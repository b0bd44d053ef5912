//! The packed formats besides bf16: MXFP4 and affine (MLX) dense matrices, q8, and the
//! experts of one MoE projection in either packed format.

use super::{Bf16Matrix, Dense, Mxfp4Experts, Mxfp4Layout};
use crate::safetensors::Bytes;

/// One MoE projection's expert weights `[E, rows, cols]`: MXFP4 (every OpenAI, Hugging Face,
/// GGUF and MLX MXFP4 checkpoint) or affine (MLX's `4bit`/`8bit` recipes), held as one
/// matrix `[E·rows, cols]` whose rows `e·rows..(e+1)·rows` are expert e.
pub enum Experts {
    Mxfp4(Mxfp4Experts),
    Affine {
        w: AffineMatrix,
        experts: usize,
    },
    /// MLX's `bf16` recipe (experts dequantized to bf16), `[E·rows, cols]` in rows.
    Bf16 {
        w: Bf16Matrix,
        experts: usize,
    },
}

impl Experts {
    pub fn experts(&self) -> usize {
        match self {
            Experts::Mxfp4(m) => m.experts,
            Experts::Affine { experts, .. } | Experts::Bf16 { experts, .. } => *experts,
        }
    }

    /// Output rows of one expert.
    pub fn rows(&self) -> usize {
        match self {
            Experts::Mxfp4(m) => m.rows,
            Experts::Affine { w, experts } => w.rows / experts,
            Experts::Bf16 { w, experts } => w.rows / experts,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Experts::Mxfp4(m) => m.cols,
            Experts::Affine { w, .. } => w.cols,
            Experts::Bf16 { w, .. } => w.cols,
        }
    }

    /// Bytes one expert's weights take as read.
    pub fn bytes_per_expert(&self) -> u64 {
        match self {
            Experts::Mxfp4(m) => m.bytes_per_expert(),
            Experts::Affine { w, experts } => Dense::affine_bytes(w) / *experts as u64,
            Experts::Bf16 { w, experts } => w.bytes() / *experts as u64,
        }
    }

    pub fn format(&self) -> String {
        match self {
            Experts::Mxfp4(_) => "mxfp4".into(),
            Experts::Affine { w, .. } => format!("affine {}-bit g{}", w.bits, w.group),
            Experts::Bf16 { .. } => "bf16".into(),
        }
    }

    pub fn populate(&self) {
        match self {
            Experts::Mxfp4(m) => m.populate(),
            Experts::Affine { w, .. } => w.codes.populate(),
            Experts::Bf16 { w, .. } => w.populate(),
        }
    }

    /// The MXFP4 experts, if held so.
    pub fn as_mxfp4(&self) -> Option<&Mxfp4Experts> {
        match self {
            Experts::Mxfp4(m) => Some(m),
            Experts::Affine { .. } | Experts::Bf16 { .. } => None,
        }
    }

    /// Repacks for the integer kernels (`Rows16`) or back (see [`Mxfp4Experts::with_layout`]
    /// and [`AffineMatrix::set_layout`]).
    pub(super) fn set_layout(&mut self, layout: Mxfp4Layout, affine_layout: Mxfp4Layout) {
        match self {
            Experts::Mxfp4(w) => {
                let empty = Bytes::from_vec(&[]);
                let (experts, rows, cols, current) = (w.experts, w.rows, w.cols, w.layout);
                let placeholder =
                    Mxfp4Experts { codes: empty.clone(), scales: empty, layout: current, experts, rows, cols };
                *w = std::mem::replace(w, placeholder).with_layout(layout);
            }
            Experts::Affine { w, .. } => w.set_layout(affine_layout),
            // Read a row block per expert by the f32-activation kernels: stays in rows.
            Experts::Bf16 { .. } => {}
        }
    }
}

/// A q8 matrix `[rows, cols]`: int8 codes and one f32 scale per 32 (see
/// [`gptoss_kernels::q8`]), requantized from bf16 at load.
pub struct Q8Matrix {
    pub codes: Vec<i8>,   // [rows, cols]
    pub scales: Vec<f32>, // [rows, cols/32]
    pub rows: usize,
    pub cols: usize,
}

impl Q8Matrix {
    /// Requantizes `w` row by row, in parallel.
    pub fn from_bf16(w: &Bf16Matrix) -> Self {
        use rayon::prelude::*;
        let (rows, cols) = (w.rows, w.cols);
        let spr = cols / gptoss_kernels::q8::BLOCK;
        let mut codes = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows * spr];
        codes.par_chunks_mut(cols).zip(scales.par_chunks_mut(spr)).enumerate().for_each(|(r, (c, s))| {
            gptoss_kernels::q8::quantize_row_bf16(w.row(r), c, s);
        });
        Q8Matrix { codes, scales, rows, cols }
    }
}

/// An affine-quantized matrix `[rows, cols]` as MLX checkpoints hold it (see
/// [`gptoss_kernels::affine`]): the packed codes stay in the memory map, scales and biases
/// are widened to f32.
pub struct AffineMatrix {
    pub(crate) codes: Bytes, // [rows, cols·bits/8] (Rows16: the same bytes in 16-row tiles)
    pub scales: Vec<f32>,    // [rows, cols/group] (Rows16: [rows/16, cols/32, 16])
    /// `[rows, cols/group]`: `w = s·q + b`. Rows16: the zero-point term of centred codes
    /// instead, `c = b + 8·s`, so `w = s·(q − 8) + c` (what the integer kernels compute);
    /// empty when every `c` is 0 (symmetric W4A16).
    pub biases: Vec<f32>,
    pub bits: u32,
    pub group: usize,
    pub rows: usize,
    pub cols: usize,
    /// `Rows16`: 4-bit codes repacked at load for the integer kernels
    /// ([`gptoss_kernels::affine_r16`]).
    pub layout: Mxfp4Layout,
}

impl AffineMatrix {
    pub(crate) fn new(
        codes: Bytes,
        scales: Vec<f32>,
        biases: Vec<f32>,
        bits: u32,
        group: usize,
        rows: usize,
        cols: usize,
    ) -> Self {
        let m = AffineMatrix { codes, scales, biases, bits, group, rows, cols, layout: Mxfp4Layout::Rows };
        assert_eq!(m.view().rows(cols), rows, "AffineMatrix: parts do not match the shape");
        m
    }

    /// The packed codes as they are held.
    pub fn codes(&self) -> &[u8] {
        self.codes.as_slice()
    }

    /// Rows `r0..r1` as the matmuls read them (multiples of 16 when repacked).
    pub fn block(&self, r0: usize, r1: usize) -> AffineView<'_> {
        let (k, g) = (self.cols, self.group);
        let (code_bytes, scales_per_row) = match self.layout {
            Mxfp4Layout::Rows => (k * self.bits as usize / 8, k / g),
            Mxfp4Layout::Rows16 => {
                assert!(
                    r0.is_multiple_of(16) && r1.is_multiple_of(16),
                    "AffineMatrix::block: rows {r0}..{r1} cut a tile"
                );
                (k / 2, k / 32)
            }
        };
        AffineView {
            codes: &self.codes()[r0 * code_bytes..r1 * code_bytes],
            scales: &self.scales[r0 * scales_per_row..r1 * scales_per_row],
            biases: if self.biases.is_empty() { &[] } else { &self.biases[r0 * (k / g)..r1 * (k / g)] },
            bits: self.bits,
            group: g,
            rows: r1 - r0,
            cols: k,
            layout: self.layout,
        }
    }

    /// Puts the matrix in `layout` (the same numbers; owned memory when repacked). Stays in
    /// rows unless it is 4-bit and whole tiles.
    pub fn set_layout(&mut self, layout: Mxfp4Layout) {
        use gptoss_kernels::affine_r16;
        let (k, g) = (self.cols, self.group);
        if layout == self.layout || !affine_r16::can_pack(self.rows, k, self.bits, g) {
            return;
        }
        self.codes.populate();
        let per_row = k / g;
        let (codes, scales, biases) = match layout {
            Mxfp4Layout::Rows16 => {
                let mut scales = vec![0f32; self.rows * k / 32];
                let codes = Bytes::build(self.codes.len(), |d| {
                    affine_r16::pack(self.codes(), &self.scales, k, g, d, &mut scales)
                });
                let centred: Vec<f32> = self.biases.iter().zip(&self.scales).map(|(b, s)| b + 8.0 * s).collect();
                let centred = if centred.iter().all(|&c| c == 0.0) { Vec::new() } else { centred };
                (codes, scales, centred)
            }
            Mxfp4Layout::Rows => {
                let scale = |i: usize| affine_r16::scale_at(&self.scales, k, i / per_row, (i % per_row) * g / 32);
                let scales: Vec<f32> = (0..self.rows * per_row).map(scale).collect();
                let biases = scales
                    .iter()
                    .enumerate()
                    .map(|(i, s)| self.biases.get(i).copied().unwrap_or(0.0) - 8.0 * s)
                    .collect();
                let codes = Bytes::build(self.codes.len(), |d| {
                    for (r, row) in d.chunks_exact_mut(k / 2).enumerate() {
                        affine_r16::unpack_row_codes(self.codes(), k, r, row);
                    }
                });
                (codes, scales, biases)
            }
        };
        self.codes.release();
        (self.codes, self.scales, self.biases, self.layout) = (codes, scales, biases, layout);
    }

    pub fn view(&self) -> gptoss_kernels::affine::AffineRows<'_> {
        gptoss_kernels::affine::AffineRows {
            codes: self.codes.as_slice(),
            scales: &self.scales,
            biases: &self.biases,
            bits: self.bits,
            group: self.group,
        }
    }
}

/// An f32 matrix `[rows, cols]`: unquantized f16 layers (W4A16 checkpoints made from an fp16
/// model), widened exactly at load, as the bf16 matrices cannot hold f16 values.
pub struct F32Matrix {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

/// Rows of an [`AffineMatrix`], borrowed (a whole matrix, or one expert's rows).
#[derive(Clone, Copy)]
pub struct AffineView<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f32],
    pub biases: &'a [f32],
    pub bits: u32,
    pub group: usize,
    pub rows: usize,
    pub cols: usize,
    pub layout: Mxfp4Layout,
}

impl<'a> AffineView<'a> {
    /// The kernels' view of rows held in rows.
    pub fn rows_view(&self) -> gptoss_kernels::affine::AffineRows<'a> {
        gptoss_kernels::affine::AffineRows {
            codes: self.codes,
            scales: self.scales,
            biases: self.biases,
            bits: self.bits,
            group: self.group,
        }
    }
}

/// An MXFP4 dense matrix `[rows, cols]` (MLX conversions may quantize any linear layer so):
/// codes `[rows, cols/2]`, E8M0 scales `[rows, cols/32]`, in the memory map.
pub struct Mxfp4Matrix {
    pub(crate) codes: Bytes,
    pub(crate) scales: Bytes,
    pub rows: usize,
    pub cols: usize,
}

impl Mxfp4Matrix {
    pub fn codes(&self) -> &[u8] {
        self.codes.as_slice()
    }
    pub fn scales(&self) -> &[u8] {
        self.scales.as_slice()
    }
}

//! bf16 matrices: the attention, unembedding and router weights as the checkpoint holds them,
//! and the 8-row tiles the bf16-activation kernels read.

use crate::safetensors::Bytes;

/// The element order of a bf16 matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Layout {
    /// As in the checkpoint: row after row (for the CPU kernels, a copy of the memory map
    /// in anonymous memory; see [`super::ModelWeights::set_dense_layout`]).
    Rows,
    /// Repacked at load so one token's pass over 8 rows reads one stream
    /// ([`gptoss_kernels::bf16_t8`]); row ranges that are multiples of 8 slice alike.
    Tiles8,
}

/// A bf16 matrix `[rows, cols]`.
#[derive(Clone)]
pub struct Bf16Matrix {
    pub(super) data: Bytes,
    pub layout: Bf16Layout,
    pub rows: usize,
    pub cols: usize,
}

impl Bf16Matrix {
    pub fn new(data: Bytes, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols * 2, "Bf16Matrix: byte length does not match the shape");
        Bf16Matrix { data: data.aligned(2), layout: Bf16Layout::Rows, rows, cols }
    }

    /// The matrix's bf16 bits in its layout.
    pub fn bf16(&self) -> &[u16] {
        self.data.as_u16()
    }

    /// Puts this matrix in `layout`: the same numbers, repacked into owned memory when the
    /// layout changes (the map's pages are released, so RSS does not hold both). Stays in
    /// rows when the shape is not whole groups of 8 rows and 32 columns.
    pub fn set_layout(&mut self, layout: Bf16Layout) {
        let target = self.layout_for(layout);
        if target != self.layout {
            let data = Bytes::build(self.data.len(), |dst| self.write_in(target, dst));
            self.adopt(data, target);
        }
    }

    /// The layout [`Bf16Matrix::set_layout`] leaves this matrix in.
    pub(super) fn layout_for(&self, layout: Bf16Layout) -> Bf16Layout {
        if gptoss_kernels::bf16_t8::can_tile(self.rows, self.cols) {
            layout
        } else {
            self.layout
        }
    }

    /// Whether holding this matrix in `layout` for the CPU kernels takes new memory: a new
    /// layout, or rows still in the checkpoint's memory map. A token's pass streams every byte
    /// of the matrix, and in 4 KiB page-cache pages each 4 KiB of the stream costs a TLB walk:
    /// on a 2-core Xeon (avx2 kernels, 20b shape) the unembedding went from 21.1–23.5 to
    /// 22.5–25.5 GB/s copied into 2 MiB pages. The copy costs one pass at load.
    pub(super) fn moves_for(&self, layout: Bf16Layout) -> bool {
        self.layout_for(layout) != self.layout || self.data.is_mapped()
    }

    /// Writes the matrix in `layout` into `dst` (its byte length, 2-byte aligned), then
    /// releases the memory map's pages it was read from.
    pub(super) fn write_in(&self, layout: Bf16Layout, dst: &mut [u8]) {
        use gptoss_kernels::bf16_t8;
        use rayon::prelude::*;
        self.data.populate();
        let (src, k) = (self.bf16(), self.cols);
        // SAFETY: `dst` is 2-byte aligned (anonymous memory, a u64 vector, or a part of either
        // at a cache line), 2·len bytes long, and any bit pattern is a valid u16.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u16>(), dst.len() / 2) };
        assert_eq!(dst.len(), src.len(), "Bf16Matrix::write_in: destination is not the matrix's size");
        let convert = match (self.layout, layout) {
            (Bf16Layout::Rows, Bf16Layout::Tiles8) => bf16_t8::pack,
            (Bf16Layout::Tiles8, Bf16Layout::Rows) => bf16_t8::unpack,
            _ => |s: &[u16], _: usize, d: &mut [u16]| d.copy_from_slice(s),
        };
        // 64 groups of 8 rows per task: ~3 MB of a 2880-column matrix.
        let chunk = 64 * bf16_t8::ROWS * k;
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| convert(s, k, d));
        self.data.release();
    }

    /// Holds `data` (written by [`Bf16Matrix::write_in`]) from now on.
    pub(super) fn adopt(&mut self, data: Bytes, layout: Bf16Layout) {
        (self.data, self.layout) = (data.aligned(2), layout);
    }

    pub fn populate(&self) {
        self.data.populate()
    }

    /// Bytes of the matrix as stored.
    pub fn bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// Row `r` of a matrix held in rows (the embedding, and bf16 weights before q8).
    pub fn row(&self, r: usize) -> &[u16] {
        assert_eq!(self.layout, Bf16Layout::Rows, "Bf16Matrix::row on a tiled matrix");
        &self.bf16()[r * self.cols..(r + 1) * self.cols]
    }

    /// Rows `start..start + rows` as their own matrix, sharing the bytes (at load, in rows).
    pub fn row_block(&self, start: usize, rows: usize) -> Bf16Matrix {
        assert_eq!(self.layout, Bf16Layout::Rows, "Bf16Matrix::row_block on a tiled matrix");
        let row_bytes = self.cols * 2;
        let data = self.data.slice(start * row_bytes..(start + rows) * row_bytes);
        Bf16Matrix { data, layout: self.layout, rows, cols: self.cols }
    }
}

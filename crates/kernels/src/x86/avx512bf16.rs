//! AVX512-BF16: activations rounded to bf16, products summed in f32 by `vdpbf16ps`, 32
//! multiply-adds per instruction (twice the f32 FMA rate, and bf16 weights need no widening).
//!
//! Matmuls are blocked for the caches: a panel of weight rows (decoded from MXFP4 once per
//! panel) stays in L2 while tiles of tokens stream past it, and the innermost 4×4 block keeps
//! 16 accumulators in registers. Every (row, token) result has its own single accumulator,
//! summed over K in order and reduced the same way whatever the block shape, so a token's
//! output never depends on the batch it came in.

use std::arch::x86_64::*;

use crate::bf16::f32_to_bf16;
use crate::bf16_t8;
use crate::mxfp4::{self, FP4_VALUES};

/// Weight rows decoded and kept hot together when several tokens share them.
const PANEL_ROWS: usize = 32;

/// The most scratch the MXFP4 and q8 kernels take for K inputs: one panel of decoded rows.
pub(crate) fn scratch_halves(k: usize) -> usize {
    PANEL_ROWS.max(GEMV_ROWS) * k
}
/// Tokens whose activations stay in L2 while a panel passes over them ([64, 2880] bf16 = 368 KB).
const TOKEN_TILE: usize = 64;

#[inline(always)]
unsafe fn load_bh(p: *const u16) -> __m512bh {
    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const _))
}

#[inline(always)]
unsafe fn load_bh_masked(p: *const u16, m: __mmask32) -> __m512bh {
    std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(m, p as *const i16))
}

/// K per pass of a panel: the x of one token group (4 tokens × 2 terms × 1024 bf16 = 16 KB)
/// stays in L1 while the panel's weight rows stream past it from L2.
const KC: usize = 1024;

/// Accumulates `Σ_k w[i, k]·x[j, k]` over `k in o0..o1` for an RB×TB block into `acc`
/// (slot `i * 4 + j`; read back unless `o0` is 0). On the pass that reaches K (`o1 == k`)
/// the sums are reduced and written as `out[i, j] + bias[i]` instead. Weight row i's chunk
/// of columns o..o+32 is at `w + i·rs + (o/32)·cs` (rows: `rs` = K, `cs` = 32; the
/// [`crate::bf16_t8`] layout: 32 and 256); x rows are K apart, out rows `n_tok` apart. With
/// two terms, x is hi + lo, the lo parts `lo_off` elements after the hi ones; each chunk adds w·hi, then w·lo, to the same accumulator.
/// Stopping between passes only parks the 16 lanes in memory: each lane still sums its k
/// in order, so the result is the same bits as one pass (and as [`gemv_rows_mxfp4`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const TERMS: usize, const RB: usize, const TB: usize>(
    x: *const u16,
    lo_off: usize,
    w: *const u16,
    (rs, cs): (usize, usize),
    k: usize,
    (o0, o1): (usize, usize),
    acc_mem: *mut __m512,
    bias: Option<*const f32>,
    out: *mut f32,
    n_tok: usize,
) {
    let mut acc: [[__m512; TB]; RB] = if o0 == 0 {
        [[_mm512_setzero_ps(); TB]; RB]
    } else {
        std::array::from_fn(|i| std::array::from_fn(|j| *acc_mem.add(i * 4 + j)))
    };
    let mut o = o0;
    while o + 32 <= o1 {
        let wv: [__m512bh; RB] = std::array::from_fn(|i| load_bh(w.add(i * rs + (o / 32) * cs)));
        for term in 0..TERMS {
            let xv: [__m512bh; TB] = std::array::from_fn(|j| load_bh(x.add(term * lo_off + j * k + o)));
            for i in 0..RB {
                for j in 0..TB {
                    acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[i], xv[j]);
                }
            }
        }
        o += 32;
    }
    if o < o1 {
        // Zeros past K add nothing.
        let m: __mmask32 = (1u32 << (o1 - o)) - 1;
        let wv: [__m512bh; RB] = std::array::from_fn(|i| load_bh_masked(w.add(i * rs + (o / 32) * cs), m));
        for term in 0..TERMS {
            let xv: [__m512bh; TB] = std::array::from_fn(|j| load_bh_masked(x.add(term * lo_off + j * k + o), m));
            for i in 0..RB {
                for j in 0..TB {
                    acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[i], xv[j]);
                }
            }
        }
    }
    if o1 < k {
        for (i, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                *acc_mem.add(i * 4 + j) = *a;
            }
        }
        return;
    }
    for (i, row) in acc.iter().enumerate() {
        let b = bias.map_or(0.0, |b| *b.add(i));
        for (j, a) in row.iter().enumerate() {
            *out.add(i * n_tok + j) = _mm512_reduce_add_ps(*a) + b;
        }
    }
}

/// Calls `tile::<TERMS, rb, tb>` for runtime block sizes in 1..=4.
macro_rules! tile_dispatch {
    ($terms:ident, $rb:expr, $tb:expr, $($arg:expr),*) => {
        match ($rb, $tb) {
            (4, 4) => tile::<$terms, 4, 4>($($arg),*),
            (4, 3) => tile::<$terms, 4, 3>($($arg),*),
            (4, 2) => tile::<$terms, 4, 2>($($arg),*),
            (4, 1) => tile::<$terms, 4, 1>($($arg),*),
            (3, 4) => tile::<$terms, 3, 4>($($arg),*),
            (3, 3) => tile::<$terms, 3, 3>($($arg),*),
            (3, 2) => tile::<$terms, 3, 2>($($arg),*),
            (3, 1) => tile::<$terms, 3, 1>($($arg),*),
            (2, 4) => tile::<$terms, 2, 4>($($arg),*),
            (2, 3) => tile::<$terms, 2, 3>($($arg),*),
            (2, 2) => tile::<$terms, 2, 2>($($arg),*),
            (2, 1) => tile::<$terms, 2, 1>($($arg),*),
            (1, 4) => tile::<$terms, 1, 4>($($arg),*),
            (1, 3) => tile::<$terms, 1, 3>($($arg),*),
            (1, 2) => tile::<$terms, 1, 2>($($arg),*),
            _ => tile::<$terms, 1, 1>($($arg),*),
        }
    };
}

/// Row groups × token groups of one panel and token tile, 16 parked accumulators each.
const PARKED: usize = (PANEL_ROWS / 4) * (TOKEN_TILE / 4) * 16;

/// `out[R, T] = w[R, K]·x[T, K]ᵀ + bias` for one panel of rows (at most [`PANEL_ROWS`]):
/// tokens in tiles of [`TOKEN_TILE`], K in passes of [`KC`], and within a pass each group
/// of 4 tokens meets every group of 4 rows while its x is in L1. `w` is row after row, or in
/// the [`crate::bf16_t8`] layout when `tiled`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_panel<const TERMS: usize>(
    x: *const u16,
    n_tok: usize,
    k: usize,
    w: *const u16,
    tiled: bool,
    rows: usize,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    debug_assert!(rows <= PANEL_ROWS);
    let strides = if tiled { (bf16_t8::CHUNK, bf16_t8::ROWS * bf16_t8::CHUNK) } else { (k, 32) };
    // Blocks of 4 rows start at multiples of 4, so never straddle a group of 8.
    let row_at = |r: usize| if tiled { bf16_t8::offset(r, 0, k) } else { r * k };
    // 128 KB of accumulators, each written by a pass before the next one reads it.
    let mut parked = std::mem::MaybeUninit::<[__m512; PARKED]>::uninit();
    let parked = parked.as_mut_ptr() as *mut __m512;
    let mut t0 = 0;
    while t0 < n_tok {
        let t1 = (t0 + TOKEN_TILE).min(n_tok);
        let mut o0 = 0;
        while o0 < k {
            let o1 = (o0 + KC).min(k);
            let mut t = t0;
            while t < t1 {
                let tb = (t1 - t).min(4);
                let mut r = 0;
                while r < rows {
                    let rb = (rows - r).min(4);
                    let slot = parked.add(((r / 4) * (TOKEN_TILE / 4) + (t - t0) / 4) * 16);
                    let (w_r, bias_r, out_r) = (w.add(row_at(r)), bias.map(|b| b.add(r)), out.add(r * n_tok + t));
                    tile_dispatch!(
                        TERMS,
                        rb,
                        tb,
                        x.add(t * k),
                        n_tok * k,
                        w_r,
                        strides,
                        k,
                        (o0, o1),
                        slot,
                        bias_r,
                        out_r,
                        n_tok
                    );
                    r += rb;
                }
                t += tb;
            }
            o0 = o1;
        }
        t0 = t1;
    }
}

/// Bytes ahead of a tiled group's stream to prefetch, one line per 512-byte chunk, into L2:
/// the hardware prefetcher stops at pages. Into L1 a page ahead, a C twin of this loop on a
/// Zen 4 VM streamed 30–32 GB/s on two threads where plain loads read 42–45 (25–28 against
/// 29–32 in the memory's slow mode, slower than no prefetch at all); into L2 two pages
/// ahead 38–40 (29–31).
const TILED_PREFETCH_AHEAD: usize = 8192;

/// On Intel's cores ([`super::is_intel`]) a tiled group's every line is prefetched into L1
/// this far ahead instead. On a Sapphire-Rapids-class Xeon VM (family 6 model 167), 2 threads
/// over 2 GB of tiles: one line per chunk into L2 8 KiB ahead (the Zen 4 tuning) read 20.2–20.9
/// GB/s, no prefetch 26.5–29.9, every line into L2 8 KiB ahead 25.0–27.3, into L1 4 KiB
/// ahead 25.6–25.9, 2 KiB ahead 25.1–31.2 (most runs 30–31), 1 KiB ahead 24.4–29.0; the
/// model's unembedding 20.6–21.6 → 28.2–29.6 GB/s.
const INTEL_TILED_PREFETCH_AHEAD: usize = 2048;

/// One token through [`GEMV_ROWS`] bf16 rows, row after row or (`TILED`) one group of the
/// [`crate::bf16_t8`] layout: the products and per-lane order of [`tile`] (chunk by chunk, hi
/// then lo, a masked chunk at a ragged end), so the same bits, with 8 independent chains
/// instead of 4. With 4 rows and two terms a single token was bound by the latency of those
/// chains (82% of the read bandwidth); with 8 rows by how many streams the prefetcher follows,
/// which the tiles cut to one, prefetched two pages ahead (`INTEL`: see
/// [`INTEL_TILED_PREFETCH_AHEAD`]).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gemv_bf16<const TERMS: usize, const TILED: bool, const INTEL: bool>(
    x: *const u16,
    k: usize,
    w: *const u16,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    const { assert!(GEMV_ROWS == bf16_t8::ROWS) };
    // Row i's chunk of columns o..o+32 is at w + i·rs + (o/32)·cs, as in `tile`.
    let (rs, cs) = if TILED { (bf16_t8::CHUNK, bf16_t8::ROWS * bf16_t8::CHUNK) } else { (k, 32) };
    let mut acc = [_mm512_setzero_ps(); GEMV_ROWS];
    let mut o = 0;
    while o + 32 <= k {
        let chunk = w.add((o / 32) * cs);
        if TILED && INTEL {
            for line in 0..GEMV_ROWS {
                _mm_prefetch::<_MM_HINT_T0>((chunk as *const i8).wrapping_add(INTEL_TILED_PREFETCH_AHEAD + 64 * line));
            }
        } else if TILED {
            _mm_prefetch::<_MM_HINT_T1>((chunk as *const i8).wrapping_add(TILED_PREFETCH_AHEAD));
        }
        let xv: [__m512bh; TERMS] = std::array::from_fn(|t| load_bh(x.add(t * k + o)));
        for (i, a) in acc.iter_mut().enumerate() {
            let wv = load_bh(chunk.add(i * rs));
            for xt in xv {
                *a = _mm512_dpbf16_ps(*a, wv, xt);
            }
        }
        o += 32;
    }
    if o < k {
        // Only rows end in a partial chunk; zeros past K add nothing.
        let m: __mmask32 = (1u32 << (k - o)) - 1;
        let chunk = w.add((o / 32) * cs);
        let xv: [__m512bh; TERMS] = std::array::from_fn(|t| load_bh_masked(x.add(t * k + o), m));
        for (i, a) in acc.iter_mut().enumerate() {
            let wv = load_bh_masked(chunk.add(i * rs), m);
            for xt in xv {
                *a = _mm512_dpbf16_ps(*a, wv, xt);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        *out.add(i) = _mm512_reduce_add_ps(*a) + bias.map_or(0.0, |b| *b.add(i));
    }
}

/// `out[R, T] = w[R, K]·x[T, K]ᵀ + bias`, w row after row or in the [`crate::bf16_t8`] layout.
fn matmul_bf16<const TERMS: usize, const TILED: bool>(
    x: &[u16],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    crate::scalar::check_bf16a_shapes(x, TERMS, n_tok, k, w.len(), bias, out);
    let rows = w.len() / k;
    assert!(!TILED || bf16_t8::can_tile(rows, k), "bf16_t8: [{rows}, {k}] is not whole groups and chunks");
    // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F/BW/BF16/VBMI; the shapes were
    // checked above (tiles: whole groups of 8 rows, K a multiple of 32), so every block read
    // and write is in bounds.
    unsafe {
        let mut r = 0;
        if n_tok == 1 {
            let gemv =
                if super::is_intel() { gemv_bf16::<TERMS, TILED, true> } else { gemv_bf16::<TERMS, TILED, false> };
            while rows - r >= GEMV_ROWS {
                let bias = bias.map(|b| b.as_ptr().add(r));
                gemv(x.as_ptr(), k, w.as_ptr().add(r * k), bias, out.as_mut_ptr().add(r));
                r += GEMV_ROWS;
            }
        }
        while r < rows {
            // Panels of 32 rows start on group boundaries, where both layouts are at r·K.
            let pr = (rows - r).min(PANEL_ROWS);
            let bias = bias.map(|b| b.as_ptr().add(r));
            gemm_panel::<TERMS>(
                x.as_ptr(),
                n_tok,
                k,
                w.as_ptr().add(r * k),
                TILED,
                pr,
                bias,
                out.as_mut_ptr().add(r * n_tok),
            );
            r += pr;
        }
    }
}

/// See [`crate::scalar::matmul_rows_bf16a_bf16w`].
pub fn matmul_rows_bf16a_bf16w<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    matmul_bf16::<TERMS, false>(x, n_tok, w, bias, out)
}

/// See [`crate::scalar::matmul_rows_bf16a_bf16t8w`].
pub fn matmul_rows_bf16a_bf16t8w<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    matmul_bf16::<TERMS, true>(x, n_tok, w, bias, out)
}

/// Bytes ahead of the decoder to prefetch MXFP4 codes.
const PREFETCH_AHEAD: usize = 4096;

/// The 16 E2M1 codes as bf16 bits, times 2^(s − 127) for every E8M0 scale s in 2..=252,
/// each table twice (a 32-lane word permute ignores index bit 4). Exact: a scale adds to the
/// exponent of the nonzero entries and stays a normal bf16 in that range (E2M1 exponents are
/// -1..=2). 32 KB, so a block's table is one L1 load instead of a broadcast and an add.
#[repr(C, align(64))]
struct ScaledFp4Tables([[u16; 32]; 256]);

static SCALED_FP4_BF16: ScaledFp4Tables = {
    // 0, 0.5, 1, 1.5, 2, 3, 4, 6 as bf16 bits.
    const MAGNITUDES: [u16; 8] = [0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080, 0x40C0];
    let mut t = [[0u16; 32]; 256];
    let mut s = 2;
    while s <= 252 {
        let mut i = 0;
        while i < 32 {
            let m = MAGNITUDES[i % 8];
            let sign = if i % 16 >= 8 { 0x8000 } else { 0 };
            t[s][i] = if m == 0 { sign } else { sign | (m + ((s as u16) << 7) - (127 << 7)) };
            i += 1;
        }
        s += 1;
    }
    ScaledFp4Tables(t)
};

/// The table for scale `s` (2..=252).
#[inline(always)]
unsafe fn scaled_fp4_lut(s: u8) -> __m512i {
    _mm512_load_si512(SCALED_FP4_BF16.0.as_ptr().add(s as usize) as *const _)
}

/// Decodes `rows` MXFP4 rows into bf16 `dst [rows, K]`. The weights are exact in bf16: a
/// block's scale is added to the exponents of the table's nonzero entries, which stays a
/// normal bf16 for scales 2..=252 (E2M1 exponents are -1..=2); other scales, which trained
/// weights do not use, take the scalar path.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn decode_rows_bf16(codes: &[u8], scales: &[u8], k: usize, rows: usize, dst: &mut [u16]) {
    // Qword i holds code bytes 2i, 2i+1 (elements 4i..4i+4, low nibble first); word m of the
    // result takes the byte at bit 4m, whose low 5 bits index the table (period 16, so the
    // neighbouring nibble's bit is ignored).
    let shifts = _mm512_set1_epi64(0x000c_0008_0004_0000);
    let blocks = k / mxfp4::BLOCK;
    for b in 0..rows * blocks {
        // One stream through page-cache pages: the hardware prefetcher stops at every 4 KiB
        // page boundary, so ask for the codes a few pages ahead.
        if b % 4 == 0 {
            _mm_prefetch::<_MM_HINT_T0>(codes.as_ptr().wrapping_add(b * 16 + PREFETCH_AHEAD) as *const i8);
        }
        let s = scales[b];
        let d = dst.as_mut_ptr().add(b * 32);
        if (2..=252).contains(&s) {
            let scaled = scaled_fp4_lut(s);
            let pairs = _mm512_cvtepu16_epi64(_mm_loadu_si128(codes.as_ptr().add(b * 16) as *const __m128i));
            let idx = _mm512_multishift_epi64_epi8(shifts, pairs);
            _mm512_storeu_si512(d as *mut _, _mm512_permutexvar_epi16(idx, scaled));
        } else {
            let scale = mxfp4::e8m0_to_f32(s);
            for (i, &byte) in codes[b * 16..b * 16 + 16].iter().enumerate() {
                *d.add(2 * i) = f32_to_bf16(FP4_VALUES[(byte & 0xf) as usize] * scale);
                *d.add(2 * i + 1) = f32_to_bf16(FP4_VALUES[(byte >> 4) as usize] * scale);
            }
        }
    }
}

/// Rows one token goes through together. Each row's sum is a chain of dependent
/// `vdpbf16ps` (hi, then lo, block after block), so a single token is bound by their latency
/// unless enough rows run side by side: 4 rows held MXFP4 decode to about 20 GB/s per core.
const GEMV_ROWS: usize = 8;

/// One token through R MXFP4 rows, decoding in registers: the same products summed in the
/// same order as decoding the rows and running [`tile`], so results stay batch-invariant.
/// False (nothing written) when a scale lies outside 2..=252, and the caller takes the
/// general path.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx512vbmi")]
#[allow(clippy::needless_range_loop)] // c indexes codes, scales and x alike
unsafe fn gemv_rows_mxfp4<const TERMS: usize, const R: usize>(
    x: *const u16,
    k: usize,
    codes: *const u8,
    scales: *const u8,
    bias: Option<*const f32>,
    out: *mut f32,
) -> bool {
    let blocks = k / mxfp4::BLOCK;
    // Every scale must have a table: checked 32 at a time before any work.
    for i in 0..R {
        let mut c = 0;
        while c < blocks {
            let m: __mmask32 = if blocks - c >= 32 { !0 } else { (1u32 << (blocks - c)) - 1 };
            let s = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, scales.add(i * blocks + c) as *const i8));
            let bad = _mm512_mask_cmplt_epu16_mask(m, s, _mm512_set1_epi16(2))
                | _mm512_mask_cmpgt_epu16_mask(m, s, _mm512_set1_epi16(252));
            if bad != 0 {
                return false;
            }
            c += 32;
        }
    }
    let shifts = _mm512_set1_epi64(0x000c_0008_0004_0000);
    let mut acc = [_mm512_setzero_ps(); R];
    for c in 0..blocks {
        if c % 4 == 0 {
            for i in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(codes.wrapping_add((i * blocks + c) * 16 + PREFETCH_AHEAD) as *const i8);
            }
        }
        let xv: [__m512bh; TERMS] = std::array::from_fn(|t| load_bh(x.add(t * k + c * 32)));
        for (i, a) in acc.iter_mut().enumerate() {
            let scaled = scaled_fp4_lut(*scales.add(i * blocks + c));
            let pairs = _mm512_cvtepu16_epi64(_mm_loadu_si128(codes.add((i * blocks + c) * 16) as *const __m128i));
            let w = _mm512_permutexvar_epi16(_mm512_multishift_epi64_epi8(shifts, pairs), scaled);
            let w = std::mem::transmute::<__m512i, __m512bh>(w);
            for xt in xv {
                *a = _mm512_dpbf16_ps(*a, w, xt);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        *out.add(i) = _mm512_reduce_add_ps(*a) + bias.map_or(0.0, |b| *b.add(i));
    }
    true
}

/// See [`crate::scalar::matmul_rows_bf16a_mxfp4w`].
pub fn matmul_rows_bf16a_mxfp4w<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u16>,
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    crate::scalar::check_mxfp4_bf16a_shapes(x, TERMS, n_tok, k, codes.len(), scales.len(), bias, out);
    let rows = scales.len() / (k / mxfp4::BLOCK);
    // One token reuses nothing: decode a few rows at a time so they stay in L1.
    let panel = if n_tok <= 4 { GEMV_ROWS } else { PANEL_ROWS };
    scratch.resize(panel * k, 0);
    let (cpr, spr) = (k / 2, k / mxfp4::BLOCK);
    // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F/BW/BF16/VBMI; the shapes were
    // checked above and the scratch holds a whole panel.
    unsafe {
        let mut r = 0;
        while r < rows {
            let pr = (rows - r).min(panel);
            let bias_r = bias.map(|b| b.as_ptr().add(r));
            let (c, s, o) = (codes.as_ptr().add(r * cpr), scales.as_ptr().add(r * spr), out.as_mut_ptr().add(r));
            let fused = match (n_tok, pr) {
                (1, GEMV_ROWS) => gemv_rows_mxfp4::<TERMS, GEMV_ROWS>(x.as_ptr(), k, c, s, bias_r, o),
                (1, 4) => gemv_rows_mxfp4::<TERMS, 4>(x.as_ptr(), k, c, s, bias_r, o),
                _ => false,
            };
            if fused {
                r += pr;
                continue;
            }
            decode_rows_bf16(&codes[r * cpr..(r + pr) * cpr], &scales[r * spr..(r + pr) * spr], k, pr, scratch);
            let bias = bias.map(|b| b.as_ptr().add(r));
            gemm_panel::<TERMS>(
                x.as_ptr(),
                n_tok,
                k,
                scratch.as_ptr(),
                false,
                pr,
                bias,
                out.as_mut_ptr().add(r * n_tok),
            );
            r += pr;
        }
    }
}

/// f32 → bf16 bits, nearest even, NaN kept quiet: [`crate::bf16::f32_to_bf16`] on 16 lanes.
#[inline(always)]
unsafe fn round16(v: __m512) -> __m512i {
    let bits = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    let nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    let r = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(bits, _mm512_set1_epi32(0x0040_0000)));
    _mm512_srli_epi32(r, 16)
}

/// dst = [hi; lo] (TERMS = 2) or [hi] (TERMS = 1), as [`crate::bf16::split_slice_to_bf16`].
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn split_impl<const TERMS: usize>(src: &[f32], dst: &mut [u16]) {
    let n = src.len();
    let (hi, lo) = dst.split_at_mut(n);
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_loadu_ps(src.as_ptr().add(i));
        let h = round16(v);
        _mm256_storeu_si256(hi.as_mut_ptr().add(i) as *mut __m256i, _mm512_cvtepi32_epi16(h));
        if TERMS == 2 {
            let rest = _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
            _mm256_storeu_si256(lo.as_mut_ptr().add(i) as *mut __m256i, _mm512_cvtepi32_epi16(round16(rest)));
        }
        i += 16;
    }
    crate::bf16::split_slice_to_bf16(&src[i..], &mut hi[i..], if TERMS == 2 { Some(&mut lo[i..]) } else { None });
}

pub fn split_to_bf16<const TERMS: usize>(src: &[f32], dst: &mut [u16]) {
    assert_eq!(TERMS * src.len(), dst.len(), "split_to_bf16: dst is not [TERMS, n]");
    // SAFETY: handed out only with AVX-512F/BW; lengths checked above.
    unsafe { split_impl::<TERMS>(src, dst) }
}

/// 32 q8 codes times their block's scale, rounded to bf16 (the weight's defined value).
#[inline(always)]
unsafe fn decode_q8_block(codes: *const i8, scale: f32) -> __m512bh {
    let s = _mm512_set1_ps(scale);
    let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(codes as *const __m128i)));
    let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(codes.add(16) as *const __m128i)));
    _mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, s), _mm512_mul_ps(lo, s))
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn decode_rows_q8(codes: *const i8, scales: *const f32, blocks: usize, dst: *mut u16) {
    for b in 0..blocks {
        let w = decode_q8_block(codes.add(b * 32), *scales.add(b));
        _mm512_storeu_si512(dst.add(b * 32) as *mut _, std::mem::transmute::<__m512bh, __m512i>(w));
    }
}

/// One token through R q8 rows, decoding in registers; same sums as decode + [`tile`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gemv_rows_q8<const TERMS: usize, const R: usize>(
    x: *const u16,
    k: usize,
    codes: *const i8,
    scales: *const f32,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    let blocks = k / crate::q8::BLOCK;
    let mut acc = [_mm512_setzero_ps(); R];
    for c in 0..blocks {
        if c % 2 == 0 {
            for i in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(codes.wrapping_add(i * k + c * 32 + PREFETCH_AHEAD));
            }
        }
        let xv: [__m512bh; TERMS] = std::array::from_fn(|t| load_bh(x.add(t * k + c * 32)));
        for (i, a) in acc.iter_mut().enumerate() {
            let w = decode_q8_block(codes.add(i * k + c * 32), *scales.add(i * blocks + c));
            for xt in xv {
                *a = _mm512_dpbf16_ps(*a, w, xt);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        *out.add(i) = _mm512_reduce_add_ps(*a) + bias.map_or(0.0, |b| *b.add(i));
    }
}

/// See [`crate::scalar::matmul_rows_bf16a_q8w`].
pub fn matmul_rows_bf16a_q8w<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    codes: &[i8],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u16>,
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    assert_eq!(x.len(), TERMS * n_tok * k, "linear: x is not [terms, n_tok, K]");
    crate::scalar::check_q8_shapes(n_tok, k, codes.len(), scales.len(), bias, out);
    let rows = codes.len() / k;
    let panel = if n_tok <= 4 { GEMV_ROWS } else { PANEL_ROWS };
    scratch.resize(panel * k, 0);
    let spr = k / crate::q8::BLOCK;
    // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F/BW/BF16; the shapes were
    // checked above and the scratch holds a whole panel.
    unsafe {
        let mut r = 0;
        while r < rows {
            let pr = (rows - r).min(panel);
            let bias_r = bias.map(|b| b.as_ptr().add(r));
            let (c, s) = (codes.as_ptr().add(r * k), scales.as_ptr().add(r * spr));
            if n_tok == 1 && pr == GEMV_ROWS {
                gemv_rows_q8::<TERMS, GEMV_ROWS>(x.as_ptr(), k, c, s, bias_r, out.as_mut_ptr().add(r));
            } else if n_tok == 1 && pr == 4 {
                gemv_rows_q8::<TERMS, 4>(x.as_ptr(), k, c, s, bias_r, out.as_mut_ptr().add(r));
            } else {
                decode_rows_q8(c, s, pr * spr, scratch.as_mut_ptr());
                gemm_panel::<TERMS>(
                    x.as_ptr(),
                    n_tok,
                    k,
                    scratch.as_ptr(),
                    false,
                    pr,
                    bias_r,
                    out.as_mut_ptr().add(r * n_tok),
                );
            }
            r += pr;
        }
    }
}

//! The dense matmuls (attention, unembedding; MXFP4 and q8 rows decoded to bf16) on AArch64
//! CPUs with the BF16 extension (FEAT_BF16, Armv8.6: Apple M2 and later, Graviton 3 and later,
//! Neoverse V1/N2/V2, Cortex-A510/A710/X2 and later), through `bfmmla`: a 2×4 by 4×2 bf16
//! product into a 2×2 f32 tile, 16 multiply-adds per instruction where an f32 FMA does 4, and
//! bf16 weights need no widening. The activations are two bf16 terms (`x ≈ hi + lo`,
//! [`crate::bf16::split_slice_to_bf16`], 16 significant bits), as in the `avx512bf16` set, so
//! the results stay within a few f32 roundings of the reference.
//!
//! The operands: two weight rows × 4 columns (`[row 0's 4, row 1's 4]`) and two tokens × the
//! same 4 columns; the tile's lanes are (row 0, token 0), (0, 1), (1, 0), (1, 1). Two rows'
//! next 8 columns are two loads and two `zip`s of their 64-bit halves, the same for tokens,
//! so neither the weights nor the activations need a repacked layout.
//!
//! Rounding: `bfmmla` does not use the FPCR's rounding mode or flush flag (FEAT_EBF16 CPUs
//! change its arithmetic when FPCR.EBF is set; Linux leaves it clear). Each lane adds the products of column pairs
//! (0, 1), then (2, 3): two exact products summed, then added to the lane, each addition
//! rounded to odd, subnormal inputs and results flushed to zero (the Arm ARM's `BFDotAdd`;
//! qemu emulates it so). That is not the f32 reference's arithmetic, so its own twin,
//! [`crate::scalar::matmul_rows_bf16a_bf16w_bfmmla`], emulates it, and the kernels give the
//! twin's bits. Each term has its own accumulators (the lo term's roundings are then 2^-8 of
//! the hi term's), added once at the end. On the tiny fixture (under qemu) these matmuls
//! alone, the experts in f32, cost max |Δ NLL| 2.1e-4; the whole set 1.6e-3, as `avx512bf16`
//! (the experts' int16 activations dominate). A lane depends only on its own row, token and the order of the columns,
//! which every tile, batch and layout here follows (8 columns at a time, 4 then 4), so a
//! token's result never depends on the batch it came in, and the [`crate::bf16_t8`] layout
//! gives the bits of rows.
//!
//! `bfmmla` is inline assembly: its intrinsic is not stable in Rust yet.

use std::arch::aarch64::*;
use std::arch::asm;

use crate::mxfp4;
use crate::scalar::{check_bf16a_shapes, check_mxfp4_bf16a_shapes, check_q8_shapes};

/// Row pairs per tile. A prompt's tile of 8 rows × 4 tokens keeps 16 accumulators (one per
/// term) and the operands of one half chunk, 8, in registers; one token's (the other token
/// slot repeats it) keeps 8 independent chains of 2 dependent `bfmmla` per 8 columns.
const ROW_PAIRS: usize = 4;
/// Token pairs per tile of a prompt.
const TOKEN_PAIRS: usize = 2;
/// Tokens whose activations stay in L2 while every row tile passes over them (32 × 2880 × 2
/// terms × 2 bytes = 368 KB). Even, so that a token pair never straddles two tiles.
const TOKEN_TILE: usize = 32;
const _: () = assert!(TOKEN_TILE.is_multiple_of(2));
/// MXFP4 or q8 rows decoded to bf16 at a time (64 × 2880 × 2 bytes = 368 KB).
const PANEL_ROWS: usize = 64;

/// bf16 halves of scratch the MXFP4 and q8 kernels take for K inputs: one decoded panel.
pub(crate) fn scratch_halves(k: usize) -> usize {
    PANEL_ROWS * k
}

/// `acc[2i + j] += Σ_c a[4i + c]·b[4j + c]` (bf16 products, `BFDotAdd` rounding).
#[inline(always)]
unsafe fn bfmmla(mut acc: float32x4_t, a: uint16x8_t, b: uint16x8_t) -> float32x4_t {
    asm!(
        ".arch_extension bf16",
        "bfmmla {acc:v}.4s, {a:v}.8h, {b:v}.8h",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// 8 columns of two rows (or tokens) at `p0` and `p1` as `bfmmla` operands: columns 0..4 of
/// both, then 4..8 of both.
#[inline(always)]
unsafe fn operands(p0: *const u16, p1: *const u16) -> [uint16x8_t; 2] {
    let (a, b) = (vreinterpretq_u64_u16(vld1q_u16(p0)), vreinterpretq_u64_u16(vld1q_u16(p1)));
    [vreinterpretq_u16_u64(vzip1q_u64(a, b)), vreinterpretq_u16_u64(vzip2q_u64(a, b))]
}

/// The first `n` (< 8) halves at `p`, zero-padded to 8: a ragged end's zero products add
/// nothing, exactly.
#[inline(always)]
unsafe fn padded(p: *const u16, n: usize) -> [u16; 8] {
    let mut v = [0u16; 8];
    std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n);
    v
}

/// Where a tile's rows and tokens are: `w[p][i]` points at row 2p+i's column 0, whose
/// column o (a multiple of 8) is `col(o)` further (o for rows, the [`crate::bf16_t8`]
/// offset for tiles); `x[term][p][j]` at token 2p+j's column 0 of that term.
struct TileAt<C, const TERMS: usize, const RP: usize, const TP: usize> {
    w: [[*const u16; 2]; RP],
    col: C,
    x: [[[*const u16; 2]; TP]; TERMS],
}

/// The `bfmmla` steps of one 8-column chunk: per half (columns 0..4, 4..8), per term, every
/// row pair by every token pair, each term into its own accumulators.
#[inline(always)]
unsafe fn chunk<const TERMS: usize, const RP: usize, const TP: usize>(
    acc: &mut [[[float32x4_t; TP]; RP]; TERMS],
    w: &[[uint16x8_t; 2]; RP],
    x: &[[[uint16x8_t; 2]; TP]; TERMS],
) {
    for h in 0..2 {
        for (acc_t, x_t) in acc.iter_mut().zip(x) {
            for (acc_p, w_p) in acc_t.iter_mut().zip(w) {
                for (a, x_q) in acc_p.iter_mut().zip(x_t) {
                    *a = bfmmla(*a, w_p[h], x_q[h]);
                }
            }
        }
    }
}

/// The sums of 2·RP rows by 2·TP tokens over K columns, per term; lane 2i + j of
/// `[term][p][q]` is row 2p + i by token 2q + j.
#[inline(always)]
unsafe fn tile<C: Fn(usize) -> usize, const TERMS: usize, const RP: usize, const TP: usize>(
    at: &TileAt<C, TERMS, RP, TP>,
    k: usize,
) -> [[[float32x4_t; TP]; RP]; TERMS] {
    let mut acc = [[[vdupq_n_f32(0.0); TP]; RP]; TERMS];
    let mut o = 0;
    while o + 8 <= k {
        let c = (at.col)(o);
        let w = std::array::from_fn(|p| operands(at.w[p][0].add(c), at.w[p][1].add(c)));
        let x = std::array::from_fn(|t| std::array::from_fn(|p| operands(at.x[t][p][0].add(o), at.x[t][p][1].add(o))));
        chunk::<TERMS, RP, TP>(&mut acc, &w, &x);
        o += 8;
    }
    if o < k {
        // Only rows (col(o) = o) can end ragged: the tiled layout holds whole 32-column chunks.
        let n = k - o;
        let wb: [[[u16; 8]; 2]; RP] =
            std::array::from_fn(|p| [padded(at.w[p][0].add(o), n), padded(at.w[p][1].add(o), n)]);
        let xb: [[[[u16; 8]; 2]; TP]; TERMS] = std::array::from_fn(|t| {
            std::array::from_fn(|p| [padded(at.x[t][p][0].add(o), n), padded(at.x[t][p][1].add(o), n)])
        });
        let w = std::array::from_fn(|p| operands(wb[p][0].as_ptr(), wb[p][1].as_ptr()));
        let x = std::array::from_fn(|t| std::array::from_fn(|p| operands(xb[t][p][0].as_ptr(), xb[t][p][1].as_ptr())));
        chunk::<TERMS, RP, TP>(&mut acc, &w, &x);
    }
    acc
}

/// A matrix as [`gemm`] reads it: `rows` rows, row r's column 0 at `row(r)`, its column o
/// (a multiple of 8) `col(o)` further.
struct Rows<R, C> {
    rows: usize,
    row: R,
    col: C,
}

/// x `[TERMS, T, K]`, bias and out `[R, T]` as raw pointers for the tiles.
#[derive(Clone, Copy)]
struct Io {
    x: *const u16,
    n_tok: usize,
    k: usize,
    bias: Option<*const f32>,
    out: *mut f32,
}

/// The tile at rows r0.., tokens t0.. (rows and tokens past the ends repeat the last one;
/// their lanes are not written), out `[r, t] = sum + bias[r]`.
#[inline(always)]
unsafe fn run_tile<R, C, const TERMS: usize, const RP: usize, const TP: usize>(
    m: &Rows<R, C>,
    io: Io,
    r0: usize,
    t0: usize,
) where
    R: Fn(usize) -> *const u16,
    C: Fn(usize) -> usize + Copy,
{
    let row = |i: usize| (r0 + i).min(m.rows - 1);
    let tok = |j: usize| (t0 + j).min(io.n_tok - 1);
    let at = TileAt::<C, TERMS, RP, TP> {
        w: std::array::from_fn(|p| [(m.row)(row(2 * p)), (m.row)(row(2 * p + 1))]),
        col: m.col,
        x: std::array::from_fn(|t| {
            std::array::from_fn(|p| {
                let term = io.x.add(t * io.n_tok * io.k);
                [term.add(tok(2 * p) * io.k), term.add(tok(2 * p + 1) * io.k)]
            })
        }),
    };
    let acc = tile(&at, io.k);
    // hi + lo, then the bias: f32 additions, nearest even.
    let sums: [[float32x4_t; TP]; RP] = std::array::from_fn(|p| {
        std::array::from_fn(|q| (1..TERMS).fold(acc[0][p][q], |s, t| vaddq_f32(s, acc[t][p][q])))
    });
    for (p, sums_p) in sums.iter().enumerate() {
        for (q, sum) in sums_p.iter().enumerate() {
            let mut lanes = [0f32; 4];
            vst1q_f32(lanes.as_mut_ptr(), *sum);
            for (l, v) in lanes.iter().enumerate() {
                let (r, t) = (r0 + 2 * p + l / 2, t0 + 2 * q + l % 2);
                if r < m.rows && t < io.n_tok {
                    *io.out.add(r * io.n_tok + t) = v + io.bias.map_or(0.0, |b| *b.add(r));
                }
            }
        }
    }
}

/// `out[R, T] = W[R, K]·x[T, K]ᵀ + bias`. One token: tiles of 8 rows. Several: tokens in
/// tiles that stay in L2, each row tile of 8 rows meeting 4 tokens at a time.
#[target_feature(enable = "neon")]
unsafe fn gemm<R, C, const TERMS: usize>(m: Rows<R, C>, io: Io)
where
    R: Fn(usize) -> *const u16,
    C: Fn(usize) -> usize + Copy,
{
    if io.n_tok == 1 {
        let mut r = 0;
        while r + 2 * ROW_PAIRS <= m.rows {
            run_tile::<R, C, TERMS, ROW_PAIRS, 1>(&m, io, r, 0);
            r += 2 * ROW_PAIRS;
        }
        while r < m.rows {
            run_tile::<R, C, TERMS, 1, 1>(&m, io, r, 0);
            r += 2;
        }
        return;
    }
    for t0 in (0..io.n_tok).step_by(TOKEN_TILE) {
        let t1 = (t0 + TOKEN_TILE).min(io.n_tok);
        let mut r = 0;
        while r < m.rows {
            let rp = if r + 2 * ROW_PAIRS <= m.rows { ROW_PAIRS } else { 1 };
            let mut t = t0;
            while t < t1 {
                let tp = if t + 2 * TOKEN_PAIRS <= t1 { TOKEN_PAIRS } else { 1 };
                match (rp, tp) {
                    (ROW_PAIRS, TOKEN_PAIRS) => run_tile::<R, C, TERMS, ROW_PAIRS, TOKEN_PAIRS>(&m, io, r, t),
                    (ROW_PAIRS, _) => run_tile::<R, C, TERMS, ROW_PAIRS, 1>(&m, io, r, t),
                    (_, TOKEN_PAIRS) => run_tile::<R, C, TERMS, 1, TOKEN_PAIRS>(&m, io, r, t),
                    _ => run_tile::<R, C, TERMS, 1, 1>(&m, io, r, t),
                }
                t += 2 * tp;
            }
            r += 2 * rp;
        }
    }
}

/// `n` consecutive rows of K columns at `w`.
fn plain_rows(w: *const u16, n: usize, k: usize) -> Rows<impl Fn(usize) -> *const u16, impl Fn(usize) -> usize + Copy> {
    Rows { rows: n, row: move |r| w.wrapping_add(r * k), col: |o| o }
}

/// See [`crate::scalar::matmul_rows_bf16a_bf16w`].
pub fn matmul_rows_bf16a_bf16w<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    check_bf16a_shapes(x, TERMS, n_tok, k, w.len(), bias, out);
    let rows = w.len() / k;
    let io = Io { x: x.as_ptr(), n_tok, k, bias: bias.map(|b| b.as_ptr()), out: out.as_mut_ptr() };
    // SAFETY: handed out by `Kernels` only when the CPU has BF16; the shapes were checked above.
    unsafe { gemm::<_, _, TERMS>(plain_rows(w.as_ptr(), rows, k), io) }
}

/// See [`crate::scalar::matmul_rows_bf16a_bf16t8w`].
pub fn matmul_rows_bf16a_bf16t8w<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let k = x.len() / (TERMS * n_tok.max(1));
    check_bf16a_shapes(x, TERMS, n_tok, k, w.len(), bias, out);
    let rows = w.len() / k;
    assert!(crate::bf16_t8::can_tile(rows, k), "bf16_t8: [{rows}, {k}] is not whole tiles");
    let io = Io { x: x.as_ptr(), n_tok, k, bias: bias.map(|b| b.as_ptr()), out: out.as_mut_ptr() };
    let (g, c) = (crate::bf16_t8::ROWS, crate::bf16_t8::CHUNK);
    let wp = w.as_ptr();
    let m = Rows {
        rows,
        row: move |r: usize| wp.wrapping_add(g * k * (r / g) + c * (r % g)),
        col: move |o: usize| g * c * (o / c) + o % c,
    };
    // SAFETY: as above; every row and column offset lies inside the checked tiles.
    unsafe { gemm::<_, _, TERMS>(m, io) }
}

/// See [`crate::scalar::matmul_rows_bf16a_mxfp4w`]: rows decoded to bf16 a panel at a time
/// into `scratch` ([`mxfp4::decode_row_bf16`], exact), then the bf16 tiles.
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
    check_mxfp4_bf16a_shapes(x, TERMS, n_tok, k, codes.len(), scales.len(), bias, out);
    let (cpr, spr) = (k / 2, k / mxfp4::BLOCK);
    let rows = scales.len() / spr;
    let decode = |r: usize, n: usize, dst: &mut [u16]| {
        for (i, d) in dst.chunks_exact_mut(k).take(n).enumerate() {
            let row = r + i;
            mxfp4::decode_row_bf16(&codes[row * cpr..(row + 1) * cpr], &scales[row * spr..(row + 1) * spr], d);
        }
    };
    panels::<TERMS>(x, n_tok, k, rows, bias, out, scratch, decode);
}

/// See [`crate::scalar::matmul_rows_bf16a_q8w`]: rows decoded to their defined bf16 values
/// ([`crate::q8::dequantize_row_bf16`]) a panel at a time, then the bf16 tiles.
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
    check_q8_shapes(n_tok, k, codes.len(), scales.len(), bias, out);
    let rows = codes.len() / k;
    let spr = k / crate::q8::BLOCK;
    let decode = |r: usize, n: usize, dst: &mut [u16]| {
        let (c, s) = (&codes[r * k..(r + n) * k], &scales[r * spr..(r + n) * spr]);
        crate::q8::dequantize_row_bf16(c, s, &mut dst[..n * k]);
    };
    panels::<TERMS>(x, n_tok, k, rows, bias, out, scratch, decode);
}

/// Decodes [`PANEL_ROWS`] rows at a time into `scratch` with `decode(r0, n, dst)` and runs
/// them through [`gemm`]; out `[R, T]`.
#[allow(clippy::too_many_arguments)]
fn panels<const TERMS: usize>(
    x: &[u16],
    n_tok: usize,
    k: usize,
    rows: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u16>,
    decode: impl Fn(usize, usize, &mut [u16]),
) {
    scratch.resize(PANEL_ROWS.min(rows) * k, 0);
    let mut r = 0;
    while r < rows {
        let n = (rows - r).min(PANEL_ROWS);
        decode(r, n, &mut scratch[..]);
        let io =
            Io { x: x.as_ptr(), n_tok, k, bias: bias.map(|b| b[r..].as_ptr()), out: out[r * n_tok..].as_mut_ptr() };
        // SAFETY: handed out by `Kernels` only when the CPU has BF16; the shapes were
        // checked by the callers and the scratch holds the n decoded rows.
        unsafe { gemm::<_, _, TERMS>(plain_rows(scratch.as_ptr(), n, k), io) }
        r += n;
    }
}

/// dst = [hi; lo] (TERMS = 2) or [hi] (TERMS = 1), as [`crate::bf16::split_slice_to_bf16`]
/// (a small part of a matmul, so it stays scalar).
pub fn split_to_bf16<const TERMS: usize>(src: &[f32], dst: &mut [u16]) {
    assert_eq!(dst.len(), TERMS * src.len(), "split_to_bf16: dst is not [terms, n]");
    let (hi, lo) = dst.split_at_mut(src.len());
    crate::bf16::split_slice_to_bf16(src, hi, (TERMS == 2).then_some(lo));
}

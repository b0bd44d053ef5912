//! NEON (AArch64 Advanced SIMD): 4 f32 lanes and 32 vector registers. bf16 is widened by a
//! 16-bit shift, MXFP4 decoded by byte-table lookups, q8 by integer widening; the matmuls run
//! on tiles of rows × tokens so that several FMA chains are in flight, and attention takes the
//! query heads of one kv head together like the AVX-512 kernel.
//!
//! Every dot product sums in one order, whatever tile computed it: two 4-lane accumulators
//! over 8-element groups (elements o..o+4 into the first, o+4..o+8 into the second), one
//! 4-element group into the first, the two added lane-wise and reduced pairwise, then the
//! scalar tail in order. For K a multiple of 8 that is the scalar reference's partition into
//! eight partial sums and its combining tree, with fused multiply-adds. A result therefore
//! does not depend on the batch it was computed in.

use std::arch::aarch64::*;

use crate::bf16::bf16_to_f32;
use crate::scalar::{for_each_row, KvSpan};

/// Weight rows per tile when one token is multiplied: 4 rows × 2 accumulators keep 8 FMA
/// chains in flight (enough to cover the FMA latency) and share each load of x.
const ROWS: usize = 4;
/// Tokens per tile of the bf16 matmul (4 rows × 2 tokens × 2 accumulators = 16 registers).
const BF16_TOKS: usize = 2;
/// Tokens per tile over a decoded row in `row_buf` (1 row × 4 tokens × 2 accumulators).
const ROW_TOKS: usize = 4;

/// `[4]` bf16 at `p` as f32.
#[inline(always)]
unsafe fn load_bf16x4(p: *const u16) -> float32x4_t {
    vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p)))
}

/// The dot products of RB weight rows with TB tokens, each `n` long, in the module's order.
/// `x[t]` points at token t's `[n]` activations; `w4(r, o)` gives weights o..o+4 of the
/// tile's row r as f32 and `w1(r, i)` one weight (the tail). Returns `[RB][TB]` sums.
#[inline(always)]
unsafe fn tile<const RB: usize, const TB: usize>(
    x: [*const f32; TB],
    n: usize,
    w4: impl Fn(usize, usize) -> float32x4_t,
    w1: impl Fn(usize, usize) -> f32,
) -> [[f32; TB]; RB] {
    // [RB, TB, 2] accumulators: RB·TB·2 independent FMA chains.
    let mut acc = [[[vdupq_n_f32(0.0); 2]; TB]; RB];
    let mut o = 0;
    while o + 8 <= n {
        let xv: [[float32x4_t; 2]; TB] = std::array::from_fn(|t| [vld1q_f32(x[t].add(o)), vld1q_f32(x[t].add(o + 4))]);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let w = [w4(r, o), w4(r, o + 4)];
            for (a, xt) in acc_r.iter_mut().zip(&xv) {
                a[0] = vfmaq_f32(a[0], xt[0], w[0]);
                a[1] = vfmaq_f32(a[1], xt[1], w[1]);
            }
        }
        o += 8;
    }
    if o + 4 <= n {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let w = w4(r, o);
            for (a, xt) in acc_r.iter_mut().zip(&x) {
                a[0] = vfmaq_f32(a[0], vld1q_f32(xt.add(o)), w);
            }
        }
        o += 4;
    }
    std::array::from_fn(|r| {
        std::array::from_fn(|t| {
            let mut s = vaddvq_f32(vaddq_f32(acc[r][t][0], acc[r][t][1]));
            for i in o..n {
                s += *x[t].add(i) * w1(r, i);
            }
            s
        })
    })
}

/// `out[r, t] = y[r - r0][t - t0] + bias[r]` for the tile at rows r0.., tokens t0...
#[inline(always)]
fn put<const RB: usize, const TB: usize>(
    y: [[f32; TB]; RB],
    out: &mut [f32],
    n_tok: usize,
    bias: Option<&[f32]>,
    r0: usize,
    t0: usize,
) {
    for (r, yr) in y.iter().enumerate() {
        let b = bias.map_or(0.0, |b| b[r0 + r]);
        for (o, &v) in out[(r0 + r) * n_tok + t0..][..TB].iter_mut().zip(yr) {
            *o = v + b;
        }
    }
}

/// Rows r0..r0+RB of the bf16 matmul, all tokens, BF16_TOKS at a time.
#[inline(always)]
unsafe fn bf16_rows<const RB: usize>(
    x: &[f32],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
    k: usize,
    r0: usize,
) {
    let wp: [*const u16; RB] = std::array::from_fn(|r| w.as_ptr().add((r0 + r) * k));
    let w4 = |r: usize, o: usize| load_bf16x4(wp[r].add(o));
    let w1 = |r: usize, i: usize| bf16_to_f32(*wp[r].add(i));
    let mut t = 0;
    while t + BF16_TOKS <= n_tok {
        let xp = std::array::from_fn(|j| x.as_ptr().add((t + j) * k));
        put(tile::<RB, BF16_TOKS>(xp, k, &w4, &w1), out, n_tok, bias, r0, t);
        t += BF16_TOKS;
    }
    while t < n_tok {
        put(tile::<RB, 1>([x.as_ptr().add(t * k)], k, &w4, &w1), out, n_tok, bias, r0, t);
        t += 1;
    }
}

#[target_feature(enable = "neon")]
unsafe fn matmul_bf16_impl(x: &[f32], n_tok: usize, w: &[u16], bias: Option<&[f32]>, out: &mut [f32], k: usize) {
    let rows = w.len() / k;
    let mut r = 0;
    while r + ROWS <= rows {
        bf16_rows::<ROWS>(x, n_tok, w, bias, out, k, r);
        r += ROWS;
    }
    while r < rows {
        bf16_rows::<1>(x, n_tok, w, bias, out, k, r);
        r += 1;
    }
}

/// See [`crate::scalar::matmul_rows_f32_bf16w`]; same shapes, FMA summation order.
pub fn matmul_rows_f32_bf16w(
    x: &[f32],
    n_tok: usize,
    w: &[u16],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    crate::scalar::check_matmul_shapes(x, n_tok, k, w.len(), bias, out);
    // SAFETY: handed out by `Kernels` only when the CPU has NEON; the shapes were checked
    // above (x is [n_tok, K], w is [R, K], out is [R, n_tok]), so every load is in bounds.
    unsafe { matmul_bf16_impl(x, n_tok, w, bias, out, k) }
}

/// Weights of one 32-element block as 8 vectors in order: `[8]` f32x4.
type Block = [float32x4_t; 8];

/// `block(r, b)` for rows r0..r0+RB: weights b·32..b·32+32 of each row, dotted with one
/// token's `x` (`nblk` blocks long) in the module's order (a block is four 8-element groups).
#[inline(always)]
unsafe fn gemv_blocks<const RB: usize>(x: *const f32, nblk: usize, block: impl Fn(usize, usize) -> Block) -> [f32; RB] {
    let mut acc = [[vdupq_n_f32(0.0); 2]; RB];
    for b in 0..nblk {
        let xv: Block = std::array::from_fn(|j| vld1q_f32(x.add(b * 32 + 4 * j)));
        for (r, a) in acc.iter_mut().enumerate() {
            let w = block(r, b);
            for j in 0..8 {
                a[j % 2] = vfmaq_f32(a[j % 2], xv[j], w[j]);
            }
        }
    }
    std::array::from_fn(|r| vaddvq_f32(vaddq_f32(acc[r][0], acc[r][1])))
}

/// `out[r, t] = Σ_k x[t, k]·w[r, k] + bias[r]` for weights stored in blocks of 32 (MXFP4,
/// q8): `block(r, b)` decodes block b of row r. K is a multiple of 32, so the dot products
/// have no tail and the two paths below sum in the same order.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_blocks(
    x: &[f32],
    n_tok: usize,
    rows: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
    block: impl Fn(usize, usize) -> Block,
) {
    let k = row_buf.len();
    let nblk = k / 32;
    if n_tok == 1 {
        // Decode: every weight is used once, so it goes straight from the codes into the
        // FMAs, ROWS rows sharing each load of x.
        let mut r = 0;
        while r + ROWS <= rows {
            let y = gemv_blocks::<ROWS>(x.as_ptr(), nblk, |j, b| block(r + j, b));
            put(y.map(|v| [v]), out, 1, bias, r, 0);
            r += ROWS;
        }
        while r < rows {
            let y = gemv_blocks::<1>(x.as_ptr(), nblk, |_, b| block(r, b));
            put(y.map(|v| [v]), out, 1, bias, r, 0);
            r += 1;
        }
        return;
    }
    // Several tokens: decode the row once into row_buf, then ROW_TOKS tokens at a time.
    let bp = row_buf.as_mut_ptr();
    for r in 0..rows {
        for b in 0..nblk {
            for (j, w) in block(r, b).into_iter().enumerate() {
                vst1q_f32(bp.add(b * 32 + 4 * j), w);
            }
        }
        let wp = bp as *const f32;
        let w4 = |_: usize, o: usize| vld1q_f32(wp.add(o));
        let w1 = |_: usize, i: usize| *wp.add(i);
        let mut t = 0;
        while t + ROW_TOKS <= n_tok {
            let xp = std::array::from_fn(|j| x.as_ptr().add((t + j) * k));
            put(tile::<1, ROW_TOKS>(xp, k, &w4, &w1), out, n_tok, bias, r, t);
            t += ROW_TOKS;
        }
        while t < n_tok {
            put(tile::<1, 1>([x.as_ptr().add(t * k)], k, &w4, &w1), out, n_tok, bias, r, t);
            t += 1;
        }
    }
}

/// The E2M1 values as bf16 (all are exact: their f32 bits end in 16 zeros), split into the
/// low and the high byte so that each is one 16-entry byte table.
const fn fp4_bf16_bytes(high: bool) -> [u8; 16] {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bits = crate::mxfp4::FP4_VALUES[i].to_bits();
        assert!(bits & 0xffff == 0, "an E2M1 value is not exact in bf16");
        t[i] = if high { (bits >> 24) as u8 } else { (bits >> 16) as u8 };
        i += 1;
    }
    t
}
const FP4_BF16_LO: [u8; 16] = fp4_bf16_bytes(false);
const FP4_BF16_HI: [u8; 16] = fp4_bf16_bytes(true);

/// One MXFP4 block: 16 code bytes at `codes` → 32 weights (low nibble first), times `scale`.
/// Each nibble indexes both byte tables (`tbl`), the two bytes zip into a bf16, and the
/// bf16 widens to f32 by a shift: the same values as [`crate::mxfp4::decode_row`].
#[inline(always)]
unsafe fn decode_mxfp4_block(codes: *const u8, scale: float32x4_t, lut: (uint8x16_t, uint8x16_t)) -> Block {
    let bytes = vld1q_u8(codes);
    let (lo, hi) = (vandq_u8(bytes, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(bytes));
    // [16] nibbles in element order each: lo0 hi0 lo1 hi1 ... lo15 hi15.
    let idx = [vzip1q_u8(lo, hi), vzip2q_u8(lo, hi)];
    let mut w = [vdupq_n_f32(0.0); 8];
    for (h, &i) in idx.iter().enumerate() {
        let (b0, b1) = (vqtbl1q_u8(lut.0, i), vqtbl1q_u8(lut.1, i));
        // Little-endian: low byte first, so zipping gives the [8] bf16 of elements 0..8, 8..16.
        let (e0, e1) = (vreinterpretq_u16_u8(vzip1q_u8(b0, b1)), vreinterpretq_u16_u8(vzip2q_u8(b0, b1)));
        let widen = [vshll_n_u16::<16>(vget_low_u16(e0)), vshll_high_n_u16::<16>(e0)];
        let widen_hi = [vshll_n_u16::<16>(vget_low_u16(e1)), vshll_high_n_u16::<16>(e1)];
        for (j, v) in widen.into_iter().chain(widen_hi).enumerate() {
            w[4 * h + j] = vmulq_f32(vreinterpretq_f32_u32(v), scale);
        }
    }
    w
}

#[target_feature(enable = "neon")]
unsafe fn matmul_mxfp4_impl(
    x: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    let nblk = k / crate::mxfp4::BLOCK;
    let rows = scales.len() / nblk;
    let lut = (vld1q_u8(FP4_BF16_LO.as_ptr()), vld1q_u8(FP4_BF16_HI.as_ptr()));
    let cp = codes.as_ptr();
    let block = |r: usize, b: usize| {
        let scale = vdupq_n_f32(crate::mxfp4::e8m0_to_f32(scales[r * nblk + b]));
        decode_mxfp4_block(cp.add(r * k / 2 + b * 16), scale, lut)
    };
    matmul_blocks(x, n_tok, rows, bias, out, row_buf, block)
}

/// See [`crate::scalar::matmul_rows_f32_mxfp4w`]; same shapes, FMA summation order.
pub fn matmul_rows_f32_mxfp4w(
    x: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    crate::scalar::check_mxfp4_shapes(x, n_tok, row_buf.len(), codes.len(), scales.len(), bias, out);
    // SAFETY: handed out by `Kernels` only when the CPU has NEON; the shapes were checked
    // above (codes [R, K/2], scales [R, K/32], K a multiple of 32), so every block read and
    // row_buf write is in bounds.
    unsafe { matmul_mxfp4_impl(x, n_tok, codes, scales, bias, out, row_buf) }
}

/// 32 weights of an affine row starting at input `j` (all in one group, as groups are
/// multiples of 32), the bits of [`crate::affine::decode_row`]: `scale·q + bias`, a multiply
/// and an add. 4- and 8-bit codes are widened in registers; other widths are read one by one.
#[inline(always)]
unsafe fn decode_affine_block(codes: &[u8], bits: u32, j: usize, scale: f32, bias: f32) -> Block {
    let (sv, bv) = (vdupq_n_f32(scale), vdupq_n_f32(bias));
    let value = |q: uint32x4_t| vaddq_f32(vmulq_f32(sv, vcvtq_f32_u32(q)), bv);
    let mut w = [vdupq_n_f32(0.0); 8];
    let widen = |w: &mut Block, at: usize, b: uint8x16_t| {
        let (lo, hi) = (vmovl_u8(vget_low_u8(b)), vmovl_high_u8(b));
        for (i, h) in [lo, hi].into_iter().enumerate() {
            w[at + 2 * i] = value(vmovl_u16(vget_low_u16(h)));
            w[at + 2 * i + 1] = value(vmovl_high_u16(h));
        }
    };
    match bits {
        8 => {
            let p = codes.as_ptr().add(j);
            widen(&mut w, 0, vld1q_u8(p));
            widen(&mut w, 4, vld1q_u8(p.add(16)));
        }
        4 => {
            // 16 bytes, each two codes, low nibble first: zip the nibbles back into order.
            let b = vld1q_u8(codes.as_ptr().add(j / 2));
            let (lo, hi) = (vandq_u8(b, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(b));
            widen(&mut w, 0, vzip1q_u8(lo, hi));
            widen(&mut w, 4, vzip2q_u8(lo, hi));
        }
        _ => {
            let q: [u32; 32] = std::array::from_fn(|i| crate::affine::code(codes, j + i, bits));
            for (i, v) in w.iter_mut().enumerate() {
                *v = value(vld1q_u32(q.as_ptr().add(4 * i)));
            }
        }
    }
    w
}

#[target_feature(enable = "neon")]
unsafe fn matmul_affine_impl(
    x: &[f32],
    n_tok: usize,
    w: crate::affine::AffineRows,
    rows: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    let block = |r: usize, b: usize| {
        let (c, s, bi) = w.row(k, r);
        let g = b * 32 / w.group;
        decode_affine_block(c, w.bits, b * 32, s[g], bi[g])
    };
    matmul_blocks(x, n_tok, rows, bias, out, row_buf, block)
}

/// See [`crate::scalar::matmul_rows_f32_affinew`]; same shapes, FMA summation order.
pub fn matmul_rows_f32_affinew(
    x: &[f32],
    n_tok: usize,
    w: crate::affine::AffineRows,
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let rows = crate::scalar::check_affine_shapes(x, n_tok, row_buf.len(), &w, bias, out);
    // SAFETY: handed out by `Kernels` only when the CPU has NEON; the shapes were checked
    // above (K a multiple of the group, itself a multiple of 32), so every block read and
    // row_buf write is in bounds.
    unsafe { matmul_affine_impl(x, n_tok, w, rows, bias, out, row_buf) }
}

/// f32 → bf16 → f32 with [`crate::bf16::f32_to_bf16`]'s rounding: to nearest even, NaN kept
/// quiet (adding the rounding bias to a NaN could carry it into infinity or the sign).
#[inline(always)]
unsafe fn round_to_bf16(v: float32x4_t) -> float32x4_t {
    let bits = vreinterpretq_u32_f32(v);
    let lsb = vandq_u32(vshrq_n_u32::<16>(bits), vdupq_n_u32(1));
    let rounded = vaddq_u32(bits, vaddq_u32(lsb, vdupq_n_u32(0x7fff)));
    let quiet_nan = vorrq_u32(bits, vdupq_n_u32(0x0040_0000));
    let r = vbslq_u32(vceqq_f32(v, v), rounded, quiet_nan);
    vreinterpretq_f32_u32(vandq_u32(r, vdupq_n_u32(0xffff_0000)))
}

/// One q8 block: 32 codes at `codes` → 32 weights `bf16(code · scale)`, as
/// [`crate::q8::dequantize_row`] gives them.
#[inline(always)]
unsafe fn decode_q8_block(codes: *const i8, scale: float32x4_t) -> Block {
    let mut w = [vdupq_n_f32(0.0); 8];
    for h in 0..2 {
        let c = vld1q_s8(codes.add(16 * h));
        let (c0, c1) = (vmovl_s8(vget_low_s8(c)), vmovl_high_s8(c));
        let wide = [vmovl_s16(vget_low_s16(c0)), vmovl_high_s16(c0), vmovl_s16(vget_low_s16(c1)), vmovl_high_s16(c1)];
        for (j, v) in wide.into_iter().enumerate() {
            w[4 * h + j] = round_to_bf16(vmulq_f32(vcvtq_f32_s32(v), scale));
        }
    }
    w
}

#[target_feature(enable = "neon")]
unsafe fn matmul_q8_impl(
    x: &[f32],
    n_tok: usize,
    codes: &[i8],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    let nblk = k / crate::q8::BLOCK;
    let rows = codes.len() / k;
    let cp = codes.as_ptr();
    let block = |r: usize, b: usize| decode_q8_block(cp.add(r * k + b * 32), vdupq_n_f32(scales[r * nblk + b]));
    matmul_blocks(x, n_tok, rows, bias, out, row_buf, block)
}

/// See [`crate::scalar::matmul_rows_f32_q8w`]; same shapes, FMA summation order.
pub fn matmul_rows_f32_q8w(
    x: &[f32],
    n_tok: usize,
    codes: &[i8],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    row_buf: &mut [f32],
) {
    let k = row_buf.len();
    crate::scalar::check_q8_shapes(n_tok, k, codes.len(), scales.len(), bias, out);
    assert_eq!(x.len(), n_tok * k, "linear: x is not [n_tok, K]");
    // SAFETY: handed out by `Kernels` only when the CPU has NEON; the shapes were checked
    // above (codes [R, K], scales [R, K/32], K a multiple of 32), so every read is in bounds.
    unsafe { matmul_q8_impl(x, n_tok, codes, scales, bias, out, row_buf) }
}

// ---------------------------------------------------------------------------------------
// Attention over the KV cache (f32 throughout, like the reference): the query heads of one
// kv head go together, so each key and value row is read once per tile of 4 heads rather than
// once per head (twice per group of gpt-oss's 8, from cache the second time). Per query
// head the math is [`crate::scalar::attend_head_f32`]'s; results depend only on the query,
// the key range and the keys, never on how the keys are split into spans.

/// The only head size the vector path takes (gpt-oss); others go to the scalar twin.
const HD: usize = 64;
/// Vectors per head row.
const HV: usize = HD / 4;
/// Keys scored together: 4 heads × 4 keys = 16 accumulators.
const KEYS: usize = 4;

/// e^x for x ≤ 0 (anything larger is not asked for here): n = round(x·log2 e), r = x − n·ln 2
/// in two parts, e^r by Cephes' degree-6 polynomial, times 2^n built from exponent bits in
/// two halves (2^n alone would be subnormal below n = −126). About 1 ulp.
#[inline(always)]
unsafe fn exp_nonpositive(x: float32x4_t) -> float32x4_t {
    let x = vmaxq_f32(x, vdupq_n_f32(-104.0));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(std::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, vmulq_f32(r, r));
    // n ≥ −150, so both halves are ≥ −75: normal powers of two; only the last product rounds.
    let ni = vcvtq_s32_f32(n);
    let n1 = vshrq_n_s32::<1>(ni);
    let n2 = vsubq_s32(ni, n1);
    let pow2 = |e: int32x4_t| vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(e, vdupq_n_s32(127))));
    vmulq_f32(vmulq_f32(p, pow2(n1)), pow2(n2))
}

/// Scores of HB query heads (`q` at the first, `[HB, HD]`) against KEYS keys, times `scale`,
/// written to `dst[h·n + j]` for the first `count` keys. Each score is one FMA chain over
/// the 16 column vectors and the same pairwise reduction whatever its slot, so a key's
/// score does not depend on which keys share its tile.
#[inline(always)]
unsafe fn score_heads<const HB: usize>(
    q: *const f32,
    keys: &[*const f32; KEYS],
    scale: f32,
    dst: *mut f32,
    n: usize,
    count: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); KEYS]; HB];
    // Per column vector: KEYS + HB loads, HB·KEYS FMAs. The trip count is hidden from the
    // optimiser so this stays a loop: unrolled, LLVM regroups the FMAs head by head and
    // spills the keys to the stack.
    for c in 0..std::hint::black_box(HV) {
        let kv: [float32x4_t; KEYS] = std::array::from_fn(|s| vld1q_f32(keys[s].add(4 * c)));
        for (h, a) in acc.iter_mut().enumerate() {
            let qv = vld1q_f32(q.add(h * HD + 4 * c));
            for (a, &k) in a.iter_mut().zip(&kv) {
                *a = vfmaq_f32(*a, qv, k);
            }
        }
    }
    for (h, a) in acc.iter().enumerate() {
        // Lane s: the sum of a[s]'s lanes, (0 + 1) + (2 + 3).
        let s = vmulq_f32(vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3])), vdupq_n_f32(scale));
        if count == KEYS {
            vst1q_f32(dst.add(h * n), s);
        } else {
            let mut tmp = [0f32; KEYS];
            vst1q_f32(tmp.as_mut_ptr(), s);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst.add(h * n), count);
        }
    }
}

/// [`score_heads`] over every key at positions `lo..=hi`: `dst` is `[HB, n]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn score_pass<const HB: usize>(
    q: *const f32,
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    dst: *mut f32,
    n: usize,
) {
    let mut keys: [*const f32; KEYS] = [std::ptr::null(); KEYS];
    let mut filled = 0;
    for_each_row(spans, kv_dim, kv_off, HD, lo, hi, |i, k, _| {
        keys[filled] = k;
        filled += 1;
        if filled == KEYS {
            score_heads::<HB>(q, &keys, scale, dst.add(i + 1 - KEYS), n, KEYS);
            filled = 0;
        }
    });
    if filled > 0 {
        // The empty slots repeat a real key; their scores are computed and dropped.
        for j in filled..KEYS {
            keys[j] = keys[0];
        }
        score_heads::<HB>(q, &keys, scale, dst.add(n - filled), n, filled);
    }
}

/// `out[h, c] = (Σ_s e[h, s]·v[s, c]) · inv_denom[h]` for HB heads from h0 and the CV column
/// vectors from c0: HB·CV accumulators, each value vector loaded once for the HB heads.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weigh_values<const HB: usize, const CV: usize>(
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    lo: usize,
    hi: usize,
    weights: *const f32,
    n: usize,
    h0: usize,
    c0: usize,
    inv_denom: &[f32],
    out: *mut f32,
) {
    let mut acc = [[vdupq_n_f32(0.0); CV]; HB];
    for_each_row(spans, kv_dim, kv_off, HD, lo, hi, |i, _, v| {
        let vv: [float32x4_t; CV] = std::array::from_fn(|c| vld1q_f32(v.add(4 * (c0 + c))));
        for (h, a) in acc.iter_mut().enumerate() {
            let p = vld1q_dup_f32(weights.add((h0 + h) * n + i));
            for (a, &v) in a.iter_mut().zip(&vv) {
                *a = vfmaq_f32(*a, p, v);
            }
        }
    });
    for (h, a) in acc.iter().enumerate() {
        let d = vdupq_n_f32(inv_denom[h0 + h]);
        for (c, &a) in a.iter().enumerate() {
            vst1q_f32(out.add((h0 + h) * HD + 4 * (c0 + c)), vmulq_f32(a, d));
        }
    }
}

#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_impl(
    q: &[f32],
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    sinks: &[f32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let g = sinks.len();
    let n: usize = spans.iter().map(|s| s.rows_in(lo, hi, kv_dim).len()).sum();
    // [G, n] scores, then weights.
    scores.clear();
    scores.resize(g * n, 0.0);
    let sc = scores.as_mut_ptr();

    // Scores: one pass over the keys per tile of heads (4, then 2, then 1 heads), KEYS keys
    // at a time. Heads outermost, so the keys change every step and the tile's queries stay.
    let mut h = 0;
    while h < g {
        let (qp, dst) = (q.as_ptr().add(h * HD), sc.add(h * n));
        h += match g - h {
            4.. => {
                score_pass::<4>(qp, spans, kv_dim, kv_off, lo, hi, scale, dst, n);
                4
            }
            2 | 3 => {
                score_pass::<2>(qp, spans, kv_dim, kv_off, lo, hi, scale, dst, n);
                2
            }
            _ => {
                score_pass::<1>(qp, spans, kv_dim, kv_off, lo, hi, scale, dst, n);
                1
            }
        };
    }

    // Softmax with the sink, per head: weights e^(z − max), and 1/denominator.
    let mut inv_denom = [0f32; 64];
    for h in 0..g {
        let row = sc.add(h * n);
        let mut mx = vdupq_n_f32(sinks[h]);
        let mut i = 0;
        while i + 4 <= n {
            mx = vmaxq_f32(mx, vld1q_f32(row.add(i)));
            i += 4;
        }
        let mut max = vmaxvq_f32(mx);
        for j in i..n {
            max = max.max(*row.add(j));
        }
        let m = vdupq_n_f32(max);
        let mut sum = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 4 <= n {
            let e = exp_nonpositive(vsubq_f32(vld1q_f32(row.add(i)), m));
            vst1q_f32(row.add(i), e);
            sum = vaddq_f32(sum, e);
            i += 4;
        }
        let mut total = vaddvq_f32(sum);
        if i < n {
            // The last 1..3 scores through the same exp, padded with the max (e^0, dropped).
            let mut tail = [max; 4];
            for (j, t) in tail[..n - i].iter_mut().enumerate() {
                *t = *row.add(i + j);
            }
            let mut e = [0f32; 4];
            vst1q_f32(e.as_mut_ptr(), exp_nonpositive(vsubq_f32(vld1q_f32(tail.as_ptr()), m)));
            for (j, &ej) in e[..n - i].iter().enumerate() {
                *row.add(i + j) = ej;
                total += ej;
            }
        }
        inv_denom[h] = 1.0 / (total + (sinks[h] - max).exp());
    }

    // out[h] = (Σ_s e[h, s]·v[s]) / denominator: 4 heads × 4 column vectors per pass over
    // the values, then pairs and single heads by halves of the row.
    let op = out.as_mut_ptr();
    let mut h0 = 0;
    while h0 < g {
        h0 += match g - h0 {
            4.. => {
                for c0 in (0..HV).step_by(4) {
                    weigh_values::<4, 4>(spans, kv_dim, kv_off, lo, hi, sc, n, h0, c0, &inv_denom, op);
                }
                4
            }
            2 | 3 => {
                for c0 in (0..HV).step_by(8) {
                    weigh_values::<2, 8>(spans, kv_dim, kv_off, lo, hi, sc, n, h0, c0, &inv_denom, op);
                }
                2
            }
            _ => {
                for c0 in (0..HV).step_by(8) {
                    weigh_values::<1, 8>(spans, kv_dim, kv_off, lo, hi, sc, n, h0, c0, &inv_denom, op);
                }
                1
            }
        };
    }
}

/// See [`crate::scalar::attend_heads_f32`].
#[allow(clippy::too_many_arguments)]
pub fn attend_heads_f32(
    q: &[f32],
    spans: &[KvSpan],
    kv_dim: usize,
    kv_off: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    sinks: &[f32],
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    if !crate::scalar::vector_shapes_ok(HD, q, spans, kv_dim, kv_off, sinks, out) {
        // Other head sizes, and bad shapes, which the twin reports.
        return crate::scalar::attend_heads_f32(q, spans, kv_dim, kv_off, lo, hi, scale, sinks, scores, out);
    }
    // SAFETY: handed out by `Kernels` only when the CPU has NEON; q and out are [G, HD] and
    // scores is resized to [G, n], checked above; every key and value row read lies inside
    // its span (whole rows, and the head's columns inside kv_dim, sliced with bounds checks).
    unsafe { attend_impl(q, spans, kv_dim, kv_off, lo, hi, scale, sinks, scores, out) }
}

//! AVX-512 VNNI: MXFP4 experts in the [`crate::mxfp4_r16`] layout times int16 activations.
//! `vpdpwssd` sums 32 int16 products into 16 exact int32 lanes per instruction, one lane per
//! weight row; a block's sums turn into f32 once (a convert and one fused multiply-add per
//! 16 rows and token), in the order the scalar twin
//! [`crate::scalar::matmul_rows_i16a_mxfp4r16w`] defines, so every path gives its bits.

use std::arch::x86_64::*;

use crate::mxfp4::BLOCK;
use crate::mxfp4_r16::{FP4_X2, GROUP, TILE_BYTES};

/// 2×E2M1 as int16, twice: `vpermw` reads 5 index bits and the fifth belongs to the next
/// nibble, so both halves must agree.
#[repr(C, align(64))]
struct Table([i16; 32]);
static FP4_X2_TWICE: Table = {
    let mut t = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = FP4_X2[i % 16];
        i += 1;
    }
    Table(t)
};

/// Centred 4-bit affine codes `u − 8` as int16, twice (see [`FP4_X2_TWICE`]).
static CENTRED_TWICE: Table = {
    let mut t = [0i16; 32];
    let mut i = 0;
    while i < 32 {
        t[i] = (i % 16) as i16 - 8;
        i += 1;
    }
    Table(t)
};

/// Multishift controls for pair `P` (0..4) of a quad: in each qword, word 0 takes the code
/// byte of the even row (low nibble indexes), word 1 the same byte shifted by 4 (high nibble),
/// words 2 and 3 the odd row's. The upper byte of each word is never read by `vpermw`.
const fn pair_ctl(p: u64) -> i64 {
    let b = 16 * p;
    (b | (b + 4) << 16 | (b + 8) << 32 | (b + 12) << 48) as i64
}

/// Column pair `P` of a 64-byte quad → 16 lanes (rows) of (w[2p], w[2p+1]) int16 pairs.
#[inline(always)]
unsafe fn decode_pair<const P: u64>(quad: __m512i, table: __m512i) -> __m512i {
    _mm512_permutexvar_epi16(_mm512_multishift_epi64_epi8(_mm512_set1_epi64(pair_ctl(P)), quad), table)
}

/// The 16 rows' weight scales of one block: `from_bits(s << 23) · 0.5`.
#[inline(always)]
unsafe fn weight_scales(s: *const u8) -> __m512 {
    let bits = _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(s as *const __m128i)), 23);
    _mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(0.5))
}

/// Bytes ahead of the decoder to prefetch codes (the hardware prefetcher stops at pages).
const PREFETCH_AHEAD: usize = 4096;

/// `$acc += Σ pairs $a·$b` per i32 lane as one `vpdpwssd` (a macro: the asm needs the
/// caller's AVX-512 target features). LLVM without a target CPU splits the intrinsic into
/// `vpmaddwd` + `vpaddd`: the same throughput alone on Zen 4, but twice the slots on the
/// vector pipes that the decode around it needs (one token decoded 23.6 GB/s of codes per
/// core that way).
macro_rules! dpwssd {
    ($acc:expr, $a:expr, $b:expr) => {
        // SAFETY: a register-only AVX-512 VNNI instruction; the caller has the features.
        std::arch::asm!(
            "vpdpwssd {acc}, {a}, {b}",
            acc = inout(zmm_reg) *$acc,
            a = in(zmm_reg) $a,
            b = in(zmm_reg) $b,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
}

/// One token through one group of 16 rows, decoding in registers: the 512-bit form of
/// [`super::avx2_i16`]'s offset decode (its `gemv_body` has the derivation). `xq` is the
/// token's codes `[K]` with each 8 columns deinterleaved and followed by its K/32 block sums
/// as i32 (see [`super::avx2_i16::matmul_offset_decode`]), `xs` its scales `[K/32]`; out
/// `[16]`.
///
/// One token is bound by decoding, not by memory, when memory is fast: `vpermw` per column
/// pair (after `vpmultishiftqb` placed the nibbles) decoded 22.9 GB/s of codes per Zen 4
/// core with the weights in L2, less than half of the 52–57 GB/s that VM's memory reads.
/// Here two `vpshufb` decode all 128 codes of a quad as `u = w + c` bytes, each word holding
/// rows 2j and 2j+1 of one column, and `vpdpwssd` of the words as they are
/// (`A = Σu₀x + 256·Σu₁x`) and shifted down a byte (`B = Σu₁x`) separates the rows: 11
/// operations per 128 weights instead of 12, none of them a cross-lane permute: 25.2 GB/s
/// (4-bit affine codes, which need no lookup: 27.4 → 40.0). Exact as the AVX2 form is: `A`
/// may wrap, but `A − 256·B` is the even row's small sum.
///
/// One group at a time: its codes are one contiguous stream, prefetched a page ahead. Four
/// groups side by side (four streams) reached 84% of the read bandwidth with both cores.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemv_group<const AFFINE: bool>(
    xq: *const i16,
    xs: *const f32,
    k: usize,
    codes: *const u8,
    scales: *const u8,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    let blocks = k / BLOCK;
    let table = fp4_offset_table();
    let nibble = _mm512_set1_epi8(0x0f);
    let xw = xq as *const i64;
    let x_sums = (xq as *const i32).add(k.div_ceil(2));
    let offset = super::avx2_i16::code_offset::<AFFINE>();
    let mut facc = _mm512_setzero_ps();
    for b in 0..blocks {
        // Per i32 lane (half of a qword: rows 2j and 2j+1, pairs 0-1 or 2-3): A and B.
        let (mut both, mut odd) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for q in 0..4 {
            let src = codes.add(b * TILE_BYTES + q * 64);
            _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH_AHEAD) as *const i8);
            // Columns 8q+0,2,4,6 (low nibbles) and 8q+1,3,5,7 (high nibbles) of block b.
            let x_lo = _mm512_set1_epi64(std::ptr::read_unaligned(xw.add(b * 8 + q * 2)));
            let x_hi = _mm512_set1_epi64(std::ptr::read_unaligned(xw.add(b * 8 + q * 2 + 1)));
            let c = _mm512_loadu_si512(src as *const _);
            let lo = offset_codes::<AFFINE>(_mm512_and_si512(c, nibble), table);
            let hi = offset_codes::<AFFINE>(_mm512_and_si512(_mm512_srli_epi16::<4>(c), nibble), table);
            dpwssd!(&mut both, lo, x_lo);
            dpwssd!(&mut both, hi, x_hi);
            dpwssd!(&mut odd, _mm512_srli_epi16::<8>(lo), x_lo);
            dpwssd!(&mut odd, _mm512_srli_epi16::<8>(hi), x_hi);
        }
        // Row 2j's sum is lane 2j + lane 2j+1 of A − 256·B, row 2j+1's of B: the qword's two
        // lanes added in each lane, then the even lanes from the first and the odd lanes from
        // the second, so the 16 lanes are rows 0..16 in order.
        let even = _mm512_sub_epi32(both, _mm512_slli_epi32::<8>(odd));
        let even = _mm512_add_epi32(even, _mm512_srli_epi64::<32>(even));
        let odd = _mm512_add_epi32(odd, _mm512_slli_epi64::<32>(odd));
        let usum = _mm512_mask_blend_epi32(0xaaaa, even, odd);
        let isum = _mm512_sub_epi32(usum, _mm512_set1_epi32(offset * *x_sums.add(b)));
        let comb = _mm512_mul_ps(scale_vector::<AFFINE>(scales, b * GROUP), _mm512_set1_ps(*xs.add(b)));
        facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), comb, facc);
    }
    let bv = bias.map_or(_mm512_setzero_ps(), |p| _mm512_loadu_ps(p));
    _mm512_storeu_ps(out, _mm512_add_ps(facc, bv));
}

/// [`super::avx2_i16::FP4_OFFSET_BYTES`] in every 128-bit lane (affine codes need no lookup).
#[inline(always)]
unsafe fn fp4_offset_table() -> __m512i {
    _mm512_broadcast_i32x4(_mm_loadu_si128(super::avx2_i16::FP4_OFFSET_BYTES.as_ptr() as *const __m128i))
}

/// Nibbles (one per byte) as codes plus the offset: a lookup for MXFP4, the nibbles
/// themselves for affine codes.
#[inline(always)]
unsafe fn offset_codes<const AFFINE: bool>(nibbles: __m512i, table: __m512i) -> __m512i {
    if AFFINE {
        nibbles
    } else {
        _mm512_shuffle_epi8(table, nibbles)
    }
}

/// The code lookup: 2×E2M1 (MXFP4) or the centred 4-bit affine codes `u − 8`.
#[inline(always)]
unsafe fn code_table<const AFFINE: bool>() -> __m512i {
    let t = if AFFINE { &CENTRED_TWICE } else { &FP4_X2_TWICE };
    _mm512_load_si512(t.0.as_ptr() as *const _)
}

/// The 16 scales from `i` of a group: E8M0 bytes (MXFP4) or f32 (affine; `scales` is their
/// bytes).
#[inline(always)]
unsafe fn scale_vector<const AFFINE: bool>(scales: *const u8, i: usize) -> __m512 {
    if AFFINE {
        _mm512_loadu_ps((scales as *const f32).add(i))
    } else {
        weight_scales(scales.add(i))
    }
}

/// Groups decoded together for several tokens: 32 rows × K int16 pairs stay in L2.
const PANEL_GROUPS: usize = 2;

/// The scratch the GEMM takes for K inputs: [`PANEL_GROUPS`] groups of code and scale
/// vectors per block (16 u32 each), plus room to align to 64 bytes.
pub(crate) fn scratch_words(k: usize) -> usize {
    PANEL_GROUPS * (k / BLOCK) * (16 + 1) * 16 + 16
}
/// Tokens per tile: RB·TB integer and RB·TB float accumulators fit the 32 registers.
const TOKENS: usize = 6;

/// Decodes `groups` groups into `w [g][b][p]` vectors of 16 int16 pairs and `ws [g][b]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn decode_panel<const AFFINE: bool>(
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    groups: usize,
    w: *mut __m512i,
    ws: *mut __m512,
) {
    let table = code_table::<AFFINE>();
    for t in 0..groups * blocks {
        let dst = w.add(t * 16);
        for q in 0..4 {
            let src = codes.add(t * TILE_BYTES + q * 64);
            _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH_AHEAD) as *const i8);
            let quad = _mm512_loadu_si512(src as *const _);
            _mm512_storeu_si512(dst.add(q * 4) as *mut _, decode_pair::<0>(quad, table));
            _mm512_storeu_si512(dst.add(q * 4 + 1) as *mut _, decode_pair::<1>(quad, table));
            _mm512_storeu_si512(dst.add(q * 4 + 2) as *mut _, decode_pair::<2>(quad, table));
            _mm512_storeu_si512(dst.add(q * 4 + 3) as *mut _, decode_pair::<3>(quad, table));
        }
        *ws.add(t) = scale_vector::<AFFINE>(scales, t * GROUP);
    }
}

/// RB groups × TB tokens over all of K. `w`/`ws` point at the panel's first group, `xq`/`xs`
/// at the first token's codes and scales, `out` at (row 0, token 0) of `[R, n_tok]`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // i, j index accumulators and operands alike
unsafe fn tile<const RB: usize, const TB: usize>(
    w: *const __m512i,
    ws: *const __m512,
    blocks: usize,
    xq: *const i16,
    xs: *const f32,
    bias: Option<*const f32>,
    out: *mut f32,
    n_tok: usize,
) {
    let k = blocks * BLOCK;
    let xp = xq as *const i32;
    let mut facc = [[_mm512_setzero_ps(); TB]; RB];
    for b in 0..blocks {
        let mut iacc = [[_mm512_setzero_si512(); TB]; RB];
        for p in 0..16 {
            let wv: [__m512i; RB] =
                std::array::from_fn(|i| _mm512_loadu_si512(w.add((i * blocks + b) * 16 + p) as *const _));
            for j in 0..TB {
                let xb = _mm512_set1_epi32(*xp.add((j * k) / 2 + b * 16 + p));
                for i in 0..RB {
                    iacc[i][j] = _mm512_dpwssd_epi32(iacc[i][j], wv[i], xb);
                }
            }
        }
        for j in 0..TB {
            let xsb = _mm512_set1_ps(*xs.add(j * blocks + b));
            for i in 0..RB {
                let comb = _mm512_mul_ps(*ws.add(i * blocks + b), xsb);
                facc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[i][j]), comb, facc[i][j]);
            }
        }
    }
    let mut lanes = [0f32; GROUP];
    for (i, row) in facc.iter().enumerate() {
        let bv = bias.map_or(_mm512_setzero_ps(), |p| _mm512_loadu_ps(p.add(i * GROUP)));
        for (j, f) in row.iter().enumerate() {
            _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_add_ps(*f, bv));
            for (l, v) in lanes.iter().enumerate() {
                *out.add((i * GROUP + l) * n_tok + j) = *v;
            }
        }
    }
}

macro_rules! tile_dispatch {
    ($rb:expr, $tb:expr, $($arg:expr),*) => {
        match ($rb, $tb) {
            (2, 6) => tile::<2, 6>($($arg),*),
            (2, 5) => tile::<2, 5>($($arg),*),
            (2, 4) => tile::<2, 4>($($arg),*),
            (2, 3) => tile::<2, 3>($($arg),*),
            (2, 2) => tile::<2, 2>($($arg),*),
            (2, _) => tile::<2, 1>($($arg),*),
            (_, 6) => tile::<1, 6>($($arg),*),
            (_, 5) => tile::<1, 5>($($arg),*),
            (_, 4) => tile::<1, 4>($($arg),*),
            (_, 3) => tile::<1, 3>($($arg),*),
            (_, 2) => tile::<1, 2>($($arg),*),
            _ => tile::<1, 1>($($arg),*),
        }
    };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_panel(
    w: *const __m512i,
    ws: *const __m512,
    blocks: usize,
    groups: usize,
    xq: *const i16,
    xs: *const f32,
    n_tok: usize,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    let k = blocks * BLOCK;
    let mut t = 0;
    while t < n_tok {
        let tb = (n_tok - t).min(TOKENS);
        tile_dispatch!(groups, tb, w, ws, blocks, xq.add(t * k), xs.add(t * blocks), bias, out.add(t), n_tok);
        t += tb;
    }
}

/// A panel of up to [`PANEL_GROUPS`] groups: decoded into `[g][blocks][16]` code vectors then
/// `[g][blocks]` scale vectors at `panel`, then every token through them.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn panel<const AFFINE: bool>(
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    groups: usize,
    panel: *mut u32,
    xq: *const i16,
    xs: *const f32,
    n_tok: usize,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    let w = panel as *mut __m512i;
    let ws = w.add(PANEL_GROUPS * blocks * 16) as *mut __m512;
    decode_panel::<AFFINE>(codes, scales, blocks, groups, w, ws);
    gemm_panel(w, ws, blocks, groups, xq, xs, n_tok, bias, out);
}

static PARTS: super::I16aParts = super::I16aParts {
    gemv_group: gemv_group::<false>,
    panel: panel::<false>,
    panel_groups: PANEL_GROUPS,
    scratch_words,
    align: 64,
    scale_bytes: 1,
    code_offset: super::avx2_i16::code_offset::<false>(),
    gemv_group_halved: None,
};

/// The same drivers for 4-bit affine tiles: centred codes, f32 scales.
static AFFINE4_PARTS: super::I16aParts = super::I16aParts {
    gemv_group: gemv_group::<true>,
    panel: panel::<true>,
    panel_groups: PANEL_GROUPS,
    scratch_words,
    align: 64,
    scale_bytes: 4,
    code_offset: super::avx2_i16::code_offset::<true>(),
    gemv_group_halved: None,
};

/// See [`crate::scalar::matmul_rows_i16a_affine4r16w`]; `scratch` holds a decoded panel.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_i16a_affine4r16w(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    let scales = crate::affine_r16::f32_bytes(scales);
    // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F/BW/VBMI/VNNI.
    unsafe { super::avx2_i16::matmul_offset_decode(&AFFINE4_PARTS, xq, xs, n_tok, codes, scales, bias, out, scratch) }
}

/// See [`crate::scalar::matmul_rows_i16a_mxfp4r16w`]; `scratch` holds a decoded panel.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_i16a_mxfp4r16w(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    // SAFETY: handed out by `Kernels` only when the CPU has AVX-512F/BW/VBMI/VNNI.
    unsafe { super::avx2_i16::matmul_offset_decode(&PARTS, xq, xs, n_tok, codes, scales, bias, out, scratch) }
}

/// [`crate::mxfp4_r16::quantize_codes`] on 32 lanes at a time, bit for bit: the block's
/// absolute maximum is taken on the float bits as integers (the same order for finite
/// values, and inf/NaN are caught apart), the scale and its inverse are the same scalar
/// divisions, and `vcvtps2dq` rounds to nearest even as `round_ties_even` does.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_impl(x: &[f32], q_max: f32, q: &mut [i16], xs: &mut [f32]) {
    let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
    let inf_bits = _mm512_set1_epi32(0x7f80_0000);
    for (b, s) in xs.iter_mut().enumerate() {
        let (src, dst) = (x.as_ptr().add(b * BLOCK), q.as_mut_ptr().add(b * BLOCK));
        let (v0, v1) = (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16)));
        let a0 = _mm512_and_si512(_mm512_castps_si512(v0), abs_mask);
        let a1 = _mm512_and_si512(_mm512_castps_si512(v1), abs_mask);
        let not_finite = _mm512_cmpge_epu32_mask(a0, inf_bits) | _mm512_cmpge_epu32_mask(a1, inf_bits);
        let amax = f32::from_bits(_mm512_reduce_max_epu32(_mm512_max_epu32(a0, a1)));
        if not_finite != 0 || amax < f32::MIN_POSITIVE {
            _mm512_storeu_si512(dst as *mut _, _mm512_setzero_si512());
            *s = if not_finite != 0 { f32::NAN } else { 0.0 };
            continue;
        }
        let inv = _mm512_set1_ps(q_max / amax);
        let q0 = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)));
        let q1 = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inv)));
        _mm256_storeu_si256(dst as *mut __m256i, q0);
        _mm256_storeu_si256(dst.add(16) as *mut __m256i, q1);
        *s = amax / q_max;
    }
}

/// See [`crate::mxfp4_r16::quantize_codes`].
pub fn quantize_codes(x: &[f32], q_max: f32, q: &mut [i16], xs: &mut [f32]) {
    crate::mxfp4_r16::check_quantize_shapes(x, q_max, q, xs);
    // SAFETY: handed out by `Kernels` only with AVX-512F/BW; every block is in bounds (checked).
    unsafe { quantize_impl(x, q_max, q, xs) }
}

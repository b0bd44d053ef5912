//! AVX2: MXFP4 experts in the [`crate::mxfp4_r16`] layout times int16 activations, the
//! 8-lane twin of [`super::vnni`]. A tile's 16 rows are two halves of 8 i32 lanes (a quad's
//! first and last 32 bytes). Codes become int16 pairs by two `vpshufb`: one gathers each
//! row's code byte into both words of its lane, one looks the nibbles up in the 2×E2M1 table;
//! `vpmaddwd` then sums each pair of products into the row's exact int32 lane. A block's sums
//! turn into f32 once, in the order [`crate::scalar::matmul_rows_i16a_mxfp4r16w`] defines, so
//! this gives the bits of every other path.

use std::arch::x86_64::*;

use crate::mxfp4::BLOCK;
use crate::mxfp4_r16::{FP4_X2, GROUP, TILE_BYTES};

/// Bytes ahead of the decoder to prefetch codes (the hardware prefetcher stops at pages).
const PREFETCH_AHEAD: usize = 4096;

/// How far ahead [`gemv_body`] (one token) prefetches codes into L1 on Intel's cores
/// ([`super::is_intel`]); [`PREFETCH_AHEAD`] elsewhere. On a Sapphire-Rapids-class Xeon VM
/// (family 6 model 167; 2 threads decoding 2 GB of codes, 2 MiB pages) 4096 bytes ahead
/// read 19.5–20.7 GB/s, 3072 21.6–22.7, 2560 22.4–23.7, 2048 23.0–24.0, 1536 21.5–22.4, 1024
/// 19.4–21.0, 8192 17.6–18.3, and into L2 8192 ahead 16.4–18.4. Likely (no PMU there to
/// check) a prefetch too far ahead holds one of the L1's few outstanding misses (16 on Golden
/// Cove) for longer than the decoder, which is slower than memory there, needs. 2560 leaves
/// room for a longer latency.
/// `vnni`'s 512-bit decoder, twice as fast, read less at 2048 than at 4096 (24.0–26.9 against
/// 26.6–27.7), so it keeps [`PREFETCH_AHEAD`]; Zen 4 was tuned at 4096 and is not changed.
const INTEL_GEMV_PREFETCH_AHEAD: usize = 2560;

/// 2×E2M1 as int8 in both 128-bit lanes, for `vpshufb`.
#[inline(always)]
unsafe fn fp4_table() -> __m256i {
    let t: [i8; 16] = std::array::from_fn(|i| FP4_X2[i] as i8);
    let lane = _mm_loadu_si128(t.as_ptr() as *const __m128i);
    _mm256_broadcastsi128_si256(lane)
}

/// `vpshufb` control for column pair `P` of a quad half: the code byte of row L (qword L/2,
/// byte 2P + L%2, within its 128-bit lane) into the high byte of both words of lane L.
#[inline(always)]
unsafe fn pair_control<const P: i8>() -> __m256i {
    const Z: i8 = -128; // zero
    let s = |l: i8| 8 * (l / 2) + 2 * P + (l % 2);
    let (a, b, c, d) = (s(0), s(1), s(2), s(3));
    _mm256_setr_epi8(
        Z, a, Z, a, Z, b, Z, b, Z, c, Z, c, Z, d, Z, d, //
        Z, a, Z, a, Z, b, Z, b, Z, c, Z, c, Z, d, Z, d,
    )
}

/// 8 rows of (w[2p], w[2p+1]) int16 pairs from one quad half: word 0 indexes the table with
/// the low nibble, word 1 with the high one; each index sits in its word's high byte (the low
/// byte indexes entry 0, which is 0), so an arithmetic shift sign-extends the value.
#[inline(always)]
unsafe fn decode_pair(half: __m256i, control: __m256i, table: __m256i) -> __m256i {
    let v = _mm256_shuffle_epi8(half, control); // each word: byte << 8
    let mixed = _mm256_blend_epi16::<0xAA>(v, _mm256_srli_epi16::<4>(v));
    let index = _mm256_and_si256(mixed, _mm256_set1_epi16(0x0f00));
    _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(table, index))
}

/// 8 rows' E8M0 bytes of one block as `from_bits(s << 23)` (twice their weight scales), in
/// the order `vphaddd` leaves a half's row sums: rows 0, 2, 1, 3 and 4, 6, 5, 7. One
/// `vpshufb` of the broadcast bytes both orders and widens them (as `vpmovzxbd` widens them
/// in [`weight_scales`]), so the sums need no shuffle per block.
#[inline(always)]
unsafe fn scale_powers_hadd_order(s: *const u8) -> __m256 {
    const Z: i8 = -128; // zero
    let order = _mm256_setr_epi8(
        0, Z, Z, Z, 2, Z, Z, Z, 1, Z, Z, Z, 3, Z, Z, Z, //
        4, Z, Z, Z, 6, Z, Z, Z, 5, Z, Z, Z, 7, Z, Z, Z,
    );
    let bytes = _mm256_set1_epi64x(std::ptr::read_unaligned(s as *const i64));
    _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_shuffle_epi8(bytes, order)))
}

/// Rows 0, 2, 1, 3 of each 128-bit lane (what `vphaddd` of even-row and odd-row sums gives)
/// back in order.
#[inline(always)]
unsafe fn rows_in_order(v: __m256i) -> __m256i {
    _mm256_shuffle_epi32::<0b11_01_10_00>(v)
}

/// 8 rows' weight scales of one block: `from_bits(s << 23) · 0.5`.
#[inline(always)]
pub(super) unsafe fn weight_scales(s: *const u8) -> __m256 {
    let bits = _mm256_slli_epi32::<23>(_mm256_cvtepu8_epi32(_mm_loadl_epi64(s as *const __m128i)));
    _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(0.5))
}

/// The 4 pairs of one quad half, decoded.
#[inline(always)]
unsafe fn decode_quad_half(half: __m256i, table: __m256i) -> [__m256i; 4] {
    [
        decode_pair(half, pair_control::<0>(), table),
        decode_pair(half, pair_control::<1>(), table),
        decode_pair(half, pair_control::<2>(), table),
        decode_pair(half, pair_control::<3>(), table),
    ]
}

/// The code lookup: 2×E2M1 (MXFP4) or the centred 4-bit affine codes `u − 8`.
#[inline(always)]
unsafe fn code_table<const AFFINE: bool>() -> __m256i {
    if AFFINE {
        _mm256_setr_epi8(
            -8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, //
            -8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7,
        )
    } else {
        fp4_table()
    }
}

/// `acc + Σ pairs w·x` per i32 lane: `vpmaddwd` then `vpaddd`, or AVX-VNNI's `vpdpwssd` in
/// one instruction. Both wrap in 32 bits and no sum here comes near 2³¹, so the lanes are
/// the same integers either way.
#[inline(always)]
unsafe fn dot_acc<const VNNI: bool>(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpwssd_avx_epi32(acc, w, x)
    } else {
        _mm256_add_epi32(acc, _mm256_madd_epi16(w, x))
    }
}

/// Scales `i..i + 8` of a group: E8M0 bytes (MXFP4) or f32 (affine; `scales` is their bytes).
#[inline(always)]
unsafe fn scale_vector<const AFFINE: bool>(scales: *const u8, i: usize) -> __m256 {
    if AFFINE {
        _mm256_loadu_ps((scales as *const f32).add(i))
    } else {
        weight_scales(scales.add(i))
    }
}

/// What [`gemv_body`] adds to every code so that it is a byte in 0..=24 (MXFP4: 2×E2M1 +
/// 12) or 0..=15 (affine: the raw nibble, `u − 8` + 8).
pub(super) const fn code_offset<const AFFINE: bool>() -> i32 {
    if AFFINE {
        8
    } else {
        12
    }
}

/// 2×E2M1 + [`code_offset`]: every MXFP4 code as the non-negative byte the offset decoders
/// (here and in [`super::vnni`]) look up with `vpshufb`, one copy per 128-bit lane.
pub(super) const FP4_OFFSET_BYTES: [i8; 16] = {
    let mut t = [0i8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (FP4_X2[i] as i32 + code_offset::<false>()) as i8;
        i += 1;
    }
    t
};

/// [`FP4_OFFSET_BYTES`] in both 128-bit lanes.
#[inline(always)]
pub(super) unsafe fn fp4_offset_table() -> __m256i {
    _mm256_broadcastsi128_si256(_mm_loadu_si128(FP4_OFFSET_BYTES.as_ptr() as *const __m128i))
}

/// Nibbles (one per byte) as codes plus [`code_offset`]: a lookup in [`fp4_offset_table`],
/// or for affine codes the nibbles themselves.
#[inline(always)]
unsafe fn offset_codes<const AFFINE: bool>(nibbles: __m256i, table: __m256i) -> __m256i {
    if AFFINE {
        nibbles
    } else {
        _mm256_shuffle_epi8(table, nibbles)
    }
}

/// u32 words [`gemv_body`] reads for one token of K columns: the columns deinterleaved
/// ([`crate::affine_r16::deinterleave8`]), each block's column sum as an i32 (what
/// [`super::vnni`] reads), each block's accumulator starts ([`gemv_x`]), then the block
/// scales halved ([`matmul_offset_decode`]).
fn gemv_x_words(k: usize) -> usize {
    k.div_ceil(2) + k / BLOCK + GEMV_START_WORDS * (k / BLOCK) + k / BLOCK
}

/// i32 words per block of accumulator starts ([`gemv_x`]).
const GEMV_START_WORDS: usize = 4;

/// One token `xq [K]` as [`gemv_body`] reads it, into `x` ([`gemv_x_words`] u32 words): the
/// columns deinterleaved ([`crate::affine_r16::deinterleave8`]), each block's column sum,
/// then per block the starting values of [`gemv_body`]'s two accumulators as the i32 pairs
/// it broadcasts, `[A₀, A₁, C₀, C₁]`: `A_l = −257·c·X_l` and `C_l = −c·X_l`, with `c` the
/// codes' offset ([`code_offset`]) and `X_l` the sum of the block's columns that i32 lane `l`
/// of a pair of lanes multiplies (`8q + 4l .. 8q + 4l + 4` for the 4 quads q). So the offset
/// comes out of the sums where they start, not in the block's epilogue. |257·12·X_l| ≤
/// 3084·16·32767 < 2³¹. In vectors: this runs once per call, and a call can be as short as
/// one task's rows (a scalar pass cost 0.85 µs of the 2 µs of 16 rows × 2880).
///
/// # Safety
/// The CPU must have AVX2; `x` must hold [`gemv_x_words`] words and `xq` whole blocks.
#[target_feature(enable = "avx2")]
unsafe fn gemv_x(xq: &[i16], offset: i32, x: &mut [u32]) {
    let k = xq.len();
    let blocks = k / BLOCK;
    debug_assert!(k.is_multiple_of(BLOCK) && x.len() >= gemv_x_words(k));
    let cols = x.as_mut_ptr() as *mut i16;
    let (sums, starts) = (x.as_mut_ptr().add(k.div_ceil(2)), x.as_mut_ptr().add(k.div_ceil(2) + blocks));
    // Per 8 columns (one 128-bit lane): the even ones, then the odd ones.
    let evens_first = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    );
    let ones = _mm256_set1_epi16(1);
    for b in 0..blocks {
        let src = xq.as_ptr().add(b * BLOCK) as *const __m256i;
        let halves = [_mm256_loadu_si256(src), _mm256_loadu_si256(src.add(1))];
        let dst = cols.add(b * BLOCK) as *mut __m256i;
        _mm256_storeu_si256(dst, _mm256_shuffle_epi8(halves[0], evens_first));
        _mm256_storeu_si256(dst.add(1), _mm256_shuffle_epi8(halves[1], evens_first));
        // Pair sums [c0+c1, c2+c3, c4+c5, c6+c7] per 8 columns, the 4 eights added.
        let pairs = _mm256_add_epi32(_mm256_madd_epi16(halves[0], ones), _mm256_madd_epi16(halves[1], ones));
        let quads = _mm_add_epi32(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256::<1>(pairs));
        let mut p = [0i32; 4];
        _mm_storeu_si128(p.as_mut_ptr() as *mut __m128i, quads);
        let lane = [p[0] + p[1], p[2] + p[3]];
        *sums.add(b) = (lane[0] + lane[1]) as u32;
        let words = [-257 * offset * lane[0], -257 * offset * lane[1], -offset * lane[0], -offset * lane[1]];
        for (i, v) in words.into_iter().enumerate() {
            *starts.add(GEMV_START_WORDS * b + i) = v as u32;
        }
    }
}

/// One token through one group of 16 rows, decoding in registers: `xq` the token's codes
/// `[K]` with each 8 columns deinterleaved ([`crate::affine_r16::deinterleave8`]), followed
/// by its K/32 block sums and the accumulator starts ([`gemv_x_words`]), `xs` its scales
/// `[K/32]`, out `[16]`.
/// The group's codes are one contiguous stream.
///
/// Decode is what bounds one token (the loop is bound by the vector ports, not by memory),
/// so it is as few operations per 64 codes as the exact sums allow. Two table lookups give
/// every low and every high nibble of a quad half in place, each as the non-negative byte
/// `u = w + c` (`c` = [`code_offset`]; for affine codes the nibble itself, with no lookup).
/// A word then holds rows 2j (low byte) and 2j+1 (high byte) of one column: `256·u₁ + u₀`.
/// `vpmaddwd` of the words as they are with the columns (the deinterleaved activations,
/// broadcast as a qword) gives `A = 256·Σu₁x + Σu₀x`, of the words' low bytes alone
/// (`vpand`) `C = Σu₀x`. Both start at values from [`gemv_x`], which takes the offsets out: then
/// `C = Σw₀x` and `A − C = 256·Σw₁x`, an arithmetic shift from row 2j+1's sum.
/// 15 operations per 64 weights, 3 of them shifts or lookups: with masks where `Σu₁x` took
/// two more shifts (`B` of the words shifted down a byte, `Σu₀x = A − 256·B`, the offsets
/// taken out after the block), one Zen 4 thread went from 19.7 to 21.0 GB/s on cached
/// weights; the multiplies, lookups and shifts share ports, and those are what bind.
///
/// Exactness: `A` can pass 2^31 and wrap, but every step is exact modulo 2^32 and the
/// results are in range (|256·Σw₁x| ≤ 256·16·12·32767 < 2^31 per lane before the pairs
/// are added), so the block's integer sums are the twin's.
#[inline(always)]
unsafe fn gemv_body<const AFFINE: bool, const VNNI: bool, const HALVED: bool>(
    xq: *const i16,
    xs: *const f32,
    k: usize,
    codes: *const u8,
    scales: *const u8,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    let table = fp4_offset_table();
    let blocks = k / BLOCK;
    let nibble = _mm256_set1_epi8(0x0f);
    let low_byte = _mm256_set1_epi16(0xff);
    let xw = xq as *const i64;
    let starts = (xq as *const i32).add(k.div_ceil(2) + blocks) as *const i64;
    let ahead = if super::is_intel() { INTEL_GEMV_PREFETCH_AHEAD } else { PREFETCH_AHEAD };
    let mut facc = [_mm256_setzero_ps(); 2];
    for b in 0..blocks {
        let a_start = _mm256_set1_epi64x(std::ptr::read_unaligned(starts.add(2 * b)));
        let c_start = _mm256_set1_epi64x(std::ptr::read_unaligned(starts.add(2 * b + 1)));
        // [half][A, C]; lanes (rows 2j and 2j+1, pairs 0-1) and (the same, pairs 2-3).
        let mut iacc = [[a_start, c_start]; 2];
        for q in 0..4 {
            let src = codes.add(b * TILE_BYTES + q * 64);
            _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(ahead) as *const i8);
            // Columns 8q+0,2,4,6 (low nibbles) and 8q+1,3,5,7 (high nibbles) of block b.
            let x_lo = _mm256_set1_epi64x(std::ptr::read_unaligned(xw.add(b * 8 + q * 2)));
            let x_hi = _mm256_set1_epi64x(std::ptr::read_unaligned(xw.add(b * 8 + q * 2 + 1)));
            for (h, acc) in iacc.iter_mut().enumerate() {
                let c = _mm256_loadu_si256(src.add(32 * h) as *const __m256i);
                let lo = offset_codes::<AFFINE>(_mm256_and_si256(c, nibble), table);
                let hi = offset_codes::<AFFINE>(_mm256_and_si256(_mm256_srli_epi16::<4>(c), nibble), table);
                let both = dot_acc::<VNNI>(acc[0], lo, x_lo);
                acc[0] = dot_acc::<VNNI>(both, hi, x_hi);
                let low = dot_acc::<VNNI>(acc[1], _mm256_and_si256(lo, low_byte), x_lo);
                acc[1] = dot_acc::<VNNI>(low, _mm256_and_si256(hi, low_byte), x_hi);
            }
        }
        let xsb = _mm256_set1_ps(*xs.add(b));
        for (h, (f, acc)) in facc.iter_mut().zip(&iacc).enumerate() {
            let odd = _mm256_srai_epi32::<8>(_mm256_sub_epi32(acc[0], acc[1]));
            // Rows [0, 2, 1, 3] per 128-bit lane, as hadd gives them. MXFP4 takes its scales
            // in that order and puts the rows in order once, after the last block; the
            // affine f32 scales are in row order, so their sums are put in order per block.
            let isum = _mm256_hadd_epi32(acc[1], odd);
            let (isum, weight) = if AFFINE {
                (rows_in_order(isum), scale_vector::<AFFINE>(scales, b * GROUP + 8 * h))
            } else {
                let powers = scale_powers_hadd_order(scales.add(b * GROUP + 8 * h));
                // `xs` arrives as `xs · 0.5` (exact) when HALVED, so the scale's own halving is
                // not needed: `(2^e · 0.5) · xs` and `2^e · (xs · 0.5)` are the same product,
                // rounded once.
                (isum, if HALVED { powers } else { _mm256_mul_ps(powers, _mm256_set1_ps(0.5)) })
            };
            let comb = _mm256_mul_ps(weight, xsb);
            *f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), comb, *f);
        }
    }
    for (h, f) in facc.iter().enumerate() {
        let f = if AFFINE { *f } else { _mm256_castsi256_ps(rows_in_order(_mm256_castps_si256(*f))) };
        let bv = bias.map_or(_mm256_setzero_ps(), |p| _mm256_loadu_ps(p.add(8 * h)));
        _mm256_storeu_ps(out.add(8 * h), _mm256_add_ps(f, bv));
    }
}

/// [`gemv_body`] with `vpmaddwd` + `vpaddd`; `HALVED`: MXFP4 with `xs` already halved.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_group<const AFFINE: bool, const HALVED: bool>(
    xq: *const i16,
    xs: *const f32,
    k: usize,
    codes: *const u8,
    scales: *const u8,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    gemv_body::<AFFINE, false, HALVED>(xq, xs, k, codes, scales, bias, out)
}

/// [`gemv_body`] with AVX-VNNI's `vpdpwssd`; `HALVED` as for [`gemv_group`].
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn gemv_group_vnni<const AFFINE: bool, const HALVED: bool>(
    xq: *const i16,
    xs: *const f32,
    k: usize,
    codes: *const u8,
    scales: *const u8,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    gemv_body::<AFFINE, true, HALVED>(xq, xs, k, codes, scales, bias, out)
}

/// Groups decoded together for several tokens (as [`super::vnni`]).
const PANEL_GROUPS: usize = 2;
/// Tokens per tile: 2·TB integer accumulators, two weight vectors and a broadcast fit the 16
/// registers.
const TOKENS: usize = 4;

/// u32 words of scratch the GEMM takes for K inputs: [`PANEL_GROUPS`] groups of decoded code
/// vectors (16 pairs × 2 halves × 8 lanes per block) and scale vectors, plus alignment room.
pub(crate) fn scratch_words(k: usize) -> usize {
    PANEL_GROUPS * (k / BLOCK) * (16 * 2 + 2) * 8 + 8
}

/// Decodes `groups` groups into `w [g][b][p][half]` int16-pair vectors and `ws [g][b][half]`.
#[target_feature(enable = "avx2")]
unsafe fn decode_panel<const AFFINE: bool>(
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    groups: usize,
    w: *mut __m256i,
    ws: *mut __m256,
) {
    let table = code_table::<AFFINE>();
    for t in 0..groups * blocks {
        let dst = w.add(t * 32);
        for q in 0..4 {
            let src = codes.add(t * TILE_BYTES + q * 64);
            _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH_AHEAD) as *const i8);
            for h in 0..2 {
                let v = decode_quad_half(_mm256_loadu_si256(src.add(32 * h) as *const __m256i), table);
                for (p, vp) in v.iter().enumerate() {
                    _mm256_storeu_si256(dst.add((q * 4 + p) * 2 + h), *vp);
                }
            }
        }
        *ws.add(t * 2) = scale_vector::<AFFINE>(scales, t * GROUP);
        *ws.add(t * 2 + 1) = scale_vector::<AFFINE>(scales, t * GROUP + 8);
    }
}

/// One group × TB tokens over all of K: `w`/`ws` the group's decoded panel, `xq`/`xs` the
/// first token's codes and scales, `out` (row 0, token 0) of `[R, n_tok]`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile<const TB: usize, const VNNI: bool>(
    w: *const __m256i,
    ws: *const __m256,
    blocks: usize,
    xq: *const i16,
    xs: *const f32,
    bias: Option<*const f32>,
    out: *mut f32,
    n_tok: usize,
) {
    let k = blocks * BLOCK;
    let xp = xq as *const i32;
    let mut facc = [[_mm256_setzero_ps(); TB]; 2];
    for b in 0..blocks {
        let mut iacc = [[_mm256_setzero_si256(); TB]; 2];
        for p in 0..16 {
            let w0 = _mm256_loadu_si256(w.add((b * 16 + p) * 2));
            let w1 = _mm256_loadu_si256(w.add((b * 16 + p) * 2 + 1));
            for j in 0..TB {
                let x = _mm256_set1_epi32(*xp.add((j * k) / 2 + b * 16 + p));
                iacc[0][j] = dot_acc::<VNNI>(iacc[0][j], w0, x);
                iacc[1][j] = dot_acc::<VNNI>(iacc[1][j], w1, x);
            }
        }
        for j in 0..TB {
            let xsb = _mm256_set1_ps(*xs.add(j * blocks + b));
            for h in 0..2 {
                let comb = _mm256_mul_ps(*ws.add(b * 2 + h), xsb);
                facc[h][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[h][j]), comb, facc[h][j]);
            }
        }
    }
    store_tile(&facc, bias, out, n_tok);
}

/// A tile's sums `[row half][token]` (16 rows × TB tokens) plus the rows' bias into `out`
/// (row 0, token 0) of `[16, n_tok]`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(super) unsafe fn store_tile<const TB: usize>(
    facc: &[[__m256; TB]; 2],
    bias: Option<*const f32>,
    out: *mut f32,
    n_tok: usize,
) {
    let mut lanes = [0f32; 8];
    for h in 0..2 {
        let bv = bias.map_or(_mm256_setzero_ps(), |p| _mm256_loadu_ps(p.add(8 * h)));
        for j in 0..TB {
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(facc[h][j], bv));
            for (l, v) in lanes.iter().enumerate() {
                *out.add((8 * h + l) * n_tok + j) = *v;
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_group<const VNNI: bool>(
    w: *const __m256i,
    ws: *const __m256,
    blocks: usize,
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
        let (x, s, o) = (xq.add(t * k), xs.add(t * blocks), out.add(t));
        match tb {
            4 => tile::<4, VNNI>(w, ws, blocks, x, s, bias, o, n_tok),
            3 => tile::<3, VNNI>(w, ws, blocks, x, s, bias, o, n_tok),
            2 => tile::<2, VNNI>(w, ws, blocks, x, s, bias, o, n_tok),
            _ => tile::<1, VNNI>(w, ws, blocks, x, s, bias, o, n_tok),
        }
        t += tb;
    }
}

/// A panel of up to [`PANEL_GROUPS`] groups: decoded into `[g][blocks][16][2]` pair vectors
/// then `[g][blocks][2]` scale vectors at `panel`, then every token through each group.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_body<const AFFINE: bool, const VNNI: bool>(
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
    let w = panel as *mut __m256i;
    let ws = w.add(PANEL_GROUPS * blocks * 32) as *mut __m256;
    decode_panel::<AFFINE>(codes, scales, blocks, groups, w, ws);
    for i in 0..groups {
        gemm_group::<VNNI>(
            w.add(i * blocks * 32),
            ws.add(i * blocks * 2),
            blocks,
            xq,
            xs,
            n_tok,
            bias.map(|b| b.add(i * GROUP)),
            out.add(i * GROUP * n_tok),
        );
    }
}

/// [`panel_body`] with `vpmaddwd` + `vpaddd`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn panel<const AFFINE: bool>(
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    groups: usize,
    scratch: *mut u32,
    xq: *const i16,
    xs: *const f32,
    n_tok: usize,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    panel_body::<AFFINE, false>(codes, scales, blocks, groups, scratch, xq, xs, n_tok, bias, out)
}

/// [`panel_body`] with AVX-VNNI's `vpdpwssd`.
#[target_feature(enable = "avx2,fma,avxvnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_vnni<const AFFINE: bool>(
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    groups: usize,
    scratch: *mut u32,
    xq: *const i16,
    xs: *const f32,
    n_tok: usize,
    bias: Option<*const f32>,
    out: *mut f32,
) {
    panel_body::<AFFINE, true>(codes, scales, blocks, groups, scratch, xq, xs, n_tok, bias, out)
}

static PARTS: super::I16aParts = super::I16aParts {
    gemv_group: gemv_group::<false, false>,
    panel: panel::<false>,
    panel_groups: PANEL_GROUPS,
    scratch_words,
    align: 32,
    scale_bytes: 1,
    code_offset: code_offset::<false>(),
    gemv_group_halved: Some(gemv_group::<false, true>),
};

/// The same drivers for 4-bit affine tiles: centred codes, f32 scales.
static AFFINE4_PARTS: super::I16aParts = super::I16aParts {
    gemv_group: gemv_group::<true, false>,
    panel: panel::<true>,
    panel_groups: PANEL_GROUPS,
    scratch_words,
    align: 32,
    scale_bytes: 4,
    code_offset: code_offset::<true>(),
    gemv_group_halved: None,
};

/// The same drivers with AVX-VNNI (Alder Lake and later Intel client parts, Zen 5): one
/// `vpdpwssd` where AVX2 needs `vpmaddwd` and `vpaddd`, half the integer work per product.
static PARTS_VNNI: super::I16aParts = super::I16aParts {
    gemv_group: gemv_group_vnni::<false, false>,
    gemv_group_halved: Some(gemv_group_vnni::<false, true>),
    panel: panel_vnni::<false>,
    ..PARTS
};

/// [`AFFINE4_PARTS`] with AVX-VNNI.
static AFFINE4_PARTS_VNNI: super::I16aParts =
    super::I16aParts { gemv_group: gemv_group_vnni::<true, false>, panel: panel_vnni::<true>, ..AFFINE4_PARTS };

/// `parts` over `xq`: one token with its columns deinterleaved and followed by its block
/// sums ([`gemv_x_words`]: what the offset decoders, [`gemv_group`] and
/// [`super::vnni`]'s, read; the copy is K values per matrix, next to K·R/2 bytes of codes,
/// kept in `scratch`, which is not used otherwise), several through decoded panels kept in
/// `scratch`.
///
/// # Safety
/// The CPU must have the features `parts`' functions were compiled for.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul_offset_decode(
    parts: &super::I16aParts,
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    if n_tok == 1 && xq.len().is_multiple_of(BLOCK) {
        let k = xq.len();
        let mut x = std::mem::take(scratch);
        x.resize(gemv_x_words(k), 0);
        // SAFETY: every `parts` is for a CPU with AVX2; `x` is sized and K whole blocks.
        unsafe { gemv_x(xq, parts.code_offset, &mut x) };
        // The block scales halved where every halving is exact (a subnormal `xs` can lose
        // its last bit): then the MXFP4 kernel skips halving each weight scale.
        let halves_at = x.len() - k / BLOCK;
        let halved = parts.gemv_group_halved.filter(|_| halve_exactly(xs, &mut x[halves_at..]));
        let (parts, xs) = match halved {
            // SAFETY: f32 words written by `halve_exactly`.
            Some(g) => (super::I16aParts { gemv_group: g, ..*parts }, unsafe {
                std::slice::from_raw_parts(x[halves_at..].as_ptr() as *const f32, k / BLOCK)
            }),
            None => (*parts, xs),
        };
        // SAFETY: the first ⌈K/2⌉ words hold the K deinterleaved i16 columns.
        let xd = unsafe { std::slice::from_raw_parts(x.as_ptr() as *const i16, k) };
        // SAFETY: the caller's CPU runs `parts`.
        unsafe { super::matmul_rows_i16a(&parts, xd, xs, 1, codes, scales, bias, out, &mut Vec::new()) };
        *scratch = x;
        return;
    }
    // SAFETY: the caller's CPU runs `parts`.
    unsafe { super::matmul_rows_i16a(parts, xq, xs, n_tok, codes, scales, bias, out, scratch) }
}

/// `xs · 0.5` into `out` as f32 bits, and whether every halving was exact (NaN stays NaN).
fn halve_exactly(xs: &[f32], out: &mut [u32]) -> bool {
    let mut exact = xs.len() == out.len();
    for (h, &s) in out.iter_mut().zip(xs) {
        let half = s * 0.5;
        exact &= half * 2.0 == s || s.is_nan();
        *h = half.to_bits();
    }
    exact
}

/// See [`crate::scalar::matmul_rows_i16a_mxfp4r16w`]; `scratch` holds a decoded panel.
/// `VNNI`: AVX-VNNI's `vpdpwssd` ([`PARTS_VNNI`]), the same bits.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_i16a_mxfp4r16w<const VNNI: bool>(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    let parts = if VNNI { &PARTS_VNNI } else { &PARTS };
    // SAFETY: handed out by `Kernels` only when the CPU has AVX2 and FMA (and AVX-VNNI for
    // the `_VNNI` parts).
    unsafe { matmul_offset_decode(parts, xq, xs, n_tok, codes, scales, bias, out, scratch) }
}

/// [`crate::mxfp4_r16::quantize_codes`] on 8 lanes at a time, bit for bit: the absolute
/// maximum on the float bits as integers, the same scalar divisions, and `vcvtps2dq`
/// rounding to nearest even as `round_ties_even` does (|q| ≤ 32767, so packing never
/// saturates).
#[target_feature(enable = "avx2")]
unsafe fn quantize_impl(x: &[f32], q_max: f32, q: &mut [i16], xs: &mut [f32]) {
    let abs_mask = _mm256_set1_epi32(0x7fff_ffff);
    for (b, s) in xs.iter_mut().enumerate() {
        let (src, dst) = (x.as_ptr().add(b * BLOCK), q.as_mut_ptr().add(b * BLOCK));
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(8 * i)));
        let a: [__m256i; 4] = std::array::from_fn(|i| _mm256_and_si256(_mm256_castps_si256(v[i]), abs_mask));
        let m = _mm256_max_epu32(_mm256_max_epu32(a[0], a[1]), _mm256_max_epu32(a[2], a[3]));
        let m = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
        let m = _mm_max_epu32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
        let m = _mm_max_epu32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m));
        let bits = _mm_cvtsi128_si32(m) as u32;
        // Non-finite values have the largest bit patterns.
        if bits >= 0x7f80_0000 || f32::from_bits(bits) < f32::MIN_POSITIVE {
            std::ptr::write_bytes(dst, 0, BLOCK);
            *s = if bits >= 0x7f80_0000 { f32::NAN } else { 0.0 };
            continue;
        }
        let amax = f32::from_bits(bits);
        let inv = _mm256_set1_ps(q_max / amax);
        let c: [__m256i; 4] = std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv)));
        // packs interleaves the 128-bit lanes; the permute puts them back in order.
        let lo = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(c[0], c[1]));
        let hi = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(c[2], c[3]));
        _mm256_storeu_si256(dst as *mut __m256i, lo);
        _mm256_storeu_si256(dst.add(16) as *mut __m256i, hi);
        *s = amax / q_max;
    }
}

/// See [`crate::mxfp4_r16::quantize_codes`].
pub fn quantize_codes(x: &[f32], q_max: f32, q: &mut [i16], xs: &mut [f32]) {
    crate::mxfp4_r16::check_quantize_shapes(x, q_max, q, xs);
    // SAFETY: handed out by `Kernels` only with AVX2; every block is in bounds (checked).
    unsafe { quantize_impl(x, q_max, q, xs) }
}

/// See [`crate::scalar::matmul_rows_i16a_affine4r16w`]: one token group by group in
/// registers ([`gemv_group`]'s decode); several through decoded panels, as the MXFP4
/// GEMM (same integer block sums and the same order of float operations, so every token gets
/// the same bits either way). `scratch` holds a decoded panel, or the one token reordered.
/// `VNNI` as for [`matmul_rows_i16a_mxfp4r16w`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_i16a_affine4r16w<const VNNI: bool>(
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    let parts = if VNNI { &AFFINE4_PARTS_VNNI } else { &AFFINE4_PARTS };
    let scales = crate::affine_r16::f32_bytes(scales);
    // SAFETY: as in [`matmul_rows_i16a_mxfp4r16w`].
    unsafe { matmul_offset_decode(parts, xq, xs, n_tok, codes, scales, bias, out, scratch) }
}

//! Which kernels run: picked once from the CPU's features, or forced with
//! `GPTOSS_KERNELS=scalar|avx2|avx2-int8|avx-vnni|avx-vnni-int8|avx512|avx512vnni|avx512bf16|avx512bf16-round|neon|neon-dotprod|neon-i8mm|neon-bf16`
//! to test and compare. Call sites go through [`Kernels`] and never name an instruction set.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    /// AVX2 with AVX-VNNI (Intel Alder Lake and later client parts, Zen 5): the AVX2 set,
    /// with the int16 expert dot products in one `vpdpwssd` instead of two instructions.
    AvxVnni,
    /// `avx2` with the prompt's MXFP4 experts on activations quantized to int8 range and
    /// multiplied as bytes (`vpmaddubsw`): 1.6× the expert arithmetic rate on a Xeon (Sapphire
    /// Rapids), 1.1–1.25× on Zen 3, but fails the accuracy bar on the fixture (README), so
    /// never picked unless asked for.
    Avx2Int8,
    /// `avx-vnni` the same way, through `vpdpbusd`: 1.7–1.9× its int16 experts.
    AvxVnniInt8,
    Avx512,
    /// AVX-512 with VNNI and VBMI but not BF16 (Intel Ice Lake): the `avx512` set with the
    /// MXFP4 experts through 512-bit `vpdpwssd`, as `avx512bf16` runs them.
    Avx512Vnni,
    /// AVX-512 with BF16 dot products; matmul activations split into two bf16 terms
    /// (hi + lo), accurate to about 1e-5 like f32.
    Avx512Bf16,
    /// The same with one term: activations rounded to bf16. Twice the arithmetic rate, but
    /// fails the accuracy bar (README), so never picked unless asked for.
    Avx512Bf16Round,
    /// AArch64 Advanced SIMD (baseline on every AArch64 CPU), f32 activations.
    Neon,
    /// NEON with the dotprod extension: MXFP4 experts through `sdot` on int16 activations
    /// split into bytes (Apple M1+, Graviton 2+, Ampere Altra, Cortex-A76+).
    NeonDotprod,
    /// NEON with dotprod and i8mm: prompt chunks' MXFP4 experts through `smmla` (2 rows × 2
    /// tokens × 8 columns per instruction), one token through `sdot` (Apple M2+, Graviton 3+,
    /// Neoverse V1/N2, Cortex-A510/A710/X2+).
    NeonI8mm,
    /// `neon-i8mm` with the BF16 extension (Armv8.6: Apple M2+, Graviton 3+, Neoverse V1/N2/V2,
    /// Cortex-A510/A710/X2+): the dense matmuls through `bfmmla` (2 rows × 2 tokens × 4
    /// columns per instruction) on activations split into two bf16 terms, as `avx512bf16`.
    /// Never picked by itself: its speed against `neon-i8mm`'s f32 FMAs (two terms halve
    /// `bfmmla`'s rate, and cores issue it at different rates) is not measured yet.
    NeonBf16,
}

impl Isa {
    /// Every set, each architecture's (only those this CPU runs are usable).
    pub const ALL: [Isa; 13] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx2Int8,
        Isa::AvxVnniInt8,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Avx512Bf16,
        Isa::Avx512Bf16Round,
        Isa::Neon,
        Isa::NeonDotprod,
        Isa::NeonI8mm,
        Isa::NeonBf16,
    ];

    /// The fast sets held to the accuracy bar, fastest first (the `-int8` and `-round`
    /// variants miss the bar); [`Kernels::detect`] picks the first this CPU runs, among those
    /// [`Isa::picked_by_itself`].
    pub const FAST: [Isa; 9] = [
        Isa::Avx512Bf16,
        Isa::Avx512Vnni,
        Isa::Avx512,
        Isa::AvxVnni,
        Isa::Avx2,
        Isa::NeonBf16,
        Isa::NeonI8mm,
        Isa::NeonDotprod,
        Isa::Neon,
    ];

    /// Whether [`Kernels::detect`] may pick it: not `neon-bf16` until its speed is measured
    /// on Arm hardware, and not `avx512bf16` on Intel's CPUs, where `avx512vnni` is faster.
    /// On a Sapphire-Rapids-class Xeon VM (family 6 model 167, 2 threads, 20b shape),
    /// alternated: pp512 32.3–38.5 against 46.3–50.2 tokens/s, generation 77.6–79.7% against
    /// 80.7–86.5% of the measured bandwidth. Its two-term `vdpbf16ps` dense matmuls ran at half
    /// the rate of f32 FMA tiles there (95–100 against 186–195 GFLOP/s for qkv); on Zen 4 it
    /// was the fastest set.
    pub fn picked_by_itself(self) -> bool {
        match self {
            Isa::NeonBf16 => false,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => !crate::x86::is_intel(),
            _ => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx2Int8 => "avx2-int8",
            Isa::AvxVnniInt8 => "avx-vnni-int8",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Avx512Bf16Round => "avx512bf16-round",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "neon-dotprod",
            Isa::NeonI8mm => "neon-i8mm",
            Isa::NeonBf16 => "neon-bf16",
        }
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx2Int8 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni | Isa::AvxVnniInt8 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("avxvnni")
            }
            // Every AVX-512 CPU has AVX2 and FMA; the set's experts use the AVX2 integer kernels.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vbmi")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 | Isa::Avx512Bf16Round => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512bf16")
                    && is_x86_feature_detected!("avx512vbmi")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => {
                std::arch::is_aarch64_feature_detected!("neon") && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::NeonI8mm => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
                    && std::arch::is_aarch64_feature_detected!("i8mm")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::NeonBf16 => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
                    && std::arch::is_aarch64_feature_detected!("i8mm")
                    && std::arch::is_aarch64_feature_detected!("bf16")
            }
            // The instruction sets of the other architectures.
            _ => false,
        }
    }
}

/// `y[R, T] = W[R, K]·x[T, K]ᵀ + b` over a block of bf16 weight rows (the signature of
/// [`crate::scalar::matmul_rows_f32_bf16w`]; `row_buf` is `[K]` scratch).
pub type MatmulBf16 = fn(&[f32], usize, &[u16], Option<&[f32]>, &mut [f32], &mut [f32]);

/// The same with f32 weights (the signature of [`crate::scalar::matmul_rows_f32_f32w`]).
pub type MatmulF32 = fn(&[f32], usize, &[f32], Option<&[f32]>, &mut [f32], &mut [f32]);

/// The same with affine weights (the signature of [`crate::scalar::matmul_rows_f32_affinew`]).
pub type MatmulAffine = fn(&[f32], usize, crate::affine::AffineRows, Option<&[f32]>, &mut [f32], &mut [f32]);

/// The same with MXFP4 weights: codes `[R, K/2]`, scales `[R, K/32]` (the signature of
/// [`crate::scalar::matmul_rows_f32_mxfp4w`]).
pub type MatmulMxfp4 = fn(&[f32], usize, &[u8], &[u8], Option<&[f32]>, &mut [f32], &mut [f32]);

/// `y[R, T] = W[R, K]·x[T, K]ᵀ + b` with `x` split into bf16 terms `[terms, T, K]` (the
/// signature of [`crate::scalar::matmul_rows_bf16a_bf16w`]).
pub type MatmulBf16aBf16w = fn(&[u16], usize, &[u16], Option<&[f32]>, &mut [f32]);

/// The same with MXFP4 weights; the `Vec` is the kernel's scratch for decoded rows.
pub type MatmulBf16aMxfp4w = fn(&[u16], usize, &[u8], &[u8], Option<&[f32]>, &mut [f32], &mut Vec<u16>);

/// Matmuls that read activations as bf16 terms (see [`crate::bf16::split_slice_to_bf16`]):
/// bf16 weights need no widening and MXFP4 weights decode to exact bf16.
/// `y[R, T] = W[R, K]·x[T, K]ᵀ + b` with q8 weights (codes `[R, K]`, scales `[R, K/32]`) and
/// f32 activations (the signature of [`crate::scalar::matmul_rows_f32_q8w`]).
pub type MatmulQ8 = fn(&[f32], usize, &[i8], &[f32], Option<&[f32]>, &mut [f32], &mut [f32]);

/// The same with activations as bf16 terms.
pub type MatmulBf16aQ8w = fn(&[u16], usize, &[i8], &[f32], Option<&[f32]>, &mut [f32], &mut Vec<u16>);

/// Attention of the query heads that share one kv head (the signature of
/// [`crate::scalar::attend_heads_f32`]).
pub type AttendHeads =
    fn(&[f32], &[crate::scalar::KvSpan], usize, usize, usize, usize, f32, &[f32], &mut Vec<f32>, &mut [f32]);

/// `y[R, T] = W[R, K]·x[T, K]ᵀ + b` with MXFP4 weights in the [`crate::mxfp4_r16`] layout
/// and x quantized to int16 (codes `[T, K]`, scales `[T, K/32]`); the `Vec` is scratch (the
/// signature of [`crate::scalar::matmul_rows_i16a_mxfp4r16w`]).
pub type MatmulI16aMxfp4r16w = fn(&[i16], &[f32], usize, &[u8], &[u8], Option<&[f32]>, &mut [f32], &mut Vec<u32>);

/// MXFP4 experts through integer dot products: the weights are repacked at load
/// ([`crate::mxfp4_r16::pack`]) and activations quantized per block by
/// [`crate::mxfp4_r16::quantize_codes`].
pub struct I16Act {
    /// f32 `[T, K]` and the largest code → int16 codes `[T, K]` and scales `[T, K/32]`, bit
    /// for bit [`crate::mxfp4_r16::quantize_codes`].
    pub quantize: fn(&[f32], f32, &mut [i16], &mut [f32]),
    /// The largest code of the activations the MXFP4 experts get: [`crate::mxfp4_r16::Q_MAX`],
    /// or [`crate::mxfp4_r16::Q_MAX_I8`] for sets whose prompt kernels multiply bytes (any
    /// codes give the twin's result; int8-range ones are what makes those kernels fast). The
    /// affine kernels always get the full int16 range.
    pub expert_q_max: f32,
    pub matmul_rows_i16a_mxfp4r16w: MatmulI16aMxfp4r16w,
    /// 4-bit affine weights repacked the same way ([`crate::affine_r16`]), when the set has a
    /// kernel for them (else they stay in rows, read by [`Kernels::matmul_rows_f32_affinew`]).
    pub matmul_rows_i16a_affine4r16w: Option<MatmulI16aAffine4r16w>,
}

/// The signature of [`crate::scalar::matmul_rows_i16a_affine4r16w`].
pub type MatmulI16aAffine4r16w = fn(&[i16], &[f32], usize, &[u8], &[f32], Option<&[f32]>, &mut [f32], &mut Vec<u32>);

pub struct Bf16Act {
    /// 1 (x rounded to bf16) or 2 (x ≈ hi + lo).
    pub terms: usize,
    /// f32 `[n]` → bf16 `[terms, n]`.
    pub split: fn(&[f32], &mut [u16]),
    pub matmul_rows_bf16a_bf16w: MatmulBf16aBf16w,
    /// The same with the weights in the [`crate::bf16_t8`] layout (repacked at load).
    pub matmul_rows_bf16a_bf16t8w: MatmulBf16aBf16w,
    pub matmul_rows_bf16a_mxfp4w: MatmulBf16aMxfp4w,
    pub matmul_rows_bf16a_q8w: MatmulBf16aQ8w,
}

pub struct Kernels {
    pub isa: Isa,
    pub matmul_rows_f32_bf16w: MatmulBf16,
    pub matmul_rows_f32_mxfp4w: MatmulMxfp4,
    /// Affine weights (MLX checkpoints).
    pub matmul_rows_f32_affinew: MatmulAffine,
    /// f32 weights (f16 layers of W4A16 checkpoints, widened at load).
    pub matmul_rows_f32_f32w: MatmulF32,
    /// `--dense q8`; the scalar twin in the x86 tables (q8 is fast there through [`Bf16Act`]).
    pub matmul_rows_f32_q8w: MatmulQ8,
    pub attend_heads_f32: AttendHeads,
    /// The clamped SwiGLU over interleaved (gate, up) pairs (the signature of
    /// [`crate::scalar::swiglu_interleaved_f32`]).
    pub swiglu_interleaved_f32: fn(&[f32], f32, f32, &mut [f32]),
    /// [`crate::scalar::rmsnorm_f32`] and [`crate::scalar::YarnRope::apply`], bit for bit.
    pub rmsnorm_f32: fn(&[f32], &[f32], f32, &mut [f32]),
    pub rope_apply_f32: fn(&mut [f32], &[f32], &[f32]),
    /// When set, the linear layers use these instead of the f32 matmuls.
    pub bf16_act: Option<Bf16Act>,
    /// When set, MXFP4 experts are repacked at load and use these instead.
    pub i16_act: Option<I16Act>,
    /// When set, a prompt's bf16 matmuls pack the activations once per call with these and
    /// hand the packing to every task, instead of [`Kernels::matmul_rows_f32_bf16w`] packing
    /// them again for each task's rows.
    pub packed_f32_bf16w: Option<PackedF32Bf16w>,
}

/// `(x, packed x, T, K, w, bias, out)`.
pub type MatmulBf16Packed = fn(&[f32], &[f32], usize, usize, &[u16], Option<&[f32]>, &mut [f32]);

/// See [`Kernels::packed_f32_bf16w`].
pub struct PackedF32Bf16w {
    /// x `[T, K]`, T and K → the layout the matmul reads.
    pub pack: fn(&[f32], usize, usize, &mut Vec<f32>),
    /// `(x, packed x, T, K, w, bias, out)`: [`Kernels::matmul_rows_f32_bf16w`]'s result, bit for bit.
    pub matmul_rows_f32_bf16w_packed: MatmulBf16Packed,
}

/// The most `Vec` scratch any matmul grows its scratch to for K inputs: `(u32 words,
/// bf16 halves)`. Callers that keep one scratch per thread reserve this up front, so no
/// kernel call ever allocates.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_variables))]
pub fn max_scratch_len(k: usize) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    return (
        crate::x86::vnni::scratch_words(k).max(crate::x86::avx2_i16::scratch_words(k)),
        crate::x86::avx512bf16::scratch_halves(k),
    );
    #[cfg(target_arch = "aarch64")]
    return (
        crate::arm::neon_i16::scratch_words(k).max(crate::arm::neon_i8mm::scratch_words(k)),
        crate::arm::neon_bf16::scratch_halves(k),
    );
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return (0, 0);
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KernelError {
    #[error(
        "GPTOSS_KERNELS={0:?} is not one of scalar, avx2, avx2-int8, avx-vnni, avx-vnni-int8, avx512, avx512vnni, avx512bf16, avx512bf16-round, neon, neon-dotprod, neon-i8mm, neon-bf16"
    )]
    Unknown(String),
    #[error("GPTOSS_KERNELS={0}: this CPU does not support it")]
    Unsupported(&'static str),
}

static SCALAR: Kernels = Kernels {
    isa: Isa::Scalar,
    packed_f32_bf16w: None,
    matmul_rows_f32_bf16w: crate::scalar::matmul_rows_f32_bf16w,
    matmul_rows_f32_mxfp4w: crate::scalar::matmul_rows_f32_mxfp4w,
    matmul_rows_f32_affinew: crate::scalar::matmul_rows_f32_affinew,
    matmul_rows_f32_f32w: crate::scalar::matmul_rows_f32_f32w,
    matmul_rows_f32_q8w: crate::scalar::matmul_rows_f32_q8w,
    attend_heads_f32: crate::scalar::attend_heads_f32,
    swiglu_interleaved_f32: crate::scalar::swiglu_interleaved_f32,
    rmsnorm_f32: crate::scalar::rmsnorm_f32,
    rope_apply_f32: crate::scalar::YarnRope::apply,
    bf16_act: None,
    i16_act: None,
};
/// The AVX2 dense matmul's activation packing (also the `avx512` sets' dense matmul).
#[cfg(target_arch = "x86_64")]
const AVX2_PACKED: Option<PackedF32Bf16w> = Some(PackedF32Bf16w {
    pack: crate::x86::avx2::pack_f32_for_bf16w,
    matmul_rows_f32_bf16w_packed: crate::x86::avx2::matmul_rows_f32_bf16w_packed,
});
#[cfg(target_arch = "x86_64")]
const AVX512_PACKED: Option<PackedF32Bf16w> = Some(PackedF32Bf16w {
    pack: crate::x86::avx512_dense::pack_f32_for_bf16w,
    matmul_rows_f32_bf16w_packed: crate::x86::avx512_dense::matmul_rows_f32_bf16w_packed,
});
/// The AVX2 set, also the base of [`AVX_VNNI`].
#[cfg(target_arch = "x86_64")]
const AVX2_SET: Kernels = Kernels {
    isa: Isa::Avx2,
    packed_f32_bf16w: AVX2_PACKED,
    matmul_rows_f32_bf16w: crate::x86::avx2::matmul_rows_f32_bf16w,
    matmul_rows_f32_mxfp4w: crate::x86::avx2::matmul_rows_f32_mxfp4w,
    matmul_rows_f32_affinew: crate::x86::avx2::matmul_rows_f32_affinew,
    matmul_rows_f32_f32w: crate::x86::avx2::matmul_rows_f32_f32w,
    matmul_rows_f32_q8w: crate::scalar::matmul_rows_f32_q8w,
    attend_heads_f32: crate::x86::attention_avx2::attend_heads_f32,
    swiglu_interleaved_f32: crate::x86::avx2::swiglu_interleaved_f32,
    rmsnorm_f32: crate::scalar::rmsnorm_f32,
    rope_apply_f32: crate::scalar::YarnRope::apply,
    bf16_act: None,
    // MXFP4 experts through vpmaddwd on int16 activations: the f32 path widens every code
    // and is bound by arithmetic, not by memory.
    i16_act: Some(I16Act {
        quantize: crate::x86::avx2_i16::quantize_codes,
        expert_q_max: crate::mxfp4_r16::Q_MAX,
        matmul_rows_i16a_mxfp4r16w: crate::x86::avx2_i16::matmul_rows_i16a_mxfp4r16w::<false>,
        matmul_rows_i16a_affine4r16w: Some(crate::x86::avx2_i16::matmul_rows_i16a_affine4r16w::<false>),
    }),
};
#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = AVX2_SET;
#[cfg(target_arch = "x86_64")]
static AVX_VNNI: Kernels = Kernels {
    isa: Isa::AvxVnni,
    i16_act: Some(I16Act {
        quantize: crate::x86::avx2_i16::quantize_codes,
        expert_q_max: crate::mxfp4_r16::Q_MAX,
        matmul_rows_i16a_mxfp4r16w: crate::x86::avx2_i16::matmul_rows_i16a_mxfp4r16w::<true>,
        matmul_rows_i16a_affine4r16w: Some(crate::x86::avx2_i16::matmul_rows_i16a_affine4r16w::<true>),
    }),
    ..AVX2_SET
};
/// [`AVX2`] with int8-range activations for the MXFP4 experts: prompts through byte
/// products ([`crate::x86::avx2_i8`]), one token as before (memory-bound either way).
#[cfg(target_arch = "x86_64")]
static AVX2_INT8: Kernels = Kernels {
    isa: Isa::Avx2Int8,
    i16_act: Some(I16Act {
        quantize: crate::x86::avx2_i16::quantize_codes,
        expert_q_max: crate::mxfp4_r16::Q_MAX_I8,
        matmul_rows_i16a_mxfp4r16w: crate::x86::avx2_i8::matmul_rows_i16a_mxfp4r16w::<false>,
        matmul_rows_i16a_affine4r16w: Some(crate::x86::avx2_i16::matmul_rows_i16a_affine4r16w::<false>),
    }),
    ..AVX2_SET
};
/// [`AVX_VNNI`] the same way, with `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
static AVX_VNNI_INT8: Kernels = Kernels {
    isa: Isa::AvxVnniInt8,
    i16_act: Some(I16Act {
        quantize: crate::x86::avx2_i16::quantize_codes,
        expert_q_max: crate::mxfp4_r16::Q_MAX_I8,
        matmul_rows_i16a_mxfp4r16w: crate::x86::avx2_i8::matmul_rows_i16a_mxfp4r16w::<true>,
        matmul_rows_i16a_affine4r16w: Some(crate::x86::avx2_i16::matmul_rows_i16a_affine4r16w::<true>),
    }),
    ..AVX2_SET
};
/// The AVX-512 set, also the base of [`AVX512_VNNI`].
#[cfg(target_arch = "x86_64")]
const AVX512_SET: Kernels = Kernels {
    isa: Isa::Avx512,
    // One token through the AVX2 dense kernel (prefetched rows; the 512-bit row kernel is
    // not), prompts through 512-bit register tiles that give its bits.
    packed_f32_bf16w: AVX512_PACKED,
    matmul_rows_f32_bf16w: crate::x86::avx512_dense::matmul_rows_f32_bf16w,
    matmul_rows_f32_mxfp4w: crate::x86::avx512::matmul_rows_f32_mxfp4w,
    matmul_rows_f32_affinew: crate::x86::avx512::matmul_rows_f32_affinew,
    matmul_rows_f32_f32w: crate::x86::avx512::matmul_rows_f32_f32w,
    matmul_rows_f32_q8w: crate::scalar::matmul_rows_f32_q8w,
    attend_heads_f32: crate::x86::attention::attend_heads_f32,
    swiglu_interleaved_f32: crate::x86::avx512::swiglu_interleaved_f32,
    rmsnorm_f32: crate::x86::avx512::rmsnorm_f32,
    rope_apply_f32: crate::x86::avx512::rope_apply_f32,
    bf16_act: None,
    // MXFP4 experts through the AVX2 integer kernels (every AVX-512 CPU has AVX2): the f32
    // path widens every code and decodes a third as fast (Skylake-X, Cascade Lake).
    i16_act: Some(I16Act {
        quantize: crate::x86::avx2_i16::quantize_codes,
        expert_q_max: crate::mxfp4_r16::Q_MAX,
        matmul_rows_i16a_mxfp4r16w: crate::x86::avx2_i16::matmul_rows_i16a_mxfp4r16w::<false>,
        matmul_rows_i16a_affine4r16w: Some(crate::x86::avx2_i16::matmul_rows_i16a_affine4r16w::<false>),
    }),
};
#[cfg(target_arch = "x86_64")]
static AVX512: Kernels = AVX512_SET;
#[cfg(target_arch = "x86_64")]
static AVX512_VNNI: Kernels = Kernels {
    isa: Isa::Avx512Vnni,
    i16_act: Some(I16Act {
        quantize: crate::x86::vnni::quantize_codes,
        expert_q_max: crate::mxfp4_r16::Q_MAX,
        matmul_rows_i16a_mxfp4r16w: crate::x86::vnni::matmul_rows_i16a_mxfp4r16w,
        matmul_rows_i16a_affine4r16w: Some(crate::x86::vnni::matmul_rows_i16a_affine4r16w),
    }),
    ..AVX512_SET
};
#[cfg(target_arch = "x86_64")]
static AVX512_BF16: Kernels = Kernels {
    isa: Isa::Avx512Bf16,
    packed_f32_bf16w: None,
    matmul_rows_f32_bf16w: crate::x86::avx512::matmul_rows_f32_bf16w,
    matmul_rows_f32_mxfp4w: crate::x86::avx512::matmul_rows_f32_mxfp4w,
    matmul_rows_f32_affinew: crate::x86::avx512::matmul_rows_f32_affinew,
    matmul_rows_f32_f32w: crate::x86::avx512::matmul_rows_f32_f32w,
    matmul_rows_f32_q8w: crate::scalar::matmul_rows_f32_q8w,
    attend_heads_f32: crate::x86::attention::attend_heads_f32,
    swiglu_interleaved_f32: crate::x86::avx512::swiglu_interleaved_f32,
    rmsnorm_f32: crate::x86::avx512::rmsnorm_f32,
    rope_apply_f32: crate::x86::avx512::rope_apply_f32,
    bf16_act: Some(Bf16Act {
        terms: 2,
        split: crate::x86::avx512bf16::split_to_bf16::<2>,
        matmul_rows_bf16a_bf16w: crate::x86::avx512bf16::matmul_rows_bf16a_bf16w::<2>,
        matmul_rows_bf16a_bf16t8w: crate::x86::avx512bf16::matmul_rows_bf16a_bf16t8w::<2>,
        matmul_rows_bf16a_mxfp4w: crate::x86::avx512bf16::matmul_rows_bf16a_mxfp4w::<2>,
        matmul_rows_bf16a_q8w: crate::x86::avx512bf16::matmul_rows_bf16a_q8w::<2>,
    }),
    i16_act: Some(I16Act {
        quantize: crate::x86::vnni::quantize_codes,
        expert_q_max: crate::mxfp4_r16::Q_MAX,
        matmul_rows_i16a_mxfp4r16w: crate::x86::vnni::matmul_rows_i16a_mxfp4r16w,
        matmul_rows_i16a_affine4r16w: Some(crate::x86::vnni::matmul_rows_i16a_affine4r16w),
    }),
};
#[cfg(target_arch = "x86_64")]
static AVX512_BF16_ROUND: Kernels = Kernels {
    isa: Isa::Avx512Bf16Round,
    packed_f32_bf16w: None,
    matmul_rows_f32_bf16w: crate::x86::avx512::matmul_rows_f32_bf16w,
    matmul_rows_f32_mxfp4w: crate::x86::avx512::matmul_rows_f32_mxfp4w,
    matmul_rows_f32_affinew: crate::x86::avx512::matmul_rows_f32_affinew,
    matmul_rows_f32_f32w: crate::x86::avx512::matmul_rows_f32_f32w,
    matmul_rows_f32_q8w: crate::scalar::matmul_rows_f32_q8w,
    attend_heads_f32: crate::x86::attention::attend_heads_f32,
    swiglu_interleaved_f32: crate::x86::avx512::swiglu_interleaved_f32,
    rmsnorm_f32: crate::x86::avx512::rmsnorm_f32,
    rope_apply_f32: crate::x86::avx512::rope_apply_f32,
    bf16_act: Some(Bf16Act {
        terms: 1,
        split: crate::x86::avx512bf16::split_to_bf16::<1>,
        matmul_rows_bf16a_bf16w: crate::x86::avx512bf16::matmul_rows_bf16a_bf16w::<1>,
        matmul_rows_bf16a_bf16t8w: crate::x86::avx512bf16::matmul_rows_bf16a_bf16t8w::<1>,
        matmul_rows_bf16a_mxfp4w: crate::x86::avx512bf16::matmul_rows_bf16a_mxfp4w::<1>,
        matmul_rows_bf16a_q8w: crate::x86::avx512bf16::matmul_rows_bf16a_q8w::<1>,
    }),
    i16_act: None,
};

/// The NEON set, also the base of [`NEON_DOTPROD`].
#[cfg(target_arch = "aarch64")]
const NEON_SET: Kernels = Kernels {
    isa: Isa::Neon,
    packed_f32_bf16w: None,
    matmul_rows_f32_bf16w: crate::arm::neon::matmul_rows_f32_bf16w,
    matmul_rows_f32_mxfp4w: crate::arm::neon::matmul_rows_f32_mxfp4w,
    matmul_rows_f32_affinew: crate::arm::neon::matmul_rows_f32_affinew,
    matmul_rows_f32_f32w: crate::scalar::matmul_rows_f32_f32w,
    matmul_rows_f32_q8w: crate::arm::neon::matmul_rows_f32_q8w,
    attend_heads_f32: crate::arm::neon::attend_heads_f32,
    // Elementwise and per-token work stays on the scalar twins for now.
    swiglu_interleaved_f32: crate::scalar::swiglu_interleaved_f32,
    rmsnorm_f32: crate::scalar::rmsnorm_f32,
    rope_apply_f32: crate::scalar::YarnRope::apply,
    bf16_act: None,
    i16_act: None,
};
#[cfg(target_arch = "aarch64")]
static NEON_DOTPROD: Kernels = Kernels {
    isa: Isa::NeonDotprod,
    // MXFP4 experts through sdot on int16 activations; quantizing is a small part of a
    // matmul, so it stays on the twin.
    i16_act: Some(I16Act {
        quantize: crate::mxfp4_r16::quantize_codes,
        expert_q_max: crate::mxfp4_r16::Q_MAX,
        matmul_rows_i16a_mxfp4r16w: crate::arm::neon_i16::matmul_rows_i16a_mxfp4r16w,
        matmul_rows_i16a_affine4r16w: Some(crate::arm::neon_i16::matmul_rows_i16a_affine4r16w),
    }),
    ..NEON_SET
};
/// The `neon-i8mm` set, also the base of [`NEON_BF16`].
#[cfg(target_arch = "aarch64")]
const NEON_I8MM_SET: Kernels = Kernels {
    isa: Isa::NeonI8mm,
    i16_act: Some(I16Act {
        quantize: crate::mxfp4_r16::quantize_codes,
        expert_q_max: crate::mxfp4_r16::Q_MAX,
        matmul_rows_i16a_mxfp4r16w: crate::arm::neon_i8mm::matmul_rows_i16a_mxfp4r16w,
        matmul_rows_i16a_affine4r16w: Some(crate::arm::neon_i8mm::matmul_rows_i16a_affine4r16w),
    }),
    ..NEON_SET
};
#[cfg(target_arch = "aarch64")]
static NEON_I8MM: Kernels = NEON_I8MM_SET;
#[cfg(target_arch = "aarch64")]
static NEON_BF16: Kernels = Kernels {
    isa: Isa::NeonBf16,
    bf16_act: Some(Bf16Act {
        terms: 2,
        split: crate::arm::neon_bf16::split_to_bf16::<2>,
        matmul_rows_bf16a_bf16w: crate::arm::neon_bf16::matmul_rows_bf16a_bf16w::<2>,
        matmul_rows_bf16a_bf16t8w: crate::arm::neon_bf16::matmul_rows_bf16a_bf16t8w::<2>,
        matmul_rows_bf16a_mxfp4w: crate::arm::neon_bf16::matmul_rows_bf16a_mxfp4w::<2>,
        matmul_rows_bf16a_q8w: crate::arm::neon_bf16::matmul_rows_bf16a_q8w::<2>,
    }),
    ..NEON_I8MM_SET
};
#[cfg(target_arch = "aarch64")]
static NEON: Kernels = NEON_SET;

impl Kernels {
    /// The float32 reference kernels.
    pub fn scalar() -> &'static Kernels {
        &SCALAR
    }

    /// The kernels for an instruction set, if this CPU has it.
    pub fn for_isa(isa: Isa) -> Option<&'static Kernels> {
        if !isa.supported() {
            return None;
        }
        match isa {
            Isa::Scalar => Some(&SCALAR),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(&AVX2),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => Some(&AVX_VNNI),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Int8 => Some(&AVX2_INT8),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnniInt8 => Some(&AVX_VNNI_INT8),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Some(&AVX512),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Some(&AVX512_VNNI),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => Some(&AVX512_BF16),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16Round => Some(&AVX512_BF16_ROUND),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Some(&NEON),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDotprod => Some(&NEON_DOTPROD),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonI8mm => Some(&NEON_I8MM),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonBf16 => Some(&NEON_BF16),
            // Unreachable: `supported` is false for the other architectures' sets.
            _ => None,
        }
    }

    /// The fastest this CPU supports.
    pub fn detect() -> &'static Kernels {
        Isa::FAST.into_iter().filter(|isa| isa.picked_by_itself()).find_map(Kernels::for_isa).unwrap_or(&SCALAR)
    }

    /// `scalar`, `avx2`, `avx2-int8`, `avx-vnni`, `avx-vnni-int8`, `avx512`, `avx512vnni`, `avx512bf16`, `avx512bf16-round`, `neon`,
    /// `neon-dotprod`, `neon-i8mm` or `neon-bf16`; a set this CPU
    /// cannot run (`neon` on x86-64, the x86 sets on AArch64) is [`KernelError::Unsupported`].
    pub fn by_name(name: &str) -> Result<&'static Kernels, KernelError> {
        let isa = match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Isa::Scalar,
            "avx2" => Isa::Avx2,
            "avx-vnni" | "avxvnni" => Isa::AvxVnni,
            "avx2-int8" => Isa::Avx2Int8,
            "avx-vnni-int8" | "avxvnni-int8" => Isa::AvxVnniInt8,
            "avx512" => Isa::Avx512,
            "avx512vnni" => Isa::Avx512Vnni,
            "avx512bf16" => Isa::Avx512Bf16,
            "avx512bf16-round" => Isa::Avx512Bf16Round,
            "neon" => Isa::Neon,
            "neon-dotprod" => Isa::NeonDotprod,
            "neon-i8mm" => Isa::NeonI8mm,
            "neon-bf16" => Isa::NeonBf16,
            other => return Err(KernelError::Unknown(other.to_string())),
        };
        Kernels::for_isa(isa).ok_or(KernelError::Unsupported(isa.name()))
    }

    /// `GPTOSS_KERNELS` if set, else the fastest supported; decided once per process.
    pub fn from_env() -> Result<&'static Kernels, KernelError> {
        static CHOSEN: OnceLock<Result<&'static Kernels, KernelError>> = OnceLock::new();
        CHOSEN
            .get_or_init(|| match std::env::var("GPTOSS_KERNELS") {
                Ok(name) if !name.is_empty() => Kernels::by_name(&name),
                _ => Ok(Kernels::detect()),
            })
            .clone()
    }
}

impl Clone for KernelError {
    fn clone(&self) -> Self {
        match self {
            KernelError::Unknown(s) => KernelError::Unknown(s.clone()),
            KernelError::Unsupported(s) => KernelError::Unsupported(s),
        }
    }
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.isa.name())
    }
}

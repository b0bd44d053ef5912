//! Which kernels run: picked once from the CPU's features, or forced with
//! `GPTOSS_KERNELS=scalar|avx2|avx512|neon` to test and compare. Call sites go through
//! [`Kernels`] and never name an instruction set.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// `y[R, T] = W[R, K]·x[T, K]ᵀ + b` over a block of bf16 weight rows (the signature of
/// [`crate::scalar::matmul_rows_f32_bf16w`]; `row_buf` is `[K]` scratch).
pub type MatmulBf16 = fn(&[f32], usize, &[u16], Option<&[f32]>, &mut [f32], &mut [f32]);

/// The same with MXFP4 weights: codes `[R, K/2]`, scales `[R, K/32]` (the signature of
/// [`crate::scalar::matmul_rows_f32_mxfp4w`]).
pub type MatmulMxfp4 = fn(&[f32], usize, &[u8], &[u8], Option<&[f32]>, &mut [f32], &mut [f32]);

pub struct Kernels {
    pub isa: Isa,
    pub matmul_rows_f32_bf16w: MatmulBf16,
    pub matmul_rows_f32_mxfp4w: MatmulMxfp4,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KernelError {
    #[error("GPTOSS_KERNELS={0:?} is not one of scalar, avx2, avx512, neon")]
    Unknown(String),
    #[error("GPTOSS_KERNELS={0}: this CPU does not support it")]
    Unsupported(&'static str),
}

static SCALAR: Kernels = Kernels {
    isa: Isa::Scalar,
    matmul_rows_f32_bf16w: crate::scalar::matmul_rows_f32_bf16w,
    matmul_rows_f32_mxfp4w: crate::scalar::matmul_rows_f32_mxfp4w,
};
#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = Kernels {
    isa: Isa::Avx2,
    matmul_rows_f32_bf16w: crate::x86::avx2::matmul_rows_f32_bf16w,
    matmul_rows_f32_mxfp4w: crate::x86::avx2::matmul_rows_f32_mxfp4w,
};
#[cfg(target_arch = "x86_64")]
static AVX512: Kernels = Kernels {
    isa: Isa::Avx512,
    matmul_rows_f32_bf16w: crate::x86::avx512::matmul_rows_f32_bf16w,
    matmul_rows_f32_mxfp4w: crate::x86::avx512::matmul_rows_f32_mxfp4w,
};

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
            Isa::Avx512 => Some(&AVX512),
            #[cfg(not(target_arch = "x86_64"))]
            _ => None,
        }
    }

    /// The fastest this CPU supports.
    pub fn detect() -> &'static Kernels {
        [Isa::Avx512, Isa::Avx2].into_iter().find_map(Kernels::for_isa).unwrap_or(&SCALAR)
    }

    /// `scalar`, `avx2`, `avx512` or `neon` (not built yet, so never supported).
    pub fn by_name(name: &str) -> Result<&'static Kernels, KernelError> {
        let isa = match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Isa::Scalar,
            "avx2" => Isa::Avx2,
            "avx512" => Isa::Avx512,
            "neon" => return Err(KernelError::Unsupported("neon")),
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

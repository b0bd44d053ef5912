//! AArch64 kernels. Each is reached only through [`crate::dispatch::Kernels`], which hands it
//! out after checking that the CPU has the features it was compiled for (NEON is part of the
//! AArch64 baseline, so in practice always).

pub mod neon;
pub mod neon_bf16;
pub mod neon_i16;
pub mod neon_i8mm;

//! x86-64 kernels. Each is reached only through [`crate::dispatch::Kernels`], which hands it
//! out after checking that the CPU has the features it was compiled for.

pub mod attention;
pub mod avx2;
pub mod avx2_i16;
pub mod avx512;
pub mod avx512bf16;
pub mod vnni;

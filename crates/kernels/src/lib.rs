//! Pure compute for gpt-oss: no I/O, no threads, no allocation inside the hot loops.
//!
//! `scalar` is the numerical truth, written for clarity; faster variants live beside it
//! and are tested against it. Names carry dtypes (`_f32_bf16w`: f32 activations, bf16
//! weights) and comments carry shapes, outermost first.

// Tests quote the spec's vectors digit for digit.
#![cfg_attr(test, allow(clippy::excessive_precision))]

pub mod affine;
pub mod affine_r16;
#[cfg(target_arch = "aarch64")]
mod arm;
pub mod bf16;
pub mod bf16_t8;
pub mod dispatch;
pub mod mxfp4;
pub mod mxfp4_r16;
pub mod q8;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dispatch::{Isa, KernelError, Kernels};

#[cfg(target_endian = "big")]
compile_error!("gptoss reads little-endian checkpoint data in place; big-endian hosts are not supported");

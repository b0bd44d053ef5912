//! x86-64 kernels. Each is reached only through [`crate::dispatch::Kernels`], which hands it
//! out after checking that the CPU has the features it was compiled for.

pub mod attention;
pub mod attention_avx2;
pub mod avx2;
pub mod avx2_i16;
pub mod avx2_i8;
pub mod avx512;
pub mod avx512_dense;
pub mod avx512bf16;
mod dense_tiles;
pub mod vnni;

use std::sync::OnceLock;

use crate::mxfp4::BLOCK;
use crate::mxfp4_r16::{GROUP, TILE_BYTES};

/// Whether the CPU is Intel's (CPUID vendor "GenuineIntel"). The one-token loops' software
/// prefetch wants other distances and caches on Intel's cores than on AMD's (see
/// [`avx2_i16`] and [`avx512bf16`]); only a Zen 4 and a Sapphire-Rapids-class Xeon were
/// measured, and any other vendor keeps the Zen 4 tuning, which came first.
pub(crate) fn is_intel() -> bool {
    static INTEL: OnceLock<bool> = OnceLock::new();
    *INTEL.get_or_init(|| {
        // SAFETY: every x86-64 CPU has CPUID leaf 0. (`unsafe` for toolchains before the
        // intrinsic became safe to call; MSRV 1.89.)
        #[allow(unused_unsafe)]
        let id = unsafe { std::arch::x86_64::__cpuid(0) };
        // The vendor string is EBX, EDX, ECX, four little-endian bytes each.
        [id.ebx, id.edx, id.ecx]
            == [u32::from_le_bytes(*b"Genu"), u32::from_le_bytes(*b"ineI"), u32::from_le_bytes(*b"ntel")]
    })
}

/// One token through one group of 16 rows: (xq, xs, K, codes, scales, bias, out).
pub(crate) type GemvGroup =
    unsafe fn(*const i16, *const f32, usize, *const u8, *const u8, Option<*const f32>, *mut f32);

/// The pieces of an integer MXFP4 kernel set ([`avx2_i16`], [`vnni`]) that the shared driver
/// [`matmul_rows_i16a`] runs.
#[derive(Clone, Copy)]
pub(crate) struct I16aParts {
    /// One token through one group of 16 rows ([`GemvGroup`]).
    pub gemv_group: GemvGroup,
    /// [`Self::gemv_group`] taking `xs · 0.5` for `xs` (MXFP4, where the weight scale is
    /// `from_bits(s << 23) · 0.5`), called when every block's halving is exact.
    pub gemv_group_halved: Option<GemvGroup>,
    /// Decodes `groups` groups into the panel at `panel` and runs every token through them:
    /// (codes, scales, blocks, groups, panel, xq, xs, n_tok, bias, out).
    #[allow(clippy::type_complexity)]
    pub panel: unsafe fn(
        *const u8,
        *const u8,
        usize,
        usize,
        *mut u32,
        *const i16,
        *const f32,
        usize,
        Option<*const f32>,
        *mut f32,
    ),
    /// Groups per panel, the panel's u32 scratch for K inputs, and its alignment in bytes.
    pub panel_groups: usize,
    pub scratch_words: fn(usize) -> usize,
    pub align: usize,
    /// Bytes per weight scale: 1 (E8M0, MXFP4) or 4 (f32, affine).
    pub scale_bytes: usize,
    /// What the one-token decoder adds to every code ([`avx2_i16::code_offset`]).
    pub code_offset: i32,
}

/// See [`crate::scalar::matmul_rows_i16a_mxfp4r16w`]: one token group by group in
/// registers; several through decoded panels kept in `scratch`.
///
/// # Safety
/// The CPU must have the features `parts`' functions were compiled for.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_rows_i16a(
    parts: &I16aParts,
    xq: &[i16],
    xs: &[f32],
    n_tok: usize,
    codes: &[u8],
    scales: &[u8],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Vec<u32>,
) {
    let k = xq.len() / n_tok.max(1);
    let n_scales = scales.len() / parts.scale_bytes;
    crate::scalar::check_i16a_shapes(xq, xs, n_tok, k, codes.len(), n_scales, bias, out);
    let blocks = k / BLOCK;
    let groups = n_scales / (blocks * GROUP);
    let scale_step = blocks * GROUP * parts.scale_bytes;
    // The shapes were checked above, so every tile, token and output offset is in bounds,
    // and the scratch is sized (and aligned by hand) for one panel.
    if n_tok == 1 {
        for g in 0..groups {
            (parts.gemv_group)(
                xq.as_ptr(),
                xs.as_ptr(),
                k,
                codes.as_ptr().add(g * blocks * TILE_BYTES),
                scales.as_ptr().add(g * scale_step),
                bias.map(|b| b.as_ptr().add(g * GROUP)),
                out.as_mut_ptr().add(g * GROUP),
            );
        }
        return;
    }
    scratch.resize((parts.scratch_words)(k), 0);
    let base = scratch.as_mut_ptr();
    let panel = base.add(base.align_offset(parts.align));
    let mut g = 0;
    while g < groups {
        let pg = (groups - g).min(parts.panel_groups);
        (parts.panel)(
            codes.as_ptr().add(g * blocks * TILE_BYTES),
            scales.as_ptr().add(g * scale_step),
            blocks,
            pg,
            panel,
            xq.as_ptr(),
            xs.as_ptr(),
            n_tok,
            bias.map(|b| b.as_ptr().add(g * GROUP)),
            out.as_mut_ptr().add(g * GROUP * n_tok),
        );
        g += pg;
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// CPUID's vendor is the kernel's `vendor_id` (when /proc is there to ask).
    #[test]
    fn is_intel_agrees_with_proc_cpuinfo() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else { return };
        let Some(vendor) = info.lines().find(|l| l.starts_with("vendor_id")) else { return };
        assert_eq!(super::is_intel(), vendor.contains("GenuineIntel"), "{vendor}");
    }

    /// Where `avx512bf16` runs, it is the default except on Intel's CPUs (`avx512vnni`).
    #[test]
    fn detect_takes_avx512vnni_over_avx512bf16_on_intel() {
        use crate::dispatch::{Isa, Kernels};
        if Isa::Avx512Bf16.supported() {
            let want = if super::is_intel() { Isa::Avx512Vnni } else { Isa::Avx512Bf16 };
            assert_eq!(Kernels::detect().isa, want);
        }
    }
}

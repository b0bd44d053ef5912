//! The kernels the runner launches, as the host sees them: their argument structs
//! (`#[repr(C)]` twins of the CUDA ones), their names and shared memory, and which matmul
//! kernel a pass of `t` tokens takes.

use gptoss_engine::sampler::PickSpec;

use crate::args;
use crate::driver::Gpu;
use crate::CudaError;

/// Alternatives reported per pick at most (OpenAI's top_logprobs limit).
pub const MAX_TOP: usize = 20;

/// `#[repr(C)]` twin of PickSpec in kernels/sample.cuh.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct DevPick {
    temperature: f32,
    top_k: i32,
    top_p: f32,
    min_p: f32,
    u: f64,
    top_n: i32,
    pad: i32,
}

impl From<&PickSpec> for DevPick {
    fn from(p: &PickSpec) -> Self {
        DevPick {
            temperature: p.temperature,
            top_k: p.top_k.min(i32::MAX as usize) as i32,
            top_p: p.top_p,
            min_p: p.min_p,
            u: p.u,
            top_n: p.top_n.min(MAX_TOP) as i32,
            pad: 0,
        }
    }
}

/// Which kernels run the matmuls and attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSet {
    /// Tensor-core matmuls, split-key attention.
    Fast,
    /// One thread per output, f32 products in order: the device's scalar twin.
    Simple,
}

impl KernelSet {
    /// `GPTOSS_CUDA_KERNELS=simple` picks the scalar twins.
    pub fn from_env() -> Self {
        match std::env::var("GPTOSS_CUDA_KERNELS").as_deref() {
            Ok("simple") => KernelSet::Simple,
            _ => KernelSet::Fast,
        }
    }
}

/// `#[repr(C)]` twin of LinearArgs in kernels/linear.cuh.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct LinearArgs {
    pub w: u64,
    pub scales: u64,
    pub w_stride: i64,
    pub s_stride: i64,
    pub bias: u64,
    pub x: u64,
    pub x_rows: u64,
    pub y: u64,
    pub resid: u64,
    pub items: u64,
    pub n_items: u64,
    pub ntiles: i32,
    pub rows: i32,
    pub r: i32,
    pub mt: i32,
    pub k: i32,
    pub kb: i32,
    pub s: i32,
    pub x_stride: i32,
    pub y_stride: i32,
    pub mode: i32,
    pub swiglu_limit: f32,
}

/// `#[repr(C)]` twin of AttnArgs in kernels/attention.cuh.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct AttnArgs {
    pub(super) qkv: u64,
    pub(super) qkv_stride: i32,
    pub(super) kc: u64,
    pub(super) vc: u64,
    pub(super) page_table: u64,
    pub(super) max_pages: i32,
    pub(super) page: i32,
    pub(super) window: i32,
    pub(super) pos: u64,
    pub(super) row_item: u64,
    pub(super) item_slot: u64,
    pub(super) item_start: u64,
    pub(super) item_row0: u64,
    pub(super) item_len: u64,
    pub(super) qblocks: u64,
    pub(super) sinks: u64,
    pub(super) scale: f32,
    pub(super) nq: i32,
    pub(super) nkv: i32,
    pub(super) t: i32,
    pub(super) split_keys: i32,
    pub(super) splits: i32,
    pub(super) part: u64,
    pub(super) out: u64,
}

/// `#[repr(C)]` twin of RouteArgs in kernels/misc.cuh.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct RouteArgs {
    pub logits: u64,
    pub t: i32,
    pub e: i32,
    pub k: i32,
    pub experts: u64,
    pub gates: u64,
    pub prow: u64,
    pub row_src: u64,
    pub items: u64,
    pub counts: u64,
    pub max_rows: i32,
    pub max_items: i32,
    pub item_ntiles: i32,
}

/// Picks and launches the matmul kernel for `t` tokens: the decode kernel up to 64 tokens,
/// the GEMM above, or the scalar twin.
pub(crate) fn launch_linear(
    gpu: &mut Gpu,
    a: &LinearArgs,
    mx: bool,
    t: usize,
    kernels: KernelSet,
    grid_items: usize,
) -> Result<(), CudaError> {
    let a = *a;
    let (mt, slices) = (a.mt as usize, a.s as usize);
    let gi = grid_items.max(1) as u32;
    match kernels {
        KernelSet::Simple => {
            let blocks = (a.r as usize * 64).div_ceil(256).min(4096) as u32;
            let name = if mx { "linear_ref_mxfp4" } else { "linear_ref_bf16" };
            let f = gpu.func(name, 0)?;
            gpu.launch(f, (blocks, gi, 1), 256, 0, &mut args![a])
        }
        KernelSet::Fast if t <= 64 => {
            let nt = t.div_ceil(8).next_power_of_two();
            let mtw = if nt <= 2 { 2 } else { 1 };
            let name = gemv_name(mx, nt);
            let smem = slices * mtw * 16 * nt * 8 * 4;
            let f = gpu.func(name, smem_of(name))?;
            let grid_y = if a.items != 0 { gi } else { 1 };
            gpu.launch(f, (mt.div_ceil(mtw) as u32, grid_y, 1), 32 * slices as u32, smem, &mut args![a])
        }
        KernelSet::Fast => {
            let name = if mx { "gemm_mxfp4" } else { "gemm_bf16" };
            let f = gpu.func(name, smem_of(name))?;
            gpu.launch(f, (mt.div_ceil(4) as u32, gi, 1), 128, smem_of(name), &mut args![a])
        }
    }
}

fn gemv_name(mx: bool, nt: usize) -> &'static str {
    match (mx, nt) {
        (false, 1) => "gemv_bf16_m2_n1",
        (false, 2) => "gemv_bf16_m2_n2",
        (false, 4) => "gemv_bf16_m1_n4",
        (false, _) => "gemv_bf16_m1_n8",
        (true, 1) => "gemv_mxfp4_m2_n1",
        (true, 2) => "gemv_mxfp4_m2_n2",
        (true, 4) => "gemv_mxfp4_m1_n4",
        (true, _) => "gemv_mxfp4_m1_n8",
    }
}

/// Every kernel the runner launches.
pub const KERNELS: [&str; 27] = [
    "pick_tokens",
    "embed_rows",
    "rmsnorm_rows",
    "rope_qk",
    "router_f32",
    "route_tokens",
    "moe_combine",
    "argmax_rows",
    "attention_partial",
    "attention_combine",
    "attention_ref",
    "kv_store",
    "gemv_bf16_m2_n1",
    "gemv_bf16_m2_n2",
    "gemv_bf16_m1_n4",
    "gemv_bf16_m1_n8",
    "gemv_mxfp4_m2_n1",
    "gemv_mxfp4_m2_n2",
    "gemv_mxfp4_m1_n4",
    "gemv_mxfp4_m1_n8",
    "gemm_bf16",
    "gemm_mxfp4",
    "linear_ref_bf16",
    "linear_ref_mxfp4",
    "relayout_frag16",
    "relayout_frag4_codes",
    "probe_read",
];

/// Dynamic shared memory a kernel is launched with at most.
pub fn smem_of(name: &str) -> usize {
    // The GEMM's two stages: (weights + scales + 64 x 72 floats) each.
    const X: usize = 64 * 72 * 4;
    match name {
        "gemm_bf16" => 2 * (4 * 4 * 32 * 16 + 16 + X),
        "gemm_mxfp4" => 2 * (4 * 32 * 16 + 128 + X),
        // The decode kernels: S (<= 8) slices of 16·MTW x 8·NT floats.
        n if n.starts_with("gemv_") => 8 * 16 * 64 * 4,
        _ => 0,
    }
}

//! Where a forward pass spends its time, stage by stage (`gptoss bench --profile`). Off by
//! default: a disabled timer is one relaxed atomic load. Also the read loop the bench's
//! bandwidth probe runs ([`sum_words`]), which the stages' GB/s are set against.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Embedding,
    AttnNorm,
    Qkv,
    Rope,
    Attention,
    AttnOut,
    MlpNorm,
    Router,
    GateUp,
    Swiglu,
    Down,
    MoeSum,
    FinalNorm,
    Unembedding,
}

pub const STAGES: [Stage; 14] = [
    Stage::Embedding,
    Stage::AttnNorm,
    Stage::Qkv,
    Stage::Rope,
    Stage::Attention,
    Stage::AttnOut,
    Stage::MlpNorm,
    Stage::Router,
    Stage::GateUp,
    Stage::Swiglu,
    Stage::Down,
    Stage::MoeSum,
    Stage::FinalNorm,
    Stage::Unembedding,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Embedding => "embedding",
            Stage::AttnNorm => "attn_norm",
            Stage::Qkv => "qkv (dense matmul)",
            Stage::Rope => "rope",
            Stage::Attention => "attention (sinks, window)",
            Stage::AttnOut => "attn_out (dense matmul)",
            Stage::MlpNorm => "mlp_norm",
            Stage::Router => "router (bf16 matmul, top-k)",
            Stage::GateUp => "experts gate_up",
            Stage::Swiglu => "swiglu",
            Stage::Down => "experts down",
            Stage::MoeSum => "moe weighted sum",
            Stage::FinalNorm => "final_norm",
            Stage::Unembedding => "unembedding (dense matmul)",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; STAGES.len()] = [const { AtomicU64::new(0) }; STAGES.len()];

/// Starts or stops collecting, and clears what was collected.
pub fn enable(on: bool) {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
    ENABLED.store(on, Ordering::Relaxed);
}

/// Time spent in each stage since [`enable`].
pub fn totals() -> Vec<(Stage, Duration)> {
    STAGES.iter().zip(&NANOS).map(|(&s, n)| (s, Duration::from_nanos(n.load(Ordering::Relaxed)))).collect()
}

/// Adds the time until it is dropped to `stage`.
pub struct Timer(Option<(Stage, Instant)>);

pub fn time(stage: Stage) -> Timer {
    Timer(ENABLED.load(Ordering::Relaxed).then(|| (stage, Instant::now())))
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((stage, t0)) = self.0 {
            NANOS[stage as usize].fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// Floating-point operations (a multiply-add is two) that one token of a `prompt`-token
/// prompt asks of `stage`, from the model's shapes: the matmuls, and attention's scores and
/// weighted sums over the keys each position sees (all before it, or the window). Logits
/// are computed for the prompt's last token only, so the unembedding is shared by all.
/// Elementwise stages count as 0: they are bound by memory, not arithmetic.
pub fn stage_flops(cfg: &crate::config::ModelConfig, stage: Stage, prompt: usize) -> f64 {
    let (h, i, e, k, v) =
        (cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.experts_per_token, cfg.vocab_size);
    let (qd, kvd, layers) = (cfg.q_dim(), cfg.kv_dim(), cfg.num_layers as f64);
    let prompt = prompt.max(1);
    let matmul = |rows: usize, cols: usize| 2.0 * rows as f64 * cols as f64;
    match stage {
        Stage::Qkv => layers * matmul(qd + 2 * kvd, h),
        Stage::AttnOut => layers * matmul(h, qd),
        Stage::Router => layers * matmul(e, h),
        Stage::GateUp => layers * k as f64 * matmul(2 * i, h),
        Stage::Down => layers * k as f64 * matmul(h, i),
        Stage::Unembedding => matmul(v, h) / prompt as f64,
        Stage::Attention => {
            // Keys seen by position p (0-based): p + 1, capped by a sliding layer's window.
            let keys = |cap: usize| (0..prompt).map(|p| (p + 1).min(cap) as f64).sum::<f64>() / prompt as f64;
            let per_key = 4.0 * (cfg.num_heads * cfg.head_dim) as f64;
            (0..cfg.num_layers).map(|l| per_key * keys(cfg.window(l).unwrap_or(usize::MAX))).sum()
        }
        _ => 0.0,
    }
}

/// The read loop of `gptoss bench`'s bandwidth probe (and of `examples/stream.rs`): the
/// wrapping sum of `words`. Eight independent sums, so the loop is bound by loads rather than
/// by one add chain; each cache line also prefetches the one 4 KiB ahead, as the CPU kernels
/// do (the hardware prefetcher stops at pages): without it the probe read 20.5 GB/s on a
/// Xeon whose prefetched decode streamed 22.5, and generation showed as 110% of "the"
/// bandwidth.
pub fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for (i, c) in words.chunks_exact(8).enumerate() {
        prefetch_read(words.as_ptr().wrapping_add(8 * i + 512));
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(0, |a, &b| a.wrapping_add(b))
}

/// A hint to fetch the cache line at `p` (which may lie past the buffer: a prefetch never
/// faults). Nothing on targets without a stable prefetch intrinsic.
#[inline(always)]
fn prefetch_read(p: *const u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is baseline on x86-64, and a prefetch reads nothing architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

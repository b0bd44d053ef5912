//! Where a forward pass spends its time, stage by stage (`gptoss bench --profile`). Off by
//! default: a disabled timer is one relaxed atomic load.

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
            Stage::GateUp => "experts gate_up (MXFP4)",
            Stage::Swiglu => "swiglu",
            Stage::Down => "experts down (MXFP4)",
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

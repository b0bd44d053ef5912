//! The device check: everything about the CUDA backend that needs a GPU, in one run that
//! prints a table and ends with `N passed, N failed` (run by crates/cuda/tests/device.rs, see
//! the README). Without a GPU it says so and passes.
//!
//! Sections (each can run alone, in its own process, so a fault in one cannot take the
//! others' context with it): `kernels` (every kernel against its host twin on random shapes
//! with ragged tails, batch invariance of the matmuls), `tiny` (the fixture layer by layer
//! against the CPU, parity with OpenAI's reference, greedy tokens, chunking and batch
//! invariance, both kernel sets), `speed` (per-kernel time and GB/s at the 20b and 120b
//! shapes against the measured read bandwidth).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use gptoss_engine::ModelConfig;

use crate::driver::Gpu;
use crate::model::CudaRunner;
use crate::{CudaError, CudaOptions};

mod kernels;
mod speed;
mod tiny;

pub use speed::{decode_rate, prompt_rate};

/// Results of a run.
#[derive(Default)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub lines: Vec<String>,
}

impl Report {
    fn record(&mut self, name: &str, r: Result<String, String>) {
        let line = match &r {
            Ok(detail) => {
                self.passed += 1;
                format!("| {name} | pass | {detail} |")
            }
            Err(why) => {
                self.failed += 1;
                format!("| {name} | **FAIL** | {why} |")
            }
        };
        println!("{line}");
        self.lines.push(line);
    }

    /// Runs `f`, turning panics and errors into failures.
    fn check(&mut self, name: &str, f: impl FnOnce() -> Result<String, String>) {
        let t0 = Instant::now();
        let r = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(p) => Err(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        };
        let r = r.map(|d| format!("{d} ({:.1} s)", t0.elapsed().as_secs_f64()));
        self.record(name, r);
    }
}

fn e2s(e: CudaError) -> String {
    e.to_string()
}

/// What the checks run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// CUDA device 0.
    Cuda,
    /// The CPU emulator (feature `emu`): small shapes only, no speed section.
    #[cfg(feature = "emu")]
    Emulator,
}

impl Target {
    fn gpu(self) -> Result<Gpu, CudaError> {
        match self {
            Target::Cuda => Gpu::open(0),
            #[cfg(feature = "emu")]
            Target::Emulator => Ok(Gpu::emulator()),
        }
    }

    fn runner(self, path: &Path, opts: &CudaOptions) -> Result<CudaRunner, CudaError> {
        match self {
            Target::Cuda => crate::open_runner(path, opts),
            #[cfg(feature = "emu")]
            Target::Emulator => crate::emulator_runner(path, opts.max_context, opts.max_sequences),
        }
    }

    fn emulated(self) -> bool {
        self != Target::Cuda
    }
}

/// The kernel and tiny-model checks on the CPU emulator.
#[cfg(feature = "emu")]
pub fn run_emulated(only: &[String], fixtures: &Path) -> Report {
    let mut rep = Report::default();
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    if want("kernels") {
        kernels::run(&mut rep, Target::Emulator);
    }
    if want("tiny") {
        tiny::run(&mut rep, fixtures, Target::Emulator);
    }
    rep
}

/// Runs the sections named in `only` (all when empty). `fixtures` is the repository's
/// fixtures folder.
pub fn run(only: &[String], fixtures: &Path) -> Report {
    let mut rep = Report::default();
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    println!("| check | result | detail |");
    println!("|---|---|---|");
    let gpus = crate::devices();
    if gpus.is_empty() {
        println!("| device | skipped | no CUDA device: {} |", crate::why_no_devices());
        return rep;
    }
    for g in &gpus {
        println!(
            "| device | info | cuda:{} {} (cc {}.{}), {:.1} of {:.1} GB free |",
            g.ordinal,
            g.name,
            g.compute_capability.0,
            g.compute_capability.1,
            g.free_bytes as f64 / 1e9,
            g.total_bytes as f64 / 1e9
        );
    }
    if want("kernels") {
        kernels::run(&mut rep, Target::Cuda);
    }
    if want("tiny") {
        tiny::run(&mut rep, fixtures, Target::Cuda);
    }
    for (shape, cfg) in [("20b", ModelConfig::gpt_oss_20b()), ("120b", ModelConfig::gpt_oss_120b())] {
        if want("speed") || want(&format!("speed-{shape}")) {
            speed::run(&mut rep, shape, &cfg);
        }
    }
    rep
}

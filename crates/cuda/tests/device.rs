//! The device check (see gptoss_cuda::devcheck): `device [kernels|tiny|speed|speed-20b|
//! speed-120b ...]`. Prints a table and `N passed, N failed`; exits 1 if anything failed.
//! Without a CUDA device it prints why and exits 0, so `cargo test` passes everywhere.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // cargo test passes its own flags (--nocapture, filters starting with '-'); keep names.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let fixtures = std::env::var_os("GPTOSS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"));
    let rep = gptoss_cuda::devcheck::run(&only, &fixtures);
    println!("\n{} passed, {} failed", rep.passed, rep.failed);
    if rep.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

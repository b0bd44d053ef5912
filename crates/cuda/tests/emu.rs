//! The device check's kernel and tiny-model sections on the CPU emulator: the same CUDA
//! sources, compiled for the host (`cargo test -p gptoss-cuda --features emu`).
#![cfg(feature = "emu")]

use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn section(name: &str) {
    let rep = gptoss_cuda::devcheck::run_emulated(&[name.to_string()], &fixtures());
    println!("{} passed, {} failed", rep.passed, rep.failed);
    assert!(rep.failed == 0 && rep.passed > 0, "{}", rep.lines.join("\n"));
}

#[test]
fn kernels_match_their_host_twins() {
    section("kernels");
}

#[test]
fn tiny_model_matches_the_cpu_and_the_reference() {
    section("tiny");
}

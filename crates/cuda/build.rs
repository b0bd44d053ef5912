//! With the `emu` feature, compiles the CUDA kernels for the host (see emu/cuda_emu.h).
fn main() {
    #[cfg(feature = "emu")]
    {
        println!("cargo:rerun-if-changed=emu");
        println!("cargo:rerun-if-changed=kernels");
        let target = std::env::var("TARGET").unwrap_or_default();
        if !target.starts_with("x86_64") || !target.contains("linux") {
            panic!("the `emu` feature runs the kernels on x86-64 Linux only (its fiber switch is x86-64 assembly)");
        }
        cc::Build::new()
            .cpp(true)
            .file("emu/emu.cpp")
            .flag("-std=c++17")
            .flag("-fno-strict-aliasing")
            .flag("-ffp-contract=off")
            .flag("-Wno-unknown-pragmas")
            .flag("-Wno-sign-compare")
            .flag("-Wno-maybe-uninitialized")
            .flag("-Wno-unused-function")
            .opt_level(2)
            .compile("gptoss_cuda_emu");
    }
}

//! The `gptoss` binary end to end on the tiny fixture and synthetic checkpoints.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gptoss_engine::safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The CPU unless a test says otherwise (`--device` beats the variable): the expected
/// outputs are the CPU reference path's.
fn gptoss(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss")).args(args).env("GPTOSS_DEVICE", "cpu").output().expect("runs")
}

fn ok(args: &[&str]) -> (String, String) {
    ok_with_kernels(None, args)
}

/// `GPTOSS_KERNELS` set to `kernels` (the CPU's default when None).
fn ok_with_kernels(kernels: Option<&str>, args: &[&str]) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gptoss"));
    cmd.args(args).env_remove("GPTOSS_KERNELS").env("GPTOSS_DEVICE", "cpu");
    if let Some(k) = kernels {
        cmd.env("GPTOSS_KERNELS", k);
    }
    let out = cmd.output().expect("runs");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "gptoss {args:?} failed:\n{stderr}");
    (stdout, stderr)
}

fn fails(args: &[&str]) -> String {
    let out = gptoss(args);
    assert_eq!(out.status.code(), Some(1), "gptoss {args:?} should exit 1");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn reference_i64(name: &str) -> Vec<i64> {
    let st = SafeTensors::open(&fixtures().join("tiny/reference.safetensors")).unwrap();
    st.bytes(st.get(name).unwrap())
        .as_slice()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn tokens_file(dir: &Path, ids: &[i64]) -> String {
    let path = dir.join("tokens.txt");
    let text: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    std::fs::write(&path, text.join(", ")).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn greedy_generate_reproduces_the_reference_continuation() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = reference_i64("tokens");
    let file = tokens_file(dir.path(), &tokens[..200]);
    let model = fixtures().join("tiny/original");
    let (stdout, _) = ok(&[
        "generate",
        model.to_str().unwrap(),
        "--tokens-file",
        &file,
        "--max-tokens",
        "40",
        "--temperature",
        "0",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let got: Vec<i64> = v["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    assert_eq!(got, reference_i64("greedy_tokens"));
    assert_eq!(v["finish_reason"], "length");
    assert!(v["text"].is_string());
    // Greedy picks the most likely token, so it heads its own top list.
    let model = model.to_str().unwrap();
    let args = ["generate", model, "--tokens-file", &file, "--max-tokens", "3", "--temperature", "0", "--json"];
    let (stdout, _) = ok(&[&args[..], &["--top-logprobs", "5"]].concat());
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for lp in v["logprobs"].as_array().unwrap() {
        let top = lp["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        assert_eq!(top[0][0], lp["token"]);
        assert!((top[0][1].as_f64().unwrap() - lp["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(lp["logprob"].as_f64().unwrap() < 0.0);
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let file = tokens_file(dir.path(), &[1, 2, 3]);
    let model = fixtures().join("tiny/hf");
    let run = |seed: &str| {
        ok(&[
            "generate",
            model.to_str().unwrap(),
            "--tokens-file",
            &file,
            "--max-tokens",
            "30",
            "--seed",
            seed,
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--min-p",
            "0.01",
            "--json",
        ])
        .0
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn perplexity_matches_the_reference_nll() {
    let dir = tempfile::tempdir().unwrap();
    let file = tokens_file(dir.path(), &reference_i64("tokens"));
    let model = fixtures().join("tiny/hf");
    let args = ["perplexity", model.to_str().unwrap(), "--tokens-file", &file, "--json"];
    // The reference kernels to 1e-4; the CPU's default (fast) kernels to the 0.01 bar.
    let (fast, _) = ok(&args);
    let (stdout, _) = ok_with_kernels(Some("scalar"), &args);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let nll: Vec<f64> = v["nll"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let fast: serde_json::Value = serde_json::from_str(fast.trim()).unwrap();
    let fast_nll: Vec<f64> = fast["nll"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let st = SafeTensors::open(&fixtures().join("tiny/reference.safetensors")).unwrap();
    let want: Vec<f64> = st
        .bytes(st.get("next_token_nll").unwrap())
        .as_slice()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(nll.len(), want.len());
    let max = nll.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(max < 1e-4, "max NLL difference {max}");
    let fast_max = fast_nll.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(fast_nll.len() == want.len() && fast_max < 0.01, "default kernels: max NLL difference {fast_max}");
    let mean = want.iter().sum::<f64>() / want.len() as f64;
    assert!((v["perplexity"].as_f64().unwrap() / mean.exp() - 1.0).abs() < 1e-4);
    // Independent windows of 100 tokens score 3 × 99 next tokens.
    let (stdout, _) = ok_with_kernels(
        Some("scalar"),
        &["perplexity", model.to_str().unwrap(), "--tokens-file", &file, "--json", "--ctx", "100"],
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["nll"].as_array().unwrap().len(), 297);
}

#[test]
fn inspect_reports_layout_and_counts() {
    let (stdout, _) = ok(&["inspect", fixtures().join("tiny/hf").to_str().unwrap()]);
    assert!(stdout.contains("Hugging Face layout") && stdout.contains("all present"), "{stdout}");
    let (stdout, _) = ok(&["inspect", fixtures().join("tiny/original").to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["layout"], "OpenAI original");
    assert_eq!(v["config"]["num_experts"], 8);
    assert!(v["params_total"].as_u64().unwrap() > v["params_active"].as_u64().unwrap());
}

/// A llama.cpp GGUF file goes wherever a folder does, with the same results.
#[test]
fn gguf_file_works_like_the_hf_folder() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = fixtures().join("tiny/gguf/tiny-mxfp4.gguf");
    let (gguf, hf) = (gguf.to_str().unwrap(), fixtures().join("tiny/hf"));
    let hf = hf.to_str().unwrap();
    let tokens = reference_i64("tokens");
    let file = tokens_file(dir.path(), &tokens[..200]);
    let args = ["--tokens-file", &file, "--max-tokens", "40", "--temperature", "0", "--json"];
    let (stdout, stderr) = ok(&[&["generate", gguf][..], &args].concat());
    assert!(stderr.contains("llama.cpp GGUF layout"), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let got: Vec<i64> = v["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    assert_eq!(got, reference_i64("greedy_tokens"));

    let file = tokens_file(dir.path(), &tokens);
    let nll = |model: &str| {
        let (stdout, _) = ok(&["perplexity", model, "--tokens-file", &file, "--json"]);
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()["nll"].clone()
    };
    assert_eq!(nll(gguf), nll(hf));

    let (stdout, _) = ok(&["inspect", gguf]);
    for want in ["llama.cpp GGUF layout", "version 3", "MXFP4 x12", "BF16 x18", "all present", "exactly as stored"] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    let (stdout, _) = ok(&["inspect", gguf, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (&v["layout"], &v["gguf"]["version"], &v["complete"]),
        (&"llama.cpp GGUF".into(), &3.into(), &true.into())
    );
    assert_eq!(v["gguf"]["tensor_types"]["MXFP4"], 12);
    assert_eq!(v["config"]["vocab_size"], 1024);

    // A truncated copy: every command names the file, the tensor and the file length.
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(gguf).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let cut = cut.to_str().unwrap();
    for args in [vec!["inspect", cut], vec!["generate", cut, "--prompt", "hi"]] {
        let stderr = fails(&args);
        assert!(stderr.contains("cut.gguf") && stderr.contains("truncated") && stderr.contains("tensor `"), "{stderr}");
    }
}

#[test]
fn broken_checkpoint_exits_1_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("tiny/hf")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let shard = dir.path().join("model-00001-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&shard).unwrap().set_len(len / 2).unwrap();
    let model = dir.path().to_str().unwrap();
    for args in [
        vec!["inspect", model],
        vec!["generate", model, "--prompt", "hi"],
        vec!["perplexity", model, "--file", "Cargo.toml"],
    ] {
        let stderr = fails(&args);
        assert!(
            stderr.contains("model-00001-of-00002.safetensors")
                && stderr.contains("truncated")
                && stderr.contains("tensor `"),
            "{stderr}"
        );
    }
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("tiny/hf");
    let model = model.to_str().unwrap();
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "1 2 three 4").unwrap();
    assert!(fails(&["generate", model, "--tokens-file", bad.to_str().unwrap()])
        .contains("entry 3 (`three`) is not a token id"));
    std::fs::write(&bad, "5000").unwrap();
    assert!(fails(&["generate", model, "--tokens-file", bad.to_str().unwrap()])
        .contains("outside the model's vocabulary of 1024"));
    // An out-of-vocabulary id right after the first 512-token chunk.
    std::fs::write(&bad, format!("{} 5000", "0 ".repeat(512))).unwrap();
    assert!(fails(&["perplexity", model, "--tokens-file", bad.to_str().unwrap()]).contains("token id 5000 is outside"));
    assert!(fails(&["generate", model, "--prompt", "x", "--max-tokens", "18446744073709551615"])
        .contains("exceeds the model's context"));
    std::fs::write(&bad, "").unwrap();
    assert!(fails(&["generate", model, "--tokens-file", bad.to_str().unwrap()]).contains("prompt is empty"));
    // A value out of range is a usage error (exit 2), caught before the model loads.
    let out = gptoss(&["generate", model, "--prompt", "x", "--top-p", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--top-p"));
    assert!(
        fails(&["generate", model, "--prompt", "x", "--max-tokens", "200000"]).contains("exceeds the model's context")
    );
    assert!(fails(&["generate", "/no/such/model", "--prompt", "x"]).contains("/no/such/model"));
}

#[test]
fn synth_tiny_runs_end_to_end_with_the_real_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    for layout in ["hf", "original"] {
        let out = dir.path().join(layout);
        let out_s = out.to_str().unwrap();
        ok(&["synth", "--shape", "tiny", "--layout", layout, "--out", out_s, "--seed", "1"]);
        let (stdout, _) = ok(&["inspect", out_s, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["config"]["vocab_size"], 201088);
        assert_eq!(v["complete"], true);
        let (stdout, _) = ok(&[
            "generate",
            out_s,
            "--prompt",
            "Hello <|start|> world",
            "--max-tokens",
            "8",
            "--seed",
            "3",
            "--ignore-eos",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["tokens"].as_array().unwrap().len(), 8);
        assert!(fails(&["synth", "--shape", "tiny", "--out", out_s]).contains("--force"));
    }
}

/// Whether this machine has a GPU the CUDA backend sees (the device tests below are for one
/// without).
fn has_gpu() -> bool {
    !gptoss_cuda::devices().is_empty()
}

#[test]
fn device_cpu_runs_the_reference_path_and_auto_says_what_it_picked() {
    let dir = tempfile::tempdir().unwrap();
    let file = tokens_file(dir.path(), &reference_i64("tokens")[..200]);
    let model = fixtures().join("tiny/hf");
    let args = ["generate", model.to_str().unwrap(), "--tokens-file", &file, "--max-tokens", "8", "--temperature", "0"];
    let (cpu, cpu_err) = ok(&[&["--device", "cpu"], &args[..], &["--json"]].concat());
    let v: serde_json::Value = serde_json::from_str(cpu.trim()).unwrap();
    let got: Vec<i64> = v["tokens"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    assert_eq!(got, reference_i64("greedy_tokens")[..8]);
    // An explicit cpu says nothing about devices: the output is as before there was a choice.
    assert!(!cpu_err.contains("device:"), "{cpu_err}");

    let (auto, auto_err) = ok(&[&["--device", "auto"], &args[..], &["--json"]].concat());
    let line = auto_err.lines().find(|l| l.starts_with("device: ")).unwrap_or_else(|| panic!("{auto_err}"));
    if !has_gpu() {
        assert!(line.starts_with("device: cpu (") && line.contains("no CUDA device"), "{line}");
        assert_eq!(auto, cpu);
    }
    // The variable works as the flag does.
    let out = Command::new(env!("CARGO_BIN_EXE_gptoss")).args(args).env("GPTOSS_DEVICE", "auto").output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("device: "));
    // A usage error, as clap reports them.
    let out = gptoss(&["--device", "gpu", "inspect", model.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && stderr.contains("auto, cpu, cuda or cuda:N"), "{stderr}");
}

#[test]
fn device_cuda_without_a_gpu_fails_naming_what_is_missing() {
    if has_gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = tokens_file(dir.path(), &[1, 2, 3]);
    let model = fixtures().join("tiny/hf");
    for device in ["cuda", "cuda:1"] {
        let stderr = fails(&[
            "--device",
            device,
            "generate",
            model.to_str().unwrap(),
            "--tokens-file",
            &file,
            "--max-tokens",
            "2",
        ]);
        let ordinal = if device == "cuda" { "cuda:0" } else { device };
        assert!(stderr.contains(ordinal) && stderr.contains("no CUDA driver"), "{stderr}");
    }
}

#[test]
fn bench_synth_without_a_gpu_says_it_needs_one() {
    if has_gpu() {
        return;
    }
    for device in ["auto", "cpu", "cuda"] {
        let stderr = fails(&["--device", device, "bench", "--synth", "20b"]);
        assert!(stderr.contains("--synth builds random weights in GPU memory; it needs a CUDA device"), "{stderr}");
    }
    // Exactly one of MODEL and --synth.
    let out = gptoss(&["bench", fixtures().join("tiny/hf").to_str().unwrap(), "--synth", "20b"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(gptoss(&["bench"]).status.code(), Some(2));
}

#[test]
fn inspect_lists_gpus_or_says_there_are_none() {
    let model = fixtures().join("tiny/hf");
    let (stdout, _) = ok(&["inspect", model.to_str().unwrap(), "--ctx", "4096"]);
    let (json, _) = ok(&["inspect", model.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let gpus = v["gpus"].as_array().unwrap();
    if has_gpu() {
        assert!(stdout.contains("GPUs         the model needs") && stdout.contains("cuda:0 "), "{stdout}");
        assert!(gpus[0]["fits"].is_boolean() && gpus[0]["needs_bytes"]["total"].is_u64(), "{json}");
    } else {
        let line = stdout.lines().find(|l| l.starts_with("GPUs")).unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains("no CUDA device"), "{line}");
        assert!(gpus.is_empty());
    }
}

#[test]
fn bench_decodes_several_sequences_together() {
    let model = fixtures().join("tiny/hf");
    let (stdout, _) = ok(&["bench", model.to_str().unwrap(), "-p", "16", "-n", "4", "-r", "1", "-b", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((v["batch"].as_u64(), v["gen_tokens"].as_u64()), (Some(2), Some(4)));
    assert!(v["device"].as_str().unwrap().starts_with("cpu ("), "{v}");
    assert!(v["gen_tokens_per_s"].as_f64().unwrap() > 0.0 && v["prompt_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["read_bandwidth_gb_s"].as_f64().unwrap() > 0.0 && v["bandwidth_fraction"].as_f64().unwrap() > 0.0);
    let (table, _) = ok(&["bench", model.to_str().unwrap(), "-p", "0", "-n", "4", "-r", "1", "-b", "2"]);
    assert!(table.contains("| tg4 x2 |") && table.contains("over 2 sequences"), "{table}");
    let stderr = fails(&["bench", model.to_str().unwrap(), "-b", "0"]);
    assert!(stderr.contains("--batch must be at least 1"), "{stderr}");
}

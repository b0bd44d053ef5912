//! `gptoss pull` and Hub ids as MODEL, against the hub crate's fake Hub serving the tiny
//! fixture checkpoint in the layout of openai/gpt-oss-*.

#[path = "../../hub/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{Content, FakeFile, FakeHub, FakeRepo};

const REPO: &str = "openai/gpt-oss-tiny";

/// fixtures/tiny/hf at the root, fixtures/tiny/original under original/, and files that are
/// never fetched (Apple's metal/, the tokenizer).
fn tiny_repo() -> FakeRepo {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny");
    let mut files = Vec::new();
    for (dir, prefix) in [("hf", ""), ("original", "original/")] {
        let mut names: Vec<PathBuf> =
            std::fs::read_dir(fixtures.join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for path in names {
            let name = path.file_name().unwrap().to_str().unwrap();
            let lfs = name.ends_with(".safetensors");
            files.push(FakeFile::new(&format!("{prefix}{name}"), Content::Bytes(std::fs::read(&path).unwrap()), lfs));
        }
    }
    files.push(FakeFile::new("metal/model.bin", Content::Bytes(vec![7; 1000]), true));
    files.push(FakeFile::new("tokenizer.json", Content::Bytes(b"{}".to_vec()), false));
    FakeRepo { id: REPO.into(), commit: "89abcdef0123456789abcdef0123456789abcdef".into(), files }
}

fn gptoss(server: &FakeHub, cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptoss"))
        .args(args)
        .env("HF_ENDPOINT", &server.url)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("hf-home"))
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("GPTOSS_KERNELS")
        .env("GPTOSS_DEVICE", "cpu")
        .output()
        .expect("runs")
}

fn ok(server: &FakeHub, cache: &Path, args: &[&str]) -> (String, String) {
    let out = gptoss(server, cache, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "gptoss {args:?} failed:\n{stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

fn fails(server: &FakeHub, cache: &Path, args: &[&str]) -> (String, String) {
    let out = gptoss(server, cache, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "gptoss {args:?} should exit 1:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

#[test]
fn pull_then_use_the_model_offline() {
    let server = FakeHub::start(tiny_repo());
    let cache = tempfile::tempdir().unwrap();
    let snapshot = cache.path().join("models--openai--gpt-oss-tiny/snapshots").join(&server.repo.commit);

    let (stdout, stderr) = ok(&server, cache.path(), &["pull", REPO]);
    assert_eq!(stdout.trim(), snapshot.display().to_string());
    assert!(stderr.contains("hf layout") && stderr.contains("downloaded"), "{stderr}");
    for f in ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"] {
        assert!(snapshot.join(f).is_file(), "{f}");
    }
    assert!(!snapshot.join("original").exists() && !snapshot.join("metal").exists());
    assert!(!snapshot.join("tokenizer.json").exists());

    // From here on, not one request.
    server.clear_requests();
    let (stdout, stderr) = ok(&server, cache.path(), &["--offline", "pull", REPO]);
    assert_eq!(stdout.trim(), snapshot.display().to_string());
    assert!(stderr.contains("all from the cache"), "{stderr}");

    let (stdout, _) = ok(&server, cache.path(), &["inspect", REPO]);
    assert!(stdout.contains(&format!("commit       {}", server.repo.commit)), "{stdout}");
    assert!(stdout.contains("layout       hf complete"), "{stdout}");
    assert!(stdout.contains("original/config.json"), "the other layout's missing files: {stdout}");
    assert!(stdout.contains("tensors      all present"), "{stdout}");

    // The tiny model's vocabulary is 1024 tokens: token ids rather than text.
    let tokens = cache.path().join("tokens.txt");
    std::fs::write(&tokens, "1 2 3").unwrap();
    let tokens = tokens.to_str().unwrap();
    let (stdout, _) = ok(
        &server,
        cache.path(),
        &["generate", REPO, "--tokens-file", tokens, "--max-tokens", "3", "--temperature", "0", "--json", "--offline"],
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 3);
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // Online, a Hub id as MODEL asks what main is and downloads nothing more.
    let (_, stderr) = ok(&server, cache.path(), &["generate", REPO, "--tokens-file", tokens, "--max-tokens", "1"]);
    assert!(stderr.contains("all from the cache"), "{stderr}");
    assert!(server.requests().iter().all(|r| r.path.starts_with("/api/")), "{:?}", server.requests());
}

#[test]
fn pull_the_original_layout() {
    let server = FakeHub::start(tiny_repo());
    let cache = tempfile::tempdir().unwrap();
    let (stdout, _) = ok(&server, cache.path(), &["pull", REPO, "--layout", "original", "--revision", "main"]);
    let dir = PathBuf::from(stdout.trim());
    assert!(dir.ends_with("original"), "{}", dir.display());
    assert!(dir.join("model.safetensors").is_file());
    let asked: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert!(asked.iter().all(|p| !p.contains("/resolve/") || p.contains("/original/")), "{asked:?}");
    // The checkpoint loads from there.
    let (stdout, _) = ok(&server, cache.path(), &["--offline", "inspect", REPO, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["layout"], "OpenAI original");
    assert_eq!(v["complete"], true);
}

#[test]
fn what_is_not_cached_is_said_without_a_request() {
    let server = FakeHub::start(tiny_repo());
    let cache = tempfile::tempdir().unwrap();
    let (_, stderr) = fails(&server, cache.path(), &["--offline", "pull", REPO]);
    assert!(stderr.contains("is not in the cache") && stderr.contains("refs/main"), "{stderr}");
    let (stdout, stderr) = fails(&server, cache.path(), &["inspect", REPO]);
    assert!(stdout.contains("never downloaded here") && stderr.contains("gptoss pull"), "{stdout}{stderr}");
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    let (_, stderr) = fails(&server, cache.path(), &["pull", "someone/missing"]);
    assert!(stderr.contains("repository someone/missing (revision main) not found"), "{stderr}");
    // No MODEL: the default, openai/gpt-oss-20b, goes through the same cache.
    let (_, stderr) = fails(&server, cache.path(), &["--offline", "run", "Hello?"]);
    assert!(stderr.contains("openai/gpt-oss-20b (revision main) is not in the cache"), "{stderr}");
    assert!(stderr.contains("gptoss synth --shape tiny"), "offline, the alternatives too: {stderr}");
    // A local path that does not exist stays a path.
    let (_, stderr) = fails(&server, cache.path(), &["generate", "./no/such", "--prompt", "x"]);
    assert!(stderr.contains("no such checkpoint folder"), "{stderr}");
}

#[test]
fn hub_urls_and_revisions_name_a_model_and_a_download_is_announced() {
    let server = FakeHub::start(tiny_repo());
    let cache = tempfile::tempdir().unwrap();
    let url = format!("https://huggingface.co/{REPO}");
    let (stdout, stderr) = ok(&server, cache.path(), &["pull", &url]);
    assert!(stdout.trim().ends_with(&server.repo.commit), "{stdout}");
    // Before the download: what, where, and what else would do; piped, progress lines.
    assert!(stderr.contains(&format!("{REPO} (revision main) is not in the Hugging Face cache")), "{stderr}");
    assert!(stderr.contains("models--openai--gpt-oss-tiny") && stderr.contains("gptoss synth"), "{stderr}");
    assert!(stderr.contains("downloading 5 file(s), 1.01 MB"), "{stderr}");
    // In the cache: nothing announced; @revision and the URL's /tree/REVISION work.
    let (_, stderr) = ok(&server, cache.path(), &["pull", &format!("{REPO}@main")]);
    assert!(!stderr.contains("not in the Hugging Face cache") && stderr.contains("all from the cache"), "{stderr}");
    let (_, stderr) = ok(&server, cache.path(), &["--offline", "inspect", &format!("{url}/tree/main")]);
    assert!(!stderr.contains("error"), "{stderr}");
    let (stdout, _) = ok(&server, cache.path(), &["list"]);
    assert!(stdout.contains(REPO) && stdout.contains("hf"), "{stdout}");
}

#[test]
fn pull_a_gguf_repository_with_include() {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny/gguf/tiny-mxfp4.gguf");
    let bytes = std::fs::read(&gguf).unwrap();
    let files = vec![
        FakeFile::new("gpt-oss-tiny-mxfp4.gguf", Content::Bytes(bytes), true),
        FakeFile::new("gpt-oss-tiny-Q8_0.gguf", Content::Bytes(vec![1; 5000]), true),
        FakeFile::new("README.md", Content::Bytes(b"# tiny".to_vec()), false),
    ];
    let repo = FakeRepo {
        id: "ggml-org/gpt-oss-tiny-GGUF".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        files,
    };
    let server = FakeHub::start(repo);
    let cache = tempfile::tempdir().unwrap();
    // Two models in it: which one must be said.
    let (_, stderr) = fails(&server, cache.path(), &["pull", "ggml-org/gpt-oss-tiny-GGUF"]);
    assert!(stderr.contains("several models' .gguf files") && stderr.contains("--include '*mxfp4*'"), "{stderr}");
    let (stdout, _) = ok(&server, cache.path(), &["pull", "ggml-org/gpt-oss-tiny-GGUF", "--include", "*MXFP4*"]);
    assert!(stdout.trim().ends_with("gpt-oss-tiny-mxfp4.gguf"), "{stdout}");
    assert!(server.requests().iter().all(|r| !r.path.contains("Q8_0")), "{:?}", server.requests());
    // The Hub id now runs, from the cache.
    let tokens = cache.path().join("tokens.txt");
    std::fs::write(&tokens, "1 2 3").unwrap();
    let args = ["generate", "ggml-org/gpt-oss-tiny-GGUF", "--offline", "--tokens-file", tokens.to_str().unwrap()];
    let (stdout, _) = ok(&server, cache.path(), &[&args[..], &["--max-tokens", "2", "--json"]].concat());
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len(), 2);
    let (stdout, _) = ok(&server, cache.path(), &["list"]);
    assert!(stdout.contains("ggml-org/gpt-oss-tiny-GGUF") && stdout.contains("gguf"), "{stdout}");
}

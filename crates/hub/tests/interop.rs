//! The cache is shared with huggingface_hub both ways, checked with huggingface_hub itself
//! against the fake Hub. Needs a Python with huggingface_hub (`GPTOSS_HF_PYTHON`, default
//! `python3`); without one the test says so and passes.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gptoss_hub::{Hub, Layout, ProgressMode, RepoId};
use support::{FakeHub, FakeRepo};

const REPO: &str = "openai/gpt-oss-fake";

fn python() -> Option<String> {
    let python = std::env::var("GPTOSS_HF_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python).args(["-c", "import huggingface_hub"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

/// huggingface_hub's `snapshot_download` of one layout's files; returns the snapshot path.
fn snapshot_download(python: &str, endpoint: &str, cache: &Path, offline: bool) -> Result<String, String> {
    let script = format!(
        "import huggingface_hub as h; print(h.snapshot_download('{REPO}', allow_patterns=['config.json', \
         '*.safetensors', 'model.safetensors.index.json'], ignore_patterns=['original/*', 'metal/*']))"
    );
    let out = Command::new(python)
        .args(["-c", &script])
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", if offline { "1" } else { "0" })
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_XET", "1")
        .env_remove("HF_TOKEN")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string())
}

#[test]
fn huggingface_hub_and_we_read_each_others_cache() {
    let Some(python) = python() else {
        eprintln!("skipped: no Python with huggingface_hub (set GPTOSS_HF_PYTHON)");
        return;
    };
    // LFS files on another host, as the real Hub's CDN is: huggingface_hub reads the file's
    // metadata from the redirect itself only when it leaves the Hub's host.
    let repo = Arc::new(FakeRepo::gpt_oss_like(REPO));
    let (server, cdn) = (FakeHub::start_shared(repo.clone()), FakeHub::start_shared(repo));
    server.faults().cdn = Some(cdn.url.clone());
    let id = RepoId::parse(REPO).unwrap();
    let ours =
        |cache: &Path| Hub::new(cache).endpoint(&server.url).progress(ProgressMode::Quiet).retries(0, Duration::ZERO);

    // Theirs, then ours offline: everything found, nothing asked.
    let theirs = tempfile::tempdir().unwrap();
    let path = snapshot_download(&python, &server.url, theirs.path(), false).expect("huggingface_hub downloads");
    server.clear_requests();
    cdn.clear_requests();
    let snap = ours(theirs.path()).offline(true).fetch(&id, "main", Some(Layout::Hf)).unwrap();
    assert_eq!(snap.dir, Path::new(&path));
    let snap = ours(theirs.path()).fetch(&id, "main", Some(Layout::Hf)).unwrap();
    assert_eq!(snap.downloaded, 0);
    assert!(cdn.requests().is_empty());

    // Ours, then theirs offline: the same snapshot, and the same tree of links and blobs as
    // they make themselves.
    let mine = tempfile::tempdir().unwrap();
    let snap = ours(mine.path()).fetch(&id, "main", Some(Layout::Hf)).unwrap();
    let path = snapshot_download(&python, &server.url, mine.path(), true).expect("huggingface_hub reads our cache");
    assert_eq!(Path::new(&path), snap.dir);
    let listing = |root: &Path| {
        let mut out = Vec::new();
        let repo_dir = root.join("models--openai--gpt-oss-fake");
        for sub in ["refs", "blobs", "snapshots"] {
            walk(&repo_dir.join(sub), &repo_dir, &mut out);
        }
        out.sort();
        out
    };
    let theirs_listing = listing(theirs.path());
    assert!(theirs_listing.len() >= 9, "{theirs_listing:?}");
    assert_eq!(listing(mine.path()), theirs_listing);
}

/// Every file under `dir` as "path -> link target" or "path (size)".
fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(base).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            out.push(format!("{rel} -> {}", std::fs::read_link(&path).unwrap().display()));
        } else if meta.is_dir() {
            walk(&path, base, out);
        } else {
            out.push(format!("{rel} ({} bytes)", meta.len()));
        }
    }
}

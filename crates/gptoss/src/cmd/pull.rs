//! Hub ids as MODEL: `gptoss pull`, the fetch behind every command that takes a MODEL, and
//! what `gptoss inspect` says of a Hub id (from the cache alone).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use gptoss_hub::{CacheStatus, Hub, Layout, RepoId, Snapshot, DEFAULT_REVISION};

use super::human_bytes;

#[derive(clap::Args)]
pub struct Args {
    /// Repository on the Hugging Face Hub, e.g. openai/gpt-oss-20b.
    repo: String,
    /// Branch, tag or commit hash.
    #[arg(long, default_value = DEFAULT_REVISION, value_name = "R")]
    revision: String,
    /// Which checkpoint layout to fetch (default: the one the cache holds complete, else hf).
    #[arg(long, value_enum)]
    layout: Option<LayoutArg>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LayoutArg {
    /// config.json and model-*.safetensors at the repository root.
    Hf,
    /// OpenAI's original/ folder.
    Original,
}

static OFFLINE: AtomicBool = AtomicBool::new(false);

/// `--offline`: no network at all, the cache only (as HF_HUB_OFFLINE=1).
pub fn set_offline(offline: bool) {
    OFFLINE.store(offline, Ordering::Relaxed);
}

fn hub() -> Hub {
    let hub = Hub::from_env();
    let offline = hub.is_offline() || OFFLINE.load(Ordering::Relaxed);
    hub.offline(offline)
}

/// A MODEL that is not a local path but is shaped `org/name` is a Hub id.
pub fn hub_id(arg: &Path) -> Option<RepoId> {
    if arg.exists() {
        return None;
    }
    let s = arg.to_str()?;
    if s.starts_with(['.', '/', '~']) {
        return None;
    }
    RepoId::parse(s).ok()
}

pub fn run(args: Args) -> Result<()> {
    let repo = RepoId::parse(&args.repo)?;
    let layout = args.layout.map(|l| match l {
        LayoutArg::Hf => Layout::Hf,
        LayoutArg::Original => Layout::Original,
    });
    let snap = hub().fetch(&repo, &args.revision, layout)?;
    eprintln!("{}", describe(&snap));
    println!("{}", snap.model_dir.display());
    Ok(())
}

/// The checkpoint folder for a Hub id given as MODEL, fetched first if the cache lacks it.
pub fn model_dir(repo: &RepoId) -> Result<PathBuf> {
    let snap = hub().fetch(repo, DEFAULT_REVISION, None)?;
    eprintln!("{}", describe(&snap));
    Ok(snap.model_dir)
}

fn describe(snap: &Snapshot) -> String {
    let fetched = if snap.downloaded > 0 {
        format!("downloaded {}", human_bytes(snap.downloaded))
    } else {
        "all from the cache".to_string()
    };
    format!(
        "{} at {} (commit {}), {} layout, {} files, {fetched}: {}",
        snap.repo,
        snap.revision,
        &snap.commit[..12.min(snap.commit.len())],
        snap.layout.name(),
        snap.files.len(),
        snap.model_dir.display()
    )
}

/// `gptoss inspect org/name`: where it is cached and which files are there, without the
/// network, then the checkpoint itself if a layout is complete.
pub fn inspect(repo: &RepoId, json: bool, ctx: usize) -> Result<()> {
    let hub = hub();
    let statuses: Vec<CacheStatus> =
        [Layout::Hf, Layout::Original].iter().map(|&l| hub.status(repo, DEFAULT_REVISION, l)).collect();
    let complete = statuses.iter().find(|s| s.complete());
    if json {
        if let Some(s) = complete {
            // One JSON object on stdout: the checkpoint's, whose path is the snapshot's.
            return super::inspect::run(&model_dir_of(s), true, ctx);
        }
        let layouts: serde_json::Map<String, serde_json::Value> = statuses
            .iter()
            .map(|s| {
                let present: Vec<&str> = s.present.iter().map(|(p, _)| p.as_str()).collect();
                (s.layout.name().to_string(), serde_json::json!({"present": present, "missing": s.missing}))
            })
            .collect();
        let v = serde_json::json!({
            "repo": repo.to_string(),
            "revision": DEFAULT_REVISION,
            "cache": statuses[0].repo_dir.display().to_string(),
            "commit": statuses[0].commit,
            "complete": false,
            "layouts": layouts,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        bail!("{repo} is not complete in the cache; `gptoss pull {repo}` downloads it");
    }
    println!("hub repo     {repo} (revision {DEFAULT_REVISION}; from the cache only, nothing is downloaded)");
    println!("cache        {}", statuses[0].repo_dir.display());
    let Some(commit) = &statuses[0].commit else {
        println!("commit       unknown: revision {DEFAULT_REVISION} was never downloaded here");
        bail!("{repo} is not in the cache; `gptoss pull {repo}` downloads it");
    };
    println!("commit       {commit}");
    for s in &statuses {
        let bytes: u64 = s.present.iter().map(|(_, n)| n).sum();
        let state = if s.complete() { "complete" } else { "incomplete" };
        println!(
            "layout       {} {state}: {} file(s) present ({}), {} missing{}",
            s.layout.name(),
            s.present.len(),
            human_bytes(bytes),
            s.missing.len(),
            if s.listing_known { "" } else { " (file list inferred from the snapshot)" }
        );
        for m in &s.missing {
            println!("             missing {m}");
        }
    }
    match complete {
        Some(s) => {
            println!();
            super::inspect::run(&model_dir_of(s), false, ctx)
        }
        None => bail!("{repo} is not complete in the cache; `gptoss pull {repo}` downloads it"),
    }
}

fn model_dir_of(status: &CacheStatus) -> PathBuf {
    let dir = status.repo_dir.join("snapshots").join(status.commit.as_deref().unwrap_or_default());
    match status.layout {
        Layout::Hf => dir,
        Layout::Original => dir.join("original"),
    }
}

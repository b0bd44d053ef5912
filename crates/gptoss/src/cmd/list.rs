//! `gptoss list` and `gptoss rm`: the models in the Hugging Face cache.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use gptoss_hub::{Layout, RepoId, DEFAULT_REVISION};

use super::{human_bytes, pull};

#[derive(clap::Args)]
pub struct ListArgs {
    /// Print one JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RmArgs {
    /// The model to delete from the cache: org/name (as `gptoss list` shows it).
    model: String,
    /// Delete without asking.
    #[arg(short, long)]
    yes: bool,
}

/// One repository in the cache.
struct Entry {
    repo: String,
    dir: PathBuf,
    bytes: u64,
    layouts: Vec<&'static str>,
    last_used: Option<SystemTime>,
}

fn entries(cache: &Path) -> Result<Vec<Entry>> {
    let read = match std::fs::read_dir(cache) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading the Hugging Face cache {}", cache.display())),
    };
    let hub = pull::hub();
    let mut out = Vec::new();
    for entry in read.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((org, model)) = name.strip_prefix("models--").and_then(|n| n.split_once("--")) else { continue };
        let Ok(repo) = RepoId::parse(&format!("{org}/{model}")) else { continue };
        let dir = entry.path();
        let mut layouts: Vec<&'static str> = [Layout::Hf, Layout::Original]
            .into_iter()
            .filter(|&l| hub.status(&repo, DEFAULT_REVISION, l).complete())
            .map(Layout::name)
            .collect();
        let (mut bytes, mut last_used, mut gguf) = (0, None, false);
        walk(&dir, &mut |path, meta| {
            if meta.is_file() && path.parent().is_some_and(|p| p.ends_with("blobs")) {
                bytes += meta.len();
                let used = meta.accessed().ok().max(meta.modified().ok());
                last_used = last_used.max(used);
            }
            gguf |= path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        });
        if gguf {
            layouts.push("gguf");
        }
        out.push(Entry { repo: repo.to_string(), dir, bytes, layouts, last_used });
    }
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    Ok(out)
}

/// Every entry under `dir` (links not followed), with its metadata.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(read) = std::fs::read_dir(dir) else { return };
    for entry in read.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        f(&path, &meta);
        if meta.is_dir() {
            walk(&path, f);
        }
    }
}

/// "just now", "5 minutes ago", "3 days ago".
fn ago(t: Option<SystemTime>) -> String {
    let Some(secs) = t.and_then(|t| SystemTime::now().duration_since(t).ok()).map(|d| d.as_secs()) else {
        return "-".into();
    };
    let (n, unit) = match secs {
        0..60 => return "just now".into(),
        60..3600 => (secs / 60, "minute"),
        3600..86400 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

pub fn list(args: ListArgs) -> Result<()> {
    let hub = pull::hub();
    let cache = hub.cache_dir().to_path_buf();
    let entries = entries(&cache)?;
    if args.json {
        let v: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                let unix = e.last_used.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs());
                serde_json::json!({"model": e.repo, "bytes": e.bytes, "layouts": e.layouts,
                    "last_used": unix, "path": e.dir.display().to_string()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if entries.is_empty() {
        eprintln!(
            "no models in the Hugging Face cache {} (`gptoss pull openai/gpt-oss-20b` adds one)",
            cache.display()
        );
        return Ok(());
    }
    let width = entries.iter().map(|e| e.repo.len()).max().unwrap_or(5).max(5);
    println!("{:width$}  {:>10}  {:16}  LAST USED", "MODEL", "SIZE", "LAYOUTS");
    for e in &entries {
        let layouts = if e.layouts.is_empty() { "incomplete".to_string() } else { e.layouts.join(", ") };
        println!("{:width$}  {:>10}  {:16}  {}", e.repo, human_bytes(e.bytes), layouts, ago(e.last_used));
    }
    if !super::ui::quiet() {
        eprintln!("in {}", cache.display());
    }
    Ok(())
}

pub fn rm(args: RmArgs) -> Result<()> {
    let Some(model) = pull::parse_hub_ref(&args.model) else {
        crate::usage!("`{}` is not a Hub repository id (org/name, as `gptoss list` shows it)", args.model);
    };
    let hub = pull::hub();
    let dir = hub.repo_dir(&model.repo);
    if !dir.exists() {
        anyhow::bail!("{} is not in the cache {} (`gptoss list` shows what is)", model.repo, hub.cache_dir().display());
    }
    let mut bytes = 0;
    walk(&dir, &mut |_, meta| {
        if meta.is_file() {
            bytes += meta.len();
        }
    });
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            crate::usage!("gptoss rm deletes {} ({}); pass --yes to confirm", model.repo, human_bytes(bytes));
        }
        eprint!("delete {} ({}) from {}? [y/N] ", model.repo, human_bytes(bytes), dir.display());
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).context("reading the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing deleted");
            return Ok(());
        }
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("deleting {}", dir.display()))?;
    eprintln!("deleted {} ({})", model.repo, human_bytes(bytes));
    Ok(())
}

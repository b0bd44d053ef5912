//! Hub ids as MODEL: `gptoss pull`, the fetch behind every command that takes a MODEL, and
//! what `gptoss inspect` says of a Hub id (from the cache alone).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use gptoss_hub::{CacheStatus, Hub, Layout, ProgressMode, RepoId, Snapshot, DEFAULT_REVISION};

use super::{human_bytes, ui};

#[derive(clap::Args)]
pub struct Args {
    /// Repository on the Hugging Face Hub: openai/gpt-oss-20b, openai/gpt-oss-20b@REVISION or
    /// https://huggingface.co/openai/gpt-oss-20b.
    repo: String,
    /// Branch, tag or commit hash (default: main, or the @REVISION of REPO).
    #[arg(long, value_name = "R")]
    revision: Option<String>,
    /// Which checkpoint layout to fetch (default: the one the cache holds complete, else hf;
    /// gguf for a repository of .gguf files).
    #[arg(long, value_enum)]
    layout: Option<LayoutArg>,
    /// Of a GGUF repository, the files to fetch: a pattern with `*` and `?`, e.g. '*mxfp4*'
    /// (needed when it holds several models).
    #[arg(long, value_name = "PATTERN")]
    include: Option<String>,
    /// Use the Hugging Face cache only, never the network (as HF_HUB_OFFLINE=1): checks that
    /// the model is there complete.
    #[arg(long)]
    pub offline: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LayoutArg {
    /// config.json and model-*.safetensors at the repository root.
    Hf,
    /// OpenAI's original/ folder.
    Original,
    /// llama.cpp's .gguf files (ggml-org/gpt-oss-20b-GGUF).
    Gguf,
}

static OFFLINE: AtomicBool = AtomicBool::new(false);

/// `--offline`: no network at all, the cache only (as HF_HUB_OFFLINE=1).
pub fn set_offline(offline: bool) {
    OFFLINE.store(offline, Ordering::Relaxed);
}

pub fn hub() -> Hub {
    let hub = Hub::from_env();
    let offline = hub.is_offline() || OFFLINE.load(Ordering::Relaxed);
    let hub = hub.offline(offline);
    if ui::quiet() {
        hub.progress(ProgressMode::Quiet)
    } else {
        hub
    }
}

/// A model on the Hub, as a MODEL argument names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    pub repo: RepoId,
    pub revision: String,
}

/// `org/name`, `org/name@revision`, or a Hub URL (`https://huggingface.co/org/name`, with
/// `/tree/REVISION` or more after it, also `hf.co/...`).
pub fn parse_hub_ref(s: &str) -> Option<HubRef> {
    let url = ["https://", "http://", ""].iter().find_map(|scheme| {
        let rest = s.strip_prefix(scheme)?;
        ["huggingface.co/", "www.huggingface.co/", "hf.co/"].iter().find_map(|host| rest.strip_prefix(host))
    });
    let (id, revision) = match url {
        Some(path) => {
            let mut parts = path.trim_end_matches('/').split('/');
            let (org, name) = (parts.next()?, parts.next()?);
            // /tree/REV, /blob/REV/file, /resolve/REV/file: the revision is the third part.
            let revision = match parts.next() {
                Some("tree" | "blob" | "resolve") => Some(parts.next()?.to_string()),
                None => None,
                Some(_) => return None,
            };
            (format!("{org}/{name}"), revision)
        }
        None => match s.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id.to_string(), Some(rev.to_string())),
            Some(_) => return None,
            None => (s.to_string(), None),
        },
    };
    let repo = RepoId::parse(&id).ok()?;
    Some(HubRef { repo, revision: revision.unwrap_or_else(|| DEFAULT_REVISION.to_string()) })
}

/// A MODEL that is not a local path but is shaped like a Hub id or URL.
pub fn hub_ref(arg: &Path) -> Option<HubRef> {
    if arg.exists() {
        return None;
    }
    let s = arg.to_str()?;
    if s.starts_with(['.', '/', '~']) {
        return None;
    }
    parse_hub_ref(s)
}

/// A MODEL that is a Hub id (any revision), for `inspect`.
pub fn hub_id(arg: &Path) -> Option<RepoId> {
    hub_ref(arg).map(|r| r.repo)
}

pub fn run(args: Args) -> Result<()> {
    let Some(model) = parse_hub_ref(&args.repo) else {
        crate::usage!(
            "`{}` is not a Hub repository: expected ORG/NAME, ORG/NAME@REVISION or https://huggingface.co/ORG/NAME",
            args.repo
        );
    };
    let revision = args.revision.unwrap_or(model.revision);
    let layout = args.layout.map(|l| match l {
        LayoutArg::Hf => Layout::Hf,
        LayoutArg::Original => Layout::Original,
        LayoutArg::Gguf => Layout::Gguf,
    });
    let hub = hub().include(args.include.as_deref());
    announce(&hub, &model.repo, &revision);
    let snap = hub.fetch(&model.repo, &revision, layout).map_err(|e| explain(e, &model.repo))?;
    if !ui::quiet() {
        eprintln!("{}", describe(&snap));
    }
    println!("{}", snap.model_dir.display());
    Ok(())
}

/// The checkpoint folder for a Hub id given as MODEL, fetched first if the cache lacks it.
pub fn model_dir(repo: &RepoId, revision: &str) -> Result<PathBuf> {
    let hub = hub();
    announce(&hub, repo, revision);
    let snap = hub.fetch(repo, revision, None).map_err(|e| explain(e, repo))?;
    if !ui::quiet() {
        eprintln!("{}", describe(&snap));
    }
    Ok(snap.model_dir)
}

/// The download size of the models people start with (the Hugging Face layout).
pub fn known_size(repo: &RepoId) -> Option<&'static str> {
    match repo.to_string().as_str() {
        "openai/gpt-oss-20b" => Some("13.8 GB"),
        "openai/gpt-oss-120b" => Some("65 GB"),
        _ => None,
    }
}

/// What to use instead of a download.
pub fn alternatives() -> &'static str {
    "Instead of a download, MODEL can be a checkpoint folder you already have (Hugging Face or \
     original layout), a llama.cpp .gguf file, or a random-weight test model made in seconds:\n  \
     gptoss synth --shape tiny --out gpt-oss-tiny && gptoss chat gpt-oss-tiny"
}

/// Before a download: which model, how big, where it goes, and what else would do.
fn announce(hub: &Hub, repo: &RepoId, revision: &str) {
    if hub.is_offline() || ui::quiet() {
        return;
    }
    let cached = [Layout::Hf, Layout::Original, Layout::Gguf].iter().any(|&l| hub.status(repo, revision, l).complete());
    if cached {
        return;
    }
    let size =
        known_size(repo).map_or("its size is shown once the Hub lists its files".to_string(), |s| format!("about {s}"));
    eprintln!(
        "{repo} (revision {revision}) is not in the Hugging Face cache: downloading it ({size}) into {}.\n\
         Ctrl-C stops; running the command again resumes.\n{}\n",
        hub.repo_dir(repo).display(),
        alternatives()
    );
}

/// A failed fetch, with what the user can do without the network.
fn explain(e: gptoss_hub::Error, repo: &RepoId) -> anyhow::Error {
    if e.is_network() {
        let size = known_size(repo).map(|s| format!(", {s}")).unwrap_or_default();
        anyhow::anyhow!("could not download {repo}{size}: {e}\n{}", alternatives())
    } else if matches!(e, gptoss_hub::Error::NotCached { .. }) {
        anyhow::anyhow!("{e}\n{}", alternatives())
    } else {
        e.into()
    }
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
        Layout::Hf | Layout::Gguf => dir,
        Layout::Original => dir.join("original"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Option<(String, String)> {
        parse_hub_ref(s).map(|h| (h.repo.to_string(), h.revision))
    }

    #[test]
    fn hub_ids_urls_and_revisions() {
        let main = |id: &str| Some((id.to_string(), "main".to_string()));
        assert_eq!(r("openai/gpt-oss-20b"), main("openai/gpt-oss-20b"));
        assert_eq!(r("openai/gpt-oss-20b@v1.0"), Some(("openai/gpt-oss-20b".into(), "v1.0".into())));
        assert_eq!(r("https://huggingface.co/openai/gpt-oss-20b"), main("openai/gpt-oss-20b"));
        assert_eq!(r("https://huggingface.co/openai/gpt-oss-20b/"), main("openai/gpt-oss-20b"));
        assert_eq!(r("huggingface.co/openai/gpt-oss-120b"), main("openai/gpt-oss-120b"));
        assert_eq!(r("https://hf.co/ggml-org/gpt-oss-20b-GGUF"), main("ggml-org/gpt-oss-20b-GGUF"));
        assert_eq!(
            r("https://huggingface.co/openai/gpt-oss-20b/tree/abc123"),
            Some(("openai/gpt-oss-20b".into(), "abc123".into()))
        );
        for bad in [
            "gpt-oss-20b",
            "openai/gpt-oss-20b@",
            "https://huggingface.co/openai",
            "https://example.com/openai/gpt-oss-20b",
            "https://huggingface.co/openai/gpt-oss-20b/discussions",
            "a/b/c",
            "What is 2+2?",
        ] {
            assert_eq!(r(bad), None, "{bad}");
        }
    }
}

//! gpt-oss checkpoints from the Hugging Face Hub, kept in the cache huggingface_hub uses.
//!
//! [`Hub::fetch`] resolves `org/name` at a revision to a snapshot folder holding one layout
//! of the checkpoint (the Hugging Face layout at the repository root, or OpenAI's under
//! `original/`), downloading only the files of that layout that the cache lacks.
//! Files are shared with huggingface_hub both ways: the cache layout, the blob names, the
//! refs, the `trees/` listing and the per-blob locks are its own (see [`cache`]).
//!
//! Offline ([`Hub::offline`], `HF_HUB_OFFLINE=1`) nothing touches the network; [`Hub::status`]
//! says what the cache holds without asking anyone.

pub mod cache;
mod download;
mod error;
mod http;
mod progress;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::Error;
pub use progress::ProgressMode;

use cache::RepoCache;
use download::Downloader;
use http::{Client, Subject};
use progress::Progress;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const DEFAULT_REVISION: &str = "main";

/// `org/name` on the Hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoId {
    pub org: String,
    pub name: String,
}

impl RepoId {
    /// Accepts what huggingface_hub accepts for a namespaced repository: two parts of
    /// letters, digits, `-`, `_` and `.`, without `--` or `..` (they would make cache folder
    /// names ambiguous, or paths that leave it).
    pub fn parse(id: &str) -> Result<RepoId, Error> {
        let bad = || Error::BadRepoId(id.to_string());
        let (org, name) = id.split_once('/').ok_or_else(bad)?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !p.contains("--")
                && !p.contains("..")
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        };
        if !part_ok(org) || !part_ok(name) {
            return Err(bad());
        }
        Ok(RepoId { org: org.to_string(), name: name.to_string() })
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.org, self.name)
    }
}

/// Which of the two published layouts to fetch. `metal/` (Apple's format) is never fetched,
/// nor the tokenizer and generation files, which the engine does not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `config.json`, `model*.safetensors` and `model.safetensors.index.json` at the root.
    Hf,
    /// `original/config.json`, `original/*.safetensors`, `original/dtypes.json`.
    Original,
    /// llama.cpp's `*.gguf` files at the root (one model, possibly split in parts), picked
    /// with [`Hub::include`] when the repository holds several.
    Gguf,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Hf => "hf",
            Layout::Original => "original",
            Layout::Gguf => "gguf",
        }
    }

    /// The folder of the snapshot the checkpoint is in ("" for the root).
    pub fn prefix(self) -> &'static str {
        match self {
            Layout::Hf | Layout::Gguf => "",
            Layout::Original => "original/",
        }
    }

    /// Whether a repository file belongs to this layout's checkpoint.
    pub fn wants(self, path: &str) -> bool {
        let Some(name) = path.strip_prefix(self.prefix()) else { return false };
        if name.contains('/') {
            return false;
        }
        if self == Layout::Gguf {
            return name.to_ascii_lowercase().ends_with(".gguf");
        }
        name == "config.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json"
            || (self == Layout::Original && name == "dtypes.json")
    }

    fn expected(self) -> &'static str {
        match self {
            Layout::Hf => "config.json and *.safetensors at the root",
            Layout::Original => "original/config.json and original/*.safetensors",
            Layout::Gguf => "*.gguf files at the root",
        }
    }
}

/// One file of a repository at a commit, as the Hub lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoFile {
    pub path: String,
    pub size: u64,
    /// The git blob id (sha1).
    pub blob_id: String,
    /// For files stored with Git LFS, the sha256 of the contents.
    pub lfs_sha256: Option<String>,
}

impl RepoFile {
    /// The name of its blob in the cache: the ETag the Hub serves it with.
    pub fn etag(&self) -> &str {
        self.lfs_sha256.as_deref().unwrap_or(&self.blob_id)
    }

    /// Itself if the names are safe to build paths from: a relative path without `..`, and
    /// hex hashes. The listing comes from the network.
    fn validated(self) -> Option<Self> {
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let path_ok = !self.path.is_empty()
            && !self.path.starts_with('/')
            && !self.path.contains('\\')
            && self.path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        let hashes_ok = hex(&self.blob_id, 40) && self.lfs_sha256.as_deref().is_none_or(|s| hex(s, 64));
        (path_ok && hashes_ok).then_some(self)
    }
}

/// A checkpoint in the cache, complete and verified.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub repo: RepoId,
    pub revision: String,
    pub commit: String,
    pub layout: Layout,
    /// `snapshots/{commit}`.
    pub dir: PathBuf,
    /// The checkpoint folder to load: `dir`, or `dir/original`.
    pub model_dir: PathBuf,
    /// The layout's files, as paths in the repository.
    pub files: Vec<String>,
    /// Bytes received to complete it (0: all from the cache; a resumed prefix is not counted).
    pub downloaded: u64,
}

/// What the cache holds of one layout of a repository, found without the network.
#[derive(Clone, Debug)]
pub struct CacheStatus {
    pub repo_dir: PathBuf,
    /// The commit `revision` resolves to here, if it was ever resolved.
    pub commit: Option<String>,
    pub layout: Layout,
    /// Files present (path, size).
    pub present: Vec<(String, u64)>,
    /// Files known to be missing (or a pattern, when the list of files is not known).
    pub missing: Vec<String>,
    /// Whether the expected files come from a saved listing of the commit (else they are
    /// inferred from `config.json` and the safetensors index in the snapshot).
    pub listing_known: bool,
}

impl CacheStatus {
    pub fn complete(&self) -> bool {
        self.commit.is_some() && self.missing.is_empty() && !self.present.is_empty()
    }
}

/// Where and how to fetch.
#[derive(Clone, Debug)]
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    cache_dir: PathBuf,
    offline: bool,
    progress: ProgressMode,
    timeout: Duration,
    retries: u32,
    retry_delay: Duration,
    include: Option<String>,
}

impl Hub {
    /// Configured as huggingface_hub configures itself: `HF_ENDPOINT`, `HF_TOKEN` (then
    /// `HUGGING_FACE_HUB_TOKEN`, then the file `huggingface-cli login` writes, `HF_TOKEN_PATH`
    /// or `$HF_HOME/token`), the cache of [`cache::default_cache_dir`], `HF_HUB_OFFLINE`, and
    /// `HF_HUB_DOWNLOAD_TIMEOUT` (seconds; default 10, as theirs).
    pub fn from_env() -> Hub {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let path = var("HF_TOKEN_PATH")
                .map(|p| cache::expand_tilde(Path::new(&p)))
                .unwrap_or(cache::hf_home().join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
            .iter()
            .any(|v| var(v).is_some_and(|v| ["1", "on", "yes", "true"].contains(&v.to_ascii_lowercase().as_str())));
        let timeout = var("HF_HUB_DOWNLOAD_TIMEOUT").and_then(|s| s.parse::<f64>().ok()).filter(|s| *s > 0.0);
        Hub::new(cache::default_cache_dir())
            .endpoint(&endpoint)
            .token(token)
            .offline(offline)
            .timeout(Duration::from_secs_f64(timeout.unwrap_or(10.0)))
    }

    /// The public Hub, no token, online, caching in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Hub {
        Hub {
            endpoint: DEFAULT_ENDPOINT.into(),
            token: None,
            cache_dir: cache_dir.into(),
            offline: false,
            progress: ProgressMode::Auto,
            timeout: Duration::from_secs(10),
            retries: 5,
            retry_delay: Duration::from_secs(1),
            include: None,
        }
    }

    /// Of a GGUF repository, only the files whose names match `pattern` (`*` any run of
    /// characters, `?` one; case does not matter), as `--include '*mxfp4*'`.
    pub fn include(mut self, pattern: Option<&str>) -> Self {
        self.include = pattern.map(str::to_string);
        self
    }

    pub fn endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = endpoint.trim_end_matches('/').to_string();
        self
    }

    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    pub fn progress(mut self, mode: ProgressMode) -> Self {
        self.progress = mode;
        self
    }

    /// For connecting, for the first byte of an answer, and for each read after it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Attempts after a dropped connection (each resumes), and the pause before each.
    pub fn retries(mut self, retries: u32, delay: Duration) -> Self {
        self.retries = retries;
        self.retry_delay = delay;
        self
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    pub fn endpoint_url(&self) -> &str {
        &self.endpoint
    }

    pub fn is_offline(&self) -> bool {
        self.offline
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub fn repo_dir(&self, repo: &RepoId) -> PathBuf {
        RepoCache::new(&self.cache_dir, repo).dir
    }

    /// The checkpoint of `repo` at `revision`, downloading what the cache lacks (nothing
    /// when offline). `layout` None takes whichever layout the cache already holds complete,
    /// the Hugging Face one first, and downloads the Hugging Face one if neither is.
    pub fn fetch(&self, repo: &RepoId, revision: &str, layout: Option<Layout>) -> Result<Snapshot, Error> {
        check_revision(revision)?;
        let rc = RepoCache::new(&self.cache_dir, repo);
        if self.offline {
            return self.cached_snapshot(&rc, repo, revision, layout);
        }
        // A commit never changes: if the cache holds it complete, or holds its listing, the Hub
        // has nothing to add.
        if cache::is_commit_hash(revision) {
            if let Ok(snapshot) = self.cached_snapshot(&rc, repo, revision, layout) {
                return Ok(snapshot);
            }
        }
        let saved = rc.commit_for(revision).filter(|c| c == revision).and_then(|c| Some((rc.read_tree(&c)?, c)));
        let (files, commit) = match saved {
            Some(found) => found,
            None => {
                let client = self.client();
                match client.listing(repo, revision) {
                    Ok(listing) => (listing.files, listing.commit),
                    // No way to ask (no network, or the Hub is down): what the cache holds for
                    // this revision is the best answer.
                    Err(e) if e.is_network() || matches!(e, Error::Http { status: 500..=599, .. }) => {
                        let Ok(snapshot) = self.cached_snapshot(&rc, repo, revision, layout) else { return Err(e) };
                        if self.progress != ProgressMode::Quiet {
                            eprintln!("{e}\nusing the cached snapshot {}", snapshot.dir.display());
                        }
                        return Ok(snapshot);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let layout = layout.unwrap_or_else(|| {
            let complete = |l: Layout| {
                files.iter().filter(|f| l.wants(&f.path)).all(|f| rc.cached_file(&commit, &f.path).is_some())
            };
            let safetensors = has_layout(&files, Layout::Hf) || has_layout(&files, Layout::Original);
            if !complete(Layout::Hf) && complete(Layout::Original) && has_layout(&files, Layout::Original) {
                Layout::Original
            } else if !safetensors && has_layout(&files, Layout::Gguf) {
                Layout::Gguf
            } else {
                Layout::Hf
            }
        });
        let wanted: Vec<&RepoFile> = files.iter().filter(|f| layout.wants(&f.path)).collect();
        let wanted = if layout == Layout::Gguf { self.pick_gguf(repo, revision, wanted)? } else { wanted };
        if !has_layout(&files, layout) {
            let mut found: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
            found.truncate(20);
            return Err(Error::NoSuchLayout {
                repo: repo.to_string(),
                revision: revision.to_string(),
                layout: layout.name(),
                expected: layout.expected(),
                found: if found.is_empty() { "no files".into() } else { found.join(", ") },
            });
        }
        rc.prepare(&commit)?;
        rc.write_ref(revision, &commit)?;
        rc.write_tree(&commit, &files);

        let to_fetch: Vec<&&RepoFile> = wanted.iter().filter(|f| rc.cached_file(&commit, &f.path).is_none()).collect();
        let total: u64 = to_fetch.iter().map(|f| f.size).sum();
        let mut progress = Progress::new(self.progress, to_fetch.len(), total);
        let client = self.client();
        let downloader = Downloader {
            client: &client,
            cache: &rc,
            about: Subject { repo, revision, path: None },
            commit: &commit,
            retries: self.retries,
            retry_delay: self.retry_delay,
        };
        for file in &wanted {
            downloader.fetch(file, &mut progress)?;
        }
        progress.finish();
        let files = wanted.iter().map(|f| f.path.clone()).collect();
        Ok(self.snapshot(&rc, repo, revision, commit, layout, files, progress.received()))
    }

    /// What the cache holds of `repo` at `revision` in `layout`; never touches the network.
    pub fn status(&self, repo: &RepoId, revision: &str, layout: Layout) -> CacheStatus {
        let rc = RepoCache::new(&self.cache_dir, repo);
        // A revision that would leave refs/ resolves to nothing.
        let commit = check_revision(revision).ok().and_then(|()| rc.commit_for(revision));
        let mut status = CacheStatus {
            repo_dir: rc.dir.clone(),
            commit: commit.clone(),
            layout,
            present: Vec::new(),
            missing: Vec::new(),
            listing_known: false,
        };
        let Some(commit) = commit else {
            status.missing = vec![format!("refs/{revision} (this revision was never downloaded here)")];
            return status;
        };
        if layout == Layout::Gguf {
            // What was pulled: the .gguf files in the snapshot (a repository may hold many).
            let dir = rc.snapshot_dir(&commit);
            let mut found: Vec<(String, u64)> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let len = std::fs::metadata(e.path()).ok()?.len();
                    Layout::Gguf.wants(&name).then_some((name, len))
                })
                .collect();
            found.sort();
            if found.is_empty() {
                status.missing = vec!["*.gguf".into()];
            }
            status.present = found;
            return status;
        }
        let expected: Vec<(String, Option<u64>)> = match rc.read_tree(&commit) {
            Some(files) => {
                status.listing_known = true;
                if !has_layout(&files, layout) {
                    status.missing =
                        vec![format!("{} (the repository has no {} layout)", layout.expected(), layout.name())];
                    return status;
                }
                files.into_iter().filter(|f| layout.wants(&f.path)).map(|f| (f.path, Some(f.size))).collect()
            }
            None => infer_files(&rc.snapshot_dir(&commit), layout).into_iter().map(|p| (p, None)).collect(),
        };
        for (path, size) in expected {
            let found = rc.cached_file(&commit, &path).and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len());
            match found {
                Some(len) if size.is_none_or(|s| s == len) => status.present.push((path, len)),
                _ => status.missing.push(path),
            }
        }
        status
    }

    fn cached_snapshot(
        &self,
        rc: &RepoCache,
        repo: &RepoId,
        revision: &str,
        layout: Option<Layout>,
    ) -> Result<Snapshot, Error> {
        let layouts = match layout {
            Some(l) => vec![l],
            None => vec![Layout::Hf, Layout::Original, Layout::Gguf],
        };
        let statuses: Vec<CacheStatus> = layouts.iter().map(|&l| self.status(repo, revision, l)).collect();
        match statuses.iter().find(|s| s.complete()) {
            Some(s) => {
                let files = s.present.iter().map(|(p, _)| p.clone()).collect();
                let commit = s.commit.clone().unwrap_or_default();
                Ok(self.snapshot(rc, repo, revision, commit, s.layout, files, 0))
            }
            None => {
                let first = &statuses[0];
                Err(Error::NotCached {
                    repo: repo.to_string(),
                    revision: revision.to_string(),
                    commit: first.commit.clone(),
                    cache: self.cache_dir.clone(),
                    missing: first.missing.clone(),
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn snapshot(
        &self,
        rc: &RepoCache,
        repo: &RepoId,
        revision: &str,
        commit: String,
        layout: Layout,
        files: Vec<String>,
        downloaded: u64,
    ) -> Snapshot {
        let dir = rc.snapshot_dir(&commit);
        let model_dir = match layout {
            Layout::Hf => dir.clone(),
            Layout::Original => dir.join("original"),
            // The first part: a split model loads whole from it.
            Layout::Gguf => files.iter().min().map_or_else(|| dir.clone(), |f| dir.join(f)),
        };
        Snapshot {
            repo: repo.clone(),
            revision: revision.to_string(),
            commit,
            layout,
            dir,
            model_dir,
            files,
            downloaded,
        }
    }

    /// The GGUF files to fetch: those `include` matches, and they must be one model (its
    /// parts, when split); several models need an `include` that picks one.
    fn pick_gguf<'a>(
        &self,
        repo: &RepoId,
        revision: &str,
        files: Vec<&'a RepoFile>,
    ) -> Result<Vec<&'a RepoFile>, Error> {
        let names = |fs: &[&RepoFile]| fs.iter().map(|f| f.path.clone()).collect::<Vec<_>>().join(", ");
        let picked: Vec<&RepoFile> = match &self.include {
            Some(p) => files.iter().copied().filter(|f| glob_match(p, &f.path)).collect(),
            None => files.clone(),
        };
        let mut models: Vec<String> = picked.iter().map(|f| split_base(&f.path)).collect();
        models.sort();
        models.dedup();
        if picked.is_empty() || models.len() > 1 {
            return Err(Error::GgufChoice {
                repo: repo.to_string(),
                revision: revision.to_string(),
                include: self.include.clone(),
                found: names(&files),
            });
        }
        Ok(picked)
    }

    fn client(&self) -> Client {
        Client::new(&self.endpoint, self.token.clone(), self.timeout)
    }
}

/// A revision names a file under refs/ (`refs/pr/1` is one): nothing that leaves it.
fn check_revision(revision: &str) -> Result<(), Error> {
    let ok = !revision.is_empty()
        && !revision.starts_with('/')
        && !revision.contains('\\')
        && revision.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(Error::BadRevision(revision.to_string()))
    }
}

/// `*` matches any run of characters, `?` one; ASCII case does not matter.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// A GGUF file's model: its name without llama-gguf-split's `-00001-of-00003`.
fn split_base(name: &str) -> String {
    let stem = name.strip_suffix(".gguf").unwrap_or(name);
    let b = stem.as_bytes();
    // -NNNNN-of-NNNNN is 15 bytes.
    if b.len() > 15 {
        let tail = &stem[stem.len() - 15..];
        let t = tail.as_bytes();
        let digits = |r: std::ops::Range<usize>| t[r].iter().all(u8::is_ascii_digit);
        if t[0] == b'-' && digits(1..6) && &tail[6..10] == "-of-" && digits(10..15) {
            return stem[..stem.len() - 15].to_string();
        }
    }
    stem.to_string()
}

/// A layout is there when its config and at least one weights file are (for GGUF: a
/// `.gguf` file).
fn has_layout(files: &[RepoFile], layout: Layout) -> bool {
    if layout == Layout::Gguf {
        return files.iter().any(|f| layout.wants(&f.path));
    }
    let config = format!("{}config.json", layout.prefix());
    files.iter().any(|f| f.path == config)
        && files.iter().any(|f| layout.wants(&f.path) && f.path.ends_with(".safetensors"))
}

/// The files of a layout when no listing of the commit was saved (a cache filled by an older
/// huggingface_hub): the config, and the shards the safetensors index names, else whatever
/// `*.safetensors` the snapshot holds. An empty answer means "nothing is there".
fn infer_files(snapshot: &Path, layout: Layout) -> Vec<String> {
    let prefix = layout.prefix();
    let dir = snapshot.join(prefix.trim_end_matches('/'));
    let mut files = vec![format!("{prefix}config.json")];
    let index = dir.join("model.safetensors.index.json");
    if let Some(shards) = std::fs::read_to_string(&index).ok().and_then(|t| index_shards(&t)) {
        files.push(format!("{prefix}model.safetensors.index.json"));
        files.extend(shards.into_iter().map(|s| format!("{prefix}{s}")));
        return files;
    }
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".safetensors"))
        .map(|n| format!("{prefix}{n}"))
        .collect();
    found.sort();
    if found.is_empty() {
        found.push(format!("{prefix}*.safetensors"));
    }
    files.extend(found);
    files
}

/// The shard file names a `model.safetensors.index.json` maps tensors to.
fn index_shards(text: &str) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut shards: Vec<String> = v
        .get("weight_map")?
        .as_object()?
        .values()
        .filter_map(|s| s.as_str())
        .filter(|s| !s.contains('/') && !s.contains("..") && s.ends_with(".safetensors"))
        .map(str::to_string)
        .collect();
    shards.sort();
    shards.dedup();
    Some(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert_eq!(RepoId::parse("openai/gpt-oss-20b").unwrap().to_string(), "openai/gpt-oss-20b");
        for bad in ["gpt-oss-20b", "a/b/c", "a/../b", "../x", "a/b--c", "/x", "a/", "a b/c", "./x"] {
            assert!(RepoId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revisions_stay_under_refs() {
        for good in ["main", "v1.0", "refs/pr/1", "0123456789abcdef0123456789abcdef01234567"] {
            assert!(check_revision(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a/../../b", "/etc", "a//b", "a\\b"] {
            assert!(check_revision(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layouts_pick_their_files() {
        let hf: Vec<&str> = [
            "config.json",
            "model-00000-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "generation_config.json",
            "original/config.json",
            "original/model.safetensors",
            "original/dtypes.json",
            "metal/model.bin",
            ".gitattributes",
        ]
        .into_iter()
        .filter(|p| Layout::Hf.wants(p))
        .collect();
        assert_eq!(hf, ["config.json", "model-00000-of-00002.safetensors", "model.safetensors.index.json"]);
        assert!(Layout::Gguf.wants("gpt-oss-20b-mxfp4.GGUF") && !Layout::Gguf.wants("sub/x.gguf"));
        assert!(glob_match("*mxfp4*", "gpt-oss-20b-MXFP4.gguf") && !glob_match("*q8*", "gpt-oss-20b-mxfp4.gguf"));
        assert!(glob_match("a?c", "abc") && !glob_match("a?c", "ac") && glob_match("*", ""));
        assert_eq!(split_base("m-00001-of-00003.gguf"), "m");
        assert_eq!(split_base("gpt-oss-20b-mxfp4.gguf"), "gpt-oss-20b-mxfp4");
        assert!(Layout::Original.wants("original/dtypes.json"));
        assert!(!Layout::Original.wants("dtypes.json"));
        assert!(!Layout::Original.wants("metal/model.bin"));
        assert!(!Layout::Original.wants("original/sub/model.safetensors"));
    }

    #[test]
    fn unsafe_listings_are_refused() {
        let f = |path: &str| RepoFile { path: path.into(), size: 1, blob_id: "a".repeat(40), lfs_sha256: None };
        assert!(f("config.json").validated().is_some());
        assert!(f("original/config.json").validated().is_some());
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "", "a\\b"] {
            assert!(f(bad).validated().is_none(), "{bad}");
        }
        let mut g = f("x");
        g.blob_id = "../../x".into();
        assert!(g.validated().is_none());
    }
}

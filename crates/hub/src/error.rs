//! What can go wrong, each case worded so that the message alone tells the user what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{0}` is not a Hub repository id: expected ORG/NAME (letters, digits, `-`, `_`, `.`)")]
    BadRepoId(String),

    #[error("`{0}` is not a revision: expected a branch, tag or commit hash")]
    BadRevision(String),

    #[error("repository {repo} (revision {revision}) not found on {endpoint}{}", private_hint(.had_token))]
    RepoNotFound { repo: String, revision: String, endpoint: String, had_token: bool },

    #[error("repository {repo} has no revision `{revision}` on {endpoint} (a branch, tag or commit hash)")]
    RevisionNotFound { repo: String, revision: String, endpoint: String },

    #[error("{path} not found in {repo} (revision {revision}) on {endpoint}")]
    EntryNotFound { repo: String, revision: String, path: String, endpoint: String },

    #[error(
        "access to {repo} was refused by {endpoint} (HTTP {status}): the repository is gated or private.\n\
         Accept its terms on {endpoint}/{repo}, then {}",
        token_advice(.had_token)
    )]
    AccessDenied { repo: String, endpoint: String, status: u16, had_token: bool },

    #[error(
        "cannot reach {host}: {reason}.\n\
         Check the network (or HF_ENDPOINT); if the model is already in the cache, run with --offline \
         (or HF_HUB_OFFLINE=1)"
    )]
    Network { host: String, reason: String },

    #[error("{url} answered HTTP {status}{}", detail(.message))]
    Http { url: String, status: u16, message: String },

    #[error("{url} did not answer like the Hugging Face Hub: {reason}")]
    BadResponse { url: String, reason: String },

    #[error(
        "{repo} (revision {revision}) has no {layout}-layout checkpoint: expected {expected}; the repository holds {found}"
    )]
    NoSuchLayout { repo: String, revision: String, layout: &'static str, expected: &'static str, found: String },

    #[error(
        "{repo} (revision {revision}): {}; the repository holds {found}. Pick one model with --include, \
         e.g. --include '*mxfp4*'",
        match include {
            Some(p) => format!("no single model's .gguf files match --include '{p}'"),
            None => "it holds several models' .gguf files".into(),
        }
    )]
    GgufChoice { repo: String, revision: String, include: Option<String>, found: String },

    #[error(
        "{repo} (revision {revision}) is not in the cache {cache}{}: missing {}.\n\
         Run without --offline (and without HF_HUB_OFFLINE=1) to download {}",
        commit.as_deref().map(|c| format!(" (commit {c})")).unwrap_or_default(),
        missing.join(", "),
        if missing.len() == 1 { "it" } else { "them" }
    )]
    NotCached { repo: String, revision: String, commit: Option<String>, cache: PathBuf, missing: Vec<String> },

    #[error(
        "{file}: the downloaded bytes are corrupt: expected {algo} {expected}, got {actual}; the partial file \
         was deleted, run the command again to download it anew"
    )]
    HashMismatch { file: String, algo: &'static str, expected: String, actual: String },

    #[error(
        "{file}: expected {expected} bytes, received {actual}; the file was deleted, run the command again \
         to download it anew"
    )]
    SizeMismatch { file: String, expected: u64, actual: u64 },

    #[error(
        "download of {file} was cut off after {done} of {size} bytes ({reason}); run the command again to \
         resume it from {partial}"
    )]
    Interrupted { file: String, done: u64, size: u64, reason: String, partial: PathBuf },

    #[error(
        "not enough disk space in {}: {file} needs {needed} more bytes, {available} are free. Free some \
         space (or point HF_HUB_CACHE elsewhere) and run the command again; what was downloaded is kept",
        dir.display()
    )]
    DiskFull { file: String, dir: PathBuf, needed: u64, available: u64 },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn private_hint(had_token: &bool) -> &'static str {
    if *had_token {
        " (if it is private, check that your token can read it)"
    } else {
        " (if it is private, set HF_TOKEN: `export HF_TOKEN=hf_...` or `huggingface-cli login`)"
    }
}

fn token_advice(had_token: &bool) -> &'static str {
    if *had_token {
        "check that your token (HF_TOKEN, or the file `huggingface-cli login` wrote) belongs to an account \
         that was granted access"
    } else {
        "set HF_TOKEN to a token of that account: `export HF_TOKEN=hf_...` or `huggingface-cli login`"
    }
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// True when the Hub could not be reached at all (as opposed to answering no): the case
    /// where a complete snapshot in the cache may be used instead.
    pub fn is_network(&self) -> bool {
        matches!(self, Error::Network { .. })
    }
}

//! The cache on disk, laid out exactly as huggingface_hub lays it out, so that files either
//! tool downloaded are found by the other:
//!
//! ```text
//! {root}/models--{org}--{name}/
//!     refs/{revision}              the commit hash the revision pointed at when last resolved
//!     blobs/{etag}                 file contents, named by sha256 (LFS files) or git blob sha1
//!     blobs/{etag}.incomplete      a download in progress (ours; resumed from where it stopped)
//!     snapshots/{commit}/{path}    relative symlinks into ../../blobs (../../../blobs under original/)
//!     trees/{commit}.json          the file listing of that commit (huggingface_hub >= 1.x writes it too)
//! {root}/.locks/models--{org}--{name}/{etag}.lock   flock(2)ed while a blob is written
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::{RepoFile, RepoId};

/// The cache root as huggingface_hub finds it: `HF_HUB_CACHE`, then the legacy
/// `HUGGINGFACE_HUB_CACHE`, then `$HF_HOME/hub`, where `HF_HOME` defaults to
/// `$XDG_CACHE_HOME/huggingface`, then `~/.cache/huggingface`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = env_path("HF_HUB_CACHE").or_else(|| env_path("HUGGINGFACE_HUB_CACHE")) {
        return dir;
    }
    hf_home().join("hub")
}

/// `HF_HOME`, where huggingface_hub keeps its token and cache.
pub fn hf_home() -> PathBuf {
    if let Some(home) = env_path("HF_HOME") {
        return home;
    }
    let cache = env_path("XDG_CACHE_HOME").unwrap_or_else(|| home_dir().join(".cache"));
    cache.join("huggingface")
}

fn env_path(name: &str) -> Option<PathBuf> {
    let value = std::env::var_os(name)?;
    if value.is_empty() {
        return None;
    }
    Some(expand_tilde(Path::new(&value)))
}

/// `~/x` as the shell would expand it (huggingface_hub calls expanduser on these variables).
pub(crate) fn expand_tilde(path: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home_dir().join(rest),
        Err(_) => path.to_path_buf(),
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

/// A commit hash as huggingface_hub recognises one: 40 lowercase hex digits.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The folder of one repository in the cache.
#[derive(Clone, Debug)]
pub struct RepoCache {
    pub root: PathBuf,
    pub dir: PathBuf,
    folder: String,
}

impl RepoCache {
    pub fn new(root: &Path, repo: &RepoId) -> Self {
        let folder = format!("models--{}--{}", repo.org, repo.name);
        RepoCache { root: root.to_path_buf(), dir: root.join(&folder), folder }
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    pub fn incomplete_path(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{etag}.incomplete"))
    }

    fn ref_path(&self, revision: &str) -> PathBuf {
        self.dir.join("refs").join(revision)
    }

    /// The commit a revision resolves to without asking the Hub: a commit hash is itself,
    /// a branch or tag is whatever `refs/{revision}` says.
    pub fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = fs::read_to_string(self.ref_path(revision)).ok()?;
        let commit = text.trim();
        // A ref is a file name we build paths from: take nothing but a hash.
        is_commit_hash(commit).then(|| commit.to_string())
    }

    /// Records that `revision` points at `commit`, atomically (a reader never sees half a
    /// hash), and only when it changed, as huggingface_hub does: a read-only cache that is
    /// already right stays usable.
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<(), Error> {
        if revision == commit || self.commit_for(revision).as_deref() == Some(commit) {
            return Ok(());
        }
        let path = self.ref_path(revision);
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let tmp = path.with_file_name(format!(".{}.{}.tmp", file_name(&path), std::process::id()));
        fs::write(&tmp, commit).map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Creates the cache folders and tags the root as a cache (CACHEDIR.TAG, as huggingface_hub
    /// does) so that backup tools skip tens of gigabytes of weights.
    pub fn prepare(&self, commit: &str) -> Result<(), Error> {
        for dir in [self.dir.join("blobs"), self.snapshot_dir(commit)] {
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let tag = self.root.join("CACHEDIR.TAG");
        if !tag.exists() {
            // Best effort, like huggingface_hub: a missing tag costs nothing but backup space.
            let _ = fs::write(
                &tag,
                "Signature: 8a477f597d28d172789f06886806bc55\n\
                 # This file is a cache directory tag created by huggingface_hub.\n\
                 # For information about cache directory tags, see:\n\
                 #\thttps://bford.info/cachedir/\n",
            );
        }
        Ok(())
    }

    /// The file as the snapshot shows it, if it is there and its blob is too (a symlink whose
    /// blob was deleted does not count).
    pub fn cached_file(&self, commit: &str, path: &str) -> Option<PathBuf> {
        let p = self.snapshot_dir(commit).join(path);
        fs::metadata(&p).ok().filter(|m| m.is_file()).map(|_| p)
    }

    /// Points `snapshots/{commit}/{path}` at `blobs/{etag}` with a relative symlink, replacing
    /// whatever was there in one rename so that no reader sees the file missing.
    pub fn link(&self, commit: &str, path: &str, etag: &str) -> Result<PathBuf, Error> {
        let dst = self.snapshot_dir(commit).join(path);
        let parent = dst.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        // snapshots/{commit}/ is two levels below the repo folder, plus one per folder in path.
        let depth = 2 + path.matches('/').count();
        let target: PathBuf = std::iter::repeat_n("..", depth).collect::<PathBuf>().join("blobs").join(etag);
        let tmp = parent.join(format!(".{}.{}.tmp", file_name(&dst), std::process::id()));
        let _ = fs::remove_file(&tmp);
        symlink_or_copy(&target, &self.blob_path(etag), &tmp)?;
        fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        Ok(dst)
    }

    /// Removes a snapshot entry (a link left to a blob found to be bad).
    pub fn unlink(&self, commit: &str, path: &str) {
        let _ = fs::remove_file(self.snapshot_dir(commit).join(path));
    }

    /// The file listing of a commit, as huggingface_hub caches it in `trees/{commit}.json`.
    pub fn read_tree(&self, commit: &str) -> Option<Vec<RepoFile>> {
        let text = fs::read_to_string(self.dir.join("trees").join(format!("{commit}.json"))).ok()?;
        let tree: Tree = serde_json::from_str(&text).ok()?;
        if tree.format_version != 1 {
            return None;
        }
        let files = tree.files.into_iter().map(|(path, e)| RepoFile {
            path,
            size: e.lfs_size.unwrap_or(e.size),
            blob_id: e.blob_id,
            lfs_sha256: e.lfs_sha256,
        });
        files.map(|f| f.validated()).collect::<Option<Vec<_>>>()
    }

    /// Writes `trees/{commit}.json` in huggingface_hub's format (a commit never changes, so
    /// this listing is valid forever). Best effort: it only saves a request later.
    pub fn write_tree(&self, commit: &str, files: &[RepoFile]) {
        let path = self.dir.join("trees").join(format!("{commit}.json"));
        if path.exists() {
            return;
        }
        let tree = Tree {
            format_version: 1,
            files: files
                .iter()
                .map(|f| {
                    let entry = TreeEntry {
                        size: f.size,
                        blob_id: f.blob_id.clone(),
                        lfs_sha256: f.lfs_sha256.clone(),
                        lfs_size: f.lfs_sha256.as_ref().map(|_| f.size),
                    };
                    (f.path.clone(), entry)
                })
                .collect(),
        };
        let Ok(text) = serde_json::to_string_pretty(&tree) else { return };
        let tmp = path.with_file_name(format!(".{commit}.{}.tmp", std::process::id()));
        let written = fs::create_dir_all(self.dir.join("trees")).and_then(|()| fs::write(&tmp, text));
        if written.and_then(|()| fs::rename(&tmp, &path)).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Takes huggingface_hub's lock for writing one blob, so that two downloads of the same
    /// file (ours or theirs) do not append to one partial file. Waits for the other one to
    /// finish; `waiting` is told first.
    pub fn lock_blob(&self, etag: &str, waiting: impl FnOnce()) -> Result<BlobLock, Error> {
        let dir = self.root.join(".locks").join(&self.folder);
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(format!("{etag}.lock"));
        let file =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        lock_file(&file, waiting).map_err(|e| Error::io(&path, e))?;
        Ok(BlobLock { _file: file })
    }
}

/// Held while a blob is written; the lock goes with the file descriptor.
pub struct BlobLock {
    _file: File,
}

#[cfg(unix)]
fn lock_file(file: &File, waiting: impl FnOnce()) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: flock on a descriptor we own; it only changes the lock state.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    waiting();
    loop {
        // SAFETY: as above.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(not(unix))]
fn lock_file(_file: &File, _waiting: impl FnOnce()) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn symlink_or_copy(target: &Path, _blob: &Path, link: &Path) -> Result<(), Error> {
    std::os::unix::fs::symlink(target, link).map_err(|e| Error::io(link, e))
}

/// Where symlinks are not to be had, huggingface_hub copies the blob into the snapshot.
#[cfg(not(unix))]
fn symlink_or_copy(_target: &Path, blob: &Path, link: &Path) -> Result<(), Error> {
    fs::copy(blob, link).map(|_| ()).map_err(|e| Error::io(link, e))
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Free bytes on the file system holding `dir` (None where that cannot be asked).
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Appends to a file and maps a full disk to an error that says how much was needed.
pub fn write_all(file: &mut File, buf: &[u8], path: &Path, name: &str, still_needed: u64) -> Result<(), Error> {
    file.write_all(buf).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            let dir = path.parent().unwrap_or(path).to_path_buf();
            Error::DiskFull {
                file: name.to_string(),
                available: free_space(&dir).unwrap_or(0),
                dir,
                needed: still_needed,
            }
        } else {
            Error::io(path, e)
        }
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Tree {
    format_version: u32,
    files: BTreeMap<String, TreeEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TreeEntry {
    size: u64,
    blob_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lfs_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lfs_size: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_says_how_much_was_needed_where() {
        // /dev/full answers every write with ENOSPC.
        let mut file = File::options().write(true).open("/dev/full").unwrap();
        let err = write_all(&mut file, &[0; 4096], Path::new("/dev/full"), "model.safetensors", 12_345).unwrap_err();
        assert!(matches!(err, Error::DiskFull { needed: 12_345, .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("model.safetensors needs 12345 more bytes") && msg.contains("in /dev"), "{msg}");
    }

    #[test]
    fn commit_hashes() {
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_hash("main"));
        assert!(!is_commit_hash("0123456789ABCDEF0123456789abcdef01234567"));
    }
}

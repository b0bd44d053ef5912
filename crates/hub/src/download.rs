//! One file into the cache: reuse it if it is there, else stream it into
//! `blobs/{etag}.incomplete` (resuming what an earlier run left), check its size and hash,
//! and only then give it its blob name and snapshot link. A file that fails the check is
//! deleted, so a bad file is never in the cache under a good name.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::cache::{self, RepoCache};
use crate::error::Error;
use crate::http::{Client, Subject};
use crate::progress::Progress;
use crate::RepoFile;

const CHUNK: usize = 1 << 20;

pub(crate) struct Downloader<'a> {
    pub client: &'a Client,
    pub cache: &'a RepoCache,
    pub about: Subject<'a>,
    pub commit: &'a str,
    /// Attempts after a dropped connection before giving up (each resumes where the last
    /// stopped; an attempt that made progress restores the count).
    pub retries: u32,
    pub retry_delay: Duration,
}

/// How one attempt at streaming the body ended.
enum Attempt {
    /// The connection dropped or stalled; what came is kept.
    Cut(String),
    /// The server had the file but could not serve it now (5xx, 429).
    Busy(String),
}

impl Downloader<'_> {
    /// Makes `snapshots/{commit}/{path}` a complete, verified file; returns its path.
    pub fn fetch(&self, file: &RepoFile, progress: &mut Progress) -> Result<PathBuf, Error> {
        let etag = file.etag();
        let blob = self.cache.blob_path(etag);
        if let Some(path) = self.cache.cached_file(self.commit, &file.path) {
            if file_len(&path) == Some(file.size) {
                return Ok(path);
            }
            // The blob under that link is not the file (truncated by hand, a disk error):
            // fetch it again rather than load it.
            self.cache.unlink(self.commit, &file.path);
            let _ = fs::remove_file(&blob);
        }
        let _lock = self
            .cache
            .lock_blob(etag, || progress.note(&format!("waiting for another download of {} to finish", file.path)))?;
        // Another process may have written the blob while we waited, or long ago for another
        // revision or repository file with the same contents.
        if file_len(&blob) != Some(file.size) {
            self.download_blob(file, &blob, progress)?;
        }
        self.cache.link(self.commit, &file.path, etag)
    }

    fn download_blob(&self, file: &RepoFile, blob: &Path, progress: &mut Progress) -> Result<(), Error> {
        let partial = self.cache.incomplete_path(file.etag());
        let mut have = file_len(&partial).unwrap_or(0);
        if have > file.size {
            // Longer than the file can be: not a prefix of it.
            remove(&partial)?;
            have = 0;
        }
        let dir = partial.parent().unwrap_or(Path::new("."));
        if let Some(available) = cache::free_space(dir) {
            let needed = file.size - have;
            if available < needed {
                return Err(Error::DiskFull { file: file.path.clone(), dir: dir.to_path_buf(), needed, available });
            }
        }
        let mut out =
            File::options().create(true).append(true).read(true).open(&partial).map_err(|e| io(&partial, e))?;
        let mut hash = Hasher::new(file);
        if have > 0 {
            progress.note(&format!("resuming {} at {} of {} bytes", file.path, have, file.size));
            hash_prefix(&mut out, have, &mut hash).map_err(|e| io(&partial, e))?;
        }
        progress.start_file(&file.path, file.size, have);
        let url = self.client.file_url(self.about.repo, self.commit, &file.path);
        let mut retries_left = self.retries;
        while have < file.size {
            let before = have;
            let failure = match self.attempt(&url, file, &partial, &mut out, &mut have, &mut hash, progress)? {
                None if have >= file.size => break,
                None => Attempt::Cut(format!("the server closed the connection at byte {have}")),
                Some(why) => why,
            };
            if have > before {
                retries_left = self.retries;
            }
            if retries_left == 0 {
                return Err(match failure {
                    Attempt::Cut(reason) | Attempt::Busy(reason) => {
                        Error::Interrupted { file: file.path.clone(), done: have, size: file.size, reason, partial }
                    }
                });
            }
            retries_left -= 1;
            let reason = match &failure {
                Attempt::Cut(r) | Attempt::Busy(r) => r,
            };
            progress.note(&format!("{}: {reason}; resuming at byte {have}", file.path));
            std::thread::sleep(self.retry_delay);
        }
        if have != file.size {
            remove(&partial)?;
            return Err(Error::SizeMismatch { file: file.path.clone(), expected: file.size, actual: have });
        }
        let (algo, expected, actual) = hash.finish(file);
        if actual != expected {
            remove(&partial)?;
            return Err(Error::HashMismatch { file: file.path.clone(), algo, expected, actual });
        }
        // On disk before it has its final name: a crash must not leave a short blob behind
        // a name that says it is complete.
        out.sync_all().map_err(|e| io(&partial, e))?;
        drop(out);
        fs::rename(&partial, blob).map_err(|e| io(blob, e))?;
        progress.finish_file();
        Ok(())
    }

    /// One GET, appended to the partial file from `have` on. `Ok(None)`: the body ended
    /// normally (complete or not: the caller compares sizes). `Ok(Some(..))`: a failure worth
    /// another attempt. `Err`: one that is not (the Hub said no, the disk is full, the file
    /// is longer than it should be).
    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        url: &str,
        file: &RepoFile,
        partial: &Path,
        out: &mut File,
        have: &mut u64,
        hash: &mut Hasher,
        progress: &mut Progress,
    ) -> Result<Option<Attempt>, Error> {
        let resp = match self.client.get(url, *have) {
            Ok(resp) => resp,
            // No answer at all: the link may come back; the caller retries, then reports.
            Err(Error::Network { reason, .. }) => return Ok(Some(Attempt::Cut(reason))),
            Err(e) => return Err(e),
        };
        let status = resp.status().as_u16();
        match status {
            206 => {
                let start = crate::http::header(resp.headers(), "content-range").and_then(|r| range_start(&r));
                if start != Some(*have) {
                    return Err(Error::BadResponse {
                        url: url.to_string(),
                        reason: format!("asked for bytes {have}- and got a Content-Range of {start:?}"),
                    });
                }
            }
            200 if *have > 0 => {
                // The server ignored the Range header and sends everything: start over rather
                // than append the beginning of the file to its middle.
                out.set_len(0).map_err(|e| io(partial, e))?;
                *have = 0;
                *hash = Hasher::new(file);
                progress.restart_file();
            }
            200 => {}
            416 => {
                // "Range not satisfiable": the partial file is no prefix the server knows.
                out.set_len(0).map_err(|e| io(partial, e))?;
                *have = 0;
                *hash = Hasher::new(file);
                progress.restart_file();
                return Ok(Some(Attempt::Busy("the server refused to resume (HTTP 416)".into())));
            }
            429 | 500..=599 => return Ok(Some(Attempt::Busy(format!("HTTP {status}")))),
            _ => {
                let about = Subject { repo: self.about.repo, revision: self.about.revision, path: Some(&file.path) };
                return Err(self.client.status_error(url, &resp, &about));
            }
        }
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Ok(Some(Attempt::Cut(e.to_string()))),
            };
            if *have + n as u64 > file.size {
                remove(partial)?;
                return Err(Error::SizeMismatch {
                    file: file.path.clone(),
                    expected: file.size,
                    actual: *have + n as u64,
                });
            }
            cache::write_all(out, &buf[..n], partial, &file.path, file.size - *have)?;
            hash.update(&buf[..n]);
            *have += n as u64;
            progress.advance(n as u64);
        }
    }
}

/// The hash a file is named by: sha256 of the contents for LFS files, the git blob id
/// (sha1 of `blob {size}\0` and the contents) for the others.
enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    fn new(file: &RepoFile) -> Self {
        if file.lfs_sha256.is_some() {
            Hasher::Sha256(Sha256::new())
        } else {
            let mut h = Sha1::new();
            h.update(format!("blob {}\0", file.size).as_bytes());
            Hasher::GitSha1(h)
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::GitSha1(h) => h.update(bytes),
        }
    }

    /// (algorithm, expected, actual), as lowercase hex.
    fn finish(self, file: &RepoFile) -> (&'static str, String, String) {
        match self {
            Hasher::Sha256(h) => ("sha256", file.etag().to_string(), hex(&h.finalize())),
            Hasher::GitSha1(h) => ("git blob sha1", file.blob_id.clone(), hex(&h.finalize())),
        }
    }
}

/// Feeds the `len` bytes already in the partial file to the hash, leaving the file
/// positioned at its end for appending.
fn hash_prefix(file: &mut File, len: u64, hash: &mut Hasher) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = file.read(&mut buf[..CHUNK.min(left as usize)])?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "partial file shrank"));
        }
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    file.seek(SeekFrom::End(0))?;
    Ok(())
}

/// `bytes START-END/TOTAL` -> START.
fn range_start(content_range: &str) -> Option<u64> {
    let spec = content_range.trim().strip_prefix("bytes")?.trim_start();
    spec.split('-').next()?.trim().parse().ok()
}

fn file_len(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len())
}

fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path, e)),
        _ => Ok(()),
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, e)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
    }

    #[test]
    fn git_blob_id_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let file = RepoFile {
            path: "x".into(),
            size: 6,
            blob_id: "ce013625030ba8dba906f756967f9e9ca394464a".into(),
            lfs_sha256: None,
        };
        let mut h = Hasher::new(&file);
        h.update(b"hello\n");
        let (_, expected, actual) = h.finish(&file);
        assert_eq!(expected, actual);
    }
}

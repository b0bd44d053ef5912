//! A fake Hugging Face Hub on 127.0.0.1 for tests: the revision API, `resolve/` with 302s to
//! a CDN path (or to another server), the Hub's headers, Range requests, and faults on
//! demand (cut connections, corrupt bytes, error statuses, a token requirement, silence).
//! Hand-written HTTP/1.1, one connection per request (`Connection: close`).
//!
//! Shared by the hub crate's tests and the binary's (`#[path]` include).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// What a file holds: bytes, or a block repeated up to a length (a multi-gigabyte file
/// without the memory).
#[derive(Clone)]
pub enum Content {
    Bytes(Vec<u8>),
    Repeat { block: Arc<Vec<u8>>, len: u64 },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Repeat { len, .. } => *len,
        }
    }

    /// Feeds bytes [start, end) to `f` in pieces of at most 1 MiB.
    pub fn for_each_chunk(&self, start: u64, end: u64, mut f: impl FnMut(&[u8]) -> bool) {
        match self {
            Content::Bytes(b) => {
                for c in b[start as usize..end as usize].chunks(1 << 20) {
                    if !f(c) {
                        return;
                    }
                }
            }
            Content::Repeat { block, .. } => {
                let n = block.len() as u64;
                let mut pos = start;
                while pos < end {
                    let off = (pos % n) as usize;
                    let take = ((n - off as u64).min(end - pos)) as usize;
                    if !f(&block[off..off + take]) {
                        return;
                    }
                    pos += take as u64;
                }
            }
        }
    }
}

pub struct FakeFile {
    pub path: String,
    pub content: Content,
    pub lfs: bool,
    pub sha256: String,
    pub git_sha1: String,
}

impl FakeFile {
    pub fn new(path: &str, content: Content, lfs: bool) -> FakeFile {
        let mut sha256 = Sha256::new();
        let mut git = Sha1::new();
        git.update(format!("blob {}\0", content.len()).as_bytes());
        content.for_each_chunk(0, content.len(), |c| {
            sha256.update(c);
            git.update(c);
            true
        });
        FakeFile { path: path.into(), content, lfs, sha256: hex(&sha256.finalize()), git_sha1: hex(&git.finalize()) }
    }

    /// The blob name huggingface_hub gives it.
    pub fn etag(&self) -> &str {
        if self.lfs {
            &self.sha256
        } else {
            &self.git_sha1
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.content.len() as usize);
        self.content.for_each_chunk(0, self.content.len(), |c| {
            out.extend_from_slice(c);
            true
        });
        out
    }
}

pub struct FakeRepo {
    pub id: String,
    pub commit: String,
    pub files: Vec<FakeFile>,
}

impl FakeRepo {
    pub fn file(&self, path: &str) -> &FakeFile {
        self.files.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("no {path} in the fake repo"))
    }

    /// A repository shaped like openai/gpt-oss-*: the HF layout at the root, the original
    /// under `original/`, Apple's `metal/`, and files the engine does not need. Small random
    /// contents; LFS for the weights, as on the Hub.
    pub fn gpt_oss_like(id: &str) -> FakeRepo {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut random = |n: usize| -> Content {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                v.push(seed as u8);
            }
            Content::Bytes(v)
        };
        let text = |s: &str| Content::Bytes(s.as_bytes().to_vec());
        let index = r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        let files = vec![
            FakeFile::new(".gitattributes", text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n"), false),
            FakeFile::new("README.md", text("# fake\n"), false),
            FakeFile::new("config.json", text(r#"{"model_type": "gpt_oss"}"#), false),
            FakeFile::new("generation_config.json", text("{}"), false),
            FakeFile::new("tokenizer.json", random(3000), false),
            FakeFile::new("model.safetensors.index.json", text(index), false),
            FakeFile::new("model-00001-of-00002.safetensors", random(300_000), true),
            FakeFile::new("model-00002-of-00002.safetensors", random(200_000), true),
            FakeFile::new("original/config.json", text(r#"{"num_hidden_layers": 4}"#), false),
            FakeFile::new("original/dtypes.json", text(r#"{"embedding.weight": "BF16"}"#), false),
            FakeFile::new("original/model.safetensors", random(400_000), true),
            FakeFile::new("metal/model.bin", random(100_000), true),
        ];
        FakeRepo { id: id.into(), commit: "0123456789abcdef0123456789abcdef01234567".into(), files }
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Faults to inject; change them between requests through [`FakeHub::faults`].
#[derive(Default)]
pub struct Faults {
    /// path -> (bytes of body to send before closing the connection, how many times).
    pub cut_after: HashMap<String, (u64, u32)>,
    /// Paths served with one byte flipped in the middle.
    pub corrupt: HashSet<String>,
    /// Answer every request with this status and `X-Error-Code` (if not empty).
    pub status: Option<(u16, &'static str)>,
    /// Answer Range requests with the whole file (200), as some proxies do.
    pub ignore_range: bool,
    /// The Hub's routes answer 401 unless `Authorization: Bearer` this.
    pub required_token: Option<String>,
    /// Redirect LFS files to this server (`http://127.0.0.1:port`) instead of our own `/cdn/`.
    pub cdn: Option<String>,
    /// Accept connections and say nothing for this long.
    pub stall: Option<Duration>,
}

pub struct FakeHub {
    pub url: String,
    pub repo: Arc<FakeRepo>,
    faults: Arc<Mutex<Faults>>,
    log: Arc<Mutex<Vec<Request>>>,
}

impl FakeHub {
    pub fn start(repo: FakeRepo) -> FakeHub {
        Self::start_shared(Arc::new(repo))
    }

    pub fn start_shared(repo: Arc<FakeRepo>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let hub = FakeHub { url, repo, faults: Arc::default(), log: Arc::default() };
        let (repo, faults, log) = (hub.repo.clone(), hub.faults.clone(), hub.log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repo, faults, log) = (repo.clone(), faults.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &repo, &faults, &log);
                });
            }
        });
        hub
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.log.lock().unwrap().clear();
    }
}

fn serve(stream: TcpStream, repo: &FakeRepo, faults: &Mutex<Faults>, log: &Mutex<Vec<Request>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let req = Request { method, path: target, headers };
    log.lock().unwrap().push(req.clone());
    let mut out = stream;

    let stall = faults.lock().unwrap().stall;
    if let Some(d) = stall {
        std::thread::sleep(d);
        return Ok(());
    }
    if let Some((status, code)) = faults.lock().unwrap().status {
        return respond(&mut out, status, &[("X-Error-Code", code)], b"error");
    }
    let path = req.path.split('?').next().unwrap_or("").to_string();
    let required = faults.lock().unwrap().required_token.clone();
    let authorized = required.is_none_or(|t| req.header("authorization") == Some(&format!("Bearer {t}")));

    if let Some(sha) = path.strip_prefix("/cdn/") {
        let Some(file) = repo.files.iter().find(|f| f.lfs && f.sha256 == sha) else {
            return respond(&mut out, 404, &[], b"no such blob");
        };
        return send_file(&mut out, &req, file, &[], faults);
    }
    let repo_prefix = format!("/{}/", repo.id);
    if let Some(rest) = path.strip_prefix(&format!("/api/models/{}/revision/", repo.id)) {
        if !authorized {
            return respond(&mut out, 401, &[], b"unauthorized");
        }
        let rev = decode(rest);
        if rev != "main" && rev != repo.commit {
            return respond(&mut out, 404, &[("X-Error-Code", "RevisionNotFound")], b"no such revision");
        }
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| {
                let mut v = serde_json::json!({"rfilename": f.path, "size": f.content.len(), "blobId": f.git_sha1});
                if f.lfs {
                    v["lfs"] = serde_json::json!({"size": f.content.len(), "sha256": f.sha256, "pointerSize": 134});
                }
                v
            })
            .collect();
        let body = serde_json::json!({"_id": "x", "id": repo.id, "sha": repo.commit, "siblings": siblings});
        return respond(&mut out, 200, &[("Content-Type", "application/json")], body.to_string().as_bytes());
    }
    if let Some(rest) = path.strip_prefix(&format!("/api/models/{}/tree/", repo.id)) {
        // The recursive tree listing huggingface_hub >= 1.0 asks for (`list_repo_tree`).
        let rev = decode(rest);
        if rev != "main" && rev != repo.commit {
            return respond(&mut out, 404, &[("X-Error-Code", "RevisionNotFound")], b"no such revision");
        }
        let entries: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| {
                let mut v =
                    serde_json::json!({"type": "file", "oid": f.git_sha1, "size": f.content.len(), "path": f.path});
                if f.lfs {
                    v["lfs"] = serde_json::json!({"oid": f.sha256, "size": f.content.len(), "pointerSize": 134});
                }
                v
            })
            .collect();
        let body = serde_json::Value::Array(entries).to_string();
        return respond(&mut out, 200, &[("Content-Type", "application/json")], body.as_bytes());
    }
    if path.starts_with("/api/") {
        return respond(&mut out, 404, &[("X-Error-Code", "RepoNotFound")], b"no such repository");
    }
    let Some(rest) = path.strip_prefix(&repo_prefix).and_then(|r| r.strip_prefix("resolve/")) else {
        return respond(&mut out, 404, &[("X-Error-Code", "RepoNotFound")], b"no such repository");
    };
    if !authorized {
        return respond(&mut out, 401, &[], b"unauthorized");
    }
    let (rev, file_path) = rest.split_once('/').unwrap_or((rest, ""));
    let rev = decode(rev);
    if rev != "main" && rev != repo.commit {
        return respond(&mut out, 404, &[("X-Error-Code", "RevisionNotFound")], b"no such revision");
    }
    let file_path = decode(file_path);
    let Some(file) = repo.files.iter().find(|f| f.path == file_path) else {
        return respond(&mut out, 404, &[("X-Error-Code", "EntryNotFound"), ("X-Repo-Commit", &repo.commit)], b"");
    };
    if file.lfs {
        let cdn = faults.lock().unwrap().cdn.clone().unwrap_or_default();
        let location = format!("{cdn}/cdn/{}", file.sha256);
        let etag = format!("\"{}\"", file.sha256);
        let size = file.content.len().to_string();
        let headers = [
            ("Location", location.as_str()),
            ("X-Repo-Commit", repo.commit.as_str()),
            ("X-Linked-Etag", etag.as_str()),
            ("X-Linked-Size", size.as_str()),
            ("ETag", "\"0000\""),
        ];
        return respond(&mut out, 302, &headers, b"");
    }
    let etag = format!("\"{}\"", file.git_sha1);
    send_file(&mut out, &req, file, &[("X-Repo-Commit", &repo.commit), ("ETag", &etag)], faults)
}

fn send_file(
    out: &mut TcpStream,
    req: &Request,
    file: &FakeFile,
    extra: &[(&str, &str)],
    faults: &Mutex<Faults>,
) -> std::io::Result<()> {
    let len = file.content.len();
    let (cut, corrupt, ignore_range) = {
        let mut f = faults.lock().unwrap();
        let cut = match f.cut_after.get_mut(&file.path) {
            Some((n, times)) if *times > 0 => {
                *times -= 1;
                Some(*n)
            }
            _ => None,
        };
        (cut, f.corrupt.contains(&file.path), f.ignore_range)
    };
    let from = req
        .header("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|_| !ignore_range);
    let mut headers: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    let (status, start) = match from {
        Some(n) if n >= len => return respond(out, 416, &[], b""),
        Some(n) => {
            headers.push(("Content-Range".into(), format!("bytes {n}-{}/{len}", len - 1)));
            (206, n)
        }
        None => (200, 0),
    };
    let mut head =
        format!("HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n", reason(status), len - start);
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if req.method == "HEAD" {
        return Ok(());
    }
    let stop = cut.map_or(len, |n| (start + n).min(len));
    let flip = len / 2;
    let mut pos = start;
    let mut result = Ok(());
    file.content.for_each_chunk(start, stop, |chunk| {
        let mut chunk = std::borrow::Cow::Borrowed(chunk);
        if corrupt && (pos..pos + chunk.len() as u64).contains(&flip) {
            chunk.to_mut()[(flip - pos) as usize] ^= 0x55;
        }
        pos += chunk.len() as u64;
        result = out.write_all(&chunk);
        result.is_ok()
    });
    result?;
    out.flush()?;
    if cut.is_some() {
        out.shutdown(std::net::Shutdown::Both)?;
    }
    Ok(())
}

fn respond(out: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<()> {
    let mut head =
        format!("HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n", reason(status), body.len());
    for (k, v) in headers {
        if !v.is_empty() {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()?;
    // Drain what the client may still send so that closing does not reset the connection
    // before it read the answer.
    let _ = out.shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 256];
    out.set_read_timeout(Some(Duration::from_millis(200)))?;
    while matches!(out.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Error",
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! Talking to the Hub: the repository listing, and GETs that follow the Hub's redirects to
//! its CDN by hand, so that the token goes to the Hub host only and never to the CDN.

use std::time::Duration;

use ureq::http::{HeaderMap, Response};
use ureq::{Agent, Body};

use crate::error::Error;
use crate::{RepoFile, RepoId};

/// Hops the Hub needs: a renamed repository (relative 307) then the CDN (302).
const MAX_REDIRECTS: usize = 10;

pub(crate) struct Client {
    agent: Agent,
    pub endpoint: String,
    endpoint_authority: String,
    token: Option<String>,
}

/// What the Hub's listing of one revision says.
pub(crate) struct Listing {
    pub commit: String,
    pub files: Vec<RepoFile>,
}

/// Who a request was about, to word its errors.
pub(crate) struct Subject<'a> {
    pub repo: &'a RepoId,
    pub revision: &'a str,
    /// The file, for a download; None for the listing.
    pub path: Option<&'a str>,
}

impl Client {
    pub fn new(endpoint: &str, token: Option<String>, timeout: Duration) -> Client {
        let config = Agent::config_builder()
            // Redirects are followed by hand (see `get`), and an HTTP error status is an
            // answer to word an error from, not a transport failure.
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            // Per read, not per body: a 60 GB file may take an hour, a silent peer may not.
            .timeout_per_read(Some(timeout))
            .user_agent(concat!("gptoss-hub/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: config.into(),
            endpoint: endpoint.to_string(),
            endpoint_authority: authority(endpoint).to_ascii_lowercase(),
            token,
        }
    }

    /// `GET /api/models/{repo}/revision/{revision}?blobs=true`: the commit the revision is at
    /// and every file with its size, git blob id and (for LFS files) sha256.
    pub fn listing(&self, repo: &RepoId, revision: &str) -> Result<Listing, Error> {
        let url = format!("{}/api/models/{repo}/revision/{}?blobs=true", self.endpoint, encode(revision));
        let mut resp = self.get(&url, 0)?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(self.status_error(&url, &resp, &Subject { repo, revision, path: None }));
        }
        // The listing of a large repository is some kilobytes; 64 MB is "something is wrong".
        let body = resp.body_mut().with_config().limit(64 << 20).read_to_vec().map_err(|e| network(&url, e))?;
        let info: ApiInfo = serde_json::from_slice(&body)
            .map_err(|e| Error::BadResponse { url: url.clone(), reason: format!("the listing is not JSON ({e})") })?;
        let bad = |reason: String| Error::BadResponse { url: url.clone(), reason };
        let commit = info.sha.ok_or_else(|| bad("the listing has no `sha`".into()))?;
        if !crate::cache::is_commit_hash(&commit) {
            return Err(bad(format!("`{commit}` is not a commit hash")));
        }
        let mut files = Vec::new();
        for s in info.siblings.unwrap_or_default() {
            let (size, lfs_sha256) = match (s.lfs, s.size) {
                (Some(lfs), _) => (lfs.size, Some(lfs.sha256.to_ascii_lowercase())),
                (None, Some(size)) => (size, None),
                (None, None) => return Err(bad(format!("no size for {} (the API ignored ?blobs=true)", s.rfilename))),
            };
            let blob_id = s.blob_id.ok_or_else(|| bad(format!("no blobId for {}", s.rfilename)))?;
            let file = RepoFile { path: s.rfilename.clone(), size, blob_id: blob_id.to_ascii_lowercase(), lfs_sha256 };
            files.push(file.validated().ok_or_else(|| bad(format!("unsafe file name or hash: {}", s.rfilename)))?);
        }
        Ok(Listing { commit, files })
    }

    /// The URL that serves one file of a commit.
    pub fn file_url(&self, repo: &RepoId, commit: &str, path: &str) -> String {
        let path: Vec<String> = path.split('/').map(encode).collect();
        format!("{}/{repo}/resolve/{commit}/{}", self.endpoint, path.join("/"))
    }

    /// GET, from byte `from` on when it is not 0, following redirects. The token is sent to
    /// the Hub's own host only: the CDN gets a signed URL and must not see it.
    pub fn get(&self, url: &str, from: u64) -> Result<Response<Body>, Error> {
        let mut url = url.to_string();
        for _ in 0..MAX_REDIRECTS {
            let mut req = self.agent.get(&url).header("Accept-Encoding", "identity");
            if let Some(token) = &self.token {
                if authority(&url).eq_ignore_ascii_case(&self.endpoint_authority) {
                    req = req.header("Authorization", format!("Bearer {token}"));
                }
            }
            if from > 0 {
                req = req.header("Range", format!("bytes={from}-"));
            }
            let resp = req.call().map_err(|e| network(&url, e))?;
            let location = header(resp.headers(), "location");
            match (resp.status().as_u16(), location) {
                (300..=399, Some(location)) => url = join(&url, &location),
                _ => return Ok(resp),
            }
        }
        Err(Error::BadResponse { url, reason: format!("more than {MAX_REDIRECTS} redirects") })
    }

    /// Words a non-success answer, using the Hub's `X-Error-Code` where it sent one.
    pub fn status_error(&self, url: &str, resp: &Response<Body>, about: &Subject) -> Error {
        let status = resp.status().as_u16();
        let code = header(resp.headers(), "x-error-code").unwrap_or_default();
        let (repo, revision, endpoint) = (about.repo.to_string(), about.revision.to_string(), self.endpoint.clone());
        let had_token = self.token.is_some();
        let entry = |path: Option<&str>| Error::EntryNotFound {
            repo: about.repo.to_string(),
            revision: about.revision.to_string(),
            path: path.unwrap_or_default().to_string(),
            endpoint: self.endpoint.clone(),
        };
        match (code.as_str(), status, about.path) {
            ("GatedRepo", ..) | ("", 401 | 403, _) => Error::AccessDenied { repo, endpoint, status, had_token },
            ("RevisionNotFound", ..) => Error::RevisionNotFound { repo, revision, endpoint },
            ("EntryNotFound", _, path) | ("", 404, path @ Some(_)) => entry(path),
            ("RepoNotFound", ..) | ("", 404, None) => Error::RepoNotFound { repo, revision, endpoint, had_token },
            _ => Error::Http {
                url: url.to_string(),
                status,
                message: header(resp.headers(), "x-error-message").unwrap_or_default(),
            },
        }
    }
}

/// A transport failure, worded for people: no route to the Hub is not the Hub saying no.
pub(crate) fn network(url: &str, e: ureq::Error) -> Error {
    let host = authority(url).to_string();
    let reason = match e {
        ureq::Error::HostNotFound => "the host name does not resolve (DNS)".to_string(),
        ureq::Error::ConnectionFailed => "the connection failed".to_string(),
        ureq::Error::Timeout(t) => format!("no answer in time ({t})"),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => format!("TLS failed ({e})"),
        other => return Error::BadResponse { url: url.to_string(), reason: other.to_string() },
    };
    Error::Network { host, reason }
}

pub(crate) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `host:port` of an absolute URL ("" when it has none).
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or("")
}

/// A `Location` resolved against the URL that sent it: absolute, scheme-relative (`//h/p`),
/// absolute-path (`/p`, what the Hub sends for renamed repositories) or relative.
fn join(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme = base.split_once("://").map_or("https", |(s, _)| s);
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    let origin = format!("{scheme}://{}", authority(base));
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let path = base.get(origin.len()..).unwrap_or("");
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    format!("{origin}{dir}{location}")
}

/// Percent-encodes one path segment (a revision like `refs/pr/1` becomes one segment, as
/// huggingface_hub's `quote(revision, safe="")` makes it).
pub(crate) fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct ApiInfo {
    sha: Option<String>,
    siblings: Option<Vec<Sibling>>,
}

#[derive(serde::Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(serde::Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_like_a_browser() {
        let base = "https://huggingface.co/openai/gpt-oss-20b/resolve/main/config.json?x=1";
        assert_eq!(join(base, "https://cdn.example/a?sig=1"), "https://cdn.example/a?sig=1");
        assert_eq!(join(base, "//cdn.example/a"), "https://cdn.example/a");
        assert_eq!(join(base, "/api/x"), "https://huggingface.co/api/x");
        assert_eq!(join(base, "other.json"), "https://huggingface.co/openai/gpt-oss-20b/resolve/main/other.json");
        assert_eq!(authority("http://127.0.0.1:8080/x"), "127.0.0.1:8080");
        assert_eq!(authority("https://huggingface.co"), "huggingface.co");
    }

    #[test]
    fn revisions_are_one_segment() {
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode("main"), "main");
        assert_eq!(encode("v1.0 x"), "v1.0%20x");
    }
}

//! The hub crate against a fake Hub on 127.0.0.1: what lands in the cache, what is asked
//! of the server, and what the errors say.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gptoss_hub::{Error, Hub, Layout, ProgressMode, RepoId};
use support::{FakeHub, FakeRepo};

const REPO: &str = "openai/gpt-oss-fake";

fn repo_id() -> RepoId {
    RepoId::parse(REPO).unwrap()
}

fn hub_for(server: &FakeHub, cache: &Path) -> Hub {
    Hub::new(cache)
        .endpoint(&server.url)
        .progress(ProgressMode::Quiet)
        .timeout(Duration::from_secs(5))
        .retries(3, Duration::ZERO)
}

fn start() -> (FakeHub, tempfile::TempDir) {
    (FakeHub::start(FakeRepo::gpt_oss_like(REPO)), tempfile::tempdir().unwrap())
}

fn repo_dir(cache: &Path) -> PathBuf {
    cache.join("models--openai--gpt-oss-fake")
}

const HF_FILES: [&str; 4] = [
    "config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
];
const ORIGINAL_FILES: [&str; 3] = ["original/config.json", "original/dtypes.json", "original/model.safetensors"];

/// The paths of the files the server was asked for (resolve/ and cdn/ requests).
fn fetched_paths(server: &FakeHub) -> Vec<String> {
    let repo = &server.repo;
    let mut paths: Vec<String> = server
        .requests()
        .iter()
        .filter_map(|r| {
            if let Some(sha) = r.path.strip_prefix("/cdn/") {
                return repo.files.iter().find(|f| f.sha256 == sha).map(|f| f.path.clone());
            }
            let (_, path) = r.path.split_once("/resolve/")?;
            let path = path.split_once('/')?.1;
            // LFS files go through resolve/ then cdn/: count the bytes' request only.
            let f = repo.files.iter().find(|f| f.path == path)?;
            (!f.lfs).then(|| f.path.clone())
        })
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The snapshot entry is a relative symlink to the blob, exactly as huggingface_hub makes it,
/// and the blob holds the file.
fn assert_linked(cache: &Path, server: &FakeHub, path: &str) {
    let file = server.repo.file(path);
    let link = repo_dir(cache).join("snapshots").join(&server.repo.commit).join(path);
    let target = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    let ups = "../".repeat(2 + path.matches('/').count());
    assert_eq!(target, PathBuf::from(format!("{ups}blobs/{}", file.etag())), "{path}");
    let blob = repo_dir(cache).join("blobs").join(file.etag());
    assert_eq!(std::fs::read(&blob).unwrap(), file.bytes(), "{path}");
    assert_eq!(std::fs::read(&link).unwrap(), file.bytes(), "{path}");
}

fn no_partial_files(cache: &Path) -> bool {
    std::fs::read_dir(repo_dir(cache).join("blobs"))
        .map(|d| d.flatten().all(|e| !e.file_name().to_string_lossy().ends_with(".incomplete")))
        .unwrap_or(true)
}

#[test]
fn a_download_leaves_the_cache_as_huggingface_hub_would() {
    let (server, cache) = start();
    let snap = hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    let commit = &server.repo.commit;
    assert_eq!(snap.commit, *commit);
    assert_eq!(snap.dir, repo_dir(cache.path()).join("snapshots").join(commit));
    assert_eq!(snap.model_dir, snap.dir);
    assert_eq!(std::fs::read_to_string(repo_dir(cache.path()).join("refs/main")).unwrap(), *commit);
    for path in HF_FILES {
        assert_linked(cache.path(), &server, path);
    }
    // Only the HF layout's files: no tokenizer, no original/, never metal/.
    assert_eq!(fetched_paths(&server), HF_FILES);
    assert!(!snap.dir.join("original").exists() && !snap.dir.join("metal").exists());
    assert!(!snap.dir.join("tokenizer.json").exists());
    // The listing of the commit, in huggingface_hub's trees/ format.
    let tree: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_dir(cache.path()).join(format!("trees/{commit}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(tree["format_version"], 1);
    let weights = server.repo.file("model-00001-of-00002.safetensors");
    assert_eq!(tree["files"]["model-00001-of-00002.safetensors"]["lfs_sha256"], weights.sha256.as_str());
    assert_eq!(tree["files"]["config.json"]["blob_id"], server.repo.file("config.json").git_sha1.as_str());
    assert!(cache.path().join("CACHEDIR.TAG").is_file());
    assert!(no_partial_files(cache.path()));
    // The revision went to the API; the files were fetched at the commit it named.
    let reqs = server.requests();
    assert!(reqs[0].path.starts_with(&format!("/api/models/{REPO}/revision/main")), "{:?}", reqs[0]);
    assert!(reqs.iter().filter(|r| r.path.contains("/resolve/")).all(|r| r.path.contains(commit.as_str())));
}

#[test]
fn the_original_layout_fetches_only_original_files() {
    let (server, cache) = start();
    let snap = hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Original)).unwrap();
    assert_eq!(snap.model_dir, snap.dir.join("original"));
    assert_eq!(fetched_paths(&server), ORIGINAL_FILES);
    for path in ORIGINAL_FILES {
        assert_linked(cache.path(), &server, path);
    }
    assert!(!snap.dir.join("config.json").exists());
}

#[test]
fn no_layout_given_takes_the_one_the_cache_holds() {
    let (server, cache) = start();
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Original)).unwrap();
    server.clear_requests();
    let snap = hub_for(&server, cache.path()).fetch(&repo_id(), "main", None).unwrap();
    assert_eq!(snap.layout, Layout::Original);
    assert!(fetched_paths(&server).is_empty());
    // With nothing cached, the HF layout.
    let other = tempfile::tempdir().unwrap();
    assert_eq!(hub_for(&server, other.path()).fetch(&repo_id(), "main", None).unwrap().layout, Layout::Hf);
}

#[test]
fn a_cut_connection_is_resumed_with_a_range_request() {
    let (server, cache) = start();
    let path = "model-00001-of-00002.safetensors";
    server.faults().cut_after.insert(path.into(), (100_000, 1));
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    let sha = &server.repo.file(path).sha256;
    let gets: Vec<_> = server.requests().into_iter().filter(|r| r.path == format!("/cdn/{sha}")).collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].header("range"), None);
    assert_eq!(gets[1].header("range"), Some("bytes=100000-"));
    assert_linked(cache.path(), &server, path);
    assert!(no_partial_files(cache.path()));
}

#[test]
fn an_interrupted_run_is_resumed_by_the_next() {
    let (server, cache) = start();
    let path = "model-00002-of-00002.safetensors";
    server.faults().cut_after.insert(path.into(), (123_456, 1));
    let err = hub_for(&server, cache.path())
        .retries(0, Duration::ZERO)
        .fetch(&repo_id(), "main", Some(Layout::Hf))
        .unwrap_err();
    assert!(matches!(err, Error::Interrupted { done: 123_456, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(path) && msg.contains("run the command again"), "{msg}");
    let file = server.repo.file(path);
    let partial = repo_dir(cache.path()).join("blobs").join(format!("{}.incomplete", file.etag()));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 123_456);
    assert!(!repo_dir(cache.path()).join("snapshots").join(&server.repo.commit).join(path).exists());

    server.clear_requests();
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    let get = server.requests().into_iter().find(|r| r.path == format!("/cdn/{}", file.sha256)).unwrap();
    assert_eq!(get.header("range"), Some("bytes=123456-"));
    assert_linked(cache.path(), &server, path);
    assert!(!partial.exists());
}

#[test]
fn a_server_that_ignores_range_restarts_the_file() {
    let (server, cache) = start();
    let path = "model-00002-of-00002.safetensors";
    let file = server.repo.file(path);
    // A partial file from an earlier run, with a wrong tail: a 200 replaces it whole.
    let blobs = repo_dir(cache.path()).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut partial = file.bytes()[..50_000].to_vec();
    partial[49_999] ^= 1;
    std::fs::write(blobs.join(format!("{}.incomplete", file.etag())), partial).unwrap();
    server.faults().ignore_range = true;
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    let get = server.requests().into_iter().find(|r| r.path == format!("/cdn/{}", file.sha256)).unwrap();
    assert_eq!(get.header("range"), Some("bytes=50000-"));
    assert_linked(cache.path(), &server, path);
}

#[test]
fn corrupt_bytes_are_rejected_and_not_kept() {
    let (server, cache) = start();
    let path = "model-00002-of-00002.safetensors";
    let file = server.repo.file(path);
    server.faults().corrupt.insert(path.into());
    let err = hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::HashMismatch { .. }), "{msg}");
    assert!(msg.contains(path) && msg.contains(&file.sha256) && msg.contains("sha256"), "{msg}");
    let blobs = repo_dir(cache.path()).join("blobs");
    assert!(!blobs.join(file.etag()).exists());
    assert!(no_partial_files(cache.path()));
    assert!(std::fs::symlink_metadata(repo_dir(cache.path()).join("snapshots").join(&server.repo.commit).join(path))
        .is_err());

    // Offline, the file is missing; online again, it is downloaded anew.
    let offline = hub_for(&server, cache.path()).offline(true).fetch(&repo_id(), "main", Some(Layout::Hf));
    assert!(matches!(offline, Err(Error::NotCached { ref missing, .. }) if missing == &[path.to_string()]));
    server.faults().corrupt.clear();
    server.clear_requests();
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    assert_eq!(fetched_paths(&server), [path]);
    assert_linked(cache.path(), &server, path);
}

#[test]
fn a_corrupt_small_file_is_caught_by_its_git_blob_id() {
    let (server, cache) = start();
    server.faults().corrupt.insert("model.safetensors.index.json".into());
    let err = hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap_err();
    assert!(err.to_string().contains("git blob sha1"), "{err}");
}

#[test]
fn missing_repositories_and_revisions_say_so() {
    let (server, cache) = start();
    let hub = hub_for(&server, cache.path());
    let err = hub.fetch(&RepoId::parse("nobody/nothing").unwrap(), "main", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "repository nobody/nothing (revision main) not found on {} (if it is private, set HF_TOKEN: \
             `export HF_TOKEN=hf_...` or `huggingface-cli login`)",
            server.url
        )
    );
    let err = hub.fetch(&repo_id(), "v9", None).unwrap_err();
    assert!(matches!(err, Error::RevisionNotFound { .. }), "{err}");
    assert!(err.to_string().contains("no revision `v9`"), "{err}");
    // Nothing half-made in the cache for either.
    assert!(!repo_dir(cache.path()).join("refs").exists());
}

#[test]
fn hub_error_codes_are_read() {
    let (server, cache) = start();
    server.faults().status = Some((404, "EntryNotFound"));
    let err = hub_for(&server, cache.path()).fetch(&repo_id(), "main", None).unwrap_err();
    assert!(matches!(err, Error::EntryNotFound { .. }), "{err}");
    server.faults().status = Some((403, "GatedRepo"));
    let err = hub_for(&server, cache.path()).fetch(&repo_id(), "main", None).unwrap_err();
    assert!(matches!(err, Error::AccessDenied { status: 403, .. }), "{err}");
    server.faults().status = Some((500, ""));
    let err = hub_for(&server, cache.path()).fetch(&repo_id(), "main", None).unwrap_err();
    assert!(matches!(err, Error::Http { status: 500, .. }), "{err}");
    // A Hub that is down is no reason not to use a complete snapshot.
    server.faults().status = None;
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", None).unwrap();
    server.faults().status = Some((503, ""));
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", None).unwrap();
}

#[test]
fn a_gated_repository_asks_for_a_token() {
    let (server, cache) = start();
    server.faults().required_token = Some("hf_secret".into());
    let err = hub_for(&server, cache.path()).fetch(&repo_id(), "main", None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::AccessDenied { status: 401, had_token: false, .. }), "{msg}");
    assert!(msg.contains("HF_TOKEN") && msg.contains("huggingface-cli login"), "{msg}");
    assert!(msg.contains(&format!("{}/{REPO}", server.url)), "the model page: {msg}");

    let wrong = hub_for(&server, cache.path()).token(Some("hf_wrong".into())).fetch(&repo_id(), "main", None);
    assert!(matches!(wrong, Err(Error::AccessDenied { had_token: true, .. })));

    hub_for(&server, cache.path()).token(Some("hf_secret".into())).fetch(&repo_id(), "main", None).unwrap();
    assert!(server.requests().iter().any(|r| r.header("authorization") == Some("Bearer hf_secret")));
}

#[test]
fn the_token_does_not_follow_a_redirect_to_another_host() {
    let repo = Arc::new(FakeRepo::gpt_oss_like(REPO));
    let (hub_server, cdn) = (FakeHub::start_shared(repo.clone()), FakeHub::start_shared(repo));
    hub_server.faults().cdn = Some(cdn.url.clone());
    hub_server.faults().required_token = Some("hf_secret".into());
    let cache = tempfile::tempdir().unwrap();
    let snap = hub_for(&hub_server, cache.path())
        .token(Some("hf_secret".into()))
        .fetch(&repo_id(), "main", Some(Layout::Hf))
        .unwrap();
    assert!(snap.dir.join("model-00001-of-00002.safetensors").is_file());
    let to_hub = hub_server.requests();
    let to_cdn = cdn.requests();
    assert_eq!(to_cdn.len(), 2, "both LFS files come from the other host: {to_cdn:?}");
    assert!(to_hub.iter().all(|r| r.header("authorization") == Some("Bearer hf_secret")), "{to_hub:?}");
    assert!(to_cdn.iter().all(|r| r.header("authorization").is_none()), "{to_cdn:?}");
}

#[test]
fn offline_is_served_from_the_cache_without_a_request() {
    let (server, cache) = start();
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    server.clear_requests();
    let hub = hub_for(&server, cache.path()).offline(true);
    let snap = hub.fetch(&repo_id(), "main", None).unwrap();
    assert_eq!((snap.layout, snap.commit.as_str(), snap.downloaded), (Layout::Hf, server.repo.commit.as_str(), 0));
    let mut files = snap.files.clone();
    files.sort();
    assert_eq!(files, HF_FILES);
    // A commit hash needs no ref.
    hub.fetch(&repo_id(), &server.repo.commit, Some(Layout::Hf)).unwrap();
    // Online with a commit hash that is complete in the cache: nothing to ask either.
    hub_for(&server, cache.path()).fetch(&repo_id(), &server.repo.commit, Some(Layout::Hf)).unwrap();
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // What is not there is named.
    let err = hub.fetch(&repo_id(), "main", Some(Layout::Original)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NotCached { .. }), "{msg}");
    for path in ORIGINAL_FILES {
        assert!(msg.contains(path), "{msg}");
    }
    let err = hub.fetch(&repo_id(), "v2", None).unwrap_err();
    assert!(err.to_string().contains("refs/v2"), "{err}");
    assert!(server.requests().is_empty());
}

#[test]
fn the_cache_status_says_what_is_there() {
    let (server, cache) = start();
    let hub = hub_for(&server, cache.path());
    let status = hub.status(&repo_id(), "main", Layout::Hf);
    assert!(!status.complete() && status.commit.is_none());
    hub.fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    let status = hub.status(&repo_id(), "main", Layout::Hf);
    assert!(status.complete() && status.listing_known, "{status:?}");
    assert_eq!(status.present.len(), 4);
    let status = hub.status(&repo_id(), "main", Layout::Original);
    assert_eq!(status.missing, ORIGINAL_FILES);
}

/// A cache as `huggingface-cli download` (huggingface_hub 0.x, no trees/ listing) leaves it.
fn populate_by_hand(cache: &Path, repo: &FakeRepo, paths: &[&str]) {
    let dir = repo_dir(cache);
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), &repo.commit).unwrap();
    for path in paths {
        let file = repo.file(path);
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::write(dir.join("blobs").join(file.etag()), file.bytes()).unwrap();
        let link = dir.join("snapshots").join(&repo.commit).join(path);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let target = format!("{}blobs/{}", "../".repeat(2 + path.matches('/').count()), file.etag());
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
}

#[test]
fn a_cache_filled_by_huggingface_cli_is_reused() {
    let (server, cache) = start();
    populate_by_hand(cache.path(), &server.repo, &HF_FILES);
    populate_by_hand(cache.path(), &server.repo, &["tokenizer.json", "README.md"]);
    // Offline and by commit: not a single request.
    let snap = hub_for(&server, cache.path()).offline(true).fetch(&repo_id(), "main", None).unwrap();
    assert_eq!(snap.layout, Layout::Hf);
    hub_for(&server, cache.path()).fetch(&repo_id(), &server.repo.commit, None).unwrap();
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    // Online by branch: the Hub is asked what `main` is, and no file is downloaded.
    let snap = hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    assert_eq!(snap.downloaded, 0);
    assert_eq!(server.requests().len(), 1);
    assert!(fetched_paths(&server).is_empty());

    // Without the index, the shards are not known: the snapshot's safetensors stand in.
    let status = hub_for(&server, tempfile::tempdir().unwrap().path()).status(&repo_id(), "main", Layout::Hf);
    assert!(!status.complete());
}

#[test]
fn a_half_filled_hand_made_cache_names_what_is_missing_offline() {
    let (server, cache) = start();
    populate_by_hand(
        cache.path(),
        &server.repo,
        &["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"],
    );
    let err = hub_for(&server, cache.path()).offline(true).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap_err();
    assert!(
        matches!(&err, Error::NotCached { missing, .. } if missing == &["model-00002-of-00002.safetensors"]),
        "{err}"
    );
    assert!(err.to_string().contains("without --offline"), "{err}");
}

#[test]
fn a_silent_server_times_out() {
    let (server, cache) = start();
    server.faults().stall = Some(Duration::from_secs(10));
    let t0 = Instant::now();
    let err =
        hub_for(&server, cache.path()).timeout(Duration::from_millis(300)).fetch(&repo_id(), "main", None).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert!(err.is_network(), "{err}");
    assert!(err.to_string().contains("--offline"), "{err}");
}

#[test]
fn no_network_says_so_and_falls_back_to_a_complete_cache() {
    let (server, cache) = start();
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let hub = Hub::new(cache.path()).endpoint(&dead).progress(ProgressMode::Quiet).retries(0, Duration::ZERO);
    let err = hub.fetch(&repo_id(), "main", None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot reach 127.0.0.1") && msg.contains("connection refused"), "{msg}");
    assert!(msg.contains("--offline"), "{msg}");

    hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    let snap = hub.fetch(&repo_id(), "main", None).unwrap();
    assert_eq!(snap.commit, server.repo.commit);
}

#[test]
fn a_blob_shared_with_another_file_is_not_downloaded_twice() {
    let (server, cache) = start();
    let file = server.repo.file("model-00001-of-00002.safetensors");
    let blobs = repo_dir(cache.path()).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(file.etag()), file.bytes()).unwrap();
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    assert!(!fetched_paths(&server).contains(&file.path));
    assert_linked(cache.path(), &server, &file.path);
}

#[test]
fn a_truncated_blob_behind_a_link_is_fetched_again() {
    let (server, cache) = start();
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    let file = server.repo.file("model-00002-of-00002.safetensors");
    let blob = repo_dir(cache.path()).join("blobs").join(file.etag());
    std::fs::write(&blob, &file.bytes()[..10]).unwrap();
    server.clear_requests();
    hub_for(&server, cache.path()).fetch(&repo_id(), "main", Some(Layout::Hf)).unwrap();
    assert_eq!(fetched_paths(&server), [file.path.as_str()]);
    assert_linked(cache.path(), &server, &file.path);
}

#[test]
fn progress_lines_do_not_disturb_the_download() {
    let (server, cache) = start();
    let snap = hub_for(&server, cache.path())
        .progress(ProgressMode::Lines)
        .fetch(&repo_id(), "main", Some(Layout::Original))
        .unwrap();
    assert_eq!(snap.downloaded, ORIGINAL_FILES.iter().map(|p| server.repo.file(p).content.len()).sum::<u64>());
}

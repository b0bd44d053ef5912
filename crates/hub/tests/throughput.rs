//! Download throughput against the fake Hub on loopback, next to what the machine can do
//! without us: read the same bytes off the socket and drop them, hash them, write them to
//! disk like dd (and fsync, as we do). Ignored by default (it writes GBs):
//!
//! ```sh
//! cargo test -p gptoss-hub --test throughput -- --ignored --nocapture
//! ```
//!
//! `GPTOSS_HUB_BENCH_MB` sets the size (default 2048 MiB), `GPTOSS_HUB_BENCH_DIR` where the
//! files go (default the temp folder).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gptoss_hub::{Hub, Layout, ProgressMode, RepoId};
use sha2::{Digest, Sha256};
use support::{Content, FakeFile, FakeHub, FakeRepo};

const MIB: u64 = 1 << 20;

fn mb_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e6
}

#[test]
#[ignore = "writes gigabytes; run by hand for the figures"]
fn download_throughput() {
    let size = std::env::var("GPTOSS_HUB_BENCH_MB").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(2048) * MIB;
    let dir = std::env::var_os("GPTOSS_HUB_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let work = tempfile::tempdir_in(&dir).unwrap();

    // 1 MiB of noise repeated: incompressible enough for a disk, free to generate.
    let mut seed = 0x2545f4914f6cdd1du64;
    let block: Vec<u8> = (0..MIB)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let content = Content::Repeat { block: Arc::new(block.clone()), len: size };
    let t = Instant::now();
    let weights = FakeFile::new("model.safetensors", content, true);
    let hash_time = t.elapsed();
    let repo = FakeRepo {
        id: "bench/big".into(),
        commit: "00000000000000000000000000000000000000aa".into(),
        files: vec![FakeFile::new("config.json", Content::Bytes(b"{}".to_vec()), false), weights],
    };
    let sha = repo.files[1].sha256.clone();
    let server = FakeHub::start(repo);

    // The socket alone: what the server and loopback deliver to a reader that keeps nothing.
    let t = Instant::now();
    let addr = server.url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).unwrap();
    write!(conn, "GET /cdn/{sha} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut got = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => panic!("{e}"),
        }
    }
    let socket_time = t.elapsed();
    assert!(got > size);

    // dd: the same number of bytes written in 1 MiB pieces, then fsync.
    let path = work.path().join("dd.bin");
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..size / MIB {
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    let dd_time = t.elapsed();
    drop(f);
    std::fs::remove_file(&path).unwrap();

    // Ours: listing, redirect, stream with sha256, write, fsync, rename, link.
    let cache = work.path().join("cache");
    let hub = Hub::new(&cache).endpoint(&server.url).progress(ProgressMode::Quiet);
    let t = Instant::now();
    let snap = hub.fetch(&RepoId::parse("bench/big").unwrap(), "main", Some(Layout::Hf)).unwrap();
    let ours_time = t.elapsed();
    assert_eq!(std::fs::metadata(snap.dir.join("model.safetensors")).unwrap().len(), size);

    // sha256 alone, in memory, on this CPU.
    let t = Instant::now();
    let mut h = Sha256::new();
    for _ in 0..(size / MIB).min(1024) {
        h.update(&block);
    }
    let _ = h.finalize();
    let sha_rate = mb_s((size / MIB).min(1024) * MIB, t.elapsed());

    eprintln!("{} MiB file, in {}", size / MIB, work.path().display());
    eprintln!("  server-side sha256 of the file   {:8.1} MB/s", mb_s(size, hash_time));
    eprintln!("  sha256 in memory                 {sha_rate:8.1} MB/s");
    eprintln!("  socket only (read and drop)      {:8.1} MB/s", mb_s(size, socket_time));
    eprintln!("  disk write + fsync (dd-like)     {:8.1} MB/s", mb_s(size, dd_time));
    eprintln!(
        "  gptoss-hub fetch                 {:8.1} MB/s  ({:.2} s)",
        mb_s(size, ours_time),
        ours_time.as_secs_f64()
    );
}

//! Golden files pin the on-disk format: a repository written by format
//! version 1 must stay readable by every later tiervault, and the plaintext
//! encodings must not change by accident.
//!
//! `tests/golden/v1/repo` is a real repository (password `golden`) and
//! `manifest.json` says what it holds; `encodings.txt` holds the exact bytes
//! of each plaintext structure for fixed inputs.
//!
//! Every `tests/golden/v*/repo` is read by every later version. To add one
//! on purpose (only together with a format version bump and a reader for
//! the old version): `TIERVAULT_UPDATE_GOLDEN=1 cargo test --test golden`
//! writes `tests/golden/v<FORMAT_VERSION>/`, and refuses to overwrite an
//! existing directory; commit it and leave the older ones as they are.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use tiervault::format::chunker::Chunker;
use tiervault::format::crypto::Keys;
use tiervault::format::revision::{Revision, RevisionStats};
use tiervault::format::tree::{encode_tree, Body, Meta, Node, NodeKind, Segment, Timestamp};
use tiervault::format::{indexfile, pack, BlobEntry, BlobId, BlobType};

const PASSWORD: &str = "golden";

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The golden directory of the format this build writes.
fn golden_dir() -> PathBuf {
    golden_root().join(format!("v{}", tiervault::format::FORMAT_VERSION))
}

fn updating() -> bool {
    std::env::var_os("TIERVAULT_UPDATE_GOLDEN").is_some()
}

fn tv(repo: &Path, cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tiervault"));
    c.arg("-r")
        .arg(repo)
        .env("TIERVAULT_CACHE_DIR", cache)
        .env("TIERVAULT_PASSWORD", PASSWORD);
    c
}

/// What the golden revision must contain, relative to its backup path.
fn manifest_of(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = hex::encode(p.strip_prefix(root).unwrap().as_os_str().as_bytes());
            let desc = if m.is_dir() {
                stack.push(p.clone());
                format!(
                    "dir {:o} {}.{}",
                    m.mode() & 0o7777,
                    m.mtime(),
                    m.mtime_nsec()
                )
            } else if m.file_type().is_symlink() {
                format!(
                    "symlink {}",
                    hex::encode(fs::read_link(&p).unwrap().as_os_str().as_bytes())
                )
            } else {
                let data = fs::read(&p).unwrap();
                format!(
                    "file {:o} {} {}.{} {} nlink={}",
                    m.mode() & 0o7777,
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    blake3::hash(&data).to_hex(),
                    m.nlink()
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

fn build_source(src: &Path) {
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("hello.txt"), "hello, golden world\n").unwrap();
    fs::write(src.join("dir/compressible"), "abc".repeat(100_000)).unwrap();
    let mut rnd = vec![0u8; 1_500_000];
    blake3::Hasher::new()
        .update(b"golden data")
        .finalize_xof()
        .fill(&mut rnd);
    fs::write(src.join("dir/random"), &rnd).unwrap();
    fs::hard_link(src.join("hello.txt"), src.join("dir/hardlink")).unwrap();
    std::os::unix::fs::symlink("../hello.txt", src.join("dir/link")).unwrap();
    fs::write(
        src.join(std::ffi::OsStr::from_bytes(b"name-\xff")),
        "not utf-8",
    )
    .unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(3 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 1 << 20).unwrap();
    for (i, p) in [
        "hello.txt",
        "dir/compressible",
        "dir/random",
        "sparse",
        "dir",
    ]
    .iter()
    .enumerate()
    {
        common::tree::set_times(
            &src.join(p),
            (1_000_000_000, 0),
            (-100_000 * i as i64, 123_456_789),
        );
    }
}

#[test]
fn every_golden_repository_stays_readable() {
    if updating() {
        let dir = golden_dir();
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            !dir.join("repo").exists(),
            "{} exists: golden repositories are never rewritten",
            dir.display()
        );
        let src = tmp.path().join("golden-src");
        build_source(&src);
        let repo = dir.join("repo");
        fs::create_dir_all(&dir).unwrap();
        let cache = tmp.path().join("gen-cache");
        assert!(tv(&repo, &cache)
            .args(["init", "--kdf-memory", "1024", "--kdf-iterations", "1"])
            .status()
            .unwrap()
            .success());
        assert!(tv(&repo, &cache)
            .args(["backup"])
            .arg(&src)
            .status()
            .unwrap()
            .success());
        let m = serde_json::to_string_pretty(&manifest_of(&src)).unwrap();
        fs::write(dir.join("manifest.json"), m + "\n").unwrap();
    }
    let mut versions: Vec<PathBuf> = fs::read_dir(golden_root())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    versions.sort();
    assert!(
        !versions.is_empty(),
        "no golden repositories; see this file's docs"
    );
    for dir in versions {
        read_golden(&dir);
    }
}

fn read_golden(dir: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = dir.join("repo");
    assert!(
        repo.join("config").exists(),
        "golden repository missing; see this file's docs"
    );
    let cache = tmp.path().join("cache");
    let out = tv(&repo, &cache)
        .args(["--json", "revisions"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(revs.as_array().unwrap().len(), 1);
    let path = revs[0]["paths"][0].as_str().unwrap().to_string();
    let dst = tmp.path().join("restored");
    let out = tv(&repo, &cache)
        .args(["restore", &format!("latest:{path}"), "--target"])
        .arg(&dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: BTreeMap<String, String> =
        serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest_of(&dst), want);
    assert_eq!(
        common::tree::data_map(&dst.join("sparse")).len(),
        1,
        "sparse file lost its holes"
    );
    let out = tv(&repo, &cache)
        .args(["check", "--read-data"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn id(b: u8) -> BlobId {
    BlobId([b; 32])
}

/// Fixed inputs for every plaintext encoding.
fn encodings() -> String {
    let mut lines = Vec::new();
    let keys = Keys::from_master([42; 32], true);
    lines.push(format!("blob_id(\"golden\") {}", keys.blob_id(b"golden")));
    let mut data = vec![0u8; 9 << 20];
    blake3::Hasher::new()
        .update(b"chunker")
        .finalize_xof()
        .fill(&mut data);
    let cuts = Chunker::new(keys.gear_seed()).split(&data);
    lines.push(format!("chunker cuts {cuts:?}"));
    let meta = Meta {
        mode: 0o4755,
        uid: 1000,
        gid: 100,
        user: b"alice".to_vec(),
        group: b"users".to_vec(),
        mtime: Timestamp { sec: -5, nsec: 7 },
        atime: Timestamp {
            sec: 4_102_444_800,
            nsec: 999_999_999,
        },
        ctime: Timestamp {
            sec: 1_700_000_000,
            nsec: 0,
        },
        size: 10,
        inode: 1234,
        device: 2049,
        nlink: 2,
        rdev: 0,
        xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
    };
    let mut nodes = vec![
        Node {
            name: b"f\xff".to_vec(),
            kind: NodeKind::File,
            meta: meta.clone(),
            body: Body::File(vec![
                Segment::Data { id: id(1), len: 4 },
                Segment::Hole { len: 6 },
            ]),
        },
        Node {
            name: b"d".to_vec(),
            kind: NodeKind::Dir,
            meta: Meta {
                size: 0,
                ..meta.clone()
            },
            body: Body::Dir(id(2)),
        },
        Node {
            name: b"l".to_vec(),
            kind: NodeKind::Symlink,
            meta: Meta {
                size: 1,
                ..meta.clone()
            },
            body: Body::Symlink(b"f".to_vec()),
        },
        Node {
            name: b"c".to_vec(),
            kind: NodeKind::CharDev,
            meta: Meta {
                size: 0,
                rdev: 259,
                ..meta
            },
            body: Body::Special,
        },
    ];
    lines.push(format!("tree {}", hex::encode(encode_tree(&mut nodes))));
    let entries = vec![
        BlobEntry {
            id: id(3),
            kind: BlobType::Data,
            compressed: true,
            offset: 8,
            stored_len: 100,
            raw_len: 200,
        },
        BlobEntry {
            id: id(4),
            kind: BlobType::Tree,
            compressed: false,
            offset: 108,
            stored_len: 50,
            raw_len: 10,
        },
    ];
    lines.push(format!(
        "pack header {}",
        hex::encode(pack::encode_entries(&entries))
    ));
    lines.push(format!(
        "index {}",
        hex::encode(indexfile::encode(&[indexfile::PackIndex {
            pack: id(5),
            pack_len: 170,
            blobs: entries
        }]))
    ));
    let rev = Revision {
        time: Timestamp {
            sec: 1_763_719_200,
            nsec: 5,
        },
        end_time: Timestamp {
            sec: 1_763_719_260,
            nsec: 6,
        },
        host: "host".into(),
        user: "root".into(),
        paths: vec![b"/home/a".to_vec()],
        tags: vec!["daily".into()],
        tree: id(6),
        parent: Some(id(7)),
        program: "tiervault 0.1.0".into(),
        stats: RevisionStats {
            files: 1,
            dirs: 2,
            bytes: 3,
            bytes_added: 4,
            blobs_added: 5,
            errors: 0,
        },
    };
    lines.push(format!("revision {}", hex::encode(rev.encode())));
    lines.join("\n") + "\n"
}

#[test]
fn plaintext_encodings_are_pinned() {
    let path = golden_dir().join("encodings.txt");
    let now = encodings();
    if updating() && !path.exists() {
        fs::create_dir_all(golden_dir()).unwrap();
        fs::write(&path, &now).unwrap();
    }
    let want = fs::read_to_string(&path).expect("golden encodings missing; see this file's docs");
    for (a, b) in want.lines().zip(now.lines()) {
        assert_eq!(a, b, "the on-disk format changed");
    }
    assert_eq!(want.lines().count(), now.lines().count());
}

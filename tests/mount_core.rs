//! The mount's core without a kernel, against a model: reads at random
//! offsets and sizes must equal the source file's bytes, and
//! SEEK_DATA/SEEK_HOLE must agree with the source's holes.

mod common;

use proptest::prelude::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tiervault::backup::{self, BackupOptions};
use tiervault::format::crypto::KdfParams;
use tiervault::mount::core::{FsCore, ROOT};
use tiervault::repo::Repository;
use tiervault::tier::local::LocalTier;

struct Fixture {
    _dir: tempfile::TempDir,
    core: FsCore,
    ino: u64,
    model: Vec<u8>,
    /// The source's data regions, as its file system reports them.
    data: Vec<(u64, u64)>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Data, a hole, data across several chunks, a trailing hole.
    let f = fs::File::create(src.join("f")).unwrap();
    let a = common::random_bytes(300_000, 1);
    let b = common::random_bytes(5 << 20, 2);
    f.write_all_at(&a, 0).unwrap();
    f.write_all_at(&b, 4 << 20).unwrap();
    f.set_len(16 << 20).unwrap();
    let mut model = vec![0u8; 16 << 20];
    model[..a.len()].copy_from_slice(&a);
    model[4 << 20..(4 << 20) + b.len()].copy_from_slice(&b);
    let data = common::tree::data_map(&src.join("f"))
        .into_iter()
        .map(|(o, l)| (o as u64, l as u64))
        .collect();

    let kdf = KdfParams {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };
    let repo = Repository::init(
        Box::new(LocalTier::new(dir.path().join("repo"))),
        Some(b"pw"),
        kdf,
        &dir.path().join("cache"),
    )
    .unwrap();
    let repo = Arc::new(repo);
    let opts = BackupOptions {
        paths: vec![src.clone()],
        readers: 2,
        ..BackupOptions::default()
    };
    backup::run(repo.clone(), &opts).unwrap();

    let core = FsCore::new(repo, 8 << 20);
    let names: Vec<Vec<u8>> = core.list(ROOT).unwrap().into_iter().map(|e| e.2).collect();
    let want: Vec<&[u8]> = vec![b"latest", b"revisions", b"by-host", b"by-tag", b"history"];
    assert_eq!(names, want);
    // Walk revisions/<only>/<src components>/f.
    let mut ino = core.lookup(ROOT, b"revisions").unwrap().ino;
    let rev = core.list(ino).unwrap();
    assert_eq!(rev.len(), 1);
    ino = rev[0].0;
    for comp in src.strip_prefix("/").unwrap().components() {
        ino = core
            .lookup(ino, comp.as_os_str().as_encoded_bytes())
            .unwrap()
            .ino;
    }
    let ino = core.lookup(ino, b"f").unwrap().ino;
    Fixture {
        _dir: dir,
        core,
        ino,
        model,
        data,
    }
}

#[test]
fn attributes_and_errors() {
    let fx = fixture();
    let a = fx.core.getattr(fx.ino).unwrap();
    assert_eq!(a.size, 16 << 20);
    let stored: u64 = fx.data.iter().map(|(_, l)| l).sum();
    assert_eq!(a.blocks, stored.div_ceil(512));
    assert_eq!(
        fx.core.lookup(ROOT, b"nope").unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(fx.core.readlink(fx.ino).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(fx.core.list(fx.ino).unwrap_err().errno(), libc::ENOTDIR);
    assert!(fx
        .core
        .readlink(fx.core.lookup(ROOT, b"latest").unwrap().ino)
        .unwrap()
        .starts_with(b"revisions/"));
    // Inode numbers are stable: the same path gives the same number.
    let again = fx.core.lookup(ROOT, b"revisions").unwrap().ino;
    assert_eq!(again, fx.core.lookup(ROOT, b"revisions").unwrap().ino);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn reads_and_seeks_match_the_model(ops in prop::collection::vec((0u64..17 << 20, 1usize..(2 << 20)), 1..20)) {
        thread_local!(static FX: Fixture = fixture());
        FX.with(|fx| {
            let fh = fx.core.open(fx.ino).unwrap();
            for (off, len) in ops {
                let got = fx.core.read(fh, off, len).unwrap();
                let lo = (off as usize).min(fx.model.len());
                let hi = (off as usize + len).min(fx.model.len());
                prop_assert_eq!(&got[..], &fx.model[lo..hi]);
                // The model's answers from the source's data map.
                let size = fx.model.len() as u64;
                let data = fx.data.iter().find(|(o, l)| o + l > off).map(|(o, _)| (*o).max(off));
                let hole = fx.data.iter().find(|(o, l)| *o <= off && off < o + l).map_or(off, |(o, l)| o + l).min(size);
                if off < size {
                    prop_assert_eq!(fx.core.seek(fh, off, libc::SEEK_DATA).ok(), data);
                    prop_assert_eq!(fx.core.seek(fh, off, libc::SEEK_HOLE).ok(), Some(hole));
                } else {
                    prop_assert_eq!(fx.core.seek(fh, off, libc::SEEK_DATA).unwrap_err().errno(), libc::ENXIO);
                }
            }
            fx.core.release(fh);
            Ok(())
        })?;
    }
}

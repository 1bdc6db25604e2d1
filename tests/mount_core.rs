//! The mount's core without a kernel, against a model: reads at random
//! offsets and sizes must equal the source file's bytes, and
//! SEEK_DATA/SEEK_HOLE must agree with the source's holes.

mod common;

use proptest::prelude::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tiervault::backup::{self, BackupOptions};
use tiervault::format::crypto::KdfParams;
use tiervault::mount::core::{CoreOptions, FsCore, ROOT};
use tiervault::repo::cache::DiskCache;
use tiervault::repo::Repository;
use tiervault::tier::local::LocalTier;

struct Fixture {
    dir: tempfile::TempDir,
    core: FsCore,
    /// The directory holding `f` and the small files.
    parent: u64,
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
    for i in 0..40 {
        fs::write(src.join(format!("small-{i:02}")), format!("small file {i}")).unwrap();
    }
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

    let core = FsCore::new(repo, options(8 << 20));
    let names: Vec<Vec<u8>> = core.list(ROOT).unwrap().into_iter().map(|e| e.2).collect();
    let want: Vec<&[u8]> = vec![b"latest", b"revisions", b"by-host", b"by-tag", b"history"];
    assert_eq!(names, want);
    // Walk revisions/<only>/<src components>/f.
    let rev = core.lookup(ROOT, b"revisions").unwrap().ino;
    assert_eq!(core.list(rev).unwrap().len(), 1);
    let parent = walk(&core, &src);
    let ino = core.lookup(parent, b"f").unwrap().ino;
    Fixture {
        dir,
        core,
        parent,
        ino,
        model,
        data,
    }
}

fn options(chunk_cache: usize) -> CoreOptions {
    CoreOptions {
        chunk_cache,
        idle_inodes: 4,
        // Past the file's hole, so the read-ahead test sees data chunks.
        read_ahead: 8 << 20,
        ..CoreOptions::default()
    }
}

/// The mount's path of the source directory, under `revisions/<only>/`.
fn walk(core: &FsCore, src: &std::path::Path) -> u64 {
    let rev = core.lookup(ROOT, b"revisions").unwrap().ino;
    let mut ino = core.list(rev).unwrap()[0].0;
    for comp in src.strip_prefix("/").unwrap().components() {
        ino = core
            .lookup(ino, comp.as_os_str().as_encoded_bytes())
            .unwrap()
            .ino;
    }
    ino
}

#[test]
fn forgotten_inodes_are_dropped_and_come_back_with_their_numbers() {
    let fx = fixture();
    let names: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("small-{i:02}").into_bytes())
        .collect();
    let mut first = Vec::new();
    for n in &names {
        let a = fx.core.lookup(fx.parent, n).unwrap();
        fx.core.remember(a.ino);
        first.push(a);
    }
    let (held, _) = fx.core.inode_counts();
    for a in &first {
        fx.core.forget(a.ino, 1);
    }
    let (live, numbered) = fx.core.inode_counts();
    // Only the 4 most recently idle stay decoded; every number is kept.
    assert!(live + 36 <= held, "live {live}, held before {held}");
    assert!(numbered >= 40 + 5);
    for (n, a) in names.iter().zip(&first) {
        let again = fx.core.lookup(fx.parent, n).unwrap();
        assert_eq!(&again, a, "{}", String::from_utf8_lossy(n));
        // getattr of a dropped number decodes it again from its parent.
        fx.core.forget(again.ino, 0);
        assert_eq!(&fx.core.getattr(a.ino).unwrap(), a);
    }
}

#[test]
fn open_directory_is_a_snapshot_with_dots() {
    let fx = fixture();
    let fh = fx.core.opendir(fx.parent).unwrap();
    let got = fx.core.dir_entries(fh).unwrap();
    assert_eq!(got[0].name, b".");
    assert_eq!(got[0].ino, fx.parent);
    assert_eq!(got[1].name, b"..");
    let rest: Vec<_> = got[2..]
        .iter()
        .map(|e| (e.ino, e.kind, e.name.clone()))
        .collect();
    assert_eq!(rest, fx.core.list(fx.parent).unwrap());
    // Attributes come from the snapshot, and match getattr.
    for e in &got[2..] {
        assert_eq!(
            fx.core.entry_attr(e).unwrap(),
            fx.core.getattr(e.ino).unwrap()
        );
    }
    assert_eq!(got.len(), 2 + 41);
    fx.core.releasedir(fh);
    assert_eq!(fx.core.dir_entries(fh).unwrap_err().errno(), libc::EBADF);
}

#[test]
fn sequential_reads_fetch_ahead() {
    let fx = fixture();
    let fh = fx.core.open(fx.ino).unwrap();
    // A read at the start queues what follows within the read-ahead
    // window (8 MiB): the 300 KB head, and the data from 4 MiB on.
    assert_eq!(fx.core.read(fh, 0, 4096).unwrap(), fx.model[..4096]);
    let want = 300_000 + (3 << 20);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while fx.core.chunk_bytes() < want && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        fx.core.chunk_bytes() >= want,
        "read-ahead fetched only {} bytes",
        fx.core.chunk_bytes()
    );
    // The fetched chunks serve the next reads without storage.
    let next = fx
        .core
        .read_cached(fh, 4 << 20, 1 << 20)
        .expect("in memory");
    assert!(next == fx.model[4 << 20..5 << 20]);
    // A read far from the last one is not sequential: nothing more is queued.
    let fh2 = fx.core.open(fx.ino).unwrap();
    let before = fx.core.chunk_bytes();
    assert!(fx.core.read(fh2, 15 << 20, 10).unwrap() == vec![0; 10]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(fx.core.chunk_bytes(), before);
}

/// The fixture's repository opened again, with a second index and fresh
/// tier handles (the first keeps pack files open).
fn reopen(fx: &Fixture, name: &str) -> Arc<Repository> {
    Arc::new(
        Repository::open_named(
            Box::new(LocalTier::new(fx.dir.path().join("repo"))),
            &|| Ok(b"pw".to_vec()),
            &fx.dir.path().join("cache"),
            name,
        )
        .unwrap(),
    )
}

#[test]
fn disk_cache_serves_data_the_tiers_lost() {
    let fx = fixture();
    let cache_dir = fx.dir.path().join("blob-cache");
    let src = fx.dir.path().join("src");
    let mount = |repo: Arc<Repository>, disk: bool| {
        let opts = CoreOptions {
            disk_cache: disk.then(|| DiskCache::open(&cache_dir, 64 << 20).unwrap()),
            read_ahead: 0,
            ..options(1 << 20)
        };
        let core = FsCore::new(repo, opts);
        let ino = core.lookup(walk(&core, &src), b"f").unwrap().ino;
        let fh = core.open(ino).unwrap();
        (core, fh)
    };
    let (core, fh) = mount(reopen(&fx, "one"), true);
    assert!(core.read(fh, 0, 16 << 20).unwrap() == fx.model);
    assert!(fs::read_dir(&cache_dir).unwrap().count() >= 2);
    drop(core);
    // Every pack gone from the tier: a new mount (empty memory cache) still
    // reads the file, from the disk cache alone.
    for p in common::files_under(&fx.dir.path().join("repo/data")) {
        fs::remove_file(p).unwrap();
    }
    // (The trees stay in that index's local tree cache.)
    let (core, fh) = mount(reopen(&fx, "one"), true);
    assert!(core.read(fh, 0, 16 << 20).unwrap() == fx.model);
    drop(core);
    // Without it, the same read fails with EIO, and the mount goes on.
    let (core, fh) = mount(reopen(&fx, "one"), false);
    assert_eq!(core.read(fh, 0, 4096).unwrap_err().errno(), libc::EIO);
    assert!(core.lookup(ROOT, b"latest").is_ok());
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

#[test]
fn reads_without_an_open_use_the_inode() {
    let fx = fixture();
    // The kernel sends no OPEN when the mount declines them; reads then
    // carry the inode's shared handle.
    let fh = FsCore::shared_handle(fx.ino);
    assert!(fx.core.read(fh, 0, 16 << 20).unwrap() == fx.model);
    assert_eq!(
        fx.core.read(fh, 4 << 20, 10).unwrap(),
        fx.model[4 << 20..(4 << 20) + 10]
    );
    let opened = fx.core.open(fx.ino).unwrap();
    for whence in [libc::SEEK_DATA, libc::SEEK_HOLE] {
        assert_eq!(
            fx.core.seek(fh, 1 << 20, whence).ok(),
            fx.core.seek(opened, 1 << 20, whence).ok()
        );
    }
    // A directory has no data to read.
    let err = fx
        .core
        .read(FsCore::shared_handle(fx.parent), 0, 10)
        .unwrap_err();
    assert_eq!(err.errno(), libc::EISDIR);
}

#[test]
fn listing_a_directory_decodes_its_subdirectories_ahead() {
    let fx = fixture();
    let top = fx.dir.path().to_path_buf();
    // Opens the temporary dir for listing (it holds `src`, and nothing else
    // was backed up); returns the core.
    let listed = |name: &str, threads: usize| {
        let opts = CoreOptions {
            prefetch_threads: threads,
            ..options(1 << 20)
        };
        let core = FsCore::new(reopen(&fx, name), opts);
        let ino = walk(&core, &top);
        core.opendir(ino).unwrap();
        core
    };
    let without = listed("no-prefetch", 0).trees_cached();
    let core = listed("prefetch", 4);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while core.trees_cached() <= without && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let with = core.trees_cached();
    // One more: `src`, which nothing looked up.
    assert_eq!(with, without + 1, "with prefetch {with}, without {without}");
}

/// Threads that want the same directory at once (a walker and the
/// prefetch threads ahead of it, or several programs) wait for one
/// decoding of it instead of each reading it from the tiers.
#[test]
fn a_directory_wanted_by_many_threads_at_once_is_decoded_once() {
    let fx = fixture();
    let src = fx.dir.path().join("src");
    let core_on = |name: &str| {
        let (tier, reads) = common::CountingTier::slow(
            &fx.dir.path().join("repo"),
            std::time::Duration::from_millis(50),
        );
        let repo = Repository::open_named(
            Box::new(tier),
            &|| Ok(b"pw".to_vec()),
            &fx.dir.path().join("cache"),
            name,
        )
        .unwrap();
        let opts = CoreOptions {
            prefetch_threads: 0,
            ..options(1 << 20)
        };
        (FsCore::new(Arc::new(repo), opts), reads)
    };
    let (alone, alone_reads) = core_on("walk-alone");
    walk(&alone, &src);
    let (decoded, reads) = (alone.trees_decoded(), alone_reads.load(Ordering::SeqCst));
    assert!(decoded >= 3, "{decoded} trees on the way to src");
    let (core, together_reads) = core_on("walk-together");
    let start = std::sync::Barrier::new(6);
    std::thread::scope(|sc| {
        for _ in 0..6 {
            sc.spawn(|| {
                start.wait();
                assert_eq!(walk(&core, &src), walk(&core, &src));
            });
        }
    });
    assert_eq!(core.trees_decoded(), decoded);
    assert_eq!(together_reads.load(Ordering::SeqCst), reads);
}

#[test]
fn entries_the_kernel_holds_do_not_pin_their_directory() {
    let fx = fixture();
    // No tree cache: a directory stays decoded only while something holds
    // it strongly.
    let opts = CoreOptions {
        tree_cache: 0,
        prefetch_threads: 0,
        ..options(1 << 20)
    };
    let core = FsCore::new(reopen(&fx, "no-tree-cache"), opts);
    let parent = walk(&core, &fx.dir.path().join("src"));
    let a = core.lookup(parent, b"small-07").unwrap();
    core.remember(a.ino);
    let before = core.trees_decoded();
    // The kernel still holds the entry; its directory is decoded again,
    // because the entry did not keep it. From memory alone there is no
    // answer: the kernel-facing thread hands such a request to a worker.
    assert!(core.getattr_now(a.ino).is_none());
    assert!(core.xattrs_now(a.ino).is_none());
    assert!(core
        .read_cached(FsCore::shared_handle(a.ino), 0, 100)
        .is_none());
    assert_eq!(core.trees_decoded(), before);
    assert_eq!(core.getattr(a.ino).unwrap(), a);
    assert_eq!(core.trees_decoded(), before + 1);
    let fh = FsCore::shared_handle(a.ino);
    assert_eq!(core.read(fh, 0, 100).unwrap(), b"small file 7");
    assert_eq!(
        core.getxattr(a.ino, b"user.none").unwrap_err().errno(),
        libc::ENODATA
    );
    // With a tree cache the directory is decoded once and then served from it.
    let core = FsCore::new(reopen(&fx, "tree-cache"), options(1 << 20));
    let parent = walk(&core, &fx.dir.path().join("src"));
    let a = core.lookup(parent, b"small-07").unwrap();
    core.remember(a.ino);
    let before = core.trees_decoded();
    assert_eq!(core.getattr(a.ino).unwrap(), a);
    assert_eq!(core.getattr_now(a.ino).unwrap().unwrap(), a);
    assert_eq!(core.xattrs_now(a.ino).unwrap().unwrap(), vec![]);
    assert_eq!(core.trees_decoded(), before);
    // `latest` from memory only once the revision list has been read.
    let fresh = FsCore::new(reopen(&fx, "latest"), options(1 << 20));
    assert!(fresh.readlink_now(tiervault::mount::core::LATEST).is_none());
    let target = fresh.readlink(tiervault::mount::core::LATEST).unwrap();
    assert!(target.starts_with(b"revisions/"));
    let now = fresh.readlink_now(tiervault::mount::core::LATEST);
    assert_eq!(now.unwrap().unwrap(), target);
}

#[test]
fn reading_files_one_after_another_decodes_the_next_ones_ahead() {
    let fx = fixture();
    let core = FsCore::new(reopen(&fx, "walk"), options(8 << 20));
    let parent = walk(&core, &fx.dir.path().join("src"));
    let ino = |i: usize| {
        let a = core
            .lookup(parent, format!("small-{i:02}").as_bytes())
            .unwrap();
        core.remember(a.ino);
        FsCore::shared_handle(a.ino)
    };
    let handles: Vec<u64> = (0..40).map(ino).collect();
    // One file read alone queues nothing.
    assert_eq!(core.read(handles[10], 0, 100).unwrap(), b"small file 10");
    let one = core.chunk_bytes();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(core.chunk_bytes(), one);
    // Files read in listing order: the ones after them are decoded ahead,
    // and their first reads are answered from memory.
    assert_eq!(core.read(handles[0], 0, 100).unwrap(), b"small file 0");
    assert_eq!(core.read(handles[1], 0, 100).unwrap(), b"small file 1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while core.read_cached(handles[9], 0, 100).is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (cached, _) = core.read_counts();
    for (i, &fh) in handles.iter().enumerate().take(10).skip(2) {
        let got = core.read_cached(fh, 0, 100);
        assert_eq!(
            got.as_deref(),
            Some(format!("small file {i}").as_bytes()),
            "small-{i:02}"
        );
    }
    assert_eq!(core.read_counts().0, cached + 8);
}

/// Files read one after another: the ones ahead, neighbours in a pack, are
/// read with one ranged read, not one each. A damaged one among them fails
/// alone, with EIO, and its neighbours still read right.
#[test]
fn a_walk_reads_neighbouring_files_together_and_a_damaged_one_fails_alone() {
    let fx = fixture();
    let src = fx.dir.path().join("src");
    let (tier, reads) = common::CountingTier::at(&fx.dir.path().join("repo"));
    let repo = Arc::new(
        Repository::open_named(
            Box::new(tier),
            &|| Ok(b"pw".to_vec()),
            &fx.dir.path().join("cache"),
            "counted",
        )
        .unwrap(),
    );
    let count = || reads.load(std::sync::atomic::Ordering::SeqCst);
    let read_all = |damaged: Option<usize>| {
        let core = FsCore::new(repo.clone(), options(8 << 20));
        let parent = walk(&core, &src);
        let handles: Vec<u64> = (0..40)
            .map(|i| {
                let a = core
                    .lookup(parent, format!("small-{i:02}").as_bytes())
                    .unwrap();
                core.remember(a.ino);
                FsCore::shared_handle(a.ino)
            })
            .collect();
        let before = count();
        // The first two reads start the walk; then wait for the read-ahead.
        core.read(handles[0], 0, 100).unwrap();
        core.read(handles[1], 0, 100).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while core.read_cached(handles[9], 0, 100).is_none() && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for (i, fh) in handles.iter().enumerate() {
            let got = match core.read_cached(*fh, 0, 100) {
                Some(b) => Ok(b),
                None => core.read(*fh, 0, 100),
            };
            if Some(i) == damaged {
                assert_eq!(got.unwrap_err().errno(), libc::EIO, "small-{i:02}");
            } else {
                assert_eq!(
                    got.unwrap(),
                    format!("small file {i}").as_bytes(),
                    "small-{i:02}"
                );
            }
        }
        count() - before
    };
    // Files 0, 1 and 2 are read on their own (2 as the read-ahead's first
    // job), the 37 after them together: one read for each run of
    // neighbours they form in the packs. The backup's two readers may have
    // stored a few of them apart (after the big file's chunks, or in the
    // next pack), so the runs are counted here as the reader forms them
    // (same pack, at most 128 KiB apart).
    let mut at: Vec<([u8; 32], u64, u64)> = (3..40)
        .map(|i| {
            let id = common::chunk_of(&repo, &src.join(format!("small-{i:02}")));
            let l = repo.index().blob(&id).unwrap().unwrap();
            (
                l.pack.0,
                u64::from(l.entry.offset),
                u64::from(l.entry.stored_len),
            )
        })
        .collect();
    at.sort();
    let runs = 1 + at
        .windows(2)
        .filter(|w| w[0].0 != w[1].0 || w[1].1 > w[0].1 + w[0].2 + (128 << 10))
        .count() as u64;
    let n = read_all(None);
    assert!(
        n <= 3 + runs,
        "{n} ranged reads of packs for 40 small files in {runs} run(s) of neighbours after the first 3"
    );
    // One damaged chunk among them: the run it is in does not verify, so
    // its chunks are read one by one, and only the damaged file fails.
    let id = common::chunk_of(&repo, &src.join("small-20"));
    common::damage_blob(&repo, &fx.dir.path().join("repo"), &id);
    read_all(Some(20));
}

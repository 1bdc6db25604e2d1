//! How `restore` reads: small files are restored in batches whose chunks,
//! neighbours in a pack, come with few ranged reads; a large file is read a
//! window at a time, and a chunk it repeats is read once; a damaged chunk
//! fails its own file only.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tiervault::backup::{self, BackupOptions};
use tiervault::format::crypto::KdfParams;
use tiervault::repo::Repository;
use tiervault::restore::{self, RestoreOptions};
use tiervault::tier::local::LocalTier;

const FILES: usize = 300;

fn name(i: usize) -> String {
    format!("file-{i:03}")
}

fn content(i: usize) -> Vec<u8> {
    common::random_bytes(1000 + i * 37, i as u64)
}

/// A repository at `dir/repo` with one backup of `src`, opened again on a
/// tier that counts ranged reads of packs, and a function restoring its
/// revision into a directory, giving the summary and the reads it took.
fn backed_up(
    dir: &Path,
    src: &Path,
) -> (
    Arc<Repository>,
    impl Fn(&Path) -> (restore::RestoreSummary, u64),
) {
    let tier_dir = dir.join("repo");
    let kdf = KdfParams {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };
    let cache = dir.join("cache");
    let repo = Repository::init(
        Box::new(LocalTier::new(&tier_dir)),
        Some(b"pw"),
        kdf,
        &cache,
    );
    let opts = BackupOptions {
        paths: vec![src.to_path_buf()],
        ..BackupOptions::default()
    };
    backup::run(Arc::new(repo.unwrap()), &opts).unwrap();

    let (tier, reads) = common::CountingTier::at(&tier_dir);
    let repo = Arc::new(
        Repository::open_named(Box::new(tier), &|| Ok(b"pw".to_vec()), &cache, "restore").unwrap(),
    );
    let tree = repo.revisions().unwrap()[0].1.tree;
    let r = repo.clone();
    let restore_into = move |target: &Path| {
        let opts = RestoreOptions {
            target: target.to_path_buf(),
            workers: 4,
            ..RestoreOptions::default()
        };
        let before = reads.load(Ordering::SeqCst);
        let sum = restore::run(r.clone(), &tree, None, b"", &opts).unwrap();
        (sum, reads.load(Ordering::SeqCst) - before)
    };
    (repo, restore_into)
}

#[test]
fn small_files_are_read_together_and_a_damaged_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..FILES {
        std::fs::write(src.join(name(i)), content(i)).unwrap();
    }
    let tier_dir = dir.path().join("repo");
    let (repo, restore_into) = backed_up(dir.path(), &src);
    let restored = |target: &Path| target.join(src.strip_prefix("/").unwrap());

    let first = dir.path().join("first");
    let (sum, n) = restore_into(&first);
    assert_eq!((sum.files, sum.errors), (FILES as u64, 0));
    for i in 0..FILES {
        assert!(
            std::fs::read(restored(&first).join(name(i))).unwrap() == content(i),
            "{}",
            name(i)
        );
    }
    // One read per file before batches; the walk and four workers taking
    // turns may cut batches short, but most files share a read.
    assert!(
        n <= (FILES / 4) as u64,
        "{n} ranged reads of packs for {FILES} small files"
    );

    common::damage_blob(
        &repo,
        &tier_dir,
        &common::chunk_of(&repo, &src.join(name(150))),
    );
    let second = dir.path().join("second");
    let (sum, _) = restore_into(&second);
    assert_eq!((sum.files, sum.errors), (FILES as u64 - 1, 1));
    assert!(!restored(&second).join(name(150)).exists());
    for i in (0..FILES).filter(|&i| i != 150) {
        assert!(
            std::fs::read(restored(&second).join(name(i))).unwrap() == content(i),
            "{}",
            name(i)
        );
    }
}

#[test]
fn a_large_file_is_read_in_windows_its_repeats_once_and_a_damaged_chunk_fails_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // An 8 MiB block five times, then a tail: once a cut falls inside the
    // block, the chunker cuts the same chunks in each repeat. (The cuts
    // depend on the repository's key; a 4 MiB block, as long as the
    // largest chunk, sometimes had too few to repeat.)
    let block = common::random_bytes(8 << 20, 7);
    let mut big = Vec::new();
    for _ in 0..5 {
        big.extend_from_slice(&block);
    }
    big.extend_from_slice(&common::random_bytes(3 << 20, 8));
    std::fs::write(src.join("big.img"), &big).unwrap();
    std::fs::write(src.join("small"), b"next to it").unwrap();
    let tier_dir = dir.path().join("repo");
    let (repo, restore_into) = backed_up(dir.path(), &src);
    let restored = |target: &Path| target.join(src.strip_prefix("/").unwrap());

    let chunks = common::chunks_of(&repo, &src.join("big.img"));
    let distinct: std::collections::HashSet<_> = chunks.iter().collect();
    assert!(
        chunks.len() >= distinct.len() + 4,
        "the file repeats its chunks: {} chunks, {} distinct",
        chunks.len(),
        distinct.len()
    );

    let first = dir.path().join("first");
    let (sum, n) = restore_into(&first);
    assert_eq!((sum.files, sum.errors), (2, 0));

    assert!(std::fs::read(restored(&first).join("big.img")).unwrap() == big);
    // Each distinct chunk is read once at most (and the small file once);
    // without the cache of recent chunks, every chunk was read.
    assert!(
        n <= distinct.len() as u64 + 1,
        "{n} ranged reads for {} chunks, {} distinct",
        chunks.len(),
        distinct.len()
    );

    // A chunk past the first window, in the tail, read only there.
    let tail = *chunks.last().unwrap();
    assert_eq!(chunks.iter().filter(|c| **c == tail).count(), 1);
    common::damage_blob(&repo, &tier_dir, &tail);
    let second = dir.path().join("second");
    let (sum, _) = restore_into(&second);
    assert_eq!((sum.files, sum.errors), (1, 1));
    assert!(!restored(&second).join("big.img").exists());
    assert_eq!(
        std::fs::read(restored(&second).join("small")).unwrap(),
        b"next to it"
    );
}

//! How `restore` reads: small files are restored in batches whose chunks,
//! neighbours in a pack, come with few ranged reads; a damaged chunk fails
//! its own file only.

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

#[test]
fn small_files_are_read_together_and_a_damaged_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..FILES {
        std::fs::write(src.join(name(i)), content(i)).unwrap();
    }
    let tier_dir = dir.path().join("repo");
    let kdf = KdfParams {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };
    let cache = dir.path().join("cache");
    let repo = Repository::init(
        Box::new(LocalTier::new(&tier_dir)),
        Some(b"pw"),
        kdf,
        &cache,
    );
    let opts = BackupOptions {
        paths: vec![src.clone()],
        ..BackupOptions::default()
    };
    backup::run(Arc::new(repo.unwrap()), &opts).unwrap();

    let (tier, reads) = common::CountingTier::at(&tier_dir);
    let repo = Arc::new(
        Repository::open_named(Box::new(tier), &|| Ok(b"pw".to_vec()), &cache, "restore").unwrap(),
    );
    let tree = repo.revisions().unwrap()[0].1.tree;
    let restore_into = |target: &Path| {
        let opts = RestoreOptions {
            target: target.to_path_buf(),
            workers: 4,
            ..RestoreOptions::default()
        };
        let before = reads.load(Ordering::SeqCst);
        let sum = restore::run(repo.clone(), &tree, None, b"", &opts).unwrap();
        (sum, reads.load(Ordering::SeqCst) - before)
    };
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

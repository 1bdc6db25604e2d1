//! Shared helpers for the integration tests: run the real binary against a
//! throwaway repository, build hostile directory trees, and compare two
//! trees for every piece of metadata a restore must reproduce.

#![allow(dead_code)]

pub mod mount;
pub mod servers;
pub mod tree;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tiervault::format::tree::Segment;
use tiervault::format::{names, BlobId};
use tiervault::repo::Repository;
use tiervault::tier::local::LocalTier;
use tiervault::tier::{ObjectInfo, Tier, TierError};

pub const PASSWORD: &str = "correct horse battery staple";

/// A repository, cache and scratch space in a temporary directory.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub cache: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tvtest")
            .tempdir_in(scratch_root())
            .unwrap();
        let repo = dir.path().join("repo");
        let cache = dir.path().join("cache");
        Self { dir, repo, cache }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The binary with this environment's repository, cache and password.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tiervault"));
        c.arg("-r")
            .arg(&self.repo)
            .env("TIERVAULT_CACHE_DIR", &self.cache)
            .env("TIERVAULT_STATE_DIR", self.dir.path().join("state"))
            .env("TIERVAULT_PASSWORD", PASSWORD);
        c.env_remove("TIERVAULT_PASSWORD_FILE");
        c
    }

    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd().args(args).output().expect("run tiervault")
    }

    /// Runs and asserts exit code 0; returns stdout.
    pub fn ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        assert_ok(&self.run(args), "tiervault")
    }

    /// `restore SPEC --target DST`, asserting success.
    pub fn restore(&self, spec: &str, dst: &Path) -> String {
        assert_ok(&self.try_restore(spec, dst), "tiervault restore")
    }

    /// `restore SPEC --target DST`, which may fail.
    pub fn try_restore(&self, spec: &str, dst: &Path) -> Output {
        self.run([
            std::ffi::OsStr::new("restore"),
            spec.as_ref(),
            "--target".as_ref(),
            dst.as_os_str(),
        ])
    }

    /// Creates the repository, a source directory `src` holding `files`,
    /// and one backup of it; returns the source path.
    pub fn backed_up(&self, files: &[(&str, &[u8])]) -> PathBuf {
        self.init();
        let src = self.source(files);
        self.ok([std::ffi::OsStr::new("backup"), src.as_os_str()]);
        src
    }

    /// A source directory `src` holding `files` (names may hold `/`);
    /// returns its path.
    pub fn source(&self, files: &[(&str, &[u8])]) -> PathBuf {
        let src = self.path("src");
        std::fs::create_dir_all(&src).unwrap();
        for (name, data) in files {
            let p = src.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        src
    }

    /// The repository opened through the library, with a cache of its own
    /// (to look up where a blob lies, say).
    pub fn library(&self) -> Repository {
        Repository::open(
            Box::new(tiervault::tier::local::LocalTier::new(&self.repo)),
            &|| Ok(PASSWORD.as_bytes().to_vec()),
            &self.path("lib-cache"),
        )
        .unwrap()
    }

    /// Creates the repository with cheap key derivation (tests only).
    pub fn init(&self) {
        self.ok(["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    }
}

/// Asserts that a run of `what` exited with 0; returns its stdout.
pub fn assert_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Where test trees live. Defaults to the system temp dir; sparse and
/// xattr tests need a file system with holes and user xattrs (ext4, xfs,
/// btrfs and tmpfs all qualify).
/// `cp -a FROM TO`, which must succeed.
pub fn cp_a(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "cp -a {} {} failed",
        from.display(),
        to.display()
    );
}

pub fn scratch_root() -> PathBuf {
    std::env::var_os("TIERVAULT_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Deterministic incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Every regular file below `p`.
pub fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

pub fn rel(root: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(root).unwrap().to_path_buf()
}

/// A tier that counts ranged reads of packs.
/// A local tier that counts its ranged reads of packs, each of which takes
/// at least `delay`.
pub struct CountingTier(pub LocalTier, pub Arc<AtomicU64>, std::time::Duration);

impl CountingTier {
    /// The tier at `dir` and its counter.
    pub fn at(dir: &Path) -> (Self, Arc<AtomicU64>) {
        Self::slow(dir, std::time::Duration::ZERO)
    }

    /// The tier at `dir`, each ranged read of a pack taking `delay` more,
    /// and its counter.
    pub fn slow(dir: &Path, delay: std::time::Duration) -> (Self, Arc<AtomicU64>) {
        let n = Arc::new(AtomicU64::new(0));
        (Self(LocalTier::new(dir), n.clone(), delay), n)
    }
}

impl Tier for CountingTier {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, TierError> {
        self.0.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, TierError> {
        if key.starts_with("data/") {
            self.1.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.2);
        }
        self.0.get_range(key, offset, len)
    }
    fn put(&self, key: &str, data: &[u8]) -> Result<(), TierError> {
        self.0.put(key, data)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError> {
        self.0.list(prefix)
    }
    fn stat(&self, key: &str) -> Result<Option<u64>, TierError> {
        self.0.stat(key)
    }
    fn delete(&self, key: &str) -> Result<(), TierError> {
        self.0.delete(key)
    }
}

/// The id of the first data chunk of the backed-up file at `path`, in the
/// first revision of `repo`.
pub fn chunk_of(repo: &Repository, path: &Path) -> BlobId {
    match chunks_of(repo, path).first() {
        Some(id) => *id,
        None => panic!("{} has no data chunk", path.display()),
    }
}

/// The data chunks of the backed-up file at `path`, in file order, in the
/// first revision of `repo`.
pub fn chunks_of(repo: &Repository, path: &Path) -> Vec<BlobId> {
    let mut tree = repo.revisions().unwrap()[0].1.tree;
    let comps: Vec<_> = path.strip_prefix("/").unwrap().components().collect();
    for (n, comp) in comps.iter().enumerate() {
        let nodes = repo.load_tree(&tree).unwrap();
        let name = comp.as_os_str().as_encoded_bytes();
        let node = nodes.iter().find(|x| x.name == name).unwrap();
        if n + 1 == comps.len() {
            return node
                .segments()
                .iter()
                .filter_map(Segment::data_id)
                .collect();
        }
        tree = node.subtree().unwrap();
    }
    unreachable!("the path has components")
}

/// Flips a byte in the middle of blob `id`'s stored bytes, in its pack on
/// the local tier at `tier_dir`.
pub fn damage_blob(repo: &Repository, tier_dir: &Path, id: &BlobId) {
    use std::os::unix::fs::FileExt;
    let loc = repo.index().blob(id).unwrap().unwrap();
    let pack = tier_dir.join(names::pack(&loc.pack));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&pack)
        .unwrap();
    let at = u64::from(loc.entry.offset) + u64::from(loc.entry.stored_len) / 2;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
}

/// The objects under the directories `dirs` of a tier at `root`, relative
/// to `root`: real ones only, not `.tmp-*` files (writes cut off by a
/// kill, which tiervault never lists or reads).
pub fn objects_under(root: &Path, dirs: &[&str]) -> std::collections::BTreeSet<PathBuf> {
    dirs.iter()
        .map(|d| root.join(d))
        .filter(|d| d.exists())
        .flat_map(|d| files_under(&d))
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
        .collect()
}

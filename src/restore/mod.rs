//! `tiervault restore`: recreates a tree from a revision, in parallel, with
//! all metadata, verifying every blob.
//!
//! Order matters for faithful metadata:
//! 1. the walker creates directories, symlinks and
//!    special files, and queues regular files;
//! 2. workers write file contents (skipping holes, so sparse files stay
//!    sparse), then owner, xattrs, mode (after owner, which clears set-id
//!    bits) and times;
//! 3. hardlinks are made once every file exists;
//! 4. directory metadata is applied deepest first, times last, so creating
//!    children does not disturb a parent's mtime.
//!
//! A blob that fails to verify fails its file: the partial file is removed,
//! never left with wrong bytes, and the run ends with an error.

mod files;

use crate::format::tree::{Body, Node, NodeKind};
use crate::format::BlobId;
use crate::fsmeta;
use crate::repo::{RepoError, Repository, Result};
use crossbeam_channel::bounded;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use files::restore_metadata;

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub target: PathBuf,
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    pub workers: usize,
}

#[derive(Debug, Default)]
pub struct RestoreSummary {
    pub files: u64,
    pub dirs: u64,
    pub others: u64,
    pub bytes: u64,
    pub errors: u64,
    pub warnings: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub warnings: AtomicU64,
    /// The target's disk is full (or the user's quota used up): nothing
    /// more is written, and the restore ends with one error saying so.
    pub full: AtomicBool,
}

/// Per-item errors said in full; past them, only counted. One cause (a
/// tier gone, a pack lost) can fail thousands of files.
const SHOWN_ERRORS: u64 = 20;

impl Counters {
    /// Counts a failed item and says why, for the first `SHOWN_ERRORS`.
    pub(crate) fn error(&self, msg: std::fmt::Arguments) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < SHOWN_ERRORS {
            errln!("error: {msg}");
        }
    }
}

/// Whether `e` is a full disk or an exhausted quota.
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

pub(crate) struct FileJob {
    pub path: PathBuf,
    pub node: Node,
}

fn globs(pats: &[String], what: &str) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in pats {
        b.add(
            Glob::new(p)
                .map_err(|e| RepoError::Config(format!("bad {what} pattern {p:?}: {e}")))?,
        );
    }
    b.build().map_err(|e| RepoError::Config(e.to_string()))
}

struct Walk<'a> {
    repo: &'a Repository,
    includes: GlobSet,
    excludes: GlobSet,
    jobs: crossbeam_channel::Sender<FileJob>,
    links: HashMap<(u64, u64), PathBuf>,
    pending_links: Vec<(PathBuf, PathBuf)>,
    dirs: Vec<(PathBuf, Node)>,
    others: u64,
    counters: &'a Counters,
}

/// Restores `start` (a node, or the revision root when `None`) of the tree
/// `root` into `opts.target`. `rev_path` is the path of `start` in the
/// revision, used for include and exclude matching.
pub fn run(
    repo: Arc<Repository>,
    root: &BlobId,
    start: Option<Node>,
    rev_path: &[u8],
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
    std::fs::create_dir_all(&opts.target)
        .map_err(|e| RepoError::Config(format!("cannot create {}: {e}", opts.target.display())))?;
    // The target may be a symlink the user chose; below it, links are
    // never followed.
    let target = std::fs::canonicalize(&opts.target)
        .map_err(|e| RepoError::Config(format!("cannot resolve {}: {e}", opts.target.display())))?;
    let counters = Counters::default();
    let recent = files::Recent::default();
    let (tx, rx) = bounded::<FileJob>(256);
    let mut summary = RestoreSummary::default();
    // The scope ends only when every worker has drained the queue.
    let walked = std::thread::scope(|s| -> Result<_> {
        for _ in 0..opts.workers.max(1) {
            let (rx, repo, recent, c) = (rx.clone(), &repo, &recent, &counters);
            s.spawn(move || files::worker(repo, recent, &rx, c));
        }
        drop(rx);
        let mut w = Walk {
            repo: &repo,
            includes: globs(&opts.includes, "--include")?,
            excludes: globs(&opts.excludes, "--exclude")?,
            jobs: tx,
            links: HashMap::new(),
            pending_links: Vec::new(),
            dirs: Vec::new(),
            others: 0,
            counters: &counters,
        };
        let inc_all = opts.includes.is_empty();
        let walked = match &start {
            None => w.tree(root, rev_path, &target, inc_all),
            Some(n) => match n.subtree() {
                Some(sub) => w.tree(&sub, rev_path, &target, inc_all),
                None => w.node(n.clone(), parent_of(rev_path), &target, inc_all),
            },
        };
        walked?;
        Ok((w.pending_links, w.dirs, w.others))
    });
    // A full target stops the walk too; its own error says which.
    if counters.full.load(Ordering::Relaxed) {
        return Err(RepoError::Config(format!(
            "the disk of {} is full (or your quota there is used up) after {} file(s) were restored: free some space there, or restore into another disk with --target, and run the restore again (it replaces what is already there)",
            target.display(),
            counters.files.load(Ordering::Relaxed)
        )));
    }
    let (links, dirs, others) = walked?;
    summary.others = others;
    summary.dirs = dirs.len() as u64;
    for (first, path) in links {
        let _ = std::fs::remove_file(&path);
        if std::fs::symlink_metadata(&first).is_err() {
            // Its error was said when it failed.
            counters.error(format_args!(
                "{}: not restored, as the file it is a hard link of, {}, was not",
                path.display(),
                first.display()
            ));
            continue;
        }
        match std::fs::hard_link(&first, &path) {
            Ok(()) => summary.files += 1,
            Err(e) => counters.error(format_args!(
                "cannot link {} to {}: {e}",
                path.display(),
                first.display()
            )),
        }
    }
    // `dirs` is in post-order: children before parents, so modes that
    // close a directory are applied after everything inside it.
    for (path, node) in &dirs {
        restore_metadata(path, node, &counters);
    }
    summary.files += counters.files.load(Ordering::Relaxed);
    summary.bytes = counters.bytes.load(Ordering::Relaxed);
    summary.errors = counters.errors.load(Ordering::Relaxed);
    if summary.errors > SHOWN_ERRORS {
        errln!(
            "error: … and {} more item(s) not restored, not shown (the first {SHOWN_ERRORS} say why; `tiervault check` names damaged or missing data)",
            summary.errors - SHOWN_ERRORS
        );
    }
    summary.warnings = counters.warnings.load(Ordering::Relaxed);
    Ok(summary)
}

/// The parent part of a `/`-separated path.
fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => &p[..i],
        None => b"",
    }
}

fn join(rev_path: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = rev_path.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

impl Walk<'_> {
    /// Restores the entries of `tree` into `dir`. Returns whether anything
    /// was restored (with includes, a directory appears only when needed).
    fn tree(&mut self, tree: &BlobId, rev_path: &[u8], dir: &Path, included: bool) -> Result<bool> {
        let mut any = false;
        for node in self.repo.load_tree(tree)? {
            any |= self.node(node, rev_path, dir, included)?;
        }
        Ok(any)
    }

    /// As `tree`, for a directory below the one restored: when its listing
    /// cannot be read (no tier has a good copy), the directory is named as
    /// not restored and the rest of the tree is restored all the same.
    fn subtree(
        &mut self,
        tree: &BlobId,
        rev_path: &[u8],
        dir: &Path,
        included: bool,
    ) -> Result<bool> {
        match self.tree(tree, rev_path, dir, included) {
            Err(e) if lost_listing(&e) => {
                self.fail(
                    dir,
                    &format_args!(
                        "its listing (tree {}) cannot be read, so nothing in it was restored: {e}",
                        tree.short()
                    ),
                );
                Ok(included)
            }
            r => r,
        }
    }

    fn node(&mut self, node: Node, parent_rev: &[u8], dir: &Path, included: bool) -> Result<bool> {
        if self.counters.full.load(Ordering::Relaxed) {
            // `run` says so.
            return Err(RepoError::Config("the target is full".into()));
        }
        let rp = join(parent_rev, &node.name);
        let rp_os = Path::new(OsStr::from_bytes(&rp));
        if self.excludes.is_match(rp_os) {
            return Ok(false);
        }
        let inc = included || self.includes.is_match(rp_os);
        let path = dir.join(OsStr::from_bytes(&node.name));
        if node.kind == NodeKind::Dir {
            if inc {
                ensure_dir(&path)?;
            }
            let sub = node.subtree().expect("dir has a subtree");
            let any = self.subtree(&sub, &rp, &path, inc)?;
            if inc || any {
                self.dirs.push((path, node));
            }
            return Ok(inc || any);
        }
        if !inc {
            return Ok(false);
        }
        ensure_dir(dir)?;
        if let Some(key) = node.link_key() {
            if let Some(first) = self.links.get(&key) {
                self.pending_links.push((first.clone(), path));
                return Ok(true);
            }
            self.links.insert(key, path.clone());
        }
        match &node.body {
            Body::File(_) => {
                self.jobs
                    .send(FileJob { path, node })
                    .map_err(|_| RepoError::Config("restore workers stopped".into()))?;
            }
            Body::Symlink(target) => {
                let _ = std::fs::remove_file(&path);
                if let Err(e) = fsmeta::symlink(target, &path) {
                    self.fail_io(&path, &e);
                } else {
                    self.others += 1;
                    restore_metadata(&path, &node, self.counters);
                }
            }
            _ => {
                let _ = std::fs::remove_file(&path);
                let fmt = match node.kind {
                    NodeKind::CharDev => libc::S_IFCHR,
                    NodeKind::BlockDev => libc::S_IFBLK,
                    NodeKind::Fifo => libc::S_IFIFO,
                    _ => libc::S_IFSOCK,
                };
                if let Err(e) = fsmeta::mknod(&path, fmt | 0o600, node.meta.rdev) {
                    self.fail_io(&path, &e);
                } else {
                    self.others += 1;
                    restore_metadata(&path, &node, self.counters);
                }
            }
        }
        Ok(true)
    }

    fn fail(&self, path: &Path, e: &dyn std::fmt::Display) {
        self.counters.error(format_args!("{}: {e}", path.display()));
    }

    /// As `fail`, for an item the target could not hold: a full disk
    /// stops the restore instead.
    fn fail_io(&self, path: &Path, e: &std::io::Error) {
        if is_full(e) {
            self.counters.full.store(true, Ordering::Relaxed);
        } else {
            self.fail(path, e);
        }
    }
}

/// Whether `e` means a directory listing is damaged or gone on every tier
/// (rather than the tiers being unreachable, or the restore stopping).
fn lost_listing(e: &RepoError) -> bool {
    use crate::tier::TierError;
    matches!(
        e,
        RepoError::Corrupt { .. }
            | RepoError::BlobMissing(_)
            | RepoError::Tier(TierError::Corrupt { .. } | TierError::NotFound { .. })
    )
}

fn ensure_dir(p: &Path) -> Result<()> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        // An existing directory, but never a symlink to one: restoring
        // must not write outside the target.
        Err(e)
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) =>
        {
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(p)
            .map_err(|e| RepoError::Config(format!("cannot create {}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let what = match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => "a symlink",
                _ => "a file",
            };
            Err(RepoError::Config(format!(
                "cannot create directory {}: {what} of that name is in the way (restore never follows or replaces it); move it aside and run the restore again",
                p.display()
            )))
        }
        Err(e) if is_full(&e) => Err(RepoError::Config(format!(
            "cannot create directory {}: the disk is full (or your quota there is used up): free some space there, or restore into another disk with --target, and run the restore again",
            p.display()
        ))),
        Err(e) => Err(RepoError::Config(format!(
            "cannot create directory {}: {e}",
            p.display()
        ))),
    }
}

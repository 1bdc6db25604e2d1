//! The walker: turns directories into tree blobs, bottom-up, while file
//! workers read file contents in parallel.
//!
//! Tricky cases:
//! - several backup paths share ancestors: the ancestors become directories
//!   in the revision with their real metadata, holding only the given paths;
//! - an entry that vanishes or cannot be read between listing and reading is
//!   reported and left out; the directory itself is still stored;
//! - the file cache is trusted only when every blob it names is still in the
//!   index (a killed run may have cached a file whose pack never landed).
//!
//! Sibling subdirectories are walked in parallel on a small thread pool with
//! more threads than cores: on a cold cache, listing and stat'ing wait on
//! the disk, and a single walker would leave both cores idle.

use super::file::{read_file, stamp, FileError};
use super::BackupOptions;
use crate::format::chunker::{Chunker, MIN_SIZE};
use crate::format::tree::{encode_tree, Body, Meta, Node, NodeKind, Segment};
use crate::format::{BlobId, BlobType};
use crate::fsmeta::{self, Names};
use crate::index::FileCacheEntry;
use crate::repo::writer::BlobWriter;
use crate::repo::{RepoError, Repository, Result};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Walked {
    pub root: BlobId,
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Bytes actually read from files (unchanged files are not read).
    pub read: u64,
    pub errors: u64,
    pub warnings: u64,
}

/// Absolute, lexically cleaned paths, without any path inside another.
pub fn normalize(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        let abs = std::path::absolute(p)
            .map_err(|e| RepoError::Config(format!("{}: {e}", p.display())))?;
        let mut clean = PathBuf::from("/");
        for c in abs.components() {
            match c {
                Component::Normal(n) => clean.push(n),
                Component::ParentDir => {
                    clean.pop();
                }
                _ => {}
            }
        }
        std::fs::symlink_metadata(&clean)
            .map_err(|e| RepoError::Config(format!("cannot back up {}: {e}", clean.display())))?;
        out.push(clean);
    }
    out.sort();
    out.dedup();
    let all = out.clone();
    out.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    Ok(out)
}

/// Where a file's chunking result goes: its slot in the directory, and
/// its segments and size or why it could not be read.
type FileReply = Sender<(usize, std::result::Result<(Vec<Segment>, u64), FileError>)>;

struct FileJob {
    path: PathBuf,
    meta: Metadata,
    slot: usize,
    reply: FileReply,
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    dirs: AtomicU64,
    bytes: AtomicU64,
    read: AtomicU64,
    errors: AtomicU64,
    warnings: AtomicU64,
}

/// Threads listing and stat'ing directories.
const WALK_THREADS: usize = 8;

pub struct Walker {
    repo: Arc<Repository>,
    writer: Arc<BlobWriter>,
    names: Mutex<Names>,
    excludes: GlobSet,
    one_fs: bool,
    chunker: Chunker,
    jobs: Sender<FileJob>,
    counters: Arc<Counters>,
}

fn nothing_readable() -> RepoError {
    RepoError::Config("none of the given paths could be read; no revision was saved".into())
}

fn workers_gone() -> RepoError {
    RepoError::Config("a file reader thread stopped unexpectedly; no revision was saved".into())
}

fn report(counters: &Counters, path: &Path, e: &dyn std::fmt::Display) {
    counters.errors.fetch_add(1, Ordering::Relaxed);
    errln!("error: {}: {e} (skipped)", path.display());
}

impl Walker {
    pub fn run(
        repo: Arc<Repository>,
        writer: Arc<BlobWriter>,
        opts: &BackupOptions,
        paths: &[PathBuf],
    ) -> Result<Walked> {
        let mut gs = GlobSetBuilder::new();
        for g in &opts.excludes {
            gs.add(
                Glob::new(g)
                    .map_err(|e| RepoError::Config(format!("bad --exclude pattern {g:?}: {e}")))?,
            );
        }
        let excludes = gs.build().map_err(|e| RepoError::Config(e.to_string()))?;
        let counters = Arc::new(Counters::default());
        let (jtx, jrx) = bounded::<FileJob>(64);
        let workers: Vec<_> = (0..opts.readers.max(1))
            .map(|_| {
                let (repo, writer, jrx, c) =
                    (repo.clone(), writer.clone(), jrx.clone(), counters.clone());
                std::thread::spawn(move || file_worker(&repo, &writer, &jrx, &c))
            })
            .collect();
        drop(jrx);
        let progress = opts.progress.then(|| spawn_progress(counters.clone()));
        let chunker = Chunker::new(repo.keys().gear_seed());
        let w = Walker {
            repo,
            writer,
            names: Mutex::new(Names::default()),
            excludes,
            one_fs: opts.one_file_system,
            chunker,
            jobs: jtx,
            counters: counters.clone(),
        };
        let paths = paths.to_vec();
        // Deep trees recurse deeply: large stacks.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(WALK_THREADS)
            .stack_size(64 << 20)
            .thread_name(|i| format!("walk-{i}"))
            .build()
            .map_err(|e| RepoError::Config(format!("cannot start the walker threads: {e}")))?;
        let root = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| w.root(&paths))
        }))
        .unwrap_or_else(|_| Err(RepoError::Config("the backup walker panicked".into())));
        drop(w); // closes the job channel so the file workers exit
        for t in workers {
            let _ = t.join();
        }
        if let Some((stop, t)) = progress {
            drop(stop);
            let _ = t.join();
        }
        let root = root?;
        let c = &counters;
        Ok(Walked {
            root,
            files: c.files.load(Ordering::Relaxed),
            dirs: c.dirs.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            read: c.read.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            warnings: c.warnings.load(Ordering::Relaxed),
        })
    }

    /// Builds the revision's root tree from the backup paths and their
    /// ancestors.
    fn root(&self, paths: &[PathBuf]) -> Result<BlobId> {
        if paths.len() == 1 && paths[0] == Path::new("/") {
            let md =
                std::fs::symlink_metadata("/").map_err(|e| RepoError::Config(format!("/: {e}")))?;
            return self
                .dir(Path::new("/"), md.dev())?
                .ok_or_else(nothing_readable);
        }
        // Ancestor directories, keyed by path, with the nodes under them.
        let mut groups: BTreeMap<PathBuf, Vec<Node>> = BTreeMap::new();
        for p in paths {
            let md = std::fs::symlink_metadata(p)
                .map_err(|e| RepoError::Config(format!("{}: {e}", p.display())))?;
            let dev = md.dev();
            if let Some(n) = self.entry(p, md, dev)? {
                groups
                    .entry(p.parent().unwrap_or(Path::new("/")).to_path_buf())
                    .or_default()
                    .push(n);
            }
        }
        // Fold the deepest ancestors first into their parents, up to "/".
        loop {
            let Some(deepest) = groups
                .keys()
                .max_by_key(|p| p.components().count())
                .cloned()
            else {
                return Err(nothing_readable());
            };
            let mut nodes = groups.remove(&deepest).expect("key exists");
            let tree = self.store_tree(&mut nodes)?;
            if deepest == Path::new("/") {
                return Ok(tree);
            }
            let md = std::fs::symlink_metadata(&deepest)
                .map_err(|e| RepoError::Config(format!("{}: {e}", deepest.display())))?;
            let node = self.node(&deepest, &md, NodeKind::Dir, Body::Dir(tree));
            groups
                .entry(deepest.parent().unwrap_or(Path::new("/")).to_path_buf())
                .or_default()
                .push(node);
        }
    }

    fn node(&self, path: &Path, md: &Metadata, kind: NodeKind, body: Body) -> Node {
        let xattrs = fsmeta::xattrs(path).unwrap_or_else(|e| {
            self.counters.warnings.fetch_add(1, Ordering::Relaxed);
            errln!(
                "warning: {}: cannot read extended attributes: {e}",
                path.display()
            );
            Vec::new()
        });
        let size = match &body {
            Body::File(segs) => segs.iter().map(Segment::len).sum(),
            Body::Symlink(t) => t.len() as u64,
            _ => 0,
        };
        let (user, group) = {
            let mut names = self.names.lock().expect("names lock");
            (names.user(md.uid()), names.group(md.gid()))
        };
        let meta = Meta {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            user,
            group,
            mtime: stamp(md.mtime(), md.mtime_nsec()),
            atime: stamp(md.atime(), md.atime_nsec()),
            ctime: stamp(md.ctime(), md.ctime_nsec()),
            size,
            inode: md.ino(),
            device: md.dev(),
            nlink: md.nlink(),
            rdev: md.rdev(),
            xattrs,
        };
        let name = path
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_else(|| b"/".to_vec());
        Node {
            name,
            kind,
            meta,
            body,
        }
    }

    /// A non-file entry, or a directory walked recursively. Regular files
    /// found directly in a directory go through `dir` and the workers.
    /// `root_dev` is the device of the backup path this entry sits under.
    fn entry(&self, path: &Path, md: Metadata, root_dev: u64) -> Result<Option<Node>> {
        let ft = md.file_type();
        let (kind, body) = if ft.is_dir() {
            if self.one_fs && root_dev != md.dev() {
                let empty = self.store_tree(&mut [])?;
                (NodeKind::Dir, Body::Dir(empty))
            } else {
                match self.dir(path, root_dev)? {
                    Some(t) => (NodeKind::Dir, Body::Dir(t)),
                    None => return Ok(None), // unreadable, reported in dir()
                }
            }
        } else if ft.is_file() {
            // A single file given as a backup path.
            let (tx, rx) = unbounded();
            self.submit(path, md.clone(), 0, &tx)?;
            drop(tx);
            match rx.recv().map_err(|_| workers_gone())? {
                (_, Ok((segs, _))) => (NodeKind::File, Body::File(segs)),
                (_, Err(FileError::Skip(e))) => {
                    report(&self.counters, path, &e);
                    return Ok(None);
                }
                (_, Err(FileError::Fatal(e))) => return Err(e),
            }
        } else if ft.is_symlink() {
            match std::fs::read_link(path) {
                Ok(t) => (
                    NodeKind::Symlink,
                    Body::Symlink(t.as_os_str().as_bytes().to_vec()),
                ),
                Err(e) => {
                    report(&self.counters, path, &e);
                    return Ok(None);
                }
            }
        } else if ft.is_char_device() {
            (NodeKind::CharDev, Body::Special)
        } else if ft.is_block_device() {
            (NodeKind::BlockDev, Body::Special)
        } else if ft.is_fifo() {
            (NodeKind::Fifo, Body::Special)
        } else {
            (NodeKind::Socket, Body::Special)
        };
        // Reading a link's target updates its atime: take the metadata
        // after it, so the next backup sees the same node and tree.
        let md = match kind {
            NodeKind::Symlink => std::fs::symlink_metadata(path).unwrap_or(md),
            _ => md,
        };
        Ok(Some(self.node(path, &md, kind, body)))
    }

    fn submit(&self, path: &Path, md: Metadata, slot: usize, reply: &FileReply) -> Result<()> {
        self.counters.files.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes.fetch_add(md.size(), Ordering::Relaxed);
        if let Some(segs) = self.cached(path, &md)? {
            let len = segs.iter().map(Segment::len).sum();
            let _ = reply.send((slot, Ok((segs, len))));
            return Ok(());
        }
        // A file of at most one chunk is read right here: handing it to a
        // reader and back costs more than reading it.
        if md.size() <= MIN_SIZE as u64 {
            let res = process_file(
                &self.repo,
                &self.chunker,
                &self.writer,
                path,
                &md,
                &self.counters,
            );
            let _ = reply.send((slot, res));
            return Ok(());
        }
        self.jobs
            .send(FileJob {
                path: path.to_path_buf(),
                meta: md,
                slot,
                reply: reply.clone(),
            })
            .map_err(|_| RepoError::Config("file workers stopped".into()))
    }

    fn cached(&self, path: &Path, md: &Metadata) -> Result<Option<Vec<Segment>>> {
        let Some(c) = self.repo.index().file(path.as_os_str().as_bytes())? else {
            return Ok(None);
        };
        if c.inode != md.ino()
            || c.size != md.size()
            || c.mtime != stamp(md.mtime(), md.mtime_nsec())
            || c.ctime != stamp(md.ctime(), md.ctime_nsec())
        {
            return Ok(None);
        }
        for s in &c.segments {
            if let Segment::Data { id, .. } = s {
                if !self.repo.index().has_blob(id)? {
                    return Ok(None);
                }
            }
        }
        Ok(Some(c.segments))
    }

    /// Stores the tree of directory `path`. An unreadable directory is
    /// reported and yields `None`, so the caller leaves it out.
    fn dir(&self, path: &Path, root_dev: u64) -> Result<Option<BlobId>> {
        self.counters.dirs.fetch_add(1, Ordering::Relaxed);
        let names = match fsmeta::read_dir_names(path) {
            Ok(n) => n,
            Err(e) => {
                report(&self.counters, path, &e);
                return Ok(None);
            }
        };
        let (tx, rx) = unbounded();
        let mut nodes: Vec<Option<Node>> = Vec::with_capacity(names.len());
        let mut pending = 0usize;
        let mut subdirs = Vec::new();
        for name in names {
            let child = path.join(OsStr::from_bytes(&name));
            if self.excludes.is_match(&child) {
                continue;
            }
            let md = match std::fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    report(&self.counters, &child, &e);
                    continue;
                }
            };
            if md.file_type().is_file() {
                nodes.push(Some(self.node(
                    &child,
                    &md,
                    NodeKind::File,
                    Body::File(Vec::new()),
                )));
                self.submit(&child, md, nodes.len() - 1, &tx)?;
                pending += 1;
            } else if md.file_type().is_dir() {
                subdirs.push((child, md));
            } else if let Some(n) = self.entry(&child, md, root_dev)? {
                nodes.push(Some(n));
            }
        }
        let sub: Vec<Result<Option<Node>>> = subdirs
            .into_par_iter()
            .map(|(child, md)| self.entry(&child, md, root_dev))
            .collect();
        for n in sub {
            nodes.push(n?);
        }
        let mut fatal = None;
        drop(tx); // a reply channel that closes early means a worker died
        for _ in 0..pending {
            let (slot, res) = rx.recv().map_err(|_| workers_gone())?;
            match res {
                Ok((segs, len)) => {
                    let n = nodes[slot].as_mut().expect("slot holds a file node");
                    n.meta.size = len;
                    n.body = Body::File(segs);
                }
                Err(FileError::Skip(e)) => {
                    report(
                        &self.counters,
                        &path.join(OsStr::from_bytes(&nodes[slot].as_ref().expect("slot").name)),
                        &e,
                    );
                    nodes[slot] = None;
                }
                Err(FileError::Fatal(e)) => fatal = fatal.or(Some(e)),
            }
        }
        if let Some(e) = fatal {
            return Err(e);
        }
        let mut nodes: Vec<Node> = nodes.into_iter().flatten().collect();
        self.store_tree(&mut nodes).map(Some)
    }

    fn store_tree(&self, nodes: &mut [Node]) -> Result<BlobId> {
        let bytes = encode_tree(nodes);
        let id = self.repo.keys().blob_id(&bytes);
        self.writer.add(BlobType::Tree, id, bytes)?;
        Ok(id)
    }
}

/// Reads one file, reports a change during the read, and updates the file
/// cache. Runs on a file reader, or inline on a walker thread for files of
/// at most one chunk.
fn process_file(
    repo: &Repository,
    chunker: &Chunker,
    writer: &BlobWriter,
    path: &Path,
    meta: &Metadata,
    c: &Counters,
) -> std::result::Result<(Vec<Segment>, u64), FileError> {
    let content = read_file(repo, chunker, writer, path, meta)?;
    c.read.fetch_add(content.bytes_read, Ordering::Relaxed);
    if content.changed {
        c.warnings.fetch_add(1, Ordering::Relaxed);
        errln!(
            "warning: {} changed while it was read; the revision holds the bytes read",
            path.display()
        );
    } else if content.short {
        // Not counted as a warning: it says the same on every backup.
        errln!(
            "note: {} gave {} bytes where its size says {} (a file of /proc or /sys, say); the revision holds the bytes read",
            path.display(),
            content.size,
            meta.size()
        );
    } else {
        let entry = FileCacheEntry {
            inode: meta.ino(),
            size: meta.size(),
            mtime: stamp(meta.mtime(), meta.mtime_nsec()),
            ctime: stamp(meta.ctime(), meta.ctime_nsec()),
            segments: content.segments.clone(),
        };
        repo.index()
            .put_file(path.as_os_str().as_bytes(), &entry)
            .map_err(|e| FileError::Fatal(e.into()))?;
    }
    Ok((content.segments, content.size))
}

fn file_worker(repo: &Repository, writer: &BlobWriter, jobs: &Receiver<FileJob>, c: &Counters) {
    let chunker = Chunker::new(repo.keys().gear_seed());
    for job in jobs {
        let res = process_file(repo, &chunker, writer, &job.path, &job.meta, c);
        let _ = job.reply.send((job.slot, res));
    }
}

fn spawn_progress(c: Arc<Counters>) -> (Sender<()>, std::thread::JoinHandle<()>) {
    let (tx, rx) = bounded::<()>(0);
    let t = std::thread::spawn(move || {
        let start = Instant::now();
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            rx.recv_timeout(Duration::from_secs(1))
        {
            errp!(
                "\r[{:>4}s] {} files, {} dirs, {} read   ",
                start.elapsed().as_secs(),
                c.files.load(Ordering::Relaxed),
                c.dirs.load(Ordering::Relaxed),
                crate::human_bytes(c.read.load(Ordering::Relaxed))
            );
        }
        errp!("\r\x1b[K");
    });
    (tx, t)
}

//! Restore workers: write one file's content and metadata.

use super::{Counters, FileJob};
use crate::format::tree::{Node, NodeKind, Segment};
use crate::format::BlobId;
use crate::fsmeta;
use crate::lru::Lru;
use crate::repo::Repository;
use crossbeam_channel::Receiver;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Files with at most this much data are restored in batches.
const SMALL: u64 = 1 << 20;
/// A batch holds at most this many files, and this much data.
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;
/// The chunks of a file not read in a batch are read about this much at
/// a time (up to one chunk more), the window split among the cores, so
/// that one huge file (a disk image) is decoded on every core; the
/// neighbouring chunks of each part come with one ranged read.
const WINDOW_BYTES: u64 = 8 << 20;

/// Decoded chunks kept for chunks that come again (the same block repeated
/// in a file or across files, which deduplication stores once): read and
/// decoded once while they are among the most recent this many bytes.
const RECENT_BYTES: usize = 32 << 20;

/// A chunk read for a batch, or the error that reading it gave.
type Chunk = Result<Arc<Vec<u8>>, String>;

/// The chunks the workers decoded last, shared by them.
pub(crate) struct Recent(Mutex<Lru<BlobId, Arc<Vec<u8>>>>);

impl Default for Recent {
    fn default() -> Self {
        Self(Mutex::new(Lru::new(RECENT_BYTES)))
    }
}

fn data_len(node: &Node) -> u64 {
    node.segments()
        .iter()
        .filter(|s| matches!(s, Segment::Data { .. }))
        .map(Segment::len)
        .sum()
}

/// Restores the files of `jobs`. Small files that come one after another
/// are taken as a batch, and their chunks read with
/// `Repository::read_blobs_cached`: files written together lie side by side
/// in a pack, so one ranged read serves many of them, which is what a
/// restore of many small files from a remote tier waits on.
pub(crate) fn worker(repo: &Repository, recent: &Recent, jobs: &Receiver<FileJob>, c: &Counters) {
    let mut next = None;
    loop {
        let Some(first) = next.take().or_else(|| jobs.recv().ok()) else {
            return;
        };
        if c.full.load(Ordering::Relaxed) {
            // The target is full: the rest of the queue is let go.
            continue;
        }
        let mut bytes = data_len(&first.node);
        let small = bytes <= SMALL;
        let mut batch = vec![first];
        while small && batch.len() < BATCH_FILES {
            let Ok(j) = jobs.try_recv() else { break };
            let len = data_len(&j.node);
            if len > SMALL || bytes + len > BATCH_BYTES {
                next = Some(j);
                break;
            }
            bytes += len;
            batch.push(j);
        }
        let mut got = HashMap::new();
        if batch.len() > 1 {
            let ids: Vec<BlobId> = batch
                .iter()
                .flat_map(|j| j.node.segments())
                .filter_map(Segment::data_id)
                .collect();
            // Other workers keep the cores busy: one part, so that
            // neighbours come with one ranged read.
            got = read_chunks(repo, recent, &ids, 1);
        }
        for job in batch {
            restore_one(repo, recent, &job, &got, c);
        }
    }
}

/// The chunks of `ids`: those in `recent`, and the others read with
/// `Repository::read_blobs_cached`, split into at most `parts` parts read
/// side by side. A chunk that fails here failed on every tier, read alone
/// too; its error goes to its file.
fn read_chunks(
    repo: &Repository,
    recent: &Recent,
    ids: &[BlobId],
    parts: usize,
) -> HashMap<BlobId, Chunk> {
    use rayon::prelude::*;
    let mut got = HashMap::new();
    let mut wanted = Vec::new();
    let mut seen = std::collections::HashSet::new();
    {
        let mut r = recent.0.lock().expect("recent chunks");
        for id in ids {
            if !seen.insert(*id) {
                continue;
            }
            match r.get(id) {
                Some(d) => {
                    got.insert(*id, Ok(d));
                }
                None => wanted.push(*id),
            }
        }
    }
    let read = |part: &[BlobId]| {
        let mut got = HashMap::new();
        repo.read_blobs_cached(part, None, &mut |id, res| {
            got.insert(*id, res.map(Arc::new).map_err(|e| e.to_string()));
        });
        got
    };
    let parts = parts.min(wanted.len());
    let read = if parts <= 1 {
        read(&wanted)
    } else {
        wanted
            .par_chunks(wanted.len().div_ceil(parts))
            .map(read)
            .reduce(HashMap::new, |mut a, b| {
                a.extend(b);
                a
            })
    };
    let mut r = recent.0.lock().expect("recent chunks");
    for (id, res) in read {
        if let Ok(d) = &res {
            r.put(id, d.clone(), d.len());
        }
        got.insert(id, res);
    }
    got
}

/// From segment `from`, the data chunks of the next window and the index
/// of the segment after it.
fn next_window(segs: &[Segment], from: usize) -> (Vec<BlobId>, usize) {
    let (mut ids, mut bytes, mut end) = (Vec::new(), 0, from);
    while end < segs.len() && bytes < WINDOW_BYTES {
        if let Some(id) = segs[end].data_id() {
            ids.push(id);
            bytes += segs[end].len();
        }
        end += 1;
    }
    (ids, end)
}

fn restore_one(
    repo: &Repository,
    recent: &Recent,
    job: &FileJob,
    got: &HashMap<BlobId, Chunk>,
    c: &Counters,
) {
    match write_content(repo, recent, &job.path, &job.node, got) {
        Ok(bytes) => {
            c.files.fetch_add(1, Ordering::Relaxed);
            c.bytes.fetch_add(bytes, Ordering::Relaxed);
            restore_metadata(&job.path, &job.node, c);
        }
        Err(e) => {
            // Never leave a file with wrong or missing bytes behind.
            let _ = std::fs::remove_file(&job.path);
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(super::is_full)
            {
                // One error for the whole restore, from `run`.
                c.full.store(true, Ordering::Relaxed);
                return;
            }
            c.error(format_args!(
                "{}: {e}; the file was not restored",
                job.path.display()
            ));
        }
    }
}

/// Writes a file's data: chunks from `got` (read for its batch, or failed
/// there), or read now, a window at a time (`next_window`).
fn write_content(
    repo: &Repository,
    recent: &Recent,
    path: &Path,
    node: &Node,
    got: &HashMap<BlobId, Chunk>,
) -> anyhow::Result<u64> {
    if let Err(e) = std::fs::remove_file(path) {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            anyhow::bail!(
                "a directory of that name is in the way (restore never replaces one; {e}); move it aside and run the restore again"
            );
        }
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut off = 0u64;
    let mut written = 0u64;
    let segs = node.segments();
    // A small file is one part: its chunks are few and neighbours.
    let parts = if data_len(node) <= SMALL {
        1
    } else {
        rayon::current_num_threads()
    };
    let (mut window, mut window_end) = (HashMap::new(), 0);
    for (k, seg) in segs.iter().enumerate() {
        if let Segment::Data { id, .. } = seg {
            if !got.contains_key(id) && k >= window_end {
                let ids;
                (ids, window_end) = next_window(segs, k);
                // Emptied first: the old window's chunks are not held
                // while the next one is read.
                window.clear();
                window = read_chunks(repo, recent, &ids, parts);
            }
            let read;
            let data = match got.get(id).or_else(|| window.get(id)) {
                Some(Ok(d)) => &d[..],
                Some(Err(e)) => anyhow::bail!("{e}"),
                None => {
                    read = repo.read_blob(id)?;
                    &read[..]
                }
            };
            anyhow::ensure!(
                data.len() as u64 == seg.len(),
                "chunk {} holds {} bytes where the file has {}",
                id.short(),
                data.len(),
                seg.len()
            );
            f.write_all_at(data, off)?;
            written += data.len() as u64;
        }
        off += seg.len();
    }
    // Extends over a trailing hole without writing it.
    f.set_len(node.meta.size)?;
    Ok(written)
}

static CHOWN_WARNED: AtomicBool = AtomicBool::new(false);

/// Owner, xattrs, mode, then times: xattrs before the mode, because
/// setting `user.*` xattrs needs write permission that a read-only mode
/// would take away from a non-root user. Failures are reported, counted as
/// warnings, and do not stop the restore.
pub(crate) fn restore_metadata(path: &Path, node: &Node, c: &Counters) {
    let m = &node.meta;
    let warn = |what: &str, e: std::io::Error| {
        c.warnings.fetch_add(1, Ordering::Relaxed);
        errln!("warning: {}: cannot restore {what}: {e}", path.display());
    };
    if let Err(e) = fsmeta::lchown(path, m.uid, m.gid) {
        if e.raw_os_error() == Some(libc::EPERM) {
            c.warnings.fetch_add(1, Ordering::Relaxed);
            if !CHOWN_WARNED.swap(true, Ordering::Relaxed) {
                errln!("warning: not permitted to restore owners (run as root to restore them); files keep your ownership");
            }
        } else {
            warn("owner", e);
        }
    }
    for (k, v) in &m.xattrs {
        if let Err(e) = fsmeta::set_xattr(path, k, v) {
            warn(&format!("xattr {}", String::from_utf8_lossy(k)), e);
        }
    }
    if node.kind != NodeKind::Symlink {
        if let Err(e) = fsmeta::chmod(path, m.mode) {
            warn("mode", e);
        }
    }
    if let Err(e) = fsmeta::set_times(path, m.atime, m.mtime) {
        warn("times", e);
    }
}

//! Restore workers: write one file's content and metadata.

use super::{Counters, FileJob};
use crate::format::tree::{Node, NodeKind, Segment};
use crate::fsmeta;
use crate::repo::Repository;
use crossbeam_channel::Receiver;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) fn worker(repo: &Repository, jobs: &Receiver<FileJob>, c: &Counters) {
    for job in jobs {
        match write_content(repo, &job.path, &job.node) {
            Ok(bytes) => {
                c.files.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(bytes, Ordering::Relaxed);
                restore_metadata(&job.path, &job.node, c);
            }
            Err(e) => {
                // Never leave a file with wrong or missing bytes behind.
                let _ = std::fs::remove_file(&job.path);
                c.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "error: {}: {e}; the file was not restored",
                    job.path.display()
                );
            }
        }
    }
}

fn write_content(repo: &Repository, path: &Path, node: &Node) -> anyhow::Result<u64> {
    let _ = std::fs::remove_file(path);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut off = 0u64;
    let mut written = 0u64;
    for seg in node.segments() {
        if let Segment::Data { id, .. } = seg {
            let data = repo.read_blob(id)?;
            f.write_all_at(&data, off)?;
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
        eprintln!("warning: {}: cannot restore {what}: {e}", path.display());
    };
    if let Err(e) = fsmeta::lchown(path, m.uid, m.gid) {
        if e.raw_os_error() == Some(libc::EPERM) {
            c.warnings.fetch_add(1, Ordering::Relaxed);
            if !CHOWN_WARNED.swap(true, Ordering::Relaxed) {
                eprintln!("warning: not permitted to restore owners (run as root to restore them); files keep your ownership");
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

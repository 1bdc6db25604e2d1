//! `tiervault backup`: walks paths, stores new content, writes the revision.
//!
//! Shape of the pipeline (both cores busy, memory bounded by channel sizes):
//! ```text
//! walker (main) --files--> file workers: read, chunk, hash --new blobs--> BlobWriter
//!      \--> trees, bottom-up ---------------------------------------------/
//! ```
//! The walker lists a directory, queues its regular files, descends into
//! its subdirectories, then collects the file results and stores the
//! directory's tree. The revision is written after the writer has flushed
//! every pack and index file, so a killed backup publishes nothing partial,
//! and what it had stored is in the local index for the next run to reuse.
//!
//! Per-entry failures (unreadable, vanished) are reported and skipped and
//! make the run end with exit code 3; tier and index failures abort it.

mod file;
mod walk;

use crate::format::revision::{Revision, RevisionStats};
use crate::format::BlobId;
use crate::repo::writer::{adopt_unindexed_packs, BlobWriter};
use crate::repo::{hostname, now, Repository, Result};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub host: Option<String>,
    pub excludes: Vec<String>,
    pub one_file_system: bool,
    /// Threads that read and chunk files.
    pub readers: usize,
    /// Print progress to stderr.
    pub progress: bool,
}

#[derive(Debug)]
pub struct BackupSummary {
    pub id: BlobId,
    pub revision: Revision,
    /// Entries that could not be read and were left out.
    pub errors: u64,
    pub warnings: u64,
    pub stored_bytes: u64,
    pub bytes_read: u64,
}

pub fn run(repo: Arc<Repository>, opts: &BackupOptions) -> Result<BackupSummary> {
    let start = now();
    let paths = walk::normalize(&opts.paths)?;
    // Raises the tiers' revisions before anything is written (tier rule 4),
    // and stops if another installation writes here (rule 5).
    let session = repo.begin_write(false)?;
    let leftovers = adopt_unindexed_packs(&repo)?;
    if leftovers > 0 {
        errln!("indexed {leftovers} pack(s) left by an interrupted backup; their data is reused");
    }
    let writer = Arc::new(BlobWriter::new(repo.clone(), 2));
    let outcome = walk::Walker::run(repo.clone(), writer.clone(), opts, &paths);
    let writer =
        Arc::try_unwrap(writer).unwrap_or_else(|_| unreachable!("file workers have exited"));
    let stats = writer.stats();
    // Flush packs even when the walk failed, so the next run reuses them.
    let flushed = writer.finish();
    let walked = outcome?;
    flushed?;
    let (added_blobs, added_bytes) = (
        stats.blobs_added.load(Ordering::Relaxed),
        stats.bytes_added.load(Ordering::Relaxed),
    );
    let stored = stats.stored_bytes.load(Ordering::Relaxed);

    let host = opts.host.clone().unwrap_or_else(hostname);
    let path_bytes: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| p.as_os_str().as_encoded_bytes().to_vec())
        .collect();
    let parent = repo
        .revisions()?
        .into_iter()
        .rev()
        .find(|(_, r)| r.host == host && r.paths == path_bytes)
        .map(|(id, _)| id);
    let revision = Revision {
        time: start,
        end_time: now(),
        host,
        user: std::env::var("USER").unwrap_or_default(),
        paths: path_bytes,
        tags: opts.tags.clone(),
        tree: walked.root,
        parent,
        program: format!("tiervault {}", env!("CARGO_PKG_VERSION")),
        stats: RevisionStats {
            files: walked.files,
            dirs: walked.dirs,
            bytes: walked.bytes,
            bytes_added: added_bytes,
            blobs_added: added_blobs,
            errors: walked.errors,
        },
    };
    let id = repo.save_revision(&revision)?;
    drop(session);
    // The revision is stored: what remains is the local record of
    // unchanged files, a cache (on a full disk, say).
    let mut warnings = walked.warnings;
    if let Err(e) = repo.index().flush_files() {
        errln!(
            "warning: revision {} is saved, but the local record of unchanged files could not be kept, so the next backup reads every file again: {e}",
            id.short()
        );
        warnings += 1;
    }
    Ok(BackupSummary {
        id,
        revision,
        errors: walked.errors,
        warnings,
        stored_bytes: stored,
        bytes_read: walked.read,
    })
}

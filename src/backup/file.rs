//! Reading one regular file into content segments.
//!
//! Data regions come from `SEEK_DATA`/`SEEK_HOLE` when the file has fewer
//! blocks than its size suggests, so holes are recorded as holes and not
//! read. Each region is chunked on its own. The file is opened with
//! `O_NOATIME` and `O_NOFOLLOW`, and stat'ed again after reading to detect
//! a change while it was read.

use crate::format::chunker::Chunker;
use crate::format::tree::{Segment, Timestamp};
use crate::format::BlobType;
use crate::fsmeta;
use crate::repo::writer::BlobWriter;
use crate::repo::{RepoError, Repository};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub enum FileError {
    /// This file is skipped; the backup goes on.
    Skip(std::io::Error),
    /// The backup cannot go on (a tier or the index failed).
    Fatal(RepoError),
}

pub struct FileContent {
    pub segments: Vec<Segment>,
    /// Bytes covered by the segments (less than the stat size if it shrank).
    pub size: u64,
    /// Its metadata changed while it was read.
    pub changed: bool,
    /// It ended before its size, its metadata unchanged: a file of `/proc`
    /// or `/sys`, whose size is a placeholder.
    pub short: bool,
    pub bytes_read: u64,
}

pub fn stamp(sec: i64, nsec: i64) -> Timestamp {
    Timestamp {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

pub fn read_file(
    repo: &Repository,
    chunker: &Chunker,
    writer: &BlobWriter,
    path: &Path,
    before: &std::fs::Metadata,
) -> Result<FileContent, FileError> {
    let mut f = fsmeta::open_file(path).map_err(FileError::Skip)?;
    let opened = f.metadata().map_err(FileError::Skip)?;
    if !opened.is_file() || opened.ino() != before.ino() || opened.dev() != before.dev() {
        return Err(FileError::Skip(std::io::Error::other(
            "replaced by another file while the backup ran",
        )));
    }
    let size = before.size();
    if size > 1 << 20 {
        // Larger readahead: fewer, bigger reads from the disk.
        // SAFETY: posix_fadvise on an open descriptor; only a hint.
        unsafe {
            libc::posix_fadvise(
                std::os::unix::io::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_SEQUENTIAL,
            )
        };
    }
    let regions = if before.blocks() * 512 < size {
        fsmeta::data_regions(&f, size).map_err(FileError::Skip)?
    } else {
        vec![(0, size)]
    };
    let mut segments = Vec::new();
    let mut pos = 0u64;
    let mut bytes_read = 0u64;
    let mut fatal: Option<RepoError> = None;
    let mut ended = false;
    for (off, len) in regions {
        if off > pos {
            segments.push(Segment::Hole { len: off - pos });
        }
        f.seek(SeekFrom::Start(off)).map_err(FileError::Skip)?;
        let mut got = 0u64;
        chunker
            .stream(&mut f, len, |chunk| {
                got += chunk.len() as u64;
                let id = repo.keys().blob_id(&chunk);
                segments.push(Segment::Data {
                    id,
                    len: chunk.len() as u32,
                });
                writer
                    .add(BlobType::Data, id, chunk)
                    .map(|_| ())
                    .map_err(|e| {
                        fatal = Some(e);
                        std::io::Error::other("storing failed")
                    })
            })
            .map_err(|e| match fatal.take() {
                Some(r) => FileError::Fatal(r),
                None => FileError::Skip(e),
            })?;
        bytes_read += got;
        pos = off + got;
        if got < len {
            // It shrank while read, or its size was never its length.
            ended = true;
            break;
        }
    }
    let after = f.metadata().map_err(FileError::Skip)?;
    if !ended && pos < size && after.size() >= size {
        // Trailing hole.
        segments.push(Segment::Hole { len: size - pos });
        pos = size;
    }
    let changed = after.size() != size
        || after.mtime() != before.mtime()
        || after.mtime_nsec() != before.mtime_nsec()
        || after.ctime() != before.ctime()
        || after.ctime_nsec() != before.ctime_nsec();
    Ok(FileContent {
        segments,
        size: pos,
        changed,
        short: !changed && pos != size,
        bytes_read,
    })
}

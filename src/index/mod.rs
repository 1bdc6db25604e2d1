//! The local index and cache, in RocksDB under the cache directory.
//!
//! It is only a cache: every fact in it can be rebuilt from any one tier, so
//! deleting the directory loses nothing. Column families:
//! - `blobs`: blob id -> pack id, offset, lengths, type, compression;
//! - `packs`: pack id -> pack length, and whether an index file on the tiers
//!   covers it yet;
//! - `files`: absolute path -> inode, size, mtime, ctime and content, so an
//!   unchanged file is not read again;
//! - `trees`: tree id -> decoded tree bytes;
//! - `meta`: index files already loaded, and other small facts.
//!
//! Blobs are added only after their pack is durably stored on a tier, so the
//! index never names data that does not exist. After a failed write the
//! index refuses further writes (`PreviousFailure`) rather than continuing
//! over a half-written cache.

use crate::format::codec::{Dec, Enc};
use crate::format::tree::{decode_segments, encode_segments, Segment, Timestamp};
use crate::format::{BlobEntry, BlobId, BlobType, FormatError};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, DB};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("the cache at {path} is in use by another tiervault process; wait for it to finish, or give this one its own --cache-dir")]
    Locked { path: PathBuf },
    #[error("local cache at {path}: {msg}; it is only a cache: delete that directory and run the command again")]
    Rocks { path: PathBuf, msg: String },
    #[error("the disk of the local cache at {path} is full ({free} bytes free): free some space there, or give tiervault a --cache-dir (TIERVAULT_CACHE_DIR) on another disk; the repository on the tiers is unharmed")]
    Full { path: PathBuf, free: u64 },
    #[error("the local cache at {path} cannot be written ({msg}): give tiervault a --cache-dir (TIERVAULT_CACHE_DIR) this user can write; the cache is rebuilt from the tiers")]
    Unwritable { path: PathBuf, msg: String },
    #[error("the local cache at {path} is damaged ({msg}); it is only a cache, and the next command rebuilds it from the tiers: run the command again")]
    Damaged { path: PathBuf, msg: String },
    #[error("an earlier write to the local cache failed; no further writes until it is reopened")]
    PreviousFailure,
}

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLoc {
    pub pack: BlobId,
    pub entry: BlobEntry,
}

/// What the backup file cache remembers about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCacheEntry {
    pub inode: u64,
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub segments: Vec<Segment>,
}

const CFS: [&str; 5] = ["blobs", "packs", "files", "trees", "meta"];

pub struct Index {
    db: DB,
    path: PathBuf,
    failed: AtomicBool,
}

fn encode_loc(pack: &BlobId, e: &BlobEntry) -> Vec<u8> {
    let mut enc = Enc::new();
    enc.raw(&pack.0)
        .u32(e.offset)
        .u32(e.stored_len)
        .u32(e.raw_len)
        .u8(e.kind as u8)
        .u8(u8::from(e.compressed));
    enc.finish()
}

fn decode_loc(id: BlobId, b: &[u8]) -> Result<BlobLoc, FormatError> {
    let mut d = Dec::new(b);
    let pack = BlobId(d.array()?);
    let (offset, stored_len, raw_len) = (d.u32()?, d.u32()?, d.u32()?);
    let kind = BlobType::from_u8(d.u8()?)?;
    let compressed = d.u8()? == 1;
    Ok(BlobLoc {
        pack,
        entry: BlobEntry {
            id,
            kind,
            compressed,
            offset,
            stored_len,
            raw_len,
        },
    })
}

/// A key of the `packs` table: the pack's id.
fn pack_key(k: &[u8]) -> Result<BlobId, FormatError> {
    Ok(BlobId(
        k.try_into()
            .map_err(|_| FormatError::Invalid("pack key length"))?,
    ))
}

/// A value of the `packs` table: the pack's length, and whether an index
/// file on the tiers covers it.
fn pack_value(v: &[u8]) -> Option<(u64, bool)> {
    let len = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    Some((len, v.get(8) == Some(&1)))
}

/// The room RocksDB needs to open: a new write-ahead log, manifest and
/// options file, and the header of its info log. Below it, the index is
/// not opened (see [`Index::open`]).
const MIN_FREE: u64 = 1 << 20;

/// The bytes this process may still write on the file system holding
/// `path` (root may use the blocks kept for it).
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    let blocks = if unsafe { libc::geteuid() } == 0 {
        st.f_bfree
    } else {
        st.f_bavail
    };
    Some((blocks as u64).saturating_mul(st.f_frsize as u64))
}

/// Refuses a cache at `path` (or below its nearest existing ancestor)
/// whose disk has no room for RocksDB to open.
pub fn check_room(path: &Path) -> Result<(), IndexError> {
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return Ok(());
    };
    match free_bytes(existing) {
        Some(free) if free < MIN_FREE => Err(IndexError::Full {
            path: path.into(),
            free,
        }),
        _ => Ok(()),
    }
}

/// What the OS says when a directory cannot be made or written: deleting
/// the cache would not help, another place would.
const UNWRITABLE: [&str; 4] = [
    "Permission denied",
    "Read-only file system",
    "Not a directory",
    "File exists",
];

fn decode_file(v: &[u8]) -> Result<FileCacheEntry, FormatError> {
    let mut d = Dec::new(v);
    let inode = d.u64()?;
    let size = d.u64()?;
    let mtime = Timestamp {
        sec: d.i64()?,
        nsec: d.u32()?,
    };
    let ctime = Timestamp {
        sec: d.i64()?,
        nsec: d.u32()?,
    };
    let segments = decode_segments(&mut d)?;
    Ok(FileCacheEntry {
        inode,
        size,
        mtime,
        ctime,
        segments,
    })
}

/// A file in the index directory that asks the next [`Index::open`] to
/// empty the index: a command met damage in it, which RocksDB reports only
/// when it reads the damaged block.
const REBUILD: &str = "REBUILD";

/// The error for damage found in the index at `path`, which is marked to
/// be rebuilt when next opened.
fn damaged(path: &Path, msg: String) -> IndexError {
    // Best effort: without the mark the error still says what happened.
    let _ = std::fs::write(path.join(REBUILD), &msg);
    IndexError::Damaged {
        path: path.into(),
        msg,
    }
}

/// The error for a RocksDB failure at `path`: a full disk, or a place
/// this user cannot write, says so; damage marks the index for rebuilding.
fn rocks_error(path: &Path, msg: String) -> IndexError {
    if msg.contains("Corruption") {
        damaged(path, msg)
    } else if msg.contains("No space left on device") || msg.contains("Disk quota exceeded") {
        IndexError::Full {
            path: path.into(),
            free: free_bytes(path).unwrap_or(0),
        }
    } else if UNWRITABLE.iter().any(|w| msg.contains(w)) {
        IndexError::Unwritable {
            path: path.into(),
            msg,
        }
    } else {
        IndexError::Rocks {
            path: path.into(),
            msg,
        }
    }
}

impl Index {
    /// Opens (or creates) the index at `path`, with `block_cache` bytes of
    /// RocksDB blocks kept in memory.
    ///
    /// Debian's RocksDB is built with its assertions on, and one of them
    /// aborts the process when its info log is written to again after a
    /// write to it failed. So a full disk is refused before opening, and
    /// only fatal messages go to the info log: a disk that fills up during
    /// a command then fails that command's next write with "full", which
    /// the caller reports, instead of aborting.
    pub fn open(path: &Path, block_cache: usize) -> Result<Self, IndexError> {
        std::fs::create_dir_all(path).map_err(|e| rocks_error(path, e.to_string()))?;
        check_room(path)?;
        let mut opts = Options::default();
        opts.set_log_level(rocksdb::LogLevel::Fatal);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(2);
        opts.set_write_buffer_size(16 << 20);
        // Opening reads nothing it can skip: the commands (and the first
        // listing of a mount) wait for it. Table statistics only tune
        // compaction, and a truncated table file is found when it is read.
        opts.set_skip_stats_update_on_db_open(true);
        opts.set_skip_checking_sst_file_sizes_on_db_open(true);
        // One block cache for all column families, so memory stays bounded
        // (the default gives each its own 8 MiB cache and 64 MiB memtable).
        let cache = rocksdb::Cache::new_lru_cache(block_cache).map_err(|e| IndexError::Rocks {
            path: path.into(),
            msg: e.to_string(),
        })?;
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let cf_opts = || {
            let mut o = Options::default();
            o.set_write_buffer_size(16 << 20);
            o.set_block_based_table_factory(&table);
            o
        };
        let open = || {
            let cfs = CFS
                .iter()
                .map(|n| ColumnFamilyDescriptor::new(*n, cf_opts()));
            DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| {
                let msg = e.to_string();
                if msg.contains("lock") && (msg.contains("unavailable") || msg.contains("Resource"))
                {
                    IndexError::Locked { path: path.into() }
                } else {
                    rocks_error(path, msg)
                }
            })
        };
        let mut db = match open() {
            // RocksDB takes its lock before it reads anything, so no other
            // process has this index open: it is emptied and made anew.
            Err(IndexError::Damaged { msg, .. }) => {
                errln!(
                    "warning: the local cache at {} is damaged ({msg}); rebuilding it from the tiers",
                    path.display()
                );
                std::fs::remove_dir_all(path)
                    .and_then(|()| std::fs::create_dir_all(path))
                    .map_err(|e| rocks_error(path, e.to_string()))?;
                open()?
            }
            r => r?,
        };
        // Damage met by an earlier command: the column families are
        // dropped (with their files) and made empty, under RocksDB's lock.
        if let Ok(why) = std::fs::read_to_string(path.join(REBUILD)) {
            errln!(
                "warning: the local cache at {} was found damaged ({}); rebuilding it from the tiers",
                path.display(),
                why.trim()
            );
            for n in CFS {
                db.drop_cf(n)
                    .map_err(|e| rocks_error(path, e.to_string()))?;
                db.create_cf(n, &cf_opts())
                    .map_err(|e| rocks_error(path, e.to_string()))?;
            }
            std::fs::remove_file(path.join(REBUILD))
                .map_err(|e| rocks_error(path, e.to_string()))?;
        }
        Ok(Self {
            db,
            path: path.into(),
            failed: AtomicBool::new(false),
        })
    }

    /// The error for a value in the index that does not decode.
    fn damaged(&self, e: FormatError) -> IndexError {
        damaged(&self.path, e.to_string())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn rerr(&self, e: rocksdb::Error) -> IndexError {
        rocks_error(&self.path, e.to_string())
    }

    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        self.db.get_cf(self.cf(cf), key).map_err(|e| self.rerr(e))
    }

    fn write(&self, batch: WriteBatch) -> Result<(), IndexError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(IndexError::PreviousFailure);
        }
        self.db.write(batch).map_err(|e| {
            self.failed.store(true, Ordering::SeqCst);
            self.rerr(e)
        })
    }

    pub fn blob(&self, id: &BlobId) -> Result<Option<BlobLoc>, IndexError> {
        match self.get("blobs", &id.0)? {
            Some(v) => Ok(Some(decode_loc(*id, &v).map_err(|e| self.damaged(e))?)),
            None => Ok(None),
        }
    }

    pub fn has_blob(&self, id: &BlobId) -> Result<bool, IndexError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf("blobs"), id.0)
            .map_err(|e| self.rerr(e))?
            .is_some())
    }

    /// Records a stored pack and its blobs in one atomic batch.
    pub fn add_pack(
        &self,
        pack: &BlobId,
        pack_len: u64,
        entries: &[BlobEntry],
        indexed: bool,
    ) -> Result<(), IndexError> {
        let mut b = WriteBatch::default();
        for e in entries {
            b.put_cf(self.cf("blobs"), e.id.0, encode_loc(pack, e));
        }
        let mut v = pack_len.to_le_bytes().to_vec();
        v.push(u8::from(indexed));
        b.put_cf(self.cf("packs"), pack.0, v);
        self.write(b)
    }

    pub fn pack_len(&self, pack: &BlobId) -> Result<Option<u64>, IndexError> {
        Ok(self.pack_state(pack)?.map(|(len, _)| len))
    }

    /// A pack's length, and whether an index file on the tiers covers it.
    pub fn pack_state(&self, pack: &BlobId) -> Result<Option<(u64, bool)>, IndexError> {
        let Some(v) = self.get("packs", &pack.0)? else {
            return Ok(None);
        };
        Ok(Some(
            pack_value(&v).ok_or_else(|| self.damaged(FormatError::Truncated))?,
        ))
    }

    /// Removes packs, and the blobs they hold, from the index (a pack that
    /// no tier holds any more). Scans the blob table: a rare repair path.
    pub fn forget_packs(&self, gone: &std::collections::HashSet<BlobId>) -> Result<(), IndexError> {
        let mut b = WriteBatch::default();
        for item in self.db.iterator_cf(self.cf("blobs"), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.rerr(e))?;
            if v.len() >= 32 && gone.contains(&BlobId(v[..32].try_into().expect("32 bytes"))) {
                b.delete_cf(self.cf("blobs"), k);
            }
        }
        for p in gone {
            b.delete_cf(self.cf("packs"), p.0);
        }
        self.write(b)
    }

    /// A pack the local index knows, with its length: the largest of the
    /// first few (a small pack of trees would not show throughput).
    pub fn some_pack(&self) -> Result<Option<(BlobId, u64)>, IndexError> {
        let mut best: Option<(BlobId, u64)> = None;
        for item in self
            .db
            .iterator_cf(self.cf("packs"), IteratorMode::Start)
            .take(16)
        {
            let (k, v) = item.map_err(|e| self.rerr(e))?;
            let (Ok(id), Some((len, _))) = (pack_key(&k), pack_value(&v)) else {
                continue;
            };
            if best.is_none_or(|(_, l)| len > l) {
                best = Some((id, len));
            }
        }
        Ok(best)
    }

    /// Every pack the local index knows.
    pub fn packs(&self) -> Result<Vec<BlobId>, IndexError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf("packs"), IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.rerr(e))?;
            out.push(pack_key(&k).map_err(|e| self.damaged(e))?);
        }
        Ok(out)
    }

    pub fn mark_indexed(&self, packs: &[(BlobId, u64)]) -> Result<(), IndexError> {
        let mut b = WriteBatch::default();
        for (p, len) in packs {
            let mut v = len.to_le_bytes().to_vec();
            v.push(1);
            b.put_cf(self.cf("packs"), p.0, v);
        }
        self.write(b)
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, IndexError> {
        self.get("meta", key.as_bytes())
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), IndexError> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf("meta"), key.as_bytes(), value);
        self.write(b)
    }

    pub fn file(&self, path: &[u8]) -> Result<Option<FileCacheEntry>, IndexError> {
        let Some(v) = self.get("files", path)? else {
            return Ok(None);
        };
        decode_file(&v).map(Some).map_err(|e| self.damaged(e))
    }

    pub fn put_file(&self, path: &[u8], f: &FileCacheEntry) -> Result<(), IndexError> {
        let mut e = Enc::new();
        e.u64(f.inode)
            .u64(f.size)
            .i64(f.mtime.sec)
            .u32(f.mtime.nsec)
            .i64(f.ctime.sec)
            .u32(f.ctime.nsec);
        encode_segments(&mut e, &f.segments);
        if self.failed.load(Ordering::SeqCst) {
            return Err(IndexError::PreviousFailure);
        }
        // The file cache skips the write-ahead log: an entry lost in a crash
        // only means that file is read again. `flush_files` persists them.
        let mut wo = rocksdb::WriteOptions::default();
        wo.disable_wal(true);
        self.db
            .put_cf_opt(self.cf("files"), path, e.finish(), &wo)
            .map_err(|e| {
                self.failed.store(true, Ordering::SeqCst);
                self.rerr(e)
            })
    }

    /// Persists file cache entries written without the write-ahead log.
    pub fn flush_files(&self) -> Result<(), IndexError> {
        self.db.flush_cf(self.cf("files")).map_err(|e| self.rerr(e))
    }

    pub fn tree(&self, id: &BlobId) -> Result<Option<Vec<u8>>, IndexError> {
        self.get("trees", &id.0)
    }

    pub fn put_tree(&self, id: &BlobId, plain: &[u8]) -> Result<(), IndexError> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf("trees"), id.0, plain);
        self.write(b)
    }

    /// Forgets every blob and pack (keeps the file cache, which is verified
    /// against the blob table before use). Used when the cache disagrees
    /// with the tiers.
    pub fn clear_blobs(&self) -> Result<(), IndexError> {
        let mut b = WriteBatch::default();
        for cf in ["blobs", "packs", "meta"] {
            for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
                let (k, _) = item.map_err(|e| self.rerr(e))?;
                b.delete_cf(self.cf(cf), k);
            }
        }
        self.write(b)
    }
}

//! The on-disk blob cache: blobs fetched from a remote tier are kept under
//! the cache dir, as the sealed (encrypted) bytes the tier returned, so a
//! second read of the same data does not cross the network again.
//!
//! The cache is bounded by a byte limit and drops the least recently used
//! blobs. Every hit is verified like a tier read; a damaged entry is deleted
//! and the blob is fetched again. Losing the directory loses nothing.

use crate::format::BlobId;
use crate::lru::Lru;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct DiskCache {
    dir: PathBuf,
    lru: Mutex<Lru<BlobId, ()>>,
}

impl DiskCache {
    /// Opens (creating) the cache at `dir`, bounded by `limit` bytes. Blobs
    /// left by an earlier run are kept, oldest-modified first in line to go.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(BlobId::from_hex) else {
                // A temporary file from a killed run, or a stranger.
                let _ = std::fs::remove_file(e.path());
                continue;
            };
            let m = e.metadata()?;
            found.push((m.modified().ok(), id, m.len()));
        }
        found.sort_by_key(|f| f.0);
        let cache = Self {
            dir: dir.to_path_buf(),
            lru: Mutex::new(Lru::new(usize::try_from(limit).unwrap_or(usize::MAX))),
        };
        for (_, id, len) in found {
            cache.admit(id, len as usize);
        }
        Ok(cache)
    }

    fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.to_hex())
    }

    fn admit(&self, id: BlobId, len: usize) {
        let dropped = self.lru.lock().expect("disk cache").put(id, (), len);
        for old in dropped {
            let _ = std::fs::remove_file(self.path(&old));
        }
    }

    /// The sealed bytes of `id`, if cached.
    pub fn get(&self, id: &BlobId) -> Option<Vec<u8>> {
        self.lru.lock().expect("disk cache").get(id)?;
        match std::fs::read(self.path(id)) {
            Ok(b) => Some(b),
            Err(_) => {
                self.remove(id);
                None
            }
        }
    }

    /// Keeps the sealed bytes of `id`. Failing to write (a full disk) only
    /// means the blob is not cached.
    pub fn put(&self, id: &BlobId, sealed: &[u8]) {
        let tmp = self
            .dir
            .join(format!(".tmp-{}-{}", id.to_hex(), std::process::id()));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(sealed))
            .and_then(|()| std::fs::rename(&tmp, self.path(id)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        self.admit(*id, sealed.len());
    }

    /// Drops a damaged entry.
    pub fn remove(&self, id: &BlobId) {
        self.lru.lock().expect("disk cache").remove(id);
        let _ = std::fs::remove_file(self.path(id));
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lru.lock().expect("disk cache").weight()
    }
}

#[cfg(test)]
mod tests {
    use super::DiskCache;
    use crate::format::BlobId;

    fn id(n: u8) -> BlobId {
        BlobId([n; 32])
    }

    #[test]
    fn bounded_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 250).unwrap();
        c.put(&id(1), &[1; 100]);
        c.put(&id(2), &[2; 100]);
        assert_eq!(c.get(&id(1)).unwrap(), vec![1; 100]);
        c.put(&id(3), &[3; 100]); // over 250: 2 is the least recent
        assert!(c.get(&id(2)).is_none());
        assert!(!dir.path().join(id(2).to_hex()).exists());
        assert_eq!(c.bytes(), 200);
        drop(c);
        // A new run finds what the last one kept, within the limit.
        let c = DiskCache::open(dir.path(), 250).unwrap();
        assert_eq!(c.bytes(), 200);
        assert_eq!(c.get(&id(3)).unwrap(), vec![3; 100]);
        let c = DiskCache::open(dir.path(), 150).unwrap();
        assert_eq!(c.bytes(), 100);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

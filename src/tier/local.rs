//! A tier in a local directory, which also covers a mounted network share.
//!
//! Writes go to `.tmp-*` in the target directory, are fsynced, renamed into
//! place, and the directory is fsynced, so a crash or a full disk leaves
//! either the old object or the whole new one. Listings skip `.tmp-*`
//! leftovers of interrupted writes, and remove those a day old (no write
//! takes that long: they are left by a killed process).

use super::{ObjectInfo, Tier, TierError};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct LocalTier {
    root: PathBuf,
    label: String,
    /// Recently read objects, kept open: reading many small blobs from one
    /// pack (a restore, `tar` through the mount) must not reopen it each
    /// time. Objects never change under their name (writes replace them by
    /// rename), so an open handle always reads the right bytes.
    handles: std::sync::Mutex<Vec<(String, std::sync::Arc<File>)>>,
}

/// Open handles kept per tier.
const HANDLES: usize = 32;

impl LocalTier {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let abs = std::path::absolute(&root).unwrap_or_else(|_| root.clone());
        Self {
            label: abs.display().to_string(),
            handles: std::sync::Mutex::new(Vec::new()),
            root: abs,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn err(&self, key: &str, e: io::Error) -> TierError {
        match e.kind() {
            io::ErrorKind::NotFound => TierError::NotFound {
                tier: self.label.clone(),
                key: key.into(),
            },
            _ if e.raw_os_error() == Some(libc::ENOSPC)
                || e.raw_os_error() == Some(libc::EDQUOT) =>
            {
                TierError::NoSpace {
                    tier: self.label.clone(),
                    key: key.into(),
                }
            }
            _ => TierError::Io {
                tier: self.label.clone(),
                key: key.into(),
                source: e,
            },
        }
    }

    /// An open handle for `key`, from the small most-recently-used list.
    fn handle(&self, key: &str) -> Result<std::sync::Arc<File>, TierError> {
        let mut h = self.handles.lock().expect("handles");
        if let Some(i) = h.iter().position(|(k, _)| k == key) {
            let entry = h.remove(i);
            let f = entry.1.clone();
            h.push(entry);
            return Ok(f);
        }
        drop(h);
        let f = std::sync::Arc::new(File::open(self.root.join(key)).map_err(|e| self.err(key, e))?);
        let mut h = self.handles.lock().expect("handles");
        if h.len() >= HANDLES {
            h.remove(0);
        }
        h.push((key.to_string(), f.clone()));
        Ok(f)
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let dir = path.parent().expect("object paths have a parent");
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let res = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }
}

impl Tier for LocalTier {
    fn name(&self) -> &str {
        &self.label
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, TierError> {
        fs::read(self.root.join(key)).map_err(|e| self.err(key, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, TierError> {
        let f = self.handle(key)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.err(
                    key,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("object shorter than {} bytes", offset + len),
                    ),
                )
            } else {
                self.err(key, e)
            }
        })?;
        Ok(buf)
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), TierError> {
        self.handles
            .lock()
            .expect("handles")
            .retain(|(k, _)| k != key);
        self.write_atomic(&self.root.join(key), data)
            .map_err(|e| self.err(key, e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError> {
        let mut out = Vec::new();
        let base = self.root.join(prefix);
        let mut stack = vec![(base, prefix.trim_end_matches('/').to_string())];
        while let Some((dir, key)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err(&key, e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| self.err(&key, e))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") {
                    remove_if_stale(&ent);
                    continue;
                }
                let child = if key.is_empty() {
                    name
                } else {
                    format!("{key}/{name}")
                };
                let md = ent.metadata().map_err(|e| self.err(&child, e))?;
                if md.is_dir() {
                    stack.push((ent.path(), child));
                } else {
                    out.push(ObjectInfo {
                        key: child,
                        size: md.len(),
                    });
                }
            }
        }
        Ok(out)
    }

    fn stat(&self, key: &str) -> Result<Option<u64>, TierError> {
        match fs::metadata(self.root.join(key)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(key, e)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), TierError> {
        self.handles
            .lock()
            .expect("handles")
            .retain(|(k, _)| k != key);
        match fs::remove_file(self.root.join(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(key, e)),
        }
    }
}

/// Removes a `.tmp-*` file a day old or more (best effort: a read-only
/// tier keeps it).
fn remove_if_stale(ent: &fs::DirEntry) {
    if super::stale_temporary(ent.metadata().ok().and_then(|m| m.modified().ok())) {
        let _ = fs::remove_file(ent.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let d = tempfile::tempdir().unwrap();
        let t = LocalTier::new(d.path());
        t.put("data/ab/abc", b"hello").unwrap();
        assert_eq!(t.get("data/ab/abc").unwrap(), b"hello");
        assert_eq!(t.get_range("data/ab/abc", 1, 3).unwrap(), b"ell");
        assert!(t.get_range("data/ab/abc", 3, 5).is_err());
        fs::write(d.path().join("data/ab/.tmp-1"), b"x").unwrap();
        // A write cut off a day ago, by a killed process.
        let stale = d.path().join("data/ab/.tmp-2");
        fs::write(&stale, b"x").unwrap();
        let day_ago = std::time::SystemTime::now() - crate::tier::STALE_TEMPORARY;
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
        assert_eq!(
            t.list("data/").unwrap(),
            vec![ObjectInfo {
                key: "data/ab/abc".into(),
                size: 5
            }]
        );
        // The fresh one may be a write in progress: it stays.
        assert!(d.path().join("data/ab/.tmp-1").exists());
        assert!(!stale.exists());
        assert!(t.get("nope").unwrap_err().is_not_found());
        t.delete("data/ab/abc").unwrap();
        assert_eq!(t.stat("data/ab/abc").unwrap(), None);
    }
}

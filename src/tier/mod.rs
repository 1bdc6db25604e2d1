//! Storage tiers: where repository objects live.
//!
//! A [`Tier`] is a small set of object operations on names such as
//! `data/ab/ab12…`. Every tier holds a complete, self-describing copy of the
//! repository. [`TierSet`] implements `Tier` too and applies the replication
//! rules, so the layers above see one store and never know how many tiers
//! there are. New backends (SFTP, S3) only implement `Tier`.
//!
//! The trait is blocking: the backup and restore pipelines run on worker
//! threads, and a backend whose client is async owns its runtime and blocks
//! on it inside these calls.

pub mod local;
pub mod set;

pub use set::TierSet;

use std::io;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    #[error("{key} not found on tier {tier}")]
    NotFound { tier: String, key: String },
    #[error(
        "tier {tier} is full while writing {key}: free space there, then run the command again"
    )]
    NoSpace { tier: String, key: String },
    #[error("tier {tier}: {key}: {source}")]
    Io {
        tier: String,
        key: String,
        source: io::Error,
    },
    #[error("tier {tier} is offline: {reason}")]
    Offline { tier: String, reason: String },
    #[error("no tier could store {key}: {errors}")]
    AllFailed { key: String, errors: String },
    #[error("tier {tier} holds a damaged copy of {key}: {msg}")]
    Corrupt {
        tier: String,
        key: String,
        msg: String,
    },
    #[error("location {0:?} is not supported by this build: give a local directory path")]
    UnsupportedLocation(String),
}

impl TierError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, TierError::NotFound { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

pub trait Tier: Send + Sync {
    /// The location as the user gives it to `-r`, for messages.
    fn name(&self) -> &str;
    /// Whether reads cross a network (worth caching on local disk).
    fn is_remote(&self) -> bool {
        false
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, TierError>;
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, TierError>;
    /// Stores `data` atomically: readers see the old object or the whole new
    /// one, never a part, even if the process dies mid-write.
    fn put(&self, key: &str, data: &[u8]) -> Result<(), TierError>;
    /// All objects whose names start with `prefix` (a directory such as
    /// `data/`), in no particular order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError>;
    /// Size of an object, or `None` when it does not exist.
    fn stat(&self, key: &str) -> Result<Option<u64>, TierError>;
    fn delete(&self, key: &str) -> Result<(), TierError>;

    /// Reads a range and hands it to `accept`, which verifies (and keeps)
    /// it. A set of tiers tries the next tier when the bytes are rejected,
    /// so a damaged copy on one tier is invisible to the caller.
    fn get_range_checked(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        accept: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), TierError> {
        let bytes = self.get_range(key, offset, len)?;
        accept(&bytes).map_err(|msg| TierError::Corrupt {
            tier: self.name().to_string(),
            key: key.to_string(),
            msg,
        })
    }
}

/// Opens the backend for one `-r` location.
pub fn open_location(loc: &str) -> Result<Box<dyn Tier>, TierError> {
    if let Some((scheme, _)) = loc.split_once("://") {
        if scheme != "file" {
            return Err(TierError::UnsupportedLocation(loc.to_string()));
        }
    }
    let path = loc.strip_prefix("file://").unwrap_or(loc);
    Ok(Box::new(local::LocalTier::new(path)))
}

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
pub mod remote;
pub mod set;
pub mod ssh_dirs;

pub use set::TierSet;

use serde::Deserialize;
use std::io;
use std::path::PathBuf;

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
    #[error("location {0:?} is not supported: give a directory, sftp://user@host:port/path or s3://bucket/prefix")]
    UnsupportedLocation(String),
    #[error("tier location {loc:?}: {why}")]
    BadLocation { loc: String, why: String },
    #[error("interrupted: tiervault is stopping")]
    Interrupted,
}

/// Set once the process is interrupted (Ctrl-C, SIGTERM; see `stop`), by
/// the signal handler itself (`stopping_flag`).
static STOPPING: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(Default::default);

/// The process is about to end by a signal, and its SFTP connections are
/// being closed: from now on a write fails instead of completing on some
/// tiers only, remote calls are neither made nor retried, and no tier is
/// marked offline or put on record as behind because of what the closing
/// does to it.
pub fn stop() {
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether `stop` was called.
pub fn stopping() -> bool {
    STOPPING.load(std::sync::atomic::Ordering::SeqCst)
}

/// How old a `.tmp-*` object must be to count as left by a process killed
/// between writing it and renaming it into place.
pub const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Whether a `.tmp-*` object last modified at `modified` was left behind.
/// The age rule spares a write still under way in another process.
fn stale_temporary(modified: Option<std::time::SystemTime>) -> bool {
    modified
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= STALE_TEMPORARY)
}

/// The flag behind `stop`, for a signal handler to set.
pub fn stopping_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    STOPPING.clone()
}

impl TierError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, TierError::NotFound { .. })
    }
    /// The tier could not be reached (after its retries).
    pub fn is_offline(&self) -> bool {
        matches!(self, TierError::Offline { .. })
    }
}

/// One tier as the config file (`[[tier]]`) or `-r LOCATION` gives it.
/// Options may also follow the location as a query:
/// `sftp://u@h/p?key=/root/.ssh/id&known_hosts=accept`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    pub location: String,
    /// A short name for messages and `tiers`.
    pub name: Option<String>,
    /// SFTP: the private key file.
    pub key: Option<PathBuf>,
    /// SFTP: `strict` (default: the host key must be in known_hosts), `add`
    /// (a new host's key is added; a changed key is refused) or `accept`
    /// (any key, even a changed one: only on a trusted network).
    pub known_hosts: Option<String>,
    /// S3: the endpoint URL (Garage, MinIO, Ceph), e.g. `http://nas:3900`.
    pub endpoint: Option<String>,
    /// S3: the region (default `AWS_REGION`, then `us-east-1`).
    pub region: Option<String>,
    /// S3: credentials (default `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Bandwidth limit, bytes per second (`"2 MiB"` per second in the file).
    #[serde(default, deserialize_with = "de_rate")]
    pub bandwidth: Option<u64>,
    /// Reads prefer lower numbers; tiers without one are ranked by measured
    /// speed after those that have one.
    pub priority: Option<i32>,
    /// Attempts before the tier counts as offline (default 10).
    pub retries: Option<u32>,
}

/// `1048576`, `"512 KiB"`, `"2MiB"`, `"1 GiB"`, `"10M"`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().trim_end_matches("/s") {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

fn de_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Rate {
        N(u64),
        S(String),
    }
    match Option::<Rate>::deserialize(d)? {
        None => Ok(None),
        Some(Rate::N(n)) => Ok(Some(n)),
        Some(Rate::S(s)) => parse_size(&s).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!("bandwidth {s:?}: write e.g. \"2 MiB\""))
        }),
    }
}

impl TierSpec {
    /// The directory of a local tier (a plain path or `file://PATH`);
    /// None for a remote one.
    pub fn local_path(&self) -> Option<&str> {
        let loc = self.location.as_str();
        match loc.split_once("://") {
            None => Some(loc),
            Some(("file", path)) => Some(path),
            Some(_) => None,
        }
    }

    /// A spec from `-r LOCATION[?option=value&...]`.
    pub fn parse(loc: &str) -> Result<Self, TierError> {
        let (location, query) = match loc.split_once('?') {
            Some((l, q)) if l.contains("://") => (l, q),
            _ => (loc, ""),
        };
        let mut spec = TierSpec {
            location: location.to_string(),
            ..TierSpec::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = v.to_string();
            let bad = || TierError::BadLocation {
                loc: loc.to_string(),
                why: format!("bad value for {k}: {v:?}"),
            };
            match k {
                "key" => spec.key = Some(v.into()),
                "known_hosts" => spec.known_hosts = Some(v),
                "endpoint" => spec.endpoint = Some(v),
                "region" => spec.region = Some(v),
                "name" => spec.name = Some(v),
                "bandwidth" => spec.bandwidth = Some(parse_size(&v).ok_or_else(bad)?),
                "priority" => spec.priority = Some(v.parse().map_err(|_| bad())?),
                "retries" => spec.retries = Some(v.parse().map_err(|_| bad())?),
                _ => {
                    return Err(TierError::BadLocation {
                        loc: loc.to_string(),
                        why: format!("unknown option {k:?}"),
                    })
                }
            }
        }
        Ok(spec)
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
    /// The tier set, when this is one (it applies the tier rules).
    fn as_set(&self) -> Option<&TierSet> {
        None
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, TierError>;
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, TierError>;
    /// Stores `data` atomically: readers see the old object or the whole new
    /// one, never a part, even if the process dies mid-write.
    fn put(&self, key: &str, data: &[u8]) -> Result<(), TierError>;
    /// As `put`, for a buffer that several tiers store at once: a tier that
    /// needs to own its data shares this buffer instead of copying it.
    fn put_shared(&self, key: &str, data: &bytes::Bytes) -> Result<(), TierError> {
        self.put(key, data)
    }
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
        accepted(self.name(), key, &bytes, accept)
    }

    /// As `get_range_checked`, for a whole object, which it returns.
    fn get_checked(
        &self,
        key: &str,
        accept: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<Vec<u8>, TierError> {
        let bytes = self.get(key)?;
        accepted(self.name(), key, &bytes, accept)?;
        Ok(bytes)
    }
}

/// Reads `key` from the first tier whose copy `parse` accepts (a set of
/// tiers passes over a damaged copy, and records it for repair) and
/// returns it parsed.
pub fn get_parsed<T>(
    store: &dyn Tier,
    key: &str,
    parse: impl Fn(&[u8]) -> std::result::Result<T, String>,
) -> std::result::Result<T, TierError> {
    let mut out = None;
    store.get_checked(key, &mut |b| {
        out = Some(parse(b)?);
        Ok(())
    })?;
    Ok(out.expect("a copy accepted without its value"))
}

/// `accept`'s verdict on `bytes`, read from `key` on `tier`: a rejection
/// is that copy's damage.
fn accepted(
    tier: &str,
    key: &str,
    bytes: &[u8],
    accept: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), TierError> {
    accept(bytes).map_err(|msg| TierError::Corrupt {
        tier: tier.to_string(),
        key: key.to_string(),
        msg,
    })
}

/// Opens the backend for one tier.
pub fn open_spec(spec: &TierSpec) -> Result<Box<dyn Tier>, TierError> {
    let loc = spec.location.as_str();
    if let Some(path) = spec.local_path() {
        return Ok(Box::new(local::LocalTier::new(path)));
    }
    match loc.split_once("://") {
        Some(("sftp" | "s3", _)) => Ok(Box::new(remote::RemoteTier::open(loc, spec)?)),
        _ => Err(TierError::UnsupportedLocation(loc.to_string())),
    }
}

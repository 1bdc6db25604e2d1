//! tiervault: deduplicated, encrypted backups you use as a drive, replicated
//! across storage tiers.
//!
//! Layers, top to bottom: commands (`backup`, `restore`, `maintenance`) use
//! the [`repo::Repository`], which reads and writes the [`format`] through a
//! [`tier::TierSet`] and keeps a local [`index`] in RocksDB.

pub mod backup;
pub mod format;
pub mod fsmeta;
pub mod index;
pub mod lru;
pub mod maintenance;
pub mod mount;
pub mod repo;
pub mod restore;
pub mod tier;
pub mod timefmt;

/// `1.5 GiB`-style sizes for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

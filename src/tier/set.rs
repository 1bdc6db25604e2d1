//! The set of tiers behind one repository, itself a [`Tier`].
//!
//! Rules applied here (see `docs/TIERS.md`):
//! - a read is served by the first tier, in order, that has the object; a
//!   failure on one tier falls over to the next without the caller seeing it;
//! - a write goes to every tier and succeeds once at least one has stored it;
//!   the tiers that failed are reported on stderr.
//!
//! Ranking by measured speed, offline tracking, tier revisions and resync
//! build on this type without changing its interface.

use super::{ObjectInfo, Tier, TierError};

pub struct TierSet {
    tiers: Vec<Box<dyn Tier>>,
    label: String,
}

impl TierSet {
    pub fn new(tiers: Vec<Box<dyn Tier>>) -> Self {
        assert!(!tiers.is_empty(), "a TierSet needs at least one tier");
        let label = tiers
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ");
        Self { tiers, label }
    }

    pub fn tiers(&self) -> &[Box<dyn Tier>] {
        &self.tiers
    }

    /// Tries `op` on each tier in read order; returns the first success. When
    /// every tier fails, returns the most telling error: a real failure
    /// rather than "not found" when there is one.
    fn read<T>(
        &self,
        mut op: impl FnMut(&dyn Tier) -> Result<T, TierError>,
    ) -> Result<T, TierError> {
        let mut first_err: Option<TierError> = None;
        for t in &self.tiers {
            match op(t.as_ref()) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if !e.is_not_found() {
                        eprintln!("warning: {e}; trying the next tier");
                    }
                    if first_err
                        .as_ref()
                        .is_none_or(|f| f.is_not_found() && !e.is_not_found())
                    {
                        first_err = Some(e);
                    }
                }
            }
        }
        Err(first_err.expect("at least one tier"))
    }

    fn write(
        &self,
        key: &str,
        op: impl Fn(&dyn Tier) -> Result<(), TierError>,
    ) -> Result<(), TierError> {
        let mut ok = false;
        let mut errors = Vec::new();
        for t in &self.tiers {
            match op(t.as_ref()) {
                Ok(()) => ok = true,
                Err(e) => errors.push(e),
            }
        }
        if ok {
            for e in &errors {
                eprintln!("warning: {e}; the other tiers have it");
            }
            return Ok(());
        }
        if errors.len() == 1 {
            return Err(errors.pop().expect("one error"));
        }
        Err(TierError::AllFailed {
            key: key.to_string(),
            errors: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

impl Tier for TierSet {
    fn name(&self) -> &str {
        &self.label
    }
    fn is_remote(&self) -> bool {
        self.tiers.iter().any(|t| t.is_remote())
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, TierError> {
        self.read(|t| t.get(key))
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, TierError> {
        self.read(|t| t.get_range(key, offset, len))
    }
    fn put(&self, key: &str, data: &[u8]) -> Result<(), TierError> {
        self.write(key, |t| t.put(key, data))
    }
    /// The union of every tier's listing, so an object that only some
    /// tiers hold (after a failed write) is still found.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError> {
        let mut seen = std::collections::HashMap::new();
        let mut ok = false;
        let mut first_err = None;
        for t in &self.tiers {
            match t.list(prefix) {
                Ok(objs) => {
                    ok = true;
                    for o in objs {
                        seen.entry(o.key.clone()).or_insert(o);
                    }
                }
                Err(e) => {
                    eprintln!("warning: {e}; listing the other tiers");
                    first_err.get_or_insert(e);
                }
            }
        }
        match (ok, first_err) {
            (false, Some(e)) => Err(e),
            _ => Ok(seen.into_values().collect()),
        }
    }
    fn stat(&self, key: &str) -> Result<Option<u64>, TierError> {
        let found = self.read(|t| match t.stat(key)? {
            Some(n) => Ok(n),
            None => Err(TierError::NotFound {
                tier: t.name().to_string(),
                key: key.to_string(),
            }),
        });
        match found {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn delete(&self, key: &str) -> Result<(), TierError> {
        self.write(key, |t| t.delete(key))
    }
    fn get_range_checked(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        accept: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), TierError> {
        self.read(|t| t.get_range_checked(key, offset, len, accept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::local::LocalTier;

    #[test]
    fn reads_fall_over_and_writes_reach_every_tier() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let set = TierSet::new(vec![
            Box::new(LocalTier::new(a.path())),
            Box::new(LocalTier::new(b.path())),
        ]);
        set.put("x/y", b"1").unwrap();
        assert_eq!(std::fs::read(a.path().join("x/y")).unwrap(), b"1");
        assert_eq!(std::fs::read(b.path().join("x/y")).unwrap(), b"1");
        std::fs::remove_file(a.path().join("x/y")).unwrap();
        assert_eq!(set.get("x/y").unwrap(), b"1");
        assert!(set.get("x/z").unwrap_err().is_not_found());
    }
}

//! Time formatting: RFC 3339 for humans and JSON, and the revision time names
//! used on the command line and in the mount (`2026-11-21T10.00.00Z`: sorts
//! by time and has no `:`, which some file managers and SMB shares reject).

use crate::format::revision::Revision;
use crate::format::tree::Timestamp;
use crate::format::BlobId;
use chrono::{DateTime, Utc};

fn dt(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.sec, t.nsec)
}

/// `2026-11-21T10:00:00.123456789Z`; out-of-range times print as raw seconds.
pub fn rfc3339(t: Timestamp) -> String {
    match dt(t) {
        Some(d) => d.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string(),
        None => format!("@{}.{:09}", t.sec, t.nsec),
    }
}

/// `2026-11-21 10:00:00` for tables.
pub fn short(t: Timestamp) -> String {
    match dt(t) {
        Some(d) => d.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => format!("@{}", t.sec),
    }
}

/// The time name of a revision, without collision handling.
pub fn time_name(t: Timestamp) -> String {
    match dt(t) {
        Some(d) => d.format("%Y-%m-%dT%H.%M.%SZ").to_string(),
        None => format!("t{}", t.sec),
    }
}

/// Names for `revs` (sorted oldest first): the time name, plus `-<id8>` when
/// two revisions share a second.
pub fn revision_names(revs: &[(BlobId, Revision)]) -> Vec<String> {
    let base: Vec<String> = revs.iter().map(|(_, r)| time_name(r.time)).collect();
    base.iter()
        .zip(revs)
        .map(|(b, (id, _))| {
            if base.iter().filter(|x| *x == b).count() > 1 {
                format!("{b}-{}", id.short())
            } else {
                b.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn formats_far_past_and_future() {
        assert_eq!(
            rfc3339(Timestamp { sec: -1, nsec: 5 }),
            "1969-12-31T23:59:59.000000005Z"
        );
        assert_eq!(
            time_name(Timestamp {
                sec: 4_102_444_800,
                nsec: 0
            }),
            "2100-01-01T00.00.00Z"
        );
    }
}

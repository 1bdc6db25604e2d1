//! Revision objects: the small record that publishes one backup.
//!
//! A revision names its root tree and is written last, after every pack and
//! index file it depends on is stored, so a crash never publishes a partial
//! revision. It is sealed and named by the keyed BLAKE3 of its plaintext.

use super::codec::{Dec, Enc};
use super::crypto::{object_aad, Keys};
use super::tree::Timestamp;
use super::{BlobId, FormatError};

const REVISION_VERSION: u8 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevisionStats {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub bytes_added: u64,
    pub blobs_added: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    pub time: Timestamp,
    pub end_time: Timestamp,
    pub host: String,
    pub user: String,
    /// Absolute paths as given to `backup`, as bytes.
    pub paths: Vec<Vec<u8>>,
    pub tags: Vec<String>,
    pub tree: BlobId,
    pub parent: Option<BlobId>,
    pub program: String,
    pub stats: RevisionStats,
}

fn utf8(b: &[u8]) -> Result<String, FormatError> {
    String::from_utf8(b.to_vec()).map_err(|_| FormatError::Invalid("text field is not UTF-8"))
}

impl Revision {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(REVISION_VERSION);
        e.i64(self.time.sec)
            .u32(self.time.nsec)
            .i64(self.end_time.sec)
            .u32(self.end_time.nsec);
        e.bytes(self.host.as_bytes()).bytes(self.user.as_bytes());
        e.varint(self.paths.len() as u64);
        for p in &self.paths {
            e.bytes(p);
        }
        e.varint(self.tags.len() as u64);
        for t in &self.tags {
            e.bytes(t.as_bytes());
        }
        e.raw(&self.tree.0);
        match &self.parent {
            Some(p) => e.u8(1).raw(&p.0),
            None => e.u8(0),
        };
        e.bytes(self.program.as_bytes());
        let s = &self.stats;
        e.varint(s.files)
            .varint(s.dirs)
            .varint(s.bytes)
            .varint(s.bytes_added)
            .varint(s.blobs_added)
            .varint(s.errors);
        e.finish()
    }

    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let mut d = Dec::new(b);
        let v = d.u8()?;
        if v != REVISION_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: "revision",
                found: v.into(),
            });
        }
        let time = Timestamp {
            sec: d.i64()?,
            nsec: d.u32()?,
        };
        let end_time = Timestamp {
            sec: d.i64()?,
            nsec: d.u32()?,
        };
        if time.nsec >= 1_000_000_000 || end_time.nsec >= 1_000_000_000 {
            return Err(FormatError::Invalid("nanoseconds out of range"));
        }
        let host = utf8(d.bytes()?)?;
        let user = utf8(d.bytes()?)?;
        let paths = (0..d.count(1)?)
            .map(|_| d.bytes().map(<[u8]>::to_vec))
            .collect::<Result<_, _>>()?;
        let tags = (0..d.count(1)?)
            .map(|_| utf8(d.bytes()?))
            .collect::<Result<_, _>>()?;
        let tree = BlobId(d.array()?);
        let parent = match d.u8()? {
            0 => None,
            1 => Some(BlobId(d.array()?)),
            _ => return Err(FormatError::Invalid("bad parent flag")),
        };
        let program = utf8(d.bytes()?)?;
        let stats = RevisionStats {
            files: d.varint()?,
            dirs: d.varint()?,
            bytes: d.varint()?,
            bytes_added: d.varint()?,
            blobs_added: d.varint()?,
            errors: d.varint()?,
        };
        d.end()?;
        Ok(Self {
            time,
            end_time,
            host,
            user,
            paths,
            tags,
            tree,
            parent,
            program,
            stats,
        })
    }

    /// Returns the revision's id and its stored (sealed) bytes.
    pub fn seal(&self, keys: &Keys) -> (BlobId, Vec<u8>) {
        let plain = self.encode();
        (
            keys.blob_id(&plain),
            keys.seal(&plain, &object_aad("revision")),
        )
    }

    /// Opens stored bytes and checks they match the name `id`.
    pub fn open(keys: &Keys, id: &BlobId, stored: &[u8]) -> Result<Self, FormatError> {
        let plain = keys.open(stored, &object_aad("revision"))?;
        if keys.blob_id(&plain) != *id {
            return Err(FormatError::IdMismatch(*id));
        }
        Self::decode(&plain)
    }
}

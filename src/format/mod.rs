//! The repository format: every byte a tier stores is produced and parsed
//! here, and `docs/FORMAT.md` describes the same bytes for humans.
//!
//! Nothing in this module does I/O. That keeps the format testable with
//! property tests and pinned by golden files, and lets the tiers, the index
//! and the commands treat objects as opaque bytes.

pub mod chunker;
pub mod codec;
pub mod crypto;
pub mod indexfile;
pub mod pack;
pub mod revision;
pub mod tree;

use std::fmt;

/// Version of the repository format written by this build. Readers accept
/// every version up to this one.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("object is truncated")]
    Truncated,
    #[error("object is malformed: {0}")]
    Invalid(&'static str),
    #[error("object has an unknown magic number")]
    BadMagic,
    #[error("{what} uses format version {found}, newer than this tiervault understands; upgrade tiervault")]
    UnsupportedVersion { what: &'static str, found: u32 },
    #[error("authentication failed: the data is corrupt or was sealed under another key")]
    Decrypt,
    #[error("content does not match its id {0}")]
    IdMismatch(BlobId),
    #[error("decompression failed: {0}")]
    Decompress(String),
}

/// A 32-byte content id: a keyed BLAKE3 hash of a blob's plaintext, or a
/// plain BLAKE3 hash of a stored object (packs, index files).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId(pub [u8; 32]);

impl BlobId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(Self(v.try_into().ok()?))
    }
    /// Plain (unkeyed) BLAKE3: the name of packs and index files, so that a
    /// tier's contents can be verified without the password.
    pub fn of_stored(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", self.short())
    }
}

/// What a blob holds. Stored in pack headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobType {
    Data = 0,
    Tree = 1,
}

impl BlobType {
    pub fn from_u8(v: u8) -> Result<Self, FormatError> {
        match v {
            0 => Ok(Self::Data),
            1 => Ok(Self::Tree),
            _ => Err(FormatError::Invalid("unknown blob type")),
        }
    }
}

/// Where a blob sits inside a pack, and how it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    pub id: BlobId,
    pub kind: BlobType,
    pub compressed: bool,
    pub offset: u32,
    /// Bytes in the pack (nonce, ciphertext and tag included).
    pub stored_len: u32,
    /// Bytes of plaintext.
    pub raw_len: u32,
}

/// Names of objects on a tier. Every tier stores the same names, so any one
/// tier is a complete repository.
pub mod names {
    use super::BlobId;
    pub const CONFIG: &str = "config";
    pub fn key(id: &BlobId) -> String {
        format!("keys/{}", id.to_hex())
    }
    pub fn pack(id: &BlobId) -> String {
        let h = id.to_hex();
        format!("data/{}/{}", &h[..2], h)
    }
    pub fn index(id: &BlobId) -> String {
        format!("index/{}", id.to_hex())
    }
    pub fn revision(id: &BlobId) -> String {
        format!("revisions/{}", id.to_hex())
    }
}

//! Index files: which blobs each pack holds, so a new machine rebuilds its
//! local index by reading a few index files instead of every pack header.
//!
//! Index files are an accelerator only: every pack carries its own header,
//! and a pack that no index file covers (left by an interrupted backup) is
//! found by listing `data/` and reading its header.

use super::codec::{Dec, Enc};
use super::crypto::{object_aad, Keys};
use super::pack::{decode_entries, encode_entries};
use super::{BlobEntry, BlobId, FormatError};

const INDEX_VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackIndex {
    pub pack: BlobId,
    pub pack_len: u64,
    pub blobs: Vec<BlobEntry>,
}

pub fn encode(packs: &[PackIndex]) -> Vec<u8> {
    let mut e = Enc::new();
    e.u8(INDEX_VERSION).varint(packs.len() as u64);
    for p in packs {
        e.raw(&p.pack.0)
            .varint(p.pack_len)
            .bytes(&encode_entries(&p.blobs));
    }
    e.finish()
}

pub fn decode(b: &[u8]) -> Result<Vec<PackIndex>, FormatError> {
    let mut d = Dec::new(b);
    let v = d.u8()?;
    if v != INDEX_VERSION {
        return Err(FormatError::UnsupportedVersion {
            what: "index file",
            found: v.into(),
        });
    }
    let n = d.count(34)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(PackIndex {
            pack: BlobId(d.array()?),
            pack_len: d.varint()?,
            blobs: decode_entries(d.bytes()?)?,
        });
    }
    d.end()?;
    Ok(out)
}

/// Seals an index file; returns its name id and stored bytes.
pub fn seal(keys: &Keys, packs: &[PackIndex]) -> (BlobId, Vec<u8>) {
    let stored = keys.seal(&encode(packs), &object_aad("index"));
    (BlobId::of_stored(&stored), stored)
}

pub fn open(keys: &Keys, id: &BlobId, stored: &[u8]) -> Result<Vec<PackIndex>, FormatError> {
    if BlobId::of_stored(stored) != *id {
        return Err(FormatError::IdMismatch(*id));
    }
    decode(&keys.open(stored, &object_aad("index"))?)
}

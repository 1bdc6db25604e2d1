//! Tree blobs: one per directory, listing its entries sorted by name bytes.
//!
//! A node carries everything a faithful restore needs: type, permission bits,
//! numeric owners and their names, three nanosecond timestamps as signed
//! seconds (dates before 1970 and after 2038 alike), the inode identity that
//! groups hardlinks, device numbers, xattrs, the symlink target, and for
//! regular files the content as data and hole segments, so sparse files
//! stay sparse. Names and targets are raw bytes: non-UTF-8 names round-trip.
//!
//! The encoding is deterministic, so an unchanged directory encodes to the
//! same bytes and dedups to the same tree id.

use super::codec::{Dec, Enc};
use super::{BlobId, FormatError};

const TREE_VERSION: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    CharDev = 4,
    BlockDev = 5,
    Fifo = 6,
    Socket = 7,
}

impl NodeKind {
    fn from_u8(v: u8) -> Result<Self, FormatError> {
        Ok(match v {
            1 => Self::File,
            2 => Self::Dir,
            3 => Self::Symlink,
            4 => Self::CharDev,
            5 => Self::BlockDev,
            6 => Self::Fifo,
            7 => Self::Socket,
            _ => return Err(FormatError::Invalid("unknown node type")),
        })
    }
    pub fn letter(self) -> char {
        match self {
            Self::File => '-',
            Self::Dir => 'd',
            Self::Symlink => 'l',
            Self::CharDev => 'c',
            Self::BlockDev => 'b',
            Self::Fifo => 'p',
            Self::Socket => 's',
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
            Self::Symlink => "symlink",
            Self::CharDev => "chardev",
            Self::BlockDev => "blockdev",
            Self::Fifo => "fifo",
            Self::Socket => "socket",
        }
    }
}

/// Seconds since the epoch (negative before 1970) and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

/// A stretch of a regular file: stored bytes, or a hole that reads as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Data { id: BlobId, len: u32 },
    Hole { len: u64 },
}

impl Segment {
    /// The chunk of a data segment; None for a hole.
    pub fn data_id(&self) -> Option<BlobId> {
        match self {
            Segment::Data { id, .. } => Some(*id),
            Segment::Hole { .. } => None,
        }
    }
    pub fn len(&self) -> u64 {
        match self {
            Segment::Data { len, .. } => u64::from(*len),
            Segment::Hole { len } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Vec<u8>,
    pub group: Vec<u8>,
    pub mtime: Timestamp,
    pub atime: Timestamp,
    pub ctime: Timestamp,
    pub size: u64,
    pub inode: u64,
    pub device: u64,
    pub nlink: u64,
    pub rdev: u64,
    /// Sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    File(Vec<Segment>),
    Dir(BlobId),
    Symlink(Vec<u8>),
    Special,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: Vec<u8>,
    pub kind: NodeKind,
    pub meta: Meta,
    pub body: Body,
}

impl Node {
    pub fn subtree(&self) -> Option<BlobId> {
        match self.body {
            Body::Dir(id) => Some(id),
            _ => None,
        }
    }
    pub fn segments(&self) -> &[Segment] {
        match &self.body {
            Body::File(s) => s,
            _ => &[],
        }
    }
    /// Hardlink identity within one revision, for files with several links.
    pub fn link_key(&self) -> Option<(u64, u64)> {
        (self.kind != NodeKind::Dir && self.meta.nlink > 1)
            .then_some((self.meta.device, self.meta.inode))
    }
}

fn enc_time(e: &mut Enc, t: Timestamp) {
    e.i64(t.sec).u32(t.nsec);
}

fn dec_time(d: &mut Dec) -> Result<Timestamp, FormatError> {
    let t = Timestamp {
        sec: d.i64()?,
        nsec: d.u32()?,
    };
    if t.nsec >= 1_000_000_000 {
        return Err(FormatError::Invalid("nanoseconds out of range"));
    }
    Ok(t)
}

fn encode_node(e: &mut Enc, n: &Node) {
    let m = &n.meta;
    e.bytes(&n.name)
        .u8(n.kind as u8)
        .u32(m.mode)
        .varint(m.uid.into())
        .varint(m.gid.into());
    e.bytes(&m.user).bytes(&m.group);
    enc_time(e, m.mtime);
    enc_time(e, m.atime);
    enc_time(e, m.ctime);
    e.varint(m.size)
        .varint(m.inode)
        .varint(m.device)
        .varint(m.nlink)
        .varint(m.rdev);
    e.varint(m.xattrs.len() as u64);
    for (k, v) in &m.xattrs {
        e.bytes(k).bytes(v);
    }
    match &n.body {
        Body::File(segs) => encode_segments(e, segs),
        Body::Dir(id) => {
            e.raw(&id.0);
        }
        Body::Symlink(t) => {
            e.bytes(t);
        }
        Body::Special => {}
    }
}

/// Content segments, shared by tree nodes and the backup file cache.
pub fn encode_segments(e: &mut Enc, segs: &[Segment]) {
    e.varint(segs.len() as u64);
    for s in segs {
        match s {
            Segment::Data { id, len } => e.u8(0).raw(&id.0).varint((*len).into()),
            Segment::Hole { len } => e.u8(1).varint(*len),
        };
    }
}

pub fn decode_segments(d: &mut Dec) -> Result<Vec<Segment>, FormatError> {
    let ns = d.count(2)?;
    let mut segs = Vec::with_capacity(ns);
    for _ in 0..ns {
        segs.push(match d.u8()? {
            0 => Segment::Data {
                id: BlobId(d.array()?),
                len: u32_of(d.varint()?)?,
            },
            1 => Segment::Hole { len: d.varint()? },
            _ => return Err(FormatError::Invalid("unknown segment type")),
        });
    }
    Ok(segs)
}

fn u32_of(v: u64) -> Result<u32, FormatError> {
    u32::try_from(v).map_err(|_| FormatError::Invalid("value exceeds 32 bits"))
}

fn decode_node(d: &mut Dec) -> Result<Node, FormatError> {
    let name = d.bytes()?.to_vec();
    let kind = NodeKind::from_u8(d.u8()?)?;
    let mut m = Meta {
        mode: d.u32()?,
        uid: u32_of(d.varint()?)?,
        gid: u32_of(d.varint()?)?,
        ..Meta::default()
    };
    m.user = d.bytes()?.to_vec();
    m.group = d.bytes()?.to_vec();
    m.mtime = dec_time(d)?;
    m.atime = dec_time(d)?;
    m.ctime = dec_time(d)?;
    m.size = d.varint()?;
    m.inode = d.varint()?;
    m.device = d.varint()?;
    m.nlink = d.varint()?;
    m.rdev = d.varint()?;
    let nx = d.count(2)?;
    for _ in 0..nx {
        m.xattrs.push((d.bytes()?.to_vec(), d.bytes()?.to_vec()));
    }
    let body = match kind {
        NodeKind::File => {
            let segs = decode_segments(d)?;
            if segs.iter().try_fold(0u64, |a, s| a.checked_add(s.len())) != Some(m.size) {
                return Err(FormatError::Invalid(
                    "file segments do not add up to its size",
                ));
            }
            Body::File(segs)
        }
        NodeKind::Dir => Body::Dir(BlobId(d.array()?)),
        NodeKind::Symlink => Body::Symlink(d.bytes()?.to_vec()),
        _ => Body::Special,
    };
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(FormatError::Invalid(
            "node name is empty, '.', '..' or contains '/'",
        ));
    }
    Ok(Node {
        name,
        kind,
        meta: m,
        body,
    })
}

/// Encodes a directory's nodes. Sorts them by name first.
pub fn encode_tree(nodes: &mut [Node]) -> Vec<u8> {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut e = Enc::new();
    e.u8(TREE_VERSION).varint(nodes.len() as u64);
    for n in nodes.iter() {
        encode_node(&mut e, n);
    }
    e.finish()
}

pub fn decode_tree(b: &[u8]) -> Result<Vec<Node>, FormatError> {
    let mut d = Dec::new(b);
    let v = d.u8()?;
    if v != TREE_VERSION {
        return Err(FormatError::UnsupportedVersion {
            what: "tree",
            found: v.into(),
        });
    }
    let n = d.count(10)?;
    let mut out: Vec<Node> = Vec::with_capacity(n);
    for _ in 0..n {
        let node = decode_node(&mut d)?;
        if out.last().is_some_and(|p| p.name >= node.name) {
            return Err(FormatError::Invalid(
                "tree entries are not sorted and unique",
            ));
        }
        out.push(node);
    }
    d.end()?;
    Ok(out)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts() -> impl Strategy<Value = Timestamp> {
        (any::<i64>(), 0u32..1_000_000_000).prop_map(|(sec, nsec)| Timestamp { sec, nsec })
    }

    fn meta() -> impl Strategy<Value = Meta> {
        (
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                prop::collection::vec(any::<u8>(), 0..8),
                prop::collection::vec(any::<u8>(), 0..8),
            ),
            (ts(), ts(), ts()),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            prop::collection::btree_map(
                prop::collection::vec(any::<u8>(), 1..10),
                prop::collection::vec(any::<u8>(), 0..20),
                0..4,
            ),
        )
            .prop_map(
                |(
                    (mode, uid, gid, user, group),
                    (mtime, atime, ctime),
                    (inode, device, nlink, rdev),
                    x,
                )| Meta {
                    mode,
                    uid,
                    gid,
                    user,
                    group,
                    mtime,
                    atime,
                    ctime,
                    size: 0,
                    inode,
                    device,
                    nlink,
                    rdev,
                    xattrs: x.into_iter().collect(),
                },
            )
    }

    pub fn node() -> impl Strategy<Value = Node> {
        let name =
            prop::collection::vec(any::<u8>().prop_filter("no slash", |b| *b != b'/'), 1..20)
                .prop_filter("not dot", |n| n != b"." && n != b"..");
        let seg = prop_oneof![
            (any::<[u8; 32]>(), any::<u32>())
                .prop_map(|(i, len)| Segment::Data { id: BlobId(i), len }),
            (0u64..1 << 40).prop_map(|len| Segment::Hole { len }),
        ];
        let body = prop_oneof![
            prop::collection::vec(seg, 0..5).prop_map(Body::File),
            any::<[u8; 32]>().prop_map(|i| Body::Dir(BlobId(i))),
            prop::collection::vec(any::<u8>(), 0..30).prop_map(Body::Symlink),
            Just(Body::Special),
        ];
        (name, meta(), body, 4u8..8).prop_map(|(name, mut meta, body, special)| {
            let kind = match &body {
                Body::File(s) => {
                    meta.size = s.iter().map(Segment::len).sum();
                    NodeKind::File
                }
                Body::Dir(_) => NodeKind::Dir,
                Body::Symlink(_) => NodeKind::Symlink,
                Body::Special => NodeKind::from_u8(special).unwrap(),
            };
            Node {
                name,
                kind,
                meta,
                body,
            }
        })
    }

    proptest! {
        #[test]
        fn tree_roundtrip(nodes in prop::collection::vec(node(), 0..12)) {
            let mut nodes: Vec<Node> = nodes;
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            nodes.dedup_by(|a, b| a.name == b.name);
            let mut shuffled = nodes.clone();
            shuffled.reverse();
            let bytes = encode_tree(&mut shuffled);
            prop_assert_eq!(decode_tree(&bytes).unwrap(), nodes.clone());
            // Deterministic: the same nodes always give the same bytes.
            prop_assert_eq!(encode_tree(&mut nodes), bytes);
        }

        #[test]
        fn decode_never_panics(data in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_tree(&data);
        }
    }
}

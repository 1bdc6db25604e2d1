//! The filesystem behind `tiervault mount`, without the kernel: plain
//! methods that return `Result<_, FsError>`, so it is tested directly.
//!
//! Layout:
//! - `latest`: a symlink to the newest revision;
//! - `revisions/<time>/`: each revision's tree;
//! - `by-host/<host>/<time>` and `by-tag/<tag>/<time>`: symlinks into
//!   `revisions/`;
//! - `history/<path>/`: the union of every revision's paths; a file there is
//!   a directory holding one entry per distinct version of it, named by the
//!   time that version first appeared.
//!
//! Inodes: an inode's identity (parent, name, what it shows) never changes,
//! and `(parent, name)` always maps to the same number, so numbers are
//! stable for the life of the mount. Entries of one revision that are
//! hardlinks of each other share one inode. Trees are decoded only when a
//! directory is first looked into (from the local tree cache or the tiers);
//! nothing loads a whole revision or the whole index.
//!
//! The revision list is refreshed at most every `REFRESH` when the root or
//! `revisions/` is read, so a backup that finishes while the mount is up
//! appears without remounting.

use crate::format::tree::{Body, Meta, Node, NodeKind, Segment, Timestamp};
use crate::format::BlobId;
use crate::repo::{RepoError, Repository};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ROOT: u64 = 1;
const REVISIONS: u64 = 2;
const LATEST: u64 = 3;
const BY_HOST: u64 = 4;
const BY_TAG: u64 = 5;
const HISTORY: u64 = 6;
const REFRESH: Duration = Duration::from_secs(2);

/// Every failure maps to one errno, by name (see `errno`).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("not a symlink")]
    NotLink,
    #[error("no such attribute")]
    NoAttr,
    #[error("stale handle")]
    BadHandle,
    #[error("offset past the end")]
    NoData,
    #[error("invalid argument")]
    Invalid,
    #[error("storage: {0}")]
    Storage(#[from] RepoError),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotLink => libc::EINVAL,
            FsError::NoAttr => libc::ENODATA,
            FsError::BadHandle => libc::EBADF,
            FsError::NoData => libc::ENXIO,
            FsError::Invalid => libc::EINVAL,
            FsError::Storage(_) => libc::EIO,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// What an inode shows.
#[derive(Debug, Clone)]
enum What {
    Root,
    Revisions,
    Latest,
    /// `by-host/` or `by-tag/`: one directory per host or tag.
    Groups {
        tags: bool,
    },
    /// `by-host/<host>/` or `by-tag/<tag>/`: links to its revisions.
    Group {
        tags: bool,
        key: String,
    },
    /// A link into `revisions/`.
    Link(Vec<u8>),
    /// A directory of `history/`: the union of the revisions' entries at
    /// `path`.
    HistoryDir {
        path: Vec<Vec<u8>>,
    },
    /// A file's versions.
    Versions {
        path: Vec<Vec<u8>>,
    },
    /// A revision's root directory or an entry inside a revision; `rev` is
    /// the revision's root tree, which scopes hardlink identity.
    Node {
        rev: BlobId,
        node: Arc<Node>,
    },
}

#[derive(Debug)]
struct Inode {
    parent: u64,
    what: What,
}

/// Attributes of one inode, in plain terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks of data (holes excluded).
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub nlink: u32,
    pub rdev: u64,
}

struct OpenFile {
    segments: Vec<Segment>,
    /// Start offset of each segment.
    starts: Vec<u64>,
    size: u64,
}

#[derive(Default)]
struct Table {
    inodes: HashMap<u64, Arc<Inode>>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
    links: HashMap<(BlobId, u64, u64), u64>,
    next: u64,
}

#[derive(Clone)]
struct RevInfo {
    name: String,
    tree: BlobId,
    time: Timestamp,
    host: String,
    tags: Vec<String>,
}

struct Revs {
    at: Option<Instant>,
    list: Vec<RevInfo>,
}

/// A small LRU of decoded chunks, so small reads of one chunk and files that
/// share chunks do not fetch the same blob again.
struct ChunkCache {
    map: HashMap<BlobId, Arc<Vec<u8>>>,
    order: VecDeque<BlobId>,
    bytes: usize,
    limit: usize,
}

impl ChunkCache {
    fn get(&mut self, id: &BlobId) -> Option<Arc<Vec<u8>>> {
        let v = self.map.get(id)?.clone();
        if let Some(p) = self.order.iter().position(|x| x == id) {
            self.order.remove(p);
        }
        self.order.push_back(*id);
        Some(v)
    }
    fn put(&mut self, id: BlobId, data: Arc<Vec<u8>>) {
        if self.map.contains_key(&id) {
            return;
        }
        self.bytes += data.len();
        self.map.insert(id, data);
        self.order.push_back(id);
        while self.bytes > self.limit {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(d) = self.map.remove(&old) {
                self.bytes -= d.len();
            }
        }
    }
}

pub struct FsCore {
    repo: Arc<Repository>,
    table: Mutex<Table>,
    revs: Mutex<Revs>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: std::sync::atomic::AtomicU64,
    chunks: Mutex<ChunkCache>,
    uid: u32,
    gid: u32,
    started: Timestamp,
}

/// The fixed entries of the root.
const TOP: [(u64, &[u8], NodeKind); 5] = [
    (LATEST, b"latest", NodeKind::Symlink),
    (REVISIONS, b"revisions", NodeKind::Dir),
    (BY_HOST, b"by-host", NodeKind::Dir),
    (BY_TAG, b"by-tag", NodeKind::Dir),
    (HISTORY, b"history", NodeKind::Dir),
];

fn top_what(ino: u64) -> What {
    match ino {
        LATEST => What::Latest,
        REVISIONS => What::Revisions,
        BY_HOST => What::Groups { tags: false },
        BY_TAG => What::Groups { tags: true },
        _ => What::HistoryDir { path: Vec::new() },
    }
}

impl FsCore {
    /// `chunk_cache` bytes of decoded chunks are kept in memory.
    pub fn new(repo: Arc<Repository>, chunk_cache: usize) -> Self {
        let mut t = Table {
            next: 16,
            ..Table::default()
        };
        t.inodes.insert(
            ROOT,
            Arc::new(Inode {
                parent: ROOT,
                what: What::Root,
            }),
        );
        for (ino, name, _) in TOP {
            t.inodes.insert(
                ino,
                Arc::new(Inode {
                    parent: ROOT,
                    what: top_what(ino),
                }),
            );
            t.by_name.insert((ROOT, name.to_vec()), ino);
        }
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            repo,
            table: Mutex::new(t),
            revs: Mutex::new(Revs {
                at: None,
                list: Vec::new(),
            }),
            files: Mutex::new(HashMap::new()),
            next_fh: std::sync::atomic::AtomicU64::new(1),
            chunks: Mutex::new(ChunkCache {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                limit: chunk_cache,
            }),
            uid,
            gid,
            started: crate::repo::now(),
        }
    }

    fn inode(&self, ino: u64) -> FsResult<Arc<Inode>> {
        self.table
            .lock()
            .expect("table")
            .inodes
            .get(&ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    /// The revision list, oldest first, refreshed when older than `REFRESH`.
    fn revisions(&self) -> FsResult<Vec<RevInfo>> {
        let mut r = self.revs.lock().expect("revs");
        if r.at.is_none_or(|t| t.elapsed() >= REFRESH) {
            self.repo.sync_index()?;
            let revs = self.repo.revisions()?;
            let names = crate::timefmt::revision_names(&revs);
            r.list = names
                .into_iter()
                .zip(revs)
                .map(|(name, (_, rev))| RevInfo {
                    name,
                    tree: rev.tree,
                    time: rev.time,
                    host: rev.host,
                    tags: rev.tags,
                })
                .collect();
            r.at = Some(Instant::now());
        }
        Ok(r.list.clone())
    }

    /// The node at `path` in the tree `root`, if the revision has it.
    fn node_at(&self, root: &BlobId, path: &[Vec<u8>]) -> FsResult<Option<Node>> {
        let mut tree = *root;
        let mut found = None;
        for (i, comp) in path.iter().enumerate() {
            let Some(n) = self
                .repo
                .load_tree(&tree)?
                .into_iter()
                .find(|n| &n.name == comp)
            else {
                return Ok(None);
            };
            if i + 1 < path.len() {
                match n.subtree() {
                    Some(t) => tree = t,
                    None => return Ok(None),
                }
            }
            found = Some(n);
        }
        Ok(found)
    }

    /// `history/<path>`: the names any revision has at `path`.
    fn history_list(&self, ino: u64, path: &[Vec<u8>]) -> FsResult<Vec<(u64, NodeKind, Vec<u8>)>> {
        let mut names: std::collections::BTreeMap<Vec<u8>, bool> =
            std::collections::BTreeMap::new();
        for r in self.revisions()? {
            let tree = if path.is_empty() {
                Some(r.tree)
            } else {
                self.node_at(&r.tree, path)?.and_then(|n| n.subtree())
            };
            let Some(tree) = tree else { continue };
            for n in self.repo.load_tree(&tree)? {
                *names.entry(n.name).or_default() |= n.kind == NodeKind::Dir;
            }
        }
        Ok(names
            .into_iter()
            .map(|(name, is_dir)| {
                let mut p = path.to_vec();
                p.push(name.clone());
                let what = if is_dir {
                    What::HistoryDir { path: p }
                } else {
                    What::Versions { path: p }
                };
                (self.child(ino, &name, what), NodeKind::Dir, name)
            })
            .collect())
    }

    /// One entry per distinct version of the file at `path`, named by the
    /// revision where that version first appeared.
    fn versions(&self, ino: u64, path: &[Vec<u8>]) -> FsResult<Vec<(u64, NodeKind, Vec<u8>)>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for r in self.revisions()? {
            let Some(n) = self.node_at(&r.tree, path)? else {
                continue;
            };
            if !seen.insert((n.kind, n.meta.size, n.body.clone())) {
                continue;
            }
            let (kind, name) = (n.kind, r.name.clone().into_bytes());
            let node = Node {
                name: name.clone(),
                ..n
            };
            out.push((
                self.child(
                    ino,
                    &name,
                    What::Node {
                        rev: r.tree,
                        node: Arc::new(node),
                    },
                ),
                kind,
                name,
            ));
        }
        Ok(out)
    }

    /// The inode for `(parent, name)`, created on first sight.
    fn child(&self, parent: u64, name: &[u8], what: What) -> u64 {
        let mut t = self.table.lock().expect("table");
        if let Some(&ino) = t.by_name.get(&(parent, name.to_vec())) {
            return ino;
        }
        let link = match &what {
            What::Node { rev, node } => node.link_key().map(|(dev, ino)| (*rev, dev, ino)),
            _ => None,
        };
        let ino = match link.and_then(|k| t.links.get(&k).copied()) {
            Some(shared) => shared,
            None => {
                let ino = t.next;
                t.next += 1;
                t.inodes.insert(ino, Arc::new(Inode { parent, what }));
                if let Some(k) = link {
                    t.links.insert(k, ino);
                }
                ino
            }
        };
        t.by_name.insert((parent, name.to_vec()), ino);
        ino
    }

    fn revision_dir(&self, r: &RevInfo) -> What {
        let (name, tree, time) = (&r.name, r.tree, r.time);
        let meta = Meta {
            mode: 0o555,
            uid: self.uid,
            gid: self.gid,
            mtime: time,
            atime: time,
            ctime: time,
            nlink: 2,
            ..Meta::default()
        };
        What::Node {
            rev: tree,
            node: Arc::new(Node {
                name: name.as_bytes().to_vec(),
                kind: NodeKind::Dir,
                meta,
                body: Body::Dir(tree),
            }),
        }
    }

    /// Entries of a directory as `(ino, kind, name)`, without `.` and `..`.
    pub fn list(&self, ino: u64) -> FsResult<Vec<(u64, NodeKind, Vec<u8>)>> {
        match &self.inode(ino)?.what {
            What::Root => Ok(TOP
                .iter()
                .map(|(ino, name, kind)| (*ino, *kind, name.to_vec()))
                .collect()),
            What::Revisions => Ok(self
                .revisions()?
                .into_iter()
                .map(|r| {
                    let ino = self.child(REVISIONS, r.name.as_bytes(), self.revision_dir(&r));
                    (ino, NodeKind::Dir, r.name.into_bytes())
                })
                .collect()),
            What::Groups { tags } => {
                let mut keys: Vec<String> = self
                    .revisions()?
                    .into_iter()
                    .flat_map(|r| if *tags { r.tags } else { vec![r.host] })
                    .collect();
                keys.sort();
                keys.dedup();
                Ok(keys
                    .into_iter()
                    .map(|key| {
                        let name = key.clone().into_bytes();
                        (
                            self.child(ino, &name, What::Group { tags: *tags, key }),
                            NodeKind::Dir,
                            name,
                        )
                    })
                    .collect())
            }
            What::Group { tags, key } => Ok(self
                .revisions()?
                .into_iter()
                .filter(|r| {
                    if *tags {
                        r.tags.contains(key)
                    } else {
                        &r.host == key
                    }
                })
                .map(|r| {
                    let target = format!("../../revisions/{}", r.name).into_bytes();
                    let name = r.name.into_bytes();
                    (
                        self.child(ino, &name, What::Link(target)),
                        NodeKind::Symlink,
                        name,
                    )
                })
                .collect()),
            What::HistoryDir { path } => self.history_list(ino, path),
            What::Versions { path } => self.versions(ino, path),
            What::Latest | What::Link(_) => Err(FsError::NotDir),
            What::Node { rev, node } => {
                let Body::Dir(tree) = node.body else {
                    return Err(FsError::NotDir);
                };
                let nodes = self.repo.load_tree(&tree)?;
                Ok(nodes
                    .into_iter()
                    .map(|n| {
                        let (kind, name) = (n.kind, n.name.clone());
                        let ino = self.child(
                            ino,
                            &name,
                            What::Node {
                                rev: *rev,
                                node: Arc::new(n),
                            },
                        );
                        (ino, kind, name)
                    })
                    .collect())
            }
        }
    }

    pub fn parent(&self, ino: u64) -> FsResult<u64> {
        Ok(self.inode(ino)?.parent)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        // Bound first: the table lock must be released before getattr.
        let known = self
            .table
            .lock()
            .expect("table")
            .by_name
            .get(&(parent, name.to_vec()))
            .copied();
        // Directories that change as revisions arrive are listed again.
        if let (Some(ino), false) = (known, self.is_live(parent)) {
            return self.getattr(ino);
        }
        let found = self
            .list(parent)?
            .into_iter()
            .find(|(_, _, n)| n == name)
            .ok_or(FsError::NotFound)?;
        self.getattr(found.0)
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let inode = self.inode(ino)?;
        let base = |kind, perm, size| Attr {
            ino,
            kind,
            perm,
            uid: self.uid,
            gid: self.gid,
            size,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            nlink: if kind == NodeKind::Dir { 2 } else { 1 },
            rdev: 0,
        };
        Ok(match &inode.what {
            What::Root
            | What::Revisions
            | What::Groups { .. }
            | What::Group { .. }
            | What::HistoryDir { .. }
            | What::Versions { .. } => base(NodeKind::Dir, 0o555, 0),
            What::Link(t) => base(NodeKind::Symlink, 0o777, t.len() as u64),
            What::Latest => {
                let target = self.latest_target()?;
                base(NodeKind::Symlink, 0o777, target.len() as u64)
            }
            What::Node { node, .. } => {
                let m = &node.meta;
                let data: u64 = node
                    .segments()
                    .iter()
                    .filter(|s| matches!(s, Segment::Data { .. }))
                    .map(Segment::len)
                    .sum();
                Attr {
                    ino,
                    kind: node.kind,
                    perm: m.mode & 0o7777,
                    uid: m.uid,
                    gid: m.gid,
                    size: m.size,
                    blocks: data.div_ceil(512),
                    atime: m.atime,
                    mtime: m.mtime,
                    ctime: m.ctime,
                    nlink: if node.kind == NodeKind::Dir {
                        2
                    } else {
                        m.nlink.clamp(1, u64::from(u32::MAX)) as u32
                    },
                    rdev: m.rdev,
                }
            }
        })
    }

    fn latest_target(&self) -> FsResult<Vec<u8>> {
        let revs = self.revisions()?;
        let r = revs.last().ok_or(FsError::NotFound)?;
        Ok(format!("revisions/{}", r.name).into_bytes())
    }

    /// Directories whose entries change as revisions arrive.
    fn is_live(&self, ino: u64) -> bool {
        self.inode(ino).is_ok_and(|i| {
            matches!(
                i.what,
                What::Revisions
                    | What::Groups { .. }
                    | What::Group { .. }
                    | What::HistoryDir { .. }
                    | What::Versions { .. }
            )
        })
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        match &self.inode(ino)?.what {
            What::Latest => self.latest_target(),
            What::Link(t) => Ok(t.clone()),
            What::Node { node, .. } => match &node.body {
                Body::Symlink(t) => Ok(t.clone()),
                _ => Err(FsError::NotLink),
            },
            _ => Err(FsError::NotLink),
        }
    }

    pub fn xattrs(&self, ino: u64) -> FsResult<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(match &self.inode(ino)?.what {
            What::Node { node, .. } => node.meta.xattrs.clone(),
            _ => Vec::new(),
        })
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        self.xattrs(ino)?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or(FsError::NoAttr)
    }

    /// Opens a regular file; returns a handle for `read` and `seek`.
    pub fn open(&self, ino: u64) -> FsResult<u64> {
        let inode = self.inode(ino)?;
        let What::Node { node, .. } = &inode.what else {
            return Err(FsError::IsDir);
        };
        let Body::File(segments) = &node.body else {
            return Err(if node.kind == NodeKind::Dir {
                FsError::IsDir
            } else {
                FsError::Invalid
            });
        };
        let mut starts = Vec::with_capacity(segments.len());
        let mut pos = 0;
        for s in segments {
            starts.push(pos);
            pos += s.len();
        }
        let fh = self
            .next_fh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = OpenFile {
            segments: segments.clone(),
            starts,
            size: node.meta.size,
        };
        self.files.lock().expect("files").insert(fh, Arc::new(f));
        Ok(fh)
    }

    pub fn release(&self, fh: u64) {
        self.files.lock().expect("files").remove(&fh);
    }

    fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.files
            .lock()
            .expect("files")
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    fn chunk(&self, id: &BlobId) -> FsResult<Arc<Vec<u8>>> {
        if let Some(c) = self.chunks.lock().expect("chunks").get(id) {
            return Ok(c);
        }
        let data = Arc::new(self.repo.read_blob(id)?);
        self.chunks.lock().expect("chunks").put(*id, data.clone());
        Ok(data)
    }

    /// Reads up to `size` bytes at `offset`; holes read as zeros.
    pub fn read(&self, fh: u64, offset: u64, size: usize) -> FsResult<Vec<u8>> {
        let f = self.file(fh)?;
        if offset >= f.size {
            return Ok(Vec::new());
        }
        let end = f.size.min(offset + size as u64);
        let mut out = Vec::with_capacity((end - offset) as usize);
        // The segment holding `offset`: the last one starting at or before it.
        let mut i = f.starts.partition_point(|&s| s <= offset) - 1;
        let mut pos = offset;
        while pos < end {
            let seg = &f.segments[i];
            let (start, seg_end) = (f.starts[i], f.starts[i] + seg.len());
            let upto = seg_end.min(end);
            match seg {
                Segment::Hole { .. } => out.resize(out.len() + (upto - pos) as usize, 0),
                Segment::Data { id, .. } => {
                    let data = self.chunk(id)?;
                    out.extend_from_slice(&data[(pos - start) as usize..(upto - start) as usize]);
                }
            }
            pos = upto;
            i += 1;
        }
        Ok(out)
    }

    /// `SEEK_DATA` / `SEEK_HOLE` over the file's segments.
    pub fn seek(&self, fh: u64, offset: u64, whence: i32) -> FsResult<u64> {
        let f = self.file(fh)?;
        if offset >= f.size {
            return Err(FsError::NoData);
        }
        let want_data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(FsError::Invalid),
        };
        let first = f.starts.partition_point(|&s| s <= offset) - 1;
        for i in first..f.segments.len() {
            let is_data = matches!(f.segments[i], Segment::Data { .. });
            if is_data == want_data {
                return Ok(f.starts[i].max(offset));
            }
        }
        // No more data: ENXIO. No more holes: the implicit hole at the end.
        if want_data {
            Err(FsError::NoData)
        } else {
            Ok(f.size)
        }
    }
}

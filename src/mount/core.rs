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
//! Inodes: `(parent, name)` always maps to the same number, so numbers are
//! stable for the life of the mount, and entries of one revision that are
//! hardlinks of each other share one number. What an inode shows is decoded
//! only while the kernel holds a reference to it (its lookup count) or while
//! it is among the most recently used idle ones; the rest keep only their
//! parent and name (about 100 bytes each) and are decoded again from the
//! parent's tree on demand. Decoded trees sit in an LRU with a byte limit,
//! chunks in a second one, and, for remote tiers, in an on-disk cache.
//! Nothing loads a whole revision or the whole index.
//!
//! Sequential reads queue the next chunks of the file on read-ahead
//! threads, so fetching and decrypting overlap with the reader.
//!
//! The revision list is refreshed at most every `REFRESH` when the root or
//! `revisions/` is read, so a backup that finishes while the mount is up
//! appears without remounting.

use super::queue::{workers, Queue};
use crate::format::tree::{Body, Meta, Node, NodeKind, Segment, Timestamp};
use crate::format::BlobId;
use crate::lru::Lru;
use crate::repo::cache::DiskCache;
use crate::repo::{RepoError, Repository};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const ROOT: u64 = 1;
const REVISIONS: u64 = 2;
pub const LATEST: u64 = 3;
const BY_HOST: u64 = 4;
const BY_TAG: u64 = 5;
const HISTORY: u64 = 6;
const REFRESH: Duration = Duration::from_secs(2);

/// The bytes of a read: a part of one decoded chunk, shared with the chunk
/// cache (no copy), or assembled from several chunks and holes.
#[derive(Debug)]
pub enum ReadData {
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl std::ops::Deref for ReadData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadData::Shared(chunk, range) => &chunk[range.clone()],
            ReadData::Owned(v) => v,
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> PartialEq<T> for ReadData {
    fn eq(&self, other: &T) -> bool {
        **self == *other.as_ref()
    }
}

/// Inode numbers below this are the fixed entries; they are never dropped.
const FIRST_DYNAMIC: u64 = 16;
/// Marks a handle as the shared one of an inode (`shared_handle`); handles
/// from `open` count up from 1 and never reach it.
const SHARED: u64 = 1 << 63;
/// Directories followed at once by the read-ahead of the next files.
const WALKS: usize = 64;
/// Files read one after another in a directory may skip this many entries
/// (subdirectories, links) and still count as a walk through it.
const WALK_GAP: usize = 8;
/// How many entries past the one read the read-ahead of a walk looks at.
const WALK_AHEAD: usize = 64;
/// Memory (estimated) for the chunk lists of files read without an open:
/// about 6,000 small files.
const SHARED_FILES: usize = 2 << 20;

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
    #[error("{0}")]
    Read(String),
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
            FsError::Storage(_) | FsError::Read(_) => libc::EIO,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

/// Extended attributes as (name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

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
        node: NodeRef,
    },
}

impl What {
    /// Whether it changes as revisions arrive: `latest`, and the listings
    /// made from the revision list. Revision contents and the root never do.
    fn changes(&self) -> bool {
        matches!(
            self,
            What::Root
                | What::Revisions
                | What::Latest
                | What::Groups { .. }
                | What::Group { .. }
                | What::HistoryDir { .. }
                | What::Versions { .. }
        )
    }
}

/// A node inside its decoded directory (shared with the tree cache and its
/// siblings, not copied), or one made up for the mount.
#[derive(Debug, Clone)]
enum NodeRef {
    /// Entry `i` of the decoded tree `tree`.
    InTree {
        nodes: Arc<Vec<Node>>,
        tree: BlobId,
        i: usize,
    },
    Own(Arc<Node>),
}

impl std::ops::Deref for NodeRef {
    type Target = Node;
    fn deref(&self) -> &Node {
        match self {
            NodeRef::InTree { nodes, i, .. } => &nodes[*i],
            NodeRef::Own(n) => n,
        }
    }
}

#[derive(Debug)]
struct Inode {
    parent: u64,
    what: What,
}

/// Where what an inode shows is, as far as memory has it (`inode_now`).
enum Now {
    Here(Arc<Inode>),
    /// An entry of a directory whose decoded tree was evicted.
    TreeEvicted(TreeSlot),
    /// Dropped from the table: decoded again from its parent (the number).
    Dropped(u64),
    /// A number never given.
    Unknown,
}

/// An entry of a revision by its directory's tree id and its index there.
#[derive(Clone, Copy)]
struct TreeSlot {
    parent: u64,
    rev: BlobId,
    tree: BlobId,
    i: usize,
}

impl TreeSlot {
    fn rebuild(&self, nodes: Arc<Vec<Node>>) -> FsResult<Arc<Inode>> {
        if self.i >= nodes.len() {
            return Err(FsError::NotFound);
        }
        Ok(Arc::new(Inode {
            parent: self.parent,
            what: What::Node {
                rev: self.rev,
                node: NodeRef::InTree {
                    nodes,
                    tree: self.tree,
                    i: self.i,
                },
            },
        }))
    }
}

fn xattrs_of(inode: &Inode) -> Xattrs {
    match &inode.what {
        What::Node { node, .. } => node.meta.xattrs.clone(),
        _ => Vec::new(),
    }
}

/// The value of xattr `name`, or ENODATA.
pub fn find_xattr(xattrs: Xattrs, name: &[u8]) -> FsResult<Vec<u8>> {
    xattrs
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .ok_or(FsError::NoAttr)
}

/// What the inode table keeps of a decoded inode. An entry of a revision
/// keeps its tree only weakly, so the kernel holding thousands of entries
/// does not pin their directories: the tree LRU alone bounds decoded trees,
/// and an entry whose tree was evicted is rebuilt from the tree's id.
enum Kept {
    Whole(Arc<Inode>),
    InTree(TreeSlot, std::sync::Weak<Vec<Node>>),
}

impl Kept {
    fn of(inode: &Arc<Inode>) -> Self {
        match &inode.what {
            What::Node {
                rev,
                node: NodeRef::InTree { nodes, tree, i },
            } => Kept::InTree(
                TreeSlot {
                    parent: inode.parent,
                    rev: *rev,
                    tree: *tree,
                    i: *i,
                },
                Arc::downgrade(nodes),
            ),
            _ => Kept::Whole(inode.clone()),
        }
    }
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
    /// What it shows changes as revisions arrive (`What::changes`).
    pub live: bool,
}

struct OpenFile {
    ino: u64,
    segments: Vec<Segment>,
    /// Start offset of each segment.
    starts: Vec<u64>,
    size: u64,
    /// Where the last read ended, to recognise sequential reading.
    last_end: AtomicU64,
    /// Segments before this index have been queued for read-ahead.
    ahead: AtomicUsize,
}

/// The inode table. Every number ever given keeps its parent and name
/// (`names`, `by_name`); what it shows (`live`) is kept while the kernel
/// holds lookups on it (`counts`) or while it is among the `idle_limit`
/// most recently idle ones.
#[derive(Default)]
struct Table {
    live: HashMap<u64, Kept>,
    counts: HashMap<u64, u64>,
    names: HashMap<u64, (u64, Arc<[u8]>)>,
    by_name: HashMap<u64, HashMap<Arc<[u8]>, u64>>,
    links: HashMap<(BlobId, u64, u64), u64>,
    idle: VecDeque<u64>,
    idle_limit: usize,
    next: u64,
}

impl Table {
    fn find(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.by_name.get(&parent)?.get(name).copied()
    }

    /// Queues `ino` to be dropped once enough others went idle after it.
    fn went_idle(&mut self, ino: u64) {
        self.idle.push_back(ino);
        while self.idle.len() > self.idle_limit {
            let Some(old) = self.idle.pop_front() else {
                break;
            };
            if old >= FIRST_DYNAMIC && !self.counts.contains_key(&old) {
                self.live.remove(&old);
            }
        }
    }
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
    /// A thread is reading the list from storage; others use the old one.
    refreshing: bool,
}

impl Revs {
    /// Whether `list` may be used without reading storage: it is fresh, or
    /// another thread is refreshing it.
    fn usable(&self) -> bool {
        let fresh = self.at.is_some_and(|t| t.elapsed() < REFRESH);
        self.at.is_some() && (fresh || self.refreshing)
    }
}

/// A value being fetched by one thread; others wanting it wait here.
struct Pending<V> {
    done: Mutex<Option<Result<V, String>>>,
    cv: Condvar,
}

impl<V: Clone> Pending<V> {
    fn wait(&self) -> Result<V, String> {
        let mut done = self.done.lock().expect("pending");
        while done.is_none() {
            done = self.cv.wait(done).expect("pending");
        }
        done.clone().expect("checked above")
    }
}

/// One fetch per id however many threads want it at once: the first
/// claims it, the others wait for its result.
struct Flights<V> {
    inflight: Mutex<HashMap<BlobId, Arc<Pending<V>>>>,
}

enum Flight<V> {
    /// This thread fetches, and must `land` the result.
    Mine(Arc<Pending<V>>),
    /// Another thread fetches: wait for it.
    Theirs(Arc<Pending<V>>),
}

impl<V: Clone> Flights<V> {
    fn new() -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
        }
    }

    fn claim_or_join(&self, id: &BlobId) -> Flight<V> {
        let mut m = self.inflight.lock().expect("inflight");
        match m.get(id) {
            Some(p) => Flight::Theirs(p.clone()),
            None => {
                let p = Arc::new(Pending {
                    done: Mutex::new(None),
                    cv: Condvar::new(),
                });
                m.insert(*id, p.clone());
                Flight::Mine(p)
            }
        }
    }

    /// Claims `id` if no thread is fetching it.
    fn claim(&self, id: &BlobId) -> Option<Arc<Pending<V>>> {
        match self.claim_or_join(id) {
            Flight::Mine(p) => Some(p),
            Flight::Theirs(_) => None,
        }
    }

    /// Hands a claimed fetch's result to the threads waiting for it.
    fn land(&self, id: &BlobId, pending: &Pending<V>, res: Result<V, String>) {
        *pending.done.lock().expect("pending") = Some(res);
        pending.cv.notify_all();
        self.inflight.lock().expect("inflight").remove(id);
    }

    /// `cached`, else the result of one `fetch` shared by every thread
    /// that wants `id` meanwhile; `keep` stores a fetched value first.
    fn get(
        &self,
        id: &BlobId,
        cached: impl Fn() -> Option<V>,
        fetch: impl FnOnce() -> Result<V, RepoError>,
        keep: impl FnOnce(&V),
    ) -> FsResult<V> {
        if let Some(v) = cached() {
            return Ok(v);
        }
        let mut landing = match self.claim_or_join(id) {
            Flight::Theirs(p) => return p.wait().map_err(FsError::Read),
            Flight::Mine(p) => Landing {
                flights: self,
                id: *id,
                pending: Some(p),
            },
        };
        // Another fetch may have landed between the miss and the claim.
        let res = match cached() {
            Some(v) => Ok(v),
            None => fetch().inspect(|v| keep(v)),
        };
        let shared = res.as_ref().map(V::clone).map_err(|e| e.to_string());
        let pending = landing.pending.take().expect("landed once");
        self.land(id, &pending, shared);
        res.map_err(FsError::Storage)
    }
}

/// A flight this thread claimed; if it is dropped before landing (the
/// fetch panicked), it lands with an error, so that no thread waits for
/// it forever.
struct Landing<'a, V: Clone> {
    flights: &'a Flights<V>,
    id: BlobId,
    pending: Option<Arc<Pending<V>>>,
}

impl<V: Clone> Drop for Landing<'_, V> {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            self.flights.land(
                &self.id,
                &p,
                Err(format!("reading {} failed", self.id.short())),
            );
        }
    }
}

/// Decoded chunks: an LRU in memory, the on-disk cache below it, and one
/// fetch per chunk however many readers want it at once.
struct Chunks {
    repo: Arc<Repository>,
    disk: Option<DiskCache>,
    lru: Mutex<Lru<BlobId, Arc<Vec<u8>>>>,
    flights: Flights<Arc<Vec<u8>>>,
}

impl Chunks {
    fn cached(&self, id: &BlobId) -> Option<Arc<Vec<u8>>> {
        self.lru.lock().expect("chunks").get(id)
    }

    fn keep(&self, id: &BlobId, d: &Arc<Vec<u8>>) {
        self.lru
            .lock()
            .expect("chunks")
            .put(*id, d.clone(), d.len());
    }

    fn get(&self, id: &BlobId) -> FsResult<Arc<Vec<u8>>> {
        self.flights.get(
            id,
            || self.cached(id),
            || {
                self.repo
                    .read_blob_cached(id, self.disk.as_ref())
                    .map(Arc::new)
            },
            |d| self.keep(id, d),
        )
    }

    /// Fetches the chunks of `ids` that are neither cached nor being
    /// fetched, neighbours in a pack with one read each
    /// (`Repository::read_blobs_cached`). Readers that want one of them
    /// meanwhile wait for it, as for any fetch; a chunk another thread is
    /// fetching is left to it, so the read-ahead threads never wait.
    fn fetch_many(&self, ids: &[BlobId]) {
        let mut claimed = Claimed {
            chunks: self,
            left: HashMap::new(),
        };
        let mut order = Vec::new();
        for id in ids {
            if self.lru.lock().expect("chunks").contains(id) {
                continue;
            }
            if let Some(p) = self.flights.claim(id) {
                claimed.left.insert(*id, p);
                order.push(*id);
            }
        }
        self.repo
            .read_blobs_cached(&order, self.disk.as_ref(), &mut |id, res| {
                if let Some(p) = claimed.left.remove(id) {
                    let res = res.map(Arc::new).map_err(|e| e.to_string());
                    if let Ok(d) = &res {
                        self.keep(id, d);
                    }
                    self.flights.land(id, &p, res);
                }
            });
    }
}

/// Fetches claimed by `Chunks::fetch_many` and not answered yet. Whatever
/// is left when it is dropped, by a panic too, is answered with an error,
/// so that no reader waits for it forever.
struct Claimed<'a> {
    chunks: &'a Chunks,
    left: HashMap<BlobId, Arc<Pending<Arc<Vec<u8>>>>>,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        for (id, p) in self.left.drain() {
            self.chunks
                .flights
                .land(&id, &p, Err(format!("chunk {} was not read", id.short())));
        }
    }
}

impl Drop for FsCore {
    fn drop(&mut self) {
        self.ahead_tx = None;
        self.prefetch_tx = None;
        for t in self.helpers.drain(..) {
            let _ = t.join();
        }
    }
}

/// Decoded directories by tree id, in an LRU with a weight limit.
struct Trees {
    repo: Arc<Repository>,
    lru: Mutex<Lru<BlobId, Arc<Vec<Node>>>>,
    flights: Flights<Arc<Vec<Node>>>,
    /// Trees decoded so far (misses of the LRU).
    decoded: AtomicU64,
}

impl Trees {
    fn contains(&self, id: &BlobId) -> bool {
        self.lru.lock().expect("trees").contains(id)
    }

    fn cached(&self, id: &BlobId) -> Option<Arc<Vec<Node>>> {
        self.lru.lock().expect("trees").get(id)
    }

    /// The decoded tree `id`: from the LRU, or decoded once however many
    /// threads (a walker and the prefetch threads ahead of it) want it at
    /// once.
    fn get(&self, id: &BlobId) -> FsResult<Arc<Vec<Node>>> {
        self.flights.get(
            id,
            || self.cached(id),
            || self.repo.load_tree(id).map(Arc::new),
            |nodes| {
                self.decoded.fetch_add(1, Ordering::Relaxed);
                let w = tree_weight(nodes);
                self.lru.lock().expect("trees").put(*id, nodes.clone(), w);
            },
        )
    }
}

/// Limits of the mount's caches.
pub struct CoreOptions {
    /// Bytes of decoded chunks kept in memory.
    pub chunk_cache: usize,
    /// Bytes (estimated) of decoded trees kept in memory.
    pub tree_cache: usize,
    /// How far ahead of a sequential reader chunks are fetched.
    pub read_ahead: u64,
    /// Threads that fetch read-ahead chunks.
    pub read_ahead_threads: usize,
    /// Threads that decode the subdirectories of a listed directory ahead
    /// of a walker such as `ls -lR` or `find`, so cold storage reads
    /// overlap instead of queueing one by one.
    pub prefetch_threads: usize,
    /// The on-disk cache of fetched blobs, for remote tiers.
    pub disk_cache: Option<DiskCache>,
    /// Decoded inodes the kernel holds no reference to, kept for reuse.
    pub idle_inodes: usize,
}

impl Default for CoreOptions {
    fn default() -> Self {
        Self {
            chunk_cache: 8 << 20,
            tree_cache: 8 << 20,
            read_ahead: 4 << 20,
            read_ahead_threads: 2,
            prefetch_threads: 4,
            disk_cache: None,
            idle_inodes: 16384,
        }
    }
}

/// A decoded tree's approximate size in memory.
fn tree_weight(nodes: &[Node]) -> usize {
    nodes
        .iter()
        .map(|n| {
            let xattrs: usize = n
                .meta
                .xattrs
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum();
            let body = match &n.body {
                Body::File(s) => s.len() * std::mem::size_of::<Segment>(),
                Body::Symlink(t) => t.len(),
                _ => 0,
            };
            std::mem::size_of::<Node>()
                + n.name.len()
                + n.meta.user.len()
                + n.meta.group.len()
                + xattrs
                + body
        })
        .sum()
}

/// One entry of a directory listing, with what it shows, so answering
/// for it needs no second listing.
#[derive(Debug, Clone)]
pub struct Entry {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: Vec<u8>,
    what: What,
}

/// Entries of an open directory, `.` and `..` first.
pub type DirEntries = Arc<Vec<Entry>>;

pub struct FsCore {
    repo: Arc<Repository>,
    table: Mutex<Table>,
    revs: Mutex<Revs>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Files read without an open, by inode (see `shared_handle`).
    shared: Mutex<Lru<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, DirEntries>>,
    /// Directories whose files are being read one after another, as `tar`,
    /// `cp -r` or `rsync` do: tree id → (index of the file read last,
    /// files before this index were queued for read-ahead).
    walks: Mutex<Lru<BlobId, (usize, usize)>>,
    /// Reads answered by `read_cached`, and by `read`.
    reads_cached: AtomicU64,
    reads_fetched: AtomicU64,
    next_fh: AtomicU64,
    chunks: Arc<Chunks>,
    trees: Arc<Trees>,
    read_ahead: u64,
    /// Chunks to fetch ahead of readers: one id (a file read in order, so
    /// that two threads decode its chunks side by side), or the chunks of
    /// the next files in a directory, read together (`fetch_many`).
    ahead_tx: Option<Queue<Vec<BlobId>>>,
    prefetch_tx: Option<Queue<BlobId>>,
    /// The read-ahead and prefetch threads; they hold the repository, so
    /// dropping the core ends and joins them.
    helpers: Vec<JoinHandle<()>>,
    uid: u32,
    gid: u32,
    started: Timestamp,
    /// When the last request that may touch storage arrived.
    last_request: Mutex<Instant>,
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
    pub fn new(repo: Arc<Repository>, opts: CoreOptions) -> Self {
        let mut t = Table {
            next: FIRST_DYNAMIC,
            idle_limit: opts.idle_inodes,
            ..Table::default()
        };
        t.live.insert(
            ROOT,
            Kept::Whole(Arc::new(Inode {
                parent: ROOT,
                what: What::Root,
            })),
        );
        for (ino, name, _) in TOP {
            t.live.insert(
                ino,
                Kept::Whole(Arc::new(Inode {
                    parent: ROOT,
                    what: top_what(ino),
                })),
            );
            let name: Arc<[u8]> = name.into();
            t.names.insert(ino, (ROOT, name.clone()));
            t.by_name.entry(ROOT).or_default().insert(name, ino);
        }
        let chunks = Arc::new(Chunks {
            repo: repo.clone(),
            disk: opts.disk_cache,
            lru: Mutex::new(Lru::new(opts.chunk_cache)),
            flights: Flights::new(),
        });
        let trees = Arc::new(Trees {
            repo: repo.clone(),
            lru: Mutex::new(Lru::new(opts.tree_cache)),
            flights: Flights::new(),
            decoded: AtomicU64::new(0),
        });
        // A failure in either is reported to the reader that needs the data.
        let mut helpers = Vec::new();
        fn keep<T>(
            helpers: &mut Vec<JoinHandle<()>>,
            w: Option<(Queue<T>, Vec<JoinHandle<()>>)>,
        ) -> Option<Queue<T>> {
            w.map(|(tx, threads)| {
                helpers.extend(threads);
                tx
            })
        }
        let ahead_tx = keep(
            &mut helpers,
            (opts.read_ahead > 0)
                .then(|| {
                    let chunks = chunks.clone();
                    workers(
                        "read-ahead",
                        opts.read_ahead_threads,
                        usize::MAX,
                        move |ids: Vec<BlobId>| chunks.fetch_many(&ids),
                    )
                })
                .flatten(),
        );
        let prefetch_tx = keep(&mut helpers, {
            let trees = trees.clone();
            workers("tree-prefetch", opts.prefetch_threads, 1024, move |id| {
                if !trees.contains(&id) {
                    let _ = trees.get(&id);
                }
            })
        });
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            chunks,
            repo,
            table: Mutex::new(t),
            revs: Mutex::new(Revs {
                at: None,
                list: Vec::new(),
                refreshing: false,
            }),
            files: Mutex::new(HashMap::new()),
            shared: Mutex::new(Lru::new(SHARED_FILES)),
            dirs: Mutex::new(HashMap::new()),
            walks: Mutex::new(Lru::new(WALKS)),
            reads_cached: AtomicU64::new(0),
            reads_fetched: AtomicU64::new(0),
            next_fh: AtomicU64::new(1),
            trees,
            read_ahead: opts.read_ahead,
            ahead_tx,
            prefetch_tx,
            helpers,
            uid,
            gid,
            started: crate::repo::now(),
            last_request: Mutex::new(Instant::now()),
        }
    }

    /// What `ino` shows, decoded again from its parent's tree if it was
    /// dropped, or from its own tree's id if only that tree was evicted.
    fn inode(&self, ino: u64) -> FsResult<Arc<Inode>> {
        match self.inode_now(ino) {
            Now::Here(inode) => Ok(inode),
            Now::TreeEvicted(k) => k.rebuild(self.tree(&k.tree)?),
            Now::Dropped(parent) => self.inode_from_parent(ino, parent),
            Now::Unknown => Err(FsError::NotFound),
        }
    }

    /// What `ino` shows, as far as memory has it.
    fn inode_now(&self, ino: u64) -> Now {
        let t = self.table.lock().expect("table");
        let (k, nodes) = match t.live.get(&ino) {
            Some(Kept::Whole(inode)) => return Now::Here(inode.clone()),
            Some(Kept::InTree(slot, nodes)) => (*slot, nodes.upgrade()),
            None => {
                return match t.names.get(&ino) {
                    Some((parent, _)) => Now::Dropped(*parent),
                    None => Now::Unknown,
                }
            }
        };
        drop(t);
        match nodes.or_else(|| self.trees.cached(&k.tree)) {
            Some(nodes) => match k.rebuild(nodes) {
                Ok(inode) => Now::Here(inode),
                Err(_) => Now::Unknown,
            },
            None => Now::TreeEvicted(k),
        }
    }

    /// Answers with `f` if what `ino` shows is in memory; None when that
    /// would wait on storage (a directory to decode again, or the revision
    /// list to refresh for `latest`), so the caller can hand it to a worker.
    fn now<T>(&self, ino: u64, f: impl FnOnce(&Inode) -> FsResult<T>) -> Option<FsResult<T>> {
        let inode = match self.inode_in_memory(ino) {
            Ok(Some(inode)) => inode,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        if matches!(inode.what, What::Latest) && !self.revs.lock().expect("revs").usable() {
            return None;
        }
        Some(f(&inode))
    }

    /// What `ino` shows if memory has it; None when it would have to be
    /// decoded again from storage.
    fn inode_in_memory(&self, ino: u64) -> FsResult<Option<Arc<Inode>>> {
        match self.inode_now(ino) {
            Now::Here(inode) => Ok(Some(inode)),
            Now::Unknown => Err(FsError::NotFound),
            Now::TreeEvicted(_) | Now::Dropped(_) => Ok(None),
        }
    }

    fn inode_from_parent(&self, ino: u64, parent: u64) -> FsResult<Arc<Inode>> {
        // Decoded again from the parent's listing.
        let e = self
            .children(parent)?
            .into_iter()
            .find(|e| e.ino == ino)
            .ok_or(FsError::NotFound)?;
        Ok(self.adopt(parent, e))
    }

    /// Keeps what `e` shows decoded (again), and returns it.
    fn adopt(&self, parent: u64, e: Entry) -> Arc<Inode> {
        let inode = Arc::new(Inode {
            parent,
            what: e.what,
        });
        let mut t = self.table.lock().expect("table");
        let t = &mut *t;
        if let std::collections::hash_map::Entry::Vacant(v) = t.live.entry(e.ino) {
            v.insert(Kept::of(&inode));
            if !t.counts.contains_key(&e.ino) {
                t.went_idle(e.ino);
            }
        }
        inode
    }

    /// Notes a request, for `idle_for`.
    pub fn touch(&self) {
        *self.last_request.lock().expect("last request") = Instant::now();
    }

    /// How long no request has touched storage.
    pub fn idle_for(&self) -> Duration {
        self.last_request.lock().expect("last request").elapsed()
    }

    /// Counts the kernel's reference to an entry of a READDIRPLUS reply.
    pub fn remember_entry(&self, parent: u64, e: &Entry) {
        self.remember(e.ino);
        self.adopt(parent, e.clone());
    }

    /// Counts one more kernel reference to `ino` (a lookup reply).
    pub fn remember(&self, ino: u64) {
        *self
            .table
            .lock()
            .expect("table")
            .counts
            .entry(ino)
            .or_default() += 1;
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut t = self.table.lock().expect("table");
        let Some(c) = t.counts.get_mut(&ino) else {
            return;
        };
        *c = c.saturating_sub(n);
        if *c == 0 {
            t.counts.remove(&ino);
            t.went_idle(ino);
        }
    }

    /// Decoded directories in the tree cache.
    pub fn trees_cached(&self) -> usize {
        self.trees.lru.lock().expect("trees").len()
    }

    /// Directories decoded since the mount started (tree cache misses).
    pub fn trees_decoded(&self) -> u64 {
        self.trees.decoded.load(Ordering::Relaxed)
    }

    /// Bytes of decoded chunks held in memory.
    pub fn chunk_bytes(&self) -> usize {
        self.chunks.lru.lock().expect("chunks").weight()
    }

    /// Decoded inodes held in memory, and numbers given out in all.
    pub fn inode_counts(&self) -> (usize, usize) {
        let t = self.table.lock().expect("table");
        (t.live.len(), t.names.len())
    }

    /// A directory's nodes, through the tree LRU.
    fn tree(&self, id: &BlobId) -> FsResult<Arc<Vec<Node>>> {
        self.trees.get(id)
    }

    /// Queues the subdirectories of a directory being opened for listing,
    /// one level down: a walker descends into them next. (Not on lookups: a
    /// `stat a/b/c` would queue every sibling along the way.) When the queue
    /// is full, the rest are left to be read on demand.
    fn prefetch_subdirs(&self, entries: &[Entry]) {
        let Some(tx) = &self.prefetch_tx else {
            return;
        };
        for e in entries {
            if let What::Node { node, .. } = &e.what {
                if let Body::Dir(t) = &node.body {
                    if !self.trees.contains(t) && tx.push(*t).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// The path of `ino` inside the mount, for messages.
    pub fn path_of(&self, mut ino: u64) -> String {
        let t = self.table.lock().expect("table");
        let mut parts = Vec::new();
        while ino != ROOT {
            let Some((parent, name)) = t.names.get(&ino) else {
                break;
            };
            parts.push(String::from_utf8_lossy(name).into_owned());
            ino = *parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// The revision list, oldest first, refreshed when older than `REFRESH`.
    ///
    /// The list is read from storage without holding the lock, and while
    /// one thread reads it the others answer from the previous list, so a
    /// slow tier does not hold up every request that shows `latest`.
    fn revisions(&self) -> FsResult<Vec<RevInfo>> {
        {
            let mut r = self.revs.lock().expect("revs");
            if r.usable() {
                return Ok(r.list.clone());
            }
            r.refreshing = true;
        }
        let read = self.read_revisions();
        let mut r = self.revs.lock().expect("revs");
        r.refreshing = false;
        match read {
            Ok(list) => r.list = list,
            // Every tier offline: the revisions known stay listed (their
            // trees and data read from what memory and the cache hold),
            // and the list is read again after REFRESH.
            Err(e) if r.at.is_some() => {
                errln!("tiervault mount: cannot refresh the list of revisions ({e}); showing the {} known", r.list.len());
            }
            Err(e) => return Err(e),
        }
        r.at = Some(Instant::now());
        Ok(r.list.clone())
    }

    fn read_revisions(&self) -> FsResult<Vec<RevInfo>> {
        self.repo.sync_index()?;
        let revs = self.repo.revisions()?;
        let names = crate::timefmt::revision_names(&revs);
        Ok(names
            .into_iter()
            .zip(revs)
            .map(|(name, (_, rev))| RevInfo {
                name,
                tree: rev.tree,
                time: rev.time,
                host: rev.host,
                tags: rev.tags,
            })
            .collect())
    }

    /// The node at `path` in the tree `root`, if the revision has it.
    fn node_at(&self, root: &BlobId, path: &[Vec<u8>]) -> FsResult<Option<Node>> {
        let mut tree = *root;
        let mut found = None;
        for (i, comp) in path.iter().enumerate() {
            let Some(n) = self.tree(&tree)?.iter().find(|n| &n.name == comp).cloned() else {
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
    fn history_list(&self, ino: u64, path: &[Vec<u8>]) -> FsResult<Vec<Entry>> {
        let mut names: std::collections::BTreeMap<Vec<u8>, bool> =
            std::collections::BTreeMap::new();
        for r in self.revisions()? {
            let tree = if path.is_empty() {
                Some(r.tree)
            } else {
                self.node_at(&r.tree, path)?.and_then(|n| n.subtree())
            };
            let Some(tree) = tree else { continue };
            for n in self.tree(&tree)?.iter() {
                *names.entry(n.name.clone()).or_default() |= n.kind == NodeKind::Dir;
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
                self.child(ino, name, NodeKind::Dir, what)
            })
            .collect())
    }

    /// One entry per distinct version of the file at `path`, named by the
    /// revision where that version first appeared.
    fn versions(&self, ino: u64, path: &[Vec<u8>]) -> FsResult<Vec<Entry>> {
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
            out.push(self.child(
                ino,
                name,
                kind,
                What::Node {
                    rev: r.tree,
                    node: NodeRef::Own(Arc::new(node)),
                },
            ));
        }
        Ok(out)
    }

    /// The entry for `(parent, name)`, numbered on first sight. Listing
    /// decodes nothing into the table; looking an entry up does.
    fn child(&self, parent: u64, name: Vec<u8>, kind: NodeKind, what: What) -> Entry {
        let mut t = self.table.lock().expect("table");
        let link = match &what {
            What::Node { rev, node } => node.link_key().map(|(dev, ino)| (*rev, dev, ino)),
            _ => None,
        };
        let ino = match t.find(parent, &name) {
            Some(ino) => ino,
            None => {
                let ino = match link.and_then(|k| t.links.get(&k).copied()) {
                    Some(shared) => shared,
                    None => {
                        let ino = t.next;
                        t.next += 1;
                        if let Some(k) = link {
                            t.links.insert(k, ino);
                        }
                        ino
                    }
                };
                let shared: Arc<[u8]> = name.as_slice().into();
                t.names.entry(ino).or_insert((parent, shared.clone()));
                t.by_name.entry(parent).or_default().insert(shared, ino);
                ino
            }
        };
        Entry {
            ino,
            kind,
            name,
            what,
        }
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
            node: NodeRef::Own(Arc::new(Node {
                name: name.as_bytes().to_vec(),
                kind: NodeKind::Dir,
                meta,
                body: Body::Dir(tree),
            })),
        }
    }

    /// Entries of a directory as `(ino, kind, name)`, without `.` and `..`.
    pub fn list(&self, ino: u64) -> FsResult<Vec<(u64, NodeKind, Vec<u8>)>> {
        Ok(self
            .children(ino)?
            .into_iter()
            .map(|e| (e.ino, e.kind, e.name))
            .collect())
    }

    fn children(&self, ino: u64) -> FsResult<Vec<Entry>> {
        match &self.inode(ino)?.what {
            What::Root => {
                // `latest` names nothing before the first revision.
                let none = self.revisions().is_ok_and(|r| r.is_empty());
                Ok(TOP
                    .iter()
                    .filter(|(ino, ..)| !(none && *ino == LATEST))
                    .map(|(ino, name, kind)| Entry {
                        ino: *ino,
                        kind: *kind,
                        name: name.to_vec(),
                        what: top_what(*ino),
                    })
                    .collect())
            }
            What::Revisions => Ok(self
                .revisions()?
                .into_iter()
                .map(|r| {
                    let what = self.revision_dir(&r);
                    self.child(REVISIONS, r.name.into_bytes(), NodeKind::Dir, what)
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
                        self.child(ino, name, NodeKind::Dir, What::Group { tags: *tags, key })
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
                    self.child(
                        ino,
                        r.name.into_bytes(),
                        NodeKind::Symlink,
                        What::Link(target),
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
                let nodes = self.tree(&tree)?;
                Ok(nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let what = What::Node {
                            rev: *rev,
                            node: NodeRef::InTree {
                                nodes: nodes.clone(),
                                tree,
                                i,
                            },
                        };
                        self.child(ino, n.name.clone(), n.kind, what)
                    })
                    .collect())
            }
        }
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        // Bound first: the table lock must be released before getattr.
        let known = self.table.lock().expect("table").find(parent, name);
        // Directories that change as revisions arrive are listed again.
        if let (Some(ino), false) = (known, self.is_live(parent)) {
            return self.getattr(ino);
        }
        let e = self
            .children(parent)?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or(FsError::NotFound)?;
        let ino = e.ino;
        let inode = self.adopt(parent, e);
        self.attr(ino, &inode.what)
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        self.attr(ino, &self.inode(ino)?.what)
    }

    /// `getattr` from memory alone, or None (see `now`).
    pub fn getattr_now(&self, ino: u64) -> Option<FsResult<Attr>> {
        self.now(ino, |i| self.attr(ino, &i.what))
    }

    /// The attributes of a listed entry, without the inode table.
    pub fn entry_attr(&self, e: &Entry) -> FsResult<Attr> {
        self.attr(e.ino, &e.what)
    }

    fn attr(&self, ino: u64, what: &What) -> FsResult<Attr> {
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
            live: what.changes(),
        };
        Ok(match what {
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
                    live: false,
                }
            }
        })
    }

    /// What `latest` points to: the newest revision.
    pub fn latest_target(&self) -> FsResult<Vec<u8>> {
        let revs = self.revisions()?;
        let r = revs.last().ok_or(FsError::NotFound)?;
        Ok(format!("revisions/{}", r.name).into_bytes())
    }

    /// Directories whose entries change as revisions arrive.
    /// Whether what `ino` shows changes as revisions arrive, so neither the
    /// table nor the kernel may keep its listing.
    pub fn is_live(&self, ino: u64) -> bool {
        self.inode(ino).is_ok_and(|i| i.what.changes())
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        self.link_of(&*self.inode(ino)?)
    }

    /// `readlink` from memory alone, or None (see `now`).
    pub fn readlink_now(&self, ino: u64) -> Option<FsResult<Vec<u8>>> {
        self.now(ino, |i| self.link_of(i))
    }

    fn link_of(&self, inode: &Inode) -> FsResult<Vec<u8>> {
        match &inode.what {
            What::Latest => self.latest_target(),
            What::Link(t) => Ok(t.clone()),
            What::Node { node, .. } => match &node.body {
                Body::Symlink(t) => Ok(t.clone()),
                _ => Err(FsError::NotLink),
            },
            _ => Err(FsError::NotLink),
        }
    }

    pub fn xattrs(&self, ino: u64) -> FsResult<Xattrs> {
        Ok(xattrs_of(&*self.inode(ino)?))
    }

    /// `xattrs` from memory alone, or None (see `now`).
    pub fn xattrs_now(&self, ino: u64) -> Option<FsResult<Xattrs>> {
        self.now(ino, |i| Ok(xattrs_of(i)))
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        find_xattr(self.xattrs(ino)?, name)
    }

    /// Opens a regular file; returns a handle for `read` and `seek`.
    pub fn open(&self, ino: u64) -> FsResult<u64> {
        let f = self.open_file(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().expect("files").insert(fh, Arc::new(f));
        Ok(fh)
    }

    /// The handle for reading `ino` without an open: the kernel sends no
    /// OPEN or RELEASE when the file system declines opens
    /// (FUSE_NO_OPEN_SUPPORT), which spares two round trips per small file.
    /// Such files are kept in an LRU, and opened again when evicted.
    pub fn shared_handle(ino: u64) -> u64 {
        ino | SHARED
    }

    fn open_file(&self, ino: u64) -> FsResult<OpenFile> {
        self.open_file_of(ino, &*self.inode(ino)?)
    }

    fn open_file_of(&self, ino: u64, inode: &Inode) -> FsResult<OpenFile> {
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
        Ok(OpenFile {
            ino,
            segments: segments.clone(),
            starts,
            size: node.meta.size,
            last_end: AtomicU64::new(0),
            ahead: AtomicUsize::new(0),
        })
    }

    pub fn release(&self, fh: u64) {
        self.files.lock().expect("files").remove(&fh);
    }

    fn file(&self, fh: u64) -> FsResult<Arc<OpenFile>> {
        self.file_in(fh, false)?.ok_or(FsError::NotFound)
    }

    /// The open file behind `fh`. With `memory_only`, None when the file's
    /// entry would have to be decoded again from storage first.
    fn file_in(&self, fh: u64, memory_only: bool) -> FsResult<Option<Arc<OpenFile>>> {
        if fh & SHARED != 0 {
            let ino = fh & !SHARED;
            if let Some(f) = self.shared.lock().expect("shared").get(&ino) {
                return Ok(Some(f));
            }
            let inode = if memory_only {
                match self.inode_in_memory(ino)? {
                    Some(inode) => inode,
                    None => return Ok(None),
                }
            } else {
                self.inode(ino)?
            };
            let f = Arc::new(self.open_file_of(ino, &inode)?);
            // The handle, its two lists and the LRU's own entry, measured
            // with heaptrack at about 330 bytes for a one-chunk file.
            let w = 280 + f.segments.len() * (std::mem::size_of::<Segment>() + 8);
            self.shared.lock().expect("shared").put(ino, f.clone(), w);
            return Ok(Some(f));
        }
        self.files
            .lock()
            .expect("files")
            .get(&fh)
            .cloned()
            .map(Some)
            .ok_or(FsError::BadHandle)
    }

    /// Lists a directory once for the life of a handle, so a listing that
    /// takes many READDIR calls is consistent and decoded once.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let entries = self.children(ino)?;
        self.prefetch_subdirs(&entries);
        let me = self.inode(ino)?;
        let up = self.inode(me.parent)?;
        let dot = |ino, name: &[u8], what: &What| Entry {
            ino,
            kind: NodeKind::Dir,
            name: name.to_vec(),
            what: what.clone(),
        };
        let mut all = Vec::with_capacity(entries.len() + 2);
        all.push(dot(ino, b".", &me.what));
        all.push(dot(me.parent, b"..", &up.what));
        all.extend(entries);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().expect("dirs").insert(fh, Arc::new(all));
        Ok(fh)
    }

    /// The entries of an open directory, `.` and `..` first.
    pub fn dir_entries(&self, fh: u64) -> FsResult<DirEntries> {
        self.dirs
            .lock()
            .expect("dirs")
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().expect("dirs").remove(&fh);
    }

    /// The chunks `[offset, offset + size)` of `f` needs, in order.
    fn span(f: &OpenFile, offset: u64, size: usize) -> (usize, u64) {
        let end = f.size.min(offset.saturating_add(size as u64));
        // The segment holding `offset`: the last one starting at or before it.
        (f.starts.partition_point(|&s| s <= offset) - 1, end)
    }

    /// Reads up to `size` bytes at `offset` if every chunk it needs is in
    /// memory, without touching storage; `None` otherwise.
    pub fn read_cached(&self, fh: u64, offset: u64, size: usize) -> Option<ReadData> {
        let f = self.file_in(fh, true).ok()??;
        let got = self
            .read_with(&f, offset, size, |id| Ok(self.chunks.cached(id)))
            .ok()
            .flatten();
        if got.is_some() {
            self.reads_cached.fetch_add(1, Ordering::Relaxed);
        }
        got
    }

    /// Reads answered from memory (`read_cached`), and by `read`.
    pub fn read_counts(&self) -> (u64, u64) {
        (
            self.reads_cached.load(Ordering::Relaxed),
            self.reads_fetched.load(Ordering::Relaxed),
        )
    }

    /// Queues the chunks after `last` for read-ahead when `f` is read
    /// sequentially.
    fn read_ahead(&self, f: &OpenFile, offset: u64, last: usize, end: u64) {
        let Some(tx) = &self.ahead_tx else { return };
        let prev = f.last_end.swap(end, Ordering::Relaxed);
        // Concurrent kernel read-ahead requests arrive slightly out of order.
        let restart = offset == 0;
        if restart {
            self.next_files_ahead(f.ino, tx);
        }
        let sequential = restart || offset.abs_diff(prev) <= 1 << 20;
        if !sequential || restart {
            // A new pass (the shared handle of a file outlives each open):
            // what was queued before says nothing about what is cached now.
            f.ahead.store(last + 1, Ordering::Relaxed);
        }
        if !sequential {
            return;
        }
        let until = end.saturating_add(self.read_ahead);
        let mut i = f.ahead.load(Ordering::Relaxed).max(last + 1);
        while i < f.segments.len() && f.starts[i] < until {
            if let Segment::Data { id, .. } = &f.segments[i] {
                if !self.chunks.lru.lock().expect("chunks").contains(id) {
                    let _ = tx.push(vec![*id]);
                }
            }
            i += 1;
        }
        f.ahead.fetch_max(i, Ordering::Relaxed);
    }

    /// When files of one directory are read one after another (a file's
    /// first read follows that of a sibling shortly before it in listing
    /// order), queues the chunks of the files after it for read-ahead, up
    /// to the read-ahead window in bytes. A walker of many small files then
    /// finds each one's data decoded, and its reads are answered on the
    /// kernel-facing thread, without a hand-off to a worker per file.
    /// The window is refilled half at a time: the next file as a job of its
    /// own, the others in one batch, so that their chunks, usually
    /// neighbours in a pack, are read together (`Chunks::fetch_many`): one
    /// ranged read for some 32 small files.
    /// Memory only: nothing is queued for an entry whose directory is not
    /// decoded.
    fn next_files_ahead(&self, ino: u64, tx: &Queue<Vec<BlobId>>) {
        let Now::Here(inode) = self.inode_now(ino) else {
            return;
        };
        let What::Node {
            node: NodeRef::InTree { nodes, tree, i },
            ..
        } = &inode.what
        else {
            return;
        };
        let (tree, i) = (*tree, *i);
        let queued = {
            let mut w = self.walks.lock().expect("walks");
            let (last, queued) = w.get(&tree).unwrap_or((usize::MAX, 0));
            if last == i {
                return;
            }
            let walking = last < i && i - last <= WALK_GAP;
            // A new walk: what an earlier one queued may be gone by now.
            let queued = if walking { queued } else { 0 };
            w.put(tree, (i, queued), 1);
            if !walking {
                return;
            }
            queued
        };
        // Bounded in entries too, so a directory of empty files is not
        // scanned to its end on every read.
        let mut bytes = 0;
        // The next file is its own job, so that the reader, who will want
        // it first, does not wait for the whole batch.
        let (mut next, mut ids, mut new_bytes) = (Vec::new(), Vec::new(), 0);
        let mut j = i + 1;
        let stop = nodes.len().min(i + 1 + WALK_AHEAD);
        while j < stop && bytes < self.read_ahead {
            for s in nodes[j].segments() {
                let Segment::Data { id, .. } = s else {
                    continue;
                };
                if bytes >= self.read_ahead {
                    break;
                }
                if j >= queued {
                    new_bytes += s.len();
                    if !self.chunks.lru.lock().expect("chunks").contains(id) {
                        if j == i + 1 {
                            next.push(*id);
                        } else {
                            ids.push(*id);
                        }
                    }
                }
                bytes += s.len();
            }
            j += 1;
        }
        let new_entries = j.saturating_sub(queued.max(i + 1));
        let refill =
            new_entries >= WALK_AHEAD / 2 || new_bytes >= self.read_ahead / 2 || j == nodes.len();
        if !refill {
            return;
        }
        for batch in [next, ids] {
            if !batch.is_empty() {
                let _ = tx.push(batch);
            }
        }
        let mut w = self.walks.lock().expect("walks");
        if let Some((last, q)) = w.get(&tree) {
            w.put(tree, (last, q.max(j)), 1);
        }
    }

    /// Reads up to `size` bytes at `offset`; holes read as zeros. A chunk
    /// that cannot be read or verified fails this read only, and is logged
    /// with the file's path.
    pub fn read(&self, fh: u64, offset: u64, size: usize) -> FsResult<ReadData> {
        let f = self.file(fh)?;
        self.reads_fetched.fetch_add(1, Ordering::Relaxed);
        let out = self.read_with(&f, offset, size, |id| self.chunks.get(id).map(Some))?;
        Ok(out.expect("a fetching read has every chunk"))
    }

    /// Assembles a read from `get`, which gives a chunk, or None to give up
    /// (the read then gives None).
    fn read_with(
        &self,
        f: &OpenFile,
        offset: u64,
        size: usize,
        get: impl Fn(&BlobId) -> FsResult<Option<Arc<Vec<u8>>>>,
    ) -> FsResult<Option<ReadData>> {
        if offset >= f.size {
            return Ok(Some(ReadData::Owned(Vec::new())));
        }
        let (mut i, end) = Self::span(f, offset, size);
        let mut last = i;
        while last + 1 < f.segments.len() && f.starts[last + 1] < end {
            last += 1;
        }
        self.read_ahead(f, offset, last, end);
        let fetch = |i: usize, id: &BlobId| {
            get(id).inspect_err(|e| {
                errln!(
                    "tiervault mount: cannot read {} at offset {}: {e}",
                    self.path_of(f.ino),
                    f.starts[i]
                )
            })
        };
        // Most reads lie within one chunk: answered from the chunk itself.
        if let (true, Segment::Data { id, .. }) = (last == i, &f.segments[i]) {
            let start = f.starts[i];
            return Ok(fetch(i, id)?.map(|data| {
                ReadData::Shared(data, (offset - start) as usize..(end - start) as usize)
            }));
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let seg = &f.segments[i];
            let (start, seg_end) = (f.starts[i], f.starts[i] + seg.len());
            let upto = seg_end.min(end);
            match seg {
                Segment::Hole { .. } => out.resize(out.len() + (upto - pos) as usize, 0),
                Segment::Data { id, .. } => {
                    let Some(data) = fetch(i, id)? else {
                        return Ok(None);
                    };
                    out.extend_from_slice(&data[(pos - start) as usize..(upto - start) as usize]);
                }
            }
            pos = upto;
            i += 1;
        }
        Ok(Some(ReadData::Owned(out)))
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

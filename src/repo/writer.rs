//! The write half of the ingest pipeline: seal workers compress and encrypt
//! blobs, one packer thread fills packs, one writer thread stores them.
//!
//! ```text
//! add() --(bounded)--> seal workers --(bounded)--> packer --(bounded)--> store threads
//! ```
//! Bounded channels keep memory fixed however large the backup. A blob is
//! recorded in the index only after its pack is stored, and removed from the
//! `pending` set in the same critical section that `add` uses for its
//! duplicate check, so identical content arriving concurrently is stored
//! once. Several store threads write packs at once, so one pack's fsync
//! does not stall the pipeline. Index files are written every
//! `INDEX_EVERY` stored packs and at `finish`, always after their packs.

use super::{RepoError, Repository, Result};
use crate::format::indexfile::{self, PackIndex};
use crate::format::pack::{seal_blob, PackBuilder};
use crate::format::{names, BlobId, BlobType};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const INDEX_EVERY: usize = 64;
/// Packs stored at once. Each store ends in an fsync that waits on the
/// disk (or the network); several in flight keep the cores busy meanwhile.
const STORE_THREADS: usize = 3;

#[derive(Default)]
pub struct WriterStats {
    pub blobs_added: AtomicU64,
    pub bytes_added: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub packs: AtomicU64,
}

struct Shared {
    repo: Arc<Repository>,
    pending: Mutex<HashSet<BlobId>>,
    /// The first failure. It stays set: once a pack could not be stored,
    /// nothing more is written and `finish` reports it.
    error: Mutex<Option<RepoError>>,
    failed: std::sync::atomic::AtomicBool,
    /// Stored packs that no index file covers yet.
    unindexed: Mutex<Vec<PackIndex>>,
    stats: Arc<WriterStats>,
}

impl Shared {
    fn fail(&self, e: RepoError) {
        let mut g = self.error.lock().expect("error lock");
        if g.is_none() {
            *g = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }
    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
    /// A copy of the failure for callers of `add`; `finish` returns the
    /// original.
    fn failure(&self) -> RepoError {
        let g = self.error.lock().expect("error lock");
        RepoError::WriteFailed(g.as_ref().map_or_else(
            || "the blob writer stopped".to_string(),
            ToString::to_string,
        ))
    }
}

struct Sealed {
    id: BlobId,
    kind: BlobType,
    compressed: bool,
    raw_len: u32,
    stored: Vec<u8>,
}

/// Blobs up to this size are sealed by the thread that adds them: the hop
/// to a seal worker costs more than sealing them.
const INLINE_SEAL: usize = 256 * 1024;

pub struct BlobWriter {
    tx: Option<Sender<(BlobType, BlobId, Vec<u8>)>>,
    sealed: Option<Sender<Sealed>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl BlobWriter {
    pub fn new(repo: Arc<Repository>, seal_workers: usize) -> Self {
        let shared = Arc::new(Shared {
            repo,
            pending: Mutex::new(HashSet::new()),
            error: Mutex::new(None),
            failed: std::sync::atomic::AtomicBool::new(false),
            unindexed: Mutex::new(Vec::new()),
            stats: Arc::default(),
        });
        let (tx, rx) = bounded::<(BlobType, BlobId, Vec<u8>)>(8);
        let (stx, srx) = bounded::<Sealed>(8);
        let (ptx, prx) = bounded::<PackBuilder>(1);
        let mut threads = Vec::new();
        for _ in 0..seal_workers.max(1) {
            let (rx, stx, sh) = (rx.clone(), stx.clone(), shared.clone());
            threads.push(std::thread::spawn(move || seal_loop(&sh, &rx, &stx)));
        }
        let sealed = Some(stx);
        threads.push(std::thread::spawn(move || pack_loop(&srx, &ptx)));
        for _ in 0..STORE_THREADS {
            let (sh, prx) = (shared.clone(), prx.clone());
            threads.push(std::thread::spawn(move || write_loop(&sh, &prx)));
        }
        Self {
            tx: Some(tx),
            sealed,
            shared,
            threads,
        }
    }

    /// Counters that stay readable after `finish`.
    pub fn stats(&self) -> Arc<WriterStats> {
        self.shared.stats.clone()
    }

    /// Queues a blob unless the repository or this run already has it.
    /// Returns whether it was new.
    pub fn add(&self, kind: BlobType, id: BlobId, plain: Vec<u8>) -> Result<bool> {
        if self.shared.failed() {
            return Err(self.shared.failure());
        }
        {
            let mut p = self.shared.pending.lock().expect("pending lock");
            if p.contains(&id) || self.shared.repo.index().has_blob(&id)? {
                return Ok(false);
            }
            p.insert(id);
        }
        self.shared
            .stats
            .blobs_added
            .fetch_add(1, Ordering::Relaxed);
        self.shared
            .stats
            .bytes_added
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        let sent = if plain.len() <= INLINE_SEAL {
            let (stored, compressed) = seal_blob(self.shared.repo.keys(), kind, &id, &plain);
            let s = Sealed {
                id,
                kind,
                compressed,
                raw_len: plain.len() as u32,
                stored,
            };
            self.sealed
                .as_ref()
                .expect("writer not finished")
                .send(s)
                .is_ok()
        } else {
            self.tx
                .as_ref()
                .expect("writer not finished")
                .send((kind, id, plain))
                .is_ok()
        };
        if !sent {
            return Err(self.shared.failure());
        }
        Ok(true)
    }

    /// Flushes the last pack and the index file; returns once every blob
    /// added is durably stored.
    pub fn finish(mut self) -> Result<()> {
        drop(self.tx.take());
        drop(self.sealed.take());
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                self.shared
                    .fail(RepoError::Config("a backup worker thread panicked".into()));
            }
        }
        let rest = std::mem::take(&mut *self.shared.unindexed.lock().expect("unindexed lock"));
        if !self.shared.failed() && !rest.is_empty() {
            if let Err(e) = write_index(&self.shared.repo, &rest) {
                self.shared.fail(e);
            }
        }
        match self.shared.error.lock().expect("error lock").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn seal_loop(sh: &Shared, rx: &Receiver<(BlobType, BlobId, Vec<u8>)>, tx: &Sender<Sealed>) {
    let keys = sh.repo.keys();
    for (kind, id, plain) in rx {
        let (stored, compressed) = seal_blob(keys, kind, &id, &plain);
        if tx
            .send(Sealed {
                id,
                kind,
                compressed,
                raw_len: plain.len() as u32,
                stored,
            })
            .is_err()
        {
            return;
        }
    }
}

fn pack_loop(rx: &Receiver<Sealed>, tx: &Sender<PackBuilder>) {
    let mut pb = PackBuilder::new();
    for s in rx {
        pb.add(s.id, s.kind, s.compressed, s.raw_len, &s.stored);
        if pb.is_full() && tx.send(std::mem::take(&mut pb)).is_err() {
            return;
        }
    }
    if !pb.is_empty() {
        let _ = tx.send(pb);
    }
}

fn write_loop(sh: &Shared, rx: &Receiver<PackBuilder>) {
    let repo = &sh.repo;
    for pb in rx {
        if sh.failed() {
            continue; // drain so upstream threads can finish
        }
        let (pack, bytes, entries) = pb.finish(repo.keys());
        let bytes = bytes::Bytes::from(bytes);
        let res = repo
            .store()
            .put_shared(&names::pack(&pack), &bytes)
            .map_err(RepoError::from)
            .and_then(|()| {
                repo.index()
                    .add_pack(&pack, bytes.len() as u64, &entries, false)
                    .map_err(RepoError::from)
            });
        {
            let mut p = sh.pending.lock().expect("pending lock");
            for e in &entries {
                p.remove(&e.id);
            }
        }
        if let Err(e) = res {
            sh.fail(e);
            continue;
        }
        sh.stats.packs.fetch_add(1, Ordering::Relaxed);
        sh.stats
            .stored_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let batch = {
            let mut u = sh.unindexed.lock().expect("unindexed lock");
            u.push(PackIndex {
                pack,
                pack_len: bytes.len() as u64,
                blobs: entries,
            });
            (u.len() >= INDEX_EVERY).then(|| std::mem::take(&mut *u))
        };
        // Every pack in the batch is already stored: its index file may go.
        if let Some(batch) = batch {
            if let Err(e) = write_index(repo, &batch) {
                sh.fail(e);
            }
        }
    }
}

/// Stores one index file covering `packs` and marks them indexed locally.
pub fn write_index(repo: &Repository, packs: &[PackIndex]) -> Result<()> {
    let (id, stored) = indexfile::seal(repo.keys(), packs);
    repo.store().put(&names::index(&id), &stored)?;
    repo.index()
        .set_meta(&format!("idx:{}", id.to_hex()), b"")?;
    let marks: Vec<(BlobId, u64)> = packs.iter().map(|p| (p.pack, p.pack_len)).collect();
    repo.index().mark_indexed(&marks)?;
    Ok(())
}

/// Rewrites each index file that names one of `gone` without it: a new
/// index file for the packs it keeps, then the old one deleted. Returns how
/// many were rewritten. An index file that does not open is left alone.
fn drop_from_index_files(repo: &Repository, gone: &HashSet<BlobId>) -> Result<usize> {
    let mut n = 0;
    for obj in repo.store().list("index/")? {
        let Some(id) = obj.key.strip_prefix("index/").and_then(BlobId::from_hex) else {
            continue;
        };
        let Ok(packs) = crate::tier::get_parsed(repo.store(), &obj.key, |b| {
            indexfile::open(repo.keys(), &id, b).map_err(|e| e.to_string())
        }) else {
            continue;
        };
        if !packs.iter().any(|p| gone.contains(&p.pack)) {
            continue;
        }
        let keep: Vec<PackIndex> = packs
            .into_iter()
            .filter(|p| !gone.contains(&p.pack))
            .collect();
        if !keep.is_empty() {
            write_index(repo, &keep)?;
        }
        repo.store().delete(&obj.key)?;
        n += 1;
    }
    Ok(n)
}

/// Brings the local index in line with the tiers before a backup, so that
/// deduplication never trusts data the tiers no longer hold:
/// - if the index names a pack that no tier lists, it is rebuilt from the
///   tiers;
/// - every pack that no index file names yet (left by an interrupted run,
///   on this machine or another) is adopted: its header is read and an
///   index file covering it is written.
///
/// Returns how many packs were adopted.
pub fn adopt_unindexed_packs(repo: &Repository) -> Result<usize> {
    let listed: std::collections::HashMap<BlobId, u64> = repo
        .store()
        .list("data/")?
        .into_iter()
        .filter_map(|o| Some((o.key.rsplit('/').next().and_then(BlobId::from_hex)?, o.size)))
        .collect();
    let local = repo.index().packs()?;
    if let Some(gone) = local.iter().find(|p| !listed.contains_key(p)) {
        errln!(
            "warning: the local cache names {} which no online tier holds; rebuilding the cache from the online tiers",
            names::pack(gone)
        );
        repo.index().clear_blobs()?;
        repo.sync_index()?;
        let missing = |repo: &Repository| -> Result<HashSet<BlobId>> {
            Ok(repo
                .index()
                .packs()?
                .into_iter()
                .filter(|p| !listed.contains_key(p))
                .collect())
        };
        let mut lost = missing(repo)?;
        // With every tier online and synchronised, and each one's own
        // listing lacking it, a pack is gone for good: the index files stop
        // naming it, or another machine's new cache could look a blob up
        // there rather than in the pack that holds it now. (A tier that is
        // behind, or one a delete misses, could have the old index file
        // copied back by `sync`.)
        let tiers = repo.tiers();
        let gone_everywhere = |lost: &HashSet<BlobId>| {
            tiers.all_in_step()
                && tiers.tiers().all(|t| {
                    t.list("data/").is_ok_and(|objs| {
                        !objs.iter().any(|o| {
                            o.key
                                .rsplit('/')
                                .next()
                                .and_then(BlobId::from_hex)
                                .is_some_and(|p| lost.contains(&p))
                        })
                    })
                })
        };
        if !lost.is_empty() && gone_everywhere(&lost) {
            let n = drop_from_index_files(repo, &lost)?;
            errln!(
                "warning: {} pack(s) are missing from every tier; {n} index file(s) named them and were rewritten without them. Data only they held is stored again if this backup still finds it; `tiervault check` names what older revisions lost",
                lost.len()
            );
            repo.index().clear_blobs()?;
            repo.sync_index()?;
            lost = missing(repo)?;
        }
        // Index files may still name missing packs; never dedup against them.
        if !lost.is_empty() {
            errln!("warning: {} pack(s) named by index files are missing from every online tier; run `tiervault check`", lost.len());
            repo.index().forget_packs(&lost)?;
        }
    }
    let mut packs = Vec::new();
    for (pack, &len) in &listed {
        let indexed = match repo.index().pack_state(pack)? {
            Some((_, indexed)) => indexed,
            None => false,
        };
        if indexed {
            continue;
        }
        // A leftover may be on some tiers only (its session was cut off
        // between them): it is reused only once every synchronised tier
        // holds it, else its data is stored again.
        if !repo.tiers().spread(&names::pack(pack)) {
            errln!(
                "note: {} is not on every tier and cannot be copied there now; not reused",
                names::pack(pack)
            );
            continue;
        }
        match repo.read_pack_header(pack, len) {
            Ok(blobs) => {
                repo.index().add_pack(pack, len, &blobs, false)?;
                packs.push(PackIndex {
                    pack: *pack,
                    pack_len: len,
                    blobs,
                });
            }
            // A damaged leftover is not adopted; `check` reports it.
            Err(e) => errln!("warning: {}: {e}; not reused", names::pack(pack)),
        }
    }
    if !packs.is_empty() {
        write_index(repo, &packs)?;
    }
    Ok(packs.len())
}

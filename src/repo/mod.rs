//! The repository: opening and creating it, keys, blob and tree reads,
//! revisions, and keeping the local index in step with the tiers.
//!
//! `Repository` is shared between worker threads (`Arc<Repository>`); all
//! its methods take `&self`. The store it holds is a `TierSet`, so nothing
//! here knows how many tiers there are.

pub mod cache;
pub mod writer;

use crate::format::crypto::{KdfParams, KeyFile, Keys};
use crate::format::pack::{header_len, open_blob, open_header};
use crate::format::revision::Revision;
use crate::format::tree::{decode_tree, Node, Timestamp};
use crate::format::{indexfile, names, BlobEntry, BlobId, FormatError, FORMAT_VERSION};
use crate::index::{BlobLoc, Index, IndexError};
use crate::tier::{get_parsed, Tier, TierError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    #[error("there is no tiervault repository at {0}: create one with `tiervault -r {0} init`, or check the location")]
    NotARepository(String),
    #[error("{0} holds key files but no config: an `init` there was cut off before it finished. If nothing else is stored there, empty that location and run `tiervault -r {0} init` again")]
    HalfInitialised(String),
    #[error("a tiervault repository already exists at {0}")]
    AlreadyExists(String),
    #[error("wrong password for the repository at {0}: check where the password comes from (the first one set wins): --password-command, TIERVAULT_PASSWORD_FILE, TIERVAULT_PASSWORD, the config file's password_command, its password_file, else the prompt")]
    WrongPassword(String),
    #[error("the repository needs a password: set TIERVAULT_PASSWORD_FILE, TIERVAULT_PASSWORD or --password-command, or run on a terminal to be asked")]
    NoPassword,
    #[error("{0}")]
    Password(String),
    #[error(transparent)]
    Tier(#[from] TierError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{object} is damaged: {err}; run `tiervault check --read-data` to find every damaged object")]
    Corrupt { object: String, err: FormatError },
    #[error("{what} of the repository at {loc} is damaged ({why}), and the repository cannot be opened without it: copy `config` and `keys/` from another tier or from a spare copy (docs/RECOVERY.md, \"A damaged index file, key file or config\")")]
    Unopenable {
        what: &'static str,
        loc: String,
        why: String,
    },
    #[error("blob {0} is referenced but no pack holds it; run `tiervault check`")]
    BlobMissing(BlobId),
    #[error("no revision matches {0:?}; `tiervault revisions` lists them")]
    RevisionNotFound(String),
    #[error("{0:?} matches several revisions; give more characters of the id")]
    Ambiguous(String),
    #[error("{0}")]
    Config(String),
    #[error("storing data failed: {0}")]
    WriteFailed(String),
    #[error(transparent)]
    Writer(#[from] crate::tier::set::WriteError),
}

pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// The `config` object, stored in clear so a tier can be identified without
/// the password.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RepoConfig {
    pub version: u32,
    pub id: String,
    pub encryption: String,
    pub chunker: String,
    pub created: String,
}

pub struct Repository {
    store: Box<dyn Tier>,
    keys: Keys,
    config: RepoConfig,
    index: Index,
    cache_dir: PathBuf,
    /// Index files found damaged on every tier, skipped (and said) once.
    skipped: std::sync::Mutex<std::collections::HashSet<BlobId>>,
}

pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Where per-repository caches live: `TIERVAULT_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/tiervault`, else `~/.cache/tiervault`.
pub fn default_cache_root() -> PathBuf {
    user_dir("TIERVAULT_CACHE_DIR", "XDG_CACHE_HOME", ".cache")
}

/// Where this installation keeps its state (its id, and the revisions it
/// left on each tier): `TIERVAULT_STATE_DIR`, else `$XDG_STATE_HOME/tiervault`,
/// else `~/.local/state/tiervault`. It is state, not cache: deleting the
/// cache dir does not make this machine a stranger to its tiers.
pub fn default_state_root() -> PathBuf {
    user_dir("TIERVAULT_STATE_DIR", "XDG_STATE_HOME", ".local/state")
}

/// `$OURS`, else `$XDG/tiervault`, else `~/<home_default>/tiervault`.
/// An empty variable counts as unset (as the XDG rules say), so that
/// `VAR=` does not put the directory in whatever the working directory is.
fn user_dir(ours: &str, xdg: &str, home_default: &str) -> PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = var(ours) {
        return d.into();
    }
    if let Some(d) = var(xdg) {
        return Path::new(&d).join("tiervault");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(home_default).join("tiervault")
}

/// Every blob of an index entry lies inside its pack.
fn entries_fit(p: &indexfile::PackIndex) -> bool {
    p.blobs
        .iter()
        .all(|b| u64::from(b.offset) + u64::from(b.stored_len) <= p.pack_len)
}

/// Blobs of one pack at most this far apart are read together (the bytes
/// between them are read and dropped).
const RUN_GAP: u64 = 128 << 10;
/// A run read together spans at most this many bytes of a pack.
const RUN_MAX: u64 = 8 << 20;

/// Where a blob's stored bytes end in its pack.
fn run_end(l: &BlobLoc) -> u64 {
    u64::from(l.entry.offset) + u64::from(l.entry.stored_len)
}

/// A blob to read: its place in the caller's list, its id and location.
struct Located {
    at: usize,
    id: BlobId,
    loc: BlobLoc,
}

/// How many blobs at the start of `sorted` (sorted by pack and offset) can
/// be read with one ranged read: same pack, each within `RUN_GAP` of the
/// end of the ones before, all within `RUN_MAX`.
fn neighbours(sorted: &[Located]) -> usize {
    let first = &sorted[0].loc;
    let start = u64::from(first.entry.offset);
    let mut end = run_end(first);
    let mut n = 1;
    for Located { loc: l, .. } in &sorted[1..] {
        let off = u64::from(l.entry.offset);
        if l.pack != first.pack || off > end + RUN_GAP || run_end(l) - start > RUN_MAX {
            break;
        }
        end = end.max(run_end(l));
        n += 1;
    }
    n
}

/// Opens the local index `index_name` of the repository `config` names.
fn open_index(cache_root: &Path, config: &RepoConfig, index_name: &str) -> Result<Index> {
    // The main index serves backups, which look the same blocks up again
    // and again. Another one serves a mount, which looks each blob up once
    // per read and keeps decoded data in its own caches above.
    let block_cache = if index_name == "index" {
        8 << 20
    } else {
        2 << 20
    };
    let path = cache_root.join(&config.id).join(index_name);
    Ok(Index::open(&path, block_cache)?)
}

/// The repository's keys, from the first key file `pw` opens.
fn unlock(
    key_files: &[(String, KeyFile)],
    pw: Option<&[u8]>,
    config: &RepoConfig,
    loc: &str,
) -> Result<Keys> {
    let mut last_err = None;
    for (name, kf) in key_files {
        match kf.unwrap_master(pw) {
            Ok(Some(master)) => {
                // Encryption follows the key, never the unauthenticated
                // config alone: a tampered config cannot turn it off.
                let encrypted = kf.needs_password();
                if encrypted != (config.encryption != "none") {
                    return Err(RepoError::Unopenable {
                        what: "the config",
                        loc: loc.to_string(),
                        why: "config and key file disagree about encryption".into(),
                    });
                }
                return Ok(Keys::from_master(master, encrypted));
            }
            Ok(None) => {}
            Err(e) => {
                last_err = Some(RepoError::Unopenable {
                    what: "the key file",
                    loc: loc.to_string(),
                    why: format!("{name}: {e}"),
                })
            }
        }
    }
    Err(last_err.unwrap_or_else(|| RepoError::WrongPassword(loc.to_string())))
}

/// A copy of `config` that is a repository's: JSON with a known encryption
/// and a 64-hex id. (Its version is checked by the caller, which says
/// when it is too new.)
pub fn parse_config(b: &[u8]) -> std::result::Result<RepoConfig, String> {
    let c: RepoConfig =
        serde_json::from_slice(b).map_err(|e| format!("not a repository's config ({e})"))?;
    if !matches!(c.encryption.as_str(), "none" | "xchacha20poly1305") {
        return Err(format!("unknown encryption {:?}", c.encryption));
    }
    if c.id.len() != 64 || !c.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("the repository id is not 64 hex digits".into());
    }
    Ok(c)
}

/// A copy of the key file `name` (`keys/<hex>`): its bytes hash to its
/// name (FORMAT.md), so a damaged copy shows without the password.
pub fn parse_key_file(name: &str, b: &[u8]) -> std::result::Result<KeyFile, String> {
    if name.strip_prefix("keys/") != Some(BlobId::of_stored(b).to_hex().as_str()) {
        return Err("content does not match its name".into());
    }
    serde_json::from_slice::<KeyFile>(b).map_err(|e| format!("not a key file ({e})"))
}

/// The copies of `config` that the tiers of `store` hold and that differ
/// from `read` (which came from the fastest tier that had one).
fn config_copies_elsewhere(store: &dyn Tier, read: &RepoConfig) -> Vec<RepoConfig> {
    let Some(set) = store.as_set() else {
        return Vec::new();
    };
    let mut out: Vec<RepoConfig> = Vec::new();
    for t in set.online() {
        let Ok(c) = t
            .get(names::CONFIG)
            .map_err(drop)
            .and_then(|b| parse_config(&b).map_err(drop))
        else {
            continue;
        };
        if c != *read && !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Takes a failed write of a copy kept only to spare reads (a decoded tree
/// or revision) as a warning, once per process: the reads go on from the
/// tiers. A full disk under the cache must not stop a listing or a mount.
fn cache_write(r: std::result::Result<(), IndexError>) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = r {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            errln!(
                "warning: {e}; carrying on, reading from the tiers what the cache would have kept"
            );
        }
    }
}

fn format_err(object: String) -> impl FnOnce(FormatError) -> RepoError {
    move |err| RepoError::Corrupt { object, err }
}

/// A write session on the tiers (`Repository::begin_write`). It ends
/// (`TierSet::end_write`) when dropped, on success and on an error alike,
/// so that a command that failed with a clear error (a path that does not
/// exist, say) does not cost the next one a reconcile. The session stays
/// open on record when the process is killed or interrupted, when a write
/// failed for its caller (it may have reached a tier anyway), and when
/// this thread panics.
#[must_use = "the write session ends when this is dropped"]
pub struct WriteSession<'a>(&'a Repository);

impl Drop for WriteSession<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.0.tiers().end_write();
        }
    }
}

impl Repository {
    /// Creates a repository on every tier of `store`. `password` is `None`
    /// only for `--insecure-no-encryption`.
    pub fn init(
        store: Box<dyn Tier>,
        password: Option<&[u8]>,
        kdf: KdfParams,
        cache_root: &Path,
    ) -> Result<Self> {
        if store.stat(names::CONFIG)?.is_some() {
            return Err(RepoError::AlreadyExists(store.name().to_string()));
        }
        if !store.list("keys/")?.is_empty() {
            // An init that died before writing `config`: a second master key
            // beside the first would make the repository ambiguous.
            return Err(RepoError::Config(format!(
                "{} holds key files but no config: an earlier init was interrupted; remove that directory's contents and run init again",
                store.name()
            )));
        }
        // The first `tierstate` names this installation: a state directory
        // that cannot hold its id fails `init` before anything is written.
        installation_id(&default_state_root().join("installation"))
            .map_err(|m| RepoError::Writer(crate::tier::set::WriteError::StateDir(m)))?;
        // And a cache that cannot open fails it before anything is written.
        crate::index::check_room(cache_root)?;
        let keys = Keys::random(password.is_some());
        let created = crate::timefmt::rfc3339(now());
        let kf = KeyFile::wrap(&keys, password, kdf, &hostname(), &created)
            .map_err(format_err("new key".into()))?;
        let kf_bytes = serde_json::to_vec_pretty(&kf).expect("key file serializes");
        store.put(&names::key(&BlobId::of_stored(&kf_bytes)), &kf_bytes)?;
        let config = RepoConfig {
            version: FORMAT_VERSION,
            id: hex::encode(rand::random::<[u8; 32]>()),
            encryption: if password.is_some() {
                "xchacha20poly1305".into()
            } else {
                "none".into()
            },
            chunker: "fastcdc2020-256k-1m-4m".into(),
            created,
        };
        // The config is written last: its presence marks a complete repository.
        store.put(
            names::CONFIG,
            &serde_json::to_vec_pretty(&config).expect("config serializes"),
        )?;
        let index = open_index(cache_root, &config, "index")?;
        let repo = Self::finish_open(store, keys, config, cache_root, index)?;
        // Every tier starts at revision 1, written by this installation.
        drop(repo.begin_write(false)?);
        Ok(repo)
    }

    /// Opens an existing repository. `password` is asked only when a key
    /// file needs one.
    pub fn open(
        store: Box<dyn Tier>,
        password: &dyn Fn() -> Result<Vec<u8>>,
        cache_root: &Path,
    ) -> Result<Self> {
        Self::open_named(store, password, cache_root, "index")
    }

    /// Opens with the local index in `<cache>/<repo id>/<index_name>`. A
    /// mount keeps its own index, so `backup` can run while it is up.
    pub fn open_named(
        store: Box<dyn Tier>,
        password: &dyn Fn() -> Result<Vec<u8>>,
        cache_root: &Path,
        index_name: &str,
    ) -> Result<Self> {
        let loc = store.name().to_string();
        // A `config` that is not ours on every tier means this is not a
        // repository (a directory that happens to hold such a file), not a
        // damaged one; a tier whose copy is not ours is passed over.
        let config: RepoConfig = match get_parsed(store.as_ref(), names::CONFIG, parse_config) {
            Ok(c) => c,
            Err(e) if e.is_not_found() || matches!(e, TierError::Corrupt { .. }) => {
                return Err(RepoError::NotARepository(loc))
            }
            Err(e) => return Err(e.into()),
        };
        // Tiers that hold another repository are left out before anything
        // else is read; the one this machine's cache knows wins.
        let config = match store.as_set() {
            Some(set) => {
                let id = set.expect_repository(&config.id, &|id| cache_root.join(id).exists());
                if id == config.id {
                    config
                } else {
                    get_parsed(store.as_ref(), names::CONFIG, parse_config)?
                }
            }
            None => config,
        };
        if config.version > FORMAT_VERSION {
            return Err(RepoError::Corrupt {
                object: "config".into(),
                err: FormatError::UnsupportedVersion {
                    what: "repository",
                    found: config.version,
                },
            });
        }
        let mut key_files = Vec::new();
        let mut bad_keys = Vec::new();
        for obj in store.list("keys/")? {
            match get_parsed(store.as_ref(), &obj.key, |b| parse_key_file(&obj.key, b)) {
                Ok(kf) => key_files.push((obj.key, kf)),
                Err(TierError::Corrupt { .. }) => bad_keys.push(obj.key),
                Err(e) => return Err(e.into()),
            }
        }
        if key_files.is_empty() {
            return Err(RepoError::Unopenable {
                what: "the key file",
                loc,
                why: "no readable key file in keys/".into(),
            });
        }
        for k in &bad_keys {
            errln!("warning: {k} is not a key file; ignored");
        }
        let pw = if key_files.iter().any(|(_, k)| k.needs_password()) {
            Some(password()?)
        } else {
            None
        };
        // A first open with a wrong password leaves nothing behind.
        let cache_dir = cache_root.join(&config.id);
        let new_cache = !cache_dir.exists();
        // The local index opens while the password is stretched: on a cold
        // start each takes tens of milliseconds, and the first mostly waits
        // for the disk while the second keeps the cores busy.
        let (keys, index) = std::thread::scope(|sc| {
            let index = sc.spawn(|| open_index(cache_root, &config, index_name));
            let keys = unlock(&key_files, pw.as_deref(), &config, &loc);
            (keys, index.join().expect("opening the index panicked"))
        });
        // A `config` altered on the fastest tier (its encryption flipped)
        // disagrees with the key file: another tier's copy may not. (Key
        // files need no such second try: a copy whose bytes do not hash to
        // its name was passed over as it was read.)
        let mut config = config;
        let keys = keys.or_else(|e| match e {
            RepoError::Unopenable { what: "the config", .. } => {
                for other in config_copies_elsewhere(store.as_ref(), &config) {
                    if let Ok(k) = unlock(&key_files, pw.as_deref(), &other, &loc) {
                        errln!("warning: a tier's copy of config disagrees with the key file, passed over for another tier's copy; run `tiervault check` (with the same tiers) to see which");
                        config = other;
                        return Ok(k);
                    }
                }
                Err(e)
            }
            e => Err(e),
        });
        let keys = match keys {
            Ok(k) => k,
            Err(e) => {
                if new_cache {
                    drop(index);
                    let _ = std::fs::remove_dir_all(&cache_dir);
                }
                return Err(e);
            }
        };
        Self::finish_open(store, keys, config, cache_root, index?)
    }

    fn finish_open(
        store: Box<dyn Tier>,
        keys: Keys,
        config: RepoConfig,
        cache_root: &Path,
        index: Index,
    ) -> Result<Self> {
        let cache_dir = cache_root.join(&config.id);
        // The tier rules live in TierSet: a single tier becomes a set of one.
        let store: Box<dyn Tier> = if store.as_set().is_some() {
            store
        } else {
            Box::new(crate::tier::TierSet::new(vec![store]))
        };

        let repo = Self {
            store,
            keys,
            config,
            index,
            cache_dir,
            skipped: Default::default(),
        };
        repo.sync_index()?;
        Ok(repo)
    }

    pub fn store(&self) -> &dyn Tier {
        self.store.as_ref()
    }

    /// The tiers, with the replication rules.
    pub fn tiers(&self) -> &crate::tier::TierSet {
        self.store.as_set().expect("the store is always a tier set")
    }

    /// This machine's memory of the tiers (see `tier::set::LocalState`).
    pub fn local_state(&self) -> LocalTiers {
        let root = default_state_root();
        LocalTiers {
            file: root.join(&self.config.id).join("tiers.json"),
            sessions: root.join(&self.config.id).join("sessions"),
            installation: root.join("installation"),
        }
    }

    /// Starts a write session on the tiers: refuses when another
    /// installation wrote there since this one did (unless `takeover`),
    /// and raises the tiers' revisions first. The session ends when the
    /// returned guard is dropped.
    pub fn begin_write(&self, takeover: bool) -> Result<WriteSession<'_>> {
        self.tiers()
            .begin_write(std::sync::Arc::new(self.local_state()), takeover)?;
        Ok(WriteSession(self))
    }
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
    pub fn index(&self) -> &Index {
        &self.index
    }
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Loads index files not yet seen into the local index. Returns how many
    /// were loaded.
    pub fn sync_index(&self) -> Result<usize> {
        let mut loaded = 0;
        for obj in self.store.list("index/")? {
            let Some(id) = obj.key.strip_prefix("index/").and_then(BlobId::from_hex) else {
                continue;
            };
            let mark = format!("idx:{}", id.to_hex());
            if self.index.meta(&mark)?.is_some()
                || self.skipped.lock().expect("skipped").contains(&id)
            {
                continue;
            }
            let packs = match get_parsed(self.store.as_ref(), &obj.key, |b| {
                match indexfile::open(&self.keys, &id, b) {
                    Ok(p) if p.iter().all(entries_fit) => Ok(p),
                    Ok(_) => Err("an entry lies outside its pack".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }) {
                Ok(p) => p,
                Err(TierError::Corrupt { .. }) => {
                    // Packs carry their own headers: a damaged index file
                    // costs speed, not data. `check` reports it. With a
                    // tier offline, its copy is tried at the next sync.
                    let tiers = self.tiers();
                    if tiers.online().len() < tiers.tiers().count() {
                        errln!(
                            "warning: {} is damaged on the tiers that answered; skipped until another tier is back",
                            obj.key
                        );
                        continue;
                    }
                    self.skipped.lock().expect("skipped").insert(id);
                    errln!(
                        "warning: {} is damaged on every tier that holds it and was skipped; run `tiervault check`",
                        obj.key
                    );
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            for p in &packs {
                self.index.add_pack(&p.pack, p.pack_len, &p.blobs, true)?;
            }
            self.index.set_meta(&mark, b"")?;
            loaded += 1;
        }
        Ok(loaded)
    }

    /// Reads and verifies a pack's own header (two ranged reads).
    pub fn read_pack_header(&self, pack: &BlobId, pack_len: u64) -> Result<Vec<BlobEntry>> {
        let key = names::pack(pack);
        let bad = format_err(key.clone());
        if pack_len < 12 {
            return Err(bad(FormatError::Truncated));
        }
        let last4 = self.store.get_range(&key, pack_len - 4, 4)?;
        let hl = header_len(&last4, pack_len).map_err(format_err(key.clone()))?;
        let sealed = self.store.get_range(&key, pack_len - 4 - hl, hl)?;
        open_header(&self.keys, &sealed, pack_len).map_err(bad)
    }

    /// Reads, decrypts, decompresses and verifies one blob.
    pub fn read_blob(&self, id: &BlobId) -> Result<Vec<u8>> {
        self.read_blob_cached(id, None)
    }

    /// `read_blob` through an on-disk cache of sealed blobs: a verified hit
    /// costs no tier read, and a tier read is kept in the cache.
    pub fn read_blob_cached(
        &self,
        id: &BlobId,
        cache: Option<&cache::DiskCache>,
    ) -> Result<Vec<u8>> {
        let loc = self.locate(id)?;
        self.fetch_blob(id, &loc, cache)
    }

    /// Where a blob is stored. A blob the local index does not know may
    /// come from index files another machine added since it was opened.
    fn locate(&self, id: &BlobId) -> Result<BlobLoc> {
        match self.index.blob(id)? {
            Some(l) => Ok(l),
            None => {
                self.sync_index()?;
                Ok(self.index.blob(id)?.ok_or(RepoError::BlobMissing(*id))?)
            }
        }
    }

    /// Reads one located blob: the disk cache's verified copy, or a ranged
    /// read from the tiers (falling over to the next tier on a copy that
    /// does not verify).
    fn fetch_blob(
        &self,
        id: &BlobId,
        loc: &BlobLoc,
        cache: Option<&cache::DiskCache>,
    ) -> Result<Vec<u8>> {
        match self.cached_blob(id, loc, cache) {
            Some(p) => Ok(p),
            None => self.fetch_from_tiers(id, loc, cache),
        }
    }

    /// A ranged read of one blob from the tiers, falling over to the next
    /// tier on a copy that does not verify; a good copy goes into the disk
    /// cache.
    fn fetch_from_tiers(
        &self,
        id: &BlobId,
        loc: &BlobLoc,
        cache: Option<&cache::DiskCache>,
    ) -> Result<Vec<u8>> {
        let key = names::pack(&loc.pack);
        let mut plain = None;
        let mut last = None;
        let res = self.store.get_range_checked(
            &key,
            loc.entry.offset.into(),
            loc.entry.stored_len.into(),
            &mut |stored| match open_blob(&self.keys, &loc.entry, stored) {
                Ok(p) => {
                    if let Some(c) = cache {
                        c.put(id, stored);
                    }
                    plain = Some(p);
                    Ok(())
                }
                Err(e) => {
                    let msg = e.to_string();
                    last = Some(e);
                    Err(msg)
                }
            },
        );
        match (res, plain, last) {
            (Ok(()), Some(p), _) => Ok(p),
            (_, _, Some(err)) => Err(RepoError::Corrupt {
                object: format!("blob {} in {key}", id.short()),
                err,
            }),
            (Err(e), _, None) => Err(e.into()),
            (Ok(()), None, None) => unreachable!("accept returned Ok without keeping the blob"),
        }
    }

    /// The disk cache's copy of a blob, if it has one that opens; a damaged
    /// entry is dropped.
    fn cached_blob(
        &self,
        id: &BlobId,
        loc: &BlobLoc,
        cache: Option<&cache::DiskCache>,
    ) -> Option<Vec<u8>> {
        let c = cache?;
        let sealed = c.get(id)?;
        match open_blob(&self.keys, &loc.entry, &sealed) {
            Ok(p) => Some(p),
            Err(_) => {
                c.remove(id);
                None
            }
        }
    }

    /// Reads many blobs, and those that lie close together in one pack
    /// with one ranged read: a walker of small files (a restore, a `tar` of
    /// the mount) then pays one round trip per run of neighbouring files
    /// instead of one per file, which is what counts on a remote tier.
    ///
    /// `each` is called exactly once for every distinct id, with the blob's
    /// plaintext or its error: first for blobs the disk cache holds or the
    /// index does not know, then run by run, in the order in which the
    /// runs' first blobs appear in `ids` (so the blob wanted first comes
    /// early). A run is accepted from a tier only if every blob in it
    /// verifies (otherwise the next tier is tried, as for one blob); a run
    /// that no tier gives whole is read again blob by blob, so that a
    /// damaged blob fails alone and is named in its error.
    pub fn read_blobs_cached(
        &self,
        ids: &[BlobId],
        cache: Option<&cache::DiskCache>,
        each: &mut dyn FnMut(&BlobId, Result<Vec<u8>>),
    ) {
        let mut seen = std::collections::HashSet::new();
        let mut located = Vec::new();
        for (at, id) in ids.iter().enumerate() {
            if !seen.insert(*id) {
                continue;
            }
            match self.locate(id) {
                Ok(loc) => match self.cached_blob(id, &loc, cache) {
                    Some(p) => each(id, Ok(p)),
                    None => located.push(Located { at, id: *id, loc }),
                },
                Err(e) => each(id, Err(e)),
            }
        }
        located.sort_by_key(|b| (b.loc.pack.0, b.loc.entry.offset));
        let mut runs = Vec::new();
        let mut rest = &located[..];
        while !rest.is_empty() {
            let (run, more) = rest.split_at(neighbours(rest));
            runs.push(run);
            rest = more;
        }
        runs.sort_by_key(|run| run.iter().map(|b| b.at).min());
        for run in runs {
            // The disk cache was asked above: straight to the tiers.
            if let [b] = run {
                each(&b.id, self.fetch_from_tiers(&b.id, &b.loc, cache));
                continue;
            }
            match self.fetch_run(run, cache) {
                Some(plains) => {
                    for (b, p) in run.iter().zip(plains) {
                        each(&b.id, Ok(p));
                    }
                }
                None => {
                    for b in run {
                        each(&b.id, self.fetch_from_tiers(&b.id, &b.loc, cache));
                    }
                }
            }
        }
    }

    /// One ranged read of a run of blobs in one pack (see `neighbours`);
    /// None if no tier gives a copy in which every blob verifies.
    fn fetch_run(&self, run: &[Located], cache: Option<&cache::DiskCache>) -> Option<Vec<Vec<u8>>> {
        let start = u64::from(run[0].loc.entry.offset);
        let end = run.iter().map(|b| run_end(&b.loc)).max()?;
        // Where each blob's stored bytes lie in the range read.
        let slice = |b: &Located| {
            let at = (u64::from(b.loc.entry.offset) - start) as usize;
            at..at + b.loc.entry.stored_len as usize
        };
        let mut plains = Vec::new();
        let res = self.store.get_range_checked(
            &names::pack(&run[0].loc.pack),
            start,
            end - start,
            &mut |bytes| {
                let mut out = Vec::with_capacity(run.len());
                for b in run {
                    let stored = bytes
                        .get(slice(b))
                        .ok_or_else(|| format!("blob {} lies past the range read", b.id.short()))?;
                    out.push(
                        open_blob(&self.keys, &b.loc.entry, stored)
                            .map_err(|e| format!("blob {}: {e}", b.id.short()))?,
                    );
                }
                if let Some(c) = cache {
                    for b in run {
                        c.put(&b.id, &bytes[slice(b)]);
                    }
                }
                plains = out;
                Ok(())
            },
        );
        res.ok().map(|()| plains)
    }

    /// A directory's nodes, from the local tree cache or the tiers.
    pub fn load_tree(&self, id: &BlobId) -> Result<Vec<Node>> {
        let plain = match self.index.tree(id)? {
            Some(p) => p,
            None => {
                let p = self.read_blob(id)?;
                cache_write(self.index.put_tree(id, &p));
                p
            }
        };
        decode_tree(&plain).map_err(format_err(format!("tree {}", id.short())))
    }

    pub fn save_revision(&self, rev: &Revision) -> Result<BlobId> {
        let (id, stored) = rev.seal(&self.keys);
        self.store.put(&names::revision(&id), &stored)?;
        Ok(id)
    }

    /// Every revision, oldest first. Decoded revisions are cached locally.
    pub fn revisions(&self) -> Result<Vec<(BlobId, Revision)>> {
        let mut out = Vec::new();
        for obj in self.store.list("revisions/")? {
            let Some(id) = obj
                .key
                .strip_prefix("revisions/")
                .and_then(BlobId::from_hex)
            else {
                continue;
            };
            let mark = format!("rev:{}", id.to_hex());
            let rev = match self.index.meta(&mark)? {
                Some(plain) => Revision::decode(&plain).map_err(format_err(obj.key.clone()))?,
                None => {
                    let rev = get_parsed(self.store.as_ref(), &obj.key, |b| {
                        Revision::open(&self.keys, &id, b).map_err(|e| e.to_string())
                    })?;
                    cache_write(self.index.set_meta(&mark, &rev.encode()));
                    rev
                }
            };
            out.push((id, rev));
        }
        out.sort_by_key(|a| (a.1.time, a.0));
        Ok(out)
    }

    /// Resolves `latest`, a time name, or a hex id prefix.
    pub fn resolve(&self, spec: &str) -> Result<(BlobId, Revision)> {
        let revs = self.revisions()?;
        if spec == "latest" {
            return revs
                .into_iter()
                .last()
                .ok_or_else(|| RepoError::RevisionNotFound(spec.into()));
        }
        let names = crate::timefmt::revision_names(&revs);
        if let Some(i) = names.iter().position(|n| n == spec) {
            return Ok(revs[i].clone());
        }
        // Revisions saved in the same second are named `<time>-<id>`.
        let same: Vec<&String> = names
            .iter()
            .filter(|n| n.strip_prefix(spec).is_some_and(|r| r.starts_with('-')))
            .collect();
        if same.len() > 1 {
            return Err(RepoError::Config(format!(
                "several revisions were saved at {spec}: name one of {}",
                same.iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let spec_l = spec.to_ascii_lowercase();
        let mut hits = revs
            .into_iter()
            .filter(|(id, _)| spec_l.len() >= 4 && id.to_hex().starts_with(&spec_l));
        match (hits.next(), hits.next()) {
            (Some(r), None) => Ok(r),
            (Some(_), Some(_)) => Err(RepoError::Ambiguous(spec.into())),
            _ => Err(RepoError::RevisionNotFound(spec.into())),
        }
    }

    /// Finds the node at `path` (components separated by `/`) below `tree`.
    /// The empty path is the root itself, returned as `None`.
    pub fn find_node(&self, tree: &BlobId, path: &[u8]) -> Result<Option<Node>> {
        let mut cur_tree = *tree;
        let mut found: Option<Node> = None;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let dir = match &found {
                None => cur_tree,
                Some(n) => n.subtree().ok_or_else(|| {
                    RepoError::Config(format!(
                        "{} is not a directory",
                        String::from_utf8_lossy(path)
                    ))
                })?,
            };
            cur_tree = dir;
            let nodes = self.load_tree(&cur_tree)?;
            let n = nodes.into_iter().find(|n| n.name == comp).ok_or_else(|| {
                RepoError::Config(format!(
                    "{} does not exist in this revision",
                    String::from_utf8_lossy(path)
                ))
            })?;
            found = Some(n);
        }
        Ok(found)
    }
}

/// The local half of the tier rules: this installation's id (made on first
/// use) and the revision it last left on each tier, under the state dir
/// (`default_state_root`).
pub struct LocalTiers {
    file: PathBuf,
    /// One file per open write session, `<pid>-<random>`, locked (`flock`)
    /// by its process while the session is open: a file nobody holds is a
    /// session its process left open.
    sessions: PathBuf,
    installation: PathBuf,
}

/// The session files this process holds open and locked, by sessions
/// directory (one per repository): the file, its lock, and how many
/// sessions of this process share it.
type Held = std::collections::HashMap<PathBuf, (PathBuf, std::fs::File, usize)>;
static SESSIONS: std::sync::LazyLock<std::sync::Mutex<Held>> =
    std::sync::LazyLock::new(Default::default);

impl LocalTiers {
    fn load(&self) -> std::collections::BTreeMap<String, u64> {
        std::fs::read(&self.file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

/// This installation's id in `path`, made and recorded on first use (see
/// `LocalState::installation`): an error says why it cannot be read or
/// recorded, and what to do.
fn installation_id(path: &Path) -> std::result::Result<String, String> {
    let unwritable = |e: std::io::Error| {
        format!(
            "cannot record this installation's id in {}: {e}; a command that writes needs a \
             writable state directory: set TIERVAULT_STATE_DIR to one, the same for every \
             backup (see \"The state directory\" in the user guide)",
            path.display()
        )
    };
    match std::fs::read(path) {
        Ok(b) => {
            let id = String::from_utf8_lossy(&b).trim().to_string();
            let sound = (1..=64).contains(&id.len())
                && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
            if sound {
                return Ok(id);
            }
            return Err(format!(
                "this installation's id in {} is damaged ({} bytes that are not an id): put \
                 the file back from a copy, or, if it is lost, delete it and run `tiervault \
                 takeover` to make this machine the writer again",
                path.display(),
                b.len()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(unwritable(e)),
    }
    let id = hex::encode(rand::random::<[u8; 16]>());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(unwritable)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let made = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(id.as_bytes())?;
            f.sync_all()
        })
        // A link never replaces: of two processes making an id at
        // once, the first one's stays, and both use it.
        .and_then(|()| match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            // A file system without hard links: renamed, the last wins.
            Err(_) => std::fs::rename(&tmp, path),
            Ok(()) => Ok(()),
        });
    let _ = std::fs::remove_file(&tmp);
    made.map_err(unwritable)?;
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(unwritable)
}

impl crate::tier::set::LocalState for LocalTiers {
    fn installation(&self) -> std::result::Result<String, String> {
        installation_id(&self.installation)
    }
    fn host(&self) -> String {
        hostname()
    }
    fn open_session(&self) {
        use std::os::fd::AsRawFd;
        let mut held = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = held.get_mut(&self.sessions) {
            s.2 += 1;
            return;
        }
        let name = format!(
            "{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        );
        // Locked under a dot name, then renamed into place: a sweep never
        // sees a session file that is not locked yet.
        let tmp = self.sessions.join(format!(".{name}"));
        let path = self.sessions.join(&name);
        let made = std::fs::create_dir_all(&self.sessions)
            .and_then(|()| std::fs::File::create(&tmp))
            .and_then(|f| {
                // SAFETY: flock on an open descriptor; the lock goes with `f`.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Durable before any tier is written: a power cut must not
                // lose it.
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                for d in [Some(&*self.sessions), self.sessions.parent()]
                    .into_iter()
                    .flatten()
                {
                    std::fs::File::open(d)?.sync_all()?;
                }
                Ok(f)
            });
        match made {
            Ok(f) => {
                held.insert(self.sessions.clone(), (path, f, 1));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                errln!(
                    "warning: cannot record the write session in {}: {e}; if it is cut off, run \
                     `tiervault sync` before the next backup",
                    self.sessions.display()
                );
            }
        }
    }
    fn close_session(&self) {
        let mut held = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = held.get_mut(&self.sessions) {
            s.2 -= 1;
            if s.2 == 0 {
                if let Some((path, _f, _)) = held.remove(&self.sessions) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
    fn sessions_left_open(&self) -> Vec<String> {
        use std::os::fd::AsRawFd;
        let Ok(dir) = std::fs::read_dir(&self.sessions) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter(|n| {
                // Read and write: NFS emulates flock with fcntl locks, which
                // need a descriptor open for writing.
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(self.sessions.join(n));
                // SAFETY: flock on an open descriptor; the lock goes with it.
                f.is_ok_and(|f| unsafe {
                    libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0
                })
            })
            .collect()
    }
    fn forget_sessions(&self, names: &[String]) {
        for n in names {
            let _ = std::fs::remove_file(self.sessions.join(n));
        }
    }
    fn highest_revision(&self) -> u64 {
        self.load().into_values().max().unwrap_or(0)
    }
    fn set_last_revision(&self, tier: &str, rev: u64) {
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut m = self.load();
        m.insert(tier.to_string(), rev);
        let tmp = self.file.with_extension("tmp");
        let b = serde_json::to_vec_pretty(&m).expect("serialises");
        if let Err(e) = std::fs::write(&tmp, b).and_then(|()| std::fs::rename(&tmp, &self.file)) {
            errln!(
                "warning: cannot record tier revisions in {}: {e}",
                self.file.display()
            );
        }
    }
}

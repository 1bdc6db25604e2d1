//! The set of tiers behind one repository, itself a [`Tier`]. It applies
//! the tier rules (`docs/TIERS.md`):
//!
//! 1. each backend retries a failing operation a bounded number of times;
//!    then the tier counts as offline, and is probed again later;
//! 2. a read is served by the fastest online tier: a configured priority
//!    first, then measured latency and throughput, refreshed as reads go.
//!    A failed or corrupt read falls over to the next tier without the
//!    caller seeing it, and the bad copy is recorded for repair;
//! 3. a write goes to every online, synchronised tier and completes once
//!    one has it; while every tier is offline it waits (saying so), up to
//!    an optional limit;
//! 4. each tier stores a revision number (`tierstate`), raised before a
//!    write session touches it ([`TierSet::begin_write`]); a tier below the
//!    maximum is unsynchronised, skipped by writes, and brought up to date
//!    by [`TierSet::sync`]. A tier that misses a write falls behind at once;
//! 5. a tier whose revision was raised by another installation stops
//!    writing with a clear error (reading is always allowed); `takeover`
//!    makes this installation the writer.

use super::{ObjectInfo, Tier, TierError};
use serde::{Deserialize, Serialize};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The object each tier holds its revision in, in clear JSON.
pub const TIERSTATE: &str = "tierstate";
/// How long an offline tier is left alone before it is probed again.
const REPROBE: Duration = Duration::from_secs(30);

/// What `tierstate` holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TierState {
    pub revision: u64,
    /// The installation that last raised the revision.
    pub writer: String,
    /// Its host name, for the message when another installation is found.
    #[serde(default)]
    pub host: String,
}

/// What is known about one tier, as `tiervault tiers` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub name: String,
    pub online: bool,
    pub revision: Option<u64>,
    pub synchronised: bool,
    pub latency_ms: Option<f64>,
    pub throughput_mib_s: Option<f64>,
    pub priority: Option<i32>,
    pub last_error: Option<String>,
    /// It holds another repository, and is left out.
    pub other_repository: bool,
}

struct Member {
    tier: Box<dyn Tier>,
    priority: Option<i32>,
    st: Mutex<MemberState>,
}

#[derive(Default)]
struct MemberState {
    online: bool,
    /// Unknown until the revisions were read; assumed until then.
    synced: bool,
    revision: Option<u64>,
    latency: Option<f64>,
    throughput: Option<f64>,
    last_error: Option<String>,
    offline_since: Option<Instant>,
    /// Its `config` was read and names this repository (or it has none
    /// yet: a new tier). Checked before a tier is first counted online.
    verified: bool,
    /// It holds another repository (a wrong path, a share mounted in the
    /// wrong place): never read, written or synchronised.
    foreign: bool,
}

/// Why a write session cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("another installation (on host {host:?}) has written to tier {tier} since this one last did; stopping so the two do not interleave. Reading (revisions, mount, restore) still works. If this machine replaces the other one, or lost its state directory (TIERVAULT_STATE_DIR), run `tiervault takeover`; otherwise let only one installation write")]
    AnotherInstallation { tier: String, host: String },
    /// This installation's id cannot be read or recorded (see
    /// [`LocalState::installation`]).
    #[error("{0}")]
    StateDir(String),
    #[error(transparent)]
    Tier(#[from] TierError),
}

/// The caller's memory of the tiers: which installation it is and the
/// revision it last left on each tier.
pub trait LocalState: Send + Sync {
    /// This installation's id, made and recorded on first use. An id that
    /// cannot be recorded is an error: a new one made on every run would
    /// make each write a stranger's to the next.
    fn installation(&self) -> Result<String, String>;
    fn host(&self) -> String;
    fn set_last_revision(&self, tier: &str, rev: u64);
    /// The highest revision this installation recorded on any tier.
    fn highest_revision(&self) -> u64;
    /// Marks a write session of this process as open until
    /// `close_session`. A process that stops in the middle of one (Ctrl-C,
    /// a crash, a kill) leaves it open.
    fn open_session(&self);
    fn close_session(&self);
    /// The sessions that stopped processes left open (their names).
    fn sessions_left_open(&self) -> Vec<String>;
    /// Drops sessions left open, once the tiers are reconciled.
    fn forget_sessions(&self, names: &[String]);
}

pub struct TierSet {
    members: Vec<Member>,
    label: String,
    wait_limit: Option<Duration>,
    repairs: Mutex<Vec<(String, String)>>,
    /// A tier missed a write in this session and was already put behind.
    demoted: AtomicBool,
    /// Set when a write starts; an ongoing sync stops at its next check.
    writing: AtomicBool,
    /// A write in this session failed for its caller: it may still have
    /// reached some tier (a reply lost after the server stored it), with
    /// no lag on record, so the session stays open for the next one to
    /// reconcile (see `end_write`).
    uncertain: AtomicBool,
    /// Sessions left open that a reconcile covered for the online tiers
    /// only (see `reconcile`).
    left_open: Mutex<Vec<String>>,
    /// The local state of the current write session.
    local: Mutex<Option<std::sync::Arc<dyn LocalState>>>,
    /// The id of the repository the tiers must hold (`expect_repository`).
    repo_id: std::sync::OnceLock<String>,
}

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| 0.7 * o + 0.3 * new))
}

impl TierSet {
    pub fn new(tiers: Vec<Box<dyn Tier>>) -> Self {
        Self::with_priorities(tiers.into_iter().map(|t| (t, None)).collect())
    }

    /// Tiers with their configured read priorities (lower first).
    pub fn with_priorities(tiers: Vec<(Box<dyn Tier>, Option<i32>)>) -> Self {
        assert!(!tiers.is_empty(), "a TierSet needs at least one tier");
        let label = tiers
            .iter()
            .map(|t| t.0.name())
            .collect::<Vec<_>>()
            .join(", ");
        let members = tiers
            .into_iter()
            .map(|(tier, priority)| Member {
                tier,
                priority,
                st: Mutex::new(MemberState {
                    online: true,
                    synced: true,
                    ..MemberState::default()
                }),
            })
            .collect();
        Self {
            members,
            label,
            wait_limit: None,
            repairs: Mutex::new(Vec::new()),
            demoted: AtomicBool::new(false),
            writing: AtomicBool::new(false),
            uncertain: AtomicBool::new(false),
            left_open: Mutex::new(Vec::new()),
            local: Mutex::new(None),
            repo_id: std::sync::OnceLock::new(),
        }
    }

    /// Decides which repository the tiers must hold, and leaves out (with
    /// a warning) every online tier whose `config` names another one: a
    /// repository with the same password elsewhere on a server, or a share
    /// mounted in the wrong place. Nothing is read from such a tier, and
    /// nothing is written or synchronised to it. A tier offline now is
    /// checked when it comes back. The repository is the first one
    /// (in the tiers' order) that `known` knows, else `fallback`.
    pub fn expect_repository(&self, fallback: &str, known: &dyn Fn(&str) -> bool) -> String {
        let ids: Vec<(usize, Result<Option<String>, ()>)> = (0..self.members.len())
            .filter(|&i| self.state(i).online)
            .map(|i| (i, self.config_id(i)))
            .collect();
        let chosen = ids
            .iter()
            .filter_map(|(_, id)| id.as_ref().ok()?.as_deref())
            .find(|id| known(id))
            .unwrap_or(fallback)
            .to_string();
        let want = self.repo_id.get_or_init(|| chosen.clone()).clone();
        for (i, id) in ids {
            if let Ok(id) = id {
                self.judge(i, id, &want);
            }
        }
        want
    }

    /// The repository id tier `i`'s `config` names: None for a new tier
    /// (no `config`) or one that does not parse, Err if it cannot be read.
    fn config_id(&self, i: usize) -> Result<Option<String>, ()> {
        match self.members[i].tier.get(crate::format::names::CONFIG) {
            Ok(b) => Ok(serde_json::from_slice::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(_) => Err(()),
        }
    }

    /// Records whether tier `i`, whose `config` names `id`, holds the
    /// repository `want`; whether it may be used.
    fn judge(&self, i: usize, id: Option<String>, want: &str) -> bool {
        let mut s = self.state(i);
        s.verified = true;
        if let Some(id) = id.filter(|id| id != want) {
            let short = |x: &str| x.chars().take(8).collect::<String>();
            let msg = format!(
                "tier {} holds another repository (id {}…) than this one (id {}…); it is left out, and nothing is read from or written to it: check its location",
                self.members[i].tier.name(),
                short(&id),
                short(want)
            );
            errln!("warning: {msg}");
            s.foreign = true;
            s.online = false;
            s.synced = false;
            s.last_error = Some(msg);
        }
        !s.foreign
    }

    /// Checks once that tier `i` holds the expected repository; whether it
    /// may be used. A tier that cannot be asked now is asked again later.
    fn verify(&self, i: usize) -> bool {
        let Some(want) = self.repo_id.get() else {
            return true;
        };
        {
            let s = self.state(i);
            if s.foreign || s.verified {
                return !s.foreign;
            }
        }
        match self.config_id(i) {
            Ok(id) => self.judge(i, id, want),
            Err(()) => true,
        }
    }

    /// How long a write waits while every tier is offline (`None`: forever).
    pub fn set_wait_limit(&mut self, limit: Option<Duration>) {
        self.wait_limit = limit;
    }

    pub fn tiers(&self) -> impl Iterator<Item = &dyn Tier> {
        self.members.iter().map(|m| m.tier.as_ref())
    }

    /// The tiers that are online now.
    pub fn online(&self) -> Vec<&dyn Tier> {
        (0..self.members.len())
            .filter(|&i| self.state(i).online)
            .map(|i| self.members[i].tier.as_ref())
            .collect()
    }

    /// Whether every tier is online and synchronised, so that a write
    /// (or a delete) reaches them all.
    pub fn all_in_step(&self) -> bool {
        (0..self.members.len()).all(|i| self.writable(i) || self.state(i).foreign)
    }

    /// Online and synchronised: a tier that writes go to.
    fn writable(&self, i: usize) -> bool {
        let s = self.state(i);
        s.online && s.synced
    }

    fn state(&self, i: usize) -> std::sync::MutexGuard<'_, MemberState> {
        self.members[i].st.lock().expect("tier state")
    }

    /// Marks tier `i` offline after `e` (it is probed again later).
    pub fn mark_offline(&self, i: usize, e: &TierError) {
        if super::stopping() {
            return;
        }
        let mut s = self.state(i);
        if s.foreign {
            return;
        }
        if s.online {
            errln!("warning: {e}; carrying on without it");
        }
        s.online = false;
        s.offline_since = Some(Instant::now());
        s.last_error = Some(e.to_string());
    }

    /// Marks tier `i` online after it answered; false (and left out) if
    /// it holds another repository, whose answer must then be dropped.
    fn mark_online(&self, i: usize) -> bool {
        if !self.verify(i) {
            return false;
        }
        let mut s = self.state(i);
        if !s.online {
            errln!("tier {} is back online", self.members[i].tier.name());
        }
        s.online = true;
        s.offline_since = None;
        true
    }

    /// Read order: online tiers by priority, then by the time a 1 MiB read
    /// is expected to take; then offline tiers due for a new probe.
    fn read_order(&self) -> Vec<usize> {
        let mut online = Vec::new();
        let mut retry = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            let s = m.st.lock().expect("tier state");
            if s.online {
                let lat = s.latency.unwrap_or(0.010);
                let cost = lat + s.throughput.map_or(0.0, |t| 1_048_576.0 / t.max(1.0));
                online.push((m.priority.is_none(), m.priority.unwrap_or(0), cost, i));
            } else if !s.foreign && s.offline_since.is_none_or(|t| t.elapsed() >= REPROBE) {
                retry.push(i);
            }
        }
        online.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)));
        online.into_iter().map(|o| o.3).chain(retry).collect()
    }

    /// Records the time a small request took on tier `i`.
    pub fn note_latency(&self, i: usize, took: Duration) {
        if i < self.members.len() {
            self.measure(i, 0, took);
        }
    }

    /// Records how long a read of `bytes` took on tier `i`.
    fn measure(&self, i: usize, bytes: usize, took: Duration) {
        let mut s = self.state(i);
        let secs = took.as_secs_f64().max(1e-6);
        if bytes >= 256 << 10 {
            s.throughput = ewma(s.throughput, bytes as f64 / secs);
        } else {
            s.latency = ewma(s.latency, secs);
        }
    }

    /// Tries `op` on each tier in read order; returns the first success. When
    /// every tier fails, returns the most telling error: a real failure
    /// rather than "not found" when there is one.
    fn read<T>(
        &self,
        key: &str,
        mut op: impl FnMut(&dyn Tier) -> Result<T, TierError>,
        size: impl Fn(&T) -> usize,
    ) -> Result<T, TierError> {
        let mut first_err: Option<TierError> = None;
        // Damaged copies met on the way, said and put on record for repair
        // once a good copy is read (with none, the error says it).
        let mut damaged: Vec<(String, String)> = Vec::new();
        for i in self.read_order() {
            let t = self.members[i].tier.as_ref();
            let start = Instant::now();
            match op(t) {
                Ok(v) => {
                    if !self.mark_online(i) {
                        continue;
                    }
                    self.measure(i, size(&v), start.elapsed());
                    let mut repairs = self.repairs.lock().expect("repairs");
                    for (tier, why) in damaged {
                        errln!("warning: {why}; read it from tier {} instead", t.name());
                        let d = (tier, key.to_string());
                        if !repairs.contains(&d) {
                            repairs.push(d);
                        }
                    }
                    return Ok(v);
                }
                Err(e) => {
                    match &e {
                        TierError::Offline { .. } => self.mark_offline(i, &e),
                        TierError::Corrupt { .. } => {
                            self.state(i).last_error = Some(e.to_string());
                            damaged.push((t.name().to_string(), e.to_string()));
                        }
                        TierError::NotFound { .. } | TierError::Interrupted => {}
                        _ => {
                            errln!("warning: {e}; trying the next tier");
                            self.state(i).last_error = Some(e.to_string());
                        }
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
        Err(first_err.unwrap_or_else(|| TierError::Offline {
            tier: self.label.clone(),
            reason: "every tier is offline".into(),
        }))
    }

    /// Damaged copies met by reads that then found a good copy on another
    /// tier, each once: `(tier, object)`.
    pub fn repairs(&self) -> Vec<(String, String)> {
        self.repairs.lock().expect("repairs").clone()
    }

    /// The tiers that take writes now: the online, synchronised ones.
    /// When every tier has missed some write (each went away at a
    /// different moment), none is complete: all that are online take the
    /// writes, and `sync` later fills each from the others.
    fn takers(&self) -> Vec<usize> {
        let none_synced = (0..self.members.len()).all(|i| !self.state(i).synced);
        (0..self.members.len())
            .filter(|&i| {
                let s = self.state(i);
                s.online && (s.synced || none_synced)
            })
            .collect()
    }

    /// Online, synchronised tiers; while there are none, waits for one to
    /// come back, probing every 2 s, up to the wait limit.
    fn write_targets(&self) -> Result<Vec<usize>, TierError> {
        let started = Instant::now();
        let mut said = false;
        loop {
            let targets = self.takers();
            if !targets.is_empty() {
                if said {
                    errln!("a tier is back; carrying on");
                }
                return Ok(targets);
            }
            if let Some(limit) = self.wait_limit {
                if started.elapsed() >= limit {
                    return Err(TierError::Offline {
                        tier: self.label.clone(),
                        reason: format!(
                            "every synchronised tier stayed offline for {} s (the wait limit)",
                            limit.as_secs()
                        ),
                    });
                }
            }
            if !said {
                errln!(
                    "every synchronised tier is offline; waiting for one to come back{}",
                    self.wait_limit.map_or(String::new(), |l| format!(
                        " (for at most {} s)",
                        l.as_secs()
                    ))
                );
                said = true;
            }
            std::thread::sleep(Duration::from_secs(2));
            if super::stopping() {
                return Err(TierError::Interrupted);
            }
            let none_synced = (0..self.members.len()).all(|i| !self.state(i).synced);
            for i in 0..self.members.len() {
                if !self.state(i).synced && !none_synced {
                    continue;
                }
                if self.members[i]
                    .tier
                    .stat(crate::format::names::CONFIG)
                    .is_ok()
                {
                    self.mark_online(i);
                }
            }
        }
    }

    fn write(
        &self,
        key: &str,
        op: impl Fn(&dyn Tier) -> Result<(), TierError> + Sync,
    ) -> Result<(), TierError> {
        let r = self.write_once(key, op);
        if r.is_err() {
            self.uncertain.store(true, Ordering::SeqCst);
        }
        r
    }

    fn write_once(
        &self,
        key: &str,
        op: impl Fn(&dyn Tier) -> Result<(), TierError> + Sync,
    ) -> Result<(), TierError> {
        self.writing.store(true, Ordering::SeqCst);
        loop {
            if super::stopping() {
                return Err(TierError::Interrupted);
            }
            let targets = self.write_targets()?;
            // The tiers are written at once, so a write costs the slowest
            // tier's time rather than the sum of them.
            let results: Vec<(usize, Result<(), TierError>)> = match targets.as_slice() {
                [only] => vec![(*only, op(self.members[*only].tier.as_ref()))],
                [first, rest @ ..] => std::thread::scope(|sc| {
                    let op = &op;
                    let others: Vec<_> = rest
                        .iter()
                        .map(|&i| (i, sc.spawn(move || op(self.members[i].tier.as_ref()))))
                        .collect();
                    let mut v = vec![(*first, op(self.members[*first].tier.as_ref()))];
                    // A writer that panicked failed its tier, which then
                    // missed the write like any other failure.
                    v.extend(others.into_iter().map(|(i, h)| {
                        (
                            i,
                            h.join().unwrap_or_else(|_| {
                                Err(TierError::Io {
                                    tier: self.members[i].tier.name().to_string(),
                                    key: key.to_string(),
                                    source: io::Error::other("the write panicked"),
                                })
                            }),
                        )
                    }));
                    v
                }),
                [] => Vec::new(),
            };
            // Closing the connections may have failed some tiers: the
            // write is not complete anywhere, and nothing goes on record.
            if super::stopping() {
                return Err(TierError::Interrupted);
            }
            let mut ok = false;
            let mut errors = Vec::new();
            for (i, r) in results {
                match r {
                    Ok(()) => ok = true,
                    Err(e) => errors.push((i, e)),
                }
            }
            if ok {
                for (i, e) in &errors {
                    self.fell_behind(*i, e);
                }
                // A synchronised tier that is offline missed this write too.
                for i in 0..self.members.len() {
                    let (online, synced) = {
                        let s = self.state(i);
                        (s.online, s.synced)
                    };
                    if !online && synced {
                        let e = TierError::Offline {
                            tier: self.members[i].tier.name().to_string(),
                            reason: "offline during a write".into(),
                        };
                        self.fell_behind(i, &e);
                    }
                }
                return Ok(());
            }
            // Every target failed. Offline ones are waited for; other
            // failures (a full disk, a refusal) are the caller's to see.
            let all_offline = errors.iter().all(|(_, e)| e.is_offline());
            for (i, e) in &errors {
                if e.is_offline() {
                    self.mark_offline(*i, e);
                }
            }
            if all_offline {
                continue;
            }
            let mut errors: Vec<TierError> = errors.into_iter().map(|(_, e)| e).collect();
            if errors.len() == 1 {
                return Err(errors.pop().expect("one error"));
            }
            return Err(TierError::AllFailed {
                key: key.to_string(),
                errors: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
    }

    /// Tier `i` missed a write that others stored: it is unsynchronised
    /// from now on. The first time in a session, the tiers that have
    /// everything get a higher revision, so the lag is on record even
    /// after this process ends.
    fn fell_behind(&self, i: usize, e: &TierError) {
        if super::stopping() {
            return;
        }
        if e.is_offline() {
            self.mark_offline(i, e);
        } else {
            errln!("warning: {e}; the other tiers have it");
            self.state(i).last_error = Some(e.to_string());
        }
        self.state(i).synced = false;
        self.record_lag();
    }

    /// Raises the revision of the tiers that have everything, once per
    /// session, so tiers that missed writes are behind on record. Until one
    /// tier took the new revision, it is tried again (see `end_write`).
    fn record_lag(&self) {
        if self.demoted.load(Ordering::SeqCst) {
            return;
        }
        let mut raised = false;
        for j in 0..self.members.len() {
            let (online, synced, rev) = {
                let s = self.state(j);
                (s.online, s.synced, s.revision)
            };
            if !online || !synced {
                continue;
            }
            let Some(rev) = rev else { continue };
            if let Ok(Some(mut st)) = self.read_state(j) {
                st.revision = rev + 1;
                if self.write_state(j, &st).is_ok() {
                    raised = true;
                    self.state(j).revision = Some(rev + 1);
                    if let Some(l) = self.local.lock().expect("local").as_ref() {
                        l.set_last_revision(self.members[j].tier.name(), rev + 1);
                    }
                }
            }
        }
        if raised {
            self.demoted.store(true, Ordering::SeqCst);
        }
    }

    /// Ends a write session: if a tier missed writes and that is not on
    /// record yet (every tier was away when it happened), records it now.
    /// Also closes the session (`LocalState::close_session`), unless a
    /// lag could not be put on record, or a write failed for its caller
    /// (it may have reached a tier anyway): the open session then has the
    /// next one reconcile the tiers.
    pub fn end_write(&self) {
        if super::stopping() || self.uncertain.swap(false, Ordering::SeqCst) {
            return;
        }
        let behind = (0..self.members.len()).any(|i| {
            let s = self.state(i);
            !s.synced && !s.foreign
        });
        if behind {
            self.record_lag();
        }
        if !behind || self.demoted.load(Ordering::SeqCst) {
            if let Some(l) = self.local.lock().expect("local").as_ref() {
                l.close_session();
                // The tiers a reconcile could not reach are behind on
                // record now (they missed this session's writes).
                if self.demoted.load(Ordering::SeqCst) {
                    l.forget_sessions(&std::mem::take(
                        &mut *self.left_open.lock().expect("left open"),
                    ));
                }
            }
        }
    }

    fn read_state(&self, i: usize) -> Result<Option<TierState>, TierError> {
        let t = self.members[i].tier.as_ref();
        match t.get(TIERSTATE) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                TierError::Corrupt {
                    tier: t.name().to_string(),
                    key: TIERSTATE.into(),
                    msg: e.to_string(),
                }
            })?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_state(&self, i: usize, st: &TierState) -> Result<(), TierError> {
        let b = serde_json::to_vec(st).expect("tier state serialises");
        self.members[i].tier.put(TIERSTATE, &b)
    }

    /// Reads every tier's revision: marks tiers offline or behind, and
    /// returns the highest revision with the tiers that hold it.
    pub fn refresh(&self) -> Vec<Option<TierState>> {
        // Online tiers whose revision could not be read (a damaged
        // `tierstate`): unknown, so not synchronised; `sync` rewrites it.
        let mut unknown = vec![false; self.members.len()];
        let states: Vec<Option<TierState>> = (0..self.members.len())
            .map(|i| {
                // A tier found offline moments ago is not asked again
                // before its probe is due: each ask costs every retry.
                let resting = {
                    let s = self.state(i);
                    s.foreign || !s.online && s.offline_since.is_some_and(|t| t.elapsed() < REPROBE)
                };
                if resting {
                    return None;
                }
                match self.read_state(i) {
                    Ok(st) => self.mark_online(i).then_some(st).flatten(),
                    Err(e) => {
                        if e.is_offline() {
                            self.mark_offline(i, &e);
                        } else {
                            self.state(i).last_error = Some(e.to_string());
                            unknown[i] = true;
                        }
                        None
                    }
                }
            })
            .collect();
        let max = self.max_revision(&states);
        for (i, st) in states.iter().enumerate() {
            let mut s = self.state(i);
            if s.online {
                let rev = st.as_ref().map_or(0, |t| t.revision);
                s.revision = (!unknown[i]).then_some(rev);
                s.synced = !unknown[i] && rev == max;
            }
        }
        states
    }

    fn max_revision(&self, states: &[Option<TierState>]) -> u64 {
        states
            .iter()
            .enumerate()
            .filter(|(i, _)| self.state(*i).online)
            .map(|(_, s)| s.as_ref().map_or(0, |t| t.revision))
            .max()
            .unwrap_or(0)
    }

    /// Starts a write session: checks that no other installation wrote to
    /// the tiers since this one did (unless `takeover`), then raises the
    /// revision on every online, synchronised tier before anything else is
    /// written there.
    pub fn begin_write(
        &self,
        local: std::sync::Arc<dyn LocalState>,
        takeover: bool,
    ) -> Result<(), WriteError> {
        let me = local.installation().map_err(WriteError::StateDir)?;
        self.writing.store(true, Ordering::SeqCst);
        self.uncertain.store(false, Ordering::SeqCst);
        *self.local.lock().expect("local") = Some(local.clone());
        let mut states = self.refresh();
        if !(0..self.members.len()).any(|i| self.state(i).online) {
            self.write_targets()?;
            states = self.refresh();
        }
        // Only tiers at the highest revision count: a lagging tier (one
        // that was offline at a takeover, say) is overwritten by sync.
        let check = |states: &[Option<TierState>]| -> Result<(), WriteError> {
            let top = self.max_revision(states);
            for (i, st) in states.iter().enumerate() {
                let Some(st) = st else { continue };
                if st.revision < top {
                    continue;
                }
                let name = self.members[i].tier.name();
                // The writer's id decides: a revision raised by this
                // installation's own sync (from another process, even with
                // another state dir) is not a stranger's write.
                if !takeover && st.writer != me {
                    return Err(WriteError::AnotherInstallation {
                        tier: name.to_string(),
                        host: st.host.clone(),
                    });
                }
            }
            Ok(())
        };
        check(&states)?;
        // A reconcile takes a while: what it found, and what another
        // installation may have written meanwhile, is read again.
        if self.reconcile(local.as_ref()) {
            states = self.refresh();
            check(&states)?;
        }
        if super::stopping() {
            return Err(TierError::Interrupted.into());
        }
        local.open_session();
        // A revision this installation wrote that no online tier holds:
        // the tiers holding it are offline. The new revision is numbered
        // above it, so that they show as behind when they are back and
        // `sync` gives each tier the union. (Written under the same
        // number, two tiers would each look complete.)
        let online_top = self.max_revision(&states);
        let known = local.highest_revision();
        if known > online_top {
            errln!(
                "warning: revision {known} of the tiers, written by this installation, is on no online tier (the tiers holding it are offline, or were replaced); this write is numbered {} so that they show as behind, and `tiervault sync` joins the copies once they are all back",
                known + 1
            );
        }
        let next = online_top.max(known) + 1;
        let new = TierState {
            revision: next,
            writer: me,
            host: local.host(),
        };
        // Said on every write, so a scheduled backup's log shows a copy
        // going stale, not only the backup at which it fell behind.
        for (i, m) in self.members.iter().enumerate() {
            let (online, synced, revision, error) = {
                let s = self.state(i);
                (s.online, s.synced, s.revision, s.last_error.clone())
            };
            if online && !synced {
                let at = match (revision, error) {
                    (Some(r), _) => format!("at revision {r} of {}", next - 1),
                    (None, e) => format!(
                        "its revision cannot be read: {}",
                        e.as_deref().unwrap_or("unknown error")
                    ),
                };
                errln!(
                    "warning: tier {} is behind ({at}) and is not written; run `tiervault sync` to bring it up to date",
                    m.tier.name(),
                );
            }
        }
        loop {
            let mut failed = Vec::new();
            let mut took = false;
            for i in self.takers() {
                match self.write_state(i, &new) {
                    Ok(()) => {
                        took = true;
                        {
                            let mut s = self.state(i);
                            s.revision = Some(next);
                            s.synced = true;
                        }
                        local.set_last_revision(self.members[i].tier.name(), next);
                    }
                    Err(e) => failed.push((i, e)),
                }
            }
            if took || failed.is_empty() {
                for (i, e) in failed {
                    self.fell_behind(i, &e);
                }
                return Ok(());
            }
            if failed.iter().all(|(_, e)| e.is_offline()) && !super::stopping() {
                // Every tier went away meanwhile: wait for one, as any
                // write does, then record the revision there.
                for (i, e) in &failed {
                    self.mark_offline(*i, e);
                }
                if let Err(e) = self.write_targets() {
                    local.close_session();
                    return Err(e.into());
                }
                continue;
            }
            // No tier took the revision, so this session wrote nothing: it
            // ends here, and no tier is put behind for it.
            local.close_session();
            return Err(TierError::AllFailed {
                key: "tierstate (the tiers' revision, which a write records before its data)"
                    .into(),
                errors: failed
                    .iter()
                    .map(|(_, e)| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            }
            .into());
        }
    }

    /// Makes every online, synchronised tier hold `key`, copying it from a
    /// tier that has it to those that lack it: for a leftover of a session
    /// cut off (a pack a later backup adopts), which may be on some tiers
    /// only. Whether every one holds it now.
    pub fn spread(&self, key: &str) -> bool {
        let mut from = None;
        let mut lacking = Vec::new();
        for i in 0..self.members.len() {
            if !self.writable(i) {
                continue;
            }
            match self.members[i].tier.stat(key) {
                Ok(Some(_)) => from = from.or(Some(i)),
                Ok(None) => lacking.push(i),
                Err(_) => return false,
            }
        }
        let Some(from) = from else {
            return lacking.is_empty();
        };
        if lacking.is_empty() {
            return true;
        }
        let Ok(bytes) = self.members[from].tier.get(key) else {
            return false;
        };
        lacking
            .into_iter()
            .all(|i| self.members[i].tier.put(key, &bytes).is_ok())
    }

    /// After a write session that stopped in the middle (its process was
    /// interrupted, crashed or killed), the tiers may differ although their
    /// revisions agree: an object the tiers were written at once reached
    /// some of them only, and nothing recorded it. A later backup would
    /// then rely on it (a leftover pack is adopted and deduplicated
    /// against). So before the next session writes, each online tier gets
    /// what another holds and it lacks (`sync`). Until a sync completes,
    /// the sessions stay on record and it is tried again.
    ///
    /// A tier offline now is left out; the sessions are then forgotten
    /// once this session put that tier behind on record (`end_write`),
    /// after which `sync` gives it everything. Returns whether a sync ran.
    fn reconcile(&self, local: &dyn LocalState) -> bool {
        let left = local.sessions_left_open();
        if left.is_empty() {
            return false;
        }
        if self.members.len() == 1 {
            local.forget_sessions(&left);
            return false;
        }
        errln!(
            "the last write to these tiers stopped before it finished (Ctrl-C, a crash or a \
             kill); copying to each tier what another one holds and it lacks"
        );
        let done = self.sync(local, &|| false, &mut |_, _| {});
        self.writing.store(true, Ordering::SeqCst);
        let all_online = (0..self.members.len()).all(|i| self.state(i).online);
        match done {
            Ok((true, n)) if all_online => {
                errln!("the tiers hold the same objects again ({n} copied)")
            }
            Ok((true, n)) => {
                errln!(
                    "the online tiers hold the same objects again ({n} copied); a tier that is \
                     offline gets them from `tiervault sync` once it is back"
                );
                *self.left_open.lock().expect("left open") = left;
            }
            Ok((false, _)) => {
                errln!("warning: the tiers are not reconciled yet; `tiervault sync` finishes it")
            }
            Err(e) => errln!(
                "warning: cannot reconcile the tiers now: {e}; `tiervault sync` does it once they \
                 can be reached"
            ),
        }
        true
    }

    /// Brings every online tier up to date: each gets the objects that any
    /// other online tier holds and it lacks (objects never change once
    /// written, so the union is always right, whichever tiers missed which
    /// writes), data first and revisions last; then the tiers that were
    /// behind get the highest revision. Stops early (returning `Ok(false)`)
    /// when `abort` says so or a write starts in this process; run it again
    /// to resume. Returns the number of objects copied.
    pub fn sync(
        &self,
        local: &dyn LocalState,
        abort: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(&str, &str),
    ) -> Result<(bool, u64), TierError> {
        self.writing.store(false, Ordering::SeqCst);
        // Sessions cut off before now are covered by this sync, if it
        // completes (see `reconcile`).
        let left = local.sessions_left_open();
        let states = self.refresh();
        let online: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.state(i).online)
            .collect();
        let top = (0..self.members.len())
            .filter(|&i| self.state(i).online)
            .max_by_key(|&i| states[i].as_ref().map_or(0, |t| t.revision))
            .and_then(|i| states[i].clone());
        let Some(top) = top else {
            return Err(TierError::Offline {
                tier: self.label.clone(),
                reason: "no tier is online to copy from".into(),
            });
        };
        // What each online tier holds.
        let mut held: Vec<std::collections::HashSet<String>> = Vec::new();
        for &i in &online {
            let t = self.members[i].tier.as_ref();
            progress(t.name(), "listing");
            held.push(t.list("")?.into_iter().map(|o| o.key).collect());
        }
        let mut copied = 0;
        for (n, &dst) in online.iter().enumerate() {
            let d = self.members[dst].tier.as_ref();
            // Each object it lacks, with a tier that holds it.
            let mut lacking: std::collections::HashMap<&String, usize> =
                std::collections::HashMap::new();
            for (m, h) in held.iter().enumerate() {
                for key in h {
                    // Only what it lacks by name: a copy of another size
                    // is damaged on one side or the other, and copying by
                    // size alone could spread the bad one; `check
                    // --read-data --repair` settles it by content.
                    if m != n && key != TIERSTATE && !held[n].contains(key) {
                        lacking.entry(key).or_insert(online[m]);
                    }
                }
            }
            if lacking.is_empty() {
                continue;
            }
            let mut want: Vec<(String, usize)> =
                lacking.into_iter().map(|(k, t)| (k.clone(), t)).collect();
            want.sort_by_key(|(k, _)| {
                (
                    !k.starts_with("data/"),
                    k.starts_with("revisions/"),
                    k.clone(),
                )
            });
            progress(d.name(), &format!("copying {} objects", want.len()));
            for (key, from) in want {
                if abort() || self.writing.load(Ordering::SeqCst) {
                    return Ok((false, copied));
                }
                let b = self.members[from].tier.get(&key)?;
                d.put(&key, &b)?;
                copied += 1;
            }
        }
        // Complete now: the tiers that were behind take the highest
        // revision, unless a write raised it meanwhile (the next sync
        // finishes then).
        for &i in &online {
            if states[i].as_ref() == Some(&top) {
                continue;
            }
            let src = online
                .iter()
                .copied()
                .find(|&j| states[j].as_ref() == Some(&top))
                .expect("the top state comes from an online tier");
            if self.read_state(src)? != Some(top.clone()) {
                return Ok((false, copied));
            }
            let t = self.members[i].tier.as_ref();
            self.write_state(i, &top)?;
            local.set_last_revision(t.name(), top.revision);
            progress(t.name(), "synchronised");
        }
        for &i in &online {
            let mut st = self.state(i);
            st.synced = true;
            st.revision = Some(top.revision);
        }
        // A tier that is offline now may lack what the cut-off session
        // wrote to the others: only a sync that reached every tier
        // reconciles them all.
        if online.len() == self.members.len() {
            local.forget_sessions(&left);
        }
        Ok((true, copied))
    }

    /// Each tier's status. `probe` measures latency now (a few small
    /// requests) and reads the revisions.
    pub fn status(&self, probe: bool) -> Vec<Status> {
        if probe {
            self.refresh();
            for (i, m) in self.members.iter().enumerate() {
                if !self.state(i).online {
                    continue;
                }
                for _ in 0..3 {
                    let t = Instant::now();
                    if m.tier.stat(crate::format::names::CONFIG).is_ok() {
                        self.measure(i, 0, t.elapsed());
                    }
                }
            }
        }
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = self.state(i);
                Status {
                    name: m.tier.name().to_string(),
                    online: s.online,
                    revision: s.revision,
                    synchronised: s.online && s.synced,
                    latency_ms: s.latency.map(|l| l * 1000.0),
                    throughput_mib_s: s.throughput.map(|t| t / 1_048_576.0),
                    priority: m.priority,
                    last_error: s.last_error.clone(),
                    other_repository: s.foreign,
                }
            })
            .collect()
    }

    /// Measures throughput on each online tier by reading the first `bytes`
    /// of the object `key` (a pack the local index knows: listing a tier to
    /// find one would cost as much as the repository is large). A tier that
    /// lacks it is not measured.
    pub fn measure_throughput(&self, key: &str, bytes: u64) {
        for (i, m) in self.members.iter().enumerate() {
            if !self.state(i).online {
                continue;
            }
            let t = Instant::now();
            if let Ok(b) = m.tier.get_range(key, 0, bytes) {
                self.measure(i, b.len(), t.elapsed());
            }
        }
    }

    /// What tier `i` lacks compared with the fastest synchronised tier:
    /// `(objects, bytes)`.
    pub fn lacks(&self, name: &str) -> Option<(u64, u64)> {
        let dst = self.members.iter().position(|m| m.tier.name() == name)?;
        let src = self
            .read_order()
            .into_iter()
            .find(|&i| i != dst && self.state(i).online && self.state(i).synced)?;
        let have: std::collections::HashSet<String> = self.members[dst]
            .tier
            .list("")
            .ok()?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let mut n = 0;
        let mut bytes = 0;
        for o in self.members[src].tier.list("").ok()? {
            if o.key != TIERSTATE && !have.contains(&o.key) {
                n += 1;
                bytes += o.size;
            }
        }
        Some((n, bytes))
    }
}

impl Tier for TierSet {
    fn name(&self) -> &str {
        &self.label
    }
    fn is_remote(&self) -> bool {
        self.members.iter().any(|m| m.tier.is_remote())
    }
    fn as_set(&self) -> Option<&TierSet> {
        Some(self)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, TierError> {
        self.read(key, |t| t.get(key), Vec::len)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, TierError> {
        self.read(key, |t| t.get_range(key, offset, len), Vec::len)
    }
    fn put(&self, key: &str, data: &[u8]) -> Result<(), TierError> {
        self.write(key, |t| t.put(key, data))
    }
    fn put_shared(&self, key: &str, data: &bytes::Bytes) -> Result<(), TierError> {
        self.write(key, |t| t.put_shared(key, data))
    }
    /// The union of every online tier's listing, so an object that only
    /// some tiers hold (after a failed write) is still found.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError> {
        let mut seen = std::collections::HashMap::new();
        let mut ok = false;
        let mut first_err = None;
        for i in self.read_order() {
            match self.members[i].tier.list(prefix) {
                Ok(objs) => {
                    if !self.mark_online(i) {
                        continue;
                    }
                    ok = true;
                    for o in objs {
                        seen.entry(o.key.clone()).or_insert(o);
                    }
                }
                Err(e) => {
                    if e.is_offline() {
                        self.mark_offline(i, &e);
                    } else if !matches!(e, TierError::Interrupted) {
                        errln!("warning: {e}; listing the other tiers");
                    }
                    first_err.get_or_insert(e);
                }
            }
        }
        // No tier answered (every one offline and resting): that is not
        // an empty listing.
        match (ok, first_err) {
            (true, _) => Ok(seen.into_values().collect()),
            (false, e) => Err(e.unwrap_or_else(|| TierError::Offline {
                tier: self.label.clone(),
                reason: "every tier is offline".into(),
            })),
        }
    }
    fn stat(&self, key: &str) -> Result<Option<u64>, TierError> {
        let found = self.read(
            key,
            |t| match t.stat(key)? {
                Some(n) => Ok(n),
                None => Err(TierError::NotFound {
                    tier: t.name().to_string(),
                    key: key.to_string(),
                }),
            },
            |_| 0,
        );
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
        self.read(
            key,
            |t| t.get_range_checked(key, offset, len, accept),
            |_| len as usize,
        )
    }
    fn get_checked(
        &self,
        key: &str,
        accept: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<Vec<u8>, TierError> {
        self.read(key, |t| t.get_checked(key, accept), Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::local::LocalTier;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicI32;

    /// A set of two local tiers in temporary directories.
    fn two_tiers() -> (tempfile::TempDir, tempfile::TempDir, TierSet) {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let set = TierSet::new(vec![
            Box::new(LocalTier::new(a.path())),
            Box::new(LocalTier::new(b.path())),
        ]);
        (a, b, set)
    }

    #[test]
    fn reads_fall_over_and_writes_reach_every_tier() {
        let (a, b, set) = two_tiers();
        set.put("x/y", b"1").unwrap();
        assert_eq!(std::fs::read(a.path().join("x/y")).unwrap(), b"1");
        assert_eq!(std::fs::read(b.path().join("x/y")).unwrap(), b"1");
        std::fs::remove_file(a.path().join("x/y")).unwrap();
        assert_eq!(set.get("x/y").unwrap(), b"1");
        assert!(set.get("x/z").unwrap_err().is_not_found());
    }

    /// This machine's state in memory, with a count of sessions open.
    struct Mem(Mutex<HashMap<String, u64>>, String, AtomicI32);
    impl Mem {
        fn new(id: &str) -> std::sync::Arc<Self> {
            std::sync::Arc::new(Mem(Mutex::default(), id.into(), AtomicI32::new(0)))
        }
    }
    impl LocalState for Mem {
        fn installation(&self) -> Result<String, String> {
            Ok(self.1.clone())
        }
        fn host(&self) -> String {
            format!("host-{}", self.1)
        }
        fn set_last_revision(&self, t: &str, r: u64) {
            self.0.lock().unwrap().insert(t.into(), r);
        }
        fn highest_revision(&self) -> u64 {
            self.0.lock().unwrap().values().copied().max().unwrap_or(0)
        }
        fn open_session(&self) {
            self.2.fetch_add(1, Ordering::SeqCst);
        }
        fn close_session(&self) {
            self.2.fetch_sub(1, Ordering::SeqCst);
        }
        fn sessions_left_open(&self) -> Vec<String> {
            Vec::new()
        }
        fn forget_sessions(&self, _: &[String]) {}
    }

    /// A write session ends closed, unless a write in it failed for its
    /// caller: that write may have reached a tier anyway (a reply lost
    /// after the store), so the session stays open for the next one to
    /// reconcile.
    #[test]
    fn a_write_no_tier_took_keeps_its_session_open() {
        let (a, b, s) = two_tiers();
        let me = Mem::new("one");
        s.begin_write(me.clone(), false).unwrap();
        s.put("data/x", b"x").unwrap();
        s.end_write();
        assert_eq!(me.2.load(Ordering::SeqCst), 0);
        // A file where each tier's directory would be: no tier takes it.
        for d in [a.path(), b.path()] {
            std::fs::write(d.join("blocked"), b"").unwrap();
        }
        s.begin_write(me.clone(), false).unwrap();
        s.put("data/y", b"y").unwrap();
        assert!(s.put("blocked/z", b"z").is_err());
        s.end_write();
        assert_eq!(me.2.load(Ordering::SeqCst), 1);
        // The next session starts afresh.
        s.begin_write(me.clone(), false).unwrap();
        s.put("data/w", b"w").unwrap();
        s.end_write();
        assert_eq!(me.2.load(Ordering::SeqCst), 1);
    }

    fn rev(dir: &std::path::Path) -> u64 {
        let b = std::fs::read(dir.join(TIERSTATE)).unwrap();
        serde_json::from_slice::<TierState>(&b).unwrap().revision
    }

    #[test]
    fn revisions_sync_and_a_second_installation() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let set = |dirs: &[&std::path::Path]| {
            TierSet::new(
                dirs.iter()
                    .map(|d| Box::new(LocalTier::new(d)) as Box<dyn Tier>)
                    .collect(),
            )
        };
        let me = Mem::new("one");
        // A session on A alone: A is at 1, B (never written) at 0.
        let s = set(&[a.path()]);
        s.begin_write(me.clone(), false).unwrap();
        s.put("data/x", b"x").unwrap();
        assert_eq!(rev(a.path()), 1);
        // Both tiers: B is behind, so writes skip it, and it gets no revision.
        let s = set(&[a.path(), b.path()]);
        s.begin_write(me.clone(), false).unwrap();
        s.put("data/y", b"y").unwrap();
        assert_eq!(rev(a.path()), 2);
        assert!(!b.path().join("data/y").exists());
        let st = s.status(false);
        assert!(st[0].synchronised && !st[1].synchronised);
        assert_eq!(s.lacks(b.path().to_str().unwrap()), Some((2, 2)));
        // Sync copies what B lacks and gives it A's revision.
        let (done, n) = s.sync(me.as_ref(), &|| false, &mut |_, _| {}).unwrap();
        assert!(done);
        assert_eq!(n, 2);
        assert_eq!(std::fs::read(b.path().join("data/y")).unwrap(), b"y");
        assert_eq!(rev(b.path()), 2);
        // Another installation writes to A: the first one must stop.
        let other = Mem::new("two");
        let s2 = set(&[a.path()]);
        assert!(matches!(
            s2.begin_write(other.clone(), false),
            Err(WriteError::AnotherInstallation { .. })
        ));
        s2.begin_write(other.clone(), true).unwrap(); // takeover
        let s = set(&[a.path(), b.path()]);
        let err = s.begin_write(me.clone(), false).unwrap_err();
        assert!(err.to_string().contains("host-two"), "{err}");
    }
}

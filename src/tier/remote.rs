//! Remote tiers, SFTP and S3-compatible object stores, through Apache
//! OpenDAL (see `docs/TIERS.md` for why OpenDAL).
//!
//! OpenDAL is async; the tier trait is blocking. One small tokio runtime is
//! shared by every remote tier, and each call blocks its (worker) thread on
//! it. Temporary failures (a dropped connection, a server restarting) are
//! retried with backoff, up to `TierSpec::retries` attempts; after that
//! the error is `TierError::Offline`, and the tier set stops using the tier.

use super::{ObjectInfo, Tier, TierError, TierSpec};
use opendal::{ErrorKind, Operator};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// The runtime shared by the remote tiers; None until the first is opened
/// and after `shutdown`.
static RT: RwLock<Option<tokio::runtime::Runtime>> = RwLock::new(None);

fn start_runtime() {
    let mut rt = RT.write().expect("runtime");
    if rt.is_none() {
        // HTTP for S3 through reqwest with the system's OpenSSL. (A read
        // timeout is not set: reqwest's runs from the start of the request,
        // upload included, and would cut off uploads on a slow line. Each
        // call has ATTEMPT_LIMIT instead.)
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_LIMIT)
            .build()
            .expect("cannot build the HTTP client");
        opendal::HttpTransporter::install_default(
            opendal_http_transport_reqwest::ReqwestTransport::new(client),
        );
        *rt = Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("tier-io")
                .enable_all()
                .build()
                .expect("cannot start the I/O runtime"),
        );
    }
}

/// How long an HTTP connection may take to open.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// The time one attempt of a remote call may take, beyond the time its
/// bytes need at `MIN_UP_RATE` or `MIN_DOWN_RATE` (or half the tier's
/// bandwidth limit, if lower): an attempt past it ran out of time.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(30);

/// The slowest upload an attempt is allowed, in bytes per second: low
/// enough for several uploads at once to share a thin line.
const MIN_UP_RATE: f64 = 16.0 * 1024.0;

/// The slowest download an attempt is allowed: reads wait on it (a mount,
/// a restore), and lines are wider that way. A thinner line is declared
/// with the tier's `bandwidth`.
const MIN_DOWN_RATE: f64 = 256.0 * 1024.0;

/// The most bytes a whole-object read of anything but a pack is timed
/// for (index files are the largest).
const SMALL_OBJECT: u64 = 4 << 20;

/// An attempt that fails to connect after this long ran out of time
/// (`ssh` gives up connecting after 10 s).
const STALLED: Duration = Duration::from_secs(9);

/// Attempts in a row that ran out of time before a tier counts as offline:
/// a server that accepts connections but does not answer would otherwise
/// hold every call for all its attempts.
const TIMEOUTS_OFFLINE: u32 = 2;

fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    loop {
        if let Some(rt) = RT.read().expect("runtime").as_ref() {
            return rt.block_on(fut);
        }
        start_runtime();
    }
}

/// Waits, at most `limit`, until no remote call is in flight (each holds
/// the runtime's read lock while it runs). A call may open a new pooled
/// connection, with a new `ssh` master; once `tier::stop` refuses new
/// calls, no connection is opened after this returns `true`.
pub fn wait_idle(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if RT.try_write().is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Clients of dropped tiers and replaced clients (see `retire`), newest
/// last.
static RETIRED: std::sync::Mutex<Vec<Operator>> = std::sync::Mutex::new(Vec::new());

/// How many retired clients are kept open until `shutdown`.
const KEEP_RETIRED: usize = 8;

/// Keeps a client that is no longer used open until `shutdown`, instead
/// of closing it now.
///
/// Each pooled SFTP connection has an `ssh` master process and a task that
/// owns it. Dropping the client makes the task run `ssh -O exit` and then
/// remove the master's control directory. If the runtime stops while that
/// `ssh` is still starting (about 50 ms), the task is cancelled after it
/// has claimed the cleanup: the directory is removed, the command cannot
/// reach the master, and the master outlives the process. A task cancelled
/// *before* it starts closing runs `ssh -O exit` to completion instead. So
/// clients are dropped only by `shutdown`, after the runtime has stopped;
/// only the oldest of many (a mount with a flaky server) close earlier.
fn retire(op: Operator) {
    let oldest = {
        let mut r = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
        r.push(op);
        (r.len() > KEEP_RETIRED).then(|| r.remove(0))
    };
    // Closed outside the lock: closing runs `ssh -O exit`.
    drop(oldest);
}

/// Closes the remote tiers' connections before the process exits. An SFTP
/// connection runs an `ssh` master process (with ControlPersist) and a
/// control directory, which only the connection's own task removes: a
/// process that exits without stopping the runtime leaves both behind.
/// Stopping the runtime cancels each connection's task, which closes its
/// master as it is dropped (see `retire`).
/// Waits up to 2 s for calls in flight (the mount's worker threads may be
/// in one); after that it leaves things as they are.
pub fn shutdown() {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Ok(mut rt) = RT.try_write() {
            if let Some(rt) = rt.take() {
                rt.shutdown_timeout(Duration::from_secs(5));
            }
            // The tasks that owned the sessions are gone, and with them the
            // masters. What is left of the retired clients would only run
            // their (now empty) closing steps without a runtime; the process
            // is about to exit.
            std::mem::forget(std::mem::take(
                &mut *RETIRED.lock().unwrap_or_else(|e| e.into_inner()),
            ));
            super::ssh_dirs::release();
            return;
        }
        if Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct RemoteTier {
    name: String,
    op: std::sync::RwLock<Operator>,
    spec: TierSpec,
    /// SFTP writes land under a temporary name and are renamed; an S3 PUT
    /// is atomic by itself.
    rename: bool,
    retries: u32,
    throttle: Option<Throttle>,
}

/// A bandwidth limit for reads and writes together: each transfer books
/// its bytes at `rate` after the ones before it, and the caller waits until
/// its booking ends, so the average stays at or below the rate.
struct Throttle {
    rate: f64,
    next_free: std::sync::Mutex<std::time::Instant>,
}

impl Throttle {
    fn new(bytes_per_sec: u64) -> Self {
        Self {
            rate: bytes_per_sec.max(1) as f64,
            next_free: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    fn pace(&self, bytes: usize) {
        let until = {
            let mut next = self.next_free.lock().expect("throttle");
            let start = (*next).max(std::time::Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
            *next
        };
        let now = std::time::Instant::now();
        if until > now {
            std::thread::sleep(until - now);
        }
    }
}

/// `user@host:port` and `/path` out of `sftp://user@host:port/path`.
fn split_authority(rest: &str) -> (&str, &str) {
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// The OpenDAL operator for a location, and whether writes need a
/// temporary name and a rename.
fn build(loc: &str, opts: &TierSpec) -> Result<(Operator, bool), TierError> {
    let bad = |why: String| TierError::BadLocation {
        loc: loc.to_string(),
        why,
    };
    let (scheme, rest) = loc
        .split_once("://")
        .ok_or_else(|| bad("no scheme".into()))?;
    let (op, rename) = match scheme {
        "sftp" => {
            super::ssh_dirs::sweep();
            let (authority, path) = split_authority(rest);
            if authority.is_empty() {
                return Err(bad("no host: write sftp://user@host:port/path".into()));
            }
            let mut b = opendal::services::Sftp::default()
                .endpoint(&format!("ssh://{authority}"))
                .root(path)
                .known_hosts_strategy(opts.known_hosts.as_deref().unwrap_or("strict"));
            if let Some(k) = &opts.key {
                b = b.key(&k.to_string_lossy());
            }
            (Operator::new(b), true)
        }
        "s3" => {
            let (bucket, prefix) = split_authority(rest);
            if bucket.is_empty() {
                return Err(bad("no bucket: write s3://bucket/prefix".into()));
            }
            let mut b = opendal::services::S3::default()
                .bucket(bucket)
                .root(prefix)
                .disable_config_load()
                .disable_ec2_metadata();
            let endpoint = opts.endpoint.clone().or_else(|| env("AWS_ENDPOINT_URL"));
            if let Some(e) = &endpoint {
                b = b.endpoint(e);
            }
            let region = opts
                .region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into());
            b = b.region(&region);
            let key_id = opts
                .access_key_id
                .clone()
                .or_else(|| env("AWS_ACCESS_KEY_ID"));
            let secret = opts
                .secret_access_key
                .clone()
                .or_else(|| env("AWS_SECRET_ACCESS_KEY"));
            match (key_id, secret) {
                (Some(k), Some(s)) => b = b.access_key_id(&k).secret_access_key(&s),
                _ => {
                    return Err(bad(
                        "no S3 credentials: set access_key_id and secret_access_key for the tier in the config file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                    ))
                }
            }
            if let Some(t) = env("AWS_SESSION_TOKEN") {
                b = b.session_token(&t);
            }
            (Operator::new(b), false)
        }
        _ => return Err(TierError::UnsupportedLocation(loc.to_string())),
    };
    Ok((op.map_err(|e| bad(e.to_string()))?, rename))
}

impl RemoteTier {
    /// Opens `sftp://[user@]host[:port]/path` or `s3://bucket[/prefix]`.
    pub fn open(loc: &str, opts: &TierSpec) -> Result<Self, TierError> {
        start_runtime();
        let (op, rename) = build(loc, opts)?;
        Ok(Self {
            name: loc.to_string(),
            op: std::sync::RwLock::new(op),
            spec: opts.clone(),
            rename,
            retries: opts.retries.unwrap_or(10).max(1),
            throttle: opts.bandwidth.map(Throttle::new),
        })
    }

    /// A fresh client: after a server restart, pooled connections may be
    /// dead, so each retry of a failed call starts from a new one.
    fn reconnect(&self) {
        if let Ok((op, _)) = build(&self.name, &self.spec) {
            let old = std::mem::replace(&mut *self.op.write().expect("operator"), op);
            retire(old);
        }
    }

    fn op(&self) -> Operator {
        self.op.read().expect("operator").clone()
    }

    fn pace(&self, bytes: usize) {
        if let Some(t) = &self.throttle {
            t.pace(bytes);
        }
    }

    fn err(&self, key: &str, e: opendal::Error) -> TierError {
        if e.to_string().contains("NoSuchBucket") {
            let bucket = self
                .name
                .strip_prefix("s3://")
                .and_then(|r| r.split(['/', '?']).next())
                .unwrap_or_default();
            return TierError::BadLocation {
                loc: self.name.clone(),
                why: format!(
                    "the server has no bucket {bucket:?}: create it (tiervault does not create buckets), or correct the name"
                ),
            };
        }
        match e.kind() {
            ErrorKind::NotFound => TierError::NotFound {
                tier: self.name.clone(),
                key: key.to_string(),
            },
            _ if e.is_temporary() => TierError::Offline {
                tier: self.name.clone(),
                reason: e.to_string(),
            },
            _ => TierError::Io {
                tier: self.name.clone(),
                key: key.to_string(),
                source: std::io::Error::other(e.to_string()),
            },
        }
    }

    /// The time an attempt that moves `bytes` at no less than `rate` (or
    /// half the tier's bandwidth limit) may take (see `ATTEMPT_LIMIT`).
    fn limit(&self, bytes: u64, rate: f64) -> Duration {
        let rate = self
            .throttle
            .as_ref()
            .map_or(rate, |t| (t.rate / 2.0).min(rate));
        ATTEMPT_LIMIT + Duration::from_secs_f64(bytes as f64 / rate)
    }

    /// The time limit of an attempt that downloads `bytes`.
    fn down(&self, bytes: u64) -> Duration {
        self.limit(bytes, MIN_DOWN_RATE)
    }

    /// The time limit of an attempt that uploads `bytes`.
    fn up(&self, bytes: u64) -> Duration {
        self.limit(bytes, MIN_UP_RATE)
    }

    /// Runs `f` on the runtime, retrying temporary failures with backoff
    /// (0.1 s doubling to 2 s) up to `retries` attempts in all. Each
    /// attempt has `limit` (see `up` and `down`).
    fn call<T, F, Fut>(&self, key: &str, limit: Duration, f: F) -> Result<T, TierError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = opendal::Result<T>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        let mut timeouts = 0;
        loop {
            if super::stopping() {
                return Err(TierError::Interrupted);
            }
            let started = Instant::now();
            let r = block_on(async { tokio::time::timeout(limit, f()).await });
            // Out of time: the call's own limit, or a connection that was
            // not made within `ssh`'s 10 s (a plain "failed to connect").
            let stalled = match &r {
                Err(_) => true,
                Ok(Err(e)) => {
                    started.elapsed() >= STALLED && (e.is_temporary() || is_connection(e))
                }
                Ok(Ok(_)) => false,
            };
            let r = r.unwrap_or_else(|_| {
                Err(opendal::Error::new(ErrorKind::Unexpected, "timed out").set_temporary())
            });
            timeouts = if stalled { timeouts + 1 } else { 0 };
            if timeouts >= TIMEOUTS_OFFLINE {
                return Err(TierError::Offline {
                    tier: self.name.clone(),
                    reason: format!(
                        "the server accepts connections but does not answer ({timeouts} attempts in a row ran out of time)"
                    ),
                });
            }
            match r {
                Ok(v) => return Ok(v),
                Err(e) if stalled || e.is_temporary() || is_connection(&e) => {
                    if attempt >= self.retries {
                        return Err(TierError::Offline {
                            tier: self.name.clone(),
                            reason: format!("{e} (after {attempt} attempts)"),
                        });
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                    attempt += 1;
                    self.reconnect();
                }
                Err(e) => return Err(self.err(key, e)),
            }
        }
    }
}

impl Drop for RemoteTier {
    fn drop(&mut self) {
        if let Ok(op) = self.op.get_mut() {
            retire(op.clone());
        }
    }
}

/// Failures that mean the server could not be reached at all.
/// OpenDAL reports every SSH failure alike, so a refused key or host key is
/// told apart by its text: retrying those would only hide the cause.
fn is_connection(e: &opendal::Error) -> bool {
    let s = e.to_string().to_lowercase();
    let refused = ["host key", "permission denied", "authentication"];
    e.kind() == ErrorKind::Unexpected
        && !refused.iter().any(|w| s.contains(w))
        && [
            "connect",
            "connection",
            "broken pipe",
            "timed out",
            "ssh",
            "dispatch",
        ]
        .iter()
        .any(|w| s.contains(w))
}

impl Tier for RemoteTier {
    fn name(&self) -> &str {
        &self.name
    }
    fn is_remote(&self) -> bool {
        true
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, TierError> {
        // The size sets the time the transfer may take. Only a pack may be
        // large, so only a pack costs a `stat` first; the other objects
        // (config, keys, tierstate, index files, revisions), read at every
        // start, are given the time of SMALL_OBJECT bytes.
        let size = if key.starts_with("data/") {
            self.stat(key)?.ok_or_else(|| TierError::NotFound {
                tier: self.name.clone(),
                key: key.to_string(),
            })?
        } else {
            SMALL_OBJECT
        };
        let b = self
            .call(key, self.down(size), || async { self.op().read(key).await })?
            .to_vec();
        self.pace(b.len());
        Ok(b)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, TierError> {
        let b = self.call(key, self.down(len), || async {
            self.op().read_with(key).range(offset..offset + len).await
        })?;
        self.pace(b.len());
        if (b.len() as u64) < len {
            return Err(TierError::Corrupt {
                tier: self.name.clone(),
                key: key.to_string(),
                msg: format!("short read: {} of {len} bytes at {offset}", b.len()),
            });
        }
        Ok(b.to_vec())
    }
    fn put(&self, key: &str, data: &[u8]) -> Result<(), TierError> {
        self.put_shared(key, &bytes::Bytes::copy_from_slice(data))
    }
    fn put_shared(&self, key: &str, data: &bytes::Bytes) -> Result<(), TierError> {
        self.pace(data.len());
        let buf = opendal::Buffer::from(data.clone());
        let size = data.len() as u64;
        if !self.rename {
            return self
                .call(key, self.up(size), || async {
                    self.op().write(key, buf.clone()).await
                })
                .map(|_| ());
        }
        let tmp = match key.rsplit_once('/') {
            Some((dir, file)) => format!("{dir}/.tmp-{file}-{}", std::process::id()),
            None => format!(".tmp-{key}-{}", std::process::id()),
        };
        self.call(key, self.up(size), || async {
            self.op().write(&tmp, buf.clone()).await
        })?;
        self.call(key, self.down(0), || async {
            self.op().rename(&tmp, key).await
        })
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, TierError> {
        // A listing of a large repository over a slow line takes a while.
        let entries = match self.call(prefix, self.up(16 << 20), || async {
            self.op().list_with(prefix).recursive(true).await
        }) {
            Ok(e) => e,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in entries {
            let path = e.path();
            if path.ends_with('/') {
                continue;
            }
            if path
                .rsplit('/')
                .next()
                .is_some_and(|f| f.starts_with(".tmp-"))
            {
                // Left by a write cut off before its rename: removed once
                // a day old (best effort: a read-only tier keeps it).
                let modified = e
                    .metadata()
                    .last_modified()
                    .map(std::time::SystemTime::from);
                if super::stale_temporary(modified) {
                    let _ = self.call(path, self.down(0), || async {
                        self.op().delete(path).await
                    });
                }
                continue;
            }
            let size = match e.metadata().content_length() {
                0 => self.stat(path)?.unwrap_or(0),
                n => n,
            };
            out.push(ObjectInfo {
                key: path.to_string(),
                size,
            });
        }
        Ok(out)
    }
    fn stat(&self, key: &str) -> Result<Option<u64>, TierError> {
        match self.call(key, self.down(0), || async { self.op().stat(key).await }) {
            Ok(m) => Ok(Some(m.content_length())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn delete(&self, key: &str) -> Result<(), TierError> {
        self.call(key, self.down(0), || async { self.op().delete(key).await })
    }
}

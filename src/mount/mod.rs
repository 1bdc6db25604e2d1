//! `tiervault mount`: every revision as read-only directories.
//!
//! [`core`] is the filesystem without the kernel; [`fuse`] adapts it to
//! `fuser`. `run` mounts, then waits for SIGINT/SIGTERM or an external
//! `fusermount3 -u`, and unmounts cleanly.

pub mod core;
mod fuse;
mod queue;

use crate::repo::Repository;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct MountOptions {
    pub allow_other: bool,
    /// Threads that answer requests which may wait on storage (lookups,
    /// directory listings, reads); the kernel-facing threads never do.
    pub threads: usize,
    pub core: core::CoreOptions,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A mount point whose FUSE server died answers with ENOTCONN.
fn check_mountpoint(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(format!(
            "{} is a stale mount left by a process that was killed; clear it with `fusermount3 -u {}` and mount again",
            dir.display(),
            dir.display()
        )),
        Err(e) => Err(format!("cannot use {} as a mount point: {e}", dir.display())),
    }
}

/// Mounts `repo` on `dir` and serves it until a signal or an unmount.
pub fn run(
    repo: Arc<Repository>,
    dir: &Path,
    opts: MountOptions,
    ready: impl FnOnce(),
) -> Result<(), String> {
    check_mountpoint(dir)?;
    let core = Arc::new(core::FsCore::new(repo.clone(), opts.core));
    let idle_sync = spawn_idle_sync(repo, core.clone());
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("tiervault".into()),
        fuser::MountOption::Subtype("tiervault".into()),
        fuser::MountOption::RO,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if opts.allow_other {
        cfg.mount_options
            .push(fuser::MountOption::DefaultPermissions);
        cfg.acl = fuser::SessionACL::All;
    }
    // Kernel-facing threads: they answer from memory and hand anything that
    // may wait on storage to the workers.
    cfg.n_threads = Some(2);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let session = fuser::spawn_mount(
        fuse::FuseFs::new(core.clone(), opts.threads.max(1)),
        dir,
        &cfg,
    )
    .map_err(|e| format!("cannot mount on {}: {e}", dir.display()))?;
    ready();
    // On its own thread: a check may wait on a slow tier, and this loop
    // must notice a signal or an unmount at once.
    let notifier = session.notifier();
    let watched = core.clone();
    let watch = std::thread::Builder::new()
        .name("latest-watch".into())
        .spawn(move || {
            let mut latest = LatestWatch::default();
            while !STOP.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(1));
                if latest.moved(&watched) {
                    // Gone stale in the kernel's symlink cache; it asks again.
                    let _ = notifier.inval_inode(fuser::INodeNo(core::LATEST), 0, 0);
                }
            }
        });
    if let Err(e) = watch {
        errln!("tiervault mount: cannot start the thread that moves `latest` ({e}); `latest` may keep its first target until the mount is restarted");
    }
    let mut ticks = 0u32;
    while !STOP.load(Ordering::SeqCst) && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        ticks += 1;
        // After a busy second only: an idle mount has nothing to give back.
        if ticks % 10 == 0 && core.idle_for() < Duration::from_secs(2) {
            // Freed cache entries leave holes in the allocator's arenas;
            // hand their pages back so the resident size follows the
            // caches' limits instead of their history.
            // SAFETY: malloc_trim only releases free memory.
            unsafe { libc::malloc_trim(0) };
        }
    }
    // The idle sync stops at its next check; the process does not wait
    // for a tier that is slow to answer.
    STOP.store(true, Ordering::SeqCst);
    drop(idle_sync);
    if session.guard.is_finished() {
        // Unmounted from outside (fusermount3 -u).
        return session.join().map_err(|e| e.to_string());
    }
    match session.umount_and_join() {
        // A program still has a file or directory open under the mount:
        // it is detached instead, so the mount point is free at once, and
        // what is still open fails from now on. Left mounted, it would be
        // a dead mount once this process is gone.
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            detach(dir).map_err(|d| format!("unmounting {}: {e}; {d}", dir.display()))?;
            errln!(
                "tiervault mount: files under {} were still open; the mount was detached, and reads of those files fail from now on",
                dir.display()
            );
            Ok(())
        }
        r => r.map_err(|e| format!("unmounting {}: {e}", dir.display())),
    }
}

/// Detaches the mount at `dir` (`fusermount3 -u -z`), at most 5 s.
fn detach(dir: &Path) -> Result<(), String> {
    let mut child = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run fusermount3 to detach it ({e}): run `fusermount3 -u -z {}`",
                dir.display()
            )
        })?;
    match crate::wait_bounded(&mut child, Duration::from_secs(5)) {
        Some(s) if s.success() => Ok(()),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "detaching it failed too: run `fusermount3 -u -z {}`",
                dir.display()
            ))
        }
    }
}

/// The kernel caches symlink targets (FUSE_CACHE_SYMLINKS), so path walks
/// through `latest` cost no request. When a new revision moves `latest`,
/// the cached target must be dropped: while the mount is in use, the
/// revision list is checked every second (it is refreshed at most every
/// 2 s). Once the mount has been idle for a minute, checks stop (they cost
/// a listing on the tiers) and the cached target is dropped once, so the
/// next use asks again and finds the newest revision.
#[derive(Default)]
struct LatestWatch {
    /// The target the kernel may hold; None once dropped.
    seen: Option<Vec<u8>>,
}

impl LatestWatch {
    const IDLE: Duration = Duration::from_secs(60);

    /// Whether the kernel's cached target of `latest` must be dropped.
    fn moved(&mut self, core: &core::FsCore) -> bool {
        if core.idle_for() >= Self::IDLE {
            return self.seen.take().is_some();
        }
        match core.latest_target() {
            Ok(t) if self.seen.as_ref() == Some(&t) => false,
            Ok(t) => {
                self.seen = Some(t);
                true
            }
            // Unreadable now: asked again on the next check.
            Err(_) => false,
        }
    }
}

/// While the mount is idle (no request for `IDLE`), brings tiers that came
/// back after missing writes up to date (tier rule 4). A request, a write
/// elsewhere or the end of the mount stops the sync; it resumes later.
fn spawn_idle_sync(repo: Arc<Repository>, core: Arc<core::FsCore>) -> std::thread::JoinHandle<()> {
    const IDLE: Duration = Duration::from_secs(10);
    const EVERY: Duration = Duration::from_secs(30);
    std::thread::spawn(move || {
        let mut waited = Duration::ZERO;
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
            waited += Duration::from_millis(200);
            if waited < EVERY || core.idle_for() < IDLE {
                continue;
            }
            waited = Duration::ZERO;
            let set = repo.tiers();
            if set.tiers().count() < 2 {
                continue;
            }
            set.refresh();
            if set
                .status(false)
                .iter()
                .all(|t| t.synchronised || !t.online)
            {
                continue;
            }
            let busy = || STOP.load(Ordering::SeqCst) || core.idle_for() < IDLE;
            let report = set.sync(&repo.local_state(), &busy, &mut |tier, what| {
                errln!("tiervault mount: sync {tier}: {what}");
            });
            if let Err(e) = report {
                errln!("tiervault mount: sync: {e}");
            }
        }
    })
}

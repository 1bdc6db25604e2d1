//! Where the `ssh` master processes of SFTP tiers keep their control
//! sockets, so that masters a killed tiervault left behind are found and
//! closed by the next one.
//!
//! OpenDAL's SFTP service runs `ssh -M` with `ControlPersist=yes` through
//! the `openssh` crate, which puts each master's control socket in a fresh
//! directory under `$XDG_STATE_HOME` (else `~/.local/state`). A process
//! that ends normally closes its masters (`remote::shutdown`); one that is
//! killed cannot, and its masters would run until the server drops them.
//!
//! So each tiervault process points `XDG_STATE_HOME` at a directory of its
//! own, named by its process id, under `$XDG_RUNTIME_DIR/tiervault-ssh`
//! (else `<state dir>/ssh`). Before its first connection it takes a shared
//! `flock` on `<pid>/.lock` and holds it until it exits. The first SFTP
//! tier a process opens sweeps the directories whose lock nobody holds and
//! whose number no process has (their process is gone): it asks each
//! master left there to exit (`ssh -O exit`) and removes the directory
//! once every one has. A normal exit removes the process's own
//! directory. A master whose control socket is not there (its directory
//! was removed while it started, as when Ctrl-C in a terminal also
//! reaches the starting `ssh`) cannot be asked: it is found in `/proc` by
//! its `-S` path and sent SIGTERM, by its own process when that stops on
//! a signal, or by a later one's sweep once its process is gone.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's directory, once `claim` has set it up.
static MINE: OnceLock<PathBuf> = OnceLock::new();

/// `XDG_STATE_HOME` as the process got it, for the commands it runs.
static ORIGINAL_STATE_HOME: OnceLock<Option<std::ffi::OsString>> = OnceLock::new();

/// Longest base directory used. A control socket's path while ssh binds
/// it, `<base>/<pid>/.ssh-connectionXXXXXX/master.XXXXXXXXXXXXXXXX`, must
/// fit the 107 bytes of a Unix socket address: the 54 bytes after the base
/// (for a 7-digit pid) leave 53 for it; 50 keeps a margin.
const MAX_BASE: usize = 50;

/// `$XDG_RUNTIME_DIR/tiervault-ssh` if that directory is ours, else
/// `<state dir>/ssh`; None if the one chosen is relative or too long for a
/// socket path.
fn base() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == uid));
    let base = match runtime {
        Some(r) => r.join("tiervault-ssh"),
        None => crate::repo::default_state_root().join("ssh"),
    };
    (base.is_absolute() && base.as_os_str().len() <= MAX_BASE).then_some(base)
}

/// Gives this process its own control directory.
///
/// # Safety
/// Sets environment variables: call it while the process has one thread
/// (at the start of `main`). Our own state directory, which also follows
/// `XDG_STATE_HOME`, is pinned first through `TIERVAULT_STATE_DIR`. When no
/// suitable directory can be made, SFTP keeps `openssh`'s default.
pub unsafe fn claim() {
    let _ = ORIGINAL_STATE_HOME.set(std::env::var_os("XDG_STATE_HOME"));
    let Some(base) = base() else { return };
    if make_private_dir(&base).is_err() {
        return;
    }
    // Made by the first SFTP connection (`sweep`), not by every command.
    let mine = base.join(std::process::id().to_string());
    let state = crate::repo::default_state_root();
    // SAFETY: the caller runs this before any other thread exists.
    unsafe {
        std::env::set_var("TIERVAULT_STATE_DIR", state);
        std::env::set_var("XDG_STATE_HOME", &mine);
    }
    let _ = MINE.set(mine);
}

/// Gives `cmd` the `XDG_STATE_HOME` this process was started with (a
/// command the user configured keeps its own state where it expects).
pub fn original_env(cmd: &mut std::process::Command) {
    match ORIGINAL_STATE_HOME.get() {
        Some(Some(v)) => {
            cmd.env("XDG_STATE_HOME", v);
        }
        Some(None) => {
            cmd.env_remove("XDG_STATE_HOME");
        }
        None => {}
    }
}

fn make_private_dir(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // Not a symlink, ours, and writable by us alone: someone who could
    // plant or swap a directory here would reach our masters.
    let m = std::fs::symlink_metadata(p)?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o022 != 0 {
        return Err(std::io::Error::other("not a private directory"));
    }
    Ok(())
}

/// Makes this process's control directory and takes its lock, then closes
/// the masters left in the directories of processes that are gone, and
/// removes those. Runs once per process, before its first SFTP connection.
pub fn sweep() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Some(mine) = MINE.get() else { return };
        if make_private_dir(mine).is_err() {
            return;
        }
        // Shared: processes of two pid namespaces may share a number.
        static LOCK: OnceLock<std::fs::File> = OnceLock::new();
        if let Ok(f) = lock_file(mine) {
            // SAFETY: flock on an open descriptor.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) } == 0 {
                let _ = LOCK.set(f);
            }
        }
        let Some(base) = mine.parent() else { return };
        let Ok(dirs) = std::fs::read_dir(base) else {
            return;
        };
        for d in dirs.flatten() {
            let dir = d.path();
            if dir != *mine && abandoned(&dir) && exit_masters(&dir) {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        // Masters whose directory is gone with their process.
        for (pid, sock) in masters_under(base) {
            let Some(owner) = sock.ancestors().find(|a| a.parent() == Some(base)) else {
                continue;
            };
            if owner == mine.as_path() {
                continue;
            }
            // Also a directory removed already: its number decides.
            if abandoned(owner) && !sock.exists() {
                stop_master(pid);
            }
        }
    });
}

/// The `ssh` masters of this user, in this process's mount and pid
/// namespaces, whose control socket (`-S PATH`) is under `dir`, as
/// (process id, socket path), from `/proc`. (Another namespace's paths
/// and process ids mean other things.)
fn masters_under(dir: &Path) -> Vec<(i32, PathBuf)> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let ns = |p: &Path| ["mnt", "pid"].map(|n| std::fs::read_link(p.join("ns").join(n)).ok());
    let own = ns(Path::new("/proc/self"));
    if own.iter().any(Option::is_none) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if p.metadata().map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        // The name first: reading another program's command line can
        // wait on it.
        let comm = std::fs::read(p.path().join("comm")).unwrap_or_default();
        if comm.trim_ascii_end() != b"ssh" || ns(&p.path()) != own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if !args.contains(&b"-M".as_slice()) {
            continue;
        }
        let sock = args
            .iter()
            .position(|a| *a == b"-S")
            .and_then(|i| args.get(i + 1))
            .map(|a| PathBuf::from(OsStr::from_bytes(a)));
        if let Some(sock) = sock.filter(|s| s.starts_with(dir)) {
            out.push((pid, sock));
        }
    }
    out
}

/// Ends a master that nobody can reach any more (its control socket is
/// gone), which `ssh -O exit` cannot ask.
fn stop_master(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

fn lock_file(dir: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(".lock"))
}

/// Whether a process directory's owner is gone: no process here has its
/// number, and nobody holds its lock (a directory without one: its process
/// ended before its first connection, or is just starting; or no directory
/// at all).
///
/// Both must say so. The lock alone would give away the directory of a
/// live process that has not taken its lock yet (it creates `.lock`, then
/// locks it) or could not take it (`flock` failed), and sweeping it would
/// close that process's masters under it. The number alone would not do
/// where processes of several pid namespaces share the directory. A gone
/// process of another namespace whose number is in use here keeps its
/// directory until the number is free.
fn abandoned(dir: &Path) -> bool {
    let pid = dir
        .file_name()
        .and_then(|n| n.to_str()?.parse::<i32>().ok());
    if pid.is_none_or(alive) {
        return false;
    }
    if dir.join(".lock").exists() {
        let Ok(f) = lock_file(dir) else { return false };
        // SAFETY: flock on an open descriptor; the lock goes with `f`.
        return unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    }
    true
}

/// Asks each master whose control socket is in `dir` (one directory per
/// connection) to exit; whether every one did (or had gone already).
fn exit_masters(dir: &Path) -> bool {
    let mut all = true;
    for conn in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        all &= exit_master(&conn.path()).unwrap_or(true);
    }
    all
}

/// Asks the master of one connection directory to exit: None if it has
/// no control socket, else whether it exited (a master that does not
/// answer within 2 s counts as not exited).
fn exit_master(conn: &Path) -> Option<bool> {
    let sock = conn.join("master");
    if !sock.exists() {
        return None;
    }
    let child = std::process::Command::new("ssh")
        .arg("-S")
        .arg(&sock)
        .args(["-o", "BatchMode=yes", "-O", "exit", "none"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return Some(false);
    };
    match crate::wait_bounded(&mut child, std::time::Duration::from_secs(2)) {
        Some(status) => Some(status.success()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Some(false)
        }
    }
}

/// Closes this process's own masters, for a process about to end by a
/// signal, whose connections cannot be closed in order (see
/// `tier::stop`, which must come first, so that none is opened again). A
/// connection still starting (made in the last 10 s) has no control
/// socket yet: its master is waited for, at most 3 s in all. Then any
/// master of ours whose socket is not there (not made yet, or removed
/// with its directory) is sent SIGTERM. The directories of closed
/// masters, and older ones without a master (it ended by itself), are
/// removed, then this process's own.
pub fn close_masters() {
    let Some(mine) = MINE.get() else { return };
    // Calls in flight may still open connections: they end first (at most
    // 2 s; the masters are still up, so most simply finish).
    super::remote::wait_idle(std::time::Duration::from_secs(2));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let mut starting = false;
        for conn in std::fs::read_dir(mine).into_iter().flatten().flatten() {
            let dir = conn.path();
            let Ok(meta) = conn.metadata() else { continue };
            if !meta.is_dir() {
                continue;
            }
            match exit_master(&dir) {
                Some(true) => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Some(false) => {}
                None => {
                    let young = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age < std::time::Duration::from_secs(10));
                    if young {
                        starting = true;
                    } else {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
            }
        }
        if !starting || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A master whose starting `ssh` the signal ended too (Ctrl-C in a
    // terminal reaches the whole process group) can be left running after
    // its directory was removed; nobody could reach it again.
    for (pid, sock) in masters_under(mine) {
        if !sock.exists() {
            stop_master(pid);
        }
    }
    release();
}

/// Whether a process with this id exists (a process of another user
/// counts).
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for the process.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes this process's directory when its masters are gone (called
/// after the remote tiers' runtime has stopped). One still in use stays,
/// for a later process's sweep.
pub fn release() {
    if let Some(m) = MINE.get() {
        let entries = std::fs::read_dir(m).map(|d| d.count()).unwrap_or(0);
        if entries <= 1 {
            let _ = std::fs::remove_file(m.join(".lock"));
            let _ = std::fs::remove_dir(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{abandoned, lock_file};
    use std::os::fd::AsRawFd;

    /// A process directory, as `sweep` makes it, with its lock file.
    fn dir_of(base: &std::path::Path, pid: u32) -> std::path::PathBuf {
        let d = base.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        lock_file(&d).unwrap();
        d
    }

    /// A live process whose lock is free (it has not taken it yet, or
    /// could not) keeps its directory: sweeping it would close its masters
    /// under it.
    #[test]
    fn a_live_process_without_its_lock_keeps_its_directory() {
        let base = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live = dir_of(base.path(), child.id());
        let taken = !abandoned(&live);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            taken,
            "the directory of a live process was taken for abandoned"
        );
        // Once the process is gone, the same directory is abandoned.
        assert!(abandoned(&live));
    }

    /// A gone process's directory is abandoned unless someone holds its
    /// lock (a process of another pid namespace with the same number).
    #[test]
    fn a_gone_process_is_abandoned_unless_its_lock_is_held() {
        let base = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let gone = dir_of(base.path(), child.id());
        assert!(abandoned(&gone));
        let held = lock_file(&gone).unwrap();
        // SAFETY: flock on an open descriptor.
        assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_SH) }, 0);
        assert!(!abandoned(&gone));
        drop(held);
        assert!(abandoned(&gone));
        // No directory at all: the number decides.
        std::fs::remove_dir_all(&gone).unwrap();
        assert!(abandoned(&gone));
    }
}

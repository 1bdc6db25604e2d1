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
//! (else `<state dir>/ssh`). The first SFTP tier a process opens sweeps the
//! directories of processes that no longer exist: it asks each master left
//! there to exit (`ssh -O exit`) and removes the directory. A normal exit
//! removes the process's own directory.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's directory, once `claim` has set it up.
static MINE: OnceLock<PathBuf> = OnceLock::new();

/// Longest base directory used: a control socket's path, `<base>/<pid>/
/// .ssh-connectionXXXXXX/master.XXXXXXXXXXXXXXXX`, must fit the 108 bytes
/// of a Unix socket address.
const MAX_BASE: usize = 60;

fn base() -> Option<PathBuf> {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir());
    let base = match runtime {
        Some(r) => r.join("tiervault-ssh"),
        None => crate::repo::default_state_root().join("ssh"),
    };
    (base.as_os_str().len() <= MAX_BASE).then_some(base)
}

/// Gives this process its own control directory. Call at the start of
/// `main`, while the process has one thread: it sets environment
/// variables. Our own state directory, which also follows
/// `XDG_STATE_HOME`, is pinned first through `TIERVAULT_STATE_DIR`. When no
/// short enough directory can be made, SFTP keeps `openssh`'s default.
pub fn claim() {
    let Some(base) = base() else { return };
    if make_private_dir(&base).is_err() {
        return;
    }
    // Made by the first SFTP connection (`sweep`), not by every command.
    let mine = base.join(std::process::id().to_string());
    let state = crate::repo::default_state_root();
    // SAFETY: called at the start of main, before any other thread runs.
    unsafe {
        std::env::set_var("TIERVAULT_STATE_DIR", state);
        std::env::set_var("XDG_STATE_HOME", &mine);
    }
    let _ = MINE.set(mine);
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
    // Not a symlink, and ours: another user's directory would let them
    // reach our masters.
    let m = std::fs::symlink_metadata(p)?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if !m.is_dir() || m.uid() != uid {
        return Err(std::io::Error::other("not a private directory"));
    }
    Ok(())
}

/// Makes this process's control directory, closes the masters that
/// processes which no longer exist left in theirs, and removes those
/// directories. Runs once per process, before its first SFTP connection.
pub fn sweep() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let Some(mine) = MINE.get() else { return };
        let _ = make_private_dir(mine);
        let Some(Ok(dirs)) = mine.parent().map(std::fs::read_dir) else {
            return;
        };
        for d in dirs.flatten() {
            let Some(pid) = d.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if pid == std::process::id() as i32 || alive(pid) {
                continue;
            }
            for conn in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                let sock = conn.path().join("master");
                if sock.exists() {
                    let _ = std::process::Command::new("ssh")
                        .arg("-S")
                        .arg(&sock)
                        .args(["-o", "BatchMode=yes", "-O", "exit", "none"])
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
            let _ = std::fs::remove_dir_all(d.path());
        }
    });
}

/// Whether a process with this id exists (a process of another user
/// counts; a reused id keeps a directory until that process ends too).
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for the process.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes this process's directory when its masters are gone (called
/// after the remote tiers' runtime has stopped). One still in use stays,
/// for the next process's sweep.
pub fn release() {
    if let Some(m) = MINE.get() {
        let _ = std::fs::remove_dir(m);
    }
}

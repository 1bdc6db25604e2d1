//! tiervault: deduplicated, encrypted backups you use as a drive, replicated
//! across storage tiers.
//!
//! Layers, top to bottom: commands (`backup`, `restore`, `maintenance`) use
//! the [`repo::Repository`], which reads and writes the [`format`] through a
//! [`tier::TierSet`] and keeps a local [`index`] in RocksDB.

/// Writes to stdout as `print!` does, but a stdout that is gone (a closed
/// pipe: `tiervault ls | head`, `tiervault backup | true`) neither panics
/// nor stops the command: its work matters more than its report. A closed
/// stdout is remembered (`stdout_closed`), so long listings can stop.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::write_out(false, format_args!($($t)*)) };
}

/// `out!` with a newline, as `println!`.
#[macro_export]
macro_rules! outln {
    () => { $crate::write_out(false, format_args!("\n")) };
    ($($t:tt)*) => { $crate::write_out(false, format_args!("{}\n", format_args!($($t)*))) };
}

/// To stderr, as `eprint!`, never panicking (see `out!`).
#[macro_export]
macro_rules! errp {
    ($($t:tt)*) => { $crate::write_out(true, format_args!($($t)*)) };
}

/// To stderr, as `eprintln!`, never panicking (see `out!`).
#[macro_export]
macro_rules! errln {
    () => { $crate::write_out(true, format_args!("\n")) };
    ($($t:tt)*) => { $crate::write_out(true, format_args!("{}\n", format_args!($($t)*))) };
}

static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The first failure to write stdout other than its reader going away (a
/// full disk under `> out.json`): the command ends with an error for it.
static STDOUT_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Behind `out!` and the others: writes `args`. A failure is not the
/// command's: stderr's is ignored, stdout's remembered (`stdout_closed`,
/// `stdout_error`).
#[doc(hidden)]
pub fn write_out(to_stderr: bool, args: std::fmt::Arguments) {
    use std::io::Write;
    if to_stderr {
        let _ = std::io::stderr().lock().write_fmt(args);
    } else if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        stdout_failed(e);
    }
}

fn stdout_failed(e: std::io::Error) {
    STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        STDOUT_ERROR
            .lock()
            .expect("stdout error")
            .get_or_insert(e.to_string());
    }
}

/// Whether writing to stdout failed: its reader went away, or it cannot
/// take more.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Flushes stdout; the first failure to write it that was not a closed
/// pipe, if any.
pub fn stdout_error() -> Option<String> {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().flush() {
        stdout_failed(e);
    }
    STDOUT_ERROR.lock().expect("stdout error").clone()
}

pub mod backup;
pub mod format;
pub mod fsmeta;
pub mod index;
pub mod lru;
pub mod maintenance;
pub mod mount;
pub mod repo;
pub mod restore;
pub mod tier;
pub mod timefmt;

/// Waits up to `limit` for `child` to end: its status, or None if it is
/// still running (or cannot be waited for).
pub fn wait_bounded(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => return None,
        }
    }
}

/// `1.5 GiB`-style sizes for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

//! Reading a password from the terminal without echoing it.
//!
//! Echo is turned off for the prompt. Whatever ends the prompt, Enter, the
//! end of input, an error or a signal, turns it back on before anything
//! else happens. A signal that arrives meanwhile (Ctrl-C, `SIGTERM`, a
//! hangup, `SIGQUIT`) is caught, the terminal is put back as it was, the
//! handlers from before the prompt are put back, and the signal is raised
//! again, so it does what it would have done without the prompt: it ends a
//! mount that is starting, and sends any other command down its usual way
//! out (`close_connections_on_interrupt`). A signal is seen wherever it is
//! delivered: the handler writes to a pipe the prompt waits on beside the
//! terminal.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The write end of the pipe the prompt waits on, -1 outside a prompt.
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// The signal caught during the prompt, 0 if none.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    CAUGHT.store(sig, Ordering::SeqCst);
    let fd = WAKE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write is async-signal-safe; a full pipe already wakes
        // the prompt, so a failed write is harmless.
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

fn os_err(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Puts back, when dropped, the terminal settings and the signal handlers
/// that were in place before the prompt.
struct Restore {
    tty: RawFd,
    termios: libc::termios,
    handlers: Vec<(libc::c_int, libc::sigaction)>,
    /// The read and write ends of the pipe the handler writes to.
    pipe: (OwnedFd, OwnedFd),
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: tcsetattr on an open descriptor with settings tcgetattr
        // gave; sigaction with actions sigaction gave.
        unsafe {
            libc::tcsetattr(self.tty, libc::TCSANOW, &self.termios);
            for (sig, old) in &self.handlers {
                libc::sigaction(*sig, old, std::ptr::null_mut());
            }
        }
        WAKE.store(-1, Ordering::SeqCst);
    }
}

/// Shows `prompt` on the terminal and reads one line there, without echo.
/// Fails with `Interrupted` if a signal came and was handled without
/// ending the process.
pub fn password(prompt: &str) -> io::Result<Vec<u8>> {
    let mut tty = OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    let line = {
        let restore = silence(fd)?;
        tty.write_all(prompt.as_bytes())?;
        let line = read_line(fd, restore.pipe.0.as_raw_fd());
        drop(restore);
        line
    };
    let caught = CAUGHT.swap(0, Ordering::SeqCst);
    if caught != 0 {
        let _ = tty.write_all(b"\n");
        // SAFETY: raise has no preconditions; the handler from before the
        // prompt is back in place.
        unsafe { libc::raise(caught) };
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "interrupted at the password prompt",
        ));
    }
    line
}

/// Catches the signals and turns echo off on `fd` (echoing the newline
/// only), returning what puts them back.
fn silence(fd: RawFd) -> io::Result<Restore> {
    // SAFETY: plain calls on an open descriptor and on zeroed structs of
    // the right types; the handler only stores to an atomic and writes to
    // a pipe.
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        os_err(libc::tcgetattr(fd, &mut termios))?;
        let mut ends = [0; 2];
        os_err(libc::pipe2(
            ends.as_mut_ptr(),
            libc::O_CLOEXEC | libc::O_NONBLOCK,
        ))?;
        let pipe = (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1]));
        CAUGHT.store(0, Ordering::SeqCst);
        WAKE.store(ends[1], Ordering::SeqCst);
        let mut restore = Restore {
            tty: fd,
            termios,
            handlers: Vec::new(),
            pipe,
        };
        for sig in SIGNALS {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                || old.sa_sigaction == libc::SIG_IGN
            {
                // Ignored by whoever started us: it stays ignored.
                continue;
            }
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut new.sa_mask);
            // No SA_RESTART: a read on this thread returns at once.
            new.sa_flags = 0;
            if libc::sigaction(sig, &new, std::ptr::null_mut()) == 0 {
                restore.handlers.push((sig, old));
            }
        }
        let mut quiet = termios;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
        quiet.c_lflag |= libc::ECHONL;
        os_err(libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet))?;
        Ok(restore)
    }
}

/// Reads up to the end of a line from `tty`, or until `wake` is readable
/// (a signal came).
fn read_line(tty: RawFd, wake: RawFd) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: tty,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll over two valid descriptors.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if CAUGHT.load(Ordering::SeqCst) != 0 || fds[1].revents != 0 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut buf = [0u8; 256];
        // SAFETY: read into a buffer of the given length.
        let got = unsafe { libc::read(tty, buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let got = &buf[..got as usize];
        let end = got.iter().position(|&c| c == b'\n');
        line.extend_from_slice(&got[..end.unwrap_or(got.len())]);
        if end.is_some() || got.is_empty() {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

//! Reading a password from the terminal without echoing it.
//!
//! Echo is turned off for the prompt and turned back on however the prompt
//! ends: Enter, the end of input, an error, or a signal. For the signals
//! that end a command (Ctrl-C, `SIGTERM`, a hangup, `SIGQUIT`), a handler
//! of ours is in place during the prompt. Whichever thread the signal
//! reaches, the handler itself puts the terminal back, puts back the
//! handlers from before the prompt, and raises the signal again, so that
//! it does what it would have done without the prompt: it ends a mount
//! that is starting, and sends any other command down its usual way out
//! (`close_connections_on_interrupt`). Everything the handler calls is
//! async-signal-safe, and the state it reads is written before it is
//! installed.

use std::cell::UnsafeCell;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};

const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// What the handler puts back: the terminal's settings and the handlers
/// from before the prompt. Written by the prompting thread only while none
/// of our handlers is installed.
struct Saved {
    termios: UnsafeCell<libc::termios>,
    actions: UnsafeCell<[libc::sigaction; SIGNALS.len()]>,
}

// SAFETY: see `Saved`: writes happen before the handlers that read are
// installed, and the prompting thread is the only writer.
unsafe impl Sync for Saved {}

static SAVED: Saved = Saved {
    // SAFETY: both are plain C structs for which all zeroes is valid.
    termios: UnsafeCell::new(unsafe { std::mem::zeroed() }),
    actions: UnsafeCell::new(unsafe { std::mem::zeroed() }),
};
/// The terminal's descriptor during a prompt.
static TTY: AtomicI32 = AtomicI32::new(-1);
/// Set while the terminal and handlers are ours; whoever clears it (the
/// handler or the prompt) puts them back, once.
static ARMED: AtomicBool = AtomicBool::new(false);
/// Bit `i` is set when our handler is installed for `SIGNALS[i]`.
static INSTALLED: AtomicU32 = AtomicU32::new(0);

/// Puts the terminal and every handler of ours back, if still ours.
/// Async-signal-safe.
fn disarm() -> bool {
    if !ARMED.swap(false, Ordering::SeqCst) {
        return false;
    }
    // SAFETY: tcsetattr and sigaction are async-signal-safe; SAVED was
    // written before ARMED was set.
    unsafe {
        libc::tcsetattr(
            TTY.load(Ordering::SeqCst),
            libc::TCSANOW,
            SAVED.termios.get(),
        );
        let installed = INSTALLED.swap(0, Ordering::SeqCst);
        for (i, sig) in SIGNALS.iter().enumerate() {
            if installed & (1 << i) != 0 {
                libc::sigaction(*sig, &(*SAVED.actions.get())[i], std::ptr::null_mut());
            }
        }
    }
    true
}

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: errno is thread-local; it is restored for the interrupted code.
    let errno = unsafe { *libc::__errno_location() };
    disarm();
    // If the prompt put things back first, this signal's handler may still
    // be ours for an instant: put its old one back before raising again.
    if let Some(i) = SIGNALS.iter().position(|&s| s == sig) {
        // SAFETY: as in `disarm`.
        unsafe { libc::sigaction(sig, &(*SAVED.actions.get())[i], std::ptr::null_mut()) };
    }
    // Pending until this handler returns (the signal is blocked while it
    // runs), then delivered to the handler from before the prompt.
    // SAFETY: raise is async-signal-safe.
    unsafe {
        libc::raise(sig);
        *libc::__errno_location() = errno;
    }
}

/// Shows `prompt` on the terminal and reads one line there, without echo.
/// Fails with `Interrupted` if a signal came and the process did not end
/// by it at once.
pub fn password(prompt: &str) -> io::Result<Vec<u8>> {
    let mut tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open the terminal to ask for the password ({e}): set \
                     TIERVAULT_PASSWORD_FILE, TIERVAULT_PASSWORD or --password-command"
                ),
            )
        })?;
    let fd = tty.as_raw_fd();
    arm(fd)?;
    let read = tty
        .write_all(prompt.as_bytes())
        .and_then(|()| read_line(fd));
    if !disarm() {
        // A signal came: its handler put things back and raised it again.
        let _ = tty.write_all(b"\n");
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "interrupted at the password prompt",
        ));
    }
    read
}

/// Saves the terminal's settings and the handlers, installs ours, and
/// turns echo off on `fd` (the newline is still echoed).
fn arm(fd: RawFd) -> io::Result<()> {
    // SAFETY: tcgetattr, sigaction and tcsetattr on an open descriptor and
    // valid structs; SAVED is written before any handler of ours that
    // reads it is installed (none is: the last prompt disarmed).
    unsafe {
        let mut termios: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut termios) != 0 {
            return Err(io::Error::last_os_error());
        }
        *SAVED.termios.get() = termios;
        TTY.store(fd, Ordering::SeqCst);
        ARMED.store(true, Ordering::SeqCst);
        for (i, sig) in SIGNALS.iter().enumerate() {
            let old = &mut (*SAVED.actions.get())[i];
            if libc::sigaction(*sig, std::ptr::null(), old) != 0
                || old.sa_sigaction == libc::SIG_IGN
            {
                // Ignored by whoever started us: it stays ignored.
                continue;
            }
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut new.sa_mask);
            // No SA_RESTART: the prompt's read returns at once if the
            // signal comes to its thread (other threads' blocking calls
            // may see EINTR during the prompt too).
            new.sa_flags = 0;
            if libc::sigaction(*sig, &new, std::ptr::null_mut()) == 0 {
                INSTALLED.fetch_or(1 << i, Ordering::SeqCst);
            }
        }
        let mut quiet = termios;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
        quiet.c_lflag |= libc::ECHONL | libc::ICANON;
        quiet.c_iflag |= libc::ICRNL;
        if libc::tcsetattr(fd, libc::TCSANOW, &quiet) != 0 {
            let e = io::Error::last_os_error();
            disarm();
            return Err(e);
        }
        if !ARMED.load(Ordering::SeqCst) {
            // A signal's handler put the terminal back just before echo
            // went off: put it back again.
            libc::tcsetattr(fd, libc::TCSANOW, &termios);
        }
    }
    Ok(())
}

/// Reads up to the end of a line from `tty` (canonical mode: each read
/// gives at most one line). Stops early if a signal's handler put the
/// terminal back.
fn read_line(tty: RawFd) -> io::Result<Vec<u8>> {
    // Room for any typed password, so no copy of it is left behind by a
    // reallocation.
    let mut line = Vec::with_capacity(1024);
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: read into a buffer of the given length.
        let got = unsafe { libc::read(tty, buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted && ARMED.load(Ordering::SeqCst) {
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
    for b in buf.iter_mut() {
        // SAFETY: a write through a valid reference; volatile so that the
        // clearing of a buffer about to go is kept.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

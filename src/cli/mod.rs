//! The command-line front end: parse, validate once into [`Settings`], then
//! dispatch to one small function per command. Errors become exit codes in
//! `main.rs`.

pub mod args;
mod commands;
mod listing;
mod prompt;
mod settings;
mod tiers;

pub use settings::Settings;

use args::{Cli, Command};

/// Runs one command; returns the process exit code on success.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    // The mount ends cleanly on these signals by itself.
    if !matches!(cli.command, Command::Mount(_)) {
        close_connections_on_interrupt();
    }
    let s = Settings::new(&cli)?;
    match cli.command {
        Command::Init(a) => commands::init(&s, &a),
        Command::Backup(a) => commands::backup(&s, &a),
        Command::Revisions(a) => listing::revisions(&s, &a),
        Command::Ls(a) => listing::ls(&s, &a),
        Command::Restore(a) => commands::restore(&s, &a),
        Command::Check(a) => commands::check(&s, &a),
        Command::Mount(a) => commands::mount(&s, &a),
        Command::Tiers(a) => tiers::tiers(&s, &a),
        Command::Sync(_) => tiers::sync(&s),
        Command::Takeover(_) => tiers::takeover(&s),
        Command::Completions(a) => commands::completions(&a),
        Command::Manpages(a) => commands::manpages(&a),
    }
}

/// The interruption message was written (or its write returned).
static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ctrl-C or SIGTERM during a command still ends the process by that
/// signal, as by default, so that shells and service managers see what
/// stopped it (a repository survives a command cut off at any point). On
/// the way, the `ssh` masters of its SFTP connections, which would outlive
/// it, are closed, after the tiers are told to stop (`tier::stop`): no new
/// write starts, and no tier is put on record as behind because its
/// connection was closed. A write that reached some tiers only is
/// reconciled by the next write session (`TierSet::reconcile`). Closing
/// takes a moment (a few seconds at most); a second signal ends the
/// process at once.
///
/// The handler only sets the tiers' stop flag and writes to a pipe
/// (`signal-hook`), and a thread does the work; no signal is blocked, so
/// the programs the command runs (`ssh`, a password command) start with
/// the usual signal handling. A signal the command was started ignoring
/// (a job started with `&` by a script) stays ignored.
fn close_connections_on_interrupt() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::low_level::emulate_default_handler;
    let wanted: Vec<i32> = [SIGINT, SIGTERM]
        .into_iter()
        .filter(|&s| !ignored(s))
        .collect();
    let Ok(mut signals) = signal_hook::iterator::Signals::new(&wanted) else {
        return;
    };
    let waiter = move || {
        let mut interrupted = false;
        for sig in signals.forever() {
            if interrupted {
                let _ = emulate_default_handler(sig);
            }
            interrupted = true;
            tiervault::tier::stop();
            let closing = std::thread::Builder::new()
                .name("stopping".into())
                .spawn(move || {
                    tiervault::tier::ssh_dirs::close_masters();
                    // The message first, unless stderr is stuck.
                    for _ in 0..50 {
                        if SAID.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    let _ = emulate_default_handler(sig);
                    // Not reached: the default action ends the process.
                    std::process::exit(128 + sig);
                });
            if closing.is_err() {
                let _ = emulate_default_handler(sig);
            }
            let what = if sig == SIGINT { "Ctrl-C" } else { "SIGTERM" };
            let msg = format!(
                "tiervault: interrupted by {what}; closing connections (again to stop at once)\n"
            );
            // Straight to the descriptor, after the closing started, and on
            // a thread of its own: stderr may be a pipe whose reader got the
            // signal too, or one nobody reads, and neither may stop the
            // closing or keep this thread from a second signal.
            let _ = std::thread::Builder::new()
                .name("saying".into())
                .spawn(move || {
                    // SAFETY: write of a valid buffer to descriptor 2.
                    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
                    SAID.store(true, std::sync::atomic::Ordering::SeqCst);
                });
        }
    };
    if std::thread::Builder::new()
        .name("signals".into())
        .spawn(waiter)
        .is_err()
    {
        return;
    }
    for &sig in &wanted {
        // In the handler itself, so the flag is up before anything the
        // signal breaks (the `ssh` processes in our process group get
        // Ctrl-C too) fails.
        let _ = signal_hook::flag::register(sig, tiervault::tier::stopping_flag());
    }
}

/// Whether `sig` is ignored (an inherited `SIG_IGN`).
fn ignored(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one
    // into a zeroed struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

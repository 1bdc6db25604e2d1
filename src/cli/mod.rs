//! The command-line front end: parse, validate once into [`Settings`], then
//! dispatch to one small function per command. Errors become exit codes in
//! `main.rs`.

pub mod args;
mod commands;
mod listing;
mod settings;
mod tiers;

pub use settings::Settings;

use args::{Cli, Command};

/// Runs one command; returns the process exit code on success.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    // The mount handles these signals itself, and ends cleanly on them.
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

/// Ctrl-C or SIGTERM in the middle of a command ends the process at once,
/// as by default (a repository survives a command cut off at any point),
/// with exit code 128 + the signal, after closing the `ssh` masters of its
/// SFTP connections, which would otherwise outlive it. The signals are
/// blocked in this thread and every thread started after it, and one
/// thread waits for them. Child processes start with no signal blocked.
fn close_connections_on_interrupt() {
    // SAFETY: plain libc calls on a local signal set; the mask applies to
    // this thread and the threads it starts from now on.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let waiter = std::thread::Builder::new()
            .name("interrupt".into())
            .spawn(move || {
                let mut sig = 0;
                if libc::sigwait(&set, &mut sig) == 0 {
                    eprintln!(
                        "tiervault: interrupted by {}; closing connections",
                        if sig == libc::SIGINT {
                            "Ctrl-C"
                        } else {
                            "SIGTERM"
                        }
                    );
                    // Calls in flight end (no new one starts), then every
                    // connection is closed in order; masters of calls that
                    // did not end in time are told to exit directly.
                    tiervault::tier::remote::stop_connecting();
                    tiervault::tier::remote::shutdown();
                    tiervault::tier::ssh_dirs::close_masters();
                    std::process::exit(128 + sig);
                }
            });
        if waiter.is_err() {
            // Nobody would answer them: back to the default.
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

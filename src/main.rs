//! The `tiervault` binary: parses the command line, runs the command, and
//! turns errors into a one-line message and a documented exit code.

#[macro_use]
extern crate tiervault;

mod cli;

use clap::Parser;
use tiervault::repo::RepoError;

fn exit_code(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<RepoError>() {
        Some(RepoError::NotARepository(_) | RepoError::HalfInitialised(_)) => 10,
        Some(RepoError::WrongPassword(_)) => 12,
        Some(RepoError::Writer(tiervault::tier::set::WriteError::AnotherInstallation {
            ..
        })) => 13,
        _ => 1,
    }
}

/// Keeps freed buffers in the process: backup and restore allocate and free
/// megabyte-sized chunk and pack buffers all the time, and returning each
/// one to the kernel makes the next one fault in fresh zeroed pages. Memory
/// stays bounded by the pipeline's channel sizes.
fn tune_allocator() {
    // SAFETY: mallopt only adjusts glibc's allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() {
    // First, while this is the only thread: it sets environment variables.
    // SAFETY: no other thread exists yet.
    unsafe { tiervault::tier::ssh_dirs::claim() };
    tune_allocator();
    std::panic::set_hook(Box::new(|info| {
        errln!("tiervault: internal error: {info}; please report this");
    }));
    let cli = cli::args::Cli::parse();
    let result = cli::run(cli);
    if tiervault::tier::stopping() {
        // Interrupted: the stopping thread closes the connections and ends
        // the process by the signal.
        loop {
            std::thread::park();
        }
    }
    let mut code = match result {
        Ok(c) => c,
        Err(e) => {
            errln!("tiervault: error: {e:#}");
            exit_code(&e)
        }
    };
    if let Some(e) = tiervault::stdout_error() {
        errln!("tiervault: error: cannot write the output: {e}");
        if code == 0 {
            code = 1;
        }
    }
    tiervault::tier::remote::shutdown();
    std::process::exit(code);
}

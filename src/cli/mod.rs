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

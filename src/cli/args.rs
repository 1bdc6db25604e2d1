//! Command-line definitions. Used by the binary and by `build.rs`, which
//! renders man pages and shell completions from them, so this file depends
//! only on `clap` and `std`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Shown by `--help` and in tiervault(1).
pub const AFTER_LONG_HELP: &str = "\
Exit codes:
  0    success
  1    error (the message says what failed and what to do)
  2    invalid command line
  3    backup saved, but some files or directories could not be read and were left out
  10   no repository at the given location
  12   wrong password
  13   another installation has written to the tiers (run `tiervault takeover` only if it is gone)

A backup that is interrupted or killed saves no revision; the next one reuses what it stored.

Environment:
  TIERVAULT_PASSWORD_FILE  file whose first line is the repository password
  TIERVAULT_PASSWORD       the repository password
  TIERVAULT_CACHE_DIR      where local caches live (default: $XDG_CACHE_HOME/tiervault or ~/.cache/tiervault)
  TIERVAULT_STATE_DIR      this installation's id and tier revisions (default: $XDG_STATE_HOME/tiervault or ~/.local/state/tiervault)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL
                           S3 tiers' credentials, region and endpoint when the config file does not give them";

#[derive(Parser, Debug)]
#[command(
    name = "tiervault",
    version,
    about = "Deduplicating, encrypted backups you can use as a drive, replicated across storage tiers",
    long_about = "tiervault stores revisions of directory trees in a deduplicated, compressed and encrypted \
repository, and keeps a complete copy of that repository on every storage tier you give it.\n\n\
Example:\n  tiervault -r /srv/vault init\n  tiervault -r /srv/vault backup ~/Documents\n  tiervault -r /srv/vault revisions\n  tiervault -r /srv/vault restore latest --target /tmp/restored",
    after_help = "Exit codes: 0 success, 1 error, 2 bad usage, 3 backup left out unreadable files, 10 no repository, 12 wrong password, 13 another installation writes to the tiers; --help tells more.",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// Repository location, once per tier: a directory (a local disk or a mounted share), sftp://user@host:port/path or s3://bucket/prefix
    #[arg(short = 'r', long = "repo", value_name = "LOCATION", global = true)]
    pub repo: Vec<String>,

    /// TOML file naming the tiers and other settings; its tiers come after any given with -r
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Command that prints the password on its standard output, e.g. "pass show backup"
    #[arg(long, value_name = "COMMAND", global = true)]
    pub password_command: Option<String>,

    /// Directory for the local index and caches (default: $TIERVAULT_CACHE_DIR, then the config file, then the XDG cache dir)
    #[arg(long, value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,

    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,

    /// Print only errors and warnings
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// How long a write waits while every tier is offline, in seconds (default: until one returns)
    #[arg(long, value_name = "SECONDS", global = true)]
    pub wait_limit: Option<u64>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository on every given tier
    ///
    /// Example: tiervault -r /srv/vault init
    Init(InitArgs),
    /// Back up files and directories as a new revision
    ///
    /// Each path is recorded under its absolute path. Unchanged files (same inode, size, mtime and
    /// ctime) are not read again, and identical content is stored once.
    ///
    /// Example: tiervault -r /srv/vault backup /home/alice /etc --tag nightly
    Backup(BackupArgs),
    /// List the revisions in the repository, oldest first
    ///
    /// Example: tiervault -r /srv/vault revisions --json
    Revisions(RevisionsArgs),
    /// List the files in a revision
    ///
    /// Example: tiervault -r /srv/vault ls latest:/home/alice -l
    Ls(LsArgs),
    /// Restore a revision, or a part of it, into a directory
    ///
    /// Files are written in parallel with their owners, modes, times, xattrs, hardlinks and holes.
    /// Every block is verified; a file whose data fails verification is not written.
    ///
    /// Example: tiervault -r /srv/vault restore latest:/home/alice --target /tmp/alice --include '*.pdf'
    Restore(RestoreArgs),
    /// Verify the repository's structure and, with --read-data, every stored byte
    ///
    /// Example: tiervault -r /srv/vault check --read-data
    Check(CheckArgs),
    /// Show every revision as read-only directories under DIR
    ///
    /// Runs in the foreground until Ctrl-C, SIGTERM or `fusermount3 -u DIR`. The layout is
    /// `latest` (a link to the newest revision) and `revisions/<time>/`. New revisions appear
    /// within seconds. Only you can enter the mount unless --allow-other is given.
    ///
    /// Example: tiervault -r /srv/vault mount ~/backups
    Mount(MountArgs),
    /// Show each tier: online or not, its revision, whether it is synchronised and what it lacks,
    /// its latency and throughput, and its last error
    ///
    /// Example: tiervault --config /etc/tiervault.toml tiers --json
    Tiers(TiersArgs),
    /// Bring tiers that missed writes (they were offline) up to date from a synchronised tier
    ///
    /// A write started meanwhile stops the sync; run it again to resume.
    ///
    /// Example: tiervault --config /etc/tiervault.toml sync
    Sync(SyncArgs),
    /// Make this installation the repository's writer, after the machine that wrote before was lost
    ///
    /// Only one installation may write to the tiers; another one that writes is stopped with an
    /// error. Run this on the new machine once the old one is gone for good.
    ///
    /// Example: tiervault --config /etc/tiervault.toml takeover
    Takeover(TakeoverArgs),
    /// Print a shell completion script
    ///
    /// Example: tiervault completions bash > /etc/bash_completion.d/tiervault
    Completions(CompletionsArgs),
    /// Write the man pages into a directory
    ///
    /// Example: tiervault manpages /usr/local/share/man/man1
    Manpages(ManpagesArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Store data unencrypted; anyone who can read a tier can read your files
    #[arg(long)]
    pub insecure_no_encryption: bool,
    /// Argon2id memory cost in KiB for the password key
    #[arg(long, default_value_t = 65536, value_name = "KIB", hide = true)]
    pub kdf_memory: u32,
    /// Argon2id iterations for the password key
    #[arg(long, default_value_t = 3, value_name = "N", hide = true)]
    pub kdf_iterations: u32,
    /// Argon2id lanes for the password key (computed in parallel)
    #[arg(long, default_value_t = 4, value_name = "N", hide = true)]
    pub kdf_lanes: u32,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Tag the revision (repeatable), e.g. --tag daily
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Record this host name instead of the machine's
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Leave out paths matching this glob (repeatable), e.g. --exclude '**/.cache'
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Do not descend into other file systems (their mount points are kept, empty)
    #[arg(short = 'x', long)]
    pub one_file_system: bool,
    /// Threads reading files
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub readers: usize,
}

#[derive(Args, Debug)]
pub struct RevisionsArgs {
    /// Show only revisions of this host
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Show only revisions with this tag
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// REV or REV:PATH; REV is `latest`, a time name such as 2026-11-21T10.00.00Z, or an id prefix
    #[arg(value_name = "REV[:PATH]")]
    pub target: String,
    /// Long listing: type, mode, owner, size and mtime
    #[arg(short, long)]
    pub long: bool,
    /// List only this directory, not everything below it
    #[arg(long)]
    pub no_recursive: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// REV or REV:PATH; REV is `latest`, a time name, or an id prefix. A directory PATH restores its contents
    #[arg(value_name = "REV[:PATH]")]
    pub source: String,
    /// Directory to restore into (created if missing)
    #[arg(long, short = 't', value_name = "DIR")]
    pub target: PathBuf,
    /// Restore only paths matching this glob, and their parents (repeatable)
    #[arg(long = "include", value_name = "GLOB")]
    pub includes: Vec<String>,
    /// Skip paths matching this glob (repeatable)
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Threads writing files
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub workers: usize,
}

#[derive(Args, Debug)]
pub struct TiersArgs {
    /// Also count what each unsynchronised tier lacks (lists every tier)
    #[arg(long)]
    pub lacks: bool,
}

#[derive(Args, Debug)]
pub struct SyncArgs {}

#[derive(Args, Debug)]
pub struct TakeoverArgs {}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read, decrypt and verify every stored blob, on every online tier
    #[arg(long)]
    pub read_data: bool,
    /// With --read-data: replace a damaged or missing pack on one tier with a verified copy from another
    #[arg(long, requires = "read_data")]
    pub repair: bool,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Empty directory to mount on
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Detach once the mount is ready (the command returns; stop it with `fusermount3 -u DIR`)
    #[arg(long)]
    pub daemon: bool,
    /// Let other users enter the mount; the stored modes are enforced (needs user_allow_other in /etc/fuse.conf for non-root)
    #[arg(long)]
    pub allow_other: bool,
    /// Threads serving file-system requests
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub threads: usize,
    /// Memory for decoded chunks, in MiB
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub chunk_cache: usize,
    /// Memory for decoded directories not in use, in MiB
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    pub tree_cache: usize,
    /// How far ahead of a sequential reader to fetch, in MiB (0: off)
    #[arg(long, default_value_t = 4, value_name = "MIB")]
    pub read_ahead: u64,
    /// Threads that read the subdirectories of a listed directory ahead of a walker such as `ls -lR` (0: off)
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub prefetch_threads: usize,
    /// Disk space under the cache dir for data fetched from remote tiers, in MiB (0: off)
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    pub disk_cache: u64,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh or fish
    #[arg(value_name = "SHELL")]
    pub shell: String,
}

#[derive(Args, Debug)]
pub struct ManpagesArgs {
    /// Directory to write tiervault.1 and tiervault-*.1 into
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

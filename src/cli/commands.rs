//! `init`, `backup`, `restore`, `check`, and the generated documentation.

use super::args::{
    BackupArgs, CheckArgs, CompletionsArgs, InitArgs, ManpagesArgs, MountArgs, RestoreArgs,
};
use super::listing::split_spec;
use super::Settings;
use anyhow::{bail, Context};
use serde_json::json;
use std::io::IsTerminal;
use std::time::Instant;
use tiervault::backup::{self, BackupOptions};
use tiervault::format::crypto::KdfParams;
use tiervault::human_bytes;
use tiervault::maintenance::check;
use tiervault::repo::Repository;
use tiervault::restore::{self, RestoreOptions};
use tiervault::timefmt;

include!(concat!(env!("OUT_DIR"), "/man_pages.rs"));

pub fn init(s: &Settings, a: &InitArgs) -> anyhow::Result<i32> {
    let store = s.store()?;
    let pw = if a.insecure_no_encryption {
        None
    } else {
        Some(s.password(true)?)
    };
    let kdf = KdfParams {
        m_cost_kib: a.kdf_memory,
        t_cost: a.kdf_iterations,
        p_cost: a.kdf_lanes,
    };
    let repo = Repository::init(Box::new(store), pw.as_deref(), kdf, &s.cache_root)?;
    if s.json {
        outln!(
            "{}",
            json!({"id": repo.config().id, "tiers": s.locations(), "encryption": repo.config().encryption})
        );
    } else if !s.quiet {
        outln!(
            "created repository {} on {}",
            &repo.config().id[..8],
            s.locations().join(", ")
        );
        if a.insecure_no_encryption {
            outln!("warning: this repository is NOT encrypted");
        } else {
            outln!("keep the password safe: without it the data cannot be read");
        }
    }
    Ok(0)
}

pub fn backup(s: &Settings, a: &BackupArgs) -> anyhow::Result<i32> {
    let repo = s.open()?;
    let started = Instant::now();
    let opts = BackupOptions {
        paths: a.paths.clone(),
        tags: a.tags.clone(),
        host: a.host.clone(),
        excludes: a.excludes.clone(),
        one_file_system: a.one_file_system,
        readers: a.readers,
        progress: !s.quiet && !s.json && std::io::stderr().is_terminal(),
    };
    let sum = backup::run(repo, &opts)?;
    let st = &sum.revision.stats;
    let secs = started.elapsed().as_secs_f64();
    if s.json {
        outln!(
            "{}",
            json!({
                "id": sum.id.to_hex(), "short_id": sum.id.short(), "time": timefmt::rfc3339(sum.revision.time),
                "files": st.files, "dirs": st.dirs, "bytes": st.bytes, "bytes_added": st.bytes_added,
                "blobs_added": st.blobs_added, "stored_bytes": sum.stored_bytes, "bytes_read": sum.bytes_read, "errors": sum.errors,
                "warnings": sum.warnings, "seconds": secs,
            })
        );
    } else if !s.quiet {
        outln!(
            "revision {} saved: {} files, {} dirs, {} processed, {} new ({} stored) in {:.1}s",
            sum.id.short(),
            st.files,
            st.dirs,
            human_bytes(st.bytes),
            human_bytes(st.bytes_added),
            human_bytes(sum.stored_bytes),
            secs
        );
    }
    if sum.errors > 0 {
        errln!(
            "warning: {} file(s) or directories could not be read and are not in this revision",
            sum.errors
        );
        return Ok(3);
    }
    Ok(0)
}

pub fn restore(s: &Settings, a: &RestoreArgs) -> anyhow::Result<i32> {
    let repo = s.open()?;
    let (rev, path) = split_spec(&a.source);
    let (id, r) = repo.resolve(rev)?;
    let path = path.strip_suffix(b"/").unwrap_or(path);
    let start = repo.find_node(&r.tree, path)?;
    let started = Instant::now();
    let opts = RestoreOptions {
        target: a.target.clone(),
        includes: a.includes.clone(),
        excludes: a.excludes.clone(),
        workers: a.workers,
    };
    let sum = restore::run(repo.clone(), &r.tree, start, path, &opts)?;
    report_repairs(&repo);
    if s.json {
        outln!(
            "{}",
            json!({"revision": id.to_hex(), "files": sum.files, "dirs": sum.dirs, "others": sum.others,
                   "bytes": sum.bytes, "errors": sum.errors, "warnings": sum.warnings,
                   "seconds": started.elapsed().as_secs_f64()})
        );
    } else if !s.quiet {
        outln!(
            "restored revision {} to {}: {} files, {} dirs, {} other, {} in {:.1}s",
            id.short(),
            a.target.display(),
            sum.files,
            sum.dirs,
            sum.others,
            human_bytes(sum.bytes),
            started.elapsed().as_secs_f64()
        );
    }
    if sum.errors == 0 && !a.includes.is_empty() && sum.files + sum.dirs + sum.others == 0 {
        bail!(
            "nothing in the revision matched --include {}, so nothing was restored; the patterns match the path inside the revision, the absolute original path, where `*` also matches `/` (say '*.pdf' or '/home/alice/src')",
            a.includes.join(" --include ")
        );
    }
    if sum.errors > 0 {
        bail!(
            "{} item(s) could not be restored; see the errors above",
            sum.errors
        );
    }
    Ok(0)
}

pub fn check(s: &Settings, a: &CheckArgs) -> anyhow::Result<i32> {
    let repo = s.open()?;
    let r = check::run(&repo, a.read_data, a.repair)?;
    if s.json {
        outln!(
            "{}",
            json!({"packs": r.packs, "blobs": r.blobs, "revisions": r.revisions, "trees": r.trees,
                   "packs_read": r.packs_read, "errors": r.errors, "notes": r.notes})
        );
    } else {
        if !s.quiet {
            for n in &r.notes {
                outln!("note: {n}");
            }
        }
        for e in &r.errors {
            errln!("error: {e}");
        }
        if !s.quiet {
            outln!(
                "checked {} revisions, {} trees, {} packs, {} blobs{}: {} error(s)",
                r.revisions,
                r.trees,
                r.packs,
                r.blobs,
                if a.read_data {
                    format!(", read {} packs", r.packs_read)
                } else {
                    String::new()
                },
                r.errors.len()
            );
        }
    }
    if !r.errors.is_empty() {
        bail!(
            "the repository has {} error(s); see docs/RECOVERY.md",
            r.errors.len()
        );
    }
    Ok(0)
}

pub fn completions(a: &CompletionsArgs) -> anyhow::Result<i32> {
    let text = match a.shell.as_str() {
        "bash" => include_str!(concat!(env!("OUT_DIR"), "/completions/tiervault.bash")),
        "zsh" => include_str!(concat!(env!("OUT_DIR"), "/completions/_tiervault")),
        "fish" => include_str!(concat!(env!("OUT_DIR"), "/completions/tiervault.fish")),
        other => bail!("no completions for {other:?}: choose bash, zsh or fish"),
    };
    out!("{text}");
    Ok(0)
}

pub fn manpages(a: &ManpagesArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    for (name, body) in MAN_PAGES {
        std::fs::write(a.dir.join(name), body).with_context(|| format!("cannot write {name}"))?;
    }
    outln!("wrote {} man pages to {}", MAN_PAGES.len(), a.dir.display());
    Ok(0)
}

/// The environment variable naming the descriptor on which a detached
/// mount reports that it is ready.
const READY_FD: &str = "TIERVAULT_MOUNT_READY_FD";

pub fn mount(s: &Settings, a: &MountArgs) -> anyhow::Result<i32> {
    if a.daemon {
        return detach(s, a);
    }
    // A long-lived mount gives memory back, with few arenas, and free
    // memory above 4 MiB at the top of the heap returned at once (the rest
    // by the mount's malloc_trim after each busy second). Chunk buffers
    // (up to 4 MiB) stay in the heap and are reused: mapping each afresh
    // cost a quarter of a million page faults per GiB read.
    // SAFETY: mallopt only adjusts glibc's allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
    // The mount keeps its own local index, so backups can run meanwhile.
    let repo = s.open_named("mount-index")?;
    // Only data from a remote tier is worth keeping on local disk.
    let disk_cache = if a.disk_cache > 0 && repo.store().is_remote() {
        let dir = repo.cache_dir().join("blobs");
        Some(
            tiervault::repo::cache::DiskCache::open(&dir, a.disk_cache << 20)
                .with_context(|| format!("cannot use {} as the blob cache", dir.display()))?,
        )
    } else {
        None
    };
    let opts = tiervault::mount::MountOptions {
        allow_other: a.allow_other,
        threads: a.threads,
        core: tiervault::mount::core::CoreOptions {
            chunk_cache: a.chunk_cache << 20,
            tree_cache: a.tree_cache << 20,
            read_ahead: a.read_ahead << 20,
            prefetch_threads: a.prefetch_threads,
            disk_cache,
            ..Default::default()
        },
    };
    let dir = a.dir.display().to_string();
    let quiet = s.quiet;
    tiervault::mount::run(repo.clone(), &a.dir, opts, || {
        if !quiet {
            errln!("mounted on {dir}; stop with Ctrl-C or `fusermount3 -u {dir}`");
        }
        if let Some(fd) = std::env::var(READY_FD)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
        {
            // SAFETY: the descriptor was handed to us for this one write.
            unsafe {
                libc::write(fd, b"1".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
    })
    .map_err(anyhow::Error::msg)?;
    report_repairs(&repo);
    Ok(0)
}

/// `mount --daemon`: runs the mount again in a new session, waits until it
/// is ready, then returns. Its messages go to `<cache dir>/mount.log`.
fn detach(s: &Settings, a: &MountArgs) -> anyhow::Result<i32> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot create a pipe: {}", std::io::Error::last_os_error());
    }
    let (r, w) = (fds[0], fds[1]);
    std::fs::create_dir_all(&s.cache_root)
        .with_context(|| format!("cannot create {}", s.cache_root.display()))?;
    let log_path = s.cache_root.join("mount.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|x| x != "--daemon")
        .collect();
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(args)
        .env(READY_FD, "3")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::dup2(w, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the mount process")?;
    // SAFETY: our copy of the write end is not needed; the child has its own.
    unsafe { libc::close(w) };
    // SAFETY: r is the read end we own.
    let mut ready = unsafe { <std::fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(r) };
    let mut buf = [0u8; 1];
    if ready.read(&mut buf).unwrap_or(0) == 1 {
        if !s.quiet {
            outln!(
                "mounted on {} (process {}); stop with `fusermount3 -u {}`",
                a.dir.display(),
                child.id(),
                a.dir.display()
            );
        }
        return Ok(0);
    }
    // It ended without mounting: its exit code is ours (12 for a wrong
    // password, 10 for no repository), with its last message.
    let code = tiervault::wait_bounded(&mut child, std::time::Duration::from_secs(5))
        .and_then(|st| st.code())
        .unwrap_or(1);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    errln!(
        "tiervault: error: the mount did not start: {}",
        log.trim()
            .lines()
            .last()
            .unwrap_or("no message")
            .trim_start_matches("tiervault: error: ")
    );
    Ok(if code == 0 { 1 } else { code })
}

/// Damaged copies that reads fell over from: named, with what to do.
pub fn report_repairs(repo: &tiervault::repo::Repository) {
    for (tier, key) in repo.tiers().repairs() {
        errln!(
            "warning: tier {tier} holds a damaged copy of {key}; the data came from another tier. Run `tiervault check --read-data --repair` (with the same tiers) to replace it with a verified copy"
        );
    }
}

//! Bad input gets a clear one-line error, a documented exit code, and
//! nothing is lost.

mod common;

use common::{is_root, json, Env};
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Command;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A one-line message, no panic, no backtrace.
fn assert_clean_error(o: &std::process::Output, code: i32, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {e}");
    assert!(e.contains(needle), "expected {needle:?} in: {e}");
    assert!(
        !e.contains("panicked") && !e.contains("RUST_BACKTRACE"),
        "{e}"
    );
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e}");
}

#[test]
fn wrong_password_missing_repository_and_no_password() {
    let env = Env::new();
    env.init();
    let o = env
        .cmd()
        .env("TIERVAULT_PASSWORD", "wrong")
        .arg("revisions")
        .output()
        .unwrap();
    assert_clean_error(&o, 12, "wrong password");
    // On a machine that never opened the repository, a wrong password
    // leaves no local index behind; the right one then opens it.
    let fresh = env.path("fresh-cache");
    let o = env
        .cmd()
        .env("TIERVAULT_CACHE_DIR", &fresh)
        .env("TIERVAULT_PASSWORD", "wrong")
        .arg("revisions")
        .output()
        .unwrap();
    assert_clean_error(&o, 12, "wrong password");
    let left: Vec<_> = fs::read_dir(&fresh)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let o = env
        .cmd()
        .env("TIERVAULT_CACHE_DIR", &fresh)
        .arg("revisions")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let o = Command::new(env!("CARGO_BIN_EXE_tiervault"))
        .args(["-r", "/nonexistent/repo", "revisions"])
        .output()
        .unwrap();
    assert_clean_error(&o, 10, "tiervault -r /nonexistent/repo init");

    let not_repo = env.path("just-a-dir");
    fs::create_dir_all(&not_repo).unwrap();
    fs::write(not_repo.join("config"), "this is not a tiervault config").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_tiervault"))
        .args(["-r", not_repo.to_str().unwrap(), "revisions"])
        .env("TIERVAULT_PASSWORD", "x")
        .output()
        .unwrap();
    assert_clean_error(&o, 10, "no tiervault repository");

    let o = env
        .cmd()
        .env_remove("TIERVAULT_PASSWORD")
        .arg("revisions")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_clean_error(&o, 1, "TIERVAULT_PASSWORD_FILE");

    let o = env.run(["init"]);
    assert_clean_error(&o, 1, "already exists");

    let o = Command::new(env!("CARGO_BIN_EXE_tiervault"))
        .arg("revisions")
        .output()
        .unwrap();
    assert_clean_error(&o, 1, "-r LOCATION");
}

#[test]
fn password_file_and_command() {
    let env = Env::new();
    env.init();
    let pf = env.path("pw");
    fs::write(&pf, format!("{}\n", common::PASSWORD)).unwrap();
    let o = env
        .cmd()
        .env_remove("TIERVAULT_PASSWORD")
        .env("TIERVAULT_PASSWORD_FILE", &pf)
        .arg("revisions")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env
        .cmd()
        .env_remove("TIERVAULT_PASSWORD")
        .args([
            "--password-command",
            &format!("echo '{}'", common::PASSWORD),
            "revisions",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env
        .cmd()
        .env_remove("TIERVAULT_PASSWORD")
        .args(["--password-command", "false", "revisions"])
        .output()
        .unwrap();
    assert_clean_error(&o, 1, "--password-command failed");
}

#[test]
fn unencrypted_only_with_explicit_flag() {
    let env = Env::new();
    env.ok(["init", "--insecure-no-encryption"]);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("secret"), "plain for all to see").unwrap();
    // No password needed to use it.
    let o = Command::new(env!("CARGO_BIN_EXE_tiervault"))
        .args([
            "-r",
            env.repo.to_str().unwrap(),
            "backup",
            src.to_str().unwrap(),
        ])
        .env("TIERVAULT_CACHE_DIR", &env.cache)
        .env("TIERVAULT_STATE_DIR", env.dir.path().join("state"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = json(&fs::read_to_string(env.repo.join("config")).unwrap());
    assert_eq!(cfg["encryption"], "none");
    // The default is encrypted.
    let env2 = Env::new();
    env2.init();
    let cfg = json(&fs::read_to_string(env2.repo.join("config")).unwrap());
    assert_eq!(cfg["encryption"], "xchacha20poly1305");
}

/// Drops root's power to bypass file permissions, so a mode-000 file is
/// really unreadable for the child.
fn without_dac_override(c: &mut Command) -> &mut Command {
    // SAFETY: prctl in the child before exec touches no shared state.
    unsafe {
        c.pre_exec(|| {
            for cap in [
                1, /* CAP_DAC_OVERRIDE */
                2, /* CAP_DAC_READ_SEARCH */
            ] {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    }
}

#[test]
fn unreadable_entries_are_reported_skipped_and_exit_3() {
    assert!(is_root(), "run the suite as root");
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(src.join("locked-dir")).unwrap();
    fs::write(src.join("readable"), "fine").unwrap();
    fs::write(src.join("locked-file"), "secret").unwrap();
    fs::write(src.join("locked-dir/inner"), "secret").unwrap();
    fs::set_permissions(
        src.join("locked-file"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    fs::set_permissions(
        src.join("locked-dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let o = without_dac_override(env.cmd().args(["backup", src.to_str().unwrap()]))
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{e}");
    assert!(
        e.contains("locked-file") && e.contains("locked-dir") && e.contains("Permission denied"),
        "{e}"
    );
    let dst = env.path("dst");
    env.restore(&format!("latest:{}", src.display()), &dst);
    assert_eq!(fs::read(dst.join("readable")).unwrap(), b"fine");
    assert!(!dst.join("locked-file").exists());
    env.ok(["check"]);
}

#[test]
fn an_unreadable_sole_path_saves_nothing_and_says_so() {
    assert!(is_root(), "run the suite as root");
    let env = Env::new();
    env.init();
    let src = env.path("locked");
    fs::create_dir_all(&src).unwrap();
    fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let o = without_dac_override(env.cmd().args(["backup", src.to_str().unwrap()]))
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("none of the given paths could be read") && !e.contains("internal error"),
        "{e}"
    );
    assert_eq!(
        json(&env.ok(["--json", "revisions"]))
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn one_file_system_applies_to_each_backup_path() {
    assert!(is_root(), "run the suite as root (mounts tmpfs)");
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let other = env.path("other-fs");
    fs::create_dir_all(src.join("mnt")).unwrap();
    fs::create_dir_all(&other).unwrap();
    fs::write(src.join("here"), "same fs").unwrap();
    for m in [src.join("mnt"), other.clone()] {
        assert!(Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&m)
            .status()
            .unwrap()
            .success());
    }
    let _g1 = Mounted(src.join("mnt"));
    let _g2 = Mounted(other.clone());
    fs::write(src.join("mnt/inside"), "another fs").unwrap();
    fs::write(other.join("root-file"), "a backup path on its own fs").unwrap();
    env.ok([
        "backup",
        "-x",
        src.to_str().unwrap(),
        other.to_str().unwrap(),
    ]);
    let dst = env.path("dst");
    env.ok(["restore", "latest", "--target", dst.to_str().unwrap()]);
    let r = |p: &std::path::Path| dst.join(p.strip_prefix("/").unwrap());
    assert!(r(&src.join("here")).exists());
    assert!(
        r(&src.join("mnt")).is_dir(),
        "the mount point itself is kept"
    );
    assert!(
        !r(&src.join("mnt/inside")).exists(),
        "-x crossed into a mounted file system"
    );
    assert_eq!(
        fs::read(r(&other.join("root-file"))).unwrap(),
        b"a backup path on its own fs"
    );
}

#[test]
fn a_file_changing_while_read_is_reported() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let f = src.join("growing.log");
    fs::write(&f, vec![1u8; 64 << 20]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let f2 = f.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut h = fs::OpenOptions::new().append(true).open(&f2).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !s2.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline
        {
            h.write_all(&[2u8; 4096]).unwrap();
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    });
    let o = env.run(["backup", src.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("changed while it was read"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn corrupt_data_fails_loudly_and_check_names_it() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    // Incompressible, so the data blob fills most of the pack and the
    // trees (written after it) stay intact.
    let data = common::random_bytes(2 << 20, 7);
    fs::write(src.join("f"), &data).unwrap();
    env.ok(["backup", src.to_str().unwrap()]);
    // Flip one byte a third into the pack, inside the data blob.
    let mut packs: Vec<_> = common::files_under(&env.repo.join("data"));
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let pack = packs.last().unwrap();
    let mut bytes = fs::read(pack).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x55;
    fs::write(pack, &bytes).unwrap();

    let dst = env.path("dst");
    let o = env.try_restore(&format!("latest:{}", src.display()), &dst);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
    assert!(
        !dst.join("f").exists(),
        "a file with wrong bytes was left behind"
    );

    let o = env.run(["check", "--read-data"]);
    assert_eq!(o.status.code(), Some(1));
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr(&o).contains(name),
        "check did not name {name}: {}",
        stderr(&o)
    );
    // The structural check alone does not read data and passes.
    env.ok(["check"]);
}

/// Unmounts the tmpfs even when the test fails.
struct Mounted(std::path::PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A tmpfs of `size` at `env`'s `small`, unmounted when the guard goes.
fn small_disk(env: &Env, size: &str) -> (std::path::PathBuf, Mounted) {
    assert!(is_root(), "run the suite as root (mounts a small tmpfs)");
    let small = env.path("small");
    fs::create_dir_all(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success());
    (small.clone(), Mounted(small))
}

/// Fills the file system of `dir` up to `leave` bytes free, with one file.
fn fill(dir: &std::path::Path, leave: u64) {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let st = Command::new("fallocate")
        .args(["-l", &avail.saturating_sub(leave).to_string()])
        .arg(dir.join("filler"))
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_full_tier_gives_a_clear_error_and_loses_nothing() {
    let env = Env::new();
    let (small, _guard) = small_disk(&env, "6m");
    let repo = small.join("repo");
    let tv = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tiervault"))
            .arg("-r")
            .arg(&repo)
            .args(args)
            .env("TIERVAULT_CACHE_DIR", &env.cache)
            .env("TIERVAULT_PASSWORD", common::PASSWORD)
            .output()
            .unwrap()
    };
    assert!(
        tv(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"])
            .status
            .success()
    );
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("small"), "fits").unwrap();
    assert!(tv(&["backup", src.to_str().unwrap()]).status.success());
    let big = common::random_bytes(20 << 20, 1);
    fs::write(src.join("big"), &big).unwrap();
    let o = tv(&["backup", src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is full"), "{}", stderr(&o));
    // The earlier revision is intact and no partial revision exists.
    let revs = json(&String::from_utf8(tv(&["--json", "revisions"]).stdout).unwrap());
    assert_eq!(revs.as_array().unwrap().len(), 1);
    assert!(tv(&["check", "--read-data"]).status.success());
}

/// `takeover` (or any write) on a tier that cannot be written, such as a
/// share mounted read-only: no tier takes the new revision, so the command
/// fails saying nothing was written, instead of announcing success and
/// leaving the tier as it was.
#[test]
fn takeover_on_a_read_only_tier_fails_and_says_so() {
    assert!(is_root(), "run the suite as root");
    let env = Env::new();
    env.init();
    let before = fs::read(env.repo.join("tierstate")).unwrap();
    let mode = |p: &std::path::Path, m: u32| {
        fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    mode(&env.repo, 0o555);
    let o = without_dac_override(env.cmd().arg("takeover"))
        .output()
        .unwrap();
    mode(&env.repo, 0o755);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("no tier could store tierstate"), "{e}");
    assert!(!e.contains("the other tiers have it"), "{e}");
    assert_eq!(fs::read(env.repo.join("tierstate")).unwrap(), before);
    // Writable again, the same takeover goes through.
    env.ok(["takeover"]);
}

/// A pack deleted from the only tier: the next backup says so, stores the
/// data it still finds again, and rewrites the index files that named the
/// pack, so that a machine with a new cache finds every blob of the latest
/// revision where it is now (before, such a restore failed at random with
/// "data/… not found").
#[test]
fn a_lost_pack_is_stored_again_and_the_index_files_forget_it() {
    let env = Env::new();
    let src = env.backed_up(&[("f1", &common::random_bytes(2 << 20, 11))]);
    fs::write(src.join("f2"), common::random_bytes(1 << 20, 12)).unwrap();
    env.ok(["backup", src.to_str().unwrap()]);
    let mut packs: Vec<_> = common::files_under(&env.repo.join("data"));
    packs.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let lost = packs.last().unwrap();
    fs::remove_file(lost).unwrap();

    let o = env.run(["backup", src.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("rewritten without them"),
        "{}",
        stderr(&o)
    );
    let name = lost.file_name().unwrap().to_str().unwrap();
    for round in 0..4 {
        let dst = env.path(&format!("dst-{round}"));
        let o = env
            .cmd()
            .env("TIERVAULT_CACHE_DIR", env.path(&format!("cache-{round}")))
            .args(["restore", &format!("latest:{}", src.display()), "--target"])
            .arg(&dst)
            .output()
            .unwrap();
        assert!(o.status.success(), "round {round}: {}", stderr(&o));
        common::tree::assert_same(&src, &dst, false);
    }
    // No index file names the lost pack any more.
    let o = env.run(["check"]);
    assert!(!stderr(&o).contains(name), "{}", stderr(&o));
}

/// A directory whose listing (tree) is damaged on the only tier: restore
/// names that directory, restores everything else, and exits with 1.
#[test]
fn a_damaged_directory_listing_fails_that_directory_alone() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    for d in ["a", "b", "b/deeper"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    fs::write(src.join("top"), b"top").unwrap();
    fs::write(src.join("a/one"), common::random_bytes(100 << 10, 1)).unwrap();
    fs::write(src.join("b/two"), b"two").unwrap();
    fs::write(src.join("b/deeper/three"), b"three").unwrap();
    env.ok(["backup", src.to_str().unwrap()]);
    let repo = env.library();
    let mut tree = repo.revisions().unwrap()[0].1.tree;
    for name in src
        .strip_prefix("/")
        .unwrap()
        .components()
        .chain(std::iter::once(std::path::Component::Normal("b".as_ref())))
    {
        let nodes = repo.load_tree(&tree).unwrap();
        let want = name.as_os_str().as_encoded_bytes();
        tree = nodes
            .iter()
            .find(|n| n.name == want)
            .unwrap()
            .subtree()
            .unwrap();
    }
    common::damage_blob(&repo, &env.repo, &tree);
    drop(repo);

    let dst = env.path("dst");
    let o = env
        .cmd()
        .env("TIERVAULT_CACHE_DIR", env.path("fresh-cache"))
        .args(["restore", &format!("latest:{}", src.display()), "--target"])
        .arg(&dst)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}: its listing", dst.join("b").display())),
        "{err}"
    );
    assert_eq!(fs::read(dst.join("top")).unwrap(), b"top");
    assert_eq!(
        fs::read(dst.join("a/one")).unwrap(),
        fs::read(src.join("a/one")).unwrap()
    );
    assert!(!dst.join("b/two").exists());
}

/// A location where `init` was cut off after the key file but before the
/// config: commands say so (exit 10) instead of suggesting an `init` that
/// would be refused.
#[test]
fn a_half_initialised_location_says_what_happened() {
    let env = Env::new();
    env.init();
    fs::remove_file(env.repo.join("config")).unwrap();
    let o = env.run(["revisions"]);
    assert_clean_error(&o, 10, "an `init` there was cut off");
}

/// Two hard links to a file whose data is damaged on the only tier: the
/// file fails with its error, and the link says why it is missing.
#[test]
fn a_hard_link_to_a_file_that_failed_says_why() {
    let env = Env::new();
    env.init();
    let src = env.source(&[("a", &common::random_bytes(200 << 10, 5))]);
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    env.ok(["backup", src.to_str().unwrap()]);
    let repo = env.library();
    let chunk = common::chunk_of(&repo, &src.join("a"));
    common::damage_blob(&repo, &env.repo, &chunk);
    drop(repo);
    let dst = env.path("dst");
    let o = env.try_restore(&format!("latest:{}", src.display()), &dst);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("as the file it is a hard link of"), "{err}");
    assert!(!err.contains("No such file"), "{err}");
}

/// The local cache's disk is full: commands stop with a clear error (they
/// had aborted inside RocksDB, exit 134); a disk that fills up during a
/// backup fails that backup, or only its record of unchanged files; and
/// once there is room again, nothing is missing.
#[test]
fn a_full_cache_disk_gives_a_clear_error_and_loses_nothing() {
    let mut env = Env::new();
    let (small, _guard) = small_disk(&env, "48m");
    env.cache = small.join("cache");
    let src = env.backed_up(&[("first", b"first")]);
    let revisions = |env: &Env| {
        let o = env.run(["--json", "revisions"]);
        json(&String::from_utf8_lossy(&o.stdout))
            .as_array()
            .unwrap()
            .len()
    };
    fill(&small, 4096);
    assert_clean_error(&env.run(["revisions"]), 1, "--cache-dir");
    let o = env.run([std::ffi::OsStr::new("backup"), src.as_os_str()]);
    assert_clean_error(&o, 1, "is full");
    fs::remove_file(small.join("filler")).unwrap();
    assert_eq!(revisions(&env), 1);
    // Room to open the cache, not to record 40,000 new files in it.
    for i in 0..40_000 {
        let d = src.join(format!("d{}", i % 300));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    fill(&small, 8_500_000);
    let o = env.run([std::ffi::OsStr::new("backup"), src.as_os_str()]);
    let e = stderr(&o);
    eprintln!("a backup on a disk filling up: {}: {e}", o.status);
    assert!(e.contains("is full") && !e.contains("panicked"), "{e}");
    fs::remove_file(small.join("filler")).unwrap();
    match o.status.code() {
        // The revision was stored; the record of unchanged files was not.
        Some(0) => {
            assert!(e.contains("warning: revision"), "{e}");
            assert_eq!(revisions(&env), 2);
        }
        Some(1) => assert_eq!(revisions(&env), 1, "{e}"),
        other => panic!("exit {other:?}: {e}"),
    }
    env.ok([std::ffi::OsStr::new("backup"), src.as_os_str()]);
    env.ok(["check", "--read-data"]);
    let dst = env.path("restored");
    env.restore("latest", &dst);
    let back = dst.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read(back.join("d7/f1507")).unwrap(), b"file 1507");
    assert_eq!(fs::read_dir(back.join("d299")).unwrap().count(), 133);
}

/// A restore into a disk that fills up stops with one error saying so
/// (it had printed one error per remaining file), and every file it left
/// there is whole.
#[test]
fn a_restore_into_a_full_disk_stops_with_one_error() {
    let env = Env::new();
    let (small, _guard) = small_disk(&env, "2m");
    let mut files = Vec::new();
    for i in 0..8 {
        files.push((format!("big-{i}"), common::random_bytes(400 << 10, i)));
    }
    for i in 0..500 {
        files.push((
            format!("small-{i:03}"),
            format!("small file {i}").into_bytes(),
        ));
    }
    let named: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let src = env.backed_up(&named);
    let target = small.join("restored");
    let o = env.try_restore("latest", &target);
    assert_clean_error(&o, 1, "is full");
    assert!(stderr(&o).contains("--target"), "{}", stderr(&o));
    let back = target.join(src.strip_prefix("/").unwrap());
    let mut left = 0;
    for e in fs::read_dir(&back).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            fs::read(e.path()).unwrap(),
            fs::read(src.join(e.file_name())).unwrap(),
            "{:?}",
            e.file_name()
        );
        left += 1;
    }
    assert!(left > 0 && left < files.len(), "{left} files restored");
    // Elsewhere, the whole tree comes back.
    let dst = env.path("elsewhere");
    env.restore("latest", &dst);
    let back = dst.join(src.strip_prefix("/").unwrap());
    assert_eq!(fs::read_dir(&back).unwrap().count(), files.len());
}

/// A state directory that cannot hold this installation's id stops the
/// commands that write, before they write anything. A new id made on every
/// run had made each backup a stranger's to the next (exit 13 for good,
/// and `takeover` only moved it to the real installation). A damaged id
/// says so.
#[test]
fn an_unusable_state_directory_stops_writes_with_a_clear_error() {
    let env = Env::new();
    let not_a_dir = env.path("state-file");
    fs::write(&not_a_dir, "x").unwrap();
    let with_bad_state = |args: &[&std::ffi::OsStr]| {
        env.cmd()
            .env("TIERVAULT_STATE_DIR", &not_a_dir)
            .args(args)
            .output()
            .unwrap()
    };
    let o = with_bad_state(&[
        "init".as_ref(),
        "--kdf-memory".as_ref(),
        "1024".as_ref(),
        "--kdf-iterations".as_ref(),
        "1".as_ref(),
    ]);
    assert_clean_error(&o, 1, "set TIERVAULT_STATE_DIR");
    assert!(!env.repo.exists(), "init wrote before failing");
    env.init();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    let tierstate = fs::read(env.repo.join("tierstate")).unwrap();
    for args in [
        vec!["backup".as_ref(), src.as_os_str()],
        vec!["takeover".as_ref()],
    ] {
        let o = with_bad_state(&args);
        assert_clean_error(&o, 1, "cannot record this installation's id");
    }
    assert_eq!(fs::read(env.repo.join("tierstate")).unwrap(), tierstate);
    // The real installation carries on.
    env.ok([std::ffi::OsStr::new("backup"), src.as_os_str()]);
    fs::write(env.path("state/installation"), b"\0\x01 not an id").unwrap();
    let o = env.run([std::ffi::OsStr::new("backup"), src.as_os_str()]);
    assert_clean_error(&o, 1, "is damaged");
}

/// One directory named twice, a file given as a tier (a config file passed
/// to `-r`) and an empty location each get a clear error before anything
/// is written. The first had made two "synchronised" tiers of one copy;
/// the second blamed the network; the third initialised the working
/// directory.
#[test]
fn tier_locations_given_wrongly_get_a_clear_error() {
    let env = Env::new();
    let repo = env.repo.to_str().unwrap();
    let cwd = env.path("cwd");
    fs::create_dir_all(&cwd).unwrap();
    let run = |locations: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tiervault"));
        for l in locations {
            c.arg("-r").arg(l);
        }
        c.args(["init", "--kdf-memory", "1024", "--kdf-iterations", "1"])
            .current_dir(&cwd)
            .env("TIERVAULT_CACHE_DIR", &env.cache)
            .env("TIERVAULT_STATE_DIR", env.path("state"))
            .env("TIERVAULT_PASSWORD", common::PASSWORD)
            .output()
            .unwrap()
    };
    let twice = format!("{repo}/");
    assert_clean_error(&run(&[repo, &twice]), 1, "name each tier once");
    let dotted = format!("{}/./repo", env.dir.path().display());
    assert_clean_error(&run(&[repo, &dotted]), 1, "name each tier once");
    let file = env.path("home.toml");
    fs::write(&file, "").unwrap();
    assert_clean_error(&run(&[file.to_str().unwrap()]), 1, "not a directory");
    assert_clean_error(&run(&[""]), 1, "location is empty");
    assert!(!env.repo.exists());
    assert_eq!(fs::read_dir(&cwd).unwrap().count(), 0);
}

/// One lost pack fails every file in it, but a restore says why for the
/// first 20 only, then how many more failed (it had printed a line per
/// file: 10,777 for 20,000 files).
#[test]
fn a_restore_that_fails_many_files_for_one_cause_says_so_briefly() {
    let env = Env::new();
    let files: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("f{i:03}"), common::random_bytes(3000, i)))
        .collect();
    let named: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    env.backed_up(&named);
    // The listing is cached; the pack holding every file goes.
    env.ok(["ls", "latest"]);
    let packs = common::files_under(&env.repo.join("data"));
    assert_eq!(packs.len(), 1, "{packs:?}");
    fs::remove_file(&packs[0]).unwrap();
    let dst = env.path("restored");
    let o = env.try_restore("latest", &dst);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    let per_file = e
        .lines()
        .filter(|l| l.contains("the file was not restored"))
        .count();
    assert_eq!(per_file, 20, "{e}");
    assert!(e.contains("and 80 more item(s) not restored"), "{e}");
    assert!(e.contains("100 item(s) could not be restored"), "{e}");
}

/// A cache directory that cannot be made or written says to choose
/// another, not to delete it (which would not help).
#[test]
fn an_unwritable_cache_directory_says_to_choose_another() {
    let mut env = Env::new();
    env.init();
    let file = env.path("not-a-dir");
    fs::write(&file, "x").unwrap();
    env.cache = file;
    let o = env.run(["revisions"]);
    assert_clean_error(&o, 1, "cannot be written");
    assert!(!stderr(&o).contains("delete"), "{}", stderr(&o));
}

/// An `--include` that matches nothing fails saying so (it had reported
/// "0 files" and exit 0), and a directory in the way of a file is named
/// as such (it had said "File exists").
#[test]
fn a_restore_that_matches_nothing_or_meets_a_directory_says_so() {
    let env = Env::new();
    let src = env.backed_up(&[("a.txt", b"a"), ("b.txt", b"b")]);
    let dst = env.path("restored");
    let o = env
        .cmd()
        .args(["restore", "latest", "--include", "*.pdf", "--target"])
        .arg(&dst)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("nothing in the revision matched --include *.pdf"),
        "{}",
        stderr(&o)
    );
    let in_the_way = dst.join(src.strip_prefix("/").unwrap()).join("a.txt");
    fs::create_dir_all(&in_the_way).unwrap();
    let o = env.try_restore("latest", &dst);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("a directory of that name is in the way"),
        "{}",
        stderr(&o)
    );
    assert_eq!(fs::read(in_the_way.with_file_name("b.txt")).unwrap(), b"b");
}

/// Damage in the local index (bit rot under the cache) fails only the
/// lookups that meet it, each saying the cache is rebuilt; the next command
/// rebuilds it from the tiers and restores everything.
#[test]
fn a_damaged_cache_is_rebuilt_from_the_tiers_by_the_next_command() {
    let env = Env::new();
    let files: Vec<(String, Vec<u8>)> = (0..2000)
        .map(|i| (format!("f{i}"), common::random_bytes(100 + i * 7, i as u64)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let src = env.backed_up(&refs);
    // Flip bytes in the first half of the large table files (the blob
    // table and the backup's file cache): their data blocks are read by
    // lookups, their index blocks, at the end, when the index opens.
    let tables: Vec<_> = common::files_under(&env.cache)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .filter(|p| fs::metadata(p).unwrap().len() > 64 << 10)
        .collect();
    assert_eq!(tables.len(), 2, "{tables:?}");
    for t in &tables {
        let mut b = fs::read(t).unwrap();
        let half = b.len() / 2;
        for i in (100..half).step_by(1000) {
            b[i] ^= 0xff;
        }
        fs::write(t, b).unwrap();
    }
    let first = env.try_restore("latest", &env.path("r1"));
    let e = stderr(&first);
    assert_eq!(first.status.code(), Some(1), "{e}");
    assert!(
        e.contains("is damaged") && e.contains("run the command again"),
        "{e}"
    );
    let dst = env.path("r2");
    let second = env.try_restore("latest", &dst);
    let e = stderr(&second);
    assert!(second.status.success(), "{e}");
    assert!(e.contains("rebuilding it from the tiers"), "{e}");
    for (name, bytes) in &files {
        let got = fs::read(dst.join(src.strip_prefix("/").unwrap()).join(name)).unwrap();
        assert!(got == *bytes, "{name} differs");
    }
    // Rebuilt once: the command after it opens the cache without a word.
    let o = env.run(["revisions"]);
    assert!(o.status.success() && o.stderr.is_empty(), "{}", stderr(&o));
    // Damage that stops the index from opening is mended at once.
    let current = tables[0].with_file_name("CURRENT");
    fs::write(&current, "garbage").unwrap();
    let dst = env.path("r3");
    let third = env.try_restore("latest", &dst);
    let e = stderr(&third);
    assert!(third.status.success(), "{e}");
    assert!(e.contains("rebuilding it from the tiers"), "{e}");
    assert_eq!(common::files_under(&dst).len(), files.len());
}

//! Tiers on real servers on 127.0.0.1: OpenSSH's sshd (SFTP) and s3s-fs
//! (S3). Servers are stopped and started under running commands to test
//! the tier rules: writes complete on the tiers that are up, a returning
//! tier is synchronised, a write waits while every tier is down, a second
//! installation is stopped, and one remote tier is enough to recover.

mod common;

use common::servers::{Sshd, S3, S3_KEY, S3_SECRET};
use common::tree::{assert_same, build_nasty, Shape};
use common::{json, random_bytes, Env, PASSWORD};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary on a chosen list of tiers and cache dir.
struct Tv {
    tiers: Vec<String>,
    cache: PathBuf,
}

impl Tv {
    fn new(tiers: &[&str], cache: &Path) -> Self {
        Self {
            tiers: tiers.iter().map(|t| t.to_string()).collect(),
            cache: cache.to_path_buf(),
        }
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tiervault"));
        for t in &self.tiers {
            c.arg("-r").arg(t);
        }
        // Each cache dir stands for one machine, with its own state.
        c.env("TIERVAULT_CACHE_DIR", &self.cache)
            .env("TIERVAULT_STATE_DIR", self.cache.with_extension("state"))
            .env("TIERVAULT_PASSWORD", PASSWORD)
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env_remove("TIERVAULT_PASSWORD_FILE");
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        common::assert_ok(&self.run(args), &format!("tiervault {args:?}"))
    }
    /// Starts `backup SRC` and returns once a pack reached `tier_dir`.
    fn backup_until_pack(&self, src: &Path, tier_dir: &Path) -> std::process::Child {
        self.backup_until_pack_as(self.cmd(), src, tier_dir)
    }
    /// As `backup_until_pack`, with `cmd` (this environment's binary).
    fn backup_until_pack_as(
        &self,
        mut cmd: Command,
        src: &Path,
        tier_dir: &Path,
    ) -> std::process::Child {
        let child = cmd
            .args(["backup", s(src)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !has_pack(tier_dir) {
            assert!(
                Instant::now() < deadline,
                "no pack reached {}",
                tier_dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }
    fn init(&self) {
        self.ok(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    }
    /// Restores `latest` to `dst` on a fresh cache and compares with `src`.
    fn restores(&self, src: &Path, dst: &Path) {
        let spec = format!("latest:{}", src.display());
        self.ok(&["restore", &spec, "--target", dst.to_str().unwrap()]);
        assert_same(src, dst, false);
    }
}

fn tier_status(tv: &Tv) -> Vec<serde_json::Value> {
    json(&tv.ok(&["--json", "tiers"]))
        .as_array()
        .unwrap()
        .clone()
}

/// Whether a pack (a finished one, not a temporary file) reached `tier`'s
/// directory; tolerant of a directory changing while it is read.
fn has_pack(tier: &Path) -> bool {
    let Ok(dirs) = std::fs::read_dir(tier.join("data")) else {
        return false;
    };
    dirs.flatten().any(|d| {
        std::fs::read_dir(d.path()).is_ok_and(|files| {
            files
                .flatten()
                .any(|f| !f.file_name().to_string_lossy().starts_with('.'))
        })
    })
}

/// Asserts `out` is the "another installation" stop (exit 13); returns
/// its stderr.
fn stopped_as_second_installation(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(13), "{err}");
    assert!(err.contains("another installation"), "{err}");
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn sftp_and_s3_tiers_each_hold_a_complete_copy() {
    let env = Env::new();
    let sshd = Sshd::start(env.dir.path());
    let s3 = S3::start(env.dir.path());
    let sftp_dir = env.path("sftp-tier");
    let (local, sftp, s3loc) = (
        env.path("local"),
        sshd.location(&sftp_dir),
        s3.location("vault"),
    );
    let src = env.path("src");
    build_nasty(&src, &Shape::small());
    let all = Tv::new(&[s(&local), &sftp, &s3loc], &env.path("cache"));
    all.init();
    all.ok(&["backup", s(&src)]);
    // Temporaries as a write cut off before its rename leaves them: one a
    // day old, and one as fresh as a write still under way elsewhere.
    let pack_dir = std::fs::read_dir(sftp_dir.join("data"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (stale, fresh) = (pack_dir.join(".tmp-a-1"), pack_dir.join(".tmp-b-2"));
    for p in [&stale, &fresh] {
        std::fs::write(p, b"cut off").unwrap();
    }
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(25 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(day_ago)
        .unwrap();
    // Every tier alone, on a fresh cache, restores and checks clean.
    for (i, tier) in [s(&local), &sftp, &s3loc].iter().enumerate() {
        let alone = Tv::new(&[tier], &env.path(&format!("cache-{i}")));
        alone.ok(&["check", "--read-data"]);
        alone.restores(&src, &env.path(&format!("restored-{i}")));
    }
    // The SFTP tier's listing removed the stale temporary only.
    assert!(!stale.exists() && fresh.exists());
    // What the tiers show.
    let st = tier_status(&all);
    assert_eq!(st.len(), 3);
    for t in &st {
        assert_eq!(t["online"], true, "{t}");
        assert_eq!(t["synchronised"], true, "{t}");
        assert_eq!(t["revision"], st[0]["revision"], "{st:?}");
        assert!(t["latency_ms"].as_f64().is_some(), "{t}");
    }
    // Objects really are on the servers' disks.
    assert!(sftp_dir.join("config").exists());
    assert!(s3.dir("vault").join("config").exists());
    no_ssh_left_for(&sshd);
}

/// Asserts that every command closed its SFTP connections: no `ssh`
/// process is left for `sshd`'s port. A master told to exit by the last
/// command may take a while to go while the other tests load the machine.
fn no_ssh_left_for(sshd: &Sshd) {
    let port = format!("-p {} ", sshd.port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut left = ssh_processes(&port);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = ssh_processes(&port);
    }
    assert!(left.is_empty(), "ssh processes left behind: {left:?}");
}

/// The command lines of the `ssh` processes whose command line has `port`
/// (`-p N `).
fn ssh_processes(port: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|d| std::fs::read(d.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("ssh ") && c.contains(port))
        .collect()
}

/// Each pooled SFTP connection has its own `ssh` master. Closing one while
/// the process exits raced with removing its control socket, and about one
/// short command in twenty, run several at once, left its master running
/// for good. Many commands at once, each closing its connections, leave
/// none.
#[test]
fn commands_run_side_by_side_leave_no_ssh_master_behind() {
    let env = Env::new();
    let sshd = Sshd::start(env.dir.path());
    let loc = sshd.location(&env.path("sftp-tier"));
    let tv = Tv::new(&[&loc], &env.path("cache"));
    tv.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("f{i}")), random_bytes(256 << 10, i)).unwrap();
    }
    tv.ok(&["backup", s(&src)]);
    std::thread::scope(|scope| {
        for k in 0..4 {
            let tv = Tv::new(&[&loc], &env.path(&format!("cache-{k}")));
            scope.spawn(move || {
                for _ in 0..8 {
                    tv.ok(&["check", "--read-data"]);
                }
            });
        }
    });
    no_ssh_left_for(&sshd);
}

/// `src` with 96 MiB in 12 files: a backup long enough to be cut off
/// once its first pack is stored.
fn big_source(env: &Env) -> PathBuf {
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        std::fs::write(src.join(format!("f{i}")), random_bytes(8 << 20, i)).unwrap();
    }
    src
}

/// A tiervault killed mid-backup cannot close its `ssh` masters; the next
/// command that opens an SFTP tier closes them.
#[test]
fn masters_left_by_a_killed_command_are_closed_by_the_next() {
    let env = Env::new();
    let sshd = Sshd::start(env.dir.path());
    let sftp_dir = env.path("sftp-tier");
    let tv = Tv::new(&[&sshd.location(&sftp_dir)], &env.path("cache"));
    tv.init();
    let src = big_source(&env);
    let mut child = tv.backup_until_pack(&src, &sftp_dir);
    child.kill().unwrap();
    child.wait().unwrap();
    let port = format!("-p {} ", sshd.port);
    let left: Vec<String> = ssh_processes(&port)
        .into_iter()
        .filter(|c| c.contains(" -M "))
        .collect();
    assert!(!left.is_empty(), "the killed backup had no master to leave");
    tv.ok(&["tiers"]);
    no_ssh_left_for(&sshd);
}

/// Ctrl-C in the middle of a backup to a local and an SFTP tier: the
/// command ends by the signal, as by default, with its `ssh` masters
/// closed on the way out (no other command runs to sweep them), and
/// without putting the SFTP tier on record as behind: closing its
/// connection is not a failure of the tier. The repository is whole.
#[test]
fn an_interrupted_backup_closes_its_ssh_masters_and_ends_by_the_signal() {
    interrupted_backup(false);
}

/// Ctrl-C in a terminal goes to the whole foreground process group: the
/// programs the backup started get it too.
#[test]
fn ctrl_c_to_the_whole_process_group_ends_a_backup_as_cleanly() {
    interrupted_backup(true);
}

/// Interrupts a backup to a local and an SFTP tier once a pack reached the
/// SFTP tier: SIGINT to the process, or to its whole process group.
fn interrupted_backup(whole_group: bool) {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let env = Env::new();
    let sshd = Sshd::start(env.dir.path());
    let sftp_dir = env.path("sftp-tier");
    let local = env.path("local");
    let tv = Tv::new(&[s(&local), &sshd.location(&sftp_dir)], &env.path("cache"));
    tv.init();
    let src = big_source(&env);
    let mut cmd = tv.cmd();
    if whole_group {
        cmd.process_group(0);
    }
    let child = tv.backup_until_pack_as(cmd, &src, &sftp_dir);
    let target = if whole_group {
        -(child.id() as i32)
    } else {
        child.id() as i32
    };
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(target, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGINT),
        "{:?}: {err}",
        out.status
    );
    assert!(err.contains("interrupted by Ctrl-C"), "{err}");
    no_ssh_left_for(&sshd);
    let st = tier_status(&tv);
    assert!(st.iter().all(|t| t["synchronised"] == true), "{st:?}");
    tv.ok(&["check", "--read-data"]);
    // The interrupted backup stored no revision; the next one completes,
    // after giving each tier what the cut-off writes left on the other.
    tv.ok(&["backup", s(&src)]);
    let objects = |root: &Path| common::objects_under(root, &["data", "index", "revisions"]);
    assert_eq!(objects(&local), objects(&sftp_dir));
    Tv::new(&[&sshd.location(&sftp_dir)], &env.path("cache-sftp")).ok(&["check", "--read-data"]);
    tv.restores(&src, &env.path("restored"));
    no_ssh_left_for(&sshd);
}

#[test]
fn a_tier_that_goes_down_mid_backup_catches_up_with_sync() {
    let env = Env::new();
    let mut sshd = Sshd::start(env.dir.path());
    let sftp_dir = env.path("sftp-tier");
    let (local, sftp) = (env.path("local"), sshd.location(&sftp_dir));
    let tv = Tv::new(&[s(&local), &sftp], &env.path("cache"));
    tv.init();
    let src = big_source(&env);
    // Stop sshd once the backup has written a pack to it.
    let child = tv.backup_until_pack(&src, &sftp_dir);
    sshd.down();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("offline"), "{err}");
    // The local tier has everything; the SFTP tier is behind.
    Tv::new(&[s(&local)], &env.path("cache-local")).restores(&src, &env.path("r-local"));
    sshd.up();
    let st = tier_status(&tv);
    assert_eq!(st[1]["online"], true, "{st:?}");
    assert_eq!(st[1]["synchronised"], false, "{st:?}");
    assert!(
        st[0]["revision"].as_u64() > st[1]["revision"].as_u64(),
        "{st:?}"
    );
    // Writes skip it until it is synchronised.
    std::fs::write(src.join("late"), b"written while the SFTP tier lags").unwrap();
    tv.ok(&["backup", s(&src)]);
    tv.ok(&["sync"]);
    let st = tier_status(&tv);
    assert!(st.iter().all(|t| t["synchronised"] == true), "{st:?}");
    assert_eq!(st[0]["revision"], st[1]["revision"]);
    // The SFTP tier alone, on a fresh cache, is complete.
    let alone = Tv::new(&[&sftp], &env.path("cache-sftp"));
    alone.ok(&["check", "--read-data"]);
    alone.restores(&src, &env.path("r-sftp"));
}

#[test]
fn a_write_waits_while_every_tier_is_down() {
    let env = Env::new();
    let mut sshd = Sshd::start(env.dir.path());
    let mut s3 = S3::start(env.dir.path());
    let tv = Tv::new(
        &[
            &sshd.location(&env.path("sftp-tier")),
            &s3.location("vault"),
        ],
        &env.path("cache"),
    );
    tv.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..10 {
        std::fs::write(src.join(format!("f{i}")), random_bytes(6 << 20, 100 + i)).unwrap();
    }
    let mut child = tv.backup_until_pack(&src, &s3.dir("vault"));
    sshd.down();
    s3.down();
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup gave up instead of waiting"
    );
    s3.up();
    sshd.up();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("waiting for one to come back"), "{err}");
    tv.ok(&["sync"]);
    let st = tier_status(&tv);
    assert!(st.iter().all(|t| t["synchronised"] == true), "{st:?}");
    for (i, tier) in tv.tiers.iter().enumerate() {
        let alone = Tv::new(&[tier], &env.path(&format!("cache-{i}")));
        alone.ok(&["check", "--read-data"]);
        alone.restores(&src, &env.path(&format!("r-{i}")));
    }
}

#[test]
fn a_second_installation_is_stopped_and_takeover_hands_over() {
    let env = Env::new();
    let s3 = S3::start(env.dir.path());
    let loc = s3.location("vault");
    let first = Tv::new(&[&loc], &env.path("cache-first"));
    first.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"one").unwrap();
    first.ok(&["backup", s(&src)]);
    // A second machine (its own cache dir) may read, not write.
    let second = Tv::new(&[&loc], &env.path("cache-second"));
    second.ok(&["revisions"]);
    stopped_as_second_installation(&second.run(&["backup", s(&src)]));
    // After a takeover the second writes, and the first is the one stopped.
    second.ok(&["takeover"]);
    std::fs::write(src.join("b"), b"two").unwrap();
    second.ok(&["backup", s(&src)]);
    let err = stopped_as_second_installation(&first.run(&["backup", s(&src)]));
    assert!(err.contains("takeover"), "{err}");
    // Reading stays allowed.
    let revs = json(&first.ok(&["--json", "revisions"]));
    assert_eq!(revs.as_array().unwrap().len(), 2);
}

#[test]
fn recovery_from_one_remote_tier_on_a_new_machine() {
    let env = Env::new();
    let sshd = Sshd::start(env.dir.path());
    let sftp = sshd.location(&env.path("sftp-tier"));
    let src = env.path("src");
    build_nasty(&src, &Shape::small());
    let home = Tv::new(&[s(&env.path("local")), &sftp], &env.path("cache"));
    home.init();
    home.ok(&["backup", s(&src)]);
    // The machine is lost: its local tier and its cache are gone.
    std::fs::remove_dir_all(env.path("local")).unwrap();
    std::fs::remove_dir_all(env.path("cache")).unwrap();
    // The runbook (docs/RECOVERY.md): the password and one remote tier.
    let new = Tv::new(&[&sftp], &env.path("new-cache"));
    let revs = json(&new.ok(&["--json", "revisions"]));
    assert_eq!(revs.as_array().unwrap().len(), 1);
    new.ok(&["check", "--read-data"]);
    new.restores(&src, &env.path("restored"));
    // The mount shows the same tree, read from the SFTP tier.
    {
        let mnt = env.path("mnt");
        let _m = common::mount::Mount::spawn(new.cmd(), &mnt);
        let copy = env.path("copied-out");
        let inside = mnt.join("latest").join(src.strip_prefix("/").unwrap());
        common::cp_a(&inside, &copy);
        assert_same(&src, &copy, false);
    }
    new.ok(&["takeover"]);
    std::fs::write(src.join("after"), b"the new machine writes").unwrap();
    new.ok(&["backup", s(&src)]);
}

#[test]
fn the_mount_reads_on_when_the_fastest_tier_stops() {
    let env = Env::new();
    let sshd = Sshd::start(env.dir.path());
    let mut s3 = S3::start(env.dir.path());
    // The S3 tier is read first (priority 1); SFTP is the fallback.
    let first = format!("{}&priority=1", s3.location("vault"));
    let tv = Tv::new(
        &[&first, &sshd.location(&env.path("sftp-tier"))],
        &env.path("cache"),
    );
    tv.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = random_bytes(40 << 20, 7);
    std::fs::write(src.join("big"), &data).unwrap();
    tv.ok(&["backup", s(&src)]);

    let mnt = env.path("mnt");
    let _m = common::mount::Mount::spawn(tv.cmd(), &mnt);
    let path = mnt
        .join("latest")
        .join(src.strip_prefix("/").unwrap())
        .join("big");
    let mut f = std::fs::File::open(&path).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    use std::io::Read;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() >= 8 << 20 && s3.running() {
            s3.down();
        }
    }
    assert!(!s3.running());
    assert!(
        got == data,
        "the bytes read through the mount differ ({} of {})",
        got.len(),
        data.len()
    );
}

/// A server that accepts connections but answers nothing (a hung process)
/// counts as offline after a bounded time, instead of holding the command
/// or the mount for as long as it hangs: the mount's read goes on from
/// the other tier, and a listing opens without it.
#[test]
fn a_hung_server_is_left_behind_in_bounded_time() {
    let env = Env::new();
    let s3 = S3::start(env.dir.path());
    // The S3 tier is read first (priority 1); the local one is the fallback.
    let first = format!("{}&priority=1", s3.location("vault"));
    let local = env.path("local-tier");
    let tv = Tv::new(&[&first, s(&local)], &env.path("cache"));
    tv.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = random_bytes(6 << 20, 11);
    std::fs::write(src.join("f"), &data).unwrap();
    tv.ok(&["backup", s(&src)]);

    let mnt = env.path("mnt");
    let _m = common::mount::Mount::spawn(tv.cmd(), &mnt);
    let path = mnt
        .join("latest")
        .join(src.strip_prefix("/").unwrap())
        .join("f");
    s3.hang(true);
    // Read on a thread: a read that hangs for good must fail the test, not
    // hold it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(&path));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(150))
        .expect("the mount's read is still held by the hung server")
        .unwrap();
    assert!(got == data, "the bytes read through the mount differ");

    let started = Instant::now();
    let mut child = tv
        .cmd()
        .args(["--json", "revisions"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(150) {
            let _ = child.kill();
            panic!("`revisions` is still held by the hung server");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("does not answer"), "{err}");
    s3.hang(false);
}

/// While every tier is offline, the mount keeps listing the revisions it
/// knows (a listing of no tier is not an empty listing), and what it holds
/// in memory still reads.
#[test]
fn the_mount_keeps_its_revisions_while_every_tier_is_offline() {
    let env = Env::new();
    let mut s3 = S3::start(env.dir.path());
    let tv = Tv::new(&[&s3.location("vault")], &env.path("cache"));
    tv.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("note"), b"still here").unwrap();
    tv.ok(&["backup", s(&src)]);
    let mnt = env.path("mnt");
    let _m = common::mount::Mount::spawn(tv.cmd(), &mnt);
    let names = || -> Vec<String> {
        std::fs::read_dir(mnt.join("revisions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let before = names();
    assert_eq!(before.len(), 1);
    let note = mnt
        .join("latest")
        .join(src.strip_prefix("/").unwrap())
        .join("note");
    assert_eq!(std::fs::read(&note).unwrap(), b"still here");
    s3.down();
    // Past the list's refresh time (2 s), and past a probe of the tier.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert_eq!(names(), before);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(std::fs::read(&note).unwrap(), b"still here");
}

/// A bucket that does not exist (a typo) is not a new, empty tier: it is
/// named, left out, and the other tiers carry on; `init` on it alone fails
/// saying what to do.
#[test]
fn a_missing_bucket_is_named_and_left_out() {
    let env = Env::new();
    let s3 = S3::start(env.dir.path());
    let local = env.path("local-tier");
    let typo = s3.location("vault").replace("s3://bucket/", "s3://buckte/");
    let tv = Tv::new(&[s(&local), &typo], &env.path("cache"));
    Tv::new(&[s(&local)], &env.path("cache")).init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    for args in [vec!["backup", s(&src)], vec!["sync"]] {
        let o = tv.run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("has no bucket \"buckte\"") && err.contains("create it"),
            "{args:?}: {err}"
        );
    }
    let o = Tv::new(&[&typo], &env.path("other")).run(&["init"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("has no bucket"), "{err}");
}

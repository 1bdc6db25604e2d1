//! Real FUSE mounts: copies out of `latest` with `cp -a` and `rsync -aHAXS`
//! must reproduce the source exactly; writes get EROFS; the mount ends
//! cleanly on SIGTERM and on an external unmount; a stale mount gets a
//! clear error; a new revision appears without remounting.

mod common;

use common::mount::Mount;
use common::tree::{assert_same, build_nasty, Shape};
use common::{is_root, Env};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn mounted(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let d = fs::canonicalize(dir).unwrap_or(dir.to_path_buf());
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(d.to_str().unwrap()))
}

#[test]
fn cp_and_rsync_out_of_the_mount_reproduce_the_nasty_tree() {
    assert!(is_root(), "run the suite as root");
    let env = Env::new();
    env.init();
    let src = env.path("src");
    build_nasty(&src, &Shape::full());
    env.ok(["backup", src.to_str().unwrap()]);
    let mnt = env.path("mnt");
    let _m = Mount::start(&env, &mnt);
    let inside = mnt.join("latest").join(src.strip_prefix("/").unwrap());

    let cp = env.path("cp-copy");
    common::cp_a(&inside, &cp);
    assert_same(&src, &cp, true);

    let rs = env.path("rsync-copy");
    let out = Command::new("rsync")
        .arg("-aHAXS")
        .arg(format!("{}/", inside.display()))
        .arg(&rs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // rsync does not keep atimes, and -S makes holes of all zero runs (the
    // source's fully written zeros too), so those two are not compared.
    common::tree::assert_same_with(&src, &rs, false, false);
    // Holes survive the copy: the 1 GiB sparse file stays small.
    let m = fs::metadata(cp.join("sparse/huge-sparse")).unwrap();
    assert!(std::os::unix::fs::MetadataExt::blocks(&m) * 512 < 8 << 20);
}

#[test]
fn writes_are_refused_and_signals_and_unmounts_end_it_cleanly() {
    let env = Env::new();
    let src = env.backed_up(&[("f", b"x")]);
    let mnt = env.path("mnt");

    let mut m = Mount::start(&env, &mnt);
    let file = mnt
        .join("latest")
        .join(src.strip_prefix("/").unwrap())
        .join("f");
    assert_eq!(fs::read(&file).unwrap(), b"x");
    for e in [
        fs::write(&file, "y").unwrap_err(),
        fs::write(mnt.join("latest/new"), "y").unwrap_err(),
        fs::create_dir(mnt.join("revisions/new")).unwrap_err(),
        fs::remove_file(&file).unwrap_err(),
    ] {
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
    m.signal(libc::SIGTERM);
    assert!(m.wait_exit().success());
    assert!(!mounted(&mnt), "still mounted after SIGTERM");

    // SIGTERM while a program holds a file open: the mount is detached, not
    // left dead, and a new mount can take its place.
    let mut m = Mount::start(&env, &mnt);
    let held = fs::File::open(&file).unwrap();
    m.signal(libc::SIGTERM);
    assert!(m.wait_exit().success());
    assert!(
        !mounted(&mnt),
        "still mounted after SIGTERM with a file open"
    );
    drop(held);
    let mut m = Mount::start(&env, &mnt);
    assert_eq!(fs::read(&file).unwrap(), b"x");
    m.signal(libc::SIGTERM);
    assert!(m.wait_exit().success());

    let mut m = Mount::start(&env, &mnt);
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(m.wait_exit().success());
    assert!(!mounted(&mnt));

    // A mount whose process was killed leaves a stale mount point.
    let mut m = Mount::start(&env, &mnt);
    m.signal(libc::SIGKILL);
    m.wait_exit();
    let o = env.cmd().arg("mount").arg(&mnt).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("stale mount") && e.contains("fusermount3 -u"),
        "{e}"
    );
}

#[test]
fn a_new_revision_appears_without_remounting() {
    let env = Env::new();
    let src = env.backed_up(&[("f", b"first")]);
    let mnt = env.path("mnt");
    let _m = Mount::start(&env, &mnt);
    let first = fs::read_link(mnt.join("latest")).unwrap();
    assert_eq!(fs::read_dir(mnt.join("revisions")).unwrap().count(), 1);

    std::thread::sleep(Duration::from_millis(1100)); // a new time name
    fs::write(src.join("f"), "second").unwrap();
    // Runs while the mount is up.
    env.ok([
        "backup",
        src.to_str().unwrap(),
        "--tag",
        "weekly",
        "--host",
        "laptop",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_link(mnt.join("latest")).unwrap() == first {
        assert!(Instant::now() < deadline, "the new revision did not appear");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(fs::read_dir(mnt.join("revisions")).unwrap().count(), 2);
    let f = mnt
        .join("latest")
        .join(src.strip_prefix("/").unwrap())
        .join("f");
    assert_eq!(fs::read(f).unwrap(), b"second");

    // history/<path>/ holds one entry per version, oldest first, named by
    // the revision where it first appeared.
    let hist = mnt
        .join("history")
        .join(src.strip_prefix("/").unwrap())
        .join("f");
    let mut versions: Vec<_> = fs::read_dir(&hist)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    versions.sort();
    let contents: Vec<Vec<u8>> = versions.iter().map(|p| fs::read(p).unwrap()).collect();
    assert_eq!(contents, vec![b"first".to_vec(), b"second".to_vec()]);
    let revs: Vec<_> = fs::read_dir(mnt.join("revisions"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(versions
        .iter()
        .all(|v| revs.contains(&v.file_name().unwrap().to_os_string())));

    // by-tag and by-host link to the revisions.
    let tagged: Vec<_> = fs::read_dir(mnt.join("by-tag/weekly"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(tagged.len(), 1);
    let via_tag = tagged[0].join(src.strip_prefix("/").unwrap()).join("f");
    assert_eq!(fs::read(via_tag).unwrap(), b"second");
    assert_eq!(fs::read_dir(mnt.join("by-host/laptop")).unwrap().count(), 1);
}

#[test]
fn daemon_mode_returns_once_mounted_and_stops_on_unmount() {
    let env = Env::new();
    let src = env.backed_up(&[("f", b"x")]);
    let mnt = env.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    // Unmounts even when an assertion below fails.
    let _guard = Mount::guard(&mnt);
    let out = env.ok([
        std::ffi::OsStr::new("mount"),
        "--daemon".as_ref(),
        mnt.as_os_str(),
    ]);
    assert!(out.contains("mounted on"), "{out}");
    // Ready when the command returns: no waiting.
    let f = mnt
        .join("latest")
        .join(src.strip_prefix("/").unwrap())
        .join("f");
    assert_eq!(fs::read(&f).unwrap(), b"x");
    assert!(Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    assert!(!mounted(&mnt));

    let o = env
        .cmd()
        .args(["mount", "--daemon", "/nonexistent/mount/point"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the mount did not start"));
    // A wrong password gives its own exit code, as without --daemon.
    let o = env
        .cmd()
        .env("TIERVAULT_PASSWORD", "not the password")
        .args(["mount", "--daemon"])
        .arg(&mnt)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(12), "{err}");
    assert!(err.contains("wrong password"), "{err}");
    assert!(!mounted(&mnt));
}

/// A repository with no revision yet mounts with its empty directories and
/// no `latest`, whose listing shows it once the first backup is saved.
#[test]
fn an_empty_repository_mounts_and_its_first_revision_appears() {
    let env = Env::new();
    env.init();
    let mnt = env.path("mnt");
    let _m = Mount::spawn_until(env.cmd(), &mnt, None, "revisions");
    let names = || {
        let mut v: Vec<String> = fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(), ["by-host", "by-tag", "history", "revisions"]);
    assert_eq!(fs::read_dir(mnt.join("revisions")).unwrap().count(), 0);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"first").unwrap();
    env.ok(["backup", src.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !names().contains(&"latest".to_string()) {
        assert!(
            Instant::now() < deadline,
            "latest did not appear: {:?}",
            names()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let f = mnt
        .join("latest")
        .join(src.strip_prefix("/").unwrap())
        .join("f");
    assert_eq!(fs::read(f).unwrap(), b"first");
}

//! Backup and restore of a hostile tree must reproduce it exactly: bytes,
//! modes, owners, nanosecond times, xattrs, link targets, hardlink groups,
//! device numbers and holes.

mod common;

use common::tree::{assert_same, build_nasty, data_map, Shape};
use common::{is_root, json, Env};
use std::fs;

#[test]
fn nasty_tree_roundtrips_exactly() {
    assert!(
        is_root(),
        "this test creates device nodes and foreign owners: run the suite as root"
    );
    let env = Env::new();
    env.init();
    let src = env.path("src");
    build_nasty(&src, &Shape::full());

    let first = json(&env.ok([&"--json".as_ref(), &"backup".as_ref(), &src.as_os_str()]));
    assert!(first["files"].as_u64().unwrap() > 5000);
    assert!(first["bytes_read"].as_u64().unwrap() > 12 << 20);
    assert_eq!(first["errors"], 0);

    // Unchanged: nothing is read again and no content is stored again.
    let second = json(&env.ok([&"--json".as_ref(), &"backup".as_ref(), &src.as_os_str()]));
    assert_eq!(
        second["bytes_read"], 0,
        "unchanged files were read again: {second}"
    );
    assert!(
        second["bytes_added"].as_u64().unwrap() < 64 << 10,
        "{second}"
    );

    let dst = env.path("restored");
    let spec = format!("latest:{}", src.display());
    env.restore(&spec, &dst);
    assert_same(&src, &dst, true);
    // The 1 GiB sparse file stays sparse: a few MiB of blocks, not 1 GiB.
    let m = fs::metadata(dst.join("sparse/huge-sparse")).unwrap();
    assert!(std::os::unix::fs::MetadataExt::blocks(&m) * 512 < 8 << 20);
    assert_eq!(data_map(&dst.join("sparse/all-hole")), vec![]);

    env.ok(["check", "--read-data"]);
}

#[test]
fn incremental_changes_and_old_revisions() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("keep"), "unchanged").unwrap();
    fs::write(src.join("edit"), "version 1").unwrap();
    fs::write(src.join("d/gone"), "deleted later").unwrap();
    env.ok(["backup", src.to_str().unwrap(), "--tag", "first"]);
    let v1 = env.path("v1");
    let copy = |to: &std::path::Path| common::cp_a(&src, to);
    copy(&v1);

    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(src.join("edit"), "version 2, longer").unwrap();
    fs::remove_file(src.join("d/gone")).unwrap();
    fs::write(src.join("d/new"), "added").unwrap();
    let out = json(&env.ok(["--json", "backup", src.to_str().unwrap()]));
    // Only the edited and the new file are read.
    assert_eq!(
        out["bytes_read"],
        ("version 2, longer".len() + "added".len()) as u64
    );

    let revs = json(&env.ok(["--json", "revisions"]));
    let revs = revs.as_array().unwrap();
    assert_eq!(revs.len(), 2);
    assert_eq!(revs[0]["tags"][0], "first");
    assert_eq!(revs[1]["parent"], revs[0]["id"]);

    let r1 = env.path("r1");
    let r2 = env.path("r2");
    let name1 = revs[0]["name"].as_str().unwrap();
    let id2 = &revs[1]["id"].as_str().unwrap()[..8];
    env.restore(&format!("{name1}:{}", src.display()), &r1);
    env.restore(&format!("{id2}:{}", src.display()), &r2);
    assert_same(&v1, &r1, false);
    assert_same(&src, &r2, false);
}

#[test]
fn partial_restore_with_include_and_exclude() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(src.join("docs/sub")).unwrap();
    fs::create_dir_all(src.join("pics")).unwrap();
    fs::write(src.join("docs/a.pdf"), "a").unwrap();
    fs::write(src.join("docs/b.txt"), "b").unwrap();
    fs::write(src.join("docs/sub/c.pdf"), "c").unwrap();
    fs::write(src.join("pics/d.jpg"), "d").unwrap();
    env.ok(["backup", src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.display());

    let t = env.path("inc");
    env.ok([
        "restore",
        &spec,
        "--target",
        t.to_str().unwrap(),
        "--include",
        "*.pdf",
        "--exclude",
        "**/sub",
    ]);
    assert!(t.join("docs/a.pdf").exists());
    assert!(!t.join("docs/b.txt").exists());
    assert!(!t.join("docs/sub").exists());
    assert!(!t.join("pics").exists());

    // A single file.
    let f = env.path("one");
    env.restore(&format!("{spec}/pics/d.jpg"), &f);
    assert_eq!(fs::read(f.join("d.jpg")).unwrap(), b"d");
}

#[test]
fn ls_lists_every_entry_with_metadata() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/file"), "12345").unwrap();
    std::os::unix::fs::symlink("sub/file", src.join("link")).unwrap();
    env.ok(["backup", src.to_str().unwrap()]);
    let out = env.ok(["--json", "ls", &format!("latest:{}", src.display())]);
    let entries: Vec<serde_json::Value> = out.lines().map(json).collect();
    let by_name = |n: &str| {
        entries
            .iter()
            .find(|e| e["name"] == n)
            .unwrap_or_else(|| panic!("{n} not listed in {out}"))
    };
    assert_eq!(by_name("file")["size"], 5);
    assert_eq!(
        by_name("file")["path"],
        format!("{}/sub/file", src.display())
    );
    assert_eq!(by_name("link")["type"], "symlink");
    assert_eq!(by_name("link")["target"], "sub/file");
    assert_eq!(by_name("sub")["type"], "dir");
    assert_eq!(entries.len(), 3);
    let long = env.ok(["ls", "-l", &format!("latest:{}/sub", src.display())]);
    assert!(long.starts_with("-rw-r--r--"), "{long}");
}

#[test]
fn deleting_the_cache_loses_nothing() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), vec![7u8; 3 << 20]).unwrap();
    env.ok(["backup", src.to_str().unwrap()]);
    fs::remove_dir_all(&env.cache).unwrap();
    let dst = env.path("dst");
    env.restore(&format!("latest:{}", src.display()), &dst);
    assert_same(&src, &dst, false);
    // The rebuilt index still deduplicates: only the changed ancestor
    // directories (the cache lives beside the source) are new.
    let out = json(&env.ok(["--json", "backup", src.to_str().unwrap()]));
    assert!(out["bytes_added"].as_u64().unwrap() < 4096, "{out}");
}

/// The comparator must see each kind of difference; otherwise a clean
/// comparison above would prove nothing.
#[test]
fn comparator_detects_each_kind_of_difference() {
    assert!(is_root(), "run the suite as root");
    let env = Env::new();
    let src = env.path("src");
    build_nasty(&src, &Shape::small());
    let copy = |name: &str| {
        let dst = env.path(name);
        common::cp_a(&src, &dst);
        dst
    };
    assert_same(&src, &copy("baseline"), false);
    type Mutation = Box<dyn Fn(&std::path::Path)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "mode",
            Box::new(|d| common::tree::set_mode(&d.join("perms/private"), 0o644)),
        ),
        (
            "mtime",
            Box::new(|d| common::tree::set_times(&d.join("times/epoch"), (0, 0), (0, 1))),
        ),
        (
            "uid",
            Box::new(|d| common::tree::lchown(&d.join("perms/private"), 1, 65534)),
        ),
        (
            "xattrs",
            Box::new(|d| common::tree::setxattr(&d.join("xattrs/file"), "user.text", b"hellO")),
        ),
        (
            "content",
            Box::new(|d| {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("data/text"))
                    .unwrap();
                std::os::unix::fs::FileExt::write_all_at(&f, b"X", 100).unwrap();
            }),
        ),
        (
            "holes",
            Box::new(|d| {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("sparse/all-hole"))
                    .unwrap();
                std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 4096], 8192).unwrap();
            }),
        ),
        (
            "hardlink",
            Box::new(|d| {
                fs::remove_file(d.join("hardlinks/two")).unwrap();
                fs::write(d.join("hardlinks/two"), "shared by three").unwrap();
            }),
        ),
        (
            "target",
            Box::new(|d| {
                fs::remove_file(d.join("links/dangling")).unwrap();
                std::os::unix::fs::symlink("does/not/exis", d.join("links/dangling")).unwrap();
            }),
        ),
        (
            "rdev",
            Box::new(|d| {
                fs::remove_file(d.join("special/null-like")).unwrap();
                common::tree::mknod(
                    &d.join("special/null-like"),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(1, 5),
                );
            }),
        ),
        (
            "missing",
            Box::new(|d| fs::remove_file(d.join("wide/f00003")).unwrap()),
        ),
    ];
    for (i, (what, mutate)) in cases.iter().enumerate() {
        let dst = copy(&format!("case{i}"));
        mutate(&dst);
        let diffs = common::tree::compare(&src, &dst, false);
        assert!(
            diffs
                .iter()
                .any(|d| d.contains(what) || (*what == "missing" && d.contains("missing"))),
            "mutation {what} not detected: {diffs:?}"
        );
    }
}

#[test]
fn restore_into_a_symlinked_target() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), "x").unwrap();
    env.ok(["backup", src.to_str().unwrap()]);
    let real = env.path("real-target");
    fs::create_dir_all(&real).unwrap();
    let link = env.path("link-target");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    env.restore(&format!("latest:{}", src.display()), &link);
    assert_eq!(fs::read(real.join("d/f")).unwrap(), b"x");
}

#[test]
fn a_pack_missing_from_the_tier_is_reported_once_and_never_deduplicated_against() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), vec![5u8; 1 << 20]).unwrap();
    env.ok(["backup", src.to_str().unwrap()]);
    let mut stack = vec![env.repo.join("data")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                fs::remove_file(p).unwrap()
            }
        }
    }
    let o = env.run(["backup", src.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing from every tier"));
    // The data was stored again, so the new revision restores.
    let dst = env.path("dst");
    env.restore(&format!("latest:{}", src.display()), &dst);
    assert_eq!(fs::read(dst.join("f")).unwrap(), vec![5u8; 1 << 20]);
    let o = env.run(["backup", src.to_str().unwrap()]);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("missing"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Where the revision has a directory and the target a symlink (or file)
/// of that name, restore refuses to follow it and says what is in the way.
#[test]
fn a_symlink_in_the_way_of_a_directory_is_named() {
    let env = Env::new();
    let src = env.backed_up(&[("d/f", b"x")]);
    let dst = env.path("dst");
    fs::create_dir_all(&dst).unwrap();
    std::os::unix::fs::symlink("/tmp", dst.join("d")).unwrap();
    let o = env.try_restore(&format!("latest:{}", src.display()), &dst);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("a symlink of that name is in the way"),
        "{err}"
    );
}

/// Two revisions saved in the same second are named `<time>-<id>`; the
/// bare time then lists the names to choose from.
#[test]
fn a_time_shared_by_two_revisions_lists_their_names() {
    let env = Env::new();
    env.init();
    let src = env.source(&[]);
    // Backups of a tiny tree take milliseconds; a few tries give two in
    // the same second.
    let mut shared = None;
    for i in 0..10 {
        fs::write(src.join("f"), i.to_string()).unwrap();
        env.ok(["backup", src.to_str().unwrap()]);
        let revs = common::json(&env.ok(["--json", "revisions"]));
        let names: Vec<String> = revs
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_string())
            .collect();
        if let Some(n) = names.iter().find(|n| n.contains('-') && n.len() > 20) {
            shared = Some((n.rsplit_once('-').unwrap().0.to_string(), names.clone()));
            break;
        }
    }
    let Some((time, names)) = shared else {
        panic!("no two of 10 backups shared a second");
    };
    let o = env.run(["ls", &time]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("several revisions were saved at"), "{err}");
    let same: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with(&format!("{time}-")))
        .collect();
    assert!(
        same.len() >= 2 && same.iter().all(|n| err.contains(n.as_str())),
        "{err}"
    );
}

/// A file of `/sys` says 4096 bytes and gives fewer: the revision holds the
/// bytes it gave, with a note, not the bytes padded with zeros to 4096.
#[test]
fn a_sys_file_is_stored_as_the_bytes_it_gives() {
    let f = std::path::Path::new("/sys/devices/virtual/net/lo/address");
    let real = fs::read(f).expect("sysfs mounted, with the loopback device");
    assert!(fs::metadata(f).unwrap().len() > real.len() as u64);
    let env = Env::new();
    env.init();
    let o = env.run(["backup", f.to_str().unwrap()]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("gave {} bytes", real.len())), "{err}");
    let dst = env.path("restored");
    env.restore("latest", &dst);
    assert_eq!(
        fs::read(dst.join(f.strip_prefix("/").unwrap())).unwrap(),
        real
    );
}

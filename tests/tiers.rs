//! Two local tiers: a damaged copy on one is invisible to the mount and
//! to restore, `check`
//! on that tier alone names it, and a tier that holds no repository (an
//! unmounted share) is left out instead of written into.

mod common;

use common::mount::Mount;
use common::{files_under, json, Env};
use std::fs;
use std::path::Path;
use std::process::Command;

fn tv(tiers: &[&Path], cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tiervault"));
    for t in tiers {
        c.arg("-r").arg(t);
    }
    c.env("TIERVAULT_CACHE_DIR", cache)
        .env("TIERVAULT_STATE_DIR", cache.with_extension("state"))
        .env("TIERVAULT_PASSWORD", common::PASSWORD);
    c
}

fn ok(c: &mut Command) -> std::process::Output {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{:?} failed: {}",
        c,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn random_file(p: &Path, len: usize) {
    fs::write(p, common::random_bytes(len, 3)).unwrap();
}

/// A repository on two local tiers, `tier-a` and `tier-b`, with its cache.
fn two_tiers(env: &Env) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (env.path("tier-a"), env.path("tier-b"));
    let cache = env.path("cache");
    ok(tv(&[&a, &b], &cache).args(["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]));
    (a, b, cache)
}

/// `two_tiers` with a backup of `src`, which holds one random file.
fn backed_up_on_two_tiers(
    env: &Env,
    name: &str,
    len: usize,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let (a, b, cache) = two_tiers(env);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    random_file(&src.join(name), len);
    ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    (a, b, cache, src)
}

#[test]
fn a_damaged_copy_on_one_tier_is_read_from_the_other() {
    let env = Env::new();
    let (a, b, cache, src) = backed_up_on_two_tiers(&env, "f", 3 << 20);
    // Both tiers hold the same complete repository.
    let rel = |root: &Path| -> Vec<_> {
        let mut v: Vec<_> = files_under(root)
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect();
        v.sort();
        v
    };
    assert_eq!(rel(&a), rel(&b));

    let pack = files_under(&a.join("data"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 1;
    fs::write(&pack, bytes).unwrap();

    // Tier A is read first (priority 1), so the damage is met: first by
    // the mount, which reads the right bytes from tier B and logs the bad
    // copy, then by restore.
    let a_first = std::path::PathBuf::from(format!("file://{}?priority=1", a.display()));
    let (mnt, log) = (env.path("mnt"), env.path("mount.log"));
    {
        let _m = Mount::spawn_logging(tv(&[&a_first, &b], &cache), &mnt, Some(&log));
        let inside = mnt.join("latest").join(src.strip_prefix("/").unwrap());
        assert!(
            fs::read(inside.join("f")).unwrap() == fs::read(src.join("f")).unwrap(),
            "the mount returned other bytes than the source's"
        );
    }
    let logged = fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("damaged copy") && logged.contains(a.to_str().unwrap()),
        "the mount did not report the bad copy: {logged}"
    );
    let dst = env.path("dst");
    let o = ok(tv(&[&a_first, &b], &cache)
        .args(["restore", &format!("latest:{}", src.display()), "--target"])
        .arg(&dst));
    assert_eq!(
        fs::read(dst.join("f")).unwrap(),
        fs::read(src.join("f")).unwrap()
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("damaged copy") && err.contains(a.to_str().unwrap()),
        "the bad copy was not reported: {err}"
    );

    // Checked alone, the damaged tier names the pack; the good one passes.
    let o = tv(&[&a], &env.path("cache-a"))
        .args(["check", "--read-data"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains(name));
    ok(tv(&[&b], &env.path("cache-b")).args(["check", "--read-data"]));

    // Checked together, the bad copy is named with its tier; --repair
    // replaces it with the verified copy from the other tier.
    let o = tv(&[&a, &b], &cache)
        .args(["check", "--read-data"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(name) && err.contains(a.to_str().unwrap()),
        "{err}"
    );
    let o = ok(tv(&[&a, &b], &cache).args(["check", "--read-data", "--repair"]));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("repaired") && out.contains(name), "{out}");
    ok(tv(&[&a], &env.path("cache-a2")).args(["check", "--read-data"]));
    assert_eq!(
        fs::read(&pack).unwrap(),
        fs::read(b.join(pack.strip_prefix(&a).unwrap())).unwrap()
    );
}

#[test]
fn a_tier_without_a_repository_is_left_out() {
    let env = Env::new();
    let (a, b) = (env.path("tier-a"), env.path("mnt-share"));
    let cache = env.path("cache");
    ok(tv(&[&a], &cache).args(["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]));
    fs::create_dir_all(&b).unwrap(); // an empty mount point
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    let o = ok(tv(&[&b, &a], &cache).arg("backup").arg(&src));
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no repository"));
    assert_eq!(
        fs::read_dir(&b).unwrap().count(),
        0,
        "data was written into an empty mount point"
    );
    let revs = json(
        &String::from_utf8(ok(tv(&[&b, &a], &cache).args(["--json", "revisions"])).stdout).unwrap(),
    );
    assert_eq!(revs.as_array().unwrap().len(), 1);
    // init refuses when any tier already holds a repository.
    let o = tv(&[&b, &a], &cache).args(["init"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

fn data_objects(root: &Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    common::objects_under(root, &["data"])
}

/// A backup killed while it writes packs to two tiers at once can leave a
/// pack on one tier only, with both tiers at the same revision. The next
/// backup would adopt that pack and deduplicate against it, so the other
/// tier would lack data its index names. The killed run's write session
/// is still open on record: the next backup first gives each tier what
/// the other holds, and then each tier, checked alone, is whole.
#[test]
fn a_write_cut_off_between_tiers_is_reconciled_by_the_next_backup() {
    cut_off_between_tiers(false);
}

/// The same without the record of the cut-off session (its state
/// directory was lost): the next backup copies each leftover pack to the
/// tier that lacks it before reusing it.
#[test]
fn a_leftover_pack_on_one_tier_is_copied_to_the_other_before_it_is_reused() {
    cut_off_between_tiers(true);
}

/// A backup that fails with an error closes its write session: an open
/// one costs the next backup a listing of every tier. (One whose write
/// failed keeps it open: see `TierSet`'s unit tests.)
#[test]
fn a_backup_that_fails_closes_its_write_session() {
    let env = Env::new();
    let (a, b, cache) = two_tiers(&env);
    let state = cache.with_extension("state");
    let open_sessions = || -> Vec<std::path::PathBuf> {
        fs::read_dir(&state)
            .unwrap()
            .flatten()
            .filter_map(|d| fs::read_dir(d.path().join("sessions")).ok())
            .flat_map(|d| d.flatten().map(|e| e.path()))
            .collect()
    };
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    random_file(&src.join("first"), 1 << 20);
    ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    assert_eq!(open_sessions(), Vec::<std::path::PathBuf>::new());
    // Fails as it starts: the second path does not exist.
    let o = tv(&[&a, &b], &cache)
        .arg("backup")
        .arg(&src)
        .arg(env.path("no-such-dir"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(open_sessions(), Vec::<std::path::PathBuf>::new());
    // Fails as it ends, after its packs reached both tiers: neither can
    // list or store revisions (a file stands where the directory was).
    for t in [&a, &b] {
        fs::rename(t.join("revisions"), t.join("revisions.away")).unwrap();
        fs::write(t.join("revisions"), b"").unwrap();
    }
    random_file(&src.join("second"), 1 << 20);
    let o = tv(&[&a, &b], &cache)
        .arg("backup")
        .arg(&src)
        .output()
        .unwrap();
    for t in [&a, &b] {
        fs::remove_file(t.join("revisions")).unwrap();
        fs::rename(t.join("revisions.away"), t.join("revisions")).unwrap();
    }
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(open_sessions(), Vec::<std::path::PathBuf>::new());
    let o = ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("stopped before it finished"), "{err}");
    assert_eq!(open_sessions(), Vec::<std::path::PathBuf>::new());
}

fn cut_off_between_tiers(lose_record: bool) {
    let env = Env::new();
    let (a, b, cache) = two_tiers(&env);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    random_file(&src.join("first"), 1 << 20);
    let o = ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    let quiet = |o: &std::process::Output| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("stopped before it finished"), "{err}");
    };
    quiet(&o);
    let before = data_objects(&a);
    for i in 0..24u64 {
        fs::write(
            src.join(format!("more{i:02}")),
            common::random_bytes(8 << 20, 100 + i),
        )
        .unwrap();
    }
    let mut child = tv(&[&a, &b], &cache)
        .arg("backup")
        .arg(&src)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while data_objects(&a).len() <= before.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "no new pack reached tier A"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the backup ended before the kill");
    // What the killed run wrote reached tier A only.
    let cut: Vec<_> = data_objects(&a).difference(&before).cloned().collect();
    assert!(!cut.is_empty());
    for p in &cut {
        let _ = fs::remove_file(b.join(p));
    }
    if lose_record {
        let state = cache.with_extension("state");
        let mut gone = 0;
        for d in fs::read_dir(&state).unwrap().flatten() {
            if d.path().join("sessions").exists() {
                fs::remove_dir_all(d.path().join("sessions")).unwrap();
                gone += 1;
            }
        }
        assert_eq!(gone, 1, "no record of the session in {}", state.display());
    }

    let o = ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    let err = String::from_utf8_lossy(&o.stderr);
    if lose_record {
        assert!(!err.contains("stopped before it finished"), "{err}");
    } else {
        assert!(err.contains("stopped before it finished"), "{err}");
        assert!(
            err.contains("the tiers hold the same objects again"),
            "{err}"
        );
    }
    assert_eq!(data_objects(&a), data_objects(&b));
    ok(tv(&[&b], &env.path("cache-b")).args(["check", "--read-data"]));
    ok(tv(&[&a], &env.path("cache-a")).args(["check", "--read-data"]));
    // Reconciled once: the next backup has nothing to mend.
    quiet(&ok(tv(&[&a, &b], &cache).arg("backup").arg(&src)));
}

/// Flips one byte in the middle of `p`.
fn flip_middle(p: &Path) {
    let mut b = fs::read(p).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x20;
    fs::write(p, b).unwrap();
}

/// The first file under `dir`.
fn first_file(dir: &Path) -> std::path::PathBuf {
    let mut v = files_under(dir);
    v.sort();
    v.into_iter().next().unwrap()
}

/// Damaged copies of the small objects on the tier read first: its key
/// file (the wrapped key altered, still valid JSON: its bytes no longer
/// hash to its name), its `config`, an index file and a
/// revision. Machines with no cache open the repository, list it and
/// restore it from the other tier's copies, every time; `check` names
/// each bad copy with its tier, `check --read-data --repair` replaces
/// them, and then the first tier alone opens again.
#[test]
fn damaged_metadata_on_one_tier_is_read_from_the_other() {
    let env = Env::new();
    let (a, b, cache, src) = backed_up_on_two_tiers(&env, "f", 1 << 20);
    fs::write(src.join("g"), b"second").unwrap();
    ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));

    let key = first_file(&a.join("keys"));
    let mut kf: serde_json::Value = serde_json::from_slice(&fs::read(&key).unwrap()).unwrap();
    let mut master: Vec<u8> = kf["master"].as_str().unwrap().bytes().collect();
    let at = master.len() / 2;
    master[at] = if master[at] == b'0' { b'1' } else { b'0' };
    kf["master"] = String::from_utf8(master).unwrap().into();
    fs::write(&key, serde_json::to_vec_pretty(&kf).unwrap()).unwrap();
    fs::write(a.join("config"), b"{ not a config").unwrap();
    let index = first_file(&a.join("index"));
    let revision = first_file(&a.join("revisions"));
    flip_middle(&index);
    flip_middle(&revision);
    // Tier A alone cannot be opened: its config is not a repository's.
    let alone = tv(&[&a], &env.path("alone"))
        .arg("revisions")
        .output()
        .unwrap();
    assert_eq!(alone.status.code(), Some(10), "{alone:?}");

    let a_first = std::path::PathBuf::from(format!("file://{}?priority=1", a.display()));
    for round in 0..3 {
        let fresh = env.path(&format!("fresh-{round}"));
        let o = ok(tv(&[&a_first, &b], &fresh).args(["--json", "revisions"]));
        assert_eq!(
            json(&String::from_utf8_lossy(&o.stdout))
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let out = env.path(&format!("restored-{round}"));
        let spec = format!("latest:{}", src.display());
        let o = ok(tv(&[&a_first, &b], &fresh)
            .args(["restore", &spec, "--target"])
            .arg(&out));
        common::tree::assert_same(&src, &out, false);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("is damaged on every tier"), "{err}");
    }

    let o = tv(&[&a_first, &b], &cache).arg("check").output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let rel = |p: &Path| p.strip_prefix(&a).unwrap().to_string_lossy().into_owned();
    for bad in ["config".to_string(), rel(&key), rel(&index), rel(&revision)] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("{bad} on tier {}", a.display()))),
            "check does not name {bad} on tier A: {err}"
        );
    }
    ok(tv(&[&a_first, &b], &cache).args(["check", "--read-data", "--repair"]));
    ok(tv(&[&a_first, &b], &cache).arg("check"));
    ok(tv(&[&a], &env.path("alone-again")).arg("revisions"));
}

/// The clear `config` altered on the tier read first, so that it claims no
/// encryption: it disagrees with the key file, and the other tier's copy is
/// used. `check` calls the two copies a conflict, and `--repair` leaves
/// both alone: which one is right is for a person to say.
#[test]
fn a_config_altered_on_one_tier_is_passed_over_and_never_repaired() {
    let env = Env::new();
    let (a, b, cache, _) = backed_up_on_two_tiers(&env, "f", 64 << 10);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(a.join("config")).unwrap()).unwrap();
    cfg["encryption"] = "none".into();
    let altered = serde_json::to_vec_pretty(&cfg).unwrap();
    fs::write(a.join("config"), &altered).unwrap();
    let a_first = std::path::PathBuf::from(format!("file://{}?priority=1", a.display()));
    let o = ok(tv(&[&a_first, &b], &env.path("fresh")).args(["--json", "revisions"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("disagrees with the key file"));
    let o = tv(&[&a_first, &b], &cache)
        .args(["check", "--read-data", "--repair"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("differs from the copy in use"), "{err}");
    assert_eq!(fs::read(a.join("config")).unwrap(), altered);
}

/// `sync` copies the writer's `tierstate` along with its data, so a `sync`
/// run with another state directory (another user, a rescue shell) brings
/// a lagging tier back without making the backups stop with exit 13; a
/// backup from that state directory is still a stranger's.
#[test]
fn a_sync_with_another_state_directory_does_not_stop_the_backups() {
    let env = Env::new();
    let (a, b, cache, src) = backed_up_on_two_tiers(&env, "first", 1 << 16);
    // Tier B is away (no repository there) for the second backup.
    let away = env.path("tier-b.away");
    fs::rename(&b, &away).unwrap();
    random_file(&src.join("second"), 1 << 16);
    ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    fs::rename(&away, &b).unwrap();
    let behind = |cache: &Path| -> bool {
        let out = ok(tv(&[&a, &b], cache).args(["tiers", "--json"]));
        let tiers = json(&String::from_utf8_lossy(&out.stdout));
        tiers
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["synchronised"] == false)
    };
    assert!(behind(&cache));
    // Each backup while B is behind says so.
    random_file(&src.join("second-b"), 1 << 16);
    let o = ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is behind") && err.contains("tiervault sync"),
        "{err}"
    );
    let other = env.path("other-cache");
    ok(tv(&[&a, &b], &other).arg("sync"));
    assert!(!behind(&cache));
    random_file(&src.join("third"), 1 << 16);
    ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    // B alone holds all four revisions.
    let out = ok(tv(&[&b], &cache).args(["revisions", "--json"]));
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // The other state directory is another installation when it writes.
    random_file(&src.join("fourth"), 1 << 16);
    let o = tv(&[&a, &b], &other)
        .arg("backup")
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(13),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A tier whose `tierstate` is damaged is online at an unknown revision:
/// `tiers` says so and why, backups leave it out saying why, and `sync`
/// brings it back with a sound `tierstate`.
#[test]
fn a_damaged_tierstate_is_an_unknown_revision_that_sync_mends() {
    let env = Env::new();
    let (a, b, cache, src) = backed_up_on_two_tiers(&env, "first", 1 << 16);
    fs::write(b.join("tierstate"), "not json\n").unwrap();
    let tiers = |cache: &Path| -> Vec<serde_json::Value> {
        let out = ok(tv(&[&a, &b], cache).args(["tiers", "--json"]));
        let tiers = json(&String::from_utf8_lossy(&out.stdout));
        tiers.as_array().unwrap().clone()
    };
    let t = &tiers(&cache)[1];
    assert_eq!(t["online"], true, "{t}");
    assert_eq!(t["synchronised"], false, "{t}");
    assert!(t["revision"].is_null(), "{t}");
    assert!(
        t["last_error"].as_str().unwrap().contains("tierstate"),
        "{t}"
    );
    random_file(&src.join("second"), 1 << 16);
    let o = ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("its revision cannot be read") && err.contains("tiervault sync"),
        "{err}"
    );
    ok(tv(&[&a, &b], &cache).arg("sync"));
    let both = tiers(&cache);
    assert_eq!(both[1]["synchronised"], true, "{both:?}");
    assert!(both[1]["revision"].as_u64().unwrap() > 0, "{both:?}");
    assert_eq!(both[1]["revision"], both[0]["revision"], "{both:?}");
    let out = ok(tv(&[&b], &cache).args(["revisions", "--json"]));
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// A tier that holds another repository (one with the same password at a
/// mistyped path, a share mounted in the wrong place) is left out with a
/// warning, whatever its place in the list: nothing is written or synced to
/// it, and the repository this machine's cache knows is the one used.
#[test]
fn a_tier_holding_another_repository_is_left_out_untouched() {
    let env = Env::new();
    let (mine, theirs) = (env.path("mine"), env.path("theirs"));
    let (cache, other) = (env.path("cache"), env.path("other-cache"));
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    random_file(&src.join("first"), 1 << 16);
    for (tier, cache) in [(&mine, &cache), (&theirs, &other)] {
        ok(tv(&[tier], cache).args(["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]));
        ok(tv(&[tier], cache).arg("backup").arg(&src));
    }
    let snapshot = |root: &Path| -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = files_under(root)
            .into_iter()
            .map(|p| (p.clone(), fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&theirs);
    random_file(&src.join("second"), 1 << 16);
    // Theirs listed first: still left out, for this cache knows mine.
    let o = ok(tv(&[&theirs, &mine], &cache).arg("backup").arg(&src));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("holds another repository"), "{err}");
    let o = ok(tv(&[&theirs, &mine], &cache).arg("sync"));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("still behind"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = ok(tv(&[&theirs, &mine], &cache).args(["tiers", "--json"]));
    let tiers = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(tiers[0]["other_repository"], true, "{tiers}");
    assert_eq!(tiers[0]["online"], false, "{tiers}");
    assert_eq!(tiers[1]["synchronised"], true, "{tiers}");
    assert!(snapshot(&theirs) == before, "the other repository changed");
    // Each repository is whole, with its own revisions.
    let count = |tiers: &[&Path], cache: &Path| {
        let out = ok(tv(tiers, cache).args(["--json", "revisions"]));
        json(&String::from_utf8_lossy(&out.stdout))
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(&[&mine], &cache), 2);
    assert_eq!(count(&[&mine, &theirs], &other), 1);
    ok(tv(&[&mine], &cache).args(["check", "--read-data"]));
    ok(tv(&[&theirs], &other).args(["check", "--read-data"]));
}

/// Two tiers away at different moments, each missing one backup: the
/// second backup must not give its revision the number the first one used
/// on the other tier (both would then look complete). The installation's
/// own record of the revision it wrote puts the new one above it, the
/// tier that missed it shows as behind, and `sync` gives each the union.
#[test]
fn tiers_away_at_different_moments_never_share_a_revision_number() {
    let env = Env::new();
    let (a, b, cache) = two_tiers(&env);
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let away = |t: &Path| {
        let to = t.with_extension("away");
        fs::rename(t, &to).unwrap();
        to
    };
    random_file(&src.join("one"), 1 << 16);
    ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    // B is away for the second backup, A for the third.
    let b_away = away(&b);
    random_file(&src.join("two"), 1 << 16);
    ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    fs::rename(&b_away, &b).unwrap();
    let a_away = away(&a);
    random_file(&src.join("three"), 1 << 16);
    let o = ok(tv(&[&a, &b], &cache).arg("backup").arg(&src));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is on no online tier"), "{err}");
    fs::rename(&a_away, &a).unwrap();
    let out = ok(tv(&[&a, &b], &cache).args(["tiers", "--json"]));
    let tiers = json(&String::from_utf8_lossy(&out.stdout));
    let (ta, tb) = (&tiers[0], &tiers[1]);
    assert_ne!(ta["revision"], tb["revision"], "{tiers}");
    assert_eq!(ta["synchronised"], false, "{tiers}");
    assert_eq!(tb["synchronised"], true, "{tiers}");
    ok(tv(&[&a, &b], &cache).arg("sync"));
    for t in [&a, &b] {
        let out = ok(tv(&[t], &env.path("alone")).args(["--json", "revisions"]));
        let n = json(&String::from_utf8_lossy(&out.stdout))
            .as_array()
            .unwrap()
            .len();
        assert_eq!(n, 3, "{}", t.display());
    }
}

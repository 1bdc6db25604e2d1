//! SIGKILL at random moments during a backup must leave a repository that
//! `check` accepts, publish no partial revision, and let the next backup
//! reuse what was already stored.

mod common;

use common::{json, Env};
use rand::{Rng, SeedableRng};
use std::fs;
use std::time::{Duration, Instant};

/// Bytes in real objects; `.tmp-*` files are writes cut off by a kill,
/// which tiervault never lists or reads.
fn stored_bytes(dir: &std::path::Path) -> u64 {
    // A run killed before its first pack leaves no data directory.
    if !dir.exists() {
        return 0;
    }
    common::files_under(dir)
        .iter()
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn killed_backups_leave_a_sound_repository_and_are_resumed() {
    let seed: u64 = std::env::var("TIERVAULT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill test seed {seed} (set TIERVAULT_KILL_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let env = Env::new();
    env.init();
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut total = 0u64;
    for i in 0..24 {
        let len = rng.gen_range(1usize << 20..16 << 20);
        fs::write(
            src.join(format!("file{i:02}")),
            common::random_bytes(len, seed ^ i),
        )
        .unwrap();
        total += len as u64;
    }
    // Time a clean backup elsewhere, to aim the kills inside the run.
    let probe = Env::new();
    probe.init();
    let t = Instant::now();
    probe.ok(["backup", src.to_str().unwrap()]);
    let full = t.elapsed();

    // Kill runs at random moments until three kills have landed. A run
    // that completes before its kill publishes one revision; the test then
    // starts over on a fresh repository so the next run stores data again.
    let mut kills = 0;
    for round in 0..20 {
        if kills >= 3 {
            break;
        }
        let delay = Duration::from_secs_f64(full.as_secs_f64() * rng.gen_range(0.05..0.9));
        let mut child = env
            .cmd()
            .args(["backup", src.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap();
        }
        child.wait().unwrap();
        // A kill may land after the revision was written (it is written
        // last), while the process exits. Then the revision must be whole.
        let revs = json(&env.ok(["--json", "revisions"]));
        let published = revs.as_array().unwrap().len();
        assert!(
            published <= 1,
            "round {round}: {published} revisions from one run"
        );
        if finished {
            assert_eq!(
                published, 1,
                "round {round}: a finished backup published nothing"
            );
        } else if published == 0 {
            kills += 1; // killed mid-run: the case that matters
        }
        let check = env.run(["check", "--read-data"]);
        assert!(
            check.status.success(),
            "round {round} (seed {seed}): check failed after a kill at {delay:?}:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        if published == 1 {
            let dst = env.path(&format!("round{round}"));
            env.restore(&format!("latest:{}", src.display()), &dst);
            common::tree::assert_same(&src, &dst, false);
            fs::remove_dir_all(&dst).unwrap();
            fs::remove_dir_all(&env.repo).unwrap();
            fs::remove_dir_all(&env.cache).unwrap();
            env.init();
        }
    }
    assert!(
        kills >= 3,
        "fewer than three backups were killed (seed {seed})"
    );
    let before = stored_bytes(&env.repo.join("data"));
    // Finish on a fresh cache, as another machine would: the leftover packs
    // are found on the tier itself.
    fs::remove_dir_all(&env.cache).unwrap();
    let out = json(&env.ok(["--json", "backup", src.to_str().unwrap()]));
    // What earlier runs stored is reused: this run stores only the rest, plus
    // at most one pack per kill that landed after the process died.
    let stored_now = out["stored_bytes"].as_u64().unwrap();
    assert!(
        before + stored_now <= total + (kills as u64) * (20 << 20) + (4 << 20),
        "data stored twice: {before} before + {stored_now} now for {total} bytes of source"
    );
    if before > 32 << 20 {
        assert!(stored_now < total, "nothing was reused: {out}");
    }
    env.ok(["check", "--read-data"]);
    let dst = env.path("dst");
    env.restore(&format!("latest:{}", src.display()), &dst);
    common::tree::assert_same(&src, &dst, false);
}

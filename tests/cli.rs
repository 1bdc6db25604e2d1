//! The command-line contract: the config file, generated documentation,
//! and help text that documents exit codes.

mod common;

use common::{json, Env};
use std::fs;
use std::process::Command;

fn tv() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tiervault"));
    c.env_remove("TIERVAULT_PASSWORD")
        .env_remove("TIERVAULT_PASSWORD_FILE")
        .env_remove("TIERVAULT_CACHE_DIR");
    c
}

#[test]
fn config_file_names_tiers_password_and_cache() {
    let env = Env::new();
    let (a, b) = (env.path("vault"), env.path("share"));
    let pw = env.path("password");
    fs::write(&pw, "from the config file\n").unwrap();
    let cache = env.path("cfg-cache");
    let cfg = env.path("tiervault.toml");
    fs::write(
        &cfg,
        format!(
            "password_file = {pw:?}\ncache_dir = {cache:?}\n\n[[tier]]\nname = \"vault\"\nlocation = {a:?}\n\n[[tier]]\nlocation = {b:?}\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let o = tv().arg("--config").arg(&cfg).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    run(&["init", "--kdf-memory", "1024", "--kdf-iterations", "1"]);
    assert!(
        a.join("config").exists() && b.join("config").exists(),
        "init must reach every tier"
    );
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "x").unwrap();
    run(&["backup", src.to_str().unwrap()]);
    assert!(
        cache.is_dir(),
        "cache_dir from the config file was not used"
    );
    assert_eq!(
        json(&run(&["--json", "revisions"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Each tier alone is a complete repository.
    for t in [&a, &b] {
        let o = tv()
            .arg("-r")
            .arg(t)
            .env("TIERVAULT_PASSWORD_FILE", &pw)
            .env("TIERVAULT_CACHE_DIR", env.path("other-cache"))
            .args(["check", "--read-data"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    // A config file that does not parse: exit 1, and the message.
    let refused = |text: String| -> String {
        fs::write(&cfg, text).unwrap();
        let o = tv()
            .arg("--config")
            .arg(&cfg)
            .arg("revisions")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // A typo is refused with a message naming the file and the field.
    let e = refused(format!("pasword_file = {pw:?}\n"));
    assert!(
        e.contains("tiervault.toml") && e.contains("pasword_file"),
        "{e}"
    );
    // A key of the whole file written after a [[tier]] belongs to that
    // tier; the message says where it goes.
    let e = refused(format!(
        "[[tier]]\nlocation = {a:?}\ncache_dir = {cache:?}\n"
    ));
    assert!(e.contains("go before the first [[tier]]"), "{e}");
}

#[test]
fn help_documents_exit_codes_and_generated_docs_exist() {
    let o = tv().arg("--help").output().unwrap();
    let h = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "Exit codes:",
        "3    backup saved",
        "12   wrong password",
        "TIERVAULT_PASSWORD_FILE",
    ] {
        assert!(h.contains(needle), "--help lacks {needle:?}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let o = tv().args(["completions", shell]).output().unwrap();
        assert!(o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("restore"),
            "{shell} completions lack subcommands"
        );
    }
    let d = tempfile::tempdir().unwrap();
    assert!(tv()
        .arg("manpages")
        .arg(d.path())
        .output()
        .unwrap()
        .status
        .success());
    let page = fs::read_to_string(d.path().join("tiervault-backup.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("exclude"));
    assert!(d.path().join("tiervault.1").exists());
}

/// A reader that goes away (`| head`, `| true`) neither fails a backup
/// nor turns it into an internal error: the revision is saved, and the
/// commands end with 0, as with their output read.
#[test]
fn a_closed_stdout_does_not_fail_a_command() {
    let env = Env::new();
    let repo = env.path("repo");
    let src = env.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..2000 {
        fs::write(
            src.join(format!("file-with-a-long-name-{i:05}")),
            i.to_string(),
        )
        .unwrap();
    }
    let sh = |cmd: &str| {
        let o = Command::new("bash")
            .arg("-c")
            .arg(format!("set -o pipefail; \"$TV\" -r \"$REPO\" {cmd}"))
            .env("TV", env!("CARGO_BIN_EXE_tiervault"))
            .env("REPO", &repo)
            .env("TIERVAULT_CACHE_DIR", env.path("cache"))
            .env("TIERVAULT_STATE_DIR", env.path("state"))
            .env("TIERVAULT_PASSWORD", common::PASSWORD)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("internal error"), "{cmd}: {err}");
        (o.status.code(), err)
    };
    let (code, err) = sh("init --kdf-memory 1024 --kdf-iterations 1 | true");
    assert_eq!(code, Some(0), "{err}");
    let src_s = src.to_str().unwrap();
    for cmd in [
        format!("backup {src_s} | true"),
        "ls latest | head -n 1".into(),
        "--json revisions | true".into(),
        "check | true".into(),
        "tiers | head -n 1".into(),
    ] {
        let (code, err) = sh(&cmd);
        assert_eq!(code, Some(0), "{cmd}: {err}");
    }
    // A stdout that cannot take the output is the command's failure.
    let (code, err) = sh("--json revisions >/dev/full");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot write the output"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_tiervault"))
        .arg("-r")
        .arg(&repo)
        .args(["--json", "revisions"])
        .env("TIERVAULT_CACHE_DIR", env.path("cache"))
        .env("TIERVAULT_STATE_DIR", env.path("state"))
        .env("TIERVAULT_PASSWORD", common::PASSWORD)
        .output()
        .unwrap();
    let revs = json(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(revs.as_array().map(Vec::len), Some(1), "{revs}");
}

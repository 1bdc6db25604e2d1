//! A running `tiervault mount` for tests, unmounted even when a test fails.

use super::Env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running `tiervault mount`; unmounts and stops it when dropped, even
/// when the test fails.
pub struct Mount {
    child: Option<Child>,
    dir: PathBuf,
}

impl Mount {
    /// Unmounts `dir` when dropped (for a mount made some other way).
    pub fn guard(dir: &Path) -> Mount {
        Mount {
            child: None,
            dir: dir.to_path_buf(),
        }
    }

    pub fn start(env: &Env, dir: &Path) -> Mount {
        Self::spawn(env.cmd(), dir)
    }

    /// Runs `cmd mount DIR` (cmd names the tiers) and waits until the mount
    /// shows `latest`.
    pub fn spawn(cmd: Command, dir: &Path) -> Mount {
        Self::spawn_logging(cmd, dir, None)
    }

    /// As `spawn`, with the mount's stderr written to `log`.
    pub fn spawn_logging(cmd: Command, dir: &Path, log: Option<&Path>) -> Mount {
        Self::spawn_until(cmd, dir, log, "latest")
    }

    /// As `spawn_logging`, ready once the mount shows `ready` (`latest`
    /// needs a revision).
    pub fn spawn_until(mut cmd: Command, dir: &Path, log: Option<&Path>, ready: &str) -> Mount {
        fs::create_dir_all(dir).unwrap();
        let stderr = match log {
            Some(p) => std::process::Stdio::from(fs::File::create(p).unwrap()),
            None => std::process::Stdio::null(),
        };
        let child = cmd.arg("mount").arg(dir).stderr(stderr).spawn().unwrap();
        let m = Mount {
            child: Some(child),
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while fs::symlink_metadata(dir.join(ready)).is_err() {
            assert!(Instant::now() < deadline, "the mount did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    /// Waits up to 10 s for the mount process to exit; returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(Instant::now() < deadline, "the mount process did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.dir)
            .output();
    }
}

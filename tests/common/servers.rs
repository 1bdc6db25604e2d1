//! Real servers on 127.0.0.1 for the tier tests: OpenSSH's sshd for SFTP
//! and s3s-fs for S3. Both are started and stopped by the tests; stopping
//! and starting again on the same port is how a tier "goes down".
//!
//! Keys live in the persistent tools directory (`TIERVAULT_TOOLS`, default
//! `~/.cache/tiervault-tools`), so the host key stays the same between runs
//! and ssh's known_hosts entries stay valid.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn tools_dir() -> PathBuf {
    std::env::var_os("TIERVAULT_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tiervault-tools")
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 20 s) until `port` accepts connections.
fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited at start: {st}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An ed25519 key at `path`, created once (atomically, so parallel tests
/// agree on one).
fn key(path: &Path) -> PathBuf {
    if !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let st = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "tiervault-test",
                "-f",
            ])
            .arg(&tmp)
            .status()
            .expect("ssh-keygen (install openssh-client: scripts/install-deps.sh)");
        assert!(st.success());
        std::fs::rename(
            tmp.with_extension(format!("tmp{}.pub", std::process::id())),
            path.with_extension("pub"),
        )
        .unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    path.to_path_buf()
}

/// Every process below `root`, read from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The parent is the second field after the parenthesised name.
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        if let Some(ppid) = after.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()) {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = vec![];
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

pub struct Sshd {
    child: Option<Child>,
    pub port: u16,
    config: PathBuf,
    /// The client's private key, authorised for this user.
    pub client_key: PathBuf,
}

impl Sshd {
    pub fn start(scratch: &Path) -> Sshd {
        let tools = tools_dir();
        let host_key = key(&tools.join("ssh_host_ed25519_key"));
        let client_key = key(&tools.join("client_ed25519"));
        let dir = scratch.join("sshd");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            client_key.with_extension("pub"),
            dir.join("authorized_keys"),
        )
        .unwrap();
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 PidFile {}\nSubsystem sftp internal-sftp\nMaxStartups 100\nMaxSessions 100\n",
                host_key.display(),
                dir.join("authorized_keys").display(),
                dir.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let mut s = Sshd {
            child: None,
            port,
            config,
            client_key,
        };
        s.up();
        s
    }

    /// Starts the server (again, on the same port).
    pub fn up(&mut self) {
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/sbin/sshd (install openssh-server: scripts/install-deps.sh)");
        wait_listening(self.port, &mut child, "sshd");
        self.child = Some(child);
    }

    /// Stops the server and every session it forked (open connections
    /// have their own sshd processes); the tier on it goes offline.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            for pid in descendants(c.id()) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The tier location for directory `path` on this server.
    pub fn location(&self, path: &Path) -> String {
        format!(
            "sftp://root@127.0.0.1:{}{}?key={}&known_hosts=add&retries=3",
            self.port,
            path.display(),
            self.client_key.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.down();
    }
}

pub const S3_KEY: &str = "tiervault-test-key";
pub const S3_SECRET: &str = "tiervault-test-secret";

pub struct S3 {
    child: Option<Child>,
    pub port: u16,
    pub root: PathBuf,
}

impl S3 {
    /// s3s-fs serving `scratch/s3`, with bucket `bucket` created.
    pub fn start(scratch: &Path) -> S3 {
        let root = scratch.join("s3");
        std::fs::create_dir_all(root.join("bucket")).unwrap();
        let mut s = S3 {
            child: None,
            port: free_port(),
            root,
        };
        s.up();
        s
    }

    pub fn up(&mut self) {
        let bin = tools_dir().join("bin/s3s-fs");
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} ({e}): run scripts/install-deps.sh", bin.display()));
        wait_listening(self.port, &mut child, "s3s-fs");
        self.child = Some(child);
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: a stopped one
    /// still accepts connections, in the kernel, and answers nothing.
    pub fn hang(&self, hung: bool) {
        let pid = self.child.as_ref().expect("s3s-fs runs").id() as i32;
        let sig = if hung { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: signals a child process this struct owns.
        unsafe { libc::kill(pid, sig) };
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The tier location for `prefix` in the test bucket.
    pub fn location(&self, prefix: &str) -> String {
        format!(
            "s3://bucket/{prefix}?endpoint={}&region=us-east-1&retries=3",
            self.endpoint()
        )
    }

    /// The directory that holds the objects under `prefix`.
    pub fn dir(&self, prefix: &str) -> PathBuf {
        self.root.join("bucket").join(prefix)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.down();
    }
}

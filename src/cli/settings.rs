//! Raw flags, the config file and the environment become one validated
//! [`Settings`]; nothing downstream looks at flags again.

use super::args::Cli;
use anyhow::{bail, Context};
use serde::Deserialize;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use tiervault::format::names;
use tiervault::repo::{default_cache_root, RepoError, Repository};
use tiervault::tier::{open_spec, TierSet, TierSpec};

/// The TOML config file (`--config`).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    tier: Vec<TierSpec>,
    cache_dir: Option<PathBuf>,
    password_file: Option<PathBuf>,
    password_command: Option<String>,
}

#[derive(Debug, Clone)]
enum PasswordSource {
    Command(String),
    File(PathBuf),
    Value(String),
    Prompt,
}

pub struct Settings {
    pub tiers: Vec<TierSpec>,
    pub cache_root: PathBuf,
    pub json: bool,
    pub quiet: bool,
    pub wait_limit: Option<std::time::Duration>,
    password: PasswordSource,
}

/// Refuses an empty location, a local one that is a file (a config file
/// given to `-r`), and one location named twice, which would count as two
/// copies where there is one.
fn check_tiers(tiers: &[TierSpec]) -> anyhow::Result<()> {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for t in tiers {
        let loc = t.location.as_str();
        anyhow::ensure!(
            !t.local_path().unwrap_or(loc).trim().is_empty(),
            "a tier location is empty: give a directory, an sftp:// or an s3:// location"
        );
        let key = if let Some(path) = t.local_path() {
            let p = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
            if let Ok(m) = std::fs::metadata(&p) {
                anyhow::ensure!(
                    m.is_dir(),
                    "tier {loc} is a file, not a directory: a tier is a directory, an sftp:// or an s3:// location (a config file goes with --config)"
                );
            }
            let p = std::fs::canonicalize(&p).unwrap_or(p);
            p.components().collect::<PathBuf>().display().to_string()
        } else {
            // The same bucket at two providers is two places.
            format!(
                "{} {:?} {:?}",
                loc.trim_end_matches('/'),
                t.endpoint,
                t.region
            )
        };
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            anyhow::bail!(
                "tier {loc} is the same place as tier {first}: name each tier once (one place named twice is still one copy)"
            );
        }
        seen.push((key, loc));
    }
    Ok(())
}

impl Settings {
    /// The tiers' locations, for messages.
    pub fn locations(&self) -> Vec<String> {
        self.tiers.iter().map(|t| t.location.clone()).collect()
    }

    pub fn new(cli: &Cli) -> anyhow::Result<Self> {
        let cfg = match &cli.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?;
                toml::from_str::<ConfigFile>(&text).map_err(|e| {
                    // TOML puts every key after `[[tier]]` into that tier.
                    let misplaced = ["cache_dir", "password_file", "password_command"]
                        .iter()
                        .any(|k| e.message().contains(&format!("unknown field `{k}`")));
                    let hint = if misplaced {
                        "\n(the keys of the whole file go before the first [[tier]]: after it, they belong to that tier)"
                    } else {
                        ""
                    };
                    let e = e.to_string();
                    anyhow::anyhow!("config file {} is invalid: {}{hint}", p.display(), e.trim_end())
                })?
            }
            None => ConfigFile::default(),
        };
        let mut tiers = cli
            .repo
            .iter()
            .map(|l| TierSpec::parse(l))
            .collect::<Result<Vec<_>, _>>()?;
        tiers.extend(cfg.tier);
        check_tiers(&tiers)?;
        // Flags beat the environment, which beats the config file.
        let password = if let Some(c) = cli.password_command.clone() {
            PasswordSource::Command(c)
        } else if let Some(f) = std::env::var_os("TIERVAULT_PASSWORD_FILE") {
            PasswordSource::File(f.into())
        } else if let Ok(v) = std::env::var("TIERVAULT_PASSWORD") {
            PasswordSource::Value(v)
        } else if let Some(c) = cfg.password_command {
            PasswordSource::Command(c)
        } else if let Some(f) = cfg.password_file {
            PasswordSource::File(f)
        } else {
            PasswordSource::Prompt
        };
        let cache_root = cli
            .cache_dir
            .clone()
            .or_else(|| {
                std::env::var_os("TIERVAULT_CACHE_DIR")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .or(cfg.cache_dir)
            .unwrap_or_else(default_cache_root);
        Ok(Self {
            tiers,
            cache_root,
            json: cli.json,
            quiet: cli.quiet,
            wait_limit: cli.wait_limit.map(std::time::Duration::from_secs),
            password,
        })
    }

    /// The tiers as one store, for `init`.
    pub fn store(&self) -> anyhow::Result<TierSet> {
        if self.tiers.is_empty() {
            bail!(
                "no repository given: name one with -r LOCATION (once per tier) or --config FILE"
            );
        }
        let tiers = self
            .tiers
            .iter()
            .map(|spec| Ok((open_spec(spec)?, spec.priority)))
            .collect::<Result<Vec<_>, tiervault::tier::TierError>>()?;
        let mut set = TierSet::with_priorities(tiers);
        set.set_wait_limit(self.wait_limit);
        Ok(set)
    }

    /// Opens the repository on the tiers that hold it. A tier without a
    /// repository (an unmounted share, a wrong path) is left out with a
    /// warning, so nothing is written into an empty mount point.
    pub fn open(&self) -> anyhow::Result<Arc<Repository>> {
        self.open_named("index")
    }

    /// Opens with the local index `index_name` (see `Repository::open_named`).
    pub fn open_named(&self, index_name: &str) -> anyhow::Result<Arc<Repository>> {
        if self.tiers.is_empty() {
            bail!(
                "no repository given: name one with -r LOCATION (once per tier) or --config FILE"
            );
        }
        let mut tiers = Vec::new();
        let mut missing = Vec::new();
        let mut offline = Vec::new();
        let mut empty_remote = 0;
        let mut latency = Vec::new();
        for spec in &self.tiers {
            let t = open_spec(spec)?;
            let started = std::time::Instant::now();
            let found = t.stat(names::CONFIG);
            latency.push(started.elapsed());
            match found {
                Ok(Some(_)) => tiers.push((t, spec.priority)),
                // A new, empty remote tier: it is unsynchronised (revision
                // 0) until `tiervault sync` copies the repository there. An
                // empty local directory may be an unmounted share: left out.
                // A location that cannot hold objects (a bucket that does
                // not exist) is not a new tier: left out, saying why.
                Ok(None) if t.is_remote() => match t.list("keys/") {
                    Err(e) if !e.is_offline() => {
                        errln!("warning: {e}; carrying on without it");
                        latency.pop();
                    }
                    _ => {
                        errln!(
                            "note: tier {} is empty; `tiervault sync` copies the repository there",
                            t.name()
                        );
                        empty_remote += 1;
                        tiers.push((t, spec.priority));
                    }
                },
                Ok(None) => {
                    latency.pop();
                    missing.push(t);
                }
                // Kept: it is probed again later, and synchronised when back.
                Err(e) => {
                    offline.push((tiers.len(), e));
                    tiers.push((t, spec.priority));
                }
            }
        }
        if tiers.len() == offline.len() && !tiers.is_empty() {
            let (_, e) = offline.swap_remove(0);
            return Err(anyhow::Error::new(e).context(
                "every tier holding the repository is offline; check the network and the servers, then run the command again",
            ));
        }
        if tiers.len() == empty_remote {
            tiers.clear();
        }
        if tiers.is_empty() {
            let loc = missing
                .first()
                .map_or_else(|| self.tiers[0].location.clone(), |t| t.name().to_string());
            let half = missing
                .first()
                .is_some_and(|t| t.list("keys/").is_ok_and(|k| !k.is_empty()));
            if half {
                return Err(RepoError::HalfInitialised(loc).into());
            }
            return Err(RepoError::NotARepository(loc).into());
        }
        for t in &missing {
            errln!(
                "warning: tier {} holds no repository (unmounted, or not initialised); carrying on without it",
                t.name()
            );
        }
        let mut store = TierSet::with_priorities(tiers);
        store.set_wait_limit(self.wait_limit);
        for (i, e) in &offline {
            store.mark_offline(*i, e);
        }
        // The first measurement for the read ranking.
        for (i, d) in latency.into_iter().enumerate() {
            store.note_latency(i, d);
        }
        Ok(Arc::new(Repository::open_named(
            Box::new(store),
            &|| self.password(false),
            &self.cache_root,
            index_name,
        )?))
    }

    /// Reads the password from the configured source; `confirm` asks twice
    /// on a terminal.
    pub fn password(&self, confirm: bool) -> Result<Vec<u8>, RepoError> {
        let pw = match &self.password {
            PasswordSource::Command(c) => {
                let mut cmd = std::process::Command::new("sh");
                cmd.arg("-c").arg(c).stderr(std::process::Stdio::inherit());
                tiervault::tier::ssh_dirs::original_env(&mut cmd);
                let out = cmd.output().map_err(|e| {
                    RepoError::Password(format!("cannot run --password-command: {e}"))
                })?;
                if !out.status.success() {
                    return Err(RepoError::Password(format!(
                        "--password-command failed ({})",
                        out.status
                    )));
                }
                first_line(out.stdout)
            }
            PasswordSource::File(f) => first_line(std::fs::read(f).map_err(|e| {
                RepoError::Password(format!("cannot read password file {}: {e}", f.display()))
            })?),
            PasswordSource::Value(v) => v.clone().into_bytes(),
            PasswordSource::Prompt => {
                if !std::io::stdin().is_terminal() {
                    return Err(RepoError::NoPassword);
                }
                let ask = |prompt| {
                    super::prompt::password(prompt).map_err(|e| RepoError::Password(e.to_string()))
                };
                let a = ask("repository password: ")?;
                if confirm {
                    let b = ask("repeat the password: ")?;
                    if a != b {
                        return Err(RepoError::Password(
                            "the passwords differ; nothing was created".into(),
                        ));
                    }
                }
                a
            }
        };
        if pw.is_empty() {
            let from = match &self.password {
                PasswordSource::Command(c) => format!("the output of the password command {c:?}"),
                PasswordSource::File(f) => {
                    format!("the first line of password file {}", f.display())
                }
                PasswordSource::Value(_) => "TIERVAULT_PASSWORD".into(),
                PasswordSource::Prompt => "the password typed".into(),
            };
            return Err(RepoError::Password(format!(
                "the password is empty ({from} is empty); give a non-empty password"
            )));
        }
        Ok(pw)
    }
}

fn first_line(mut b: Vec<u8>) -> Vec<u8> {
    if let Some(i) = b.iter().position(|&c| c == b'\n') {
        b.truncate(i);
    }
    if b.last() == Some(&b'\r') {
        b.pop();
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(locs: &[&str]) -> anyhow::Result<()> {
        let specs: Vec<TierSpec> = locs.iter().map(|l| TierSpec::parse(l).unwrap()).collect();
        check_tiers(&specs)
    }

    #[test]
    fn one_place_is_named_once_and_distinct_places_pass() {
        // The same bucket at two providers, two paths on one server, and a
        // local directory that does not exist yet (before `init`).
        check(&[
            "s3://backup/vault?endpoint=http://nas:3900",
            "s3://backup/vault?endpoint=https://s3.offsite.example",
            "sftp://me@host:22/srv/a",
            "sftp://me@host:22/srv/b",
            "/nonexistent/tiervault/new",
        ])
        .unwrap();
        let twice = [
            [
                "s3://backup/vault?endpoint=http://nas:3900",
                "s3://backup/vault/?endpoint=http://nas:3900",
            ],
            ["sftp://me@host/srv/a", "sftp://me@host/srv/a/"],
            ["/nonexistent/x", "/nonexistent/./x/"],
            ["/nonexistent/x", "file:///nonexistent/x"],
        ];
        for pair in twice {
            let e = check(&pair).unwrap_err().to_string();
            assert!(e.contains("name each tier once"), "{pair:?}: {e}");
        }
        let e = check(&["file://"]).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let file = std::env::current_exe().unwrap();
        let e = check(&[&format!("file://{}", file.display())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a file"), "{e}");
    }
}

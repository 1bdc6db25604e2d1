//! `tiers`, `sync` and `takeover`: the tier rules seen from the command line.

use super::Settings;
use serde_json::json;
use tiervault::human_bytes;

pub fn tiers(s: &Settings, a: &super::args::TiersArgs) -> anyhow::Result<i32> {
    let repo = s.open()?;
    let set = repo.tiers();
    // Best effort: without a known pack, throughput shows once reads measure it.
    if let Ok(Some((pack, len))) = repo.index().some_pack() {
        set.measure_throughput(&tiervault::format::names::pack(&pack), len.min(4 << 20));
    }
    let status = set.status(true);
    let lacks: Vec<Option<(u64, u64)>> = status
        .iter()
        .map(|t| {
            (a.lacks && t.online && !t.synchronised)
                .then(|| set.lacks(&t.name))
                .flatten()
        })
        .collect();
    if s.json {
        let rows: Vec<_> = status
            .iter()
            .zip(&lacks)
            .map(|(t, l)| {
                let mut v = serde_json::to_value(t).expect("serialises");
                if let Some((n, b)) = l {
                    v["lacks_objects"] = json!(n);
                    v["lacks_bytes"] = json!(b);
                }
                v
            })
            .collect();
        outln!("{}", serde_json::Value::Array(rows));
        return Ok(0);
    }
    for (t, l) in status.iter().zip(&lacks) {
        let state = match (t.online, t.synchronised) {
            _ if t.other_repository => "left out: it holds another repository".to_string(),
            (false, _) => "offline".to_string(),
            (true, true) => "online, synchronised".to_string(),
            (true, false) => match l {
                Some((n, b)) => format!("online, behind: lacks {n} objects ({})", human_bytes(*b)),
                None => "online, behind (`tiervault sync` catches it up)".to_string(),
            },
        };
        outln!("{}", t.name);
        outln!("  state:      {state}");
        outln!(
            "  revision:   {}",
            t.revision.map_or("unknown".into(), |r| r.to_string())
        );
        if let Some(ms) = t.latency_ms {
            outln!("  latency:    {ms:.1} ms");
        }
        if let Some(mb) = t.throughput_mib_s {
            outln!("  throughput: {mb:.1} MiB/s");
        }
        if let Some(p) = t.priority {
            outln!("  priority:   {p}");
        }
        if let Some(e) = &t.last_error {
            outln!("  last error: {e}");
        }
    }
    Ok(0)
}

pub fn sync(s: &Settings) -> anyhow::Result<i32> {
    let repo = s.open()?;
    let quiet = s.quiet;
    let (done, copied) = repo
        .tiers()
        .sync(&repo.local_state(), &|| false, &mut |tier, what| {
            if !quiet {
                errln!("{tier}: {what}");
            }
        })?;
    if s.json {
        outln!("{}", json!({"complete": done, "copied": copied}));
    } else if !quiet {
        outln!(
            "{} ({copied} objects copied)",
            if done {
                "every online tier is synchronised"
            } else {
                "stopped early; run `tiervault sync` again to resume"
            }
        );
    }
    let behind: Vec<String> = repo
        .tiers()
        .status(false)
        .into_iter()
        .filter(|t| !t.synchronised && !t.other_repository)
        .map(|t| {
            let why = if t.online { "online" } else { "offline" };
            format!("{} ({why})", t.name)
        })
        .collect();
    if !behind.is_empty() && !quiet {
        errln!("still behind: {}", behind.join(", "));
    }
    Ok(if done { 0 } else { 1 })
}

pub fn takeover(s: &Settings) -> anyhow::Result<i32> {
    let repo = s.open()?;
    drop(repo.begin_write(true)?);
    if !s.quiet {
        outln!("this installation is now the writer of the repository on every online tier");
    }
    Ok(0)
}

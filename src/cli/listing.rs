//! `revisions` and `ls`: read-only listings, as text or JSON.

use super::args::{LsArgs, RevisionsArgs};
use super::Settings;
use serde_json::json;
use tiervault::format::tree::{Body, Node, NodeKind};
use tiervault::format::BlobId;
use tiervault::repo::Repository;
use tiervault::timefmt;

/// Splits `REV[:PATH]`; revision names never contain `:`.
pub fn split_spec(spec: &str) -> (&str, &[u8]) {
    match spec.split_once(':') {
        Some((r, p)) => (r, p.as_bytes()),
        None => (spec, b""),
    }
}

pub fn revisions(s: &Settings, a: &RevisionsArgs) -> anyhow::Result<i32> {
    let repo = s.open()?;
    let revs = repo.revisions()?;
    let names = timefmt::revision_names(&revs);
    let rows: Vec<_> = revs
        .iter()
        .zip(names)
        .filter(|((_, r), _)| {
            a.host.as_ref().is_none_or(|h| &r.host == h)
                && a.tag.as_ref().is_none_or(|t| r.tags.contains(t))
        })
        .collect();
    if s.json {
        let v: Vec<_> = rows
            .iter()
            .map(|((id, r), name)| {
                json!({
                    "id": id.to_hex(), "short_id": id.short(), "name": name,
                    "time": timefmt::rfc3339(r.time), "end_time": timefmt::rfc3339(r.end_time),
                    "host": r.host, "user": r.user, "tags": r.tags,
                    "paths": r.paths.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>(),
                    "tree": r.tree.to_hex(), "parent": r.parent.map(|p| p.to_hex()),
                    "program": r.program,
                    "stats": {"files": r.stats.files, "dirs": r.stats.dirs, "bytes": r.stats.bytes,
                              "bytes_added": r.stats.bytes_added, "blobs_added": r.stats.blobs_added,
                              "errors": r.stats.errors},
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    outln!(
        "{:<8}  {:<22}  {:<16}  {:>10}  {:<12}  paths",
        "id",
        "name",
        "host",
        "size",
        "tags"
    );
    for ((id, r), name) in &rows {
        let paths: Vec<_> = r
            .paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        outln!(
            "{:<8}  {:<22}  {:<16}  {:>10}  {:<12}  {}",
            id.short(),
            name,
            r.host,
            tiervault::human_bytes(r.stats.bytes),
            r.tags.join(","),
            paths.join(" ")
        );
    }
    outln!("{} revision(s)", rows.len());
    Ok(0)
}

pub fn mode_string(n: &Node) -> String {
    let m = n.meta.mode;
    let mut s = String::with_capacity(10);
    s.push(n.kind.letter());
    for (i, who) in [(6, 0o4000), (3, 0o2000), (0, 0o1000)] {
        let bits = (m >> i) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let special = m & who != 0;
        let x = bits & 1 != 0;
        s.push(match (special, x, i) {
            (true, true, 0) => 't',
            (true, false, 0) => 'T',
            (true, true, _) => 's',
            (true, false, _) => 'S',
            (false, true, _) => 'x',
            (false, false, _) => '-',
        });
    }
    s
}

fn node_json(path: &[u8], n: &Node) -> serde_json::Value {
    let m = &n.meta;
    let mut v = json!({
        "path": String::from_utf8_lossy(path), "name": String::from_utf8_lossy(&n.name),
        "type": n.kind.name(), "mode": m.mode, "permissions": mode_string(n),
        "uid": m.uid, "gid": m.gid, "user": String::from_utf8_lossy(&m.user), "group": String::from_utf8_lossy(&m.group),
        "size": m.size, "mtime": timefmt::rfc3339(m.mtime), "atime": timefmt::rfc3339(m.atime), "ctime": timefmt::rfc3339(m.ctime),
        "inode": m.inode, "links": m.nlink,
    });
    if std::str::from_utf8(path).is_err() {
        v["path_hex"] = json!(hex::encode(path));
    }
    if matches!(n.kind, NodeKind::CharDev | NodeKind::BlockDev) {
        v["rdev"] = json!(m.rdev);
    }
    if let Body::Symlink(t) = &n.body {
        v["target"] = json!(String::from_utf8_lossy(t));
    }
    if !m.xattrs.is_empty() {
        v["xattrs"] = json!(m
            .xattrs
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k))
            .collect::<Vec<_>>());
    }
    v
}

fn print_node(s: &Settings, a: &LsArgs, path: &[u8], n: &Node) {
    if s.json {
        outln!("{}", node_json(path, n));
    } else if a.long {
        let owner = if n.meta.user.is_empty() {
            n.meta.uid.to_string()
        } else {
            String::from_utf8_lossy(&n.meta.user).into_owned()
        };
        let group = if n.meta.group.is_empty() {
            n.meta.gid.to_string()
        } else {
            String::from_utf8_lossy(&n.meta.group).into_owned()
        };
        let mut line = format!(
            "{} {:>8} {:>8} {:>12} {} {}",
            mode_string(n),
            owner,
            group,
            n.meta.size,
            timefmt::short(n.meta.mtime),
            String::from_utf8_lossy(path)
        );
        if let Body::Symlink(t) = &n.body {
            line.push_str(&format!(" -> {}", String::from_utf8_lossy(t)));
        }
        outln!("{line}");
    } else {
        outln!("{}", String::from_utf8_lossy(path));
    }
}

fn walk(
    repo: &Repository,
    s: &Settings,
    a: &LsArgs,
    tree: &BlobId,
    prefix: &[u8],
) -> anyhow::Result<()> {
    for n in repo.load_tree(tree)? {
        // Nobody reads on (`tiervault ls … | head`).
        if tiervault::stdout_closed() {
            break;
        }
        let mut p = prefix.to_vec();
        p.push(b'/');
        p.extend_from_slice(&n.name);
        print_node(s, a, &p, &n);
        if let (Some(sub), false) = (n.subtree(), a.no_recursive) {
            walk(repo, s, a, &sub, &p)?;
        }
    }
    Ok(())
}

pub fn ls(s: &Settings, a: &LsArgs) -> anyhow::Result<i32> {
    let repo = s.open()?;
    let (rev, path) = split_spec(&a.target);
    let (_, r) = repo.resolve(rev)?;
    let prefix: Vec<u8> = path.strip_suffix(b"/").unwrap_or(path).to_vec();
    match repo.find_node(&r.tree, &prefix)? {
        None => walk(&repo, s, a, &r.tree, b""),
        Some(n) => match n.subtree() {
            Some(sub) => walk(&repo, s, a, &sub, &prefix),
            None => {
                print_node(s, a, &prefix, &n);
                Ok(())
            }
        },
    }?;
    Ok(0)
}

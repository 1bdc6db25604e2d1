//! `tiervault check`: verifies the repository on the tiers, independently of
//! the local cache.
//!
//! Structure: every index file opens; every pack an index names exists with
//! the right size; packs no index covers have a readable header; every
//! revision opens; every tree it reaches decodes; every blob referenced is in
//! some pack. `--read-data` also reads every pack whole, checks its BLAKE3
//! name, and decrypts and verifies every blob in it.

use crate::format::revision::Revision;
use crate::format::tree::{Body, Segment};
use crate::format::{indexfile, names, pack, BlobEntry, BlobId};
use crate::repo::{parse_config, parse_key_file, Repository};
use crate::tier::{get_parsed, Tier};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
pub struct CheckReport {
    pub packs: usize,
    pub blobs: usize,
    pub revisions: usize,
    pub trees: usize,
    pub packs_read: usize,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

struct Known {
    blobs: HashMap<BlobId, (BlobId, BlobEntry)>,
}

/// Checks the repository; with `read_data`, reads and verifies every pack
/// on every tier, and with `repair` also replaces a damaged or missing copy
/// on one tier with a verified copy from another.
pub fn run(repo: &Repository, read_data: bool, repair: bool) -> crate::repo::Result<CheckReport> {
    let store = repo.store();
    let mut r = CheckReport::default();
    let mut known = Known {
        blobs: HashMap::new(),
    };
    let listed: HashMap<BlobId, u64> = store
        .list("data/")?
        .into_iter()
        .filter_map(|o| Some((BlobId::from_hex(o.key.rsplit('/').next()?)?, o.size)))
        .collect();
    r.packs = listed.len();
    let mut indexed: HashMap<BlobId, u64> = HashMap::new();
    for obj in store.list("index/")? {
        let Some(id) = obj.key.strip_prefix("index/").and_then(BlobId::from_hex) else {
            r.errors
                .push(format!("{}: unexpected object name", obj.key));
            continue;
        };
        // A copy that does not open is passed over for another tier's;
        // `check_copies` names it.
        let packs = match get_parsed(store, &obj.key, |b| {
            indexfile::open(repo.keys(), &id, b).map_err(|e| e.to_string())
        }) {
            Ok(p) => p,
            Err(e) => {
                r.errors.push(format!("{}: {e}", obj.key));
                continue;
            }
        };
        for p in packs {
            match listed.get(&p.pack) {
                None => r.errors.push(format!(
                    "{}: named by {} but missing",
                    names::pack(&p.pack),
                    obj.key
                )),
                Some(&len) if len != p.pack_len => r.errors.push(format!(
                    "{}: size {len} but the index says {}",
                    names::pack(&p.pack),
                    p.pack_len
                )),
                Some(_) => {}
            }
            indexed.insert(p.pack, p.pack_len);
            for b in p.blobs {
                known.blobs.insert(b.id, (p.pack, b));
            }
        }
    }
    for (pack, len) in &listed {
        if indexed.contains_key(pack) {
            continue;
        }
        match repo.read_pack_header(pack, *len) {
            Ok(entries) => {
                r.notes.push(format!("{} is not in any index file yet (left by an interrupted backup; the next backup indexes it)", names::pack(pack)));
                for b in entries {
                    known.blobs.entry(b.id).or_insert((*pack, b));
                }
            }
            Err(e) => r.errors.push(format!("{}: {e}", names::pack(pack))),
        }
    }
    r.blobs = known.blobs.len();
    check_revisions(repo, store, &known, &mut r)?;
    check_copies(repo, &indexed, read_data, repair, &mut r);
    if read_data {
        read_all(repo, &listed, &known, repair, &mut r);
    }
    Ok(r)
}

/// With several tiers, each online tier's own copies: the objects above
/// were read from whichever tier was fastest, so a damaged copy on another
/// tier would go unseen. Each tier's `config`, key files, index files and
/// revisions are read and verified, and a bad copy is named with its tier
/// (replaced from a verified copy with `repair`). A `config` that opens
/// but differs from the one in use is a conflict, never repaired: which
/// one is right is for a person to say. Without `read_data` (which reads
/// every pack on every tier), each tier's listing of `data/` is also
/// compared with the packs the index files name.
fn check_copies(
    repo: &Repository,
    indexed: &HashMap<BlobId, u64>,
    read_data: bool,
    repair: bool,
    r: &mut CheckReport,
) {
    let tiers = repo.tiers().online();
    if tiers.len() < 2 {
        // One tier: the checks above read its only copies.
        return;
    }
    // Err(None): opens, but differs from the copy in use.
    let verify = |key: &str, b: &[u8]| -> Result<(), Option<String>> {
        if key == names::CONFIG {
            if parse_config(b).map_err(Some)? != *repo.config() {
                return Err(None);
            }
            Ok(())
        } else if key.starts_with("keys/") {
            parse_key_file(key, b).map(drop).map_err(Some)
        } else if let Some(id) = key.strip_prefix("index/").and_then(BlobId::from_hex) {
            indexfile::open(repo.keys(), &id, b)
                .map(drop)
                .map_err(|e| Some(e.to_string()))
        } else if let Some(id) = key.strip_prefix("revisions/").and_then(BlobId::from_hex) {
            Revision::open(repo.keys(), &id, b)
                .map(drop)
                .map_err(|e| Some(e.to_string()))
        } else {
            Ok(())
        }
    };
    // Each tier's objects; None for a tier whose listing failed (said).
    let mut held: Vec<Option<HashSet<String>>> = Vec::new();
    let mut all: std::collections::BTreeSet<String> = [names::CONFIG.to_string()].into();
    for t in &tiers {
        let mut mine: HashSet<String> = [names::CONFIG.to_string()].into();
        let mut listed = true;
        for prefix in ["keys/", "index/", "revisions/"] {
            match t.list(prefix) {
                Ok(objs) => mine.extend(objs.into_iter().map(|o| o.key)),
                Err(e) => {
                    r.errors
                        .push(format!("listing {prefix} on tier {}: {e}", t.name()));
                    listed = false;
                }
            }
        }
        all.extend(mine.iter().cloned());
        held.push(listed.then_some(mine));
    }
    for key in &all {
        let mut good = None;
        let mut bad = Vec::new();
        for (t, mine) in tiers.iter().zip(&held) {
            let Some(mine) = mine else { continue };
            let on = t.name();
            if !mine.contains(key) {
                bad.push((*t, format!("{key} is missing on tier {on}"), Copy::Missing));
                continue;
            }
            match t.get(key) {
                Ok(b) => match verify(key, &b) {
                    Ok(()) => {
                        good.get_or_insert(b);
                    }
                    Err(Some(e)) => {
                        bad.push((*t, format!("{key} on tier {on}: {e}"), Copy::Damaged))
                    }
                    Err(None) => bad.push((*t, format!("{key} on tier {on} differs from the copy in use; compare the copies and copy the right one over the other by hand"), Copy::Conflict)),
                },
                Err(e) if e.is_not_found() => {
                    bad.push((*t, format!("{key} is missing on tier {on}"), Copy::Missing))
                }
                Err(e) => r.errors.push(format!("{key} on tier {on}: {e}")),
            }
        }
        settle(
            key,
            good.as_deref(),
            bad,
            repair,
            &mut r.errors,
            &mut r.notes,
        );
    }
    if read_data {
        return;
    }
    for t in &tiers {
        let Ok(objs) = t.list("data/") else {
            r.errors
                .push(format!("listing data/ on tier {}: failed", t.name()));
            continue;
        };
        let have: HashSet<String> = objs.into_iter().map(|o| o.key).collect();
        for pack in indexed.keys() {
            let key = names::pack(pack);
            if !have.contains(&key) {
                r.notes.push(format!(
                    "{key} is missing on tier {}; `tiervault sync` or `check --read-data --repair` copies it",
                    t.name()
                ));
            }
        }
    }
}

/// What is wrong with one tier's copy of an object.
enum Copy {
    Missing,
    Damaged,
    /// Opens, but differs from the copy in use.
    Conflict,
}

/// What to do with the bad copies of `key`, `(tier, message, what)`,
/// given a verified copy `good`: replace each with `repair`, else say how.
/// A missing copy is a note (a tier that is behind lacks objects until
/// `sync`); a damaged one is an error; a conflict is an error that no
/// repair touches.
fn settle(
    key: &str,
    good: Option<&[u8]>,
    bad: Vec<(&dyn Tier, String, Copy)>,
    repair: bool,
    errs: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    for (t, msg, what) in bad {
        match (good, what) {
            (_, Copy::Conflict) | (None, _) => errs.push(msg),
            (Some(bytes), _) if repair => match t.put(key, bytes) {
                Ok(()) => notes.push(format!("{msg}: repaired from a verified copy")),
                Err(e) => errs.push(format!("{msg}, and repairing it failed: {e}")),
            },
            (Some(_), Copy::Missing) => notes.push(format!(
                "{msg}; `tiervault sync` or `check --read-data --repair` copies it"
            )),
            (Some(_), _) => errs.push(format!(
                "{msg}; `check --read-data --repair` replaces it with a verified copy"
            )),
        }
    }
}

fn check_revisions(
    repo: &Repository,
    store: &dyn Tier,
    known: &Known,
    r: &mut CheckReport,
) -> crate::repo::Result<()> {
    let mut seen_trees = HashSet::new();
    for obj in store.list("revisions/")? {
        let Some(id) = obj
            .key
            .strip_prefix("revisions/")
            .and_then(BlobId::from_hex)
        else {
            r.errors
                .push(format!("{}: unexpected object name", obj.key));
            continue;
        };
        let rev = match get_parsed(store, &obj.key, |b| {
            Revision::open(repo.keys(), &id, b).map_err(|e| e.to_string())
        }) {
            Ok(rev) => rev,
            Err(e) => {
                r.errors.push(format!("{}: {e}", obj.key));
                continue;
            }
        };
        r.revisions += 1;
        let mut stack = vec![(rev.tree, String::from("/"))];
        while let Some((tree, path)) = stack.pop() {
            if !seen_trees.insert(tree) {
                continue;
            }
            r.trees += 1;
            let nodes = match read_tree(repo, store, known, &tree) {
                Ok(n) => n,
                Err(e) => {
                    r.errors.push(format!(
                        "revision {}: tree {} at {path}: {e}",
                        id.short(),
                        tree.short()
                    ));
                    continue;
                }
            };
            for n in nodes {
                let child = format!("{}{}", path, String::from_utf8_lossy(&n.name));
                match &n.body {
                    Body::Dir(sub) => stack.push((*sub, child + "/")),
                    Body::File(segs) => {
                        for s in segs {
                            if let Segment::Data { id: b, .. } = s {
                                if !known.blobs.contains_key(b) {
                                    r.errors.push(format!(
                                        "revision {}: {child}: data blob {} is in no pack",
                                        id.short(),
                                        b.short()
                                    ));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

fn read_tree(
    repo: &Repository,
    store: &dyn Tier,
    known: &Known,
    id: &BlobId,
) -> Result<Vec<crate::format::tree::Node>, String> {
    let (pack, e) = known.blobs.get(id).ok_or("tree blob is in no pack")?;
    let stored = store
        .get_range(&names::pack(pack), e.offset.into(), e.stored_len.into())
        .map_err(|e| e.to_string())?;
    let plain = pack::open_blob(repo.keys(), e, &stored).map_err(|e| e.to_string())?;
    crate::format::tree::decode_tree(&plain).map_err(|e| e.to_string())
}

fn read_all(
    repo: &Repository,
    listed: &HashMap<BlobId, u64>,
    known: &Known,
    repair: bool,
    r: &mut CheckReport,
) {
    let packs: Vec<BlobId> = listed.keys().copied().collect();
    let results: Vec<(Vec<String>, Vec<String>)> = std::thread::scope(|s| {
        let chunks: Vec<&[BlobId]> = packs.chunks(packs.len().div_ceil(2).max(1)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|p| read_pack(repo, p, known, repair))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![(vec!["a check worker panicked".into()], vec![])])
            })
            .collect()
    });
    r.packs_read = packs.len();
    for (errs, notes) in results {
        r.errors.extend(errs);
        r.notes.extend(notes);
    }
}

/// Reads pack `id` from every tier: a copy is good when its content hashes
/// to its name. The first good copy is verified blob by blob; damaged and
/// missing copies are named with their tier, and replaced when `repair`.
/// Returns `(errors, notes)`.
fn read_pack(
    repo: &Repository,
    id: &BlobId,
    known: &Known,
    repair: bool,
) -> (Vec<String>, Vec<String>) {
    let key = names::pack(id);
    let mut errs = Vec::new();
    let mut notes = Vec::new();
    let mut good: Option<Vec<u8>> = None;
    let mut bad = Vec::new();
    let tiers = repo.tiers().online();
    let many = tiers.len() > 1;
    for t in &tiers {
        let on = if many {
            format!(" on tier {}", t.name())
        } else {
            String::new()
        };
        match t.get(&key) {
            Ok(b) if BlobId::of_stored(&b) == *id => {
                if good.is_none() {
                    good = Some(b);
                }
            }
            Ok(_) => bad.push((
                *t,
                format!("{key}{on}: content does not match its name (the pack is damaged)"),
                Copy::Damaged,
            )),
            Err(e) if e.is_not_found() && many => {
                bad.push((*t, format!("{key} is missing{on}"), Copy::Missing))
            }
            Err(e) => errs.push(format!("{key}{on}: {e}")),
        }
    }
    settle(&key, good.as_deref(), bad, repair, &mut errs, &mut notes);
    let Some(bytes) = good else {
        return (errs, notes);
    };
    let entries = match pack::parse_pack(repo.keys(), &bytes) {
        Ok(e) => e,
        Err(e) => {
            errs.push(format!("{key}: {e}"));
            return (errs, notes);
        }
    };
    for e in &entries {
        // parse_pack checked the range; compute it without u32 overflow.
        let Some(stored) = bytes.get(e.offset as usize..e.offset as usize + e.stored_len as usize)
        else {
            errs.push(format!(
                "{key}: blob {} lies outside the pack",
                e.id.short()
            ));
            continue;
        };
        if let Err(err) = pack::open_blob(repo.keys(), e, stored) {
            errs.push(format!("{key}: blob {}: {err}", e.id.short()));
        }
        if let Some((p, ie)) = known.blobs.get(&e.id) {
            if p == id && ie != e {
                errs.push(format!(
                    "{key}: blob {} differs from its index entry",
                    e.id.short()
                ));
            }
        }
    }
    (errs, notes)
}

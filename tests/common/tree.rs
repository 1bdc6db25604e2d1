//! A hostile source tree and a comparator that reports every difference a
//! faithful restore must not have.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn set_times(p: &Path, a: (i64, i64), m: (i64, i64)) {
    let ts = [
        libc::timespec {
            tv_sec: a.0,
            tv_nsec: a.1,
        },
        libc::timespec {
            tv_sec: m.0,
            tv_nsec: m.1,
        },
    ];
    // SAFETY: valid path and timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn setxattr(p: &Path, name: &str, val: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid pointers for the given lengths.
    let r =
        unsafe { libc::lsetxattr(c(p).as_ptr(), n.as_ptr(), val.as_ptr().cast(), val.len(), 0) };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::lchown(c(p).as_ptr(), uid, gid) }, 0);
}

pub fn mknod(p: &Path, mode: u32, dev: u64) {
    // SAFETY: valid path.
    let r = unsafe { libc::mknod(c(p).as_ptr(), mode, dev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn set_mode(p: &Path, mode: u32) {
    chmod(p, mode);
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

use super::random_bytes as pseudo_random;

/// Options for the size of the hostile tree.
pub struct Shape {
    pub wide_dir_entries: usize,
    pub depth: usize,
    pub sparse_size: u64,
}

impl Shape {
    pub fn full() -> Self {
        Self {
            wide_dir_entries: 5000,
            depth: 60,
            sparse_size: 1 << 30,
        }
    }
    pub fn small() -> Self {
        Self {
            wide_dir_entries: 50,
            depth: 8,
            sparse_size: 64 << 20,
        }
    }
}

/// A time as (seconds, nanoseconds).
type Times = (i64, i64);

/// Builds every case a backup must preserve under `root` (must be run as
/// root for owners and device nodes).
pub fn build_nasty(root: &Path, shape: &Shape) {
    fs::create_dir_all(root).unwrap();
    // Paths with their (atime, mtime), set at the end: building the rest
    // would change them.
    let mut post: Vec<(PathBuf, Times, Times)> = Vec::new();

    // Odd names: not UTF-8, control characters, spaces, a leading dash,
    // unicode, and the longest name ext4 allows.
    let names: Vec<OsString> = vec![
        OsString::from_vec(b"not-utf8-\xff\xfe\x80".to_vec()),
        OsString::from("new\nline"),
        OsString::from("tab\there"),
        OsString::from(" leading and trailing space "),
        OsString::from("-dash"),
        OsString::from("ünïcødé-😀"),
        OsString::from("a".repeat(255)),
        OsString::from("back\\slash"),
        OsString::from("colon:star*?"),
    ];
    let odd = root.join("odd names");
    fs::create_dir(&odd).unwrap();
    for (i, n) in names.iter().enumerate() {
        fs::write(odd.join(n), format!("content {i}")).unwrap();
    }
    fs::create_dir(odd.join(OsStr::from_bytes(b"dir-\xc3\x28"))).unwrap();

    // Permissions and owners.
    let perm = root.join("perms");
    fs::create_dir(&perm).unwrap();
    for (name, mode, uid, gid) in [
        ("none", 0o000, 0, 0),
        ("setuid", 0o4755, 1234, 5678),
        ("setgid", 0o2711, 0, 5678),
        ("private", 0o600, 65534, 65534),
        ("group-rw", 0o660, 1000, 1001),
        ("world", 0o777, 4_000_000_000, 3_000_000_000),
    ] {
        let p = perm.join(name);
        fs::write(&p, name).unwrap();
        lchown(&p, uid, gid);
        chmod(&p, mode);
    }
    let sticky = perm.join("sticky-dir");
    fs::create_dir(&sticky).unwrap();
    chmod(&sticky, 0o1777);
    let sgid_dir = perm.join("setgid-dir");
    fs::create_dir(&sgid_dir).unwrap();
    lchown(&sgid_dir, 42, 43);
    chmod(&sgid_dir, 0o2750);
    let closed = perm.join("closed-dir");
    fs::create_dir(&closed).unwrap();
    fs::write(closed.join("inside"), "x").unwrap();
    chmod(&closed, 0o000);

    // Times before 1970, after 2038, and with odd nanoseconds.
    let times = root.join("times");
    fs::create_dir(&times).unwrap();
    for (name, a, m) in [
        (
            "pre-1970",
            (-1_234_567_890, 123_456_789),
            (-86_400, 999_999_999),
        ),
        (
            "post-2038",
            (4_102_444_800, 1),
            (2_147_483_648, 500_000_000),
        ),
        (
            "far-future",
            (16_725_225_600, 7),
            (253_402_300_799, 999_999_998),
        ),
        ("epoch", (0, 0), (0, 0)),
    ] {
        let p = times.join(name);
        fs::write(&p, name).unwrap();
        post.push((p, a, m));
    }

    // Xattrs, including binary values and a POSIX ACL.
    let x = root.join("xattrs");
    fs::create_dir(&x).unwrap();
    let xf = x.join("file");
    fs::write(&xf, "x").unwrap();
    setxattr(&xf, "user.text", b"hello");
    setxattr(&xf, "user.binary", &[0, 1, 2, 255, 0]);
    setxattr(&xf, "user.empty", b"");
    setxattr(&xf, "user.big", &pseudo_random(3000, 9));
    setxattr(&xf, "trusted.secret", b"root only");
    setxattr(&x, "user.on-dir", b"dir value");
    let acl = x.join("acl");
    fs::write(&acl, "acl").unwrap();
    let st = std::process::Command::new("setfacl")
        .args(["-m", "u:1234:rw,g:77:r"])
        .arg(&acl)
        .status()
        .expect("setfacl (package acl)");
    assert!(st.success());
    let dacl = x.join("acl-dir");
    fs::create_dir(&dacl).unwrap();
    let st = std::process::Command::new("setfacl")
        .args(["-d", "-m", "u:1234:rwx"])
        .arg(&dacl)
        .status()
        .unwrap();
    assert!(st.success());

    // Symlinks: relative, absolute, dangling, non-UTF-8 target, with times.
    let l = root.join("links");
    fs::create_dir(&l).unwrap();
    std::os::unix::fs::symlink("../times/epoch", l.join("relative")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", l.join("absolute")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", l.join("dangling")).unwrap();
    std::os::unix::fs::symlink(
        OsStr::from_bytes(b"\xff\xfe-target"),
        l.join("binary-target"),
    )
    .unwrap();
    lchown(&l.join("dangling"), 1234, 4321);
    post.push((l.join("relative"), (1_000_000_000, 5), (1_000_000_001, 6)));

    // Hardlinks: a group of three across directories, and a pair.
    let h = root.join("hardlinks");
    fs::create_dir_all(h.join("sub")).unwrap();
    fs::write(h.join("one"), "shared by three").unwrap();
    fs::hard_link(h.join("one"), h.join("two")).unwrap();
    fs::hard_link(h.join("one"), h.join("sub/three")).unwrap();
    fs::write(h.join("pair-a"), "pair").unwrap();
    fs::hard_link(h.join("pair-a"), h.join("pair-b")).unwrap();
    fs::write(h.join("alone"), "pair").unwrap(); // same content, not a link

    // Device nodes, a fifo and a socket.
    let d = root.join("special");
    fs::create_dir(&d).unwrap();
    mknod(
        &d.join("null-like"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    mknod(
        &d.join("loop-like"),
        libc::S_IFBLK | 0o660,
        libc::makedev(7, 200),
    );
    mknod(
        &d.join("big-major"),
        libc::S_IFCHR | 0o600,
        libc::makedev(4000, 300_000),
    );
    mknod(&d.join("fifo"), libc::S_IFIFO | 0o644, 0);
    drop(std::os::unix::net::UnixListener::bind(d.join("socket")).unwrap());

    // Sparse files: large with scattered data, a leading hole, a trailing hole.
    let s = root.join("sparse");
    fs::create_dir(&s).unwrap();
    let big = fs::File::create(s.join("huge-sparse")).unwrap();
    big.set_len(shape.sparse_size).unwrap();
    use std::os::unix::fs::FileExt;
    big.write_all_at(&pseudo_random(1 << 20, 1), 0).unwrap();
    big.write_all_at(&pseudo_random(300_000, 2), shape.sparse_size / 3)
        .unwrap();
    big.write_all_at(b"the end", shape.sparse_size - 7).unwrap();
    let lead = fs::File::create(s.join("leading-hole")).unwrap();
    lead.write_all_at(b"data after a hole", 10 << 20).unwrap();
    let trail = fs::File::create(s.join("trailing-hole")).unwrap();
    trail.write_all_at(b"data before a hole", 0).unwrap();
    trail.set_len(20 << 20).unwrap();
    fs::File::create(s.join("all-hole"))
        .unwrap()
        .set_len(5 << 20)
        .unwrap();

    // Content: empty, multi-chunk, duplicate, a file of zeros (not sparse).
    let data = root.join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("empty"), "").unwrap();
    fs::write(data.join("random-12M"), pseudo_random(12 << 20, 3)).unwrap();
    fs::write(data.join("copy-of-random"), pseudo_random(12 << 20, 3)).unwrap();
    fs::write(data.join("zeros-3M"), vec![0u8; 3 << 20]).unwrap();
    let mut text = fs::File::create(data.join("text")).unwrap();
    for i in 0..100_000 {
        writeln!(text, "line {i} of a compressible text file").unwrap();
    }
    fs::create_dir(data.join("empty-dir")).unwrap();

    // A wide directory and a deep one.
    let wide = root.join("wide");
    fs::create_dir(&wide).unwrap();
    for i in 0..shape.wide_dir_entries {
        fs::write(
            wide.join(format!("f{i:05}")),
            format!("small file {i}\n").repeat(i % 7),
        )
        .unwrap();
    }
    let mut deep = root.join("deep");
    for i in 0..shape.depth {
        deep.push(format!("level{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), "at the bottom").unwrap();

    // Fixed times on everything (files first, directories deepest first),
    // then the special times above.
    let mut all = Vec::new();
    collect(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        let t = 1_600_000_000 + i as i64;
        set_times(
            p,
            (t, 111_111_111 + i as i64),
            (t - 50, 222_222_222 + i as i64),
        );
    }
    for (p, a, m) in post {
        set_times(&p, a, m);
    }
    set_times(root, (1_700_000_000, 1), (1_700_000_000, 2));
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        if e.file_type().unwrap().is_dir() {
            collect(&path, out);
        }
        out.push(path);
    }
}

/// Everything recorded about one entry before any content is read.
#[derive(Debug, PartialEq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    atime: (i64, i64),
    rdev: u64,
    target: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    ino: u64,
}

fn kind(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_char_device() {
        "chardev"
    } else if ft.is_block_device() {
        "blockdev"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "socket"
    }
}

fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid buffer.
    let n = unsafe { libc::llistxattr(c(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: valid buffer.
        let m =
            unsafe { libc::lgetxattr(c(p).as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(m >= 0);
        v.truncate(m as usize);
        out.push((name.to_vec(), v));
    }
    out.sort();
    out
}

/// Records every entry below `root` (stat before any listing or reading,
/// so our own reads cannot disturb atimes).
fn scan(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        // Listed without touching the directory's atime.
        let names = tiervault::fsmeta::read_dir_names(&dir).unwrap();
        for n in names.iter().map(|n| OsStr::from_bytes(n)) {
            let r = rel.join(n);
            let p = root.join(&r);
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let e = Entry {
                kind: kind(ft),
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_dir() { 0 } else { m.size() },
                mtime: (m.mtime(), m.mtime_nsec()),
                atime: (m.atime(), m.atime_nsec()),
                rdev: if ft.is_char_device() || ft.is_block_device() {
                    m.rdev()
                } else {
                    0
                },
                target: ft
                    .is_symlink()
                    .then(|| fs::read_link(&p).unwrap().into_os_string().into_vec()),
                xattrs: xattrs(&p),
                ino: m.ino(),
            };
            if ft.is_dir() {
                stack.push(r.clone());
            }
            out.insert(r.into_os_string().into_vec(), e);
        }
    }
    out
}

/// Data regions as `(offset, len)` via SEEK_DATA/SEEK_HOLE.
pub fn data_map(p: &Path) -> Vec<(i64, i64)> {
    let f = open_noatime(p);
    use std::os::unix::io::AsRawFd;
    let size = f.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < size {
        // SAFETY: valid fd.
        let d = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if d < 0 {
            break;
        }
        // SAFETY: valid fd.
        let h = unsafe { libc::lseek(f.as_raw_fd(), d, libc::SEEK_HOLE) };
        out.push((d, h - d));
        pos = h;
    }
    out
}

fn open_noatime(p: &Path) -> fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(p)
        .unwrap()
}

fn hash_file(p: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut open_noatime(p), &mut h).unwrap();
    h.finalize()
}

/// Compares two trees; returns a description of every difference.
/// `check_atime` is off for copies whose tool cannot preserve atimes.
pub fn compare(src: &Path, dst: &Path, check_atime: bool) -> Vec<String> {
    compare_with(src, dst, check_atime, true)
}

/// `compare`, optionally without the hole map (`rsync -S` turns every run
/// of zeros into a hole, whatever the source holds).
pub fn compare_with(src: &Path, dst: &Path, check_atime: bool, check_holes: bool) -> Vec<String> {
    let a = scan(src);
    let b = scan(dst);
    let mut diffs = Vec::new();
    let show = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        diffs.push(format!("missing in copy: {}", show(k)));
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("extra in copy: {}", show(k)));
    }
    // Hardlink groups: entries sharing an inode in the source must share one
    // in the copy, and no others.
    let group = |m: &BTreeMap<Vec<u8>, Entry>| {
        let mut g: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        for (k, e) in m.iter().filter(|(_, e)| e.kind != "dir") {
            g.entry(e.ino).or_default().push(k.clone());
        }
        let mut v: Vec<Vec<Vec<u8>>> = g.into_values().filter(|v| v.len() > 1).collect();
        v.sort();
        v
    };
    if group(&a) != group(&b) {
        diffs.push(format!(
            "hardlink groups differ: source {:?}, copy {:?}",
            group(&a).len(),
            group(&b).len()
        ));
    }
    for (k, ea) in &a {
        let Some(eb) = b.get(k) else { continue };
        let p = show(k);
        let mut d = |what: &str, x: String, y: String| {
            diffs.push(format!("{p}: {what}: source {x}, copy {y}"))
        };
        macro_rules! cmp {
            ($f:ident) => {
                if ea.$f != eb.$f {
                    d(
                        stringify!($f),
                        format!("{:?}", ea.$f),
                        format!("{:?}", eb.$f),
                    );
                }
            };
        }
        cmp!(kind);
        cmp!(mode);
        cmp!(uid);
        cmp!(gid);
        cmp!(size);
        cmp!(mtime);
        cmp!(rdev);
        cmp!(target);
        cmp!(xattrs);
        // Reading a symlink's target updates its atime on Linux, so no tool
        // can keep a symlink's atime across a backup.
        if check_atime && ea.kind != "symlink" {
            cmp!(atime);
        }
        if ea.kind == "file" && eb.kind == "file" && ea.size == eb.size {
            let (pa, pb) = (
                src.join(OsStr::from_bytes(k)),
                dst.join(OsStr::from_bytes(k)),
            );
            if hash_file(&pa) != hash_file(&pb) {
                diffs.push(format!("{p}: content differs"));
            }
            let (ma, mb) = (data_map(&pa), data_map(&pb));
            if check_holes && ma != mb {
                diffs.push(format!("{p}: holes differ: source {ma:?}, copy {mb:?}"));
            }
        }
    }
    diffs
}

/// Asserts `compare` finds nothing, printing the first differences.
pub fn assert_same(src: &Path, dst: &Path, check_atime: bool) {
    assert_same_with(src, dst, check_atime, true);
}

pub fn assert_same_with(src: &Path, dst: &Path, check_atime: bool, check_holes: bool) {
    let d = compare_with(src, dst, check_atime, check_holes);
    assert!(
        d.is_empty(),
        "{} difference(s):\n{}",
        d.len(),
        d.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

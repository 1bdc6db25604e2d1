//! Reading and writing file-system metadata with the raw calls the standard
//! library does not expose: xattrs, `O_NOATIME`, directory listing without
//! touching atimes, hole maps, device nodes, nanosecond times on symlinks,
//! owner names.
//!
//! Paths are `&Path` built from raw bytes, so names that are not UTF-8 work.

use crate::format::tree::Timestamp;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::Path;

pub fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens with `O_NOATIME` so that backing up does not change atimes; falls
/// back to a plain open where the kernel refuses it (files we do not own).
fn open_noatime(p: &Path, flags: libc::c_int) -> io::Result<File> {
    let c = cpath(p)?;
    let base = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: c is a valid NUL-terminated string.
    let mut fd = unsafe { libc::open(c.as_ptr(), base | libc::O_NOATIME) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        // SAFETY: as above.
        fd = unsafe { libc::open(c.as_ptr(), base) };
    }
    check(fd)?;
    // SAFETY: fd is a freshly opened descriptor that we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens a file for reading. `O_NONBLOCK` keeps a file that was swapped
/// for a FIFO from blocking the reader; it has no effect on regular files.
pub fn open_file(p: &Path) -> io::Result<File> {
    open_noatime(p, libc::O_RDONLY | libc::O_NONBLOCK)
}

/// Names in a directory, excluding `.` and `..`, sorted, read without
/// updating the directory's atime.
pub fn read_dir_names(p: &Path) -> io::Result<Vec<Vec<u8>>> {
    let f = open_noatime(p, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let fd = f.as_raw_fd();
    // SAFETY: fdopendir takes ownership of fd on success, so we forget the File.
    let dir = unsafe { libc::fdopendir(fd) };
    if dir.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(f);
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; readdir on a valid DIR*.
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: d_name is NUL-terminated within the dirent.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    };
    // SAFETY: dir is valid and closed exactly once.
    unsafe { libc::closedir(dir) };
    result?;
    names.sort();
    Ok(names)
}

/// Extended attributes of `p` (not following symlinks), sorted by name.
pub fn xattrs(p: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c = cpath(p)?;
    let mut buf = vec![0u8; 1024];
    let len = loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in buf[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).expect("split on NUL");
        let mut val = vec![0u8; 256];
        loop {
            // SAFETY: val is valid for val.len() bytes.
            let n = unsafe {
                libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len())
            };
            if n >= 0 {
                val.truncate(n as usize);
                out.push((name.to_vec(), val));
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => val.resize(val.len() * 8, 0),
                Some(libc::ENODATA) => break, // removed meanwhile
                _ => return Err(e),
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn set_xattr(p: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let c = cpath(p)?;
    let n = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "xattr name contains NUL"))?;
    // SAFETY: pointers are valid for the given lengths.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })?;
    Ok(())
}

/// Data regions of an open file as `(offset, len)`, found with
/// `SEEK_DATA`/`SEEK_HOLE`. Everything else reads as zeros.
pub fn data_regions(f: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on a valid fd.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(vec![(0, size)]); // file system without hole support
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            size as i64
        } else {
            (hole as u64).min(size) as i64
        };
        if end > data {
            out.push((data as u64, (end - data) as u64));
        }
        pos = end.max(data + 1);
    }
    Ok(out)
}

/// Sets atime and mtime with nanoseconds, on the link itself for symlinks.
pub fn set_times(p: &Path, atime: Timestamp, mtime: Timestamp) -> io::Result<()> {
    let c = cpath(p)?;
    let ts = [
        libc::timespec {
            tv_sec: atime.sec as libc::time_t,
            tv_nsec: atime.nsec as libc::c_long,
        },
        libc::timespec {
            tv_sec: mtime.sec as libc::time_t,
            tv_nsec: mtime.nsec as libc::c_long,
        },
    ];
    // SAFETY: c and ts are valid.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

pub fn lchown(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: c is valid.
    check(unsafe { libc::lchown(c.as_ptr(), uid, gid) })?;
    Ok(())
}

pub fn chmod(p: &Path, mode: u32) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: c is valid.
    check(unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

pub fn mknod(p: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cpath(p)?;
    // SAFETY: c is valid.
    check(unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) })?;
    Ok(())
}

pub fn symlink(target: &[u8], p: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(OsStr::from_bytes(target), p)
}

/// Caches uid/gid to name lookups; names are bytes (they need not be UTF-8).
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
}

impl Names {
    pub fn user(&mut self, uid: u32) -> Vec<u8> {
        self.users
            .entry(uid)
            .or_insert_with(|| lookup_user(uid))
            .clone()
    }
    pub fn group(&mut self, gid: u32) -> Vec<u8> {
        self.groups
            .entry(gid)
            .or_insert_with(|| lookup_group(gid))
            .clone()
    }
}

fn lookup_user(uid: u32) -> Vec<u8> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: zeroed passwd is a valid out-parameter; buf outlives the call.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) };
    if r != 0 || res.is_null() {
        return Vec::new();
    }
    // SAFETY: pw_name points into buf and is NUL-terminated.
    unsafe { CStr::from_ptr(pw.pw_name) }.to_bytes().to_vec()
}

fn lookup_group(gid: u32) -> Vec<u8> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: as in lookup_user.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut res = std::ptr::null_mut();
    let r = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut res) };
    if r != 0 || res.is_null() {
        return Vec::new();
    }
    // SAFETY: gr_name points into buf and is NUL-terminated.
    unsafe { CStr::from_ptr(gr.gr_name) }.to_bytes().to_vec()
}

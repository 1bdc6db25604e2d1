//! The `fuser` adapter: each callback calls the core and replies, or maps
//! the error to its errno. Nothing here panics.
//!
//! Requests that may wait on storage (lookups, opens, reads whose file or
//! chunks are not in memory, seeks, and attributes, xattrs or link targets
//! whose directory is no longer decoded) are handed to a pool of
//! workers, which reply when done; the kernel-facing threads answer
//! everything else from memory and are never blocked by a slow tier.

use super::core::{Attr, FsCore, FsError, Xattrs};
use super::queue::Queue;
use crate::format::tree::{NodeKind, Timestamp};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Revision contents never change; the root and `revisions/` do.
const TTL_STATIC: Duration = Duration::from_secs(300);
const TTL_LIVE: Duration = Duration::from_secs(1);

type Job = Box<dyn FnOnce() + Send>;
type XattrsResult = Result<Xattrs, FsError>;

/// Replies with `v`, or its size when `size` is 0 (the caller asks how
/// big a buffer to pass), or ERANGE when it does not fit.
fn reply_sized(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32)
    } else if v.len() <= size as usize {
        reply.data(v)
    } else {
        reply.error(Errno::from_i32(libc::ERANGE))
    }
}

pub struct FuseFs {
    core: Arc<FsCore>,
    jobs: Option<Queue<Job>>,
    /// The kernel opens files without asking (FUSE_NO_OPEN_SUPPORT).
    no_open: bool,
}

impl FuseFs {
    /// The adapter over `core`, with `workers` threads for requests that
    /// may wait on storage.
    pub fn new(core: Arc<FsCore>, workers: usize) -> Self {
        // Not joined: the process ends without waiting for a slow tier.
        let jobs = super::queue::workers("mount-worker", workers, usize::MAX, |job: Job| job())
            .map(|(tx, _)| tx);
        if jobs.is_none() {
            errln!(
                "tiervault mount: cannot start worker threads; answering on the kernel-facing ones"
            );
        }
        Self {
            core,
            jobs,
            no_open: false,
        }
    }

    /// Answers with the xattrs of `ino`: here when they are in memory, else
    /// on a worker.
    fn with_xattrs(
        &self,
        ino: INodeNo,
        reply: ReplyXattr,
        answer: impl FnOnce(XattrsResult, ReplyXattr) + Send + 'static,
    ) {
        match self.core.xattrs_now(ino.0) {
            Some(x) => answer(x, reply),
            None => self.spawn(move |core| answer(core.xattrs(ino.0), reply)),
        }
    }

    /// Runs `job` on a worker with the core; if the pool is gone (the mount
    /// is stopping), runs it here.
    fn spawn(&self, job: impl FnOnce(&FsCore) + Send + 'static) {
        self.core.touch();
        let core = self.core.clone();
        let job: Job = Box::new(move || job(&core));
        match &self.jobs {
            Some(q) => {
                if let Err(back) = q.push(job) {
                    back();
                }
            }
            None => job(),
        }
    }
}

fn time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec.into())
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::CharDev => FileType::CharDevice,
        NodeKind::BlockDev => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
    }
}

/// The kernel's 32-bit device encoding (`new_encode_dev`).
fn encode_dev(rdev: u64) -> u32 {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.mtime),
        kind: file_type(a.kind),
        perm: a.perm as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: encode_dev(a.rdev),
        blksize: 4096,
        flags: 0,
    }
}

fn ttl(a: &Attr) -> Duration {
    if a.live {
        TTL_LIVE
    } else {
        TTL_STATIC
    }
}

/// The errno for a failure; a storage failure is also logged (reads log
/// theirs with the file's path in the core, and reply with `e.errno()`).
fn errno(e: &FsError) -> Errno {
    if let FsError::Storage(err) = e {
        errln!("tiervault mount: {err}");
    }
    Errno::from_i32(e.errno())
}

/// A read's handle: the inode's shared one when the kernel opened the file
/// without asking (handle 0).
fn handle(ino: INodeNo, fh: FileHandle) -> FileHandle {
    if fh.0 == 0 {
        FileHandle(FsCore::shared_handle(ino.0))
    } else {
        fh
    }
}

/// Directories whose entries never change may be cached by the kernel.
fn dir_flags(live: bool) -> FopenFlags {
    if live {
        FopenFlags::empty()
    } else {
        FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is optional: an older kernel without one still works.
        // READDIRPLUS always (not AUTO, which lists a directory past its
        // first page without attributes, so each entry costs a lookup).
        // Cached symlinks spare a request per path walk through `latest`;
        // the mount drops the cached target when `latest` moves.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        // Files never change and need no per-open state, so opens are
        // declined (ENOSYS) and the kernel stops sending OPEN and RELEASE;
        // it then keeps file pages cached across opens.
        self.no_open = config
            .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
            .is_ok();
        if let Err(max) = config.set_max_readahead(4 << 20) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        self.spawn(move |core| match core.lookup(parent.0, &name) {
            Ok(a) => {
                core.remember(a.ino);
                reply.entry(&ttl(&a), &attr(&a), Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let answer = |r: Result<Attr, FsError>, reply: ReplyAttr| match r {
            Ok(a) => reply.attr(&ttl(&a), &attr(&a)),
            Err(e) => reply.error(errno(&e)),
        };
        match self.core.getattr_now(ino.0) {
            Some(r) => answer(r, reply),
            None => self.spawn(move |core| answer(core.getattr(ino.0), reply)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let answer = |r: Result<Vec<u8>, FsError>, reply: ReplyData| match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        };
        match self.core.readlink_now(ino.0) {
            Some(r) => answer(r, reply),
            None => self.spawn(move |core| answer(core.readlink(ino.0), reply)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open {
            return reply.error(Errno::ENOSYS);
        }
        // The entry may have to be decoded again from storage.
        self.spawn(move |core| match core.open(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fh = handle(ino, fh);
        if let Some(d) = self.core.read_cached(fh.0, offset, size as usize) {
            return reply.data(&d);
        }
        self.spawn(move |core| match core.read(fh.0, offset, size as usize) {
            Ok(d) => reply.data(&d),
            // Logged with the file's path by the core.
            Err(e) => reply.error(Errno::from_i32(e.errno())),
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(move |core| match core.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), dir_flags(core.is_live(ino.0))),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.core.dir_entries(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(e.ino),
                (i + 1) as u64,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.core.dir_entries(fh.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(&e)),
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let a = match self.core.entry_attr(e) {
                Ok(a) => a,
                Err(err) => return reply.error(errno(&err)),
            };
            // The kernel takes a reference to every entry but `.` and `..`.
            let counted = i >= 2;
            if counted {
                self.core.remember_entry(ino.0, e);
            }
            if reply.add(
                INodeNo(e.ino),
                (i + 1) as u64,
                OsStr::from_bytes(&e.name),
                &ttl(&a),
                &attr(&a),
                Generation(0),
            ) {
                if counted {
                    // Did not fit: the kernel never saw it.
                    self.core.forget(e.ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes().to_vec();
        let answer = move |x: XattrsResult, reply: ReplyXattr| match x
            .and_then(|x| super::core::find_xattr(x, &name))
        {
            Ok(v) => reply_sized(reply, &v, size),
            Err(e) => reply.error(errno(&e)),
        };
        self.with_xattrs(ino, reply, answer);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let answer = move |x: XattrsResult, reply: ReplyXattr| match x {
            Ok(x) => {
                let mut buf = Vec::new();
                for (k, _) in x {
                    buf.extend_from_slice(&k);
                    buf.push(0);
                }
                reply_sized(reply, &buf, size)
            }
            Err(e) => reply.error(errno(&e)),
        };
        self.with_xattrs(ino, reply, answer);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let fh = handle(ino, fh);
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(Errno::from_i32(libc::EINVAL));
        };
        // A file not read lately is opened again from its directory, which
        // may have to be read from storage; `cp` seeks once per sparse file.
        self.spawn(move |core| match core.seek(fh.0, off, whence) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno(&e)),
        });
    }
}

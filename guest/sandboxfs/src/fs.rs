//! FUSE operations → fs RPC requests. Every callback returns at once; the
//! reply completes when the host answers (see [`crate::conn`]).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use gondolin_wire::fs::{Caller, FsOp, SetAttr, SetTime, Timestamp, MAX_FS_DATA};

use crate::conn::{Conn, Pending};

pub struct SandboxFs {
    pub conn: Arc<Conn>,
    /// The kernel caches writes (FUSE_WRITEBACK_CACHE): set in `init`.
    pub writeback: bool,
}

impl SandboxFs {
    /// With the writeback cache the kernel may read pages of a file opened
    /// write-only, and computes append offsets itself (as libfuse's
    /// passthrough does): open read-write, without O_APPEND.
    fn open_flags(&self, flags: i32) -> i32 {
        if !self.writeback {
            return flags;
        }
        let mut f = flags & !libc::O_APPEND;
        if f & libc::O_ACCMODE == libc::O_WRONLY {
            f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
        }
        f
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// Names must be UTF-8 on the wire; others are refused locally.
fn name(n: &OsStr) -> Result<String, Errno> {
    n.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => SetTime::At(match st.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(_) => Timestamp::default(),
        }),
    }
}

impl SandboxFs {
    fn call(&self, req: &Request, op: FsOp, reply: Pending) {
        self.conn.call(caller(req), op, reply);
    }
}

macro_rules! named {
    ($reply:expr, $n:expr) => {
        match name($n) {
            Ok(n) => n,
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for SandboxFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_FS_DATA as u32);
        if let Err(max) = config.set_max_readahead(MAX_FS_DATA as u32) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        // Lookups in one directory may run in parallel; cached pages are
        // dropped when the host reports a new mtime or size.
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
        ] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let name = named!(reply, n);
        self.call(
            req,
            FsOp::Lookup {
                parent: parent.0,
                name,
            },
            Pending::Entry(reply),
        );
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        self.conn.notify(
            caller(req),
            FsOp::Forget {
                ino: ino.0,
                nlookup,
            },
        );
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.call(req, FsOp::GetAttr { ino: ino.0 }, Pending::Attr(reply));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        self.call(
            req,
            FsOp::SetAttr {
                ino: ino.0,
                fh: fh.map(|f| f.0),
                set,
            },
            Pending::Attr(reply),
        );
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.call(req, FsOp::ReadLink { ino: ino.0 }, Pending::Link(reply));
    }

    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EOPNOTSUPP));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = named!(reply, n);
        let mode = mode & !umask & 0o7777;
        self.call(
            req,
            FsOp::Mkdir {
                parent: parent.0,
                name,
                mode,
            },
            Pending::Entry(reply),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let name = named!(reply, n);
        self.call(
            req,
            FsOp::Unlink {
                parent: parent.0,
                name,
            },
            Pending::Empty(reply),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        let name = named!(reply, n);
        self.call(
            req,
            FsOp::Rmdir {
                parent: parent.0,
                name,
            },
            Pending::Empty(reply),
        );
    }

    fn symlink(&self, req: &Request, parent: INodeNo, n: &OsStr, target: &Path, reply: ReplyEntry) {
        let name = named!(reply, n);
        let target = named!(reply, target.as_os_str());
        self.call(
            req,
            FsOp::Symlink {
                parent: parent.0,
                name,
                target,
            },
            Pending::Entry(reply),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = named!(reply, n);
        let new_name = named!(reply, newname);
        let flags = flags.bits();
        // Only RENAME_NOREPLACE can be honoured by a path-based provider.
        if flags & !1 != 0 {
            return reply.error(Errno::EINVAL);
        }
        let op = FsOp::Rename {
            parent: parent.0,
            name,
            new_parent: newparent.0,
            new_name,
            flags,
        };
        self.call(req, op, Pending::Empty(reply));
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let new_name = named!(reply, newname);
        self.call(
            req,
            FsOp::Link {
                ino: ino.0,
                new_parent: newparent.0,
                new_name,
            },
            Pending::Entry(reply),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = self.open_flags(flags.0);
        self.call(req, FsOp::Open { ino: ino.0, flags }, Pending::Open(reply));
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let size = size.min(MAX_FS_DATA as u32);
        self.call(
            req,
            FsOp::Read {
                fh: fh.0,
                offset,
                size,
            },
            Pending::Data(reply),
        );
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if data.len() > MAX_FS_DATA {
            return reply.error(Errno::EINVAL);
        }
        self.conn.call_write(caller(req), fh.0, offset, data, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes are not buffered here: nothing to flush. ENOSYS tells the
        // kernel so once; it then skips FLUSH on every later close(2).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // close(2) does not wait for the host: the release is sent in order
        // after every write on this handle, and its result changes nothing.
        self.conn.notify(caller(req), FsOp::Release { fh: fh.0 });
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.call(
            req,
            FsOp::Fsync { fh: fh.0, datasync },
            Pending::Empty(reply),
        );
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        // A reply buffer holds roughly size/32 short names; ask for a page.
        self.call(
            req,
            FsOp::ReadDir {
                ino: ino.0,
                offset,
                max_entries: 512,
            },
            Pending::Dir(reply),
        );
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.call(req, FsOp::StatFs { ino: ino.0 }, Pending::Statfs(reply));
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        self.call(
            req,
            FsOp::Access {
                ino: ino.0,
                mask: mask.bits(),
            },
            Pending::Empty(reply),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = named!(reply, n);
        let mode = mode & !umask & 0o7777;
        let flags = self.open_flags(flags);
        self.call(
            req,
            FsOp::Create {
                parent: parent.0,
                name,
                mode,
                flags,
            },
            Pending::Create(reply),
        );
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }
}

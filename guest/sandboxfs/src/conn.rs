//! The host connection: requests go out as frames, each with a fresh id,
//! and the fuser reply object waits in [`Pending`] until the reader thread
//! sees the matching response. So the FUSE loop never blocks on the host
//! and any number of requests can be in flight.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, IoSlice, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
};
use gondolin_wire::fs::{
    errno, Attr, Caller, FileKind, FsGuestMsg, FsHostMsg, FsOp, FsReply, FsRequest, Timestamp,
    FS_PROTOCOL_VERSION,
};
use gondolin_wire::{decode, encode_into, MAX_FRAME};

use crate::inval::{Inval, Invalidations};
use crate::log;
use crate::transport::{self, Target, Transport};

/// A fuser reply waiting for the host's answer.
pub enum Pending {
    Entry(ReplyEntry),
    Attr(ReplyAttr),
    Data(ReplyData),
    /// readlink: the target as bytes.
    Link(ReplyData),
    Open(ReplyOpen),
    Create(ReplyCreate),
    Write(ReplyWrite),
    Empty(ReplyEmpty),
    Dir(ReplyDirectory),
    Statfs(ReplyStatfs),
}

fn fail(p: Pending, e: i32) {
    let e = Errno::from_i32(e);
    match p {
        Pending::Entry(r) => r.error(e),
        Pending::Attr(r) => r.error(e),
        Pending::Data(r) | Pending::Link(r) => r.error(e),
        Pending::Open(r) => r.error(e),
        Pending::Create(r) => r.error(e),
        Pending::Write(r) => r.error(e),
        Pending::Empty(r) => r.error(e),
        Pending::Dir(r) => r.error(e),
        Pending::Statfs(r) => r.error(e),
    }
}

fn time(t: Timestamp) -> SystemTime {
    let n = t.nanos.min(999_999_999);
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, n)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + Duration::from_nanos(u64::from(n))
    }
}

pub fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Other => FileType::NamedPipe,
    }
}

/// `st_blksize`: programs size their I/O buffers by it (stdio, cp, python),
/// and every write(2) is one round trip to the host, so offer big ones.
const BLKSIZE: u32 = 256 * 1024;

pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: UNIX_EPOCH,
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn ms(v: u32) -> Duration {
    Duration::from_millis(u64::from(v))
}

/// Hand the host's reply to the kernel. A reply of the wrong kind for the
/// request is a host bug: EIO, never a panic.
fn complete(p: Pending, r: FsReply) {
    match (p, r) {
        (Pending::Entry(rep), FsReply::Entry(e)) => rep.entry_with_ttls(
            &ms(e.attr_ttl_ms),
            &ms(e.entry_ttl_ms),
            &file_attr(&e.attr),
            Generation(0),
        ),
        (Pending::Entry(rep), FsReply::NoEntry { ttl_ms }) => {
            // Inode 0 = a negative entry the kernel may cache for the TTL.
            let mut a = file_attr(&Attr {
                ino: 0,
                kind: FileKind::File,
                perm: 0,
                nlink: 0,
                uid: 0,
                gid: 0,
                size: 0,
                blocks: 0,
                atime: Timestamp::default(),
                mtime: Timestamp::default(),
                ctime: Timestamp::default(),
            });
            a.ino = INodeNo(0);
            rep.entry_with_ttls(&Duration::ZERO, &ms(ttl_ms), &a, Generation(0))
        }
        (Pending::Attr(rep), FsReply::Attr { attr, ttl_ms }) => {
            rep.attr(&ms(ttl_ms), &file_attr(&attr))
        }
        (Pending::Data(rep), FsReply::Data(d)) => rep.data(&d),
        (Pending::Link(rep), FsReply::Target(t)) => rep.data(t.as_bytes()),
        (Pending::Open(rep), FsReply::Opened { fh, keep_cache }) => {
            let flags = if keep_cache {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            rep.opened(FileHandle(fh), flags)
        }
        (Pending::Create(rep), FsReply::Created { entry, fh }) => rep.created(
            &ms(entry.entry_ttl_ms),
            &file_attr(&entry.attr),
            Generation(0),
            FileHandle(fh),
            FopenFlags::empty(),
        ),
        (Pending::Write(rep), FsReply::Written(n)) => rep.written(n),
        (Pending::Empty(rep), FsReply::Done) => rep.ok(),
        (Pending::Dir(mut rep), FsReply::Dir(entries)) => {
            for e in entries {
                if rep.add(INodeNo(e.ino), e.next_offset, file_type(e.kind), &e.name) {
                    break;
                }
            }
            rep.ok()
        }
        (Pending::Statfs(rep), FsReply::StatFs(s)) => rep.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        ),
        (p, other) => {
            log!("host answered with the wrong reply kind: {other:?}");
            fail(p, errno::EIO)
        }
    }
}

pub struct Conn {
    writer: Mutex<File>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    /// Invalidations go to their own thread, never the reader's: see
    /// [`crate::inval`].
    pub invals: Arc<Invalidations>,
}

impl Conn {
    /// Connect and greet the host.
    pub fn open(target: &Target) -> std::io::Result<(Conn, File, bool)> {
        let Transport {
            reader,
            writer,
            reconnects,
        } = transport::open(target)?;
        let conn = Conn {
            writer: Mutex::new(writer),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            invals: Arc::default(),
        };
        conn.hello()?;
        Ok((conn, reader, reconnects))
    }

    fn hello(&self) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(16);
        encode_into(
            &FsGuestMsg::Hello {
                version: FS_PROTOCOL_VERSION,
            },
            &mut buf,
        );
        self.writer.lock().unwrap().write_all(&buf)
    }

    fn write_request(&self, id: u64, caller: Caller, op: FsOp) -> std::io::Result<()> {
        let mut buf = Vec::new();
        encode_into(&FsGuestMsg::Request(FsRequest { id, caller, op }), &mut buf);
        self.writer.lock().unwrap().write_all(&buf)
    }

    /// Send `op`; `reply` completes when the host answers.
    pub fn call(&self, caller: Caller, op: FsOp, reply: Pending) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().unwrap().insert(id, reply);
        if let Err(e) = self.write_request(id, caller, op) {
            log!("writing to the host failed: {e}");
            if let Some(p) = self.pending.lock().unwrap().remove(&id) {
                fail(p, errno::EIO);
            }
        }
    }

    /// Send a write of `data` without copying it into a frame first: the
    /// header and the kernel's buffer go out in one vectored write.
    pub fn call_write(&self, caller: Caller, fh: u64, offset: u64, data: &[u8], reply: ReplyWrite) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let header = gondolin_wire::fs::write_frame_header(id, caller, fh, offset, data.len());
        self.pending
            .lock()
            .unwrap()
            .insert(id, Pending::Write(reply));
        let res = {
            let mut w = self.writer.lock().unwrap();
            write_all_vectored(&mut w, &header, data)
        };
        if let Err(e) = res {
            log!("writing to the host failed: {e}");
            if let Some(p) = self.pending.lock().unwrap().remove(&id) {
                fail(p, errno::EIO);
            }
        }
    }

    /// Send `op` without waiting for (or caring about) the answer.
    pub fn notify(&self, caller: Caller, op: FsOp) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.write_request(id, caller, op) {
            log!("writing to the host failed: {e}");
        }
    }

    fn fail_all(&self) {
        let all: Vec<Pending> = self
            .pending
            .lock()
            .unwrap()
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in all {
            fail(p, errno::EIO);
        }
    }

    fn dispatch(&self, msg: FsHostMsg) {
        match msg {
            FsHostMsg::Response(r) => {
                // Unknown ids: answers to fire-and-forget requests.
                let Some(p) = self.pending.lock().unwrap().remove(&r.id) else {
                    return;
                };
                match r.result {
                    Ok(reply) => complete(p, reply),
                    Err(e) if e > 0 && e < 4096 => fail(p, e),
                    Err(_) => fail(p, errno::EIO),
                }
            }
            FsHostMsg::InvalidateInode { ino } => self.invals.push(Inval::Inode(ino)),
            FsHostMsg::InvalidateEntry { parent, name } => {
                self.invals.push(Inval::Entry { parent, name })
            }
        }
    }

    /// The reader loop: runs until the host is gone for good (socket) or
    /// forever (virtio port, which reconnects).
    pub fn read_loop(&self, reader: File, reconnects: bool) {
        // Small frames come from the buffer; a large body is read straight
        // into its own allocation (BufReader bypasses its buffer for reads
        // bigger than it), saving a copy of every data reply.
        let mut rd = BufReader::with_capacity(64 * 1024, reader);
        loop {
            let err = match read_frame(&mut rd) {
                Ok(body) => match decode::<FsHostMsg>(&body) {
                    Ok(m) => {
                        self.dispatch(m);
                        continue;
                    }
                    Err(e) => format!("bad frame from the host: {e}"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    "the host went away".into()
                }
                Err(e) => format!("reading from the host failed: {e}"),
            };
            log!("{err}");
            // Nothing in flight can be answered now.
            self.fail_all();
            if !reconnects {
                return;
            }
            rd = BufReader::with_capacity(64 * 1024, rd.into_inner());
            std::thread::sleep(Duration::from_millis(100));
            let _ = self.hello();
        }
    }
}

/// One frame body: 4-byte big-endian length, then that many bytes (bounded
/// by `MAX_FRAME` before anything is allocated).
fn read_frame(rd: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body)?;
    Ok(body)
}

fn write_all_vectored(w: &mut File, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() || !b.is_empty() {
        let n = match w.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

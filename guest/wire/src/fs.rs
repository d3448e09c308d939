//! The filesystem RPC carried on the `gondolin.fs` port between the guest's
//! FUSE daemon (`sandboxfs`) and the host's VFS server.
//!
//! The shape follows FUSE: operations address inodes that the host hands
//! out in [`Entry`] replies (inode 1 is the root) and open files by handle.
//! Requests carry a guest-chosen `id`; many may be in flight at once and the
//! host may answer them in any order. Frames are the same 4-byte length +
//! postcard encoding as the control port (see [`crate::FrameDecoder`]).
//!
//! The host is trusted by the guest, the guest is not trusted by the host:
//! [`FsGuestMsg::validate`] bounds every name, path and buffer before the host
//! acts on a request. A request that decodes but is invalid gets `EINVAL`.

use serde::{Deserialize, Serialize};

use crate::WireError;

/// Bumped whenever a message changes shape; exchanged in [`FsGuestMsg::Hello`].
pub const FS_PROTOCOL_VERSION: u32 = 1;
/// Largest read or write payload in one request or reply: the largest FUSE
/// `max_write` the kernel accepts (256 pages).
pub const MAX_FS_DATA: usize = 1024 * 1024;
/// Longest file name component (bytes), as Linux `NAME_MAX`.
pub const MAX_NAME: usize = 255;
/// Longest symlink target (bytes), as Linux `PATH_MAX`.
pub const MAX_PATH: usize = 4096;
/// Most entries one `ReadDir` reply may carry.
pub const MAX_READDIR_ENTRIES: u32 = 4096;
/// The root directory's inode.
pub const ROOT_INO: u64 = 1;

/// Linux errno values used on the wire (the host maps its own errors to these).
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const EAGAIN: i32 = 11;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EMLINK: i32 = 31;
    pub const ERANGE: i32 = 34;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOSYS: i32 = 38;
    pub const ENOTEMPTY: i32 = 39;
    pub const ELOOP: i32 = 40;
    pub const ENODATA: i32 = 61;
    pub const EOVERFLOW: i32 = 75;
    pub const EOPNOTSUPP: i32 = 95;
    pub const ENOTSUP: i32 = EOPNOTSUPP;
}

/// What kind of object an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// Anything else a provider reports (fifo, socket, device): shown, not opened.
    Other,
}

/// A point in time: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// Attributes of an inode, as the guest kernel will see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    /// Permission bits only (`mode & 0o7777`); the type is in `kind`.
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

/// A looked-up name: its attributes and how long the kernel may cache them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub attr: Attr,
    pub attr_ttl_ms: u32,
    pub entry_ttl_ms: u32,
}

/// One directory entry in a [`FsReply::Dir`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileKind,
    pub name: String,
    /// The offset to pass to the next `ReadDir` to continue after this entry.
    pub next_offset: u64,
}

/// Filesystem statistics for `statfs(2)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A time to set in `SetAttr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Timestamp),
}

/// The attributes to change in a `SetAttr` (`None` = leave as is).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// The caller of a filesystem operation inside the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// One operation. `flags` are Linux `O_*` values; `mode` includes only
/// permission bits (the guest applies its umask first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    Lookup {
        parent: u64,
        name: String,
    },
    /// The kernel dropped `nlookup` references to `ino`.
    Forget {
        ino: u64,
        nlookup: u64,
    },
    GetAttr {
        ino: u64,
    },
    SetAttr {
        ino: u64,
        fh: Option<u64>,
        set: SetAttr,
    },
    ReadLink {
        ino: u64,
    },
    Mkdir {
        parent: u64,
        name: String,
        mode: u32,
    },
    Unlink {
        parent: u64,
        name: String,
    },
    Rmdir {
        parent: u64,
        name: String,
    },
    Symlink {
        parent: u64,
        name: String,
        target: String,
    },
    /// `flags` are `renameat2` flags (`RENAME_NOREPLACE` = 1, others refused).
    Rename {
        parent: u64,
        name: String,
        new_parent: u64,
        new_name: String,
        flags: u32,
    },
    Link {
        ino: u64,
        new_parent: u64,
        new_name: String,
    },
    Open {
        ino: u64,
        flags: i32,
    },
    Create {
        parent: u64,
        name: String,
        mode: u32,
        flags: i32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Flush {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Release {
        fh: u64,
    },
    /// List `ino` starting after `offset` (0 = from the start).
    ReadDir {
        ino: u64,
        offset: u64,
        max_entries: u32,
    },
    StatFs {
        ino: u64,
    },
    /// `mask` is `F_OK` (0) or a combination of `R_OK|W_OK|X_OK` (4|2|1).
    Access {
        ino: u64,
        mask: i32,
    },
}

/// A request from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsRequest {
    pub id: u64,
    pub caller: Caller,
    pub op: FsOp,
}

/// A successful result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    /// Lookup, Mkdir, Symlink, Link.
    Entry(Entry),
    /// Lookup of a missing name, negatively cacheable for `ttl_ms`.
    NoEntry {
        ttl_ms: u32,
    },
    /// GetAttr, SetAttr.
    Attr {
        attr: Attr,
        ttl_ms: u32,
    },
    /// ReadLink.
    Target(String),
    /// Open. `keep_cache`: the kernel may keep cached pages of this file.
    Opened {
        fh: u64,
        keep_cache: bool,
    },
    /// Create.
    Created {
        entry: Entry,
        fh: u64,
    },
    /// Read: fewer bytes than asked means end of file.
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Write: bytes written.
    Written(u32),
    /// ReadDir: an empty list means the end.
    Dir(Vec<DirEntry>),
    StatFs(StatFs),
    /// Everything else.
    Done,
}

/// The answer to request `id`: a reply or a Linux errno.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsResponse {
    pub id: u64,
    pub result: Result<FsReply, i32>,
}

/// Guest -> host on the fs port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsGuestMsg {
    /// sandboxfs is mounted and serving; sent first on every connection.
    Hello {
        version: u32,
    },
    Request(FsRequest),
}

/// Host -> guest on the fs port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsHostMsg {
    Response(FsResponse),
    /// Drop cached attributes and data of `ino` (the host changed it).
    InvalidateInode {
        ino: u64,
    },
    /// Drop the cached lookup of `name` in `parent`.
    InvalidateEntry {
        parent: u64,
        name: String,
    },
}

/// The frame for a `Write` request, minus its data: send these bytes, then
/// `len` bytes of data, and the peer decodes the same message as
/// `encode(&FsGuestMsg::Request(.. FsOp::Write { data, .. }))`. Lets the guest
/// pass the kernel's buffer straight to the port instead of copying it twice
/// (copies are what an emulated guest pays most for).
pub fn write_frame_header(id: u64, caller: Caller, fh: u64, offset: u64, len: usize) -> Vec<u8> {
    let msg = FsGuestMsg::Request(FsRequest {
        id,
        caller,
        op: FsOp::Write {
            fh,
            offset,
            data: Vec::new(),
        },
    });
    let mut body = postcard::to_allocvec(&msg).expect("postcard encode of a wire message");
    // `data` is the last field: an empty byte string is the single varint 0.
    debug_assert_eq!(body.last(), Some(&0));
    body.pop();
    let mut n = len as u64;
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            body.push(b);
            break;
        }
        body.push(b | 0x80);
    }
    let total = (body.len() + len) as u32;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn check_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(WireError::Invalid("file name empty or too long"));
    }
    if name == "." || name == ".." || name.bytes().any(|b| b == b'/' || b == 0) {
        return Err(WireError::Invalid(
            "file name contains '/' or NUL, or is a dot entry",
        ));
    }
    Ok(())
}

impl FsOp {
    /// The request's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            FsOp::Lookup { .. } => "lookup",
            FsOp::Forget { .. } => "forget",
            FsOp::GetAttr { .. } => "getattr",
            FsOp::SetAttr { .. } => "setattr",
            FsOp::ReadLink { .. } => "readlink",
            FsOp::Mkdir { .. } => "mkdir",
            FsOp::Unlink { .. } => "unlink",
            FsOp::Rmdir { .. } => "rmdir",
            FsOp::Symlink { .. } => "symlink",
            FsOp::Rename { .. } => "rename",
            FsOp::Link { .. } => "link",
            FsOp::Open { .. } => "open",
            FsOp::Create { .. } => "create",
            FsOp::Read { .. } => "read",
            FsOp::Write { .. } => "write",
            FsOp::Flush { .. } => "flush",
            FsOp::Fsync { .. } => "fsync",
            FsOp::Release { .. } => "release",
            FsOp::ReadDir { .. } => "readdir",
            FsOp::StatFs { .. } => "statfs",
            FsOp::Access { .. } => "access",
        }
    }

    /// Check every bound the host relies on. Inode and handle numbers are
    /// checked by the host against its own tables.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            FsOp::Lookup { name, .. }
            | FsOp::Mkdir { name, .. }
            | FsOp::Unlink { name, .. }
            | FsOp::Rmdir { name, .. }
            | FsOp::Create { name, .. } => check_name(name),
            FsOp::Symlink { name, target, .. } => {
                check_name(name)?;
                if target.is_empty() || target.len() > MAX_PATH || target.contains('\0') {
                    return Err(WireError::Invalid(
                        "symlink target empty, too long or with NUL",
                    ));
                }
                Ok(())
            }
            FsOp::Rename { name, new_name, .. } => {
                check_name(name)?;
                check_name(new_name)
            }
            FsOp::Link { new_name, .. } => check_name(new_name),
            FsOp::Read { size, .. } if *size as usize > MAX_FS_DATA => {
                Err(WireError::Invalid("read larger than MAX_FS_DATA"))
            }
            FsOp::Write { data, .. } if data.len() > MAX_FS_DATA => {
                Err(WireError::Invalid("write larger than MAX_FS_DATA"))
            }
            FsOp::ReadDir { max_entries, .. } if *max_entries == 0 => {
                Err(WireError::Invalid("readdir of zero entries"))
            }
            FsOp::Access { mask, .. } if *mask & !7 != 0 => {
                Err(WireError::Invalid("access mask has unknown bits"))
            }
            _ => Ok(()),
        }
    }
}

impl FsGuestMsg {
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            FsGuestMsg::Hello { .. } => Ok(()),
            FsGuestMsg::Request(r) => r.op.validate(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, FrameDecoder};

    #[test]
    fn requests_round_trip_through_frames() {
        let msgs = vec![
            FsGuestMsg::Hello {
                version: FS_PROTOCOL_VERSION,
            },
            FsGuestMsg::Request(FsRequest {
                id: 7,
                caller: Caller {
                    uid: 1000,
                    gid: 1000,
                    pid: 42,
                },
                op: FsOp::Write {
                    fh: 3,
                    offset: 1 << 40,
                    data: vec![0xAB; 70_000],
                },
            }),
            FsGuestMsg::Request(FsRequest {
                id: 8,
                caller: Caller::default(),
                op: FsOp::Rename {
                    parent: 1,
                    name: "a".into(),
                    new_parent: 9,
                    new_name: "b".into(),
                    flags: 1,
                },
            }),
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(encode(m));
        }
        let mut d = FrameDecoder::new();
        d.push(&wire);
        for m in &msgs {
            let got: FsGuestMsg = d.next_message().unwrap().unwrap();
            assert_eq!(&got, m);
        }
        assert!(d.next_message::<FsGuestMsg>().unwrap().is_none());
    }

    #[test]
    fn split_write_frames_match_whole_ones() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 70_000, MAX_FS_DATA] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let caller = Caller {
                uid: 7,
                gid: 8,
                pid: 9,
            };
            let whole = encode(&FsGuestMsg::Request(FsRequest {
                id: 1 << 40,
                caller,
                op: FsOp::Write {
                    fh: 3,
                    offset: u64::MAX,
                    data: data.clone(),
                },
            }));
            let mut split = write_frame_header(1 << 40, caller, 3, u64::MAX, len);
            split.extend_from_slice(&data);
            assert_eq!(split, whole, "len {len}");
        }
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            FsResponse {
                id: 1,
                result: Err(errno::ENOENT),
            },
            FsResponse {
                id: 2,
                result: Ok(FsReply::Data(vec![1, 2, 3])),
            },
            FsResponse {
                id: 3,
                result: Ok(FsReply::NoEntry { ttl_ms: 250 }),
            },
        ] {
            let m = FsHostMsg::Response(r);
            let mut d = FrameDecoder::new();
            d.push(&encode(&m));
            assert_eq!(d.next_message::<FsHostMsg>().unwrap().unwrap(), m);
        }
    }

    #[test]
    fn validation_rejects_hostile_names_and_sizes() {
        let bad = [
            FsOp::Lookup {
                parent: 1,
                name: String::new(),
            },
            FsOp::Lookup {
                parent: 1,
                name: "a/b".into(),
            },
            FsOp::Lookup {
                parent: 1,
                name: "..".into(),
            },
            FsOp::Mkdir {
                parent: 1,
                name: "x\0".into(),
                mode: 0o755,
            },
            FsOp::Create {
                parent: 1,
                name: "n".repeat(MAX_NAME + 1),
                mode: 0,
                flags: 0,
            },
            FsOp::Symlink {
                parent: 1,
                name: "l".into(),
                target: String::new(),
            },
            FsOp::Read {
                fh: 1,
                offset: 0,
                size: MAX_FS_DATA as u32 + 1,
            },
            FsOp::Write {
                fh: 1,
                offset: 0,
                data: vec![0; MAX_FS_DATA + 1],
            },
            FsOp::ReadDir {
                ino: 1,
                offset: 0,
                max_entries: 0,
            },
            FsOp::Access { ino: 1, mask: 8 },
            FsOp::Rename {
                parent: 1,
                name: "ok".into(),
                new_parent: 1,
                new_name: ".".into(),
                flags: 0,
            },
        ];
        for op in bad {
            assert!(op.validate().is_err(), "{op:?} should be refused");
        }
        assert!(FsOp::Lookup {
            parent: 1,
            name: "file.txt".into()
        }
        .validate()
        .is_ok());
        assert!(FsOp::Read {
            fh: 1,
            offset: 0,
            size: MAX_FS_DATA as u32
        }
        .validate()
        .is_ok());
    }
}

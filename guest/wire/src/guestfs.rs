//! Typed file-system requests on guest paths (`vm.fs` outside the VFS):
//! sandboxd does them with syscalls and answers with data or a Linux errno
//! number, so the host never parses a program's (localized) error text.
//!
//! Carried by [`HostMsg::Fs`](crate::HostMsg::Fs) and answered by one
//! [`GuestMsg::FsReply`](crate::GuestMsg::FsReply) with the same id (fs ids
//! are their own space, apart from exec ids). Every reply is bounded:
//! directory listings come in pages of at most [`MAX_DIR_PAGE`] entries and
//! [`MAX_DIR_PAGE_BYTES`] of names; a recursive remove does at most
//! [`REMOVE_BUDGET`] unlinks per request and answers [`FsReply::More`] until
//! it is done, so no request holds sandboxd's loop for long.

use serde::{Deserialize, Serialize};

use crate::fs::{errno, MAX_PATH};
use crate::WireError;

/// Most entries in one [`FsReply::Entries`] page.
pub const MAX_DIR_PAGE: usize = 1024;
/// Most name bytes in one [`FsReply::Entries`] page.
pub const MAX_DIR_PAGE_BYTES: usize = 128 * 1024;
/// Longest file name (Linux `NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Entries a recursive [`FsRequest::Remove`] deletes before it answers `More`.
pub const REMOVE_BUDGET: usize = 4096;
/// Largest errno number a reply may carry (the kernel's `MAX_ERRNO`).
pub const MAX_ERRNO: i32 = 4095;

/// A file-system operation on absolute guest paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsRequest {
    /// `stat(2)` (`follow`) or `lstat(2)`. Answer: [`FsReply::Stat`].
    Stat { path: String, follow: bool },
    /// One page of a directory listing, skipping the first `offset` entries
    /// (`.` and `..` are never listed). Answer: [`FsReply::Entries`].
    ReadDir { path: String, offset: u32 },
    /// `mkdir(2)`; `recursive` is `mkdir -p` (missing parents are created,
    /// an existing directory is success). `mode` is applied exactly (not
    /// masked by the umask) to the directory this call creates; without it
    /// the directory gets `0777 & ~umask`. Answer: [`FsReply::Done`].
    Mkdir {
        path: String,
        mode: Option<u32>,
        recursive: bool,
    },
    /// `rename(2)` (`mv -T` without the copy across file systems: that is
    /// `EXDEV`). Answer: [`FsReply::Done`].
    Rename { from: String, to: String },
    /// `rm`: a directory needs `recursive` (else `EISDIR`); `force` makes a
    /// missing path success. Symlinks are removed, never followed.
    /// Answer: [`FsReply::Done`], or [`FsReply::More`] (send it again).
    Remove {
        path: String,
        recursive: bool,
        force: bool,
    },
    /// `access(2)` with `mode` from `F_OK`/`R_OK`/`W_OK`/`X_OK` (0..=7).
    /// Answer: [`FsReply::Done`].
    Access { path: String, mode: u32 },
}

/// What kind of object a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    BlockDevice,
    CharDevice,
    Fifo,
    Socket,
    Unknown,
}

/// A point in time: seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

/// `struct stat`, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStat {
    /// `st_mode`: type bits and permission bits.
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    /// Bytes.
    pub size: u64,
    pub blksize: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

/// One directory entry. The name is raw bytes: Linux names need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub kind: EntryKind,
}

/// The answer to one [`FsRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    Done,
    Stat(FsStat),
    /// A page of a listing; `done` once the directory has no more entries.
    Entries {
        entries: Vec<DirEntry>,
        done: bool,
    },
    /// A recursive remove made progress within its budget; ask again.
    More,
    /// The operation failed with this Linux errno (1..=[`MAX_ERRNO`]).
    Errno(i32),
}

fn check_path(p: &str) -> Result<(), WireError> {
    if !p.starts_with('/') {
        return Err(WireError::Invalid("fs paths must be absolute"));
    }
    if p.len() >= MAX_PATH {
        return Err(WireError::Invalid("fs path too long"));
    }
    if p.as_bytes().contains(&0) {
        return Err(WireError::Invalid("fs path contains a NUL byte"));
    }
    Ok(())
}

impl FsRequest {
    /// Check the bounds a decoded request must respect before it is used.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            FsRequest::Stat { path, .. }
            | FsRequest::ReadDir { path, .. }
            | FsRequest::Remove { path, .. } => check_path(path),
            FsRequest::Mkdir { path, mode, .. } => {
                check_path(path)?;
                match mode {
                    Some(m) if *m > 0o7777 => Err(WireError::Invalid("mkdir mode above 0o7777")),
                    _ => Ok(()),
                }
            }
            FsRequest::Rename { from, to } => check_path(from).and_then(|_| check_path(to)),
            FsRequest::Access { path, mode } => {
                check_path(path)?;
                match *mode > 7 {
                    true => Err(WireError::Invalid("access mode above 7")),
                    false => Ok(()),
                }
            }
        }
    }

    /// The errno a request that fails [`validate`](Self::validate) is
    /// answered with.
    pub fn invalid_errno(&self) -> i32 {
        let long = |p: &str| p.len() >= MAX_PATH;
        match self {
            FsRequest::Rename { from, to } if long(from) || long(to) => errno::ENAMETOOLONG,
            FsRequest::Stat { path, .. }
            | FsRequest::ReadDir { path, .. }
            | FsRequest::Remove { path, .. }
            | FsRequest::Mkdir { path, .. }
            | FsRequest::Access { path, .. }
                if long(path) =>
            {
                errno::ENAMETOOLONG
            }
            _ => errno::EINVAL,
        }
    }
}

impl FsReply {
    /// Check the bounds a decoded reply must respect before it is used.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            FsReply::Errno(n) if !(1..=MAX_ERRNO).contains(n) => {
                Err(WireError::Invalid("errno out of range"))
            }
            FsReply::Entries { entries, .. } => {
                if entries.len() > MAX_DIR_PAGE {
                    return Err(WireError::Invalid("too many directory entries"));
                }
                let mut bytes = 0;
                for e in entries {
                    let n = &e.name;
                    if n.is_empty() || n.len() > MAX_NAME || n.contains(&b'/') || n.contains(&0) {
                        return Err(WireError::Invalid("bad directory entry name"));
                    }
                    if n == b"." || n == b".." {
                        return Err(WireError::Invalid("bad directory entry name"));
                    }
                    bytes += n.len();
                }
                match bytes > MAX_DIR_PAGE_BYTES {
                    true => Err(WireError::Invalid("directory page too large")),
                    false => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// The symbolic name of a Linux errno (`2` → `"ENOENT"`), as Node spells
/// `err.code`; `None` for numbers Linux does not define.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    let i = usize::try_from(errno).ok()?;
    ERRNO_NAMES.get(i).copied().filter(|n| !n.is_empty())
}

/// Linux (asm-generic) errno names by number; the guest is always Linux,
/// whatever the host is.
#[rustfmt::skip]
const ERRNO_NAMES: [&str; 134] = [
    "", "EPERM", "ENOENT", "ESRCH", "EINTR", "EIO", "ENXIO", "E2BIG", "ENOEXEC", "EBADF",
    "ECHILD", "EAGAIN", "ENOMEM", "EACCES", "EFAULT", "ENOTBLK", "EBUSY", "EEXIST", "EXDEV",
    "ENODEV", "ENOTDIR", "EISDIR", "EINVAL", "ENFILE", "EMFILE", "ENOTTY", "ETXTBSY", "EFBIG",
    "ENOSPC", "ESPIPE", "EROFS", "EMLINK", "EPIPE", "EDOM", "ERANGE", "EDEADLK", "ENAMETOOLONG",
    "ENOLCK", "ENOSYS", "ENOTEMPTY", "ELOOP", "", "ENOMSG", "EIDRM", "ECHRNG", "EL2NSYNC",
    "EL3HLT", "EL3RST", "ELNRNG", "EUNATCH", "ENOCSI", "EL2HLT", "EBADE", "EBADR", "EXFULL",
    "ENOANO", "EBADRQC", "EBADSLT", "", "EBFONT", "ENOSTR", "ENODATA", "ETIME", "ENOSR", "ENONET",
    "ENOPKG", "EREMOTE", "ENOLINK", "EADV", "ESRMNT", "ECOMM", "EPROTO", "EMULTIHOP", "EDOTDOT",
    "EBADMSG", "EOVERFLOW", "ENOTUNIQ", "EBADFD", "EREMCHG", "ELIBACC", "ELIBBAD", "ELIBSCN",
    "ELIBMAX", "ELIBEXEC", "EILSEQ", "ERESTART", "ESTRPIPE", "EUSERS", "ENOTSOCK", "EDESTADDRREQ",
    "EMSGSIZE", "EPROTOTYPE", "ENOPROTOOPT", "EPROTONOSUPPORT", "ESOCKTNOSUPPORT", "EOPNOTSUPP",
    "EPFNOSUPPORT", "EAFNOSUPPORT", "EADDRINUSE", "EADDRNOTAVAIL", "ENETDOWN", "ENETUNREACH",
    "ENETRESET", "ECONNABORTED", "ECONNRESET", "ENOBUFS", "EISCONN", "ENOTCONN", "ESHUTDOWN",
    "ETOOMANYREFS", "ETIMEDOUT", "ECONNREFUSED", "EHOSTDOWN", "EHOSTUNREACH", "EALREADY",
    "EINPROGRESS", "ESTALE", "EUCLEAN", "ENOTNAM", "ENAVAIL", "EISNAM", "EREMOTEIO", "EDQUOT",
    "ENOMEDIUM", "EMEDIUMTYPE", "ECANCELED", "ENOKEY", "EKEYEXPIRED", "EKEYREVOKED",
    "EKEYREJECTED", "EOWNERDEAD", "ENOTRECOVERABLE", "ERFKILL", "EHWPOISON",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, FrameDecoder, GuestMsg, HostMsg};

    fn stat() -> FsStat {
        let t = Time {
            sec: -1,
            nsec: 999_999_999,
        };
        FsStat {
            mode: 0o100644,
            dev: u64::MAX,
            ino: 7,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0x0801,
            size: 5,
            blksize: 4096,
            blocks: 8,
            atime: t,
            mtime: t,
            ctime: t,
        }
    }

    #[test]
    fn round_trips_every_request_and_reply() {
        let reqs = [
            FsRequest::Stat {
                path: "/a".into(),
                follow: true,
            },
            FsRequest::ReadDir {
                path: "/".into(),
                offset: 1024,
            },
            FsRequest::Mkdir {
                path: "/a/b".into(),
                mode: Some(0o700),
                recursive: true,
            },
            FsRequest::Rename {
                from: "/a".into(),
                to: "/b".into(),
            },
            FsRequest::Remove {
                path: "/a".into(),
                recursive: true,
                force: false,
            },
            FsRequest::Access {
                path: "/bin/sh".into(),
                mode: 1,
            },
        ];
        let entry = DirEntry {
            name: vec![0xff, b'x'],
            kind: EntryKind::Socket,
        };
        let replies = [
            FsReply::Done,
            FsReply::Stat(stat()),
            FsReply::Entries {
                entries: vec![entry],
                done: false,
            },
            FsReply::More,
            FsReply::Errno(errno::ENOENT),
        ];
        let mut dec = FrameDecoder::new();
        for (id, req) in reqs.into_iter().enumerate() {
            assert!(req.validate().is_ok(), "{req:?}");
            let m = HostMsg::Fs { id: id as u32, req };
            dec.push(&encode(&m));
            assert_eq!(dec.next_message::<HostMsg>().unwrap(), Some(m));
        }
        for (id, reply) in replies.into_iter().enumerate() {
            assert!(reply.validate().is_ok(), "{reply:?}");
            let m = GuestMsg::FsReply {
                id: id as u32,
                reply,
            };
            for b in encode(&m) {
                dec.push(&[b]);
            }
            assert_eq!(dec.next_message::<GuestMsg>().unwrap(), Some(m));
        }
    }

    #[test]
    fn requests_are_bounded() {
        let long = format!("/{}", "a".repeat(MAX_PATH));
        let bad = [
            FsRequest::Stat {
                path: "rel".into(),
                follow: false,
            },
            FsRequest::Stat {
                path: "".into(),
                follow: false,
            },
            FsRequest::ReadDir {
                path: "/a\0b".into(),
                offset: 0,
            },
            FsRequest::Mkdir {
                path: "/a".into(),
                mode: Some(0o10000),
                recursive: false,
            },
            FsRequest::Rename {
                from: "/a".into(),
                to: long.clone(),
            },
            FsRequest::Remove {
                path: long.clone(),
                recursive: true,
                force: true,
            },
            FsRequest::Access {
                path: "/a".into(),
                mode: 8,
            },
        ];
        for req in &bad {
            assert!(req.validate().is_err(), "{req:?}");
        }
        let name_too_long = FsRequest::Stat {
            path: long,
            follow: true,
        };
        assert_eq!(name_too_long.invalid_errno(), errno::ENAMETOOLONG);
        assert_eq!(bad[0].invalid_errno(), errno::EINVAL);
        assert_eq!(bad[4].invalid_errno(), errno::ENAMETOOLONG);
        let ok = FsRequest::Stat {
            path: format!("/{}", "a".repeat(MAX_PATH - 2)),
            follow: true,
        };
        assert!(ok.validate().is_ok());
        // A request that fails validation inside a HostMsg fails the message.
        let m = HostMsg::Fs {
            id: 1,
            req: bad[0].clone(),
        };
        assert!(m.validate().is_err());
    }

    #[test]
    fn replies_are_bounded() {
        let entry = |name: &[u8]| DirEntry {
            name: name.to_vec(),
            kind: EntryKind::File,
        };
        let page = |entries| FsReply::Entries {
            entries,
            done: true,
        };
        for bad in [
            FsReply::Errno(0),
            FsReply::Errno(-2),
            FsReply::Errno(MAX_ERRNO + 1),
            page(vec![entry(b"")]),
            page(vec![entry(b"a/b")]),
            page(vec![entry(b"a\0")]),
            page(vec![entry(b"..")]),
            page(vec![entry(&[b'a'; MAX_NAME + 1])]),
            page(vec![entry(b"a"); MAX_DIR_PAGE + 1]),
            // Within the count, beyond the bytes.
            page(vec![
                entry(&[b'a'; MAX_NAME]);
                MAX_DIR_PAGE_BYTES / MAX_NAME + 1
            ]),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
            assert!(GuestMsg::FsReply { id: 1, reply: bad }.validate().is_err());
        }
        assert!(page(vec![entry(b"a"); MAX_DIR_PAGE]).validate().is_ok());
        let full = vec![entry(&[b'a'; MAX_NAME]); MAX_DIR_PAGE_BYTES / MAX_NAME];
        assert!(page(full).validate().is_ok());
    }

    #[test]
    fn errno_names_follow_linux() {
        assert_eq!(errno_name(errno::ENOENT), Some("ENOENT"));
        assert_eq!(errno_name(errno::ENOTEMPTY), Some("ENOTEMPTY"));
        assert_eq!(errno_name(133), Some("EHWPOISON"));
        assert_eq!(errno_name(41), None);
        assert_eq!(errno_name(0), None);
        assert_eq!(errno_name(-1), None);
        assert_eq!(errno_name(134), None);
    }
}

//! Typed file-system requests on guest paths ([`FsRequest`]): plain
//! syscalls, answered with data or the errno number. They run on the event
//! loop: each is a handful of syscalls, a directory page is bounded by
//! [`MAX_DIR_PAGE`] entries, and a recursive remove stops after
//! [`REMOVE_BUDGET`] unlinks and answers `More` (the host asks again), so
//! running execs keep being served between requests.

use std::ffi::CString;
use std::fs::{self, DirBuilder, FileType, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use gondolin_wire::guestfs::{
    DirEntry, EntryKind, FsReply, FsRequest, FsStat, Time, MAX_DIR_PAGE, MAX_DIR_PAGE_BYTES,
    MAX_NAME, REMOVE_BUDGET,
};

use crate::sys;

/// Do one (validated) request.
pub fn handle(req: &FsRequest) -> FsReply {
    let done = |r: io::Result<()>| r.map(|()| FsReply::Done);
    let result = match req {
        FsRequest::Stat { path, follow } => stat(Path::new(path), *follow),
        FsRequest::ReadDir { path, offset } => read_dir(Path::new(path), *offset as usize),
        FsRequest::Mkdir {
            path,
            mode,
            recursive,
        } => done(mkdir(Path::new(path), *mode, *recursive)),
        FsRequest::Rename { from, to } => done(fs::rename(from, to)),
        FsRequest::Remove {
            path,
            recursive,
            force,
        } => remove(Path::new(path), *recursive, *force, REMOVE_BUDGET),
        FsRequest::Access { path, mode } => done(access(path, *mode)),
    };
    result.unwrap_or_else(|e| FsReply::Errno(errno_of(&e)))
}

/// The errno of a failed call (EIO if std made the error up itself).
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().filter(|n| *n > 0).unwrap_or(libc::EIO)
}

fn stat(path: &Path, follow: bool) -> io::Result<FsReply> {
    let md = match follow {
        true => fs::metadata(path)?,
        false => fs::symlink_metadata(path)?,
    };
    Ok(FsReply::Stat(stat_of(&md)))
}

fn stat_of(md: &Metadata) -> FsStat {
    // Timestamps before 1970 have a negative `sec` and `nsec` in 0..1e9.
    let time = |sec: i64, nsec: i64| Time {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    };
    FsStat {
        mode: md.mode(),
        dev: md.dev(),
        ino: md.ino(),
        nlink: md.nlink(),
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        size: md.size(),
        blksize: md.blksize(),
        blocks: md.blocks(),
        atime: time(md.atime(), md.atime_nsec()),
        mtime: time(md.mtime(), md.mtime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
    }
}

fn kind_of(t: FileType) -> EntryKind {
    match () {
        _ if t.is_file() => EntryKind::File,
        _ if t.is_dir() => EntryKind::Dir,
        _ if t.is_symlink() => EntryKind::Symlink,
        _ if t.is_block_device() => EntryKind::BlockDevice,
        _ if t.is_char_device() => EntryKind::CharDevice,
        _ if t.is_fifo() => EntryKind::Fifo,
        _ if t.is_socket() => EntryKind::Socket,
        _ => EntryKind::Unknown,
    }
}

/// One page of entries after the first `offset`. Stateless: a directory
/// changed between pages may show an entry twice or miss one, as `ls`
/// racing a writer would.
fn read_dir(path: &Path, offset: usize) -> io::Result<FsReply> {
    let mut entries = Vec::new();
    let mut bytes = 0;
    for entry in fs::read_dir(path)?.skip(offset) {
        let entry = entry?;
        let name = entry.file_name().as_bytes().to_vec();
        if name.len() > MAX_NAME {
            // Linux never makes one; refuse rather than send a page the
            // host would reject as a protocol violation.
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        if entries.len() == MAX_DIR_PAGE || bytes + name.len() > MAX_DIR_PAGE_BYTES {
            return Ok(FsReply::Entries {
                entries,
                done: false,
            });
        }
        // The type comes from d_type; an entry gone since is Unknown.
        let kind = entry.file_type().map(kind_of).unwrap_or(EntryKind::Unknown);
        bytes += name.len();
        entries.push(DirEntry { name, kind });
    }
    Ok(FsReply::Entries {
        entries,
        done: true,
    })
}

/// `mkdir [-p] [-m mode]`.
fn mkdir(path: &Path, mode: Option<u32>, recursive: bool) -> io::Result<()> {
    let create = || DirBuilder::new().mode(0o777).create(path);
    let made = match create() {
        Err(e) if recursive && e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                DirBuilder::new().recursive(true).create(parent)?;
            }
            create()
        }
        r => r,
    };
    match made {
        Err(e) if recursive && e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {
            return Ok(())
        }
        r => r?,
    }
    // Exactly `mode`, as `mkdir -m`: mkdir(2) masks it with the umask.
    match mode {
        Some(m) => fs::set_permissions(path, fs::Permissions::from_mode(m)),
        None => Ok(()),
    }
}

/// `rm [-r] [-f]` with at most `budget` removals; `More` when cut short.
fn remove(path: &Path, recursive: bool, force: bool, budget: usize) -> io::Result<FsReply> {
    let md = match fs::symlink_metadata(path) {
        Err(e) if force && e.kind() == io::ErrorKind::NotFound => return Ok(FsReply::Done),
        r => r?,
    };
    if !md.is_dir() {
        fs::remove_file(path)?;
        return Ok(FsReply::Done);
    }
    if !recursive {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    let mut budget = budget;
    match remove_tree(path, &mut budget)? {
        true => Ok(FsReply::Done),
        false => Ok(FsReply::More),
    }
}

/// Remove `dir` and what it holds, depth first, never following a symlink
/// (entry types come from lstat semantics). `Ok(false)`: out of budget.
fn remove_tree(dir: &Path, budget: &mut usize) -> io::Result<bool> {
    for entry in fs::read_dir(dir)? {
        if *budget == 0 {
            return Ok(false);
        }
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if !remove_tree(&path, budget)? {
                return Ok(false);
            }
        } else {
            fs::remove_file(&path)?;
            *budget -= 1;
        }
    }
    fs::remove_dir(dir)?;
    *budget = budget.saturating_sub(1);
    Ok(true)
}

fn access(path: &str, mode: u32) -> io::Result<()> {
    let path = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys::access(&path, mode as libc::c_int)
}

#[cfg(test)]
mod tests;

//! Typed file-system calls on guest paths (`vm.fs` outside the VFS): one
//! [`FsRequest`] frame per call, answered by sandboxd with data or a Linux
//! errno number (see `gondolin_wire::guestfs`). fs ids are their own space,
//! apart from exec ids; a lost connection fails every pending call.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use gondolin_wire::guestfs::{errno_name, FsReply, FsRequest};
pub use gondolin_wire::guestfs::{DirEntry, EntryKind, FsStat, Time};
use gondolin_wire::HostMsg;
use tokio::sync::oneshot;

use super::ControlClient;
use crate::control::{ControlError, Disconnect};
use crate::error::{Coded, ErrorCode};

/// Most entries [`ControlClient::fs_read_dir`] collects (over all pages)
/// before it gives up with `EOVERFLOW`: bounds host memory per listing.
pub const MAX_LIST_ENTRIES: usize = 1 << 20;
/// Most `More` answers one recursive remove takes (each removed up to
/// `REMOVE_BUDGET` entries): a guest answering `More` forever is cut off.
const MAX_REMOVE_ROUNDS: usize = 1 << 16;

/// Why a guest fs call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestFsError {
    /// The guest's syscall failed with this Linux errno.
    #[error("{name} (errno {errno})", name = errno_name(*.0).unwrap_or("UNKNOWN"), errno = .0)]
    Errno(i32),
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The guest answered with the wrong kind of reply.
    #[error("the guest sent a bad fs reply: {0}")]
    BadReply(&'static str),
}

impl GuestFsError {
    /// `ENOENT`... for an errno (as Node's `err.code`; `UNKNOWN` for a
    /// number Linux does not define), else the control error's code.
    pub fn code(&self) -> &'static str {
        match self {
            GuestFsError::Errno(n) => errno_name(*n).unwrap_or("UNKNOWN"),
            GuestFsError::Control(e) => e.code().as_str(),
            GuestFsError::BadReply(_) => "protocol_error",
        }
    }
}

type Waiter = oneshot::Sender<Result<FsReply, Disconnect>>;

/// fs calls waiting for their reply; lives in the client's [`State`].
#[derive(Default)]
pub(super) struct Pending {
    waiters: HashMap<u32, Waiter>,
    next_id: u32,
}

impl Pending {
    /// Route a reply; one for an id nobody waits for is dropped.
    pub(super) fn complete(&mut self, id: u32, reply: FsReply) {
        if let Some(tx) = self.waiters.remove(&id) {
            let _ = tx.send(Ok(reply));
        }
    }

    pub(super) fn fail(&mut self, d: &Disconnect) {
        for (_, tx) in self.waiters.drain() {
            let _ = tx.send(Err(d.clone()));
        }
    }

    fn alloc(&mut self, tx: Waiter) -> Result<u32, ControlError> {
        for _ in 0..1024 {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if let Entry::Vacant(slot) = self.waiters.entry(id) {
                slot.insert(tx);
                return Ok(id);
            }
        }
        Err(ControlError::NoIds)
    }
}

fn done(reply: FsReply) -> Result<(), GuestFsError> {
    match reply {
        FsReply::Done => Ok(()),
        _ => Err(GuestFsError::BadReply("expected Done")),
    }
}

impl ControlClient {
    /// Send one request and wait for its reply (an `Errno` reply is the
    /// error). A request that breaks the wire bounds fails here with the
    /// errno sandboxd would answer.
    async fn fs_call(&self, req: FsRequest) -> Result<FsReply, GuestFsError> {
        if req.validate().is_err() {
            return Err(GuestFsError::Errno(req.invalid_errno()));
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.shared.state.lock().unwrap();
            if let Some(d) = st.refusal() {
                return Err(ControlError::from(d).into());
            }
            st.fs.alloc(tx)?
        };
        let sent = self.shared.send(&HostMsg::Fs { id, req });
        if let Err(e) = sent {
            self.shared.state.lock().unwrap().fs.waiters.remove(&id);
            return Err(e.into());
        }
        // A dropped sender means the client went away without a reason.
        let lost = || Disconnect {
            code: ErrorCode::ConnectionClosed,
            message: "the connection to the guest closed".into(),
        };
        match rx.await.unwrap_or_else(|_| Err(lost())) {
            Ok(FsReply::Errno(n)) => Err(GuestFsError::Errno(n)),
            Ok(reply) => Ok(reply),
            Err(d) => Err(ControlError::from(d).into()),
        }
    }

    /// `stat(2)` (`follow`) or `lstat(2)` of a guest path.
    pub async fn fs_stat(&self, path: &str, follow: bool) -> Result<FsStat, GuestFsError> {
        let path = path.to_owned();
        match self.fs_call(FsRequest::Stat { path, follow }).await? {
            FsReply::Stat(st) => Ok(st),
            _ => Err(GuestFsError::BadReply("expected Stat")),
        }
    }

    /// Every entry of a guest directory (unsorted, without `.` and `..`),
    /// fetched page by page; at most [`MAX_LIST_ENTRIES`].
    pub async fn fs_read_dir(&self, path: &str) -> Result<Vec<DirEntry>, GuestFsError> {
        let mut all = Vec::new();
        loop {
            let offset = u32::try_from(all.len()).unwrap_or(u32::MAX);
            let req = FsRequest::ReadDir {
                path: path.to_owned(),
                offset,
            };
            let FsReply::Entries { entries, done } = self.fs_call(req).await? else {
                return Err(GuestFsError::BadReply("expected Entries"));
            };
            if !done && entries.is_empty() {
                return Err(GuestFsError::BadReply("an empty page that is not the last"));
            }
            all.extend(entries);
            if all.len() > MAX_LIST_ENTRIES {
                return Err(GuestFsError::Errno(gondolin_wire::fs::errno::EOVERFLOW));
            }
            if done {
                return Ok(all);
            }
        }
    }

    /// `mkdir [-p] [-m mode]` on a guest path.
    pub async fn fs_mkdir(
        &self,
        path: &str,
        mode: Option<u32>,
        recursive: bool,
    ) -> Result<(), GuestFsError> {
        let path = path.to_owned();
        done(
            self.fs_call(FsRequest::Mkdir {
                path,
                mode,
                recursive,
            })
            .await?,
        )
    }

    /// `rename(2)` between guest paths (`EXDEV` across file systems).
    pub async fn fs_rename(&self, from: &str, to: &str) -> Result<(), GuestFsError> {
        let (from, to) = (from.to_owned(), to.to_owned());
        done(self.fs_call(FsRequest::Rename { from, to }).await?)
    }

    /// `rm [-r] [-f]` of a guest path; a large tree takes several requests.
    pub async fn fs_remove(
        &self,
        path: &str,
        recursive: bool,
        force: bool,
    ) -> Result<(), GuestFsError> {
        for _ in 0..MAX_REMOVE_ROUNDS {
            let req = FsRequest::Remove {
                path: path.to_owned(),
                recursive,
                force,
            };
            match self.fs_call(req).await? {
                FsReply::Done => return Ok(()),
                FsReply::More => continue,
                _ => return Err(GuestFsError::BadReply("expected Done or More")),
            }
        }
        Err(GuestFsError::BadReply("a remove that never ends"))
    }

    /// `access(2)` of a guest path; `mode` from `F_OK`/`R_OK`/`W_OK`/`X_OK`.
    pub async fn fs_access(&self, path: &str, mode: u32) -> Result<(), GuestFsError> {
        let path = path.to_owned();
        done(self.fs_call(FsRequest::Access { path, mode }).await?)
    }
}

#[cfg(test)]
mod tests;

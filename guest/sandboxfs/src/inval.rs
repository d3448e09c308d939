//! Cache invalidations the host asks for, delivered to the kernel from a
//! thread of their own.
//!
//! A FUSE notify write blocks inside the kernel until it gets the locks it
//! needs: `FUSE_NOTIFY_INVAL_ENTRY` takes the parent directory's inode lock,
//! `FUSE_NOTIFY_INVAL_INODE` waits for locked page-cache pages. A process
//! in the middle of a create, rename or write holds exactly those locks
//! while it waits for our reply. Sent from the reader thread, the notify
//! waits for the process, the process waits for its reply, and the reply
//! waits behind the notify on the reader thread: the mount is wedged for
//! good. On this thread a notify may wait; replies keep flowing, the lock
//! holder finishes, and the notify goes through.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::sync::{Condvar, Mutex};

use fuser::{INodeNo, Notifier};

use crate::log;

/// Queued invalidations past which new ones are dropped: the kernel then
/// sees the change once its cache TTL runs out.
const MAX_QUEUED: usize = 16_384;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Inval {
    Inode(u64),
    Entry { parent: u64, name: String },
}

#[derive(Default)]
struct Queue {
    order: VecDeque<Inval>,
    /// What is queued, so a burst of events on one path costs one notify.
    queued: HashSet<Inval>,
}

#[derive(Default)]
pub struct Invalidations {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Invalidations {
    /// Queue `i`; never blocks.
    pub fn push(&self, i: Inval) {
        let mut q = self.queue.lock().unwrap();
        if q.queued.contains(&i) {
            return;
        }
        if q.order.len() >= MAX_QUEUED {
            log!("too many cache invalidations queued; dropping some (caches expire on their own)");
            return;
        }
        q.queued.insert(i.clone());
        q.order.push_back(i);
        self.ready.notify_one();
    }

    fn pop(&self) -> Inval {
        let mut q = self.queue.lock().unwrap();
        loop {
            if let Some(i) = q.order.pop_front() {
                q.queued.remove(&i);
                return i;
            }
            q = self.ready.wait(q).unwrap();
        }
    }

    /// Deliver queued invalidations to the kernel, forever.
    pub fn run(&self, notifier: Notifier) {
        loop {
            // Errors (ENOENT: nothing cached under that name) change nothing.
            let _ = match self.pop() {
                Inval::Inode(ino) => notifier.inval_inode(INodeNo(ino), 0, 0),
                Inval::Entry { parent, name } => {
                    notifier.inval_entry(INodeNo(parent), OsStr::new(&name))
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_invalidations_are_queued_once_and_in_order() {
        let q = Invalidations::default();
        q.push(Inval::Inode(5));
        q.push(Inval::Entry {
            parent: 1,
            name: "a".into(),
        });
        q.push(Inval::Inode(5));
        assert_eq!(q.pop(), Inval::Inode(5));
        q.push(Inval::Inode(5));
        assert_eq!(
            q.pop(),
            Inval::Entry {
                parent: 1,
                name: "a".into()
            }
        );
        assert_eq!(q.pop(), Inval::Inode(5));
    }

    #[test]
    fn the_queue_is_bounded_and_push_never_blocks() {
        let q = Invalidations::default();
        for i in 0..(MAX_QUEUED as u64 + 100) {
            q.push(Inval::Inode(i));
        }
        assert_eq!(q.queue.lock().unwrap().order.len(), MAX_QUEUED);
    }
}

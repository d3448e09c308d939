//! The inode table of the fs RPC server: which paths each inode number the
//! guest kernel holds stands for, and how many lookups it holds on it.
//! Inode numbers are ours; an inode lives until the kernel forgets it.

use std::collections::HashMap;

use gondolin_wire::fs::{errno, ROOT_INO};

use super::{VfsError, VfsResult};

/// An inode the guest kernel knows: every path it is reachable by (hard
/// links give one inode several) and how many lookups the kernel holds.
pub(super) struct Node {
    paths: Vec<String>,
    lookups: u64,
}

#[derive(Default)]
pub(super) struct Inodes {
    by_ino: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
}

impl Inodes {
    pub(super) fn new() -> Self {
        let mut t = Inodes {
            next: ROOT_INO + 1,
            ..Default::default()
        };
        t.by_ino.insert(
            ROOT_INO,
            Node {
                paths: vec!["/".into()],
                lookups: 1,
            },
        );
        t.by_path.insert("/".into(), ROOT_INO);
        t
    }

    pub(super) fn path(&self, ino: u64) -> VfsResult<String> {
        self.by_ino
            .get(&ino)
            .and_then(|n| n.paths.first().cloned())
            .ok_or_else(|| VfsError::with_message(errno::ENOENT, format!("stale inode {ino}")))
    }

    /// The inode for `path`, counting one more kernel reference.
    pub(super) fn remember(&mut self, path: &str) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(n) = self.by_ino.get_mut(&ino) {
                n.lookups += 1;
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(
            ino,
            Node {
                paths: vec![path.to_string()],
                lookups: 1,
            },
        );
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// `path` is a new hard link to `ino`: same inode, so the kernel sees
    /// one file (and its link count) under both names.
    pub(super) fn add_link(&mut self, ino: u64, path: &str) -> u64 {
        self.unlink(path);
        match self.by_ino.get_mut(&ino) {
            Some(n) => {
                n.paths.push(path.to_string());
                n.lookups += 1;
                self.by_path.insert(path.to_string(), ino);
                ino
            }
            None => self.remember(path),
        }
    }

    pub(super) fn peek(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    pub(super) fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let gone = match self.by_ino.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(node) = self.by_ino.remove(&ino) {
                for p in node.paths {
                    if self.by_path.get(&p) == Some(&ino) {
                        self.by_path.remove(&p);
                    }
                }
            }
        }
    }

    pub(super) fn drop_path(&mut self, p: &str) {
        if let Some(ino) = self.by_path.remove(p) {
            if ino == ROOT_INO {
                return;
            }
            let empty = match self.by_ino.get_mut(&ino) {
                Some(n) => {
                    n.paths.retain(|x| x != p);
                    n.paths.is_empty()
                }
                None => false,
            };
            if empty {
                self.by_ino.remove(&ino);
            }
        }
    }

    /// `path` (and everything below it) no longer exists: unmap it so a new
    /// object at the same path gets a new inode. The kernel's references to
    /// inodes with no path left resolve to ENOENT.
    pub(super) fn unlink(&mut self, path: &str) {
        let prefix = format!("{path}/");
        let doomed: Vec<String> = self
            .by_path
            .keys()
            .filter(|p| *p == path || p.starts_with(&prefix))
            .cloned()
            .collect();
        for p in doomed {
            self.drop_path(&p);
        }
    }

    /// Move the mapping of `from` (and its descendants) to `to`.
    pub(super) fn rename(&mut self, from: &str, to: &str) {
        self.unlink(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| *p == from || p.starts_with(&prefix))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(n) = self.by_ino.get_mut(&ino) {
                for p in n.paths.iter_mut().filter(|p| **p == old) {
                    *p = new.clone();
                }
            }
            self.by_path.insert(new, ino);
        }
    }
}

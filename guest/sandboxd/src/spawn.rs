//! Starting a child: resolve the program, build its environment and stdio,
//! then hand a [`Plan`] to the vfork-style [`Launcher`].
//!
//! Why not `std::process::Command`: it stays on posix_spawn only without
//! `pre_exec`, but a pty child must open its slave after `setsid` to make it
//! its controlling terminal — with std that means `pre_exec`, i.e. a full
//! fork of sandboxd. See `vfork.rs` for why not posix_spawn either.
//!
//! The program is resolved against the *child's* PATH here, in the parent,
//! so "not found" is known before anything is created; the launcher tells
//! which step failed (chdir or execve) for the error line.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use gondolin_wire::Exec;

use crate::vfork::{ChildFd, Launcher, Plan, Step};
use crate::{pty, sys};

/// PATH used when the child's environment has none.
const DEFAULT_PATH: &[u8] = b"/usr/bin:/bin";

/// Why a child was not started.
#[derive(Debug)]
pub enum SpawnError {
    /// Pipes or a pty could not be created (descriptor or memory limits):
    /// the request fails with an `exec_failed` error.
    Setup(io::Error),
    /// The program or cwd is unusable. Reported the way a shell would: the
    /// exec completes with 127 and this line on its stderr.
    NotRun(String),
}

/// A running child and our ends of its stdio, all non-blocking.
pub struct Child {
    pub pid: libc::pid_t,
    /// Pipe write end, or a dup of the pty master; `None` = /dev/null.
    pub stdin: Option<OwnedFd>,
    /// Pipe read end, or the pty master.
    pub stdout: OwnedFd,
    /// `None` for a pty (everything arrives on the master).
    pub stderr: Option<OwnedFd>,
}

/// sandboxd's own environment, captured once at start, plus what the
/// host's `Configure` added (the MITM CA variables); execs override both.
pub struct BaseEnv {
    entries: Vec<(Vec<u8>, CString)>,
    configured: Vec<(Vec<u8>, CString)>,
}

fn entry(k: &[u8], v: &[u8]) -> Option<(Vec<u8>, CString)> {
    let mut e = k.to_vec();
    e.push(b'=');
    e.extend_from_slice(v);
    Some((k.to_vec(), CString::new(e).ok()?))
}

impl BaseEnv {
    /// Our environment and the configured entries saved by an earlier
    /// sandboxd (see `configure::load_env`).
    pub fn capture() -> Self {
        let entries = std::env::vars_os()
            .filter_map(|(k, v)| entry(k.as_bytes(), v.as_bytes()))
            .collect();
        let mut env = BaseEnv {
            entries,
            configured: Vec::new(),
        };
        env.set_configured(&crate::configure::load_env());
        env
    }

    /// Replace the configured entries (each configure sets them whole).
    pub fn set_configured(&mut self, env: &[(String, String)]) {
        self.configured = env
            .iter()
            .filter_map(|(k, v)| entry(k.as_bytes(), v.as_bytes()))
            .collect();
    }

    /// The child's environment: our entries not overridden, then the
    /// configured ones not overridden, then the overrides (for a key given
    /// twice, the last one wins).
    fn merge(&self, overrides: &[String]) -> Vec<CString> {
        let mut seen = HashSet::new();
        let mut own: Vec<&str> = overrides
            .iter()
            .rev()
            .filter(|e| seen.insert(key_of(e)))
            .map(String::as_str)
            .collect();
        own.reverse();
        let configured: HashSet<&[u8]> = self.configured.iter().map(|(k, _)| &k[..]).collect();
        let mut out: Vec<CString> = self
            .entries
            .iter()
            .filter(|(k, _)| !seen.contains(&k[..]) && !configured.contains(&k[..]))
            .chain(
                self.configured
                    .iter()
                    .filter(|(k, _)| !seen.contains(&k[..])),
            )
            .map(|(_, e)| e.clone())
            .collect();
        out.extend(own.into_iter().filter_map(|e| CString::new(e).ok()));
        out
    }
}

fn key_of(entry: &str) -> &[u8] {
    entry.split_once('=').map_or(entry, |(k, _)| k).as_bytes()
}

pub struct Spawner {
    launcher: Launcher,
    pub env: BaseEnv,
}

impl Spawner {
    /// Create after sandboxd's own signal setup (see [`Launcher::new`]).
    pub fn new(env: BaseEnv) -> io::Result<Self> {
        Ok(Spawner {
            launcher: Launcher::new()?,
            env,
        })
    }

    pub fn spawn(&mut self, exec: &Exec) -> Result<Child, SpawnError> {
        let cstr =
            |s: &str| CString::new(s).map_err(|_| not_run(exec, Step::Exec, "contains a NUL byte"));
        let argv = exec
            .argv
            .iter()
            .map(|a| cstr(a))
            .collect::<Result<Vec<_>, _>>()?;
        let cwd = exec.cwd.as_deref().map(cstr).transpose()?;
        let envp = self.env.merge(&exec.env);
        let program = resolve(&exec.argv[0], &envp, exec.cwd.as_deref())
            .map_err(|e| not_run(exec, Step::Exec, &sys::errno_text(&e)))?;
        let stdio = Stdio::new(exec).map_err(SpawnError::Setup)?;

        let argv_ptrs = null_terminated(&argv);
        let envp_ptrs = null_terminated(&envp);
        let plan = Plan {
            program: &program,
            argv: &argv_ptrs,
            envp: &envp_ptrs,
            stdio: stdio.child_fds(),
            cwd: cwd.as_deref(),
        };
        let launched = self.launcher.launch(&plan);
        let child = stdio.finish(launched.as_ref().map_or(0, |&pid| pid));
        match launched {
            Ok(_) => Ok(child),
            Err((Step::Setup, e)) => Err(SpawnError::Setup(e)),
            Err((step, e)) => Err(not_run(exec, step, &sys::errno_text(&e))),
        }
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The child's stdio: the child's ends (kept open until it is launched)
/// and ours. Our ends are made non-blocking here: they are open file
/// descriptions of their own, so the child's ends stay blocking.
struct Stdio {
    keep_stdin: Option<OwnedFd>,
    keep_stdout: OwnedFd,
    keep_stderr: Option<OwnedFd>,
    child: ChildEnds,
}

enum ChildEnds {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Pty {
        slave: CString,
    },
}

impl Stdio {
    fn new(exec: &Exec) -> io::Result<Self> {
        if let Some((rows, cols)) = exec.pty {
            let p = pty::open(rows, cols)?;
            sys::set_nonblocking(p.master.as_fd())?;
            let stdin = sys::dup(p.master.as_fd())?;
            return Ok(Stdio {
                keep_stdin: Some(stdin),
                keep_stdout: p.master,
                keep_stderr: None,
                child: ChildEnds::Pty {
                    slave: p.slave_path,
                },
            });
        }
        let (keep_stdin, child_stdin) = if exec.stdin {
            let (r, w) = sys::pipe()?;
            sys::set_nonblocking(w.as_fd())?;
            (Some(w), Some(r))
        } else {
            (None, None)
        };
        let (out_r, out_w) = sys::pipe()?;
        sys::set_nonblocking(out_r.as_fd())?;
        let (err_r, err_w) = sys::pipe()?;
        sys::set_nonblocking(err_r.as_fd())?;
        Ok(Stdio {
            keep_stdin,
            keep_stdout: out_r,
            keep_stderr: Some(err_r),
            child: ChildEnds::Pipes {
                stdin: child_stdin,
                stdout: out_w,
                stderr: err_w,
            },
        })
    }

    fn child_fds(&self) -> [ChildFd<'_>; 3] {
        match &self.child {
            ChildEnds::Pty { slave } => [
                ChildFd::Open(slave, libc::O_RDWR),
                ChildFd::LikeStdin,
                ChildFd::LikeStdin,
            ],
            ChildEnds::Pipes {
                stdin,
                stdout,
                stderr,
            } => [
                match stdin {
                    Some(fd) => ChildFd::Dup(fd.as_raw_fd()),
                    None => ChildFd::Open(c"/dev/null", libc::O_RDONLY),
                },
                ChildFd::Dup(stdout.as_raw_fd()),
                ChildFd::Dup(stderr.as_raw_fd()),
            ],
        }
    }

    /// Close the child's ends (they must close in the parent for end of
    /// file to be seen once the child exits) and hand out ours.
    fn finish(self, pid: libc::pid_t) -> Child {
        drop(self.child);
        Child {
            pid,
            stdin: self.keep_stdin,
            stdout: self.keep_stdout,
            stderr: self.keep_stderr,
        }
    }
}

/// The stderr line for a child that could not be started. A missing
/// program is found before launching, so a bad cwd is checked for then too
/// (it is the likelier culprit when both look wrong).
fn not_run(exec: &Exec, step: Step, reason: &str) -> SpawnError {
    let cwd = exec.cwd.as_deref().unwrap_or("");
    let cwd_reason = match step {
        Step::Chdir => Some(reason.to_owned()),
        _ if !cwd.is_empty() => cwd_problem(cwd),
        _ => None,
    };
    match cwd_reason {
        Some(why) => SpawnError::NotRun(format!("exec failed: cwd {cwd}: {why}\n")),
        None => SpawnError::NotRun(format!("exec failed: {}: {reason}\n", exec.argv[0])),
    }
}

fn cwd_problem(cwd: &str) -> Option<String> {
    match std::fs::metadata(cwd) {
        Err(e) => Some(sys::errno_text(&e)),
        Ok(m) if !m.is_dir() => Some("Not a directory".into()),
        Ok(_) => None,
    }
}

/// Find the program like execvp would, but in the child's PATH.
fn resolve(program: &str, envp: &[CString], cwd: Option<&str>) -> io::Result<CString> {
    if program.contains('/') {
        return CString::new(program).map_err(|_| io::ErrorKind::InvalidInput.into());
    }
    let path = envp
        .iter()
        .rev()
        .find_map(|e| e.to_bytes().strip_prefix(b"PATH="))
        .unwrap_or(DEFAULT_PATH);
    let mut err = io::Error::from_raw_os_error(libc::ENOENT);
    for dir in path.split(|&b| b == b':') {
        let mut cand = Vec::with_capacity(dir.len() + program.len() + 2);
        // A relative PATH entry (empty = ".") is relative to the child's cwd.
        if !dir.starts_with(b"/") {
            if let Some(cwd) = cwd {
                cand.extend_from_slice(cwd.as_bytes());
                cand.push(b'/');
            }
        }
        cand.extend_from_slice(if dir.is_empty() { b"." } else { dir });
        cand.push(b'/');
        cand.extend_from_slice(program.as_bytes());
        let Ok(cand) = CString::new(cand) else {
            continue;
        };
        match executable(&cand) {
            Ok(()) => return Ok(cand),
            // Like execvp: a permission problem is worth reporting over ENOENT.
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => err = e,
            Err(_) => {}
        }
    }
    Err(err)
}

fn executable(path: &CStr) -> io::Result<()> {
    // SAFETY: access only reads the NUL-terminated path.
    sys::cvt(unsafe { libc::access(path.as_ptr(), libc::X_OK) })?;
    let meta = std::fs::metadata(std::ffi::OsStr::from_bytes(path.to_bytes()))?;
    if meta.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EACCES));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_overrides_and_dedups() {
        let base = BaseEnv {
            entries: vec![
                (b"A".to_vec(), c"A=1".to_owned()),
                (b"B".to_vec(), c"B=2".to_owned()),
            ],
            configured: Vec::new(),
        };
        let got = base.merge(&["B=3".into(), "C=4".into(), "C=5".into()]);
        let got: Vec<&str> = got.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(got, ["A=1", "B=3", "C=5"]);
    }

    #[test]
    fn configured_entries_sit_between_ours_and_the_exec_s() {
        let mut base = BaseEnv {
            entries: vec![
                (b"A".to_vec(), c"A=1".to_owned()),
                (b"SSL_CERT_FILE".to_vec(), c"SSL_CERT_FILE=/old".to_owned()),
            ],
            configured: Vec::new(),
        };
        let env = |k: &str, v: &str| (k.to_string(), v.to_string());
        base.set_configured(&[
            env("SSL_CERT_FILE", "/ca"),
            env("NODE_EXTRA_CA_CERTS", "/n"),
        ]);
        let got = base.merge(&["NODE_EXTRA_CA_CERTS=/mine".into()]);
        let got: Vec<&str> = got.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(
            got,
            ["A=1", "SSL_CERT_FILE=/ca", "NODE_EXTRA_CA_CERTS=/mine"]
        );
        // A later configure replaces the set whole.
        base.set_configured(&[]);
        let got = base.merge(&[]);
        let got: Vec<&str> = got.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(got, ["A=1", "SSL_CERT_FILE=/old"]);
    }

    #[test]
    fn resolve_uses_the_child_path() {
        let envp = [c"PATH=/nonexistent:/bin:/usr/bin".to_owned()];
        let p = resolve("sh", &envp, None).unwrap();
        assert!(p.to_bytes().ends_with(b"/sh"));
        let e = resolve("definitely-not-a-program-xyz", &envp, None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(resolve("./x", &envp, None).unwrap().to_bytes(), b"./x");
    }
}

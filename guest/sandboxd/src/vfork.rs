//! The child launcher: `clone(CLONE_VM | CLONE_VFORK)` running one small
//! function on a stack of its own, which sets the child up and calls execve.
//!
//! Why not posix_spawn: glibc's posix_spawn is the same idea but does more
//! per call — it mmaps and munmaps a fresh child stack (the munmap flushes
//! TLBs on every vCPU), blocks and restores all signals around the clone, and
//! makes ~64 rt_sigaction calls in the child. Measured in the guest under
//! TCG (2 vCPUs, a trivial static program), spawn-to-return took ~2.2 ms
//! with posix_spawn and ~1.5 ms with this; fork+exec was worse than both
//! once the child's exit is counted. Why not fork: copying sandboxd's page
//! tables is emulated work under TCG.
//!
//! The child shares our memory until execve, so the code that runs in it
//! follows the rules of a vfork child: only async-signal-safe libc syscall
//! wrappers, no allocation, no locks, no panics; everything it needs is
//! prepared by the parent in a [`Plan`]. We are suspended meanwhile
//! (CLONE_VFORK), so nothing of ours changes under it. No signal handler of
//! ours can run in it either: sandboxd installs none (SIGPIPE is ignored,
//! SIGCHLD blocked), and the child gets its own copy of the dispositions
//! (no CLONE_SIGHAND), which it resets before execve.

use std::ffi::{c_int, c_void, CStr};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

use libc::c_char;

/// Bytes of stack for the child function (it needs well under 4 KiB; the
/// rest is headroom), plus one guard page below it.
const STACK_SIZE: usize = 64 * 1024;
const GUARD: usize = 4096;

/// What one of the child's descriptors 0, 1, 2 becomes.
pub enum ChildFd<'a> {
    /// dup2 of one of our descriptors (all of ours are close-on-exec).
    Dup(RawFd),
    /// Opened by the child. For a pty slave this happens after setsid and
    /// without O_NOCTTY, which makes it the child's controlling terminal.
    Open(&'a CStr, c_int),
    /// The same file as the child's descriptor 0.
    LikeStdin,
}

/// Everything the child does between clone and execve.
pub struct Plan<'a> {
    pub program: &'a CStr,
    /// NULL-terminated pointer arrays into strings that outlive the launch.
    pub argv: &'a [*const c_char],
    pub envp: &'a [*const c_char],
    pub stdio: [ChildFd<'a>; 3],
    pub cwd: Option<&'a CStr>,
}

/// Which part of the child's setup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Setup = 1,
    Chdir = 2,
    Exec = 3,
}

/// Written by the child, read by us once it has exec'd or exited.
struct Shared<'a> {
    plan: &'a Plan<'a>,
    signals: &'a [c_int],
    step: AtomicU8,
    errno: AtomicI32,
}

pub struct Launcher {
    /// Base of the mapping: a guard page, then the stack.
    map: *mut c_void,
    /// Signals ignored in sandboxd: ignored dispositions survive execve, so
    /// the child resets them (SIGPIPE at least, plus whatever init ignored).
    ignored: Vec<c_int>,
}

impl Launcher {
    /// Call after sandboxd's own signal setup: it records what is ignored.
    pub fn new() -> io::Result<Launcher> {
        // SAFETY: a fresh anonymous mapping; mprotect of its first page.
        let map = unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                GUARD + STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if map == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            if libc::mprotect(map, GUARD, libc::PROT_NONE) != 0 {
                let e = io::Error::last_os_error();
                libc::munmap(map, GUARD + STACK_SIZE);
                return Err(e);
            }
            map
        };
        Ok(Launcher {
            map,
            ignored: ignored_signals(),
        })
    }

    /// Start the child described by `plan`; on failure the child has been
    /// reaped and the error says which step failed.
    pub fn launch(&mut self, plan: &Plan<'_>) -> Result<libc::pid_t, (Step, io::Error)> {
        let shared = Shared {
            plan,
            signals: &self.ignored,
            step: AtomicU8::new(0),
            errno: AtomicI32::new(0),
        };
        // SAFETY: the stack top is inside our mapping (which `&mut self`
        // keeps to this one launch at a time), 16-byte aligned since the
        // mapping is page aligned. `shared` outlives the child's use of it:
        // with CLONE_VFORK, clone returns only after the child exec'd or
        // exited. The child function obeys the vfork rules (module doc).
        let pid = unsafe {
            let top = self
                .map
                .cast::<u8>()
                .add(GUARD + STACK_SIZE)
                .cast::<c_void>();
            libc::clone(
                child_main,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &shared as *const Shared<'_> as *mut c_void,
            )
        };
        if pid < 0 {
            return Err((Step::Setup, io::Error::last_os_error()));
        }
        let step = match shared.step.load(Ordering::Acquire) {
            0 => return Ok(pid),
            1 => Step::Setup,
            2 => Step::Chdir,
            _ => Step::Exec,
        };
        let errno = shared.errno.load(Ordering::Acquire);
        let _ = wait_blocking(pid);
        Err((step, io::Error::from_raw_os_error(errno)))
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new(); no child uses it
        // once launch() has returned.
        unsafe { libc::munmap(self.map, GUARD + STACK_SIZE) };
    }
}

/// The child's side. Runs on the launcher's stack, in our address space.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Shared` that launch() passed to clone; it stays
    // valid while we run (the parent is suspended) and we only read it,
    // apart from the two atomics.
    let shared = unsafe { &*(arg as *const Shared<'_>) };
    // SAFETY: setup_and_exec makes only raw libc syscall wrappers.
    let (step, errno) = unsafe { setup_and_exec(shared.plan, shared.signals) };
    shared.errno.store(errno, Ordering::Release);
    shared.step.store(step as u8, Ordering::Release);
    // SAFETY: _exit skips atexit handlers and stdio flushing, which belong
    // to the parent whose memory we share.
    unsafe { libc::_exit(127) }
}

/// Returns only on failure: which step failed and its errno.
///
/// # Safety
/// Must run in the vfork child, with `plan` fully prepared.
unsafe fn setup_and_exec(plan: &Plan<'_>, signals: &[c_int]) -> (Step, c_int) {
    // SAFETY: (the whole body) thin syscall wrappers on pointers from `plan`,
    // whose strings and arrays the parent keeps alive and NUL-terminated.
    unsafe {
        let errno = || *libc::__errno_location();
        for &sig in signals {
            libc::signal(sig, libc::SIG_DFL);
        }
        // Own session: kill(-pid) reaches the whole tree, and no terminal of
        // ours (the console) becomes the child's.
        if libc::setsid() < 0 {
            return (Step::Setup, errno());
        }
        for (target, how) in (0..).zip(&plan.stdio) {
            let r = match how {
                ChildFd::Dup(fd) => libc::dup2(*fd, target),
                ChildFd::Open(path, flags) => {
                    // Close-on-exec: only the dup2 copy survives execve.
                    let fd = libc::open(path.as_ptr(), *flags | libc::O_CLOEXEC);
                    if fd < 0 {
                        fd
                    } else {
                        libc::dup2(fd, target)
                    }
                }
                ChildFd::LikeStdin => libc::dup2(0, target),
            };
            if r < 0 {
                return (Step::Setup, errno());
            }
        }
        if let Some(cwd) = plan.cwd {
            if libc::chdir(cwd.as_ptr()) < 0 {
                return (Step::Chdir, errno());
            }
        }
        // Our mask blocks SIGCHLD (it feeds a signalfd); the child starts clean.
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
        libc::execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
        (Step::Exec, errno())
    }
}

fn ignored_signals() -> Vec<c_int> {
    let mut out = Vec::new();
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: query only (null new action); `old` is written on success.
        let r = unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) };
        // SAFETY: zero-initialised and, on success, filled in by the kernel.
        if r == 0 && unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN {
            out.push(sig);
        }
    }
    out
}

/// Wait for one of our children to end and reap it; its wait status.
pub fn wait_blocking(pid: libc::pid_t) -> io::Result<c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child, writing only `status`.
        if unsafe { libc::waitpid(pid, &mut status, 0) } >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

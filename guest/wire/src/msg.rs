//! Message types. Adding a variant at the end of an enum is compatible with
//! older peers only in one direction, so [`PROTOCOL_VERSION`] is exchanged in
//! [`GuestMsg::Ready`] and checked by the host.

use serde::{Deserialize, Serialize};

use crate::guestfs::{FsReply, FsRequest};
use crate::{WireError, MAX_ARGS, MAX_CHUNK, MAX_ENV, MAX_STRING};

pub const PROTOCOL_VERSION: u32 = 5;

/// Most bind mounts one [`Configure`] may list.
pub const MAX_BINDS: usize = 4096;
/// Longest guest path in a [`FsPlan`] (Linux `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Bounds on [`Configure::seed`], in bytes.
pub const MIN_SEED: usize = 16;
pub const MAX_SEED: usize = 512;

/// Which output stream a chunk or a credit grant belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A request to start a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// `argv[0]` is the program: a path if it contains `/`, else looked up in
    /// the child's `PATH`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries applied over sandboxd's own environment.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// Give the child a stdin pipe (else `/dev/null`).
    pub stdin: bool,
    /// Run on a pty of this size (rows, cols); all output is `Stdout`.
    pub pty: Option<(u16, u16)>,
    /// Initial output credit per stream, in bytes.
    pub stdout_window: u32,
    pub stderr_window: u32,
    /// Start no process: write stdin into this file (created or truncated,
    /// mode 0644) and exit 0 at its end; on failure the exit status is the
    /// Linux errno (1..=133; the reason in words on stderr), so the host
    /// names the error without reading text. How `vm.fs.writeFile` stores a
    /// file without a `cat` and a pipe.
    pub stdin_to_file: Option<String>,
    /// Start no process: send this file as stdout and exit 0 at its end, or
    /// with the errno as status as for `stdin_to_file`. How `vm.fs.readFile`
    /// reads a file.
    pub stdout_from_file: Option<String>,
}

/// How the guest mounts the host-served filesystem (the `gondolin.fs` port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsPlan {
    /// Where sandboxfs mounts the provider root (upstream default `/data`).
    pub fuse_mount: String,
    /// Guest paths bind-mounted from `fuse_mount` + path, in order.
    pub binds: Vec<String>,
}

/// The per-VM configuration, sent once the guest is up: after `Ready` on a
/// cold boot, and again after a memory snapshot is resumed in a new QEMU
/// (possibly with a different plan). Answered with
/// [`GuestMsg::Configured`]. Our extension: upstream passes the mounts on
/// the kernel command line, which a snapshot would bake in (and which
/// overflowed with many mounts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configure {
    /// Mount the host-served filesystem; `None` leaves none mounted.
    pub fs: Option<FsPlan>,
    /// Bring up eth0 and trust the MITM CA found in `/etc/gondolin`.
    pub net: bool,
    /// Host CLOCK_REALTIME, in nanoseconds since the Unix epoch; 0 leaves
    /// the guest clock alone.
    pub time_unix_ns: u64,
    /// Host random bytes mixed into the guest's entropy pool
    /// ([`MIN_SEED`]..=[`MAX_SEED`]), so guests resumed from one memory
    /// image diverge.
    #[serde(with = "serde_bytes")]
    pub seed: Vec<u8>,
    /// End every exec (their processes are killed, nothing more is sent for
    /// them) and unmount the VFS; the network is left as it is. Sent right
    /// before a memory checkpoint is saved, so no exec, half-sent frame or
    /// FUSE request of this host crosses into a resumed VM (whose host
    /// numbers its execs afresh).
    #[serde(default)]
    pub quiesce: bool,
}

/// Host -> guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// Start process `id` (ids are chosen by the host and must be unused).
    Exec { id: u32, exec: Exec },
    /// Stdin bytes for `id`; `eof` closes the child's stdin after `data`.
    Stdin {
        id: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        eof: bool,
    },
    /// Grant more output credit for `id`.
    Window { id: u32, stdout: u32, stderr: u32 },
    /// Resize the pty of `id`.
    Resize { id: u32, rows: u16, cols: u16 },
    /// Send `signal` to the process group of `id`.
    Kill { id: u32, signal: i32 },
    /// Liveness probe; answered with [`GuestMsg::Pong`].
    Ping { seq: u32 },
    /// A file-system request; answered with [`GuestMsg::FsReply`] of the
    /// same `id` (fs ids are apart from exec ids).
    Fs { id: u32, req: FsRequest },
    /// Apply the per-VM configuration; answered with
    /// [`GuestMsg::Configured`]. One at a time.
    Configure(Configure),
}

/// Guest -> host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMsg {
    /// sandboxd is up and serving; sent once per connection.
    Ready {
        version: u32,
    },
    /// Output of `id`; never more than the credit the host granted.
    Output {
        id: u32,
        stream: Stream,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Process `id` finished and all of its output has been sent.
    /// `exit_code` is 128+N when killed by signal N.
    Exit {
        id: u32,
        exit_code: i32,
        signal: Option<i32>,
    },
    /// The guest can take `bytes` more stdin for `id`.
    StdinWindow {
        id: u32,
        bytes: u32,
    },
    /// A request failed (`id` 0 = not tied to one request).
    Error {
        id: u32,
        code: String,
        message: String,
    },
    Pong {
        seq: u32,
    },
    /// The answer to [`HostMsg::Fs`] `id`.
    FsReply {
        id: u32,
        reply: FsReply,
    },
    /// The answer to [`HostMsg::Configure`]. `version` is
    /// [`PROTOCOL_VERSION`] (a resumed guest never sends `Ready` again);
    /// `error` says what could not be set up (the VFS), `None` if all was.
    Configured {
        version: u32,
        error: Option<String>,
    },
}

fn check_str(s: &str, what: &'static str) -> Result<(), WireError> {
    if s.len() > MAX_STRING {
        return Err(WireError::Invalid(what));
    }
    if s.as_bytes().contains(&0) {
        return Err(WireError::Invalid("string contains a NUL byte"));
    }
    Ok(())
}

fn check_file_path(f: &str) -> Result<(), WireError> {
    check_str(f, "file path too long")?;
    if !f.starts_with('/') || f.contains('\0') {
        return Err(WireError::Invalid("file paths must be absolute"));
    }
    Ok(())
}

impl Exec {
    pub fn validate(&self) -> Result<(), WireError> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(WireError::Invalid("argv must name a program"));
        }
        if self.argv.len() > MAX_ARGS {
            return Err(WireError::Invalid("too many arguments"));
        }
        if self.env.len() > MAX_ENV {
            return Err(WireError::Invalid("too many environment entries"));
        }
        for a in &self.argv {
            check_str(a, "argument too long")?;
        }
        for e in &self.env {
            check_str(e, "environment entry too long")?;
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => return Err(WireError::Invalid("environment entry must be KEY=VALUE")),
            }
        }
        if let Some(cwd) = &self.cwd {
            check_str(cwd, "cwd too long")?;
            if !cwd.starts_with('/') {
                return Err(WireError::Invalid("cwd must be absolute"));
            }
        }
        if let Some(f) = &self.stdin_to_file {
            check_file_path(f)?;
            if !self.stdin || self.pty.is_some() || self.stdout_from_file.is_some() {
                return Err(WireError::Invalid(
                    "stdin_to_file needs stdin, no pty and no stdout_from_file",
                ));
            }
        }
        if let Some(f) = &self.stdout_from_file {
            check_file_path(f)?;
            if self.stdin || self.pty.is_some() {
                return Err(WireError::Invalid(
                    "stdout_from_file takes no stdin and no pty",
                ));
            }
        }
        Ok(())
    }
}

/// An absolute guest path with no NUL and no `..` component.
fn check_guest_path(p: &str, what: &'static str) -> Result<(), WireError> {
    if p.len() > MAX_PATH {
        return Err(WireError::Invalid(what));
    }
    if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == "..") {
        return Err(WireError::Invalid(
            "mount paths must be absolute, without NUL or ..",
        ));
    }
    Ok(())
}

impl FsPlan {
    pub fn validate(&self) -> Result<(), WireError> {
        check_guest_path(&self.fuse_mount, "fuse mount path too long")?;
        if self.binds.len() > MAX_BINDS {
            return Err(WireError::Invalid("too many bind mounts"));
        }
        for b in &self.binds {
            check_guest_path(b, "bind path too long")?;
            if b.trim_end_matches('/').is_empty() {
                return Err(WireError::Invalid("cannot bind-mount over /"));
            }
        }
        Ok(())
    }
}

impl Configure {
    pub fn validate(&self) -> Result<(), WireError> {
        if !(MIN_SEED..=MAX_SEED).contains(&self.seed.len()) {
            return Err(WireError::Invalid("seed must be 16 to 512 bytes"));
        }
        match &self.fs {
            Some(fs) => fs.validate(),
            None => Ok(()),
        }
    }
}

impl HostMsg {
    /// Check the bounds a decoded message must respect before it is used.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            HostMsg::Exec { exec, .. } => exec.validate(),
            HostMsg::Configure(c) => c.validate(),
            HostMsg::Fs { req, .. } => req.validate(),
            HostMsg::Stdin { data, .. } if data.len() > MAX_CHUNK => {
                Err(WireError::Invalid("stdin chunk too large"))
            }
            _ => Ok(()),
        }
    }
}

impl GuestMsg {
    /// Check the bounds a decoded message must respect before it is used.
    pub fn validate(&self) -> Result<(), WireError> {
        match self {
            GuestMsg::Output { data, .. } if data.len() > MAX_CHUNK => {
                Err(WireError::Invalid("output chunk too large"))
            }
            GuestMsg::Error { code, message, .. } if code.len() > 256 || message.len() > 4096 => {
                Err(WireError::Invalid("error text too long"))
            }
            GuestMsg::FsReply { reply, .. } => reply.validate(),
            GuestMsg::Configured { error: Some(e), .. } if e.len() > 4096 => {
                Err(WireError::Invalid("configure error text too long"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, FrameDecoder, MAX_FRAME};

    fn exec() -> Exec {
        Exec {
            argv: vec!["/bin/echo".into(), "hi".into()],
            env: vec!["A=1".into()],
            cwd: Some("/tmp".into()),
            stdin: true,
            pty: Some((24, 80)),
            stdout_window: 4096,
            stderr_window: 4096,
            stdin_to_file: None,
            stdout_from_file: None,
        }
    }

    fn configure() -> Configure {
        Configure {
            fs: Some(FsPlan {
                fuse_mount: "/data".into(),
                binds: vec!["/workspace".into(), "/a b,c".into(), "/etc/gondolin".into()],
            }),
            net: true,
            time_unix_ns: 1_700_000_000_123_456_789,
            seed: vec![7; 32],
            quiesce: false,
        }
    }

    #[test]
    fn configure_bounds() {
        assert!(configure().validate().is_ok());
        let no_fs = Configure {
            fs: None,
            ..configure()
        };
        assert!(HostMsg::Configure(no_fs).validate().is_ok());
        let with = |f: &dyn Fn(&mut Configure)| {
            let mut c = configure();
            f(&mut c);
            HostMsg::Configure(c).validate()
        };
        assert!(with(&|c| c.seed = vec![0; MIN_SEED - 1]).is_err());
        assert!(with(&|c| c.seed = vec![0; MAX_SEED + 1]).is_err());
        assert!(with(&|c| c.seed = vec![0; MAX_SEED]).is_ok());
        let bind = |p: String| {
            with(&move |c: &mut Configure| c.fs.as_mut().unwrap().binds.push(p.clone()))
        };
        assert!(bind("relative".into()).is_err());
        assert!(bind("/x/../etc".into()).is_err());
        assert!(bind("/a\0b".into()).is_err());
        assert!(bind("/".into()).is_err());
        assert!(bind("//".into()).is_err());
        assert!(bind(format!("/{}", "a".repeat(MAX_PATH))).is_err());
        assert!(bind(format!("/{}", "a".repeat(MAX_PATH - 1))).is_ok());
        assert!(with(&|c| c.fs.as_mut().unwrap().fuse_mount = "data".into()).is_err());
        assert!(with(&|c| c.fs.as_mut().unwrap().binds = vec!["/b".into(); MAX_BINDS]).is_ok());
        assert!(
            with(&|c| c.fs.as_mut().unwrap().binds = vec!["/b".into(); MAX_BINDS + 1]).is_err()
        );
        let long = GuestMsg::Configured {
            version: PROTOCOL_VERSION,
            error: Some("x".repeat(4097)),
        };
        assert!(long.validate().is_err());
    }

    #[test]
    fn round_trips_every_message() {
        let host = vec![
            HostMsg::Exec {
                id: 1,
                exec: exec(),
            },
            HostMsg::Stdin {
                id: 2,
                data: vec![0, 1, 255],
                eof: true,
            },
            HostMsg::Window {
                id: 3,
                stdout: 10,
                stderr: 20,
            },
            HostMsg::Resize {
                id: 4,
                rows: 50,
                cols: 132,
            },
            HostMsg::Kill { id: 5, signal: 9 },
            HostMsg::Ping { seq: 7 },
            HostMsg::Configure(configure()),
        ];
        let guest = vec![
            GuestMsg::Ready {
                version: PROTOCOL_VERSION,
            },
            GuestMsg::Output {
                id: 1,
                stream: Stream::Stderr,
                data: b"x".to_vec(),
            },
            GuestMsg::Exit {
                id: 1,
                exit_code: 137,
                signal: Some(9),
            },
            GuestMsg::StdinWindow { id: 1, bytes: 99 },
            GuestMsg::Error {
                id: 0,
                code: "c".into(),
                message: "m".into(),
            },
            GuestMsg::Pong { seq: 7 },
            GuestMsg::Configured {
                version: PROTOCOL_VERSION,
                error: Some("sandboxfs did not mount".into()),
            },
        ];
        let mut dec = FrameDecoder::new();
        for m in &host {
            dec.push(&encode(m));
        }
        for m in &host {
            assert_eq!(dec.next_message::<HostMsg>().unwrap().as_ref(), Some(m));
        }
        for m in &guest {
            // Split every frame into single bytes to exercise partial reads.
            for b in encode(m) {
                dec.push(&[b]);
            }
            assert_eq!(dec.next_message::<GuestMsg>().unwrap().as_ref(), Some(m));
        }
        assert_eq!(dec.next_message::<GuestMsg>().unwrap(), None);
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut dec = FrameDecoder::new();
        dec.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(matches!(dec.next_frame(), Err(WireError::FrameTooLarge(_))));
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert!(dec.next_message::<HostMsg>().is_err());
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [
            &[][..],
            &[0xff],
            &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f],
            &[9, 9, 9],
        ] {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            let mut dec = FrameDecoder::new();
            dec.push(&frame);
            assert!(dec.next_message::<HostMsg>().is_err(), "{body:?}");
        }
        // A claimed vector length far beyond the frame must not allocate it.
        let mut body = vec![0u8]; // HostMsg::Exec
        body.push(1); // id
        body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // argv len ~4G
        assert!(crate::decode::<HostMsg>(&body).is_err());
    }

    #[test]
    fn validation_bounds_requests() {
        let mut e = exec();
        assert!(e.validate().is_ok());
        e.argv.clear();
        assert!(e.validate().is_err());
        let mut e = exec();
        e.env.push("NOEQUALS".into());
        assert!(e.validate().is_err());
        let mut e = exec();
        e.argv.push("a\0b".into());
        assert!(e.validate().is_err());
        let mut e = exec();
        e.cwd = Some("relative".into());
        assert!(e.validate().is_err());
        let m = HostMsg::Stdin {
            id: 1,
            data: vec![0; crate::MAX_CHUNK + 1],
            eof: false,
        };
        assert!(m.validate().is_err());
        let m = GuestMsg::Output {
            id: 1,
            stream: Stream::Stdout,
            data: vec![0; crate::MAX_CHUNK + 1],
        };
        assert!(m.validate().is_err());
    }
}

#[cfg(test)]
mod noise {
    //! A cheap stand-in for the fuzzer that runs with `cargo test`:
    //! pseudo-random and mutated frames never panic the decoders.
    use crate::{encode, FrameDecoder, GuestMsg, HostMsg, Stream};

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let seed_frames = [
            encode(&GuestMsg::Output {
                id: 1,
                stream: Stream::Stdout,
                data: vec![1; 100],
            }),
            encode(&GuestMsg::Error {
                id: 1,
                code: "x".into(),
                message: "y".into(),
            }),
            encode(&HostMsg::Stdin {
                id: 1,
                data: vec![2; 10],
                eof: true,
            }),
        ];
        let mut s = 0x9e3779b97f4a7c15u64;
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 {
                seed_frames[round % 3].clone()
            } else {
                let n = (xorshift(&mut s) % 64) as usize;
                (0..n).map(|_| xorshift(&mut s) as u8).collect()
            };
            for _ in 0..(xorshift(&mut s) % 4) {
                if !bytes.is_empty() {
                    let i = (xorshift(&mut s) as usize) % bytes.len();
                    bytes[i] = xorshift(&mut s) as u8;
                }
            }
            let mut dec = FrameDecoder::new();
            dec.push(&bytes);
            while let Ok(Some(f)) = dec.next_frame() {
                let _ = crate::decode::<GuestMsg>(f).map(|m| m.validate());
                let _ = crate::decode::<HostMsg>(f).map(|m| m.validate());
            }
        }
    }
}

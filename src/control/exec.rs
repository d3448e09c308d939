//! One exec session as seen by the host.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gondolin_wire::{Exec, HostMsg, Stream, MAX_CHUNK};
use tokio::sync::{mpsc, Semaphore};

use super::client::Shared;
use super::{ControlError, Disconnect};
use crate::error::ErrorCode;

/// What the caller asks for; validated by [`gondolin_wire::Exec::validate`].
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub stdin: bool,
    pub pty: Option<(u16, u16)>,
    /// Output credit per stream; clamped to the protocol's bounds.
    pub window: u32,
    /// No process: stdin goes into this guest file (see the wire `Exec`).
    pub stdin_to_file: Option<String>,
    /// No process: this guest file is the stdout (see the wire `Exec`).
    pub stdout_from_file: Option<String>,
}

impl ExecRequest {
    pub(crate) fn to_wire(&self) -> Exec {
        let w = if self.window == 0 {
            gondolin_wire::DEFAULT_WINDOW
        } else {
            self.window
        };
        let w = w.clamp(gondolin_wire::MIN_WINDOW, gondolin_wire::MAX_WINDOW);
        Exec {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            stdin: self.stdin || self.pty.is_some(),
            pty: self.pty,
            stdout_window: w,
            stderr_window: w,
            stdin_to_file: self.stdin_to_file.clone(),
            stdout_from_file: self.stdout_from_file.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Output {
        stream: Stream,
        data: Vec<u8>,
    },
    Exit {
        exit_code: i32,
        signal: Option<i32>,
    },
    /// The exec failed without a result (guest error or lost connection).
    Failed {
        code: ErrorCode,
        message: String,
    },
}

impl ExecEvent {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, ExecEvent::Output { .. })
    }
}

/// The caller's handle: an event stream plus the controls. Dropping it
/// before the exec finished kills the guest process: nobody is left to read
/// its output.
pub struct ExecHandle {
    pub(crate) ctl: ExecControl,
    pub(crate) events: mpsc::UnboundedReceiver<ExecEvent>,
}

/// The cloneable half of an exec: stdin, resize, kill. Usable while another
/// task waits in [`ExecHandle::next_batch`].
#[derive(Clone)]
pub struct ExecControl {
    pub(crate) id: u32,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stdin: Option<Arc<Semaphore>>,
    pub(crate) done: Arc<AtomicBool>,
}

impl std::fmt::Debug for ExecHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecHandle")
            .field("id", &self.ctl.id)
            .finish()
    }
}

impl std::fmt::Debug for ExecControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecControl").field("id", &self.id).finish()
    }
}

impl ExecHandle {
    pub fn id(&self) -> u32 {
        self.ctl.id
    }

    pub fn control(&self) -> ExecControl {
        self.ctl.clone()
    }

    /// Wait for the next events and take everything queued up to about
    /// `max_bytes` of output. Credit for the returned output goes back to
    /// the guest now. `None` once a terminal event was returned.
    pub async fn next_batch(&mut self, max_bytes: usize) -> Option<Vec<ExecEvent>> {
        if self.ctl.done.load(Ordering::Acquire) {
            return None;
        }
        let first = match self.events.recv().await {
            Some(ev) => ev,
            None => {
                // The router dropped us without a terminal event: only
                // possible when the client itself is gone.
                self.ctl.done.store(true, Ordering::Release);
                return Some(vec![ExecEvent::Failed {
                    code: ErrorCode::ConnectionClosed,
                    message: "the connection to the guest closed".into(),
                }]);
            }
        };
        let mut batch = vec![first];
        let mut bytes = 0usize;
        let mut credit = [0u32; 2];
        let mut terminal = false;
        loop {
            let last = batch.last().unwrap();
            if let ExecEvent::Output { stream, data } = last {
                bytes += data.len();
                credit[*stream as usize] += data.len() as u32;
            }
            if last.is_terminal() {
                terminal = true;
                break;
            }
            if bytes >= max_bytes {
                break;
            }
            match self.events.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        if terminal {
            self.ctl.done.store(true, Ordering::Release);
        } else if credit[0] > 0 || credit[1] > 0 {
            self.ctl.shared.grant(self.ctl.id, credit[0], credit[1]);
        }
        Some(batch)
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ControlError> {
        self.ctl.write_stdin(data).await
    }

    pub fn close_stdin(&self) -> Result<(), ControlError> {
        self.ctl.close_stdin()
    }

    pub fn kill(&self, signal: i32) -> Result<(), ControlError> {
        self.ctl.kill(signal)
    }
}

impl ExecControl {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Send stdin bytes, waiting for the guest's stdin credit.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ControlError> {
        let sem = self.stdin.as_ref().ok_or(ControlError::StdinDisabled)?;
        for chunk in data.chunks(MAX_CHUNK.min(64 * 1024)) {
            let permit = sem
                .acquire_many(chunk.len() as u32)
                .await
                .map_err(|_| self.closed_error())?;
            permit.forget();
            self.shared.send(&HostMsg::Stdin {
                id: self.id,
                data: chunk.to_vec(),
                eof: false,
            })?;
        }
        Ok(())
    }

    /// Close the process's stdin (with a pty: send EOT).
    pub fn close_stdin(&self) -> Result<(), ControlError> {
        if self.stdin.is_none() {
            return Err(ControlError::StdinDisabled);
        }
        self.shared.send(&HostMsg::Stdin {
            id: self.id,
            data: Vec::new(),
            eof: true,
        })
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ControlError> {
        self.shared.send(&HostMsg::Resize {
            id: self.id,
            rows: rows.max(1),
            cols: cols.max(1),
        })
    }

    /// Signal the process group of the exec.
    pub fn kill(&self, signal: i32) -> Result<(), ControlError> {
        if self.done.load(Ordering::Acquire) {
            return Err(ControlError::Exited);
        }
        self.shared.send(&HostMsg::Kill {
            id: self.id,
            signal,
        })
    }

    fn closed_error(&self) -> ControlError {
        match self.shared.disconnect() {
            Some(d) => ControlError::Disconnected(d),
            None => ControlError::Exited,
        }
    }
}

impl Drop for ExecHandle {
    fn drop(&mut self) {
        if !self.ctl.done.load(Ordering::Acquire) {
            let _ = self.ctl.shared.send(&HostMsg::Kill {
                id: self.ctl.id,
                signal: 9,
            });
        }
        self.ctl.shared.forget(self.ctl.id);
    }
}

pub(crate) fn disconnected(d: &Disconnect) -> ExecEvent {
    ExecEvent::Failed {
        code: d.code,
        message: d.message.clone(),
    }
}

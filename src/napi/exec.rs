//! `NativeExec`: one running process. JS pulls events with `next()`; credit
//! returns to the guest only when JS takes output, so a JS consumer that
//! stops pulling stops the guest process.

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use tokio::sync::Mutex;

use super::error::IntoJs;
use gondolin::control::{ExecControl, ExecEvent, ExecHandle, Stream};

/// Output handed to JS per `next()` call, at most.
const BATCH_BYTES: usize = 1024 * 1024;

#[napi(object)]
pub struct NativeExecEvent {
    /// "stdout" | "stderr" | "exit" | "error"
    pub kind: String,
    pub data: Option<Buffer>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub code: Option<String>,
    pub message: Option<String>,
}

impl From<ExecEvent> for NativeExecEvent {
    fn from(ev: ExecEvent) -> Self {
        let base = NativeExecEvent {
            kind: String::new(),
            data: None,
            exit_code: None,
            signal: None,
            code: None,
            message: None,
        };
        match ev {
            ExecEvent::Output { stream, data } => NativeExecEvent {
                kind: match stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                }
                .into(),
                data: Some(data.into()),
                ..base
            },
            ExecEvent::Exit { exit_code, signal } => NativeExecEvent {
                kind: "exit".into(),
                exit_code: Some(exit_code),
                signal,
                ..base
            },
            ExecEvent::Failed { code, message } => NativeExecEvent {
                kind: "error".into(),
                code: Some(code),
                message: Some(message),
                ..base
            },
        }
    }
}

#[napi]
pub struct NativeExec {
    ctl: ExecControl,
    events: Arc<Mutex<ExecHandle>>,
}

impl NativeExec {
    pub fn new(handle: ExecHandle) -> Self {
        NativeExec {
            ctl: handle.control(),
            events: Arc::new(Mutex::new(handle)),
        }
    }
}

#[napi]
impl NativeExec {
    #[napi(getter)]
    pub fn id(&self) -> u32 {
        self.ctl.id()
    }

    /// Next batch of events; `null` after the terminal event was delivered.
    #[napi]
    pub async fn next(&self) -> napi::Result<Option<Vec<NativeExecEvent>>> {
        let events = self.events.clone();
        let mut h = events.lock().await;
        Ok(h.next_batch(BATCH_BYTES)
            .await
            .map(|b| b.into_iter().map(Into::into).collect()))
    }

    /// Write stdin; resolves when the guest had credit for all of it.
    #[napi]
    pub async fn write(&self, data: Buffer) -> napi::Result<()> {
        let bytes: Vec<u8> = data.to_vec();
        self.ctl.write_stdin(&bytes).await.js()
    }

    #[napi]
    pub fn end(&self) -> napi::Result<()> {
        self.ctl.close_stdin().js()
    }

    #[napi]
    pub fn resize(&self, rows: u32, cols: u32) -> napi::Result<()> {
        let c = |v: u32| v.clamp(1, u16::MAX as u32) as u16;
        self.ctl.resize(c(rows), c(cols)).js()
    }

    #[napi]
    pub fn kill(&self, signal: i32) -> napi::Result<()> {
        self.ctl.kill(signal).js()
    }
}

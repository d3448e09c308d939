//! `NativeExec`: one running process. JS pulls events with `next()`; credit
//! returns to the guest only when JS takes output, so a JS consumer that
//! stops pulling stops the guest process.

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use tokio::sync::Mutex;

use super::error::{spawn_coded, IntoJs, JsFailure};
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
    /// With "error": a `GondolinErrorCode`.
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
                code: Some(code.as_str().to_string()),
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
    #[napi(ts_return_type = "Promise<void>")]
    pub fn write<'e>(&self, env: &'e Env, data: Buffer) -> napi::Result<PromiseRaw<'e, ()>> {
        let bytes: Vec<u8> = data.to_vec();
        let ctl = self.ctl.clone();
        spawn_coded(env, async move {
            ctl.write_stdin(&bytes)
                .await
                .map_err(|e| JsFailure::from_core(&e))
        })
    }

    #[napi]
    pub fn end(&self, env: &Env) -> napi::Result<()> {
        self.ctl.close_stdin().js(env)
    }

    #[napi]
    pub fn resize(&self, env: &Env, rows: u32, cols: u32) -> napi::Result<()> {
        let c = |v: u32| v.clamp(1, u16::MAX as u32) as u16;
        self.ctl.resize(c(rows), c(cols)).js(env)
    }

    #[napi]
    pub fn kill(&self, env: &Env, signal: i32) -> napi::Result<()> {
        self.ctl.kill(signal).js(env)
    }
}

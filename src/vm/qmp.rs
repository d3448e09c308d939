//! A minimal QMP client: QEMU's JSON monitor on the VM's `qmp.sock`.
//!
//! One command at a time, each answered within a bound; asynchronous events
//! are skipped. Used by the slow-boot report (`bootdiag`) and by snapshots
//! (`migrate`): stop, migrate, query-migrate, cont, quit.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// A reply line longer than this is refused (QEMU's own replies are a few KB;
/// `info registers -a` is the largest we ask for).
const MAX_LINE: usize = 1 << 20;

pub struct Qmp {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    timeout: Duration,
}

impl Qmp {
    /// Connect, read the greeting and leave capabilities negotiation.
    /// QEMU creates the socket shortly after it starts: retry until `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> std::io::Result<Qmp> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (r, w) = stream.into_split();
        let mut q = Qmp {
            r: BufReader::new(r),
            w,
            timeout,
        };
        q.read_reply().await?; // greeting
        q.execute("qmp_capabilities", Value::Null).await?;
        Ok(q)
    }

    /// Run one command; `Ok(return value)` or an error naming QEMU's reason.
    pub async fn execute(&mut self, cmd: &str, args: Value) -> std::io::Result<Value> {
        let msg = if args.is_null() {
            json!({ "execute": cmd })
        } else {
            json!({ "execute": cmd, "arguments": args })
        };
        self.w.write_all(format!("{msg}\n").as_bytes()).await?;
        let reply = self.read_reply().await?;
        if let Some(e) = reply.get("error") {
            let desc = e
                .get("desc")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            return Err(std::io::Error::other(format!("QMP {cmd}: {desc}")));
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// An HMP command through QMP; its text output.
    pub async fn hmp(&mut self, line: &str) -> std::io::Result<String> {
        let v = self
            .execute("human-monitor-command", json!({ "command-line": line }))
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The next line that answers a command (events are skipped).
    async fn read_reply(&mut self) -> std::io::Result<Value> {
        tokio::time::timeout(self.timeout, async {
            loop {
                let mut line = Vec::new();
                let n = (&mut self.r)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut line)
                    .await?;
                if n == 0 {
                    return Err(std::io::Error::other("QMP closed"));
                }
                let v: Value = serde_json::from_slice(&line)
                    .map_err(|e| std::io::Error::other(format!("bad QMP reply: {e}")))?;
                if v.get("event").is_none() {
                    return Ok(v);
                }
            }
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "QMP did not answer"))?
    }
}

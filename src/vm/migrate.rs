//! Saving and loading a VM's state with QEMU's migration stream.
//!
//! The stream travels over a unix socket in the VM's temp dir, so the host
//! reads and writes every byte itself: it counts and hashes what it saves
//! and feeds exactly the recorded range back on resume (no shell, no
//! `exec:` URI, the same code under KVM/HVF and TCG).
//!
//! With `x-ignore-shared` (a boot template, whose RAM is a shared file
//! mapping), RAM stays in its file and the stream holds device state only
//! (a few hundred KB). Without it (a memory checkpoint) the stream carries
//! every RAM page too; pages of zeros cost a flag each.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::qmp::Qmp;

/// How long QEMU may take to connect to the stream socket, and to report
/// the end of a migration after the last byte.
const STREAM_WAIT: Duration = Duration::from_secs(30);

/// What a save wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub bytes: u64,
    /// Hex sha256 of the stream.
    pub sha256: String,
}

async fn set_ignore_shared(qmp: &mut Qmp, on: bool) -> std::io::Result<()> {
    qmp.execute(
        "migrate-set-capabilities",
        json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": on }] }),
    )
    .await
    .map(drop)
}

/// Stop the guest and write its state to `out`. The VM stays paused (the
/// caller quits QEMU or, for a template, keeps nothing of it).
pub async fn save<W: AsyncWrite + Unpin>(
    qmp: &mut Qmp,
    dir: &Path,
    out: &mut W,
    ignore_shared: bool,
) -> std::io::Result<Saved> {
    qmp.execute("stop", Value::Null).await?;
    set_ignore_shared(qmp, ignore_shared).await?;
    let sock = dir.join("migrate-out.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)?;
    qmp.execute(
        "migrate",
        json!({ "uri": format!("unix:{}", sock.display()) }),
    )
    .await?;
    let (mut stream, _) = tokio::time::timeout(STREAM_WAIT, listener.accept())
        .await
        .map_err(|_| timed_out("QEMU did not open the migration stream"))??;
    drop(listener);
    let _ = std::fs::remove_file(&sock);
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n]).await?;
        bytes += n as u64;
    }
    out.flush().await?;
    wait_completed(qmp).await?;
    Ok(Saved {
        bytes,
        sha256: hex(&hash.finalize()),
    })
}

/// Feed `len` bytes of `src` to a QEMU started with `-incoming defer`,
/// check them against `sha256`, and let the guest run.
pub async fn load<R: AsyncRead + Unpin>(
    qmp: &mut Qmp,
    dir: &Path,
    src: &mut R,
    len: u64,
    sha256: &str,
    ignore_shared: bool,
) -> std::io::Result<()> {
    set_ignore_shared(qmp, ignore_shared).await?;
    let sock = dir.join("migrate-in.sock");
    qmp.execute(
        "migrate-incoming",
        json!({ "uri": format!("unix:{}", sock.display()) }),
    )
    .await?;
    // QEMU listens once `migrate-incoming` returned.
    let mut stream = UnixStream::connect(&sock).await?;
    let _ = std::fs::remove_file(&sock);
    let mut hash = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = src.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the saved state is truncated ({left} of {len} bytes missing)"),
            ));
        }
        hash.update(&buf[..n]);
        // QEMU stops reading (and closes) when it rejects the stream: its
        // reason comes from query-migrate below, not from this write.
        if stream.write_all(&buf[..n]).await.is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = stream.shutdown().await;
    if left == 0 && hex(&hash.finalize()) != sha256 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the saved state does not match its checksum (damaged file)",
        ));
    }
    wait_completed(qmp).await?;
    qmp.execute("cont", Value::Null).await?;
    Ok(())
}

/// Poll `query-migrate` until the migration completed or failed.
async fn wait_completed(qmp: &mut Qmp) -> std::io::Result<()> {
    let deadline = tokio::time::Instant::now() + STREAM_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        let v = qmp.execute("query-migrate", Value::Null).await?;
        match v.get("status").and_then(Value::as_str).unwrap_or("") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let why = v
                    .get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                return Err(std::io::Error::other(format!(
                    "QEMU migration failed: {why}"
                )));
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(timed_out("the migration did not complete"));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} within {}s", STREAM_WAIT.as_secs()),
    )
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

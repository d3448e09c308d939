//! The bound on every fs request: whatever a provider does (a JS provider
//! whose promise never settles, a host call stuck on a dead network
//! filesystem), the guest gets an answer. A request still running when its
//! deadline passes is answered EIO and logged (through `log_limited!`: a
//! provider that hangs every call must not flood the log).

use std::future::Future;
use std::time::Duration;

use gondolin_wire::fs::errno;

use super::{VfsError, VfsResult};

/// How long one request may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Overrides [`DEFAULT_TIMEOUT`] (milliseconds, at least 1).
pub const TIMEOUT_ENV: &str = "GONDOLIN_VFS_TIMEOUT_MS";

/// The request timeout: `GONDOLIN_VFS_TIMEOUT_MS` if set to a positive
/// number, else [`DEFAULT_TIMEOUT`].
pub fn configured_timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Run `fut`; past `limit`, drop it and fail with EIO.
pub async fn bounded<T>(
    limit: Duration,
    what: impl FnOnce() -> String,
    fut: impl Future<Output = VfsResult<T>>,
) -> VfsResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => {
            let what = what();
            crate::log_limited!(
                warn,
                target: "gondolin::vfs",
                "fs request {what} took longer than {} ms; answered EIO (is the provider hung?)",
                limit.as_millis()
            );
            Err(VfsError::with_message(
                errno::EIO,
                format!("{what} timed out after {} ms", limit.as_millis()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_call_that_never_finishes_is_answered_eio_at_the_deadline() {
        let start = Instant::now();
        let r: VfsResult<()> = bounded(
            Duration::from_millis(50),
            || "read".into(),
            std::future::pending(),
        )
        .await;
        assert_eq!(r.unwrap_err().errno, errno::EIO);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(50) && took < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_call_within_the_deadline_keeps_its_result() {
        let r = bounded(Duration::from_secs(5), || "stat".into(), async {
            Err::<(), _>(VfsError::noent())
        })
        .await;
        assert_eq!(r.unwrap_err().errno, errno::ENOENT);
    }
}

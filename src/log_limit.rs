//! Rate-limited log lines for what the guest can trigger (a bad SNI, a
//! refused flow, a malformed frame). The guest is adversarial: if each of
//! its mistakes wrote a line, it could flood the host's log and bury the
//! lines that matter. Modelled on firecracker's rate-limited logger
//! (`src/logger/src/logger/`): each call site has its own budget of
//! [`BURST`] lines per [`PERIOD`]; lines over budget are counted, not
//! written, and the next line written carries `suppressed = <n>`, the
//! number dropped since the previous one. [`suppressed_total`] counts
//! every dropped line in the process.
//!
//! Use [`log_limited!`](crate::log_limited) instead of `tracing::warn!` (or
//! any level) for every line the guest can cause.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one call site may write per [`PERIOD`].
pub const BURST: u32 = 10;
/// The window [`BURST`] applies to.
pub const PERIOD: Duration = Duration::from_secs(5);

static SUPPRESSED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Lines dropped by every limiter in this process since it started.
pub fn suppressed_total() -> u64 {
    SUPPRESSED_TOTAL.load(Ordering::Relaxed)
}

/// The budget of one call site; [`log_limited!`](crate::log_limited) puts
/// one in a `static` beside each line.
#[derive(Debug)]
pub struct LogLimiter {
    window: Mutex<Window>,
    suppressed: AtomicU64,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    written: u32,
    /// Dropped since the last line written.
    pending: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    pub const fn new() -> Self {
        LogLimiter {
            window: Mutex::new(Window {
                start: None,
                written: 0,
                pending: 0,
            }),
            suppressed: AtomicU64::new(0),
        }
    }

    /// May a line be written now? `Some(n)`: yes, and `n` lines were
    /// dropped since the last one written; `None`: no (it is counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// Lines this call site has dropped since the process started.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= PERIOD);
        if expired {
            w.start = Some(now);
            w.written = 0;
        }
        if w.written < BURST {
            w.written += 1;
            return Some(std::mem::take(&mut w.pending));
        }
        w.pending += 1;
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        SUPPRESSED_TOTAL.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// `tracing::<level>!` through a per-call-site [`LogLimiter`]:
/// `log_limited!(warn, target: "gondolin::net", field = x, "message {y}")`.
/// A line written after some were dropped carries `suppressed = <n>`.
#[macro_export]
macro_rules! log_limited {
    ($level:ident, target: $target:expr, $($rest:tt)+) => {{
        static LIMITER: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new();
        if let Some(suppressed) = LIMITER.admit() {
            if suppressed > 0 {
                ::tracing::$level!(target: $target, suppressed, $($rest)+);
            } else {
                ::tracing::$level!(target: $target, $($rest)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_not_written() {
        let l = LogLimiter::new();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(l.admit_at(t0), Some(0));
        }
        let before = suppressed_total();
        for _ in 0..25 {
            assert_eq!(l.admit_at(t0 + Duration::from_millis(10)), None);
        }
        assert_eq!(l.suppressed(), 25);
        assert!(suppressed_total() >= before + 25);
    }

    #[test]
    fn the_next_window_reports_what_was_dropped_once() {
        let l = LogLimiter::new();
        let t0 = Instant::now();
        for _ in 0..BURST + 7 {
            l.admit_at(t0);
        }
        let later = t0 + PERIOD;
        assert_eq!(
            l.admit_at(later),
            Some(7),
            "the first line says how many were dropped"
        );
        assert_eq!(l.admit_at(later), Some(0), "and only the first");
        assert_eq!(l.suppressed(), 7, "the running count stays readable");
    }

    #[test]
    fn call_sites_have_their_own_budget() {
        fn site_a() -> u64 {
            static L: LogLimiter = LogLimiter::new();
            for _ in 0..BURST * 2 {
                L.admit();
            }
            L.suppressed()
        }
        fn site_b() -> Option<u64> {
            static L: LogLimiter = LogLimiter::new();
            L.admit()
        }
        assert_eq!(site_a(), u64::from(BURST));
        assert_eq!(site_b(), Some(0), "site a's flood does not silence site b");
    }

    #[test]
    fn the_macro_expands_for_any_level_and_fields() {
        for i in 0..BURST * 3 {
            crate::log_limited!(warn, target: "gondolin::test", i, "line {i}");
            crate::log_limited!(debug, target: "gondolin::test", "plain");
        }
    }
}

//! A bounded tail of what QEMU and the guest console printed, kept for
//! error messages (the guest controls the console: never keep it all).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

const MAX_LINES: usize = 40;
const MAX_LINE: usize = 300;

#[derive(Debug, Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    pub fn push(&self, line: &str) {
        let clean: String = line
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .take(MAX_LINE)
            .collect();
        if clean.trim().is_empty() {
            return;
        }
        let mut q = self.0.lock().unwrap();
        if q.len() == MAX_LINES {
            q.pop_front();
        }
        q.push_back(clean);
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().cloned().collect()
    }

    /// The last line matching `pred`, if any.
    pub fn last_where(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| pred(l))
            .cloned()
    }

    /// Read `r` until EOF, splitting lines into the tail; echo each line
    /// with `prefix` to stderr when `echo` is set. Memory stays bounded
    /// even if the guest never prints a newline.
    pub async fn pump<R: AsyncRead + Unpin>(self, mut r: R, echo: Option<&'static str>) {
        let mut chunk = vec![0u8; 8192];
        let mut line: Vec<u8> = Vec::new();
        let emit = |line: &mut Vec<u8>| {
            let s = String::from_utf8_lossy(line);
            let s = s.trim_end_matches(['\r', '\n']);
            if let Some(prefix) = echo {
                eprintln!("[{prefix}] {s}");
            }
            self.push(s);
            line.clear();
        };
        loop {
            let n = match r.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for part in chunk[..n].split_inclusive(|b| *b == b'\n') {
                if line.len() < MAX_LINE * 4 {
                    line.extend_from_slice(part);
                }
                if part.ends_with(b"\n") {
                    emit(&mut line);
                }
            }
        }
        if !line.is_empty() {
            emit(&mut line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_sanitized_tail() {
        let t = Tail::default();
        for i in 0..100 {
            t.push(&format!("line {i}\x1b[31m"));
        }
        let l = t.lines();
        assert_eq!(l.len(), MAX_LINES);
        assert_eq!(l.last().unwrap(), "line 99[31m");
        t.push(&"x".repeat(10_000));
        assert_eq!(t.lines().last().unwrap().len(), MAX_LINE);
    }
}

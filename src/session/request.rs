//! From a checked `exec`/`kill` message to what the control client takes,
//! with the checks `vm.exec()` / `ExecProcess.kill()` make in JS (same
//! texts): env entries merged over the VM's env, an absolute cwd, a known
//! signal.

use serde_json::Value;

use super::protocol::{ExecMsg, SignalArg};
use crate::control::ExecRequest;

/// Terminal size of a pty exec that does not give one (as `vm.exec`).
const DEFAULT_PTY: (u16, u16) = (24, 80);

/// Build the exec request: `base_env` (the VM's `env` option, `KEY=VALUE`)
/// with the message's env merged over it, later keys winning.
pub fn exec_request(m: &ExecMsg, base_env: &[String]) -> Result<ExecRequest, String> {
    let env = merge_env(base_env, m.env.as_ref())?;
    if let Some(cwd) = &m.cwd {
        if !cwd.starts_with('/') {
            let shown = serde_json::to_string(cwd).unwrap_or_default();
            return Err(format!(
                "exec options.cwd must be an absolute path (got {shown})"
            ));
        }
    }
    let size = match (m.rows, m.cols) {
        (Some(r), Some(c)) => (r, c),
        _ => DEFAULT_PTY,
    };
    let pty = m.pty.then_some(size);
    Ok(ExecRequest {
        argv: m.argv.clone(),
        env,
        cwd: m.cwd.clone(),
        stdin: m.stdin || m.pty,
        pty,
        // 0 = the protocol's default window (256 KiB, as `vm.exec`).
        window: 0,
        stdin_to_file: None,
        stdout_from_file: None,
    })
}

const ENV_NAME: &str = "exec options.env";

fn merge_env(base: &[String], extra: Option<&Value>) -> Result<Vec<String>, String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| -> Result<(), String> {
        if k.is_empty() {
            return Err(format!("{ENV_NAME} has an entry with an empty name"));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(format!("{ENV_NAME}.{k} contains a NUL byte"));
        }
        match merged.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => merged.push((k, v)),
        }
        Ok(())
    };
    for e in base {
        let (k, v) = split_entry(e);
        set(k, v)?;
    }
    match extra {
        None => {}
        Some(Value::Array(items)) => {
            // Types first, as `envToEntries` converts the whole list first.
            let entries: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let entries = entries.ok_or_else(|| format!("{ENV_NAME} entries must be strings"))?;
            for e in entries {
                let (k, v) = split_entry(e);
                set(k, v)?;
            }
        }
        Some(Value::Object(map)) => {
            if let Some((k, _)) = map.iter().find(|(_, v)| !v.is_string()) {
                return Err(format!("{ENV_NAME}.{k} must be a string"));
            }
            for (k, v) in map {
                set(k.clone(), v.as_str().unwrap_or_default().to_string())?;
            }
        }
        Some(_) => {
            return Err(format!(
                "{ENV_NAME} must be an array of \"KEY=VALUE\" strings or an object"
            ))
        }
    }
    Ok(merged
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect())
}

/// `KEY=VALUE` at the first `=`; a bare `KEY` means an empty value.
fn split_entry(e: &str) -> (String, String) {
    match e.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (e.to_string(), String::new()),
    }
}

/// The signal number to send, as `ExecProcess.kill()` resolves it: a host
/// signal name (`os.constants.signals`) or an integer in 1..=64.
pub fn signal_number(s: &SignalArg) -> Result<i32, String> {
    let refuse = |shown: &dyn std::fmt::Display| format!("invalid signal: {shown}");
    match s {
        SignalArg::Name(name) => signal_by_name(name).ok_or_else(|| refuse(name)),
        SignalArg::Number(n) => match n.as_f64() {
            Some(f) if (1.0..=64.0).contains(&f) && f.fract() == 0.0 => Ok(f as i32),
            _ => Err(refuse(n)),
        },
    }
}

fn signal_by_name(name: &str) -> Option<i32> {
    // Names Node lists that nix spells differently.
    let name = match name {
        "SIGIOT" => "SIGABRT",
        "SIGPOLL" => "SIGIO",
        n => n,
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

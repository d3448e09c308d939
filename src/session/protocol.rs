//! The attach protocol's messages (docs/attach-protocol.md): parsing and
//! validating what a client sends, and the server's replies. Messages and
//! their order of checks are the JS server's, so clients see the same
//! codes and texts.

use serde::Serialize;
use serde_json::{Map, Value};

/// Stable error codes of the protocol (plus an exec's own failure code,
/// which is passed through as a string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Bad JSON, a field of the wrong type, or an exec the VM refuses.
    InvalidRequest,
    /// `exec` with an id that is still running on this connection.
    DuplicateId,
    /// `stdin`/`resize`/`kill` for an id with no running exec.
    UnknownId,
    /// A well-formed message of a type the server does not know.
    UnknownType,
    /// `stdin` for an exec started without `stdin` (or `pty`).
    StdinDisabled,
    /// A line over [`super::codec::MAX_LINE`]; the server then hangs up.
    PayloadTooLarge,
    /// `snapshot` on a server whose VM owner takes no snapshots.
    Unsupported,
    /// `snapshot` that the VM owner could not carry out.
    SnapshotFailed,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::DuplicateId => "duplicate_id",
            Code::UnknownId => "unknown_id",
            Code::UnknownType => "unknown_type",
            Code::StdinDisabled => "stdin_disabled",
            Code::PayloadTooLarge => "payload_too_large",
            Code::Unsupported => "unsupported",
            Code::SnapshotFailed => "snapshot_failed",
        }
    }
}

/// A refused message: the reply is an `error` with this id, code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub id: Option<u32>,
    pub code: Code,
    pub message: String,
}

impl Refusal {
    pub fn new(id: Option<u32>, code: Code, message: impl Into<String>) -> Self {
        Refusal {
            id,
            code,
            message: message.into(),
        }
    }
}

/// `exec`'s fields, type-checked; env/cwd are checked against the VM's
/// rules when the exec starts (`super::exec_request`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecMsg {
    pub argv: Vec<String>,
    /// As sent: `["K=V", ...]` or `{K: V}` (entries checked at start).
    pub env: Option<Value>,
    pub cwd: Option<String>,
    pub stdin: bool,
    pub pty: bool,
    pub rows: Option<u16>,
    pub cols: Option<u16>,
}

/// A kill's signal as sent: a name (`"SIGTERM"`) or an integer.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalArg {
    Name(String),
    Number(serde_json::Number),
}

/// One validated client message.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMsg {
    Exec {
        id: u32,
        exec: ExecMsg,
    },
    Stdin {
        id: u32,
        data: Vec<u8>,
        eof: bool,
    },
    Resize {
        id: u32,
        rows: u16,
        cols: u16,
    },
    Kill {
        id: u32,
        signal: SignalArg,
    },
    /// Checkpoint the VM into `path` (upstream's session IPC message;
    /// `memory` is our extension), after which the VM is gone.
    Snapshot {
        id: u32,
        path: String,
        memory: bool,
    },
}

/// Parse one line. Blank lines are skipped (`Ok(None)`).
pub fn parse_line(line: &[u8]) -> Result<Option<ClientMsg>, Refusal> {
    let text = String::from_utf8_lossy(line);
    if text.chars().all(|c| c.is_whitespace() || c == '\u{feff}') {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(&text)
        .map_err(|_| Refusal::new(None, Code::InvalidRequest, "invalid JSON message"))?;
    parse_message(&value).map(Some)
}

fn parse_message(v: &Value) -> Result<ClientMsg, Refusal> {
    let invalid = |id, msg: &str| Refusal::new(id, Code::InvalidRequest, msg);
    let m = v
        .as_object()
        .ok_or_else(|| invalid(None, "message must be a JSON object"))?;
    let ty = m
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(uint32(m.get("id")), "message needs a string type"))?;
    let id =
        uint32(m.get("id")).ok_or_else(|| invalid(None, &format!("{ty} requires a uint32 id")))?;
    let checked = match ty {
        "exec" => parse_exec(m).map(|exec| ClientMsg::Exec { id, exec }),
        "stdin" => parse_stdin(m, id),
        "resize" => match (small_positive(m.get("rows")), small_positive(m.get("cols"))) {
            (Some(rows), Some(cols)) => Ok(ClientMsg::Resize { id, rows, cols }),
            _ => Err("resize requires positive integer rows and cols"),
        },
        "kill" => parse_kill(m).map(|signal| ClientMsg::Kill { id, signal }),
        "snapshot" => parse_snapshot(m, id),
        _ => {
            return Err(Refusal::new(
                Some(id),
                Code::UnknownType,
                "unsupported message type",
            ))
        }
    };
    checked.map_err(|msg| invalid(Some(id), msg))
}

fn parse_exec(m: &Map<String, Value>) -> Result<ExecMsg, &'static str> {
    let argv = string_array(m.get("argv"))
        .filter(|a| !a.is_empty())
        .ok_or("exec requires argv: a non-empty array of strings")?;
    let env = m.get("env").cloned();
    if matches!(&env, Some(e) if !e.is_array() && !e.is_object()) {
        return Err("exec env must be an array of KEY=VALUE strings or an object");
    }
    let cwd = match m.get("cwd") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("exec cwd must be a string"),
    };
    let stdin = optional_bool(m.get("stdin")).ok_or("exec stdin must be a boolean")?;
    let pty = optional_bool(m.get("pty")).ok_or("exec pty must be a boolean")?;
    let dim = |k| match m.get(k) {
        None => Ok(None),
        v => small_positive(v).map(Some).ok_or(()),
    };
    let (Ok(rows), Ok(cols)) = (dim("rows"), dim("cols")) else {
        return Err("exec rows/cols must be positive integers");
    };
    Ok(ExecMsg {
        argv,
        env,
        cwd,
        stdin: stdin.unwrap_or(false),
        pty: pty.unwrap_or(false),
        rows,
        cols,
    })
}

fn parse_stdin(m: &Map<String, Value>, id: u32) -> Result<ClientMsg, &'static str> {
    let data = match m.get("data") {
        None => Vec::new(),
        Some(Value::String(s)) => decode_base64_lenient(s),
        Some(_) => return Err("stdin data must be a base64 string"),
    };
    let eof = optional_bool(m.get("eof")).ok_or("stdin eof must be a boolean")?;
    Ok(ClientMsg::Stdin {
        id,
        data,
        eof: eof.unwrap_or(false),
    })
}

fn parse_snapshot(m: &Map<String, Value>, id: u32) -> Result<ClientMsg, &'static str> {
    let path = match m.get("path") {
        Some(Value::String(p)) if !p.trim().is_empty() => p.clone(),
        _ => return Err("snapshot requires a non-empty output path"),
    };
    let memory = optional_bool(m.get("memory")).ok_or("snapshot memory must be a boolean")?;
    Ok(ClientMsg::Snapshot {
        id,
        path,
        memory: memory.unwrap_or(false),
    })
}

fn parse_kill(m: &Map<String, Value>) -> Result<SignalArg, &'static str> {
    match m.get("signal") {
        None => Ok(SignalArg::Name("SIGTERM".into())),
        Some(Value::String(s)) => Ok(SignalArg::Name(s.clone())),
        Some(Value::Number(n)) if integral(n).is_some() => Ok(SignalArg::Number(n.clone())),
        Some(_) => Err("kill signal must be a name or a number"),
    }
}

/// A JSON number that is an integer (`1`, `1.0`, `1e3`, as JS's
/// `Number.isInteger`), as f64.
fn integral(n: &serde_json::Number) -> Option<f64> {
    let f = n.as_f64()?;
    (f.is_finite() && f.fract() == 0.0).then_some(f)
}

fn uint32(v: Option<&Value>) -> Option<u32> {
    let f = integral(v?.as_number()?)?;
    (0.0..=u32::MAX as f64).contains(&f).then_some(f as u32)
}

/// An integer in 1..=65535 (terminal rows/cols).
fn small_positive(v: Option<&Value>) -> Option<u16> {
    let f = integral(v?.as_number()?)?;
    (1.0..=u16::MAX as f64).contains(&f).then_some(f as u16)
}

fn string_array(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array()?
        .iter()
        .map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// `Some(None)` when absent, `Some(Some(b))` for a boolean, `None` otherwise.
fn optional_bool(v: Option<&Value>) -> Option<Option<bool>> {
    match v {
        None => Some(None),
        Some(Value::Bool(b)) => Some(Some(*b)),
        Some(_) => None,
    }
}

/// Base64 as Node's `Buffer.from(s, "base64")` reads it: both alphabets,
/// characters outside them skipped, stops at padding, a dangling final
/// character ignored. Never fails (the JS server never refused data).
pub fn decode_base64_lenient(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// What the server sends; field order is the JS server's.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMsg<'a> {
    #[serde(rename_all = "camelCase")]
    Status { state: &'static str, vm_id: &'a str },
    Output {
        id: u32,
        stream: &'static str,
        /// Base64 (standard alphabet, padded).
        data: String,
    },
    #[serde(rename_all = "camelCase")]
    Exit {
        id: u32,
        exit_code: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
        code: &'a str,
        message: &'a str,
    },
    /// The checkpoint was written; the VM is gone.
    #[serde(rename = "snapshot_response")]
    SnapshotResponse {
        id: u32,
        path: &'a str,
        name: &'a str,
    },
}

impl ServerMsg<'_> {
    /// The message as one line, `\n` included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("server messages always serialise");
        s.push('\n');
        s
    }
}

impl<'a> From<&'a Refusal> for ServerMsg<'a> {
    fn from(r: &'a Refusal) -> Self {
        ServerMsg::Error {
            id: r.id,
            code: r.code.as_str(),
            message: &r.message,
        }
    }
}

//! The checkpoint file: upstream's format, extended for memory snapshots.
//!
//! `<qcow2 overlay> [<migration stream>] <JSON> "GONDCPT1" <u64 BE JSON length>`
//! (upstream protocol.md §9). The qcow2 part's backing file is the image's
//! `rootfs.ext4`; QEMU reads a qcow2 by offsets, so the bytes after it do
//! not disturb a resume that uses the file as an overlay's backing.
//! A memory checkpoint (our extension) adds the guest's RAM and device
//! state as a QEMU migration stream between the disk and the JSON, located
//! by `memory.stateOffset`/`stateLength` and checked by `stateSha256`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Coded, ErrorCode};

pub const MAGIC: &[u8; 8] = b"GONDCPT1";
/// The trailer's last 16 bytes: magic + JSON length.
const FOOTER: u64 = 16;
/// A trailer's JSON is a few hundred bytes; anything past this is not ours.
const MAX_JSON: u64 = 1 << 20;
pub const VERSION: u32 = 1;

/// The trailer's JSON (upstream's `VmCheckpointData`, plus `memory`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointData {
    pub version: u32,
    pub name: String,
    pub created_at: String,
    pub disk_file: String,
    pub guest_asset_build_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_with_vmm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatible_vmm: Option<Vec<String>>,
    /// Our extension: where the saved guest state is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryState>,
    /// Fields other writers added: kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Where a memory checkpoint's migration stream is, and the machine it
/// must be loaded into (a migration stream only loads into the same
/// device set and RAM size).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryState {
    pub state_offset: u64,
    pub state_length: u64,
    pub state_sha256: String,
    pub machine: MachineShape,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MachineShape {
    /// MiB.
    pub memory_mib: u64,
    pub cpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// The QEMU `-accel` value it ran under.
    pub accel: String,
    /// The kernel command line it booted with.
    pub cmdline: String,
    /// Whether it has a NIC.
    pub net: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Upstream's load messages, word for word.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

impl Coded for CheckpointError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Invalid(_) => ErrorCode::InvalidCheckpoint,
            Self::Failed(_) | Self::Io(..) => ErrorCode::CheckpointFailed,
        }
    }
}

/// A loaded trailer and where the trailer's JSON starts.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub data: CheckpointData,
    /// Offset of the JSON: the disk (and state) end here.
    pub json_offset: u64,
}

/// Read a checkpoint's trailer (upstream `VmCheckpoint.load`).
pub fn load(path: &Path) -> Result<Loaded, CheckpointError> {
    let shown = path.display();
    let invalid = |m: String| CheckpointError::Invalid(m);
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => invalid(format!("checkpoint not found: {shown}")),
        _ => CheckpointError::Io(format!("reading {shown}"), e),
    })?;
    if meta.is_dir() {
        return Err(invalid(format!(
            "checkpoint path must be a .qcow2 file, got directory: {shown}"
        )));
    }
    if path.file_name().is_some_and(|n| n == "checkpoint.json") {
        return Err(invalid(format!(
            "legacy checkpoint.json format is no longer supported: {shown}"
        )));
    }
    let mut f = std::fs::File::open(path)
        .map_err(|e| CheckpointError::Io(format!("opening {shown}"), e))?;
    let size = meta.len();
    let len = footer_len(&mut f, size)
        .map_err(|e| CheckpointError::Io(format!("reading {shown}"), e))?
        .ok_or_else(|| invalid(format!("checkpoint file has no trailer: {shown}")))?;
    if !fits(len, size) {
        return Err(invalid(format!("invalid checkpoint trailer length: {len}")));
    }
    let json_offset = size - FOOTER - len;
    let mut json = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(json_offset))
        .and_then(|_| f.read_exact(&mut json))
        .map_err(|e| CheckpointError::Io(format!("reading {shown}"), e))?;
    let raw: serde_json::Value = serde_json::from_slice(&json).map_err(|e| {
        invalid(format!(
            "checkpoint trailer is not valid JSON: {e}: {shown}"
        ))
    })?;
    let version = raw
        .get("version")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    if version != serde_json::json!(VERSION) {
        return Err(invalid(format!(
            "unsupported checkpoint version: {version}"
        )));
    }
    let data: CheckpointData = serde_json::from_value(raw)
        .map_err(|e| invalid(format!("checkpoint trailer is malformed: {e}: {shown}")))?;
    if let Some(m) = &data.memory {
        let end = m.state_offset.checked_add(m.state_length);
        if end != Some(json_offset) || m.state_offset == 0 {
            return Err(invalid(format!(
                "checkpoint is truncated or damaged: its saved memory does not fit the file: {shown}"
            )));
        }
    }
    Ok(Loaded { data, json_offset })
}

/// Append the trailer to `f` (positioned anywhere; writes at the end).
pub fn append(f: &mut std::fs::File, data: &CheckpointData) -> std::io::Result<()> {
    let mut json = serde_json::to_string_pretty(data).map_err(std::io::Error::other)?;
    json.push('\n');
    f.seek(SeekFrom::End(0))?;
    f.write_all(json.as_bytes())?;
    f.write_all(MAGIC)?;
    f.write_all(&(json.len() as u64).to_be_bytes())?;
    f.flush()
}

/// Replace the trailer of the file at `path` with `data` (upstream
/// `VmCheckpoint.writeTrailer`): an existing trailer is cut off first.
pub fn write_trailer(path: &Path, data: &CheckpointData) -> Result<(), CheckpointError> {
    let io = |e| CheckpointError::Io(format!("writing the trailer of {}", path.display()), e);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    if let Some(end) = existing_trailer(&mut f).map_err(io)? {
        f.set_len(end).map_err(io)?;
    }
    append(&mut f, data).map_err(io)
}

/// Where a well-framed trailer's JSON starts, whatever the JSON says.
fn existing_trailer(f: &mut std::fs::File) -> std::io::Result<Option<u64>> {
    let size = f.metadata()?.len();
    Ok(footer_len(f, size)?
        .filter(|&len| fits(len, size))
        .map(|len| size - FOOTER - len))
}

/// The JSON length the footer of a `size`-byte file states, if it ends in
/// our magic.
fn footer_len(f: &mut std::fs::File, size: u64) -> std::io::Result<Option<u64>> {
    if size < FOOTER {
        return Ok(None);
    }
    let mut footer = [0u8; FOOTER as usize];
    f.seek(SeekFrom::Start(size - FOOTER))?;
    f.read_exact(&mut footer)?;
    Ok((&footer[..8] == MAGIC).then(|| u64::from_be_bytes(footer[8..].try_into().unwrap())))
}

/// Whether a trailer of `len` JSON bytes fits a `size`-byte file.
fn fits(len: u64, size: u64) -> bool {
    len > 0 && len <= MAX_JSON && len <= size - FOOTER
}

/// `2026-12-01T05:44:53.123Z`, as JS `Date.prototype.toISOString`.
pub fn iso_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> CheckpointData {
        CheckpointData {
            version: 1,
            name: "c".into(),
            created_at: iso_now(),
            disk_file: "c.qcow2".into(),
            guest_asset_build_id: "b".into(),
            snapshot_kind: Some("disk".into()),
            created_with_vmm: Some("qemu".into()),
            compatible_vmm: Some(vec!["qemu".into()]),
            memory: None,
            extra: Default::default(),
        }
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ckpt-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn trailer_round_trips_and_replaces() {
        let d = dir();
        let p = d.join("c.qcow2");
        std::fs::write(&p, b"QFI\xfbdisk bytes").unwrap();
        write_trailer(&p, &data()).unwrap();
        let l = load(&p).unwrap();
        assert_eq!(l.data, data_with(&l.data.created_at));
        assert_eq!(l.json_offset, 14);
        let mut other = data();
        other.name = "renamed".into();
        write_trailer(&p, &other).unwrap();
        let l = load(&p).unwrap();
        assert_eq!(l.data.name, "renamed");
        assert_eq!(l.json_offset, 14, "the old trailer was cut off");
        std::fs::remove_dir_all(d).unwrap();
    }

    fn data_with(created: &str) -> CheckpointData {
        let mut d = data();
        d.created_at = created.into();
        d
    }

    #[test]
    fn upstream_load_errors() {
        let d = dir();
        let msg = |p: &Path| load(p).unwrap_err().to_string();
        assert!(msg(&d).starts_with("checkpoint path must be a .qcow2 file, got directory: "));
        let legacy = d.join("checkpoint.json");
        std::fs::write(&legacy, "{}").unwrap();
        assert!(msg(&legacy).starts_with("legacy checkpoint.json format is no longer supported"));
        let bare = d.join("bare.qcow2");
        std::fs::write(&bare, vec![0u8; 100]).unwrap();
        assert!(msg(&bare).starts_with("checkpoint file has no trailer: "));
        let mut bad = b"disk".to_vec();
        bad.extend_from_slice(MAGIC);
        bad.extend_from_slice(&(1u64 << 40).to_be_bytes());
        std::fs::write(&bare, &bad).unwrap();
        assert_eq!(
            msg(&bare),
            format!("invalid checkpoint trailer length: {}", 1u64 << 40)
        );
        assert_eq!(
            msg(&d.join("nope.qcow2")),
            format!("checkpoint not found: {}", d.join("nope.qcow2").display())
        );
        let mut v2 = data();
        v2.version = 2;
        std::fs::write(&bare, b"disk").unwrap();
        write_trailer(&bare, &v2).unwrap();
        assert_eq!(msg(&bare), "unsupported checkpoint version: 2");
        let e = load(&bare).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidCheckpoint);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_memory_state_that_does_not_fit_is_refused() {
        let d = dir();
        let p = d.join("m.qcow2");
        std::fs::write(&p, vec![7u8; 64]).unwrap();
        let mut m = data();
        m.memory = Some(MemoryState {
            state_offset: 32,
            state_length: 64, // runs past the trailer: a truncated copy
            state_sha256: "x".into(),
            machine: MachineShape {
                memory_mib: 1024,
                cpus: 2,
                machine: None,
                cpu: None,
                accel: "tcg".into(),
                cmdline: "console=ttyS0".into(),
                net: true,
            },
        });
        write_trailer(&p, &m).unwrap();
        assert!(load(&p)
            .unwrap_err()
            .to_string()
            .contains("truncated or damaged"));
        m.memory.as_mut().unwrap().state_length = 32;
        write_trailer(&p, &m).unwrap();
        assert_eq!(load(&p).unwrap().data.memory, m.memory);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn unknown_fields_are_kept() {
        let d = dir();
        let p = d.join("x.qcow2");
        std::fs::write(&p, b"disk").unwrap();
        let mut x = data();
        x.extra.insert("future".into(), serde_json::json!({"a": 1}));
        write_trailer(&p, &x).unwrap();
        assert_eq!(
            load(&p).unwrap().data.extra["future"],
            serde_json::json!({"a": 1})
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}

//! The VM options a host program passes (`new VM(options)`), checked once,
//! when the VM is constructed, so a mistake fails there and never the boot.
//! Messages name the option and the fix; every refusal is
//! [`ErrorCode::InvalidOption`].
//!
//! The addon reads the JS object into an [`OptValue`] tree: plain values in
//! full along the paths [`descends`] names, anything else (providers, hook
//! objects) only as its kind. What is not data (functions, provider
//! objects) is used by the JS facade; this module only checks its kind.

mod debug;
mod keys;
mod tcp;
mod tmpfs;

pub use debug::FLAGS as DEBUG_FLAGS;
pub use keys::{check_keys, known_keys, nearest, tables};
pub use tmpfs::{cmdline as tmpfs_cmdline, TmpfsMount};

use crate::error::{Coded, ErrorCode};
use crate::vfs::path::normalize;
use crate::vm::{parse_memory_mib, RootfsMode};

/// A refused option; the message names it and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

impl Coded for OptionError {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidOption
    }
}

/// A JS value as the options check sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum OptValue {
    Undefined,
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<OptValue>),
    /// Own enumerable string keys, in JS order.
    Object(Vec<(String, OptValue)>),
    Function,
    /// An object or array off the [`descends`] paths: its contents were not read.
    Opaque {
        array: bool,
    },
}

impl OptValue {
    /// The property `key` (undefined when absent or not an object).
    pub fn get(&self, key: &str) -> &OptValue {
        match self {
            OptValue::Object(fields) => fields
                .iter()
                .find(|(k, _)| k == key)
                .map_or(&OptValue::Undefined, |(_, v)| v),
            _ => &OptValue::Undefined,
        }
    }

    fn is_nullish(&self) -> bool {
        matches!(self, OptValue::Undefined | OptValue::Null)
    }

    /// JS `a ?? b`.
    fn or<'a>(&'a self, other: &'a OptValue) -> &'a OptValue {
        if self.is_nullish() {
            other
        } else {
            self
        }
    }

    /// JS truthiness.
    fn truthy(&self) -> bool {
        match self {
            OptValue::Undefined | OptValue::Null => false,
            OptValue::Bool(b) => *b,
            OptValue::Number(n) => *n != 0.0 && !n.is_nan(),
            OptValue::String(s) => !s.is_empty(),
            _ => true,
        }
    }

    /// JS `typeof v === "object"` (null included, as in JS).
    fn is_object_like(&self) -> bool {
        matches!(
            self,
            OptValue::Null | OptValue::Object(_) | OptValue::Array(_) | OptValue::Opaque { .. }
        )
    }

    /// The own keys of an object (empty for anything else).
    fn keys(&self) -> impl Iterator<Item = &str> {
        let fields: &[(String, OptValue)] = match self {
            OptValue::Object(f) => f,
            _ => &[],
        };
        fields.iter().map(|(k, _)| k.as_str())
    }

    /// JS `String(v)` / template interpolation, for messages.
    pub fn to_js_string(&self) -> String {
        match self {
            OptValue::Undefined => "undefined".into(),
            OptValue::Null => "null".into(),
            OptValue::Bool(b) => b.to_string(),
            OptValue::Number(n) => js_number(*n),
            OptValue::String(s) => s.clone(),
            OptValue::Array(items) => items
                .iter()
                .map(|v| {
                    if v.is_nullish() {
                        String::new()
                    } else {
                        v.to_js_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            OptValue::Object(_) | OptValue::Opaque { array: false } => "[object Object]".into(),
            OptValue::Opaque { array: true } => "[array]".into(),
            OptValue::Function => "function".into(),
        }
    }

    /// Like JS `JSON.stringify(v)` for the values messages quote.
    pub fn to_json(&self) -> String {
        match self {
            OptValue::String(s) => serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}")),
            OptValue::Number(n) if !n.is_finite() => "null".into(),
            OptValue::Undefined | OptValue::Function => "undefined".into(),
            OptValue::Object(_) | OptValue::Opaque { .. } => "an object".into(),
            OptValue::Array(_) => "an array".into(),
            v => v.to_js_string(),
        }
    }
}

fn js_number(n: f64) -> String {
    if n.is_nan() {
        "NaN".into()
    } else if n.is_infinite() {
        if n > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else if n.fract() == 0.0 && n.abs() < 1e21 {
        format!("{}", n as i128)
    } else {
        format!("{n}")
    }
}

/// Whether the reader should read the object at `path` (keys from the VM
/// options root) in full; elsewhere it records only the kind of value.
pub fn descends(path: &[&str]) -> bool {
    matches!(
        path,
        [] | ["sandbox" | "vfs" | "rootfs" | "tmpfs"]
            | ["vfs", "mounts"]
            | ["sandbox", "tmpfs" | "debug"]
            | ["tmpfs", _]
            | ["sandbox", "tmpfs", _]
            | ["tcp" | "dns"]
            | ["sandbox", "tcp" | "dns"]
            | ["tcp", "hosts"]
            | ["sandbox", "tcp", "hosts"]
    )
}

/// What the VM takes from its options once they passed.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// `rootfs.mode`, or what `sandbox.rootOverlay` implies; `None` = the image's default.
    pub rootfs_mode: Option<RootfsMode>,
    /// `rootfs.size` (checked by `vm::rootfs_size::parse`); `None` = the image's size.
    pub rootfs_size: Option<String>,
    /// `tmpfs` (or `sandbox.tmpfs`); `None` = the guest's default mounts.
    pub tmpfs: Option<Vec<TmpfsMount>>,
    /// Enabled debug components (see [`DEBUG_FLAGS`]).
    pub debug: Vec<&'static str>,
    /// `sandbox.memory ?? memory`, checked; `None` = the default.
    pub memory: Option<String>,
    /// `sandbox.cpus ?? cpus`, checked; `None` = the default.
    pub cpus: Option<u32>,
    /// Set when the FUSE root must move from its default (`/data`) because a
    /// mount sits there: [`HIDDEN_FUSE_MOUNT`].
    pub fuse_mount: Option<String>,
    /// `sandbox.bootSnapshot` (our extension): `Some(false)` = always boot
    /// cold, never from a boot template; `None` = the default (templates
    /// on unless `GONDOLIN_BOOT_SNAPSHOT=0`, which the JS facade reads).
    pub boot_snapshot: Option<bool>,
}

/// The FUSE root's default home.
pub const DEFAULT_FUSE_MOUNT: &str = "/data";
/// The FUSE root's home when `/data` is taken by a mount of its own.
pub const HIDDEN_FUSE_MOUNT: &str = "/run/gondolin/vfs";

fn bad(msg: impl Into<String>) -> OptionError {
    OptionError(msg.into())
}

/// Check the VM options `o` (see the module doc) and resolve the values
/// more than one part of the VM reads. `debug_env` is `$GONDOLIN_DEBUG`.
pub fn resolve(o: &OptValue, debug_env: Option<&str>) -> Result<Resolved, OptionError> {
    if !matches!(o, OptValue::Object(_)) {
        return Err(bad("VM options must be an object"));
    }
    check_keys(o.keys(), "VMOptions", "VMOptions")?;
    let sandbox = o.get("sandbox");
    if !sandbox.is_nullish() && !sandbox.is_object_like() {
        return Err(bad("sandbox must be an object"));
    }
    check_keys(sandbox.keys(), "sandbox", "sandbox")?;
    let vfs = o.get("vfs");
    if !vfs.is_nullish() {
        if !vfs.is_object_like() {
            return Err(bad("vfs must be an object or null"));
        }
        check_keys(vfs.keys(), "vfs", "vfs")?;
    }
    let rootfs = o.get("rootfs");
    if *rootfs != OptValue::Undefined {
        if rootfs.is_nullish() || !rootfs.is_object_like() {
            return Err(bad("rootfs must be an object"));
        }
        check_keys(rootfs.keys(), "rootfs", "rootfs")?;
    }
    if *sandbox.get("rootDiskSnapshot") != OptValue::Undefined {
        return Err(bad("sandbox.rootDiskSnapshot has been removed; use VM rootfs.mode='memory' or rootfs.mode='cow'"));
    }
    if vfs.truthy() && sandbox.get("vfsProvider").truthy() {
        return Err(bad("VM cannot specify both vfs and sandbox.vfsProvider"));
    }
    let memory = memory(sandbox.get("memory").or(o.get("memory")))?;
    let cpus = cpus(sandbox.get("cpus").or(o.get("cpus")))?;
    let rootfs_mode = rootfs_mode(rootfs, sandbox.get("rootOverlay"))?;
    let rootfs_size = match rootfs.get("size") {
        OptValue::Undefined => None,
        OptValue::String(s) => {
            crate::vm::rootfs_size::parse(s).map_err(|e| bad(e.to_string()))?;
            if rootfs_mode == Some(RootfsMode::Readonly) {
                return Err(bad(crate::vm::rootfs_size::NEEDS_WRITABLE));
            }
            Some(s.clone())
        }
        v => {
            return Err(bad(format!(
                "rootfs.size must be a size like \"8G\" or \"10240M\" (got {})",
                v.to_json()
            )))
        }
    };
    if !matches!(o.get("autoStart"), OptValue::Undefined | OptValue::Bool(_)) {
        return Err(bad("autoStart must be a boolean"));
    }
    let boot_snapshot = match sandbox.get("bootSnapshot") {
        OptValue::Undefined => None,
        OptValue::Bool(b) => Some(*b),
        _ => return Err(bad("sandbox.bootSnapshot must be a boolean")),
    };
    for (k, v) in [
        ("onEgress", o.get("onEgress")),
        ("debugLog", o.get("debugLog").or(sandbox.get("debugLog"))),
    ] {
        if !v.is_nullish() && *v != OptValue::Function {
            return Err(bad(format!("{k} must be a function")));
        }
    }
    if !matches!(
        o.get("startTimeoutMs"),
        OptValue::Undefined | OptValue::Number(_)
    ) {
        return Err(bad("startTimeoutMs must be a number"));
    }
    let tmpfs = match sandbox.get("tmpfs").or(o.get("tmpfs")) {
        OptValue::Undefined => None,
        v => Some(tmpfs::parse(v)?),
    };
    let debug = debug::flags(sandbox.get("debug"), debug_env)?;
    tcp::check(
        sandbox.get("tcp").or(o.get("tcp")),
        sandbox.get("dns").or(o.get("dns")),
    )?;
    let fuse_mount = fuse_mount(vfs)?;
    Ok(Resolved {
        rootfs_mode,
        rootfs_size,
        tmpfs,
        debug,
        memory,
        cpus,
        fuse_mount,
        boot_snapshot,
    })
}

/// `vfs.fuseMount` against the mount points: a mount at (or under) `/data`
/// is what most examples write, and the default FUSE root lives there, so
/// the default moves out of the way; an explicit `fuseMount` stays and must
/// not collide with any mount.
fn fuse_mount(vfs: &OptValue) -> Result<Option<String>, OptionError> {
    let inside =
        |p: &str, base: &str| p == base || p.strip_prefix(base).is_some_and(|r| r.starts_with('/'));
    let keys: Vec<String> = vfs
        .get("mounts")
        .keys()
        .map(|k| normalize(&format!("/{k}")))
        .filter(|k| k != "/")
        .collect();
    let fm = match vfs.get("fuseMount") {
        OptValue::Undefined => {
            let moved = keys.iter().any(|k| inside(k, DEFAULT_FUSE_MOUNT));
            return Ok(moved.then(|| HIDDEN_FUSE_MOUNT.to_string()));
        }
        OptValue::String(fm) => normalize(&format!("/{fm}")),
        _ => return Ok(None), // the VFS setup names the type error
    };
    match keys.iter().find(|k| inside(k, &fm) || inside(&fm, k)) {
        Some(k) => Err(bad(format!(
            "vfs.mounts key {k} collides with vfs.fuseMount {fm}; choose a vfs.fuseMount outside every mount \
             (or leave it unset: the default moves to {HIDDEN_FUSE_MOUNT} when /data is mounted)"
        ))),
        None => Ok(None),
    }
}

fn memory(v: &OptValue) -> Result<Option<String>, OptionError> {
    match v {
        OptValue::Undefined => Ok(None),
        OptValue::String(s) => parse_memory_mib(s)
            .map(|_| Some(s.clone()))
            .map_err(|e| bad(e.to_string())),
        v => Err(bad(format!(
            "memory must be a size like \"512M\" or \"2G\" (got {})",
            v.to_json()
        ))),
    }
}

fn cpus(v: &OptValue) -> Result<Option<u32>, OptionError> {
    match v {
        OptValue::Undefined => Ok(None),
        OptValue::Number(n) if n.fract() == 0.0 && (1.0..=255.0).contains(n) => Ok(Some(*n as u32)),
        v => Err(bad(format!(
            "cpus must be an integer between 1 and 255 (got {})",
            v.to_js_string()
        ))),
    }
}

fn rootfs_mode(rootfs: &OptValue, overlay: &OptValue) -> Result<Option<RootfsMode>, OptionError> {
    let mode = match rootfs.get("mode") {
        OptValue::Undefined => None,
        OptValue::String(s) => {
            Some(RootfsMode::parse(s).map_err(|_| bad(format!("unsupported rootfs mode: {s}")))?)
        }
        v => {
            return Err(bad(format!(
                "unsupported rootfs mode: {}",
                v.to_js_string()
            )))
        }
    };
    let implied = match overlay {
        OptValue::Undefined => return Ok(mode),
        // Older docs: rootOverlay true = a writable root whose changes are discarded.
        OptValue::Bool(true) => RootfsMode::Cow,
        OptValue::Bool(false) => RootfsMode::Readonly,
        _ => return Err(bad("sandbox.rootOverlay must be a boolean")),
    };
    match mode {
        Some(m) if m != implied => Err(bad(format!(
            "sandbox.rootOverlay: {} contradicts rootfs.mode: \"{}\"; use rootfs.mode alone",
            overlay.to_js_string(),
            m.as_str()
        ))),
        _ => Ok(Some(implied)),
    }
}

#[cfg(test)]
mod tests;

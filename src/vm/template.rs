//! Boot templates: `VM.create()` without a boot.
//!
//! The first VM of a machine (image, kernel command line, memory, vCPUs,
//! machine and CPU model, accelerator, NIC or not, QEMU build, guest
//! protocol) boots a guest with no per-VM configuration, with its RAM in a
//! shared file mapping, and saves it right after `Ready` with QEMU's
//! `x-ignore-shared` migration (RAM stays in the file; the stream is device
//! state only). Later VMs of the same machine start QEMU with that file
//! mapped *privately* (copy-on-write: untouched pages stay shared in the
//! page cache, the template is never written) and load the device state:
//! the guest continues from just after its boot. Each then gets its own
//! configuration, clock and RNG seed over the control port.
//!
//! Layout: `<root>/<key>/{meta.json, ram, state, disk.qcow2}` (`disk.qcow2`
//! is the overlay the template's boot wrote, backing every resumed VM's
//! own overlay; absent for read-only roots). A template is built in a
//! temp directory under `<root>` and renamed into place, under an
//! exclusive lock per key, so concurrent first starts build it once. Every
//! VM resumed from a template holds a shared `flock` on its `meta.json`
//! while it runs; a template is removed (damaged, pruned) only when nobody
//! holds it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{launch, machine::Vm, RootfsMode, VmConfig, VmError};

pub const RAM: &str = "ram";
pub const STATE: &str = "state";
pub const DISK: &str = "disk.qcow2";
const META: &str = "meta.json";
/// Bumped when the layout or what a template holds changes (3: templates
/// booted before the TSC rate was given under TCG may keep a guest clock
/// that runs several times fast).
const FORMAT: u32 = 3;
/// Templates kept at most; past this the least recently used ones that no
/// VM runs from are removed (each holds the pages its guest touched, about
/// 150 MB for a 1 GiB guest, and a new key is one `sandbox.append` away).
const MAX_TEMPLATES: usize = 8;
/// How long a start waits for another process building the same template.
const LOCK_WAIT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub format: u32,
    pub key: String,
    pub state_bytes: u64,
    pub state_sha256: String,
    pub ram_bytes: u64,
    pub build_ms: u64,
    /// What the key was made of (for people looking at the cache).
    pub inputs: serde_json::Value,
}

#[derive(Debug)]
pub struct Template {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Template {
    /// A shared lock on this template, held by every VM resumed from it for
    /// its lifetime (its overlay is backed by the template's disk, and a
    /// checkpoint rebases from it): a template in use is never removed.
    pub fn pin(&self) -> Option<std::fs::File> {
        let f = std::fs::File::open(self.dir.join(META)).ok()?;
        try_flock(&f, libc::LOCK_SH).then_some(f)
    }

    /// Mark the template used now (for [`prune`]'s least-recently-used order).
    fn touch(&self) {
        if let Ok(f) = std::fs::File::options()
            .append(true)
            .open(self.dir.join(META))
        {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    /// Remove a template that failed to resume (the next start rebuilds
    /// it), unless a running VM still uses it.
    pub fn discard(&self) {
        remove_unless_pinned(&self.dir);
    }
}

/// `flock(op | LOCK_NB)`: whether it was taken.
fn try_flock(f: &std::fs::File, op: libc::c_int) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an fd we own; no memory is passed.
    unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

/// Remove the template directory `dir` if no VM pins it; whether it is gone.
fn remove_unless_pinned(dir: &Path) -> bool {
    let Ok(meta) = std::fs::File::open(dir.join(META)) else {
        // No meta: nobody can have pinned it (a half-written template).
        return std::fs::remove_dir_all(dir).is_ok() || !dir.exists();
    };
    if !try_flock(&meta, libc::LOCK_EX) {
        return false;
    }
    std::fs::remove_dir_all(dir).is_ok()
}

/// The template for `config`'s machine under `root`: the existing one if it
/// is whole, else built now (this VM then resumes from it).
pub async fn ensure(config: &VmConfig, root: &Path) -> Result<Template, VmError> {
    let inputs = inputs(config).await;
    let key = key_of(&inputs);
    let dir = root.join(&key);
    if let Some(t) = whole(&dir, &key, config) {
        t.touch();
        return Ok(t);
    }
    mkdir_private(root)?;
    let _lock = lock(&root.join(format!("{key}.lock"))).await?;
    if let Some(t) = whole(&dir, &key, config) {
        return Ok(t); // another start built it while we waited
    }
    if dir.exists() && !remove_unless_pinned(&dir) {
        return Err(VmError::ResumeFailed(format!(
            "the boot template {} is damaged and still in use; not rebuilding it now",
            dir.display()
        )));
    }
    // Builds of this key that a dead process left behind (we hold its lock).
    let stale = format!(".build-{key}-");
    for e in std::fs::read_dir(root)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(&stale) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let tmp = root.join(format!("{stale}{}", uuid::Uuid::new_v4().simple()));
    mkdir_private(&tmp)?;
    // Goes on failure, and when this future is dropped mid-build (a VM
    // closed during its first boot), not only at the next build of the key.
    let mut cleanup = launch::DirGuard(Some(tmp.clone()));
    let meta = build(config, &tmp, &key, inputs).await?;
    std::fs::rename(&tmp, &dir)?;
    cleanup.0 = None;
    // The rename itself must survive a crash, not only the files.
    std::fs::File::open(root)?.sync_all()?;
    prune(root, &key);
    Ok(Template { dir, meta })
}

async fn build(
    config: &VmConfig,
    tmp: &Path,
    key: &str,
    inputs: serde_json::Value,
) -> Result<Meta, VmError> {
    let started = Instant::now();
    // No per-VM configuration in a template: no VFS (its port is drained),
    // never a resume. The NIC is there or not as for this machine.
    let mut plain = config.clone();
    plain.vfs = None;
    plain.resume = None;
    plain.template_dir = None;
    let saved = Vm::build_template(&plain, tmp).await?;
    let meta = Meta {
        format: FORMAT,
        key: key.to_string(),
        state_bytes: saved.bytes,
        state_sha256: saved.sha256,
        ram_bytes: std::fs::metadata(tmp.join(RAM))?.len(),
        build_ms: started.elapsed().as_millis() as u64,
        inputs,
    };
    for f in [RAM, STATE, DISK] {
        let p = tmp.join(f);
        if p.exists() {
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            // On disk before the meta that vouches for it: after a crash a
            // template is whole or has no meta.
            std::fs::File::open(&p)?.sync_all()?;
        }
    }
    let json = serde_json::to_vec_pretty(&meta).map_err(std::io::Error::other)?;
    write_private(&tmp.join(META), &json)?;
    tracing::info!(target: "gondolin::vm", "boot template {key} built in {} ms ({} bytes of device state)", meta.build_ms, meta.state_bytes);
    Ok(meta)
}

/// The template in `dir` if every file is there with the sizes its meta
/// says (the state's checksum is checked as it is loaded).
fn whole(dir: &Path, key: &str, config: &VmConfig) -> Option<Template> {
    let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join(META)).ok()?).ok()?;
    let size = |f: &str| std::fs::metadata(dir.join(f)).ok().map(|m| m.len());
    let ram = super::parse_memory_mib(&config.memory).ok()? * 1024 * 1024;
    let ok = meta.format == FORMAT
        && meta.key == key
        && size(RAM) == Some(ram)
        && meta.ram_bytes == ram
        && size(STATE) == Some(meta.state_bytes)
        && (config.rootfs_mode == RootfsMode::Readonly || size(DISK).is_some());
    if !ok {
        tracing::warn!(target: "gondolin::vm", "boot template {} is incomplete or damaged; rebuilding it", dir.display());
        return None;
    }
    Some(Template {
        dir: dir.to_path_buf(),
        meta,
    })
}

/// Everything that must be equal for a saved guest to fit a new VM.
async fn inputs(config: &VmConfig) -> serde_json::Value {
    let accel = super::detect_accel(config.accel.as_deref());
    let shape = launch::shape(config, &accel);
    let file = |p: &Path| {
        let m = std::fs::metadata(p).ok();
        serde_json::json!({
            "path": p,
            "size": m.as_ref().map(|m| m.len()),
            "mtime": m.and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string()),
        })
    };
    let qemu = config
        .qemu_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("qemu-system-{}", std::env::consts::ARCH)));
    serde_json::json!({
        "format": FORMAT,
        "protocol": gondolin_wire::PROTOCOL_VERSION,
        "kernel": file(&config.kernel),
        "initrd": file(&config.initrd),
        "rootfs": file(&config.rootfs),
        "rootfsWritable": config.rootfs_mode != RootfsMode::Readonly,
        "machine": shape,
        // The accelerator's kernel words (the TSC rate under TCG): the
        // guest's clock is set up at boot and kept in the template.
        "accelCmdline": accel.cmdline_extra(),
        "qemu": qemu_version(&qemu).await,
        "hostCpu": host_cpu(),
    })
}

/// The host CPU's model and feature flags. Under KVM/HVF the guest runs
/// with `-cpu host`, so saved vCPU state only fits the same CPU; a cache
/// copied to another machine must not resume there.
fn host_cpu() -> String {
    static CPU: OnceLock<String> = OnceLock::new();
    CPU.get_or_init(read_host_cpu).clone()
}

fn read_host_cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let first = |key: &str| {
        info.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let flags = Sha256::digest(first("flags").as_bytes());
    format!(
        "{} {}",
        first("model name"),
        super::migrate::hex(&flags[..8])
    )
}

fn key_of(inputs: &serde_json::Value) -> String {
    let digest = Sha256::digest(inputs.to_string().as_bytes());
    super::migrate::hex(&digest[..16])
}

/// `qemu-system-* --version`, once per binary per process.
async fn qemu_version(qemu: &Path) -> String {
    static SEEN: OnceLock<Mutex<Vec<(PathBuf, String)>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some((_, v)) = seen.lock().unwrap().iter().find(|(p, _)| p == qemu) {
        return v.clone();
    }
    let v = tokio::process::Command::new(qemu)
        .arg("--version")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push((qemu.to_path_buf(), v.clone()));
    v
}

/// Remove templates whose image files are gone (a rebuilt image, a new
/// set of guest binaries: they can never be used again), then the least
/// recently used beyond [`MAX_TEMPLATES`]. Templates a VM runs from stay.
fn prune(root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut live = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        if dir.file_name().is_some_and(|n| n == keep) || !dir.is_dir() {
            continue;
        }
        let Ok(file) = std::fs::File::open(dir.join(META)) else {
            continue;
        };
        let used = file.metadata().and_then(|m| m.modified()).ok();
        let Some(meta) = std::fs::read(dir.join(META))
            .ok()
            .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
        else {
            continue;
        };
        let gone = ["kernel", "initrd", "rootfs"].iter().any(|k| {
            meta.inputs[k]["path"]
                .as_str()
                .is_some_and(|p| !Path::new(p).exists())
        });
        // Lock files stay: another process may hold or wait on one.
        if gone {
            remove_unless_pinned(&dir);
        } else {
            live.push((used, dir));
        }
    }
    // Newest first; `keep` (just built) counts as one.
    live.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    for (_, dir) in live.into_iter().skip(MAX_TEMPLATES.saturating_sub(1)) {
        remove_unless_pinned(&dir);
    }
}

fn mkdir_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// An exclusive `flock` on `path`, waited for up to [`LOCK_WAIT`]; released
/// when dropped (or when the process dies).
async fn lock(path: &Path) -> Result<std::fs::File, VmError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on an fd we own; no memory is passed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(e.into());
        }
        if Instant::now() >= deadline {
            return Err(VmError::ResumeFailed(format!(
                "another process has been building the boot template for {}s ({})",
                LOCK_WAIT.as_secs(),
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake template `name` under `root`, last used `age_s` seconds ago,
    /// whose image is `/` (exists) or `/gone` (does not).
    fn fake(root: &Path, name: &str, age_s: u64, image: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let meta = Meta {
            format: FORMAT,
            key: name.into(),
            state_bytes: 0,
            state_sha256: String::new(),
            ram_bytes: 0,
            build_ms: 0,
            inputs: serde_json::json!({ "kernel": { "path": image } }),
        };
        std::fs::write(dir.join(META), serde_json::to_vec(&meta).unwrap()).unwrap();
        let f = std::fs::File::options()
            .append(true)
            .open(dir.join(META))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
        dir
    }

    #[test]
    fn prune_drops_orphans_and_the_least_recently_used_but_never_a_pinned_one() {
        let root =
            std::env::temp_dir().join(format!("tpl-prune-{}", uuid::Uuid::new_v4().simple()));
        let keep = fake(&root, "new", 0, "/");
        let orphan = fake(&root, "orphan", 5, "/gone");
        let old: Vec<PathBuf> = (0..MAX_TEMPLATES + 2)
            .map(|i| fake(&root, &format!("t{i}"), 10 + i as u64, "/"))
            .collect();
        // The oldest is in use by a running VM.
        let oldest = old.last().unwrap().clone();
        let pin = Template {
            dir: oldest.clone(),
            meta: serde_json::from_slice(&std::fs::read(oldest.join(META)).unwrap()).unwrap(),
        }
        .pin()
        .expect("pinned");
        prune(&root, "new");
        assert!(keep.exists());
        assert!(!orphan.exists(), "its image is gone");
        let kept: Vec<bool> = old.iter().map(|d| d.exists()).collect();
        let n = MAX_TEMPLATES - 1;
        assert!(
            kept[..n].iter().all(|k| *k),
            "the newest {n} stay: {kept:?}"
        );
        assert!(!kept[n], "the next oldest goes: {kept:?}");
        assert!(oldest.exists(), "a pinned template stays");
        drop(pin);
        std::fs::remove_dir_all(root).unwrap();
    }
}

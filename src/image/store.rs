//! The image store: cache paths, build ids, manifests, assembly.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::base::Base;
use super::initrd::Cpio;
use super::{io_err, Definition, ImageError, ImageInfo, BASE_CMDLINE};

/// Bump when the image layout or the initramfs recipe changes.
const IMAGE_FORMAT: &str = "gondolin-image-v1";

/// `$XDG_CACHE_HOME/gondolin`, else `~/.cache/gondolin`.
pub fn cache_root() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("gondolin");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("gondolin")
}

/// `$GONDOLIN_IMAGE_STORE`, else `<cache root>/images`.
pub fn images_dir(root: Option<&Path>) -> PathBuf {
    if let Some(x) = std::env::var_os("GONDOLIN_IMAGE_STORE").filter(|x| !x.is_empty()) {
        return PathBuf::from(x);
    }
    root.map(Path::to_path_buf)
        .unwrap_or_else(cache_root)
        .join("images")
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub build_id: String,
    pub arch: String,
    pub created_at: String,
    pub kernel_version: String,
    pub cmdline: String,
    pub assets: Assets,
    /// Absent for an image whose rootfs came from an OCI image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian: Option<DebianInfo>,
    /// Our extension: the OCI image the rootfs came from (`--from-oci`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciInfo>,
    #[serde(default)]
    pub runtime_defaults: Option<RuntimeDefaults>,
    /// sha256 (hex) of each asset file, by its name in `assets`; images
    /// built before checksums existed have none (`verify` refuses them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Assets {
    pub kernel: String,
    pub initrd: String,
    pub rootfs: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DebianInfo {
    pub release: String,
    pub kernel_package: String,
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OciInfo {
    /// As given to `--from-oci`.
    pub reference: String,
    /// The image manifest's digest (`sha256:...`).
    pub digest: String,
}

/// A rootfs built elsewhere (from an OCI image) instead of the base's.
pub struct OtherRootfs<'a> {
    pub path: &'a Path,
    pub oci: OciInfo,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeDefaults {
    pub rootfs_mode: Option<String>,
    /// `KEY=VALUE` entries every exec starts with (the definition's `env`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

fn guest_binary(dir: &Path, name: &str) -> Result<Vec<u8>, ImageError> {
    let p = dir.join(name);
    fs::read(&p).map_err(|_| ImageError::MissingGuestBinary(p))
}

/// The static guest binaries every image carries in its initramfs.
pub const GUEST_BINARIES: [&str; 3] = ["init", "sandboxd", "sandboxfs"];

pub fn build_id(def: &Definition, bin_dir: &Path) -> Result<String, ImageError> {
    image_id(def, bin_dir, None)
}

/// Build id of an image whose rootfs is the OCI image `digest`: the
/// digest, the kernel base, the command line and our guest binaries.
pub fn oci_build_id(digest: &str, def: &Definition, bin_dir: &Path) -> Result<String, ImageError> {
    image_id(def, bin_dir, Some(digest))
}

/// The one recipe for build ids: the format, the base (a new base format
/// is a new image), the OCI rootfs digest if any, the definition (its env
/// and runtimeDefaults go into the manifest), the command line and our
/// guest binaries.
fn image_id(
    def: &Definition,
    bin_dir: &Path,
    oci_digest: Option<&str>,
) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    h.update(IMAGE_FORMAT);
    if oci_digest.is_some() {
        h.update(super::ocirootfs::OCI_ROOTFS_FORMAT);
    }
    h.update(super::base::base_hash(def)?);
    let recipe = def.recipe_bytes();
    let parts = oci_digest
        .map(str::as_bytes)
        .into_iter()
        .chain([&recipe[..], BASE_CMDLINE.as_bytes()]);
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    for name in GUEST_BINARIES {
        let bytes = guest_binary(bin_dir, name)?;
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(&bytes);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex[..32].to_string())
}

/// Exclusive lock on the cache root for the duration of a build.
pub fn lock(root: &Path) -> Result<nix::fcntl::Flock<fs::File>, ImageError> {
    fs::create_dir_all(root).map_err(io_err(format!("creating {}", root.display())))?;
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join(".build.lock"))
        .map_err(io_err("opening the build lock"))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
        ImageError::Io {
            context: "locking the image cache".into(),
            source: e.into(),
        }
    })
}

fn link_or_copy(src: &Path, dst: &Path) -> Result<(), ImageError> {
    if fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    fs::copy(src, dst)
        .map(|_| ())
        .map_err(io_err(format!("copying {}", src.display())))
}

/// The initramfs: init, sandboxd, sandboxfs, modules, and the few nodes the kernel
/// needs before devtmpfs is mounted.
pub fn initramfs(bin_dir: &Path, modules: &Path) -> Result<Vec<u8>, ImageError> {
    let mut c = Cpio::new();
    for d in ["dev", "proc", "sys", "newroot", "bin", "lib", "lib/modules"] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.file("init", 0o755, &guest_binary(bin_dir, "init")?);
    c.file("bin/sandboxd", 0o755, &guest_binary(bin_dir, "sandboxd")?);
    c.file("bin/sandboxfs", 0o755, &guest_binary(bin_dir, "sandboxfs")?);
    let mut names: Vec<String> = fs::read_dir(modules)
        .map_err(io_err("listing the base modules"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for n in names {
        let data = fs::read(modules.join(&n)).map_err(io_err(format!("reading module {n}")))?;
        c.file(&format!("lib/modules/{n}"), 0o644, &data);
    }
    Ok(c.finish())
}

pub fn assemble(
    def: &Definition,
    base: &Base,
    bin_dir: &Path,
    id: &str,
    images: &Path,
    other: Option<OtherRootfs<'_>>,
) -> Result<ImageInfo, ImageError> {
    let tmp = images.join(format!(".tmp-{id}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let result = (|| {
        fs::write(tmp.join("initrd.img"), initramfs(bin_dir, &base.modules())?)
            .map_err(io_err("writing initrd.img"))?;
        link_or_copy(&base.kernel(), &tmp.join("vmlinuz"))?;
        let rootfs_sum = match &other {
            Some(o) => {
                link_or_copy(o.path, &tmp.join("rootfs.ext4"))?;
                sha256_file(o.path)?
            }
            None => {
                link_or_copy(&base.rootfs(), &tmp.join("rootfs.ext4"))?;
                base_rootfs_sha256(base)?
            }
        };
        let manifest = Manifest {
            build_id: id.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            created_at: iso8601_now(),
            kernel_version: base.kernel_version.clone(),
            cmdline: BASE_CMDLINE
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            assets: Assets {
                kernel: "vmlinuz".into(),
                initrd: "initrd.img".into(),
                rootfs: "rootfs.ext4".into(),
            },
            debian: other.is_none().then(|| DebianInfo {
                release: def.release.clone(),
                kernel_package: def.kernel_package.clone(),
                packages: def.packages.clone(),
            }),
            oci: other.as_ref().map(|o| o.oci.clone()),
            runtime_defaults: Some(RuntimeDefaults {
                rootfs_mode: def.runtime_defaults.rootfs_mode.clone(),
                env: def.env.entries(),
            }),
            sha256: Some(BTreeMap::from([
                ("vmlinuz".to_string(), sha256_file(&tmp.join("vmlinuz"))?),
                (
                    "initrd.img".to_string(),
                    sha256_file(&tmp.join("initrd.img"))?,
                ),
                ("rootfs.ext4".to_string(), rootfs_sum),
            ])),
        };
        let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes") + "\n";
        fs::write(tmp.join("manifest.json"), json).map_err(io_err("writing manifest.json"))
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dir = images.join(id);
    fs::rename(&tmp, &dir).map_err(io_err(format!("moving the image into {}", dir.display())))?;
    load(&dir)
}

fn asset(dir: &Path, rel: &str, what: &str) -> Result<PathBuf, ImageError> {
    let bad = |m: String| ImageError::InvalidImage {
        dir: dir.to_path_buf(),
        message: m,
    };
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(bad(format!(
            "assets.{what} must be a plain relative path (got {rel:?})"
        )));
    }
    let full = dir.join(p);
    let real = full
        .canonicalize()
        .map_err(|_| bad(format!("assets.{what}: {} is missing", full.display())))?;
    let real_dir = dir.canonicalize().map_err(|e| bad(e.to_string()))?;
    if !real.starts_with(&real_dir) {
        return Err(bad(format!(
            "assets.{what} resolves outside the image directory"
        )));
    }
    Ok(full)
}

pub fn load(dir: &Path) -> Result<ImageInfo, ImageError> {
    let bad = |m: String| ImageError::InvalidImage {
        dir: dir.to_path_buf(),
        message: m,
    };
    let text = fs::read_to_string(dir.join("manifest.json"))
        .map_err(|e| bad(format!("cannot read manifest.json: {e}")))?;
    let m: Manifest =
        serde_json::from_str(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
    if m.build_id.is_empty()
        || !m
            .build_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(bad(format!(
            "manifest.json: invalid buildId {:?}",
            m.build_id
        )));
    }
    Ok(ImageInfo {
        dir: dir.to_path_buf(),
        kernel: asset(dir, &m.assets.kernel, "kernel")?,
        initrd: asset(dir, &m.assets.initrd, "initrd")?,
        rootfs: asset(dir, &m.assets.rootfs, "rootfs")?,
        build_id: m.build_id,
        arch: m.arch,
        cmdline: m.cmdline,
        default_env: m
            .runtime_defaults
            .as_ref()
            .map(|r| r.env.clone())
            .unwrap_or_default(),
        default_rootfs_mode: m.runtime_defaults.and_then(|r| r.rootfs_mode),
    })
}

/// sha256 of a file, hex.
pub fn sha256_file(p: &Path) -> Result<String, ImageError> {
    let mut f = fs::File::open(p).map_err(io_err(format!("opening {}", p.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io_err(format!("reading {}", p.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The base's rootfs checksum, computed once per base (it is ~1 GB and
/// shared by every image assembled on it).
fn base_rootfs_sha256(base: &Base) -> Result<String, ImageError> {
    let cached = base.dir.join("rootfs.ext4.sha256");
    if let Ok(s) = fs::read_to_string(&cached) {
        return Ok(s.trim().to_string());
    }
    let sum = sha256_file(&base.rootfs())?;
    let _ = fs::write(&cached, format!("{sum}\n"));
    Ok(sum)
}

/// Check every asset of the image in `dir` against the manifest's
/// checksums (upstream `verifyAssets`). `Ok(list)` names the assets that
/// differ (empty: the image is intact).
pub fn verify(dir: &Path) -> Result<Vec<String>, ImageError> {
    load(dir)?;
    let text =
        fs::read_to_string(dir.join("manifest.json")).map_err(io_err("reading manifest.json"))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| ImageError::InvalidImage {
        dir: dir.to_path_buf(),
        message: format!("manifest.json: {e}"),
    })?;
    let sums = m.sha256.ok_or_else(|| ImageError::InvalidImage {
        dir: dir.to_path_buf(),
        message: "manifest.json has no sha256 checksums (built by an older version); rebuild it with `gondolin build`".into(),
    })?;
    let mut bad = Vec::new();
    for rel in [&m.assets.kernel, &m.assets.initrd, &m.assets.rootfs] {
        match sums.get(rel.as_str()) {
            Some(want) if *want == sha256_file(&dir.join(rel))? => {}
            _ => bad.push(rel.clone()),
        }
    }
    Ok(bad)
}

/// Copy a finished image to `out` (for `gondolin build --output`).
pub fn copy_to(info: &ImageInfo, out: &Path) -> Result<(), ImageError> {
    fs::create_dir_all(out).map_err(io_err(format!("creating {}", out.display())))?;
    for f in ["manifest.json", "vmlinuz", "initrd.img", "rootfs.ext4"] {
        fs::copy(info.dir.join(f), out.join(f)).map_err(io_err(format!("copying {f}")))?;
    }
    Ok(())
}

/// UTC now as `YYYY-MM-DDTHH:MM:SSZ`.
fn iso8601_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(raw: &str) -> Definition {
        Definition::parse(raw.as_bytes(), Path::new("d.json")).unwrap()
    }
    const D: &str = r#"{"release":"bookworm","mirror":"http://x/debian","kernelPackage":"k","modules":[],"packages":["bash"]}"#;

    #[test]
    fn build_id_is_stable_and_sensitive() {
        let t = std::env::temp_dir().join(format!("gondolin-img-test-{}", std::process::id()));
        fs::create_dir_all(&t).unwrap();
        fs::write(t.join("init"), b"init-v1").unwrap();
        fs::write(t.join("sandboxd"), b"sd-v1").unwrap();
        fs::write(t.join("sandboxfs"), b"fs-v1").unwrap();
        let a = build_id(&def(D), &t).unwrap();
        assert_eq!(a, build_id(&def(D), &t).unwrap());
        assert_eq!(a.len(), 32);
        fs::write(t.join("sandboxd"), b"sd-v2").unwrap();
        let b = build_id(&def(D), &t).unwrap();
        assert_ne!(a, b);
        assert_ne!(b, build_id(&def(&D.replace("bash", "zsh")), &t).unwrap());
        fs::remove_file(t.join("init")).unwrap();
        assert!(matches!(
            build_id(&def(D), &t),
            Err(ImageError::MissingGuestBinary(_))
        ));
        fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn manifest_asset_paths_must_stay_inside() {
        let t = std::env::temp_dir().join(format!("gondolin-img-m-{}", std::process::id()));
        fs::create_dir_all(&t).unwrap();
        for f in ["vmlinuz", "initrd.img", "rootfs.ext4"] {
            fs::write(t.join(f), b"x").unwrap();
        }
        let manifest = |k: &str| {
            format!(
                r#"{{"buildId":"abc","arch":"x86_64","createdAt":"","kernelVersion":"","cmdline":"c",
                "assets":{{"kernel":"{k}","initrd":"initrd.img","rootfs":"rootfs.ext4"}}}}"#
            )
        };
        fs::write(t.join("manifest.json"), manifest("vmlinuz")).unwrap();
        let info = load(&t).unwrap();
        assert_eq!(info.kernel, t.join("vmlinuz"));
        for evil in ["../etc/passwd", "/etc/passwd", "", "missing"] {
            fs::write(t.join("manifest.json"), manifest(evil)).unwrap();
            let e = load(&t).unwrap_err().to_string();
            assert!(e.contains("assets.kernel"), "{evil}: {e}");
        }
        std::os::unix::fs::symlink("/etc/passwd", t.join("escape")).unwrap();
        fs::write(t.join("manifest.json"), manifest("escape")).unwrap();
        assert!(load(&t).unwrap_err().to_string().contains("outside"));
        fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn iso_dates_look_right() {
        let s = iso8601_now();
        assert_eq!(s.len(), 20);
        assert!(s.starts_with("20") && s.ends_with('Z'));
    }
}

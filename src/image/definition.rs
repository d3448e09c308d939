//! The image definition file (images/debian-base.json; `gondolin build
//! --config FILE`): a Debian release and packages, plus upstream's build
//! config steps in its shape (`postBuild.copy`, `postBuild.commands`,
//! `env`, `runtimeDefaults.rootfsMode`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ImageError;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Definition {
    /// Debian release codename, e.g. "bookworm".
    pub release: String,
    pub mirror: String,
    /// Meta package naming the kernel flavour, e.g. "linux-image-cloud-amd64".
    pub kernel_package: String,
    /// Kernel modules to put in the initramfs and load at boot (with their
    /// dependencies), by module name.
    pub modules: Vec<String>,
    /// Packages added to mmdebstrap's minbase.
    pub packages: Vec<String>,
    /// Free space left in rootfs.ext4, MiB.
    #[serde(default = "default_extra")]
    #[serde(rename = "rootfsExtraMiB")]
    pub rootfs_extra_mib: u64,
    #[serde(default)]
    pub runtime_defaults: RuntimeDefaults,
    /// Steps after the packages are in, in the root filesystem.
    #[serde(default)]
    pub post_build: PostBuild,
    /// Environment every exec in the image's VMs starts with (a VM's own
    /// `env` and an exec's `env` override it). Upstream's `env`, as
    /// `["K=V", ...]` or `{ "K": "V" }`.
    #[serde(default)]
    pub env: Env,
    /// The file's bytes, hashed into the build ids.
    #[serde(skip)]
    pub raw: Vec<u8>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeDefaults {
    pub rootfs_mode: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostBuild {
    /// Host files copied in: `src` relative to the definition file (or
    /// absolute), `dest` an absolute guest path. Their bytes are inputs of
    /// the build id.
    #[serde(default)]
    pub copy: Vec<FileCopy>,
    /// Run in order with `sh -c` inside the root filesystem (after `copy`);
    /// apt works, the network is the build host's.
    #[serde(default)]
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCopy {
    pub src: PathBuf,
    pub dest: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(untagged)]
pub enum Env {
    #[default]
    None,
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

impl Env {
    /// `KEY=VALUE` entries, in order.
    pub fn entries(&self) -> Vec<String> {
        match self {
            Env::None => Vec::new(),
            Env::List(l) => l.clone(),
            Env::Map(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        }
    }
}

fn default_extra() -> u64 {
    512
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._:".contains(c))
        && !s.starts_with('-')
}

impl Definition {
    pub fn load(path: &Path) -> Result<Definition, ImageError> {
        let raw = std::fs::read(path).map_err(|e| ImageError::Definition {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&raw, path)
    }

    pub fn parse(raw: &[u8], path: &Path) -> Result<Definition, ImageError> {
        let bad = |message: String| ImageError::Definition {
            path: path.to_path_buf(),
            message,
        };
        let mut d: Definition = serde_json::from_slice(raw).map_err(|e| bad(e.to_string()))?;
        if !valid_name(&d.release) {
            return Err(bad(format!("release: invalid codename {:?}", d.release)));
        }
        if !(d.mirror.starts_with("http://") || d.mirror.starts_with("https://")) {
            return Err(bad(format!(
                "mirror: must be an http(s) URL (got {:?})",
                d.mirror
            )));
        }
        if !valid_name(&d.kernel_package) {
            return Err(bad(format!(
                "kernelPackage: invalid package name {:?}",
                d.kernel_package
            )));
        }
        if let Some(p) = d.packages.iter().find(|p| !valid_name(p)) {
            return Err(bad(format!("packages: invalid package name {p:?}")));
        }
        if let Some(m) = d.modules.iter().find(|m| !valid_name(m)) {
            return Err(bad(format!("modules: invalid module name {m:?}")));
        }
        if let Some(mode) = &d.runtime_defaults.rootfs_mode {
            if !["readonly", "memory", "cow"].contains(&mode.as_str()) {
                return Err(bad(format!(
                    "runtimeDefaults.rootfsMode: unsupported mode {mode:?}"
                )));
            }
        }
        for e in d.env.entries() {
            let key = e.split_once('=').map(|(k, _)| k).unwrap_or("");
            if key.is_empty() || key.contains('\0') || e.contains('\0') {
                return Err(bad(format!("env: expected KEY=VALUE (got {e:?})")));
            }
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for f in &mut d.post_build.copy {
            let dest_ok = f.dest.is_absolute()
                && f.dest
                    .components()
                    .skip(1)
                    .all(|c| matches!(c, Component::Normal(_)))
                && f.dest.components().count() > 1;
            if !dest_ok {
                return Err(bad(format!(
                    "postBuild.copy dest must be an absolute path below / without '..' (got {:?})",
                    f.dest
                )));
            }
            f.src = base.join(&f.src);
            if !f.src.is_file() {
                return Err(bad(format!(
                    "postBuild.copy src {} is not a file",
                    f.src.display()
                )));
            }
        }
        d.raw = raw.to_vec();
        d.path = path.to_path_buf();
        Ok(d)
    }

    /// What decides the root filesystem: the file's bytes and the bytes of
    /// every file it copies in (so editing a copied file is a new build).
    pub fn inputs_hash(&self) -> Result<Vec<u8>, ImageError> {
        let mut h = Sha256::new();
        h.update((self.raw.len() as u64).to_be_bytes());
        h.update(&self.raw);
        for f in &self.post_build.copy {
            let bytes = std::fs::read(&f.src).map_err(|e| ImageError::Definition {
                path: self.path.clone(),
                message: format!("postBuild.copy: reading {}: {e}", f.src.display()),
            })?;
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(&bytes);
        }
        Ok(h.finalize().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"release":"bookworm","mirror":"http://deb.debian.org/debian",
        "kernelPackage":"linux-image-cloud-amd64","modules":["virtio_pci"],"packages":["bash"]}"#;

    #[test]
    fn parses_and_defaults() {
        let d = Definition::parse(GOOD.as_bytes(), Path::new("x.json")).unwrap();
        assert_eq!(d.rootfs_extra_mib, 512);
        assert_eq!(d.packages, ["bash"]);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (GOOD.replace("bookworm", "book worm"), "release"),
            (GOOD.replace("http://deb", "ftp://deb"), "mirror"),
            (GOOD.replace("\"bash\"", "\"--evil\""), "packages"),
            (GOOD.replace("\"virtio_pci\"", "\"a/b\""), "modules"),
            (GOOD.replace("\"release\"", "\"relase\""), "relase"),
        ];
        for (json, field) in cases {
            let e = Definition::parse(json.as_bytes(), Path::new("x.json"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{e}");
            assert!(e.starts_with("image definition x.json:"), "{e}");
        }
    }
}

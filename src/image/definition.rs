//! The image definition file (images/debian-base.json; `gondolin build
//! --config FILE`): a Debian release and packages, plus upstream's build
//! config steps in its shape (`postBuild.copy`, `postBuild.commands`,
//! `env`, `runtimeDefaults.rootfsMode`, `oci`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ocirootfs::{self, Platform, PullPolicy, Source};
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
    /// Upstream's `oci`: the root filesystem from a container image
    /// instead of mmdebstrap (the rest of the definition still gives the
    /// kernel, modules, `env`, `runtimeDefaults` and `rootfsExtraMiB`).
    #[serde(default)]
    pub oci: Option<OciConfig>,
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

/// Upstream's `OciRootfsConfig` (`oci` in the build config).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OciConfig {
    /// A registry reference (`HOST[:PORT]/REPO[:TAG][@sha256:...]`, Docker
    /// Hub names as docker spells them), or (our extension) an OCI layout:
    /// `oci-layout:PATH[:TAG]` or a directory holding `oci-layout`, relative
    /// to the definition file.
    pub image: String,
    /// Upstream's `docker` | `podman`: accepted and not used (we pull with
    /// our own registry client; no container runtime is needed).
    #[serde(default)]
    pub runtime: Option<String>,
    /// `linux/amd64` | `linux/arm64` (this machine's; default it).
    #[serde(default)]
    pub platform: Option<String>,
    /// `if-not-present` (default) | `always` | `never`.
    #[serde(default)]
    pub pull_policy: PullPolicy,
}

impl OciConfig {
    /// The image source, relative paths taken from the definition's directory.
    pub fn source(&self, def_path: &Path) -> Source {
        ocirootfs::parse_source_in(&self.image, def_path.parent().unwrap_or(Path::new(".")))
    }

    pub fn platform(&self) -> Platform {
        self.platform
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(Platform::host)
    }
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
        let mut d: Definition =
            serde_json::from_slice(raw).map_err(|e| bad(with_suggestion(e.to_string())))?;
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
        if let Some(oci) = &d.oci {
            if oci.image.trim().is_empty() {
                return Err(bad(
                    "oci.image: expected an image reference or an OCI layout directory".into(),
                ));
            }
            if let Some(p) = &oci.platform {
                p.parse::<Platform>()
                    .map_err(|e| bad(format!("oci.platform: {e}")))?;
            }
            if let Some(r) = &oci.runtime {
                if r != "docker" && r != "podman" {
                    return Err(bad(format!(
                        "oci.runtime: expected \"docker\" or \"podman\" (got {r:?}; it is not used: images are pulled without a container runtime)"
                    )));
                }
            }
            if let Source::Registry(r) = oci.source(path) {
                super::oci::parse_reference(&r).map_err(|e| {
                    bad(format!(
                        "oci.image: {r:?} is neither an OCI layout directory nor a registry reference: {e}"
                    ))
                })?;
            }
            if !d.post_build.copy.is_empty() || !d.post_build.commands.is_empty() {
                return Err(bad(
                    "postBuild is not supported with oci yet (it would run in the Debian base, not in the OCI rootfs); bake those steps into the container image".into(),
                ));
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

    /// The definition as hashed into build ids: the file's bytes, or with
    /// an `oci` key the document without it (canonical JSON), so that the
    /// Debian kernel base does not depend on which OCI image is used (the
    /// image id gets the image's manifest digest instead).
    pub fn recipe_bytes(&self) -> Vec<u8> {
        if self.oci.is_none() {
            return self.raw.clone();
        }
        let mut v: serde_json::Value =
            serde_json::from_slice(&self.raw).expect("parsed once already");
        if let Some(m) = v.as_object_mut() {
            m.remove("oci");
        }
        serde_json::to_vec(&v).expect("JSON serializes")
    }

    /// What decides the root filesystem: the recipe bytes and the bytes of
    /// every file it copies in (so editing a copied file is a new build).
    pub fn inputs_hash(&self) -> Result<Vec<u8>, ImageError> {
        let mut h = Sha256::new();
        let raw = self.recipe_bytes();
        h.update((raw.len() as u64).to_be_bytes());
        h.update(&raw);
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

/// serde's "unknown field `x`, expected one of `a`, `b`" plus the nearest
/// valid name, if one is close.
fn with_suggestion(msg: String) -> String {
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return msg;
    };
    let Some((field, rest)) = rest.split_once('`') else {
        return msg;
    };
    let candidates = rest.split('`').skip(1).step_by(2);
    let best = candidates
        .map(|c| {
            (
                strsim::levenshtein(&field.to_lowercase(), &c.to_lowercase()),
                c,
            )
        })
        .min();
    match best {
        Some((d, c)) if d <= 3.max(field.len() / 3) => format!("{msg} (did you mean `{c}`?)"),
        _ => msg,
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

    #[test]
    fn oci_source_shape_is_upstreams() {
        let with = |oci: &str| GOOD.replacen('{', &format!("{{\"oci\":{oci},"), 1);
        let d = Definition::parse(
            with(r#"{"image":"127.0.0.1:5000/py:slim","pullPolicy":"never","runtime":"docker"}"#)
                .as_bytes(),
            Path::new("/cfg/x.json"),
        )
        .unwrap();
        let oci = d.oci.as_ref().unwrap();
        assert_eq!(oci.pull_policy, PullPolicy::Never);
        assert_eq!(oci.platform(), Platform::host());
        assert_eq!(
            oci.source(&d.path),
            Source::Registry("127.0.0.1:5000/py:slim".into())
        );
        // A layout path is the definition's directory's.
        let d = Definition::parse(
            with(r#"{"image":"oci-layout:img:slim"}"#).as_bytes(),
            Path::new("/cfg/x.json"),
        )
        .unwrap();
        assert_eq!(
            d.oci.unwrap().source(Path::new("/cfg/x.json")),
            Source::Layout {
                dir: "/cfg/img".into(),
                tag: Some("slim".into())
            }
        );
        let cases = [
            (
                r#"{"image":"x/y","pulPolicy":"never"}"#,
                "did you mean `pullPolicy`?",
            ),
            (
                r#"{"image":"x/y","pullPolicy":"sometimes"}"#,
                "`if-not-present`, `always`, `never`",
            ),
            (
                r#"{"image":"x/y","platform":"linux/s390x"}"#,
                "oci.platform: linux/s390x cannot boot here",
            ),
            (
                r#"{"image":"x/y","platform":"amd64"}"#,
                "oci.platform: expected OS/ARCH",
            ),
            (r#"{"image":"x/y","runtime":"lxc"}"#, "oci.runtime"),
            (r#"{"image":"Not A Ref!"}"#, "oci.image"),
            (r#""127.0.0.1:5000/py:slim""#, "expected struct OciConfig"),
        ];
        for (oci, want) in cases {
            let e = Definition::parse(with(oci).as_bytes(), Path::new("x.json"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{oci}: {e}");
        }
        let e = Definition::parse(
            with(r#"{"image":"x/y"}"#)
                .replacen(
                    "\"packages\"",
                    "\"postBuild\":{\"commands\":[\"true\"]},\"packages\"",
                    1,
                )
                .as_bytes(),
            Path::new("x.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("postBuild is not supported with oci"), "{e}");
    }

    #[test]
    fn the_oci_image_is_not_part_of_the_recipe() {
        let plain = Definition::parse(GOOD.as_bytes(), Path::new("x.json")).unwrap();
        assert_eq!(
            plain.recipe_bytes(),
            GOOD.as_bytes(),
            "unchanged without oci"
        );
        let a = GOOD.replacen('{', r#"{"oci":{"image":"r:1/a:1"},"#, 1);
        let b = GOOD.replacen(
            '{',
            r#"{"oci":{"image":"r:1/b:2","pullPolicy":"always"},"#,
            1,
        );
        let a = Definition::parse(a.as_bytes(), Path::new("x.json")).unwrap();
        let b = Definition::parse(b.as_bytes(), Path::new("x.json")).unwrap();
        assert_eq!(a.inputs_hash().unwrap(), b.inputs_hash().unwrap());
        assert_ne!(a.inputs_hash().unwrap(), plain.inputs_hash().unwrap());
    }

    #[test]
    fn unknown_keys_name_the_nearest() {
        let e = Definition::parse(
            GOOD.replace("\"packages\"", "\"pakages\"").as_bytes(),
            Path::new("x.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("did you mean `packages`?"), "{e}");
        let e = Definition::parse(
            GOOD.replacen('{', r#"{"zzzzzzzzzz":1,"#, 1).as_bytes(),
            Path::new("x.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("did you mean"), "{e}");
    }
}

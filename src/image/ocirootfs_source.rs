//! Where an OCI rootfs comes from: a layout directory, or a registry
//! reference fetched with our registry client (`oci::fetch_to_layout`) into
//! the local OCI cache `<image store>/.oci-cache` (itself an OCI image
//! layout, one `index.json` entry per reference and platform), then read
//! like any layout. `pullPolicy` (upstream's `oci.pullPolicy`) decides
//! whether the cache is used as is or the registry is asked again.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{step, Resolved};
use crate::image::oci::{self, Progress, RegistryOptions};
use crate::image::{io_err, ImageError};

/// The annotation naming an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The local OCI cache, in the image store.
pub const CACHE_DIR: &str = ".oci-cache";

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Layout { dir: PathBuf, tag: Option<String> },
    Registry(String),
}

/// `oci-layout:PATH[:TAG]`, an existing directory holding `oci-layout`,
/// else a registry reference. Relative paths are taken from `base`.
pub fn parse_source_in(s: &str, base: &Path) -> Source {
    if let Some(rest) = s.strip_prefix("oci-layout:") {
        // PATH:TAG when the part after the last ':' is not a path.
        if let Some((p, t)) = rest.rsplit_once(':') {
            if !t.is_empty() && !t.contains('/') && !base.join(rest).exists() {
                return Source::Layout {
                    dir: base.join(p),
                    tag: Some(t.into()),
                };
            }
        }
        return Source::Layout {
            dir: base.join(rest),
            tag: None,
        };
    }
    if base.join(s).join("oci-layout").is_file() {
        return Source::Layout {
            dir: base.join(s),
            tag: None,
        };
    }
    Source::Registry(s.to_string())
}

/// [`parse_source_in`] from the current directory.
pub fn parse_source(s: &str) -> Source {
    parse_source_in(s, Path::new(""))
}

/// An OCI platform, `os/architecture[/variant]` with OCI's names
/// (`linux/amd64`, `linux/arm64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// linux/<this machine's architecture>: the only kind our kernel boots.
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: host_arch().into(),
            variant: None,
        }
    }

    /// Whether an index entry's platform is this one (a variant is only
    /// compared when this one names it).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    /// `os/arch[/variant]`; the OS must be linux and the architecture this
    /// machine's (the kernel is the definition's, for this machine).
    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 32
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(format!(
                "expected OS/ARCH[/VARIANT] such as linux/{} (got {s:?})",
                host_arch()
            ));
        }
        let p = Platform {
            os: parts[0].into(),
            architecture: parts[1].into(),
            variant: parts.get(2).map(|v| v.to_string()),
        };
        if p.os != "linux" || p.architecture != host_arch() {
            return Err(format!(
                "{p} cannot boot here: the kernel comes from kernelPackage for this machine, so the image must be linux/{} (cross-arch builds are not supported)",
                host_arch()
            ));
        }
        Ok(p)
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// Upstream's `oci.pullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Use the local copy when there is one, else pull (the default).
    #[default]
    IfNotPresent,
    /// Ask the registry every build (blobs already here are not fetched
    /// again): a tag that moved gives a new image.
    Always,
    /// Never contact a registry; without a local copy the build fails.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<PullPolicy, String> {
        match s {
            "if-not-present" => Ok(PullPolicy::IfNotPresent),
            "always" => Ok(PullPolicy::Always),
            "never" => Ok(PullPolicy::Never),
            _ => Err(format!(
                "pull policy must be \"if-not-present\", \"always\" or \"never\" (got {s:?})"
            )),
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Largest JSON document (index, manifest) read from a layout.
const MAX_JSON: u64 = 4 << 20;

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            step(
                "reading the OCI layout",
                format!("unsupported digest {digest:?}"),
            )
        })?;
    Ok(dir.join("blobs/sha256").join(hex.to_ascii_lowercase()))
}

/// sha256 of the file at `p` must be `digest`.
fn verify_blob(p: &Path, digest: &str) -> Result<(), ImageError> {
    let mut f = fs::File::open(p).map_err(io_err(format!("opening blob {digest}")))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_err(format!("reading blob {digest}")))?;
    let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if format!("sha256:{got}") != digest.to_ascii_lowercase() {
        return Err(step(
            "verifying the OCI image",
            format!("blob {digest} has sha256:{got}"),
        ));
    }
    Ok(())
}

fn read_json_blob(dir: &Path, digest: &str) -> Result<Index, ImageError> {
    let p = blob_path(dir, digest)?;
    verify_blob(&p, digest)?;
    read_json(&p)
}

fn read_json(p: &Path) -> Result<Index, ImageError> {
    let f = fs::File::open(p).map_err(io_err(format!("opening {}", p.display())))?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON)
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("reading {}", p.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| step("reading the OCI layout", format!("{}: {e}", p.display())))
}

fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

/// The `index.json` entries named `tag` (all when None) that are for
/// `platform` or say nothing of theirs (umoci's and skopeo's single-image
/// layouts do not).
fn pick<'a>(index: &'a Index, tag: Option<&str>, platform: &Platform) -> Vec<&'a Descriptor> {
    index
        .manifests
        .iter()
        .filter(|d| tag.is_none() || d.annotations.get(REF_NAME).map(String::as_str) == tag)
        .filter(|d| d.platform.as_ref().is_none_or(|p| platform.matches(p)))
        .collect()
}

/// Resolve `tag` (or the only image) in the layout at `dir` to a manifest
/// for `platform` and its layers, every blob checked against its sha256.
pub fn resolve_layout(
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<Resolved, ImageError> {
    if !dir.join("oci-layout").is_file() {
        return Err(step(
            "reading the OCI layout",
            format!("{} has no oci-layout file", dir.display()),
        ));
    }
    let index = read_json(&dir.join("index.json"))?;
    let mut found = pick(&index, tag, platform);
    if found.len() != 1 {
        return Err(step(
            "reading the OCI layout",
            format!(
                "{} has {} {platform} images{}; name one with oci-layout:PATH:TAG",
                dir.display(),
                found.len(),
                tag.map(|t| format!(" tagged {t}")).unwrap_or_default()
            ),
        ));
    }
    let desc = found.remove(0);
    let doc = read_json_blob(dir, &desc.digest)?;
    if !(is_index(&desc.media_type) || is_index(&doc.media_type)) {
        return finish(dir, desc.digest.clone(), doc);
    }
    let d = doc
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .ok_or_else(|| {
            step(
                "reading the OCI image",
                format!("no {platform} image in the index"),
            )
        })?;
    let m = read_json_blob(dir, &d.digest)?;
    if is_index(&d.media_type) || is_index(&m.media_type) {
        return Err(step("reading the OCI image", "nested image index"));
    }
    finish(dir, d.digest.clone(), m)
}

fn finish(dir: &Path, digest: String, doc: Index) -> Result<Resolved, ImageError> {
    let layers = doc
        .layers
        .ok_or_else(|| {
            step(
                "reading the OCI image",
                format!("manifest {digest} has no layers"),
            )
        })?
        .into_iter()
        .map(|l| Ok((blob_path(dir, &l.digest)?, l.media_type, l.digest)))
        .collect::<Result<Vec<_>, ImageError>>()?;
    for (p, mt, d) in &layers {
        if !oci::is_layer_media_type(mt) {
            return Err(step(
                "reading the OCI image",
                format!("layer {d} has media type {mt:?}: not a container image layer"),
            ));
        }
        verify_blob(p, d)?;
    }
    Ok(Resolved {
        digest,
        layers: layers.into_iter().map(|(p, m, _)| (p, m)).collect(),
    })
}

/// The cached copy of registry image `key` for `platform`, if the cache
/// names one.
fn cached(cache: &Path, key: &str, platform: &Platform) -> Option<Result<Resolved, ImageError>> {
    let index = read_json(&cache.join("index.json")).ok()?;
    if pick(&index, Some(key), platform).len() != 1 {
        return None;
    }
    Some(resolve_layout(cache, Some(key), platform))
}

/// How to get the image: the platform, the pull policy, the registry
/// options (auth, plain HTTP) and the image store holding the OCI cache.
pub struct Fetch<'a> {
    pub platform: &'a Platform,
    pub policy: PullPolicy,
    pub registry: &'a RegistryOptions,
    pub store: &'a Path,
}

/// Resolve `source`: a layout as it is; a registry image from the OCI
/// cache or the registry, as `fetch.policy` says.
pub fn resolve(
    source: &Source,
    fetch: &Fetch,
    progress: &mut dyn FnMut(&str),
) -> Result<Resolved, ImageError> {
    let reference = match source {
        Source::Layout { dir, tag } => return resolve_layout(dir, tag.as_deref(), fetch.platform),
        Source::Registry(r) => r,
    };
    let key = oci::parse_reference(reference)?.whole();
    let cache = fetch.store.join(CACHE_DIR);
    if fetch.policy != PullPolicy::Always {
        match cached(&cache, &key, fetch.platform) {
            Some(Ok(r)) => {
                progress(&format!("using the local copy of {key} ({})", r.digest));
                return Ok(r);
            }
            Some(Err(e)) if fetch.policy == PullPolicy::Never => return Err(e),
            Some(Err(e)) => progress(&format!("the local copy of {key} is unusable ({e}); pulling it again")),
            None if fetch.policy == PullPolicy::Never => {
                return Err(step(
                    "resolving the OCI image",
                    format!(
                        "the pull policy is \"never\" (oci.pullPolicy, --oci-pull-policy) and {key} ({}) is not in the local OCI cache {}; pull it once with \"if-not-present\" or \"always\"",
                        fetch.platform,
                        cache.display()
                    ),
                ))
            }
            None => {}
        }
    }
    progress(&format!(
        "pulling {key} ({}) from its registry",
        fetch.platform
    ));
    let (digest, key) = fetch_blocking(reference, fetch, &cache, progress)?;
    let r = resolve_layout(&cache, Some(&key), fetch.platform)?;
    debug_assert_eq!(r.digest, digest);
    Ok(r)
}

/// Run the async fetch on a thread of its own (the build is synchronous
/// and may already be on a runtime's blocking thread), forwarding its
/// progress every two seconds as a line.
fn fetch_blocking(
    reference: &str,
    fetch: &Fetch,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(String, String), ImageError> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let platform = fetch.platform.clone();
    let registry = fetch.registry.clone();
    std::thread::scope(|s| {
        let job = s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io_err("starting the registry client"))?;
            let mut last: Option<std::time::Instant> = None;
            let report: oci::ProgressFn = Box::new(move |p: Progress| {
                let done = p.done >= p.total;
                if !done && last.is_some_and(|t| t.elapsed().as_secs() < 2) {
                    return;
                }
                last = Some(std::time::Instant::now());
                let mib = |b: u64| b as f64 / (1 << 20) as f64;
                let _ = tx.send(format!(
                    "  downloaded {:.1} of {:.1} MiB ({:.1} MiB/s)",
                    mib(p.done),
                    mib(p.total),
                    p.rate / (1 << 20) as f64
                ));
            });
            rt.block_on(oci::fetch_to_layout(
                reference, &platform, cache, &registry, report,
            ))
        });
        for line in rx {
            progress(&line);
        }
        job.join().unwrap_or_else(|_| {
            Err(step(
                "pulling the OCI image",
                "the registry client panicked",
            ))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, bytes: &[u8]) -> String {
        let hex: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    /// A layout with `entries` (ref name, platform) each pointing at a
    /// one-layer manifest of its own.
    fn layout(dir: &Path, entries: &[(&str, &str)]) -> Vec<String> {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let mut digests = Vec::new();
        let mut manifests = Vec::new();
        for (i, (name, platform)) in entries.iter().enumerate() {
            let layer = put(dir, format!("not really a tar {i}").as_bytes());
            let m = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1}],
            });
            let d = put(dir, &serde_json::to_vec(&m).unwrap());
            let p: Platform = {
                let (os, arch) = platform.split_once('/').unwrap();
                Platform {
                    os: os.into(),
                    architecture: arch.into(),
                    variant: None,
                }
            };
            manifests.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d, "size": 1, "platform": p,
                "annotations": {REF_NAME: name},
            }));
            digests.push(d);
        }
        fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": manifests}))
                .unwrap(),
        )
        .unwrap();
        digests
    }

    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn one_name_several_platforms_and_the_never_policy() {
        let store = std::env::temp_dir().join(format!("gondolin-ocisrc-{}", std::process::id()));
        let _rm = Rm(store.clone());
        let cache = store.join(CACHE_DIR);
        let host = Platform::host();
        let other = if host.architecture == "amd64" {
            "linux/arm64"
        } else {
            "linux/amd64"
        };
        let d = layout(
            &cache,
            &[
                ("r.example:5000/a:1", other),
                ("r.example:5000/a:1", &host.to_string()),
                ("r.example:5000/b:1", other),
            ],
        );
        let got = resolve_layout(&cache, Some("r.example:5000/a:1"), &host).unwrap();
        assert_eq!(got.digest, d[1], "the host platform's entry");
        let registry = RegistryOptions::default();
        let fetch = Fetch {
            platform: &host,
            policy: PullPolicy::Never,
            registry: &registry,
            store: &store,
        };
        let mut lines = Vec::new();
        let src = Source::Registry("r.example:5000/a:1".into());
        let got = resolve(&src, &fetch, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(got.digest, d[1]);
        assert!(
            lines[0].starts_with("using the local copy of r.example:5000/a:1"),
            "{lines:?}"
        );
        // Only another platform's copy: never → the error names the option.
        let src = Source::Registry("r.example:5000/b:1".into());
        let e = resolve(&src, &fetch, &mut |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("pull policy is \"never\" (oci.pullPolicy"),
            "{e}"
        );
        // A tampered cached layer is refused under never.
        let src = Source::Registry("r.example:5000/a:1".into());
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(blob_path(&cache, &d[1]).unwrap()).unwrap()).unwrap();
        let layer = blob_path(&cache, m["layers"][0]["digest"].as_str().unwrap()).unwrap();
        fs::write(&layer, b"tampered").unwrap();
        let e = resolve(&src, &fetch, &mut |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("has sha256:"), "{e}");
    }

    #[test]
    fn platforms_parse_for_this_machine_only() {
        let host = Platform::host();
        assert_eq!(host.to_string().parse::<Platform>().unwrap(), host);
        assert!("linux".parse::<Platform>().is_err());
        assert!("windows/amd64".parse::<Platform>().is_err());
        assert!("linux/amd64/v8/x".parse::<Platform>().is_err());
        let v = Platform {
            variant: Some("v8".into()),
            ..host.clone()
        };
        assert!(host.matches(&v), "no variant asked: any");
        assert!(!v.matches(&host));
        assert_eq!("never".parse::<PullPolicy>().unwrap(), PullPolicy::Never);
        assert!("sometimes".parse::<PullPolicy>().is_err());
    }
}

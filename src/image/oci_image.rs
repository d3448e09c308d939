//! Container images (not our artifacts) from a registry into a local OCI
//! image layout: the registry half of `gondolin build --from-oci REF`
//! (ocirootfs.rs applies the layers).
//!
//! The same client, reference parsing, plain-HTTP rule and docker-config
//! auth as our own pull and push. The manifest is fetched (an image index
//! or Docker manifest list is resolved to the manifest for the wanted
//! platform, fetched by digest), both are bounded to 1 MiB and checked
//! against their sha256. The config and layer blobs stream through
//! `oci_pull::fetch_blob` into `<layout>/.partial/<hex>` (size bounded by
//! the descriptor, sha256 computed while streaming, a cut transfer kept
//! and resumed by the next run, a bad blob deleted and refused) and are
//! renamed into `<layout>/blobs/sha256/`. Blobs the layout already holds
//! and that still hash right are not fetched again. Finally `index.json`
//! gets one entry per (reference, platform): the platform manifest's
//! descriptor with `org.opencontainers.image.ref.name` = the full
//! reference. All of it under the layout's lock.

use serde::Deserialize;

use super::super::ocirootfs::{Platform, REF_NAME};
use super::*;
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
};

const ACCEPT: &[&str] = &[
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
];
/// Image config blobs (JSON with the history) are small; bound them anyway.
const MAX_IMAGE_CONFIG_BYTES: i64 = 8 << 20;
/// Largest `index.json` of the local layout we rewrite.
const MAX_INDEX_BYTES: u64 = 16 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Doc {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
    #[serde(default)]
    config: Option<OciDescriptor>,
    #[serde(default)]
    layers: Option<Vec<OciDescriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

impl Doc {
    fn is_index(&self) -> bool {
        match self.media_type.as_deref() {
            Some(t) => t == OCI_IMAGE_INDEX_MEDIA_TYPE || t == IMAGE_MANIFEST_LIST_MEDIA_TYPE,
            None => self.manifests.is_some() && self.layers.is_none(),
        }
    }
}

/// A layer we can apply: tar, tar+gzip or tar+zstd, OCI or Docker names.
pub fn is_layer_media_type(t: &str) -> bool {
    matches!(
        t,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

async fn fetch_manifest(
    client: &Client,
    r: &Reference,
    auth: &RegistryAuth,
    reference: &str,
    want_digest: Option<&str>,
) -> Result<(bytes::Bytes, String, Doc), ImageError> {
    let (body, _) = client
        .pull_manifest_raw(r, auth, ACCEPT)
        .await
        .map_err(|e| match e {
            oci_client::errors::OciDistributionError::ImageManifestNotFoundError(_) => {
                ImageError::NotInRegistry(reference.to_string())
            }
            oci_client::errors::OciDistributionError::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        oci_client::errors::OciErrorCode::ManifestUnknown
                            | oci_client::errors::OciErrorCode::NameUnknown
                    )
                }) =>
            {
                ImageError::NotInRegistry(reference.to_string())
            }
            e => reg_err(reference, format!("fetching the manifest: {e}")),
        })?;
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(invalid(reference, "manifest larger than 1 MiB"));
    }
    let digest = sha256_digest(&body);
    if let Some(d) = want_digest {
        if d != digest {
            return Err(invalid(
                reference,
                format!("manifest hashes to {digest}, not {d} (corrupt or tampered with in the registry); refused"),
            ));
        }
    }
    let doc: Doc = serde_json::from_slice(&body)
        .map_err(|e| invalid(reference, format!("manifest is not an OCI manifest: {e}")))?;
    Ok((body, digest, doc))
}

fn check_blob(reference: &str, d: &OciDescriptor, max: i64, what: &str) -> Result<(), ImageError> {
    digest_hex(reference, &d.digest)?;
    if d.size <= 0 || d.size > max {
        return Err(invalid(
            reference,
            format!("{what} {} size {} out of range", d.digest, d.size),
        ));
    }
    Ok(())
}

/// Whether `path` holds exactly the blob `d` (size, then sha256).
fn have_blob(path: &Path, d: &OciDescriptor) -> bool {
    if fs::metadata(path).map(|m| m.len()).ok() != Some(d.size as u64) {
        return false;
    }
    let Ok(mut f) = fs::File::open(path) else {
        return false;
    };
    let mut h = Sha256::new();
    if std::io::copy(&mut f, &mut h).is_err() {
        return false;
    }
    format!("sha256:{}", hex(&h.finalize())) == d.digest
}

/// Fetch `reference` for `platform` into the OCI layout `layout` (created
/// if missing). Returns the platform manifest's digest and the key it is
/// recorded under in `index.json` (the full reference).
pub async fn fetch_to_layout(
    reference: &str,
    platform: &Platform,
    layout: &Path,
    opts: &RegistryOptions,
    mut progress: ProgressFn,
) -> Result<(String, String), ImageError> {
    let r = parse_reference(reference)?;
    let key = r.whole();
    let auth = auth_for(&r, opts)?;
    let client = client(&r, opts);
    let (mut body, mut digest, mut doc) =
        fetch_manifest(&client, &r, &auth, reference, r.digest()).await?;
    if doc.is_index() {
        let entries = doc.manifests.take().unwrap_or_default();
        let pick = entries
            .iter()
            .find(|e| e.platform.as_ref().is_some_and(|p| platform.matches(p)))
            .ok_or_else(|| {
                let have: Vec<String> = entries
                    .iter()
                    .filter_map(|e| e.platform.as_ref().map(Platform::to_string))
                    .collect();
                invalid(
                    reference,
                    format!(
                        "the image index has no {platform} image (it has: {})",
                        if have.is_empty() {
                            "none".into()
                        } else {
                            have.join(", ")
                        }
                    ),
                )
            })?;
        digest_hex(reference, &pick.digest)?;
        if pick.size > MAX_MANIFEST_BYTES as i64
            || pick.media_type == OCI_IMAGE_INDEX_MEDIA_TYPE
            || pick.media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE
        {
            return Err(invalid(
                reference,
                format!(
                    "the index's {platform} entry is not a manifest of at most 1 MiB ({}, {} bytes)",
                    pick.media_type, pick.size
                ),
            ));
        }
        let by_digest = r.clone_with_digest(pick.digest.clone());
        (body, digest, doc) =
            fetch_manifest(&client, &by_digest, &auth, reference, Some(&pick.digest)).await?;
        if doc.is_index() {
            return Err(invalid(reference, "nested image index"));
        }
    }
    let media_type = doc
        .media_type
        .clone()
        .unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_string());
    if media_type != OCI_IMAGE_MEDIA_TYPE && media_type != IMAGE_MANIFEST_MEDIA_TYPE {
        return Err(invalid(
            reference,
            format!("unsupported manifest media type {media_type:?}"),
        ));
    }
    let config = doc
        .config
        .take()
        .ok_or_else(|| invalid(reference, "the manifest has no config"))?;
    check_blob(reference, &config, MAX_IMAGE_CONFIG_BYTES, "config blob")?;
    let layers = doc.layers.take().unwrap_or_default();
    if layers.is_empty() {
        return Err(invalid(reference, "the manifest has no layers"));
    }
    for l in &layers {
        if !is_layer_media_type(&l.media_type) {
            return Err(invalid(
                reference,
                format!(
                    "layer {} has media type {:?}: not a container image layer (tar, tar+gzip or tar+zstd)",
                    l.digest, l.media_type
                ),
            ));
        }
        check_blob(reference, l, MAX_BLOB_BYTES, "layer")?;
    }

    let _lock = lock_store(layout)?;
    let blobs = layout.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err(format!("creating {}", blobs.display())))?;
    let oci_layout = layout.join("oci-layout");
    if !oci_layout.is_file() {
        fs::write(&oci_layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_err(format!("writing {}", oci_layout.display())))?;
    }
    let partial = layout.join(".partial");
    fs::create_dir_all(&partial).map_err(io_err(format!("creating {}", partial.display())))?;
    let mut wanted = Vec::new();
    for d in std::iter::once(&config).chain(&layers) {
        let dest = blobs.join(digest_hex(reference, &d.digest)?);
        if !wanted
            .iter()
            .any(|(w, _): &(&OciDescriptor, PathBuf)| w.digest == d.digest)
            && !have_blob(&dest, d)
        {
            wanted.push((d, dest));
        }
    }
    let total: u64 = wanted.iter().map(|(d, _)| d.size as u64).sum();
    let mut have = 0;
    for (d, _) in &wanted {
        have += fs::metadata(partial.join(digest_hex(reference, &d.digest)?))
            .map(|m| m.len().min(d.size as u64))
            .unwrap_or(0);
    }
    {
        let mut meter = Meter::resumed("download", total, have, &mut progress);
        for (d, dest) in &wanted {
            let got =
                pull::fetch_blob(&client, &r, reference, d, &partial, &mut meter, None).await?;
            fs::rename(&got, dest).map_err(io_err(format!("moving blob {}", d.digest)))?;
        }
        meter.finish();
    }
    let _ = fs::remove_dir(&partial);
    let manifest_blob = blobs.join(digest_hex(reference, &digest)?);
    write_atomic(&manifest_blob, &body)?;
    record(layout, &key, platform, &media_type, &digest, body.len())?;
    Ok((digest, key))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("writing {}", path.display())))
}

/// Point the layout's `index.json` entry for (`key`, `platform`) at `digest`.
fn record(
    layout: &Path,
    key: &str,
    platform: &Platform,
    media_type: &str,
    digest: &str,
    size: usize,
) -> Result<(), ImageError> {
    let path = layout.join("index.json");
    let mut index: serde_json::Value = match fs::File::open(&path) {
        Ok(f) => {
            let mut bytes = Vec::new();
            f.take(MAX_INDEX_BYTES)
                .read_to_end(&mut bytes)
                .map_err(io_err(format!("reading {}", path.display())))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| invalid(&path.display().to_string(), format!("index.json: {e}")))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
            "manifests": [],
        }),
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    };
    let entry = serde_json::json!({
        "mediaType": media_type,
        "digest": digest,
        "size": size,
        "platform": platform,
        "annotations": { REF_NAME: key },
    });
    let list = index
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| invalid(&path.display().to_string(), "index.json has no manifests"))?;
    list.retain(|e| {
        let same_ref = e["annotations"][REF_NAME].as_str() == Some(key);
        let same_platform =
            serde_json::from_value::<Platform>(e["platform"].clone()).is_ok_and(|p| p == *platform);
        !(same_ref && same_platform)
    });
    list.push(entry);
    let bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
    write_atomic(&path, &bytes)
}

//! Pull: fetch the manifest and config, stream each layer blob verified
//! and resumable into `<store>/.partial`, assemble the image in a temp dir
//! and rename it into the store.

use super::*;

/// How often (bytes) a download hands what it has to the decompressors.
const FOLLOW_EVERY: u64 = 4 << 20;

/// Check a pulled manifest: our artifact, sane sizes, known layers.
pub(super) fn check_manifest(reference: &str, m: &OciImageManifest) -> Result<(), ImageError> {
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(invalid(
            reference,
            format!(
                "not a Gondolin image: config media type is {:?}, expected {CONFIG_MEDIA_TYPE}",
                m.config.media_type
            ),
        ));
    }
    if m.config.size <= 0 || m.config.size > MAX_CONFIG_BYTES {
        return Err(invalid(
            reference,
            format!("config blob size {} out of range", m.config.size),
        ));
    }
    digest_hex(reference, &m.config.digest)?;
    let known = [KERNEL_MEDIA_TYPE, INITRD_MEDIA_TYPE, ROOTFS_MEDIA_TYPE];
    if m.layers.len() != known.len() {
        return Err(invalid(
            reference,
            format!("expected 3 layers, found {}", m.layers.len()),
        ));
    }
    for (l, want) in m.layers.iter().zip(known) {
        if l.media_type != want {
            return Err(invalid(
                reference,
                format!(
                    "layer {} has media type {:?}, expected {want}",
                    l.digest, l.media_type
                ),
            ));
        }
        if l.size <= 0 || l.size > MAX_BLOB_BYTES {
            return Err(invalid(
                reference,
                format!("layer {} size {} out of range", l.digest, l.size),
            ));
        }
        digest_hex(reference, &l.digest)?;
        let title = l.annotations.as_ref().and_then(|a| a.get(ANN_TITLE));
        let ok = title.is_some_and(|t| {
            let p = Path::new(t);
            p.components().count() == 1
                && matches!(p.components().next(), Some(Component::Normal(_)))
                && t != "manifest.json"
        });
        if !ok {
            return Err(invalid(
                reference,
                format!("layer {} has no plain file name ({ANN_TITLE})", l.digest),
            ));
        }
        frame_jobs(reference, l, file_size(reference, l)?)?;
    }
    Ok(())
}

pub(super) fn file_size(reference: &str, l: &OciDescriptor) -> Result<u64, ImageError> {
    l.annotations
        .as_ref()
        .and_then(|a| a.get(ANN_FILE_SIZE))
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&n| n <= MAX_FILE_BYTES)
        .ok_or_else(|| {
            invalid(
                reference,
                format!("layer {} has no valid {ANN_FILE_SIZE}", l.digest),
            )
        })
}

/// Hash what a partial file already holds.
fn rehash(path: &Path, len: u64) -> Result<Sha256, ImageError> {
    let mut h = Sha256::new();
    let mut f = fs::File::open(path).map_err(io_err(format!("reading {}", path.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = f
            .read(&mut buf[..(left.min(1 << 20) as usize)])
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h)
}

/// Stream one blob into `<partial>/<hex>`, resuming what is there; the file
/// is complete and verified when this returns Ok. `follow`: decompressors
/// waiting on this blob (layer index), told as its bytes reach the file.
pub(super) async fn fetch_blob(
    client: &Client,
    r: &Reference,
    reference: &str,
    desc: &OciDescriptor,
    partial: &Path,
    meter: &mut Meter<'_>,
    follow: Option<(&Follow, usize)>,
) -> Result<PathBuf, ImageError> {
    // Tell the decompressors following this blob how much is on disk.
    let mark = |n: u64| {
        if let Some((f, layer)) = follow {
            f.advance(layer, n);
        }
    };
    let hexd = digest_hex(reference, &desc.digest)?;
    let path = partial.join(&hexd);
    let size = desc.size as u64;
    let mut have = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if have > size {
        have = 0;
    }
    let mut hash = if have > 0 {
        rehash(&path, have)?
    } else {
        Sha256::new()
    };
    let refuse = |path: &Path, msg: String| {
        let _ = fs::remove_file(path);
        invalid(reference, msg)
    };
    if have < size {
        let resp = client
            .pull_blob_stream_partial(r, desc, have, None)
            .await
            .map_err(|e| reg_err(reference, format!("fetching blob {}: {e}", desc.digest)))?;
        let stream = match resp {
            BlobResponse::Partial(s) => s,
            BlobResponse::Full(s) => {
                // The registry ignored the range: start over (the caller
                // redoes what was decompressed from the old bytes).
                mark(0);
                meter.done = meter.done.saturating_sub(have);
                meter.base = meter.base.saturating_sub(have);
                have = 0;
                hash = Sha256::new();
                s
            }
        };
        let mut file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        file.set_len(have)
            .map_err(io_err(format!("truncating {}", path.display())))?;
        file.seek(SeekFrom::Start(have))
            .map_err(io_err("seeking"))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut s = stream.stream;
        let mut cut = None;
        let mut unflushed = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    cut = Some(e);
                    break;
                }
            };
            if have + chunk.len() as u64 > size {
                drop(file);
                return Err(refuse(
                    &path,
                    format!(
                        "blob {} is larger than its manifest says ({size} bytes); refused",
                        desc.digest
                    ),
                ));
            }
            file.write_all(&chunk)
                .map_err(io_err(format!("writing {}", path.display())))?;
            hash.update(&chunk);
            have += chunk.len() as u64;
            meter.add(chunk.len() as u64);
            unflushed += chunk.len() as u64;
            if unflushed >= FOLLOW_EVERY {
                // On the file, so the decompressors can start on it.
                file.flush()
                    .map_err(io_err(format!("writing {}", path.display())))?;
                mark(have);
                unflushed = 0;
            }
        }
        file.flush()
            .map_err(io_err(format!("writing {}", path.display())))?;
        drop(file);
        mark(have);
        if let Some(e) = cut {
            if have < size {
                // A transfer cut short: keep the bytes, the next pull resumes.
                return Err(reg_err(
                    reference,
                    format!(
                        "fetching blob {} stopped at {have} of {size} bytes ({e}); run the pull again to resume",
                        desc.digest
                    ),
                ));
            }
            // All bytes arrived and the client's own check failed: our check below names it.
        }
        if have < size {
            return Err(refuse(
                &path,
                format!(
                    "blob {} is truncated: the registry sent {have} of {size} bytes; refused",
                    desc.digest
                ),
            ));
        }
    }
    let got = format!("sha256:{}", hex(&hash.finalize()));
    if got != desc.digest {
        return Err(refuse(
            &path,
            format!(
                "blob {} failed verification: its content hashes to {got} (corrupt or tampered with in the registry); refused",
                desc.digest
            ),
        ));
    }
    Ok(path)
}

/// Pull `reference` into the store. `expect_arch` refuses an image for
/// another architecture before any blob is fetched.
pub async fn pull(
    reference: &str,
    opts: &RegistryOptions,
    expect_arch: Option<&str>,
    mut progress: ProgressFn,
) -> Result<Pulled, ImageError> {
    let r = parse_reference(reference)?;
    let auth = auth_for(&r, opts)?;
    let client = client(&r, opts);
    let (body, _) = client
        .pull_manifest_raw(&r, &auth, &[OCI_IMAGE_MEDIA_TYPE])
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
    if let Some(d) = r.digest() {
        if d != digest {
            return Err(invalid(
                reference,
                format!("manifest hashes to {digest}, not {d}"),
            ));
        }
    }
    let manifest: OciImageManifest = serde_json::from_slice(&body).map_err(|e| {
        invalid(
            reference,
            format!("manifest is not an OCI image manifest: {e}"),
        )
    })?;
    check_manifest(reference, &manifest)?;
    let ann = manifest.annotations.clone().unwrap_or_default();
    let build_id = ann
        .get(ANN_BUILD_ID)
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        .cloned()
        .ok_or_else(|| {
            invalid(
                reference,
                format!("manifest has no valid {ANN_BUILD_ID} annotation"),
            )
        })?;
    let arch = ann.get(ANN_ARCH).cloned().unwrap_or_default();
    if let Some(want) = expect_arch {
        if arch != want {
            return Err(invalid(
                reference,
                format!("image is for {arch}, not {want}"),
            ));
        }
    }

    let store = store_dir(opts);
    let _lock = tokio::task::block_in_place(|| lock_store(&store))?;
    let dest = store.join(&build_id);
    if dest.join("manifest.json").exists() {
        let image = store::load(&dest)?;
        return Ok(Pulled {
            image,
            digest,
            existed: true,
        });
    }

    // Config blob (the image's manifest.json): small, in memory, verified.
    let mut config = Vec::new();
    let mut s = client
        .pull_blob_stream(&r, &manifest.config)
        .await
        .map_err(|e| {
            reg_err(
                reference,
                format!("fetching blob {}: {e}", manifest.config.digest),
            )
        })?
        .stream;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| {
            invalid(
                reference,
                format!("blob {} failed verification: {e}", manifest.config.digest),
            )
        })?;
        if config.len() + chunk.len() > manifest.config.size as usize {
            return Err(invalid(
                reference,
                format!(
                    "blob {} is larger than its manifest says",
                    manifest.config.digest
                ),
            ));
        }
        config.extend_from_slice(&chunk);
    }
    if sha256_digest(&config) != manifest.config.digest {
        return Err(invalid(
            reference,
            format!(
                "blob {} failed verification (corrupt or tampered with in the registry); refused",
                manifest.config.digest
            ),
        ));
    }
    let image_manifest: store::Manifest = serde_json::from_slice(&config).map_err(|e| {
        invalid(
            reference,
            format!("config blob is not an image manifest.json: {e}"),
        )
    })?;
    if image_manifest.build_id != build_id || image_manifest.arch != arch {
        return Err(invalid(
            reference,
            "the manifest's build id / arch annotations do not match the image's manifest.json",
        ));
    }
    let titles: Vec<&String> = manifest
        .layers
        .iter()
        .filter_map(|l| l.annotations.as_ref().and_then(|a| a.get(ANN_TITLE)))
        .collect();
    let a = &image_manifest.assets;
    if titles != [&a.kernel, &a.initrd, &a.rootfs] {
        return Err(invalid(
            reference,
            "layer names do not match the assets in the image's manifest.json",
        ));
    }

    // Layers → <store>/.partial/<hex>, verified; each zstd frame is
    // decompressed into a temp dir in the store as soon as its bytes are
    // on disk, while the rest downloads. The image is renamed into place
    // once every blob verified and every frame decompressed.
    let partial = store.join(".partial");
    fs::create_dir_all(&partial).map_err(io_err(format!("creating {}", partial.display())))?;
    let tmp = store.join(format!(".pull-{build_id}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let mut guard = TempDir(Some(tmp.clone()));
    let mut blob_paths = Vec::new();
    let mut outs = Vec::new();
    let mut jobs = Vec::new();
    let mut marks = Vec::new();
    for (i, l) in manifest.layers.iter().enumerate() {
        let blob = partial.join(digest_hex(reference, &l.digest)?);
        let size = file_size(reference, l)?;
        let dst = tmp.join(&l.annotations.as_ref().expect("checked")[ANN_TITLE]);
        let out = fs::File::create(&dst).map_err(io_err(format!("creating {}", dst.display())))?;
        out.set_len(size)
            .map_err(io_err(format!("writing {}", dst.display())))?;
        outs.push(out);
        jobs.extend(frame_jobs(reference, l, size)?.into_iter().map(|j| (i, j)));
        marks.push(
            fs::metadata(&blob)
                .map(|m| m.len())
                .unwrap_or(0)
                .min(l.size as u64),
        );
        blob_paths.push(blob);
    }
    let total: u64 = manifest.layers.iter().map(|l| l.size as u64).sum();
    let raw_total: u64 = manifest
        .layers
        .iter()
        .map(|l| file_size(reference, l))
        .sum::<Result<u64, _>>()?;
    let have: u64 = marks.iter().sum();
    let follow = std::sync::Arc::new(Follow::new(marks));
    let pool = ExtractPool::start(blob_paths.clone(), outs, jobs, follow.clone());
    {
        let mut meter = Meter::resumed("download", total, have, &mut progress);
        for (i, l) in manifest.layers.iter().enumerate() {
            let fetched = fetch_blob(
                &client,
                &r,
                reference,
                l,
                &partial,
                &mut meter,
                Some((&follow, i)),
            )
            .await;
            if let Err(e) = fetched {
                drop(pool);
                if matches!(e, ImageError::InvalidImage { .. }) {
                    // The registry's copy is bad: keep nothing of this image.
                    for p in &blob_paths {
                        let _ = fs::remove_file(p);
                    }
                }
                let _ = fs::remove_dir(&partial); // only if nothing is kept to resume
                return Err(e);
            }
        }
        meter.finish();
    }
    // The verified blobs go either way (a blob that does not decompress is bad).
    let _blobs = RemoveFiles(blob_paths, partial.clone());
    {
        let digests: Vec<&str> = manifest.layers.iter().map(|l| l.digest.as_str()).collect();
        let mut meter = Meter::new("extract", raw_total, &mut progress);
        tokio::task::block_in_place(|| pool.finish(reference, &digests, &mut meter))?;
        meter.finish();
    }
    fs::write(tmp.join("manifest.json"), &config).map_err(io_err("writing manifest.json"))?;
    let loaded = store::load(&tmp)?;
    if loaded.build_id != build_id {
        return Err(invalid(reference, "assembled image has another build id"));
    }
    fs::rename(&tmp, &dest).map_err(io_err(format!("moving the image into {}", dest.display())))?;
    guard.0 = None;
    let image = store::load(&dest)?;
    Ok(Pulled {
        image,
        digest,
        existed: false,
    })
}

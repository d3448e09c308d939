//! Tests of `image::oci` (a child module: it sees the private items).

use super::*;

#[test]
fn docker_config_auth() {
    let t = std::env::temp_dir().join(format!("gondolin-oci-auth-{}", std::process::id()));
    fs::create_dir_all(&t).unwrap();
    let p = t.join("config.json");
    assert!(matches!(
        auth_from_docker_config(&p, "r:5000").unwrap(),
        RegistryAuth::Anonymous
    ));
    // "alice:s3cret:x" — the password may hold ':'.
    fs::write(
        &p,
        r#"{"auths":{"https://r:5000/v1/":{"auth":"YWxpY2U6czNjcmV0Ong="},
            "other:1":{"username":"bob","password":"pw"},
            "https://index.docker.io/v1/":{"auth":"ZDpo"}}}"#,
    )
    .unwrap();
    match auth_from_docker_config(&p, "r:5000").unwrap() {
        RegistryAuth::Basic(u, pw) => {
            assert_eq!((u.as_str(), pw.as_str()), ("alice", "s3cret:x"))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(auth_from_docker_config(&p, "other:1").unwrap(), RegistryAuth::Basic(u, _) if u == "bob")
    );
    assert!(
        matches!(auth_from_docker_config(&p, "docker.io").unwrap(), RegistryAuth::Basic(u, _) if u == "d")
    );
    assert!(matches!(
        auth_from_docker_config(&p, "none:1").unwrap(),
        RegistryAuth::Anonymous
    ));
    fs::write(&p, r#"{"auths":{"r:5000":{"auth":"!!"}}}"#).unwrap();
    assert!(auth_from_docker_config(&p, "r:5000")
        .unwrap_err()
        .to_string()
        .contains("base64"));
    fs::write(&p, "nope").unwrap();
    assert!(auth_from_docker_config(&p, "r:5000").is_err());
    fs::remove_dir_all(&t).unwrap();
}

#[test]
fn loopback_registries_use_http() {
    assert!(is_loopback("127.0.0.1:5000"));
    assert!(is_loopback("localhost:5000"));
    assert!(is_loopback("[::1]:5000"));
    assert!(!is_loopback("ghcr.io"));
    assert!(!is_loopback("127.0.0.1.example.com:5000"));
}

#[test]
fn digests_are_checked_before_becoming_paths() {
    assert!(digest_hex("r", &format!("sha256:{}", "a".repeat(64))).is_ok());
    for bad in [
        "sha256:../../etc",
        "sha512:aa",
        &format!("sha256:{}", "A".repeat(64)),
    ] {
        assert!(digest_hex("r", bad).is_err(), "{bad}");
    }
}

/// Decompress `src` into `dst` the way a pull does, the blob already whole.
fn extract(
    src: &Path,
    dst: &Path,
    size: u64,
    jobs: &[(u64, u64, u64, u64)],
    digest: &str,
    reference: &str,
    meter: &mut Meter,
) -> Result<(), ImageError> {
    let out = fs::File::create(dst).unwrap();
    out.set_len(size).unwrap();
    let blob_len = fs::metadata(src).unwrap().len();
    let follow = std::sync::Arc::new(Follow::new(vec![blob_len]));
    let jobs = jobs.iter().map(|&j| (0, j)).collect();
    ExtractPool::start(vec![src.to_path_buf()], vec![out], jobs, follow).finish(
        reference,
        &[digest],
        meter,
    )
}

#[test]
fn extract_follows_the_download_and_redoes_rewritten_blobs() {
    let t = std::env::temp_dir().join(format!("gondolin-oci-f-{}", std::process::id()));
    fs::create_dir_all(&t).unwrap();
    // Three frames: data, zeros, data.
    let mut raw = vec![0u8; 3 << 20];
    raw[..1 << 20].fill(1);
    raw[2 << 20..].fill(3);
    fs::write(t.join("raw"), &raw).unwrap();
    let mut f: ProgressFn = Box::new(|_| {});
    let mut m = Meter::new("compress", 0, &mut f);
    let (_, zsize, _, frames) =
        compress_file(&t.join("raw"), &t.join("z"), 1 << 20, &mut m).unwrap();
    let z = fs::read(t.join("z")).unwrap();
    let mut jobs = Vec::new();
    let (mut c, mut o) = (0, 0);
    for &len in &frames {
        jobs.push((0, (c, len, o, 1u64 << 20)));
        c += len;
        o += 1 << 20;
    }
    assert_eq!(c, zsize);

    // A stale partial blob (corrupted: frame 0 fails to decompress) and a
    // stale output (non-zero bytes where frame 1's zeros go, which a
    // sparse write skips): the decompressors start on the stale bytes.
    let blob = t.join("blob");
    let out_path = t.join("out");
    let out = fs::File::create(&out_path).unwrap();
    out.set_len(3 << 20).unwrap();
    {
        use std::os::unix::fs::FileExt;
        out.write_all_at(&[9u8; 4096], (1 << 20) + 8192).unwrap();
    }
    let mut stale = z.clone();
    stale[frames[0] as usize / 2] ^= 0xff;
    fs::write(&blob, &stale[..frames[0] as usize]).unwrap();
    let follow = std::sync::Arc::new(Follow::new(vec![frames[0]]));
    let pool = ExtractPool::start(vec![blob.clone()], vec![out], jobs, follow.clone());
    // The registry ignored the range: the blob is rewritten from the start,
    // in pieces the decompressors follow.
    follow.advance(0, 0);
    fs::write(&blob, b"").unwrap();
    let mut w = fs::OpenOptions::new().append(true).open(&blob).unwrap();
    for piece in z.chunks(z.len() / 3 + 1) {
        w.write_all(piece).unwrap();
        let len = fs::metadata(&blob).unwrap().len();
        follow.advance(0, len);
    }
    let mut m2 = Meter::new("extract", 0, &mut f);
    pool.finish("r", &["d"], &mut m2).unwrap();
    assert!(
        fs::read(&out_path).unwrap() == raw,
        "output matches after the redo"
    );
    fs::remove_dir_all(&t).unwrap();
}

#[test]
fn extract_writes_sparse_and_bounds_size() {
    let t = std::env::temp_dir().join(format!("gondolin-oci-x-{}", std::process::id()));
    fs::create_dir_all(&t).unwrap();
    let mut data = vec![0u8; 1 << 20];
    data[5000] = 7;
    data.extend_from_slice(b"tail");
    let z = zstd::encode_all(&data[..], 1).unwrap();
    fs::write(t.join("b.zst"), z).unwrap();
    let zlen = fs::metadata(t.join("b.zst")).unwrap().len();
    let mut f: ProgressFn = Box::new(|_| {});
    let mut m = Meter::new("extract", 0, &mut f);
    let n = data.len() as u64;
    let x = |size: u64, m: &mut Meter| {
        extract(
            &t.join("b.zst"),
            &t.join("out"),
            size,
            &[(0, zlen, 0, size)],
            "d",
            "r",
            m,
        )
    };
    x(n, &mut m).unwrap();
    assert_eq!(fs::read(t.join("out")).unwrap(), data);
    let e = x(100, &mut m).unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
    let e = x(n + 1, &mut m).unwrap_err();
    assert!(e.to_string().contains("expected"), "{e}");

    // Framed: compress as push does, extract in parallel.
    fs::write(t.join("big"), data.repeat(3)).unwrap();
    let mut m2 = Meter::new("compress", 0, &mut f);
    let (_, zsize, raw, frames) =
        compress_file(&t.join("big"), &t.join("big.zst"), 1 << 20, &mut m2).unwrap();
    assert_eq!(raw, 3 * n);
    assert_eq!(frames.iter().sum::<u64>(), zsize);
    assert_eq!(frames.len(), 4);
    let mut ann = BTreeMap::new();
    ann.insert(
        ANN_FRAMES.to_string(),
        frames
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    ann.insert(ANN_FRAME_BYTES.to_string(), (1u64 << 20).to_string());
    let desc = OciDescriptor {
        media_type: ROOTFS_MEDIA_TYPE.into(),
        digest: "d".into(),
        size: zsize as i64,
        urls: None,
        annotations: Some(ann.clone()),
        artifact_type: None,
    };
    let jobs = frame_jobs("r", &desc, raw).unwrap();
    let mut m3 = Meter::new("extract", 0, &mut f);
    extract(
        &t.join("big.zst"),
        &t.join("big.out"),
        raw,
        &jobs,
        "d",
        "r",
        &mut m3,
    )
    .unwrap();
    assert_eq!(fs::read(t.join("big.out")).unwrap(), data.repeat(3));
    assert!(
        frame_jobs("r", &desc, raw + (1 << 20)).is_err(),
        "sizes must add up"
    );
    // A last frame shorter than the table implies: caught while extracting.
    let short = frame_jobs("r", &desc, raw + 1).unwrap();
    let e = extract(
        &t.join("big.zst"),
        &t.join("big.out"),
        raw + 1,
        &short,
        "d",
        "r",
        &mut m3,
    )
    .unwrap_err();
    assert!(e.to_string().contains("expected"), "{e}");
    ann.insert(ANN_FRAMES.to_string(), "1,x".into());
    let bad = OciDescriptor {
        annotations: Some(ann),
        ..desc
    };
    assert!(frame_jobs("r", &bad, raw).is_err());
    fs::remove_dir_all(&t).unwrap();
}

//! The zstd frames of a layer: compressed one per core on push, their
//! table in an annotation, decompressed in parallel (zero blocks left as
//! holes) on pull.

use super::*;

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Compress `src` into `dst`: one zstd frame (checksummed) per
/// `frame_bytes` of input, so a pull can decompress frames in parallel.
/// Frames are compressed single-threaded, a batch of them at once on all
/// cores: zstd's own multithreading does not give the same bytes twice,
/// and a push of an unchanged image must find its blobs already there.
/// → (digest, size, uncompressed size, compressed frame sizes).
pub(super) fn compress_file(
    src: &Path,
    dst: &Path,
    frame_bytes: u64,
    meter: &mut Meter,
) -> Result<(String, u64, u64, Vec<u64>), ImageError> {
    use std::os::unix::fs::FileExt;
    let input = fs::File::open(src).map_err(io_err(format!("opening {}", src.display())))?;
    let total = input
        .metadata()
        .map_err(io_err(format!("reading {}", src.display())))?
        .len();
    let out = fs::File::create(dst).map_err(io_err(format!("creating {}", dst.display())))?;
    let mut w = HashingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, out),
        hash: Sha256::new(),
        len: 0,
    };
    let ctx = |what: &str| io_err(format!("compressing {} ({what})", src.display()));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let count = total.div_ceil(frame_bytes).max(1);
    let compress_one = |i: u64| -> std::io::Result<Vec<u8>> {
        let off = i * frame_bytes;
        let len = frame_bytes.min(total - off) as usize;
        let mut buf = vec![0u8; len];
        input.read_exact_at(&mut buf, off)?;
        let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
        c.set_parameter(zstd::stream::raw::CParameter::ChecksumFlag(true))?;
        c.compress(&buf)
    };
    let mut frames = Vec::new();
    let mut i = 0;
    while i < count {
        let batch: Vec<u64> = (i..(i + workers as u64).min(count)).collect();
        let results: Vec<std::io::Result<Vec<u8>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&k| scope.spawn(move || compress_one(k)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("compressor panicked")))
                })
                .collect()
        });
        for (k, r) in batch.iter().zip(results) {
            let frame = r.map_err(ctx("compress"))?;
            w.write_all(&frame).map_err(ctx("write"))?;
            frames.push(frame.len() as u64);
            meter.add(frame_bytes.min(total - k * frame_bytes));
        }
        i += batch.len() as u64;
    }
    w.flush().map_err(ctx("flush"))?;
    w.inner.get_ref().sync_all().ok();
    Ok((
        format!("sha256:{}", hex(&w.hash.finalize())),
        w.len,
        total,
        frames,
    ))
}

/// The frame table of a layer: (compressed offset, compressed length, file
/// offset, file length) per frame, checked against the blob and file sizes.
pub(super) fn frame_jobs(
    reference: &str,
    l: &OciDescriptor,
    size: u64,
) -> Result<Vec<(u64, u64, u64, u64)>, ImageError> {
    let ann = l.annotations.clone().unwrap_or_default();
    let blob = l.size as u64;
    let (Some(table), Some(per)) = (ann.get(ANN_FRAMES), ann.get(ANN_FRAME_BYTES)) else {
        return Ok(vec![(0, blob, 0, size)]);
    };
    let bad = || {
        invalid(
            reference,
            format!("layer {} has a malformed {ANN_FRAMES} table", l.digest),
        )
    };
    let per: u64 = per.parse().ok().filter(|&p| p >= 1 << 20).ok_or_else(bad)?;
    let mut jobs = Vec::new();
    let (mut coff, mut foff) = (0u64, 0u64);
    for part in table.split(',') {
        let clen: u64 = part.parse().map_err(|_| bad())?;
        let flen = size.saturating_sub(foff).min(per);
        jobs.push((coff, clen, foff, flen));
        coff = coff.checked_add(clen).ok_or_else(bad)?;
        foff += flen;
        if jobs.len() > 1 << 16 {
            return Err(bad());
        }
    }
    if coff != blob || foff != size || jobs.iter().skip(1).any(|j| j.3 == 0) {
        return Err(bad());
    }
    Ok(jobs)
}

fn is_zero(block: &[u8]) -> bool {
    let (chunks, rest) = block.as_chunks::<16>();
    chunks
        .iter()
        .fold(0u128, |a, c| a | u128::from_ne_bytes(*c))
        == 0
        && rest.iter().all(|&b| b == 0)
}

/// Write `data` at `off`, leaving 4 KiB zero blocks as holes.
fn write_sparse(out: &fs::File, off: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const B: usize = 4096;
    let mut i = 0;
    while i < data.len() {
        while i < data.len() && is_zero(&data[i..(i + B).min(data.len())]) {
            i += B;
        }
        let start = i.min(data.len());
        while i < data.len() && !is_zero(&data[i..(i + B).min(data.len())]) {
            i += B;
        }
        let end = i.min(data.len());
        if end > start {
            out.write_all_at(&data[start..end], off + start as u64)?;
        }
    }
    Ok(())
}

/// Fill `buf` from `r` (short only at the end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Decompress one frame range of `src` into `out` at its file offset.
fn extract_frame(
    src: &Path,
    out: &fs::File,
    job: (u64, u64, u64, u64),
    done: &std::sync::atomic::AtomicU64,
) -> Result<(), String> {
    let (coff, clen, foff, flen) = job;
    let mut input = fs::File::open(src).map_err(|e| format!("opening {}: {e}", src.display()))?;
    input
        .seek(SeekFrom::Start(coff))
        .map_err(|e| e.to_string())?;
    let mut dec = zstd::stream::read::Decoder::new(input.take(clen)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let n = read_full(&mut dec, &mut buf).map_err(|e| format!("does not decompress: {e}"))?;
        if n == 0 {
            break;
        }
        if written + n as u64 > flen {
            return Err(format!(
                "decompresses to more than its {flen} bytes at offset {foff}"
            ));
        }
        write_sparse(out, foff + written, &buf[..n]).map_err(|e| format!("writing: {e}"))?;
        written += n as u64;
        done.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
    if written != flen {
        return Err(format!(
            "decompresses to {written} bytes at offset {foff}, expected {flen}"
        ));
    }
    Ok(())
}

/// Decompress the layer blob `src` into `dst` (exactly `size` bytes, zero
/// blocks left as holes), its frames on all cores.
pub(super) fn extract(
    src: &Path,
    dst: &Path,
    size: u64,
    jobs: &[(u64, u64, u64, u64)],
    digest: &str,
    reference: &str,
    meter: &mut Meter,
) -> Result<(), ImageError> {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    let out = fs::File::create(dst).map_err(io_err(format!("creating {}", dst.display())))?;
    out.set_len(size)
        .map_err(io_err(format!("writing {}", dst.display())))?;
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let error = std::sync::Mutex::new(None::<String>);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len())
        .max(1);
    let running = AtomicUsize::new(workers);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&job) = jobs.get(i) else { break };
                    if let Err(e) = extract_frame(src, &out, job, &done) {
                        failed.store(true, Ordering::Relaxed);
                        error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    }
                }
                running.fetch_sub(1, Ordering::Release);
            });
        }
        let mut seen = 0;
        while running.load(Ordering::Acquire) > 0 {
            std::thread::sleep(Duration::from_millis(50));
            let now = done.load(Ordering::Relaxed);
            meter.add(now - seen);
            seen = now;
        }
        meter.add(done.load(Ordering::Relaxed) - seen);
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(invalid(reference, format!("blob {digest} {e}")));
    }
    Ok(())
}

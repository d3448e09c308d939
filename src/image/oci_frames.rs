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

/// Make `len` bytes at `off` read as zeros: a hole punched, or zeros
/// written where the filesystem cannot punch.
fn clear_range(out: &fs::File, off: u64, len: u64) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    // SAFETY: fallocate on a file descriptor we own for the call's duration;
    // no memory is passed.
    let r = unsafe {
        libc::fallocate(
            out.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        out.write_all_at(&zeros[..n], off + done)
            .map_err(|e| format!("clearing: {e}"))?;
        done += n as u64;
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

/// One frame to decompress: (layer index, (compressed offset, compressed
/// length, file offset, file length)).
pub(super) type FrameJob = (usize, (u64, u64, u64, u64));

/// How far each layer's blob is on disk: the download advances a mark, the
/// decompressors wait for the bytes of their frame.
#[derive(Default)]
pub(super) struct Follow {
    marks: std::sync::Mutex<Vec<u64>>,
    /// Per layer: its mark once went down (the blob was rewritten).
    rewound: std::sync::Mutex<Vec<bool>>,
    cv: std::sync::Condvar,
    abort: std::sync::atomic::AtomicBool,
}

impl Follow {
    pub(super) fn new(marks: Vec<u64>) -> Self {
        Follow {
            rewound: std::sync::Mutex::new(vec![false; marks.len()]),
            marks: std::sync::Mutex::new(marks),
            ..Default::default()
        }
    }

    /// `layer`'s blob holds `mark` bytes, flushed to the file.
    pub(super) fn advance(&self, layer: usize, mark: u64) {
        let mut m = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if mark < m[layer] {
            self.rewound.lock().unwrap_or_else(|p| p.into_inner())[layer] = true;
        }
        m[layer] = mark;
        self.cv.notify_all();
    }

    /// Per layer: whether its blob was rewritten from the start.
    pub(super) fn rewound(&self) -> Vec<bool> {
        self.rewound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stop(&self) {
        self.abort.store(true, std::sync::atomic::Ordering::Relaxed);
        let _m = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        self.cv.notify_all();
    }

    /// Wait until `layer` holds `need` bytes; false once stopped.
    fn wait_for(&self, layer: usize, need: u64) -> bool {
        let mut m = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.abort.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            if m[layer] >= need {
                return true;
            }
            m = self.cv.wait(m).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Decompressors on every core that follow a download: each frame is
/// decompressed into its layer's file (zero blocks left as holes) as soon
/// as its compressed bytes are on disk. Nothing here is trusted yet: a
/// frame that fails (its bytes changed under it, or a bad blob) is only
/// noted; [`ExtractPool::finish`] redoes it from the verified blob and
/// only then refuses the image.
pub(super) struct ExtractPool {
    follow: std::sync::Arc<Follow>,
    shared: std::sync::Arc<PoolShared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

struct PoolShared {
    blobs: Vec<PathBuf>,
    outs: Vec<fs::File>,
    jobs: Vec<FrameJob>,
    next: std::sync::atomic::AtomicUsize,
    done: std::sync::atomic::AtomicU64,
    failed: std::sync::Mutex<Vec<usize>>,
}

impl ExtractPool {
    /// `outs[i]` receives layer `i` (created, sized); `blobs[i]` is where its
    /// download lands.
    pub(super) fn start(
        blobs: Vec<PathBuf>,
        outs: Vec<fs::File>,
        jobs: Vec<FrameJob>,
        follow: std::sync::Arc<Follow>,
    ) -> Self {
        use std::sync::atomic::Ordering;
        let shared = std::sync::Arc::new(PoolShared {
            blobs,
            outs,
            jobs,
            next: Default::default(),
            done: Default::default(),
            failed: Default::default(),
        });
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(shared.jobs.len())
            .max(1);
        let workers = (0..n)
            .map(|_| {
                let (shared, follow) = (shared.clone(), follow.clone());
                std::thread::spawn(move || loop {
                    let i = shared.next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(layer, job)) = shared.jobs.get(i) else {
                        break;
                    };
                    if !follow.wait_for(layer, job.0 + job.1) {
                        break;
                    }
                    let r =
                        extract_frame(&shared.blobs[layer], &shared.outs[layer], job, &shared.done);
                    if r.is_err() {
                        shared
                            .failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(i);
                    }
                })
            })
            .collect();
        ExtractPool {
            follow,
            shared,
            workers,
        }
    }

    /// Wait for every frame (the download is complete and verified), then
    /// redo the failed ones and the frames of `redo` layers (their blob
    /// was rewritten during the download) from the verified blobs.
    pub(super) fn finish(
        mut self,
        reference: &str,
        digests: &[&str],
        meter: &mut Meter,
    ) -> Result<(), ImageError> {
        use std::sync::atomic::Ordering;
        let mut seen = 0;
        let mut tick = || {
            let now = self.shared.done.load(Ordering::Relaxed);
            meter.add(now.saturating_sub(seen));
            seen = now;
        };
        while self.workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            tick();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        tick();
        let s = &self.shared;
        let mut again = std::mem::take(&mut *s.failed.lock().unwrap_or_else(|p| p.into_inner()));
        let redo = self.follow.rewound();
        again.extend((0..s.jobs.len()).filter(|&i| redo[s.jobs[i].0]));
        again.sort_unstable();
        again.dedup();
        for i in again {
            let (layer, job) = s.jobs[i];
            let scratch = std::sync::atomic::AtomicU64::new(0);
            // What a failed or stale try wrote goes first: zero blocks are
            // skipped when written, so they must already read as zeros.
            clear_range(&s.outs[layer], job.2, job.3)
                .and_then(|()| extract_frame(&s.blobs[layer], &s.outs[layer], job, &scratch))
                .map_err(|e| invalid(reference, format!("blob {} {e}", digests[layer])))?;
        }
        Ok(())
    }
}

impl Drop for ExtractPool {
    fn drop(&mut self) {
        self.follow.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

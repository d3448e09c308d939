//! Watching a host directory for changes other programs make, so the
//! guest's caches can be dropped at once instead of waiting out their TTL.
//!
//! inotify through `notify`, recursive. The watch starts with the first
//! subscriber, on a thread of its own: adding a watch per directory of a
//! big tree takes a while, and VM start must not wait for it. If the
//! watch cannot be set up (inotify limits), the guest still sees changes
//! once its short cache TTL runs out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use notify::event::{AccessKind, EventKind, MetadataKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::ChangeSink;

type Sinks = Arc<Mutex<Vec<ChangeSink>>>;

pub struct DirWatch {
    root: PathBuf,
    sinks: Sinks,
    /// Kept alive while the provider lives; `None` until started.
    watcher: Arc<Mutex<Option<RecommendedWatcher>>>,
    started: std::sync::atomic::AtomicBool,
}

impl DirWatch {
    pub fn new(root: PathBuf) -> DirWatch {
        DirWatch {
            root,
            sinks: Arc::default(),
            watcher: Arc::default(),
            started: Default::default(),
        }
    }

    pub fn subscribe(&self, sink: ChangeSink) {
        self.sinks.lock().unwrap().push(sink);
        if self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let (root, sinks, slot) = (self.root.clone(), self.sinks.clone(), self.watcher.clone());
        let spawned = std::thread::Builder::new()
            .name("gondolin-watch".into())
            .spawn(move || match start(&root, sinks) {
                Ok(w) => *slot.lock().unwrap() = Some(w),
                Err(e) => tracing::warn!(
                    target: "gondolin::vfs",
                    "not watching {} for host changes ({e}); the guest sees them within its cache TTL",
                    root.display()
                ),
            });
        if let Err(e) = spawned {
            tracing::warn!(target: "gondolin::vfs", "starting the watch thread: {e}");
        }
    }

    /// True once the watch is in place (tests wait for it).
    pub fn active(&self) -> bool {
        self.watcher.lock().unwrap().is_some()
    }
}

fn start(root: &Path, sinks: Sinks) -> notify::Result<RecommendedWatcher> {
    let base = root.to_path_buf();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            deliver(&base, &sinks, &ev);
        }
    })?;
    w.watch(root, RecursiveMode::Recursive)?;
    Ok(w)
}

/// Whether an event changes what the guest may have cached.
fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(_)) | EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => false,
    }
}

/// `/`-rooted provider path of a host path under `root`.
fn provider_path(root: &Path, p: &Path) -> Option<String> {
    let rel = p.strip_prefix(root).ok()?.to_str()?;
    Some(format!("/{}", rel.trim_start_matches('/')))
}

fn deliver(root: &Path, sinks: &Sinks, ev: &notify::Event) {
    if !relevant(&ev.kind) {
        return;
    }
    for p in &ev.paths {
        if let Some(path) = provider_path(root, p) {
            sinks.lock().unwrap().retain(|sink| sink(&path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn paths_and_kinds() {
        let root = Path::new("/srv/w");
        assert_eq!(
            provider_path(root, Path::new("/srv/w")).as_deref(),
            Some("/")
        );
        assert_eq!(
            provider_path(root, Path::new("/srv/w/a/b.txt")).as_deref(),
            Some("/a/b.txt")
        );
        assert_eq!(provider_path(root, Path::new("/srv/other")), None);
        assert!(!relevant(&EventKind::Access(AccessKind::Any)));
        assert!(relevant(&EventKind::Modify(ModifyKind::Any)));
        assert!(!relevant(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::AccessTime
        ))));
    }

    #[test]
    fn reports_changes_until_the_subscriber_leaves() {
        let dir = std::env::temp_dir().join(format!("gondolin-watch-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();
        let w = DirWatch::new(dir.clone());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (s, a) = (seen.clone(), alive.clone());
        w.subscribe(Arc::new(move |p: &str| {
            s.lock().unwrap().push(p.to_string());
            a.load(std::sync::atomic::Ordering::Acquire)
        }));
        let wait = |what: &str| {
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                if seen.lock().unwrap().iter().any(|p| p == what) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        };
        let until = Instant::now() + Duration::from_secs(5);
        while !w.active() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(w.active());
        std::fs::write(dir.join("sub/new.txt"), "x").unwrap();
        assert!(wait("/sub/new.txt"), "{:?}", seen.lock().unwrap());
        std::fs::remove_file(dir.join("sub/new.txt")).unwrap();
        // The subscriber leaves: after the next event it is dropped.
        alive.store(false, std::sync::atomic::Ordering::Release);
        std::fs::write(dir.join("late.txt"), "x").unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while !w.sinks.lock().unwrap().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(w.sinks.lock().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

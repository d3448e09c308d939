//! The routing table: `/etc/gondolin/listeners` and the host's copy of it.
//!
//! File format (upstream's): one route per line, `<prefix> :<port>
//! [strip_prefix=true|false]`; `#` starts a comment; NUL bytes are ignored
//! (some editors pad); unknown `key=value` options are ignored. The
//! canonical form joins fields with a tab and ends with a newline.

use std::sync::{Arc, Mutex};

use crate::vfs::memory::MemoryProvider;
use crate::vfs::{ChangeSink, OpenOptions, Provider, VfsError};

use super::{ListenersError, MAX_LISTENERS_BYTES, MAX_ROUTES};

/// Where the file lives inside the `/etc/gondolin` provider.
pub const LISTENERS_PATH: &str = "/listeners";

/// One route: requests whose path is `prefix` or lies under it go to the
/// guest's `127.0.0.1:port`, with the prefix removed when `strip_prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub port: u16,
    pub strip_prefix: bool,
}

/// `/api/` → `/api`, `api` → `/api`, `/` and `//` → `/`.
pub fn normalize_prefix(prefix: &str) -> String {
    let mut p = if prefix.starts_with('/') {
        prefix.to_string()
    } else {
        format!("/{prefix}")
    };
    // All trailing slashes (upstream removes one), so normalizing is
    // idempotent: `//` is `/`, as it is when the file is read back.
    while p.len() > 1 && p.ends_with('/') {
        p.pop();
    }
    p
}

/// Parse a listeners file. Errors name the (1-based) line.
pub fn parse_listeners(text: &str) -> Result<Vec<Route>, ListenersError> {
    if text.len() as u64 > MAX_LISTENERS_BYTES {
        return Err(ListenersError::TooLarge);
    }
    let text = text.replace('\0', "");
    let mut routes = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let bad = |reason: &str| ListenersError::Line {
            line: i + 1,
            reason: reason.to_string(),
        };
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 2 {
            return Err(bad("expected '<prefix> <backend>'"));
        }
        let (prefix, backend) = (parts[0], parts[1]);
        if !prefix.starts_with('/') {
            return Err(bad("prefix must start with '/'"));
        }
        let Some(digits) = backend.strip_prefix(':') else {
            return Err(bad("backend must be ':<port>'"));
        };
        let port = match digits.parse::<u32>() {
            Ok(p @ 1..=65535) if digits.bytes().all(|b| b.is_ascii_digit()) => p as u16,
            _ => return Err(bad("invalid port")),
        };
        let mut strip_prefix = true;
        for opt in &parts[2..] {
            let Some((key, value)) = opt.split_once('=') else {
                return Err(bad(&format!("invalid option '{opt}'")));
            };
            if key == "strip_prefix" {
                strip_prefix = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("strip_prefix must be true|false")),
                };
            }
        }
        if routes.len() == MAX_ROUTES {
            return Err(ListenersError::TooManyRoutes);
        }
        routes.push(Route {
            prefix: normalize_prefix(prefix),
            port,
            strip_prefix,
        });
    }
    Ok(routes)
}

/// The canonical file for `routes` (`"\n"` for none).
pub fn serialize_listeners(routes: &[Route]) -> String {
    let lines: Vec<String> = routes
        .iter()
        .map(|r| {
            let mut l = format!("{}\t:{}", r.prefix, r.port);
            if !r.strip_prefix {
                l.push_str("\tstrip_prefix=false");
            }
            l
        })
        .collect();
    lines.join("\n") + "\n"
}

/// Check and normalize routes given by the host (`setIngressRoutes`), with
/// upstream's messages. `port` arrives as a float from JS.
pub fn check_route(prefix: &str, port: f64, strip_prefix: bool) -> Result<Route, ListenersError> {
    if prefix.trim().is_empty() || prefix.chars().any(char::is_whitespace) || prefix.contains('#') {
        return Err(ListenersError::Route("invalid ingress route prefix".into()));
    }
    if port.fract() != 0.0 || !(1.0..=65535.0).contains(&port) {
        return Err(ListenersError::Route(format!(
            "invalid ingress route port: {port}"
        )));
    }
    Ok(Route {
        prefix: normalize_prefix(prefix),
        port: port as u16,
        strip_prefix,
    })
}

/// The route for `path` (no query): the longest prefix that is the path or
/// a parent of it (`/` matches everything).
pub fn choose<'r>(routes: &'r [Route], path: &str) -> Option<&'r Route> {
    routes
        .iter()
        .filter(|r| {
            r.prefix == "/"
                || path == r.prefix
                || (path.starts_with(&r.prefix)
                    && path.as_bytes().get(r.prefix.len()) == Some(&b'/'))
        })
        .max_by_key(|r| r.prefix.len())
}

/// `path` as the backend sees it under `route` (`/api/users` → `/users`,
/// `/api` → `/`).
pub fn backend_path(route: &Route, path: &str) -> String {
    if !route.strip_prefix || route.prefix == "/" {
        return path.to_string();
    }
    match path.strip_prefix(route.prefix.as_str()) {
        Some("") => "/".to_string(),
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => path.to_string(),
    }
}

#[derive(Default)]
struct State {
    routes: Arc<Vec<Route>>,
    reload_error: Option<String>,
}

/// The host's routing table for one VM, and the file it comes from (held
/// in a [`MemoryProvider`] that the `/etc/gondolin` provider serves).
pub struct Listeners {
    file: Arc<MemoryProvider>,
    state: Mutex<State>,
    /// The fs servers that mount the file: told when the host rewrites it.
    sinks: Mutex<Vec<ChangeSink>>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("routes", &self.routes())
            .finish_non_exhaustive()
    }
}

impl Listeners {
    /// A table with no routes over `file`, where `/listeners` is created
    /// empty (as upstream does at VM construction).
    pub async fn new(file: Arc<MemoryProvider>) -> Result<Arc<Self>, VfsError> {
        let l = Arc::new(Listeners {
            file,
            state: Mutex::default(),
            sinks: Mutex::default(),
        });
        l.write_file(b"").await?;
        Ok(l)
    }

    /// The current routes (cheap: shared).
    pub fn routes(&self) -> Arc<Vec<Route>> {
        self.state.lock().unwrap().routes.clone()
    }

    /// Why the last reload failed (the old routes stayed), if it did.
    pub fn reload_error(&self) -> Option<String> {
        self.state.lock().unwrap().reload_error.clone()
    }

    /// Replace the routes and write the canonical file.
    pub async fn set_routes(&self, routes: Vec<Route>) -> Result<(), ListenersError> {
        if routes.len() > MAX_ROUTES {
            return Err(ListenersError::TooManyRoutes);
        }
        let text = serialize_listeners(&routes);
        if text.len() as u64 > MAX_LISTENERS_BYTES {
            return Err(ListenersError::TooLarge);
        }
        self.write_file(text.as_bytes())
            .await
            .map_err(|e| ListenersError::Read(e.to_string()))?;
        *self.state.lock().unwrap() = State {
            routes: Arc::new(routes),
            reload_error: None,
        };
        self.notify();
        Ok(())
    }

    /// Reread the file: new routes, or (garbage, too large, unreadable) the
    /// old ones kept and the reason recorded. A missing file is no routes.
    /// A file that parses but is not in canonical form is rewritten in it
    /// (as upstream does), and the guest's cache of it dropped.
    pub async fn reload(&self) -> Result<(), ListenersError> {
        let (parsed, text) = match self.read_file().await {
            Ok(Some(bytes)) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                (parse_listeners(&text), Some(text))
            }
            Ok(None) => (Ok(Vec::new()), None),
            Err(e) => (Err(e), None),
        };
        let canonical = match (&parsed, &text) {
            (Ok(routes), Some(text)) => Some(serialize_listeners(routes)).filter(|c| c != text),
            _ => None,
        };
        {
            let mut s = self.state.lock().unwrap();
            match &parsed {
                Ok(routes) => {
                    s.routes = Arc::new(routes.clone());
                    s.reload_error = None;
                }
                Err(e) => s.reload_error = Some(e.to_string()),
            }
        }
        if let Some(c) = canonical {
            if self.write_file(c.as_bytes()).await.is_ok() {
                self.notify();
            }
        }
        parsed.map(|_| ())
    }

    /// Tell the fs servers that mount the file that the host changed it.
    fn notify(&self) {
        self.sinks
            .lock()
            .unwrap()
            .retain(|sink| sink(LISTENERS_PATH));
    }

    pub(crate) fn subscribe(&self, sink: ChangeSink) {
        self.sinks.lock().unwrap().push(sink);
    }

    async fn read_file(&self) -> Result<Option<Vec<u8>>, ListenersError> {
        let h = match self
            .file
            .open(LISTENERS_PATH, OpenOptions::read_only())
            .await
        {
            Ok(h) => h,
            Err(e) if e.is(libc::ENOENT) || e.is(libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(ListenersError::Read(e.to_string())),
        };
        let meta = h
            .stat()
            .await
            .map_err(|e| ListenersError::Read(e.to_string()))?;
        if meta.size > MAX_LISTENERS_BYTES {
            return Err(ListenersError::TooLarge);
        }
        let bytes = h
            .read(0, MAX_LISTENERS_BYTES as usize + 1)
            .await
            .map_err(|e| ListenersError::Read(e.to_string()))?;
        if bytes.len() as u64 > MAX_LISTENERS_BYTES {
            return Err(ListenersError::TooLarge);
        }
        Ok(Some(bytes))
    }

    async fn write_file(&self, data: &[u8]) -> Result<(), VfsError> {
        let opts = OpenOptions {
            write: true,
            create: true,
            truncate: true,
            ..OpenOptions::read_only()
        };
        let h = self.file.open(LISTENERS_PATH, opts).await?;
        h.write(0, data).await?;
        h.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(prefix: &str, port: u16, strip_prefix: bool) -> Route {
        Route {
            prefix: prefix.into(),
            port,
            strip_prefix,
        }
    }

    #[test]
    fn parses_upstream_examples_and_serializes_canonically() {
        let text = "# routes\n/ :8080\n/api/ :4000   # api\n\0\0/api2 :4001 strip_prefix=false future=1\r\n";
        let routes = parse_listeners(text).unwrap();
        assert_eq!(
            routes,
            vec![
                r("/", 8080, true),
                r("/api", 4000, true),
                r("/api2", 4001, false)
            ]
        );
        assert_eq!(
            serialize_listeners(&routes),
            "/\t:8080\n/api\t:4000\n/api2\t:4001\tstrip_prefix=false\n"
        );
        assert_eq!(serialize_listeners(&[]), "\n");
        assert_eq!(
            parse_listeners(&serialize_listeners(&routes)).unwrap(),
            routes
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = |t: &str| parse_listeners(t).unwrap_err().to_string();
        assert_eq!(
            e("\n/x"),
            "invalid listeners file line 2: expected '<prefix> <backend>'"
        );
        assert_eq!(
            e("x :1"),
            "invalid listeners file line 1: prefix must start with '/'"
        );
        assert_eq!(
            e("/ 80"),
            "invalid listeners file line 1: backend must be ':<port>'"
        );
        assert_eq!(
            e("/ :8080foo"),
            "invalid listeners file line 1: invalid port"
        );
        assert_eq!(e("/ :0"), "invalid listeners file line 1: invalid port");
        assert_eq!(e("/ :65536"), "invalid listeners file line 1: invalid port");
        assert_eq!(e("/ :+80"), "invalid listeners file line 1: invalid port");
        assert_eq!(
            e("/ :80 bare"),
            "invalid listeners file line 1: invalid option 'bare'"
        );
        assert_eq!(
            e("/ :80 strip_prefix=yes"),
            "invalid listeners file line 1: strip_prefix must be true|false"
        );
        assert_eq!(e(&"#".repeat(70_000)), "listeners file too large");
        let many = "/ :1\n".repeat(MAX_ROUTES + 1);
        assert_eq!(e(&many), "too many ingress routes (at most 1024)");
    }

    #[test]
    fn whatever_parses_round_trips_through_the_canonical_form() {
        for text in [
            "// :1",
            "/a// :2 strip_prefix=false",
            "/x\u{a0}:3",
            "/\u{2003}:4 k=v=w",
            "\0/\0 \0:5\0",
            "/é :6\r",
        ] {
            if let Ok(routes) = parse_listeners(text) {
                assert_eq!(
                    parse_listeners(&serialize_listeners(&routes)).unwrap(),
                    routes,
                    "{text:?}"
                );
            }
        }
        assert_eq!(parse_listeners("// :1").unwrap()[0].prefix, "/");
    }

    #[test]
    fn longest_prefix_wins_and_strip() {
        let routes = vec![r("/", 1, true), r("/api", 2, true), r("/api/v2", 3, false)];
        let pick = |p: &str| choose(&routes, p).map(|r| r.port);
        assert_eq!(pick("/"), Some(1));
        assert_eq!(pick("/apix"), Some(1));
        assert_eq!(pick("/api"), Some(2));
        assert_eq!(pick("/api/users"), Some(2));
        assert_eq!(pick("/api/v2/x"), Some(3));
        assert_eq!(choose(&routes[1..], "/other"), None);
        assert_eq!(backend_path(&routes[1], "/api/users"), "/users");
        assert_eq!(backend_path(&routes[1], "/api"), "/");
        assert_eq!(backend_path(&routes[2], "/api/v2/x"), "/api/v2/x");
        assert_eq!(backend_path(&routes[0], "/a"), "/a");
    }

    #[test]
    fn host_routes_are_checked() {
        assert_eq!(
            check_route("api/", 80.0, true).unwrap(),
            r("/api", 80, true)
        );
        let e = |p: &str, port: f64| check_route(p, port, true).unwrap_err().to_string();
        assert_eq!(e(" ", 80.0), "invalid ingress route prefix");
        assert_eq!(e("/a b", 80.0), "invalid ingress route prefix");
        assert_eq!(e("/a", 0.0), "invalid ingress route port: 0");
        assert_eq!(e("/a", 1.5), "invalid ingress route port: 1.5");
    }

    #[tokio::test]
    async fn reload_keeps_old_routes_on_garbage() {
        let mem = Arc::new(MemoryProvider::new());
        let l = Listeners::new(mem.clone()).await.unwrap();
        assert!(l.routes().is_empty());
        l.set_routes(vec![r("/a", 1, true)]).await.unwrap();
        l.write_file(b"/b/  :2 # two\n").await.unwrap();
        l.reload().await.unwrap();
        assert_eq!(*l.routes(), vec![r("/b", 2, true)]);
        assert_eq!(
            l.read_file().await.unwrap().unwrap(),
            b"/b\t:2\n",
            "canonical"
        );
        l.write_file(b"garbage\n").await.unwrap();
        assert!(l.reload().await.is_err());
        assert_eq!(*l.routes(), vec![r("/b", 2, true)]);
        assert_eq!(
            l.reload_error().unwrap(),
            "invalid listeners file line 1: expected '<prefix> <backend>'"
        );
        mem.unlink(LISTENERS_PATH).await.unwrap();
        l.reload().await.unwrap();
        assert!(l.routes().is_empty() && l.reload_error().is_none());
    }
}

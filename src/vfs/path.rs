//! Provider paths: absolute, normalized POSIX strings (`/`, `/a/b`), never a
//! trailing slash, never `.`/`..` components.

use super::{VfsError, VfsResult};

/// Normalize `p` lexically: leading `/`, no empty, `.` or `..` components
/// (`..` at the root stays at the root), no trailing `/`.
pub fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        "/".to_string()
    } else {
        let mut s = String::with_capacity(p.len() + 1);
        for c in parts {
            s.push('/');
            s.push_str(c);
        }
        s
    }
}

/// `parent` + `/` + `name` for a normalized parent and a single component.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The parent of a normalized path (`/` for `/` itself).
pub fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

/// The last component of a normalized path (`""` for `/`).
pub fn file_name(p: &str) -> &str {
    match p.rfind('/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

/// True if `p` is `base` or lies below it (both normalized).
pub fn is_within(p: &str, base: &str) -> bool {
    base == "/" || p == base || (p.starts_with(base) && p.as_bytes().get(base.len()) == Some(&b'/'))
}

/// `p` relative to `base` as a provider path (`/a/b/c` under `/a` → `/b/c`).
pub fn strip_base(p: &str, base: &str) -> Option<String> {
    if !is_within(p, base) {
        return None;
    }
    if base == "/" {
        return Some(p.to_string());
    }
    let rest = &p[base.len()..];
    Some(if rest.is_empty() {
        "/".to_string()
    } else {
        rest.to_string()
    })
}

/// Check a user-supplied absolute path (mount keys, `vm.fs` paths): must be
/// non-empty, absolute and free of NUL bytes; returns it normalized.
pub fn check_absolute(p: &str, what: &str) -> VfsResult<String> {
    if p.is_empty() || !p.starts_with('/') || p.contains('\0') {
        return Err(VfsError::invalid(format!(
            "{what} must be an absolute path without NUL bytes: {p:?}"
        )));
    }
    Ok(normalize(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical_and_stays_at_root() {
        for (i, o) in [
            ("", "/"),
            ("/", "/"),
            ("//a//b/", "/a/b"),
            ("a/./b", "/a/b"),
            ("/a/../../b", "/b"),
            ("/..", "/"),
            ("/a/b/..", "/a"),
        ] {
            assert_eq!(normalize(i), o, "{i}");
        }
    }

    #[test]
    fn parent_name_join() {
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
        assert_eq!(file_name("/a/b"), "b");
        assert_eq!(file_name("/"), "");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(join("/a", "x"), "/a/x");
    }

    #[test]
    fn within_respects_component_boundaries() {
        assert!(is_within("/data/x", "/data"));
        assert!(is_within("/data", "/data"));
        assert!(!is_within("/database", "/data"));
        assert!(is_within("/anything", "/"));
        assert_eq!(strip_base("/data/x/y", "/data").as_deref(), Some("/x/y"));
        assert_eq!(strip_base("/data", "/data").as_deref(), Some("/"));
        assert_eq!(strip_base("/other", "/data"), None);
    }

    #[test]
    fn absolute_check_names_the_option() {
        let e = check_absolute("rel", "vfs.mounts key").unwrap_err();
        assert!(e.message.unwrap().contains("vfs.mounts key"));
        assert!(check_absolute("/a\0b", "x").is_err());
        assert_eq!(check_absolute("/a/", "x").unwrap(), "/a");
    }
}

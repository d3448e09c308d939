//! `tmpfs`: the guest's scratch mounts (upstream 0.13), validated and
//! turned into the kernel command-line word guest init reads.

use super::{OptValue, OptionError};
use crate::vfs::path::normalize;

/// One validated mount: a normalized guest path and its mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    pub path: String,
    /// Bytes, a k/m/g suffixed size or a percentage, as tmpfs takes it.
    pub size: Option<String>,
    /// Octal permission bits.
    pub mode: Option<String>,
}

/// Guest paths a tmpfs may not cover: init mounts these itself.
const RESERVED: &[&str] = &["/proc", "/sys", "/dev", "/run"];

fn bad(msg: String) -> OptionError {
    OptionError(msg)
}

fn mount_path(raw: &str) -> Result<String, OptionError> {
    if !raw.starts_with('/') {
        return Err(bad(format!("tmpfs path must be absolute: {raw}")));
    }
    let p = normalize(raw);
    if p == "/" {
        return Err(bad("tmpfs cannot be mounted over /".into()));
    }
    // The list travels on the kernel command line as "path:opt=v,path...".
    let unsafe_char =
        |c: char| c.is_whitespace() || ",:\"'\\*?[]\0%".contains(c) || c == '\u{feff}';
    if p.chars().any(unsafe_char) {
        return Err(bad(format!(
            "tmpfs path contains unsupported characters (whitespace, ',', ':', '%', quotes, globs or '\\'): {p}"
        )));
    }
    if RESERVED
        .iter()
        .any(|r| p == *r || p.strip_prefix(r).is_some_and(|rest| rest.starts_with('/')))
    {
        return Err(bad(format!(
            "tmpfs cannot be mounted at reserved path: {p}"
        )));
    }
    Ok(p)
}

fn size(v: &OptValue, p: &str) -> Result<String, OptionError> {
    const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;
    match v {
        OptValue::Number(n) => {
            if n.fract() != 0.0 || *n <= 0.0 || *n > MAX_SAFE_INTEGER {
                return Err(bad(format!(
                    "tmpfs size for {p} must be a positive integer number of bytes"
                )));
            }
            Ok(format!("{}", *n as u64))
        }
        OptValue::String(s) if size_text_ok(s) => Ok(s.clone()),
        _ => Err(bad(format!(
            "tmpfs size for {p} must be bytes, a k/m/g suffixed size or a percentage (e.g. \"512m\", \"25%\")"
        ))),
    }
}

/// Digits, then at most one of k/m/g/% (either case); not zero.
fn size_text_ok(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| "kKmMgG%".contains(c));
    let suffix = s.len() - digits.len();
    suffix <= 1
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

fn mode(v: &OptValue, p: &str) -> Result<String, OptionError> {
    match v {
        OptValue::String(s)
            if (3..=4).contains(&s.len()) && s.bytes().all(|b| (b'0'..=b'7').contains(&b)) =>
        {
            Ok(s.clone())
        }
        _ => Err(bad(format!(
            "tmpfs mode for {p} must be an octal string (e.g. \"1777\")"
        ))),
    }
}

/// Validated mounts from a `{ path: { size?, mode? } }` value, in the order given.
pub fn parse(value: &OptValue) -> Result<Vec<TmpfsMount>, OptionError> {
    let OptValue::Object(entries) = value else {
        return Err(bad(
            "tmpfs must be an object mapping guest paths to { size?, mode? }".into(),
        ));
    };
    let mut out: Vec<TmpfsMount> = Vec::new();
    for (raw, opts) in entries {
        let p = mount_path(raw)?;
        if out.iter().any(|m| m.path == p) {
            return Err(bad(format!("tmpfs path specified more than once: {p}")));
        }
        let fields: &[(String, OptValue)] = match opts {
            OptValue::Undefined | OptValue::Null => &[],
            OptValue::Object(f) => f,
            _ => return Err(bad(format!("tmpfs options for {p} must be an object"))),
        };
        let mut m = TmpfsMount {
            path: p,
            size: None,
            mode: None,
        };
        for (k, v) in fields {
            let p = &m.path;
            match (k.as_str(), v) {
                (_, OptValue::Undefined) if k == "size" || k == "mode" => {}
                ("size", v) => m.size = Some(size(v, p)?),
                ("mode", v) => m.mode = Some(mode(v, p)?),
                _ => {
                    return Err(bad(format!(
                        "unknown option tmpfs[\"{p}\"].{k}; valid keys: size, mode"
                    )))
                }
            }
        }
        out.push(m);
    }
    Ok(out)
}

/// The kernel command-line word guest init reads (`gondolin.tmpfs=none`
/// for an empty list). Parents sort before their children.
pub fn cmdline(mounts: &[TmpfsMount]) -> String {
    let mut sorted: Vec<&TmpfsMount> = mounts.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let items: Vec<String> = sorted
        .iter()
        .map(|m| {
            let mut s = m.path.clone();
            for (k, v) in [("size", &m.size), ("mode", &m.mode)] {
                if let Some(v) = v {
                    s.push_str(&format!(":{k}={v}"));
                }
            }
            s
        })
        .collect();
    if items.is_empty() {
        "gondolin.tmpfs=none".into()
    } else {
        format!("gondolin.tmpfs={}", items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{obj, s};
    use super::*;
    fn err(v: OptValue) -> String {
        parse(&v).unwrap_err().0
    }

    #[test]
    fn paths_sizes_and_modes() {
        let m = parse(&obj(&[
            ("/scratch/", obj(&[("size", s("16m")), ("mode", s("0750"))])),
            ("/tmp", obj(&[("size", OptValue::Number(65536.0))])),
            ("/a/./b/../c", OptValue::Null),
        ]))
        .unwrap();
        assert_eq!(m[0].path, "/scratch");
        assert_eq!(m[1].size.as_deref(), Some("65536"));
        assert_eq!(m[2].path, "/a/c");
        assert_eq!(
            cmdline(&m),
            "gondolin.tmpfs=/a/c,/scratch:size=16m:mode=0750,/tmp:size=65536"
        );
        assert_eq!(cmdline(&[]), "gondolin.tmpfs=none");
    }

    #[test]
    fn refusals_name_the_path_and_the_fix() {
        assert!(err(obj(&[("/proc", obj(&[]))])).contains("reserved path: /proc"));
        assert!(err(obj(&[("/run/x", obj(&[]))])).contains("reserved path: /run/x"));
        assert!(err(obj(&[("/tmp", obj(&[("size", s("0"))]))])).starts_with("tmpfs size for /tmp"));
        assert!(
            err(obj(&[("/tmp", obj(&[("size", s("12x"))]))])).starts_with("tmpfs size for /tmp")
        );
        assert!(
            err(obj(&[("/tmp", obj(&[("size", OptValue::Number(1.5))]))]))
                .contains("positive integer number of bytes")
        );
        assert!(err(obj(&[("/tmp", obj(&[("mode", s("999"))]))])).contains("octal string"));
        assert!(err(obj(&[("tmp", obj(&[]))])).contains("must be absolute: tmp"));
        assert!(err(obj(&[("/", obj(&[]))])).contains("over /"));
        assert!(err(obj(&[("/a b", obj(&[]))])).contains("unsupported characters"));
        assert!(err(obj(&[("/x", obj(&[])), ("/x/", obj(&[]))])).contains("more than once: /x"));
        assert!(err(obj(&[("/x", obj(&[("sise", s("1m"))]))]))
            .contains("unknown option tmpfs[\"/x\"].sise; valid keys: size, mode"));
        assert!(err(OptValue::Array(vec![])).starts_with("tmpfs must be an object"));
    }
}

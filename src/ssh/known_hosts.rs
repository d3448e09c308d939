//! Upstream host keys checked against OpenSSH `known_hosts` files: plain
//! and hashed (`|1|salt|hmac`) host fields, `*`/`?` wildcards, `!`
//! negation, `[host]:port` entries for ports other than 22, and
//! `@revoked` keys. `@cert-authority` lines are ignored (no certificates).
//! Lines are parsed by `ssh-key`; unparsable lines are skipped.
//! A host with no matching line is refused.

use std::path::PathBuf;

use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, KnownHosts as Lines, Marker};
pub use russh::keys::PublicKey;

/// The entries of every file that could be read.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

/// `~/.ssh/known_hosts` and `/etc/ssh/ssh_known_hosts` (upstream's defaults).
pub fn default_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        out.push(PathBuf::from(home).join(".ssh").join("known_hosts"));
    }
    out.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
    out
}

impl KnownHosts {
    pub fn parse(text: &str) -> KnownHosts {
        KnownHosts {
            entries: Lines::new(text).filter_map(Result::ok).collect(),
        }
    }

    /// Read `files` (those that exist); none readable is upstream's error
    /// `no OpenSSH known_hosts files found (tried ...)`.
    pub fn load(files: &[PathBuf]) -> Result<KnownHosts, String> {
        let mut all = KnownHosts::default();
        let mut loaded = 0;
        for f in files {
            // A known_hosts file is small; a huge one is not read whole.
            let Ok(meta) = std::fs::metadata(f) else {
                continue;
            };
            if !meta.is_file() || meta.len() > 64 * 1024 * 1024 {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(f) {
                loaded += 1;
                all.entries.extend(KnownHosts::parse(&text).entries);
            }
        }
        if loaded == 0 {
            let tried: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            return Err(format!(
                "no OpenSSH known_hosts files found (tried {})",
                tried.join(", ")
            ));
        }
        Ok(all)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is a known, unrevoked key of `host` on `port`.
    pub fn verify(&self, host: &str, port: u16, key: &PublicKey) -> bool {
        let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return false;
        }
        let candidates = if port == 22 {
            vec![host.clone(), format!("[{host}]:22")]
        } else {
            vec![format!("[{host}]:{port}")]
        };
        let mut known = false;
        for e in &self.entries {
            if !candidates
                .iter()
                .any(|c| host_matches(e.host_patterns(), c))
            {
                continue;
            }
            let same = e.public_key().key_data() == key.key_data();
            match e.marker() {
                Some(Marker::Revoked) if same => return false,
                Some(_) => {}
                None if same => known = true,
                None => {}
            }
        }
        known
    }
}

fn host_matches(p: &HostPatterns, candidate: &str) -> bool {
    match p {
        HostPatterns::HashedName { salt, hash } => {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
            ring::hmac::verify(&k, candidate.as_bytes(), hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut positive = false;
            for raw in list {
                let (negated, pat) = match raw.strip_prefix('!') {
                    Some(p) => (true, p),
                    None => (false, raw.as_str()),
                };
                if pat.is_empty() {
                    continue;
                }
                if wildcard(&pat.to_ascii_lowercase(), candidate) {
                    if negated {
                        return false;
                    }
                    positive = true;
                }
            }
            positive
        }
    }
}

/// OpenSSH's pattern match: `*` any run, `?` one character.
fn wildcard(pat: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII3pTvcGNOwXxWWQdNoK9JcjKCDSjIK1mczha0pFQ8ef";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ4su0IYrBKXCWKpoZG6Z8fiwBCumcjpgBX629zllV6V";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn hashed(host: &str) -> String {
        let salt = [7u8; 20];
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
        let tag = ring::hmac::sign(&k, host.as_bytes());
        let b = base64::engine::general_purpose::STANDARD;
        format!("|1|{}|{}", b.encode(salt), b.encode(tag.as_ref()))
    }

    #[test]
    fn plain_ports_wildcards_negation() {
        let kh = KnownHosts::parse(&format!(
            "# comment\n\
             git.example.com,10.0.0.1 {KEY_A}\n\
             [alt.example.com]:2222 {KEY_A}\n\
             *.wild.test,!bad.wild.test {KEY_B}\n\
             garbage line\n"
        ));
        assert_eq!(kh.len(), 3);
        let (a, b) = (key(KEY_A), key(KEY_B));
        assert!(kh.verify("git.example.com", 22, &a));
        assert!(kh.verify("GIT.example.com.", 22, &a));
        assert!(!kh.verify("git.example.com", 22, &b), "other key");
        assert!(!kh.verify("git.example.com", 2222, &a), "other port");
        assert!(kh.verify("alt.example.com", 2222, &a));
        assert!(!kh.verify("alt.example.com", 22, &a));
        assert!(kh.verify("x.wild.test", 22, &b));
        assert!(!kh.verify("bad.wild.test", 22, &b), "negated");
        assert!(!kh.verify("unknown.test", 22, &a), "unknown host");
    }

    #[test]
    fn hashed_and_revoked() {
        let kh = KnownHosts::parse(&format!(
            "{} {KEY_A}\n{} {KEY_B}\n@revoked * {KEY_B}\n",
            hashed("h.test"),
            hashed("[h.test]:2200"),
        ));
        assert!(kh.verify("h.test", 22, &key(KEY_A)));
        assert!(!kh.verify("other.test", 22, &key(KEY_A)));
        assert!(!kh.verify("h.test", 2200, &key(KEY_B)), "revoked wins");
    }

    #[test]
    fn load_errors() {
        let e = KnownHosts::load(&["/nonexistent/kh".into()]).unwrap_err();
        assert_eq!(
            e,
            "no OpenSSH known_hosts files found (tried /nonexistent/kh)"
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*", "anything"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "abbc"));
        assert!(wildcard("*.x.*", "a.x.y"));
        assert!(!wildcard("*.x", "a.y"));
    }
}

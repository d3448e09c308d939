//! Secrets the guest only ever sees as placeholders.
//!
//! Each secret has a random placeholder (`GONDOLIN_SECRET_` + 48 hex) put
//! in the guest's environment. On the way out, the host replaces
//! placeholders in header values (and inside `Basic` credentials, and in
//! the query when enabled) with the real value, but only for the secret's
//! hosts: a placeholder, or the real value, headed anywhere else blocks
//! the request. Values can change while VMs run; the old value is then
//! refused everywhere.

use std::sync::{Arc, RwLock};

use base64::Engine;

use super::policy::{any_match, patterns, HostPattern};
use super::scrub::Scrubber;

pub const PLACEHOLDER_PREFIX: &str = "GONDOLIN_SECRET_";

#[derive(Debug, Clone)]
pub struct Secret {
    pub name: String,
    pub placeholder: String,
    pub value: String,
    pub hosts: Vec<HostPattern>,
    pub deleted: bool,
    /// Earlier values, refused from now on.
    pub revoked: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Secrets {
    list: RwLock<Vec<Secret>>,
    in_query: bool,
    /// Rebuilt whenever a value changes; `None` with no values at all.
    scrubber: RwLock<Option<Arc<Scrubber>>>,
}

/// Why a request may not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

pub fn new_placeholder() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system RNG works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PLACEHOLDER_PREFIX}{hex}")
}

impl Secrets {
    pub fn new(list: Vec<Secret>, in_query: bool) -> Secrets {
        let scrubber = RwLock::new(scrubber_for(&list));
        Secrets {
            list: RwLock::new(list),
            in_query,
            scrubber,
        }
    }

    /// Finds real values (current and revoked) in what comes back from
    /// upstream; `None` when no secret has a value.
    pub fn scrubber(&self) -> Option<Arc<Scrubber>> {
        self.scrubber.read().unwrap().clone()
    }

    fn rebuild_scrubber(&self, list: &[Secret]) {
        *self.scrubber.write().unwrap() = scrubber_for(list);
    }

    /// Refuse `text` (a redirect's URL, say) if it carries a real value to
    /// a host outside that secret's hosts, or a revoked value anywhere.
    pub fn refuse_real(&self, text: &str, host: &str) -> Result<(), Refused> {
        check(&self.list.read().unwrap(), text, host)
    }

    pub fn is_empty(&self) -> bool {
        self.list.read().unwrap().is_empty()
    }

    pub fn replace_in_query(&self) -> bool {
        self.in_query
    }

    /// Change a secret's value and/or hosts.
    pub fn update(
        &self,
        name: &str,
        value: Option<String>,
        hosts: Option<Vec<String>>,
    ) -> Result<(), String> {
        let mut list = self.list.write().unwrap();
        let s = list
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("unknown secret: {name}"))?;
        if s.deleted {
            return Err(format!("secret deleted: {name}"));
        }
        if let Some(v) = value {
            if v != s.value {
                s.revoked.retain(|r| *r != v); // restoring an old value un-revokes it
                let old = std::mem::replace(&mut s.value, v);
                if !old.is_empty() {
                    s.revoked.push(old);
                }
            }
        }
        if let Some(h) = hosts {
            s.hosts = patterns(&h);
        }
        self.rebuild_scrubber(&list);
        Ok(())
    }

    /// The placeholder now stands for "" and the value is refused.
    pub fn delete(&self, name: &str) -> Result<(), String> {
        let mut list = self.list.write().unwrap();
        let s = list
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("unknown secret: {name}"))?;
        if !s.deleted {
            s.deleted = true;
            let old = std::mem::take(&mut s.value);
            if !old.is_empty() {
                s.revoked.push(old);
            }
        }
        self.rebuild_scrubber(&list);
        Ok(())
    }

    pub fn snapshot(&self) -> Vec<Secret> {
        self.list.read().unwrap().clone()
    }

    /// Substitute into one header value bound for `host`.
    pub fn header(&self, name: &str, value: &str, host: &str) -> Result<String, Refused> {
        let list = self.list.read().unwrap();
        let lower = name.to_ascii_lowercase();
        if lower == "authorization" || lower == "proxy-authorization" {
            if let Some(b64) = value
                .strip_prefix("Basic ")
                .or_else(|| value.strip_prefix("basic "))
            {
                let engine = base64::engine::general_purpose::STANDARD;
                if let Ok(raw) = engine.decode(b64.trim()) {
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    check(&list, &text, host)?;
                    let replaced = substitute(&list, &text, host)?;
                    if replaced != text {
                        return Ok(format!("Basic {}", engine.encode(replaced)));
                    }
                }
            }
        }
        check(&list, value, host)?;
        substitute(&list, value, host)
    }

    /// Substitute into a query string (only when enabled).
    pub fn query(&self, query: &str, host: &str) -> Result<String, Refused> {
        let list = self.list.read().unwrap();
        if !self.in_query {
            return Ok(query.to_string());
        }
        check(&list, query, host)?;
        substitute(&list, query, host)
    }
}

fn scrubber_for(list: &[Secret]) -> Option<Arc<Scrubber>> {
    let pairs = list
        .iter()
        .flat_map(|s| {
            std::iter::once(&s.value)
                .chain(&s.revoked)
                .map(|v| (v.clone(), s.placeholder.clone()))
        })
        .collect();
    Scrubber::new(pairs).map(Arc::new)
}

/// Refuse revoked values anywhere, and live values off their hosts.
fn check(list: &[Secret], text: &str, host: &str) -> Result<(), Refused> {
    for s in list {
        for old in &s.revoked {
            if text.contains(old.as_str())
                && !(!s.value.is_empty()
                    && s.value.contains(old.as_str())
                    && text.contains(s.value.as_str()))
            {
                let why = if s.deleted { "deleted" } else { "revoked" };
                return Err(Refused(format!(
                    "secret {} {why} for host: {}",
                    s.name,
                    shown(host)
                )));
            }
        }
        if !s.value.is_empty() && text.contains(s.value.as_str()) && !any_match(&s.hosts, host) {
            return Err(Refused(format!(
                "secret {} not allowed for host: {}",
                s.name,
                shown(host)
            )));
        }
    }
    Ok(())
}

fn substitute(list: &[Secret], text: &str, host: &str) -> Result<String, Refused> {
    if !text.contains(PLACEHOLDER_PREFIX) {
        return Ok(text.to_string());
    }
    let mut out = text.to_string();
    for s in list {
        if out.contains(s.placeholder.as_str()) {
            if !s.deleted && !any_match(&s.hosts, host) {
                return Err(Refused(format!(
                    "secret {} not allowed for host: {}",
                    s.name,
                    shown(host)
                )));
            }
            out = out.replace(s.placeholder.as_str(), &s.value);
        }
    }
    Ok(out)
}

fn shown(host: &str) -> &str {
    if host.is_empty() {
        "unknown"
    } else {
        host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> (Secrets, String) {
        let ph = new_placeholder();
        let s = Secrets::new(
            vec![Secret {
                name: "API_KEY".into(),
                placeholder: ph.clone(),
                value: "sk-real".into(),
                hosts: patterns(&["api.example.com", "*.trusted.dev"]),
                deleted: false,
                revoked: Vec::new(),
            }],
            false,
        );
        (s, ph)
    }

    #[test]
    fn placeholder_shape() {
        let p = new_placeholder();
        assert_eq!(p.len(), PLACEHOLDER_PREFIX.len() + 48);
        assert!(p[PLACEHOLDER_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(p, new_placeholder());
    }

    #[test]
    fn headers_are_substituted_for_allowed_hosts_only() {
        let (s, ph) = secrets();
        let v = format!("Bearer {ph}");
        assert_eq!(
            s.header("authorization", &v, "api.example.com").unwrap(),
            "Bearer sk-real"
        );
        assert_eq!(s.header("x-key", &ph, "x.trusted.dev").unwrap(), "sk-real");
        let e = s.header("x-key", &ph, "evil.com").unwrap_err();
        assert_eq!(e.0, "secret API_KEY not allowed for host: evil.com");
        let e = s.header("x-key", "sk-real", "evil.com").unwrap_err();
        assert_eq!(
            e.0, "secret API_KEY not allowed for host: evil.com",
            "real value off-host"
        );
        assert_eq!(s.header("x-other", "plain", "evil.com").unwrap(), "plain");
    }

    #[test]
    fn basic_auth_is_decoded_and_reencoded() {
        let (s, ph) = secrets();
        let e = base64::engine::general_purpose::STANDARD;
        let v = format!("Basic {}", e.encode(format!("user:{ph}")));
        let out = s.header("Authorization", &v, "api.example.com").unwrap();
        assert_eq!(out, format!("Basic {}", e.encode("user:sk-real")));
        assert!(s.header("Authorization", &v, "evil.com").is_err());
    }

    #[test]
    fn query_only_when_enabled() {
        let (s, ph) = secrets();
        let q = format!("key={ph}");
        assert_eq!(s.query(&q, "api.example.com").unwrap(), q);
        let s2 = Secrets::new(s.snapshot(), true);
        assert_eq!(s2.query(&q, "api.example.com").unwrap(), "key=sk-real");
        assert!(s2.query(&q, "evil.com").is_err());
    }

    #[test]
    fn rotation_and_deletion() {
        let (s, ph) = secrets();
        s.update("API_KEY", Some("sk-new".into()), None).unwrap();
        assert_eq!(s.header("x", &ph, "api.example.com").unwrap(), "sk-new");
        let e = s.header("x", "sk-real", "api.example.com").unwrap_err();
        assert_eq!(e.0, "secret API_KEY revoked for host: api.example.com");
        // A new value containing the old one is still accepted.
        s.update("API_KEY", Some("sk-new-sk-real".into()), None)
            .unwrap();
        assert_eq!(
            s.header("x", &ph, "api.example.com").unwrap(),
            "sk-new-sk-real"
        );
        s.delete("API_KEY").unwrap();
        s.delete("API_KEY").unwrap();
        assert_eq!(s.header("x", &ph, "api.example.com").unwrap(), "");
        assert!(s
            .header("x", "sk-new-sk-real", "api.example.com")
            .unwrap_err()
            .0
            .contains("deleted"));
        assert_eq!(
            s.update("API_KEY", Some("x".into()), None).unwrap_err(),
            "secret deleted: API_KEY"
        );
        assert_eq!(
            s.update("NOPE", None, None).unwrap_err(),
            "unknown secret: NOPE"
        );
    }
}

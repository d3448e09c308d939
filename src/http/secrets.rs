//! Secrets the guest only ever sees as placeholders.
//!
//! Each secret has a placeholder put in the guest's environment: by default
//! `<marker>.<NAME>`, where the marker (`GONDOLIN_SECRET_` + 48 random hex)
//! is shared by the secrets of one `createHttpHooks` call ("shared" mode);
//! or `GONDOLIN_SECRET_` + 48 random hex per secret ("unique" mode); or a
//! string the user chose (at least [`MIN_CUSTOM_PLACEHOLDER`] visible ASCII
//! characters). On the way out, the host replaces
//! placeholders in header values (and inside `Basic` credentials, and in
//! the query when enabled) with the real value, but only for the secret's
//! hosts: a placeholder, or the real value, headed anywhere else blocks
//! the request. Values can change while VMs run; the old value is then
//! refused everywhere.

use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;

use super::policy::{any_match, patterns, HostPattern};
use super::scrub::Scrubber;

pub const PLACEHOLDER_PREFIX: &str = "GONDOLIN_SECRET_";
/// A user-chosen placeholder shorter than this is too easy to hit by
/// accident (every header holding it would be substituted or refused).
pub const MIN_CUSTOM_PLACEHOLDER: usize = 16;
const MAX_PLACEHOLDER: usize = 512;

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
    /// Finds placeholders (pattern i = secret i; placeholders never change).
    matcher: Option<AhoCorasick>,
    /// Rebuilt whenever a value changes; `None` with no values at all.
    scrubber: RwLock<Option<Arc<Scrubber>>>,
}

/// Why a request may not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// How placeholders are made when the user gives none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceholderMode {
    /// `<marker>.<NAME>`, one random marker per set of secrets.
    Shared,
    /// A random placeholder per secret.
    Unique,
}

impl PlaceholderMode {
    pub fn parse(s: &str) -> Result<PlaceholderMode, String> {
        match s {
            "shared" => Ok(PlaceholderMode::Shared),
            "unique" => Ok(PlaceholderMode::Unique),
            other => Err(format!(
                "secretPlaceholderMode must be \"shared\" or \"unique\" (got {other:?})"
            )),
        }
    }
}

/// A user-chosen placeholder is usable: long enough not to be hit by
/// accident, and only visible ASCII (it travels in header values).
pub fn check_custom_placeholder(name: &str, p: &str) -> Result<(), String> {
    if p.len() < MIN_CUSTOM_PLACEHOLDER || p.len() > MAX_PLACEHOLDER {
        return Err(format!(
            "secrets.{name}.placeholder must be {MIN_CUSTOM_PLACEHOLDER} to {MAX_PLACEHOLDER} characters (got {})",
            p.len()
        ));
    }
    if !p.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "secrets.{name}.placeholder may only hold visible ASCII characters (no spaces)"
        ));
    }
    Ok(())
}

/// Placeholders for `(name, custom placeholder)` pairs, in order. Every
/// placeholder is distinct.
pub fn placeholders(
    mode: PlaceholderMode,
    defs: &[(String, Option<String>)],
) -> Result<Vec<String>, String> {
    let marker = new_placeholder();
    let mut out: Vec<String> = Vec::with_capacity(defs.len());
    for (name, custom) in defs {
        let p = match (custom, mode) {
            (Some(p), _) => {
                check_custom_placeholder(name, p)?;
                p.clone()
            }
            (None, PlaceholderMode::Shared) => format!("{marker}.{name}"),
            (None, PlaceholderMode::Unique) => new_placeholder(),
        };
        if let Some(i) = out.iter().position(|q| *q == p) {
            return Err(format!(
                "secrets.{name} and secrets.{} have the same placeholder",
                defs[i].0
            ));
        }
        out.push(p);
    }
    Ok(out)
}

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
        // Longest first: `<marker>.AB` is not `<marker>.A` followed by "B".
        let matcher = (!list.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(list.iter().map(|s| s.placeholder.as_bytes()))
                .expect("literal patterns always build")
        });
        Secrets {
            list: RwLock::new(list),
            in_query,
            matcher,
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
        // ASCII case is ignored: upstream's text (a redirect's URL) may
        // carry a value case-folded, as a URL's host always is.
        let folded: Vec<Secret> = self
            .list
            .read()
            .unwrap()
            .iter()
            .map(|s| Secret {
                value: s.value.to_ascii_lowercase(),
                revoked: s.revoked.iter().map(|r| r.to_ascii_lowercase()).collect(),
                ..s.clone()
            })
            .collect();
        check(&folded, &text.to_ascii_lowercase(), host)
    }

    /// Whether `host` is one of a live secret's hosts: an answer from it may
    /// hold a real value, whether or not this request carried one (an
    /// earlier request may have stored it there).
    pub fn serves_host(&self, host: &str) -> bool {
        self.list
            .read()
            .unwrap()
            .iter()
            .any(|s| !s.deleted && any_match(&s.hosts, host))
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
                    let replaced = self.substitute(&list, &text, host)?;
                    if replaced != text {
                        return Ok(format!("Basic {}", engine.encode(replaced)));
                    }
                }
            }
        }
        check(&list, value, host)?;
        self.substitute(&list, value, host)
    }

    /// Substitute into a query string (only when enabled).
    pub fn query(&self, query: &str, host: &str) -> Result<String, Refused> {
        let list = self.list.read().unwrap();
        if !self.in_query {
            return Ok(query.to_string());
        }
        check(&list, query, host)?;
        self.substitute(&list, query, host)
    }

    /// Replace every placeholder in one pass (a value put in is never
    /// searched again); a placeholder off its secret's hosts refuses.
    fn substitute(&self, list: &[Secret], text: &str, host: &str) -> Result<String, Refused> {
        let Some(matcher) = &self.matcher else {
            return Ok(text.to_string());
        };
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in matcher.find_iter(text) {
            let s = &list[m.pattern().as_usize()];
            if !s.deleted && !any_match(&s.hosts, host) {
                return Err(Refused(format!(
                    "secret {} not allowed for host: {}",
                    s.name,
                    shown(host)
                )));
            }
            out.push_str(&text[last..m.start()]);
            out.push_str(&s.value);
            last = m.end();
        }
        out.push_str(&text[last..]);
        Ok(out)
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
    fn redirect_text_is_checked_case_folded_and_hosts_are_known() {
        let (s, ph) = secrets();
        // A URL's host comes back lower-cased: "sk-real" as "SK-REAL" is it too.
        assert!(s
            .refuse_real("http://SK-REAL.evil.test/", "sk-real.evil.test")
            .is_err());
        assert!(s
            .refuse_real("http://api.example.com/?k=SK-REAL", "api.example.com")
            .is_ok());
        assert!(s.serves_host("api.example.com") && s.serves_host("x.trusted.dev"));
        assert!(!s.serves_host("other.test"));
        let scrub = s.scrubber().unwrap();
        assert_eq!(
            scrub.text("host SK-Real.evil.test refused"),
            format!("host {ph}.evil.test refused")
        );
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

    fn named(list: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        list.iter()
            .map(|(n, p)| (n.to_string(), (!p.is_empty()).then(|| p.to_string())))
            .collect()
    }

    #[test]
    fn placeholder_modes() {
        let shared =
            placeholders(PlaceholderMode::Shared, &named(&[("A", ""), ("AB", "")])).unwrap();
        let marker = shared[0].strip_suffix(".A").unwrap();
        assert_eq!(marker.len(), PLACEHOLDER_PREFIX.len() + 48);
        assert_eq!(shared[1], format!("{marker}.AB"));
        let again = placeholders(PlaceholderMode::Shared, &named(&[("A", "")])).unwrap();
        assert_ne!(again[0], shared[0], "a new marker per set");
        let unique =
            placeholders(PlaceholderMode::Unique, &named(&[("A", ""), ("B", "")])).unwrap();
        assert!(unique
            .iter()
            .all(|p| p.len() == PLACEHOLDER_PREFIX.len() + 48));
        assert_ne!(unique[0], unique[1]);
        let custom = placeholders(
            PlaceholderMode::Shared,
            &named(&[("A", "sk-live-0123456789abcdef")]),
        )
        .unwrap();
        assert_eq!(custom[0], "sk-live-0123456789abcdef");
        assert!(placeholders(PlaceholderMode::Shared, &named(&[("A", "short")])).is_err());
        assert!(placeholders(
            PlaceholderMode::Shared,
            &named(&[("A", "has a space 0123456")])
        )
        .is_err());
        let dup = named(&[
            ("A", "same-placeholder-0001"),
            ("B", "same-placeholder-0001"),
        ]);
        assert!(placeholders(PlaceholderMode::Unique, &dup)
            .unwrap_err()
            .contains("same placeholder"));
        assert!(PlaceholderMode::parse("random").is_err());
    }

    /// `<marker>.A` inside `<marker>.AB` is not a use of A.
    #[test]
    fn the_longest_placeholder_wins() {
        let ph = placeholders(PlaceholderMode::Shared, &named(&[("A", ""), ("AB", "")])).unwrap();
        let mk = |name: &str, p: &str, value: &str, host: &str| Secret {
            name: name.into(),
            placeholder: p.into(),
            value: value.into(),
            hosts: patterns(&[host]),
            deleted: false,
            revoked: Vec::new(),
        };
        let s = Secrets::new(
            vec![
                mk("A", &ph[0], "va", "a.example"),
                mk("AB", &ph[1], "vab", "ab.example"),
            ],
            false,
        );
        assert_eq!(
            s.header("x", &format!("{} {}", ph[1], ph[1]), "ab.example")
                .unwrap(),
            "vab vab"
        );
        assert_eq!(s.header("x", &ph[0], "a.example").unwrap(), "va");
        assert!(s.header("x", &ph[1], "a.example").is_err());
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

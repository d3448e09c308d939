//! `NativeHttpPolicy`: the built-in egress rules of one `createHttpHooks`
//! result, callable from JS (its `httpHooks.isIpAllowed` / `onRequest`), so
//! what JS reports is decided by the same code the VM runs.

use napi::Env;
use napi_derive::napi;

use super::error::{IntoJs, JsFailure};
use super::net::{globs, NativeSecrets};
use gondolin::error::ErrorCode;
use gondolin::http::policy::patterns;
use gondolin::http::Policy;

#[napi(object)]
pub struct NativeRequestParts {
    pub url: String,
    pub headers: Vec<Vec<String>>,
}

/// The built-in rules of one `createHttpHooks` result, for its callable
/// `httpHooks` (`isIpAllowed`, `onRequest`): the same code the VM runs.
#[napi]
pub struct NativeHttpPolicy {
    policy: Policy,
}

#[napi]
impl NativeHttpPolicy {
    /// `allowed_hosts` absent = every host.
    #[napi(constructor)]
    pub fn new(
        env: &Env,
        allowed_hosts: Option<Vec<String>>,
        allowed_internal_hosts: Vec<String>,
        block_internal_ranges: bool,
        secrets: &NativeSecrets,
    ) -> napi::Result<Self> {
        globs(allowed_hosts.as_deref().unwrap_or(&[]), "allowedHosts").js(env)?;
        globs(&allowed_internal_hosts, "allowedInternalHosts").js(env)?;
        Ok(NativeHttpPolicy {
            policy: Policy {
                allowed_hosts: allowed_hosts.map(|l| patterns(&l)),
                allowed_internal: patterns(&allowed_internal_hosts),
                block_internal: block_internal_ranges,
                secrets: secrets.inner.clone(),
                ..Policy::default()
            },
        })
    }

    /// The host rule, then the IP rule (internal ranges, this machine's
    /// addresses). An unparsable `ip` is not internal (as upstream).
    #[napi]
    pub fn ip_allowed(&self, hostname: String, ip: String) -> bool {
        let host = hostname.trim_end_matches('.').to_ascii_lowercase();
        if !self.policy.host_allowed(&host) {
            return false;
        }
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => self.policy.ip_allowed(&host, ip),
            Err(_) => true,
        }
    }

    /// Placeholders filled in for the request's host; `null` when nothing
    /// changes. Throws (code `secret_refused`) when a secret may not go
    /// there.
    #[napi]
    pub fn apply_secrets(
        &self,
        env: &Env,
        url: String,
        headers: Vec<Vec<String>>,
    ) -> napi::Result<Option<NativeRequestParts>> {
        let pairs: Vec<(String, String)> = headers
            .into_iter()
            .filter_map(|p| match <[String; 2]>::try_from(p) {
                Ok([k, v]) => Some((k, v)),
                Err(_) => None,
            })
            .collect();
        match gondolin::http::apply_secrets(&self.policy.secrets, &url, &pairs) {
            Ok(None) => Ok(None),
            Ok(Some((url, h))) => Ok(Some(NativeRequestParts {
                url,
                headers: h.into_iter().map(|(k, v)| vec![k, v]).collect(),
            })),
            Err(why) => Err(JsFailure::new(ErrorCode::SecretRefused, why)).js(env),
        }
    }
}

//! The option names each options object accepts, and the "unknown option"
//! message that names the nearest valid key.

use super::OptionError;

/// Keys each options object accepts. Add a key here when you add an option.
const KNOWN: &[(&str, &[&str])] = &[
    (
        "VMOptions",
        &[
            "sandbox",
            "rootfs",
            "autoStart",
            "fetch",
            "httpHooks",
            "dns",
            "maxHttpBodyBytes",
            "maxHttpResponseBodyBytes",
            "allowWebSockets",
            "vfs",
            "env",
            "memory",
            "cpus",
            "startTimeoutMs",
            "sessionLabel",
            "debugLog",
            "onEgress",
            "tmpfs",
            "tcp",
            "ssh",
        ],
    ),
    (
        "sandbox",
        &[
            "imagePath",
            "memory",
            "cpus",
            "qemuPath",
            "accel",
            "machineType",
            "cpu",
            "append",
            "debug",
            "debugLog",
            "vfsProvider",
            "netEnabled",
            "httpHooks",
            "dns",
            "fetch",
            "allowWebSockets",
            "maxHttpBodyBytes",
            "maxHttpResponseBodyBytes",
            "rootOverlay",
            "tmpfs",
            "rootDiskSnapshot",
            "bootSnapshot",
            "tcp",
            "ssh",
        ],
    ),
    ("tcp", &["hosts"]),
    (
        "ssh",
        &[
            "allowedHosts",
            "credentials",
            "agent",
            "knownHostsFile",
            "execPolicy",
            "hostVerifier",
            "maxUpstreamConnectionsPerTcpSession",
            "maxUpstreamConnectionsTotal",
            "upstreamReadyTimeoutMs",
            "upstreamKeepaliveIntervalMs",
            "upstreamKeepaliveCountMax",
            "hostKey",
            "upstreams",
        ],
    ),
    ("vfs", &["mounts", "hooks", "fuseMount"]),
    ("rootfs", &["mode", "size"]),
    (
        "createHttpHooks",
        &[
            "allowedHosts",
            "allowedInternalHosts",
            "secrets",
            "replaceSecretsInQuery",
            "blockInternalRanges",
            "secretPlaceholderMode",
            "isRequestAllowed",
            "isIpAllowed",
            "onRequestHead",
            "onRequest",
            "onResponse",
        ],
    ),
    ("secret", &["hosts", "value", "placeholder"]),
    (
        "httpHooks",
        &[
            "isRequestAllowed",
            "isIpAllowed",
            "onRequestHead",
            "onRequest",
            "onResponse",
        ],
    ),
];

/// Upstream options this implementation does not have: say so instead of "unknown".
const UNSUPPORTED: &[(&str, &str, &str)] = &[
    ("sandbox", "vmm", "only the QEMU backend exists"),
    ("sandbox", "krunRunnerPath", "only the QEMU backend exists"),
    ("sandbox", "rootDiskPath", "use rootfs.mode"),
    ("sandbox", "rootDiskFormat", "use rootfs.mode"),
    (
        "sandbox",
        "rootDiskReadOnly",
        "use rootfs.mode: \"readonly\"",
    ),
    ("sandbox", "rootDiskDeleteOnClose", "use rootfs.mode"),
    (
        "sandbox",
        "console",
        "the guest console is kept in a bounded tail (printed with sandbox.debug)",
    ),
    (
        "sandbox",
        "autoRestart",
        "a VM whose QEMU exits stays closed",
    ),
    (
        "sandbox",
        "qemuIdlePauseMs",
        "idle pausing is not implemented",
    ),
    (
        "sandbox",
        "mitmCertDir",
        "the MITM CA is generated per process",
    ),
    ("sandbox", "netMac", "the guest MAC is fixed"),
];

/// Accepted but refused later with its own message: never suggested.
const NEVER_SUGGESTED: &str = "rootDiskSnapshot";

/// The keys the options object `table` accepts (`VMOptions`, `sandbox`,
/// `vfs`, `rootfs`, `createHttpHooks`, `secret`, `httpHooks`).
pub fn known_keys(table: &str) -> Option<&'static [&'static str]> {
    KNOWN.iter().find(|(t, _)| *t == table).map(|(_, k)| *k)
}

/// The names of every key table.
pub fn tables() -> impl Iterator<Item = &'static str> {
    KNOWN.iter().map(|(t, _)| *t)
}

/// Refuse the first key of `keys` that `table` does not accept. `label` is
/// how the message names the object (`secrets.TOKEN`); keys of the VM
/// options themselves are named bare.
pub fn check_keys<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    table: &str,
    label: &str,
) -> Result<(), OptionError> {
    let known =
        known_keys(table).ok_or_else(|| OptionError(format!("no option table named {table:?}")))?;
    for key in keys {
        if known.contains(&key) {
            continue;
        }
        let prefix = if label == "VMOptions" {
            String::new()
        } else {
            format!("{label}.")
        };
        if let Some((_, _, why)) = UNSUPPORTED
            .iter()
            .find(|(t, k, _)| *t == table && *k == key)
        {
            return Err(OptionError(format!(
                "{prefix}{key} is not supported by @gondolin/native: {why}"
            )));
        }
        let candidates = known.iter().copied().filter(|k| *k != NEVER_SUGGESTED);
        let hint = match nearest(key, candidates) {
            Some(near) => format!("did you mean {prefix}{near}?"),
            None => format!("valid keys: {}", known.join(", ")),
        };
        return Err(OptionError(format!("unknown option {prefix}{key}; {hint}")));
    }
    Ok(())
}

/// The valid name closest to `name` (case-insensitive edit distance), or
/// `None` when none is plausibly meant. Ties go to the earlier name.
pub fn nearest<'v>(name: &str, valid: impl IntoIterator<Item = &'v str>) -> Option<&'v str> {
    let mut best = None;
    let mut best_d = usize::MAX;
    for v in valid {
        let d = edit_distance(name, v);
        if d < best_d {
            (best, best_d) = (Some(v), d);
        }
    }
    let bound = 2.max(name.chars().count() / 3);
    best.filter(|_| best_d <= bound)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push((prev[j + 1] + 1).min(cur[j] + 1).min(sub));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(keys: &[&str], table: &str, label: &str) -> String {
        check_keys(keys.iter().copied(), table, label)
            .unwrap_err()
            .0
    }

    #[test]
    fn unknown_keys_name_the_nearest_or_list_all() {
        assert_eq!(
            err(&["memroy"], "VMOptions", "VMOptions"),
            "unknown option memroy; did you mean memory?"
        );
        assert_eq!(
            err(&["debg"], "sandbox", "sandbox"),
            "unknown option sandbox.debg; did you mean sandbox.debug?"
        );
        assert!(err(&["zzzzzzzz"], "VMOptions", "VMOptions")
            .starts_with("unknown option zzzzzzzz; valid keys: sandbox, rootfs"));
        assert_eq!(
            err(&["hots"], "secret", "secrets.A"),
            "unknown option secrets.A.hots; did you mean secrets.A.hosts?"
        );
        assert!(err(&["sandbox"], "sandbox", "sandbox").contains("unknown option sandbox.sandbox"));
        assert!(check_keys(["ssh"], "VMOptions", "VMOptions").is_ok());
        assert_eq!(
            err(&["allowHosts"], "ssh", "ssh"),
            "unknown option ssh.allowHosts; did you mean ssh.allowedHosts?"
        );
        // Object.prototype names are plain unknown keys, not table lookups.
        assert!(
            err(&["toString"], "VMOptions", "VMOptions").starts_with("unknown option toString;")
        );
        assert!(check_keys(["memory", "cpus"], "VMOptions", "VMOptions").is_ok());
    }

    #[test]
    fn a_removed_option_is_never_suggested() {
        assert_eq!(
            nearest("rootDiskSnapshop", ["rootDiskSnapshot"]),
            Some("rootDiskSnapshot")
        );
        let e = err(&["rootDiskSnapshop"], "sandbox", "sandbox");
        assert!(!e.contains("did you mean sandbox.rootDiskSnapshot"), "{e}");
    }

    #[test]
    fn nearest_is_case_insensitive_and_bounded() {
        assert_eq!(nearest("ONREAD", ["onRead", "onWrite"]), Some("onRead"));
        assert_eq!(nearest("qqqqqq", ["onRead"]), None);
    }
}

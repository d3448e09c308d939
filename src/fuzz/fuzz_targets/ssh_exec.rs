//! Guest-controlled SSH egress input: an exec command through
//! `git_exec_info` (upstream's getInfoFromSshExecRequest) and the default
//! exec policy, and known_hosts text through the parser and matcher. Must
//! never panic; an accepted repo path is always a plain `a/b` path.
#![no_main]

use gondolin::ssh::exec_info::{default_policy_allows, git_exec_info};
use gondolin::ssh::known_hosts::{KnownHosts, PublicKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(info) = git_exec_info(&text) {
        assert!(info.service.to_ascii_lowercase().starts_with("git-"));
        assert!(
            info.repo.contains('/') && !info.repo.contains("..") && !info.repo.starts_with('-')
        );
        assert!(info
            .repo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b)));
    }
    let _ = default_policy_allows(&text);
    let kh = KnownHosts::parse(&text);
    let key = PublicKey::from_openssh(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAII3pTvcGNOwXxWWQdNoK9JcjKCDSjIK1mczha0pFQ8ef",
    )
    .expect("a valid key");
    for (host, port) in [("github.com", 22), ("h.test", 2222)] {
        let _ = kh.verify(host, port, &key);
    }
});

//! `getInfoFromSshExecRequest` (api.md §6): which git service and repo an
//! SSH `exec` command asks for, or `None` when it is anything but the
//! canonical `git-<service> '<org>/<repo>'` form.
//!
//! Not a shell parser: a command is understood only when it splits into
//! exactly two words made of characters no shell expands, so a command an
//! upstream server runs through `sh -c` means what this says it means.

/// A git-over-SSH request: `service` is the basename (`git-upload-pack`),
/// `repo` the normalized path (`org/repo.git`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitExecInfo {
    pub service: String,
    pub repo: String,
}

/// The git services the default exec policy lets through.
pub const GIT_SERVICES: [&str; 3] = ["git-upload-pack", "git-receive-pack", "git-upload-archive"];

/// Split like a shell would for plain words: single quotes, double quotes
/// (backslash escapes inside), backslash escapes outside. An unterminated
/// quote or a trailing backslash gives `None`.
fn split(command: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = command.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut word = String::new();
        #[derive(PartialEq)]
        enum Mode {
            Plain,
            Single,
            Double,
        }
        let mut mode = Mode::Plain;
        while let Some(&c) = chars.peek() {
            match mode {
                Mode::Plain if c.is_whitespace() => break,
                Mode::Plain => {
                    chars.next();
                    match c {
                        '\'' => mode = Mode::Single,
                        '"' => mode = Mode::Double,
                        '\\' => word.push(chars.next()?),
                        c => word.push(c),
                    }
                }
                Mode::Single => {
                    chars.next();
                    if c == '\'' {
                        mode = Mode::Plain;
                    } else {
                        word.push(c);
                    }
                }
                Mode::Double => {
                    chars.next();
                    match c {
                        '"' => mode = Mode::Plain,
                        '\\' => word.push(chars.next()?),
                        c => word.push(c),
                    }
                }
            }
        }
        if mode != Mode::Plain {
            return None;
        }
        out.push(word);
    }
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// `git-[a-z0-9][a-z0-9-]*`, case-insensitive.
fn is_service_name(s: &str) -> bool {
    let Some(rest) = s
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("git-"))
        .map(|_| &s[4..])
    else {
        return false;
    };
    let mut cs = rest.chars();
    cs.next().is_some_and(alnum) && cs.all(|c| alnum(c) || c == '-')
}

/// `^/?([a-z0-9._+-]+/)*git-[a-z0-9][a-z0-9-]*$`, case-insensitive.
fn is_service_path(s: &str) -> bool {
    let s = s.strip_prefix('/').unwrap_or(s);
    let mut parts: Vec<&str> = s.split('/').collect();
    let Some(last) = parts.pop() else {
        return false;
    };
    parts.iter().all(|p| {
        !p.is_empty()
            && p.chars()
                .all(|c| alnum(c) || matches!(c, '.' | '_' | '+' | '-'))
    }) && is_service_name(last)
}

/// `^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)+(\.git)?$`, case-insensitive.
fn is_repo_path(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            let mut cs = p.chars();
            cs.next().is_some_and(alnum) && cs.all(|c| alnum(c) || matches!(c, '.' | '_' | '-'))
        })
}

/// Upstream's `getInfoFromSshExecRequest` on the request's command.
pub fn git_exec_info(command: &str) -> Option<GitExecInfo> {
    let argv = split(command)?;
    let [service, repo] = argv.as_slice() else {
        return None;
    };
    let service = service.trim();
    if !is_service_path(service) {
        return None;
    }
    let service = service.rsplit('/').next().unwrap_or(service);
    let mut repo = repo.trim();
    if repo.is_empty() {
        return None;
    }
    repo = repo.strip_prefix("~/").unwrap_or(repo);
    repo = repo.trim_start_matches('/').trim_end_matches('/');
    if !repo.contains('/') || repo.contains("..") || repo.starts_with('-') || !is_repo_path(repo) {
        return None;
    }
    Some(GitExecInfo {
        service: service.to_string(),
        repo: repo.to_string(),
    })
}

/// The default exec policy (ours; upstream allows every command when no
/// `execPolicy` is given): git's three SSH services on a sane repo path.
pub fn default_policy_allows(command: &str) -> bool {
    git_exec_info(command).is_some_and(|i| GIT_SERVICES.contains(&i.service.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(c: &str) -> Option<(String, String)> {
        git_exec_info(c).map(|i| (i.service, i.repo))
    }
    fn some(s: &str, r: &str) -> Option<(String, String)> {
        Some((s.into(), r.into()))
    }

    #[test]
    fn parses_git_commands() {
        assert_eq!(
            info("git-upload-pack 'org/repo.git'"),
            some("git-upload-pack", "org/repo.git")
        );
        assert_eq!(
            info("git-receive-pack \"org/repo.git\""),
            some("git-receive-pack", "org/repo.git")
        );
        assert_eq!(
            info("git-upload-pack '~/org/repo.git/'"),
            some("git-upload-pack", "org/repo.git")
        );
        assert_eq!(
            info("/usr/bin/git-upload-pack '/srv/git/repo.git'"),
            some("git-upload-pack", "srv/git/repo.git")
        );
        assert_eq!(
            info("  git-upload-archive   a/b  "),
            some("git-upload-archive", "a/b")
        );
        assert_eq!(
            info("git-upload-pack o\\/r"),
            some("git-upload-pack", "o/r")
        );
    }

    #[test]
    fn refuses_the_rest() {
        for c in [
            "",
            "ls -la",
            "git-upload-pack",
            "git-upload-pack 'repo.git'",
            "git-upload-pack 'org/repo.git' extra",
            "git-upload-pack 'org/repo.git'; rm -rf /",
            "git-upload-pack 'org/../repo.git'",
            "git-upload-pack '-org/repo.git'",
            "git-upload-pack 'org/$(id).git'",
            "git-upload-pack 'org/repo.git",
            "git-upload-pack org/repo.git\\",
            "$HOME/git-upload-pack org/repo.git",
            "git upload-pack org/repo.git",
            "git- org/repo.git",
            "bin//git-upload-pack org/repo.git",
            "git-upload-pack 'org//repo.git'",
            "git-upload-pack 'org/.repo.git'",
        ] {
            assert_eq!(info(c), None, "{c:?}");
        }
    }

    #[test]
    fn default_policy() {
        assert!(default_policy_allows("git-upload-pack 'org/repo.git'"));
        assert!(default_policy_allows("git-receive-pack 'org/repo.git'"));
        assert!(default_policy_allows("git-upload-archive 'org/repo.git'"));
        assert!(!default_policy_allows("git-shell 'org/repo.git'"));
        assert!(!default_policy_allows("sh -c id"));
        assert!(!default_policy_allows("id"));
    }
}

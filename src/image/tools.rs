//! Host tools the build needs, with the Debian package that provides each.

use std::process::{Command, Stdio};

use super::ImageError;

const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("dpkg-deb", "dpkg"),
    ("depmod", "kmod"),
    ("tar", "tar"),
];
/// Without root: mmdebstrap's unshare mode maps ids with these, and
/// fakeroot keeps the tree's ownership between tar and mkfs.ext4.
const ROOTLESS_TOOLS: &[(&str, &str)] = &[("newuidmap", "uidmap"), ("fakeroot", "fakeroot")];

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file())
}

pub fn check() -> Result<(), ImageError> {
    let root = nix::unistd::geteuid().is_root();
    let rootless: &[_] = if root { &[] } else { ROOTLESS_TOOLS };
    for (tool, package) in TOOLS.iter().chain(rootless) {
        if !on_path(tool) {
            return Err(ImageError::MissingTool { tool, package });
        }
    }
    if !root {
        if let Some(why) = no_user_namespaces() {
            return Err(ImageError::Rootless(why));
        }
    }
    Ok(())
}

/// Why mmdebstrap's unshare mode cannot work for this user, if it cannot.
fn no_user_namespaces() -> Option<String> {
    let knob = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if knob("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Some(
            "unprivileged user namespaces are off (sysctl kernel.unprivileged_userns_clone=0)"
                .into(),
        );
    }
    if knob("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user namespaces are off (sysctl user.max_user_namespaces=0)".into());
    }
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name);
    let listed = |text: String| {
        text.lines().any(|l| {
            let who = l.split(':').next().unwrap_or("");
            who == uid.to_string() || Some(who) == name.as_deref()
        })
    };
    if !std::fs::read_to_string("/etc/subuid")
        .map(listed)
        .unwrap_or(false)
    {
        return Some(format!(
            "{} has no subordinate ids in /etc/subuid (add them: sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {})",
            name.as_deref().unwrap_or("this user"),
            name.as_deref().unwrap_or("USER")
        ));
    }
    None
}

/// Run a command; on failure the error carries the tail of its output.
pub fn run(step: &str, cmd: &mut Command) -> Result<String, ImageError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Step {
            step: step.into(),
            message: e.to_string(),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(ImageError::Step {
            step: step.into(),
            message: format!("{}\n{}", out.status, tail.join("\n")),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

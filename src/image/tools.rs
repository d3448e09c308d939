//! Host tools the build needs, with the Debian package that provides each.

use std::process::{Command, Stdio};

use super::ImageError;

const TOOLS: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("dpkg-deb", "dpkg"),
    ("chroot", "coreutils"),
    ("depmod", "kmod"),
];

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(tool).is_file())
}

pub fn check() -> Result<(), ImageError> {
    for (tool, package) in TOOLS {
        if !on_path(tool) {
            return Err(ImageError::MissingTool { tool, package });
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(ImageError::NotRoot);
    }
    Ok(())
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

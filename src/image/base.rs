//! Stage 1: the Debian base (rootfs.ext4, kernel, modules), cached per
//! definition. Slow; runs debootstrap and apt as root.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{io_err, tools, Definition, ImageError};

/// Bump when the base layout or its recipe changes.
const BASE_FORMAT: &str = "gondolin-base-v2";
/// Directories every image has for VFS mounts (`/data` is the default FUSE
/// mount, `/etc/gondolin` is always served, `/workspace` is the usual
/// project mount). Other mount paths are created at boot on a writable root.
const MOUNT_POINTS: [&str; 3] = ["data", "workspace", "etc/gondolin"];

#[derive(Debug, Clone)]
pub struct Base {
    pub dir: PathBuf,
    pub kernel_version: String,
}

impl Base {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs.ext4")
    }
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn modules(&self) -> PathBuf {
        self.dir.join("modules")
    }
}

pub fn base_hash(def: &Definition) -> String {
    let mut h = Sha256::new();
    h.update(BASE_FORMAT);
    h.update(&def.raw);
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    hex[..24].to_string()
}

pub fn ensure(
    def: &Definition,
    root: &Path,
    verbose: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Base, ImageError> {
    let dir = root.join("base").join(base_hash(def));
    if let Ok(v) = fs::read_to_string(dir.join("kernel-version")) {
        return Ok(Base {
            dir,
            kernel_version: v.trim().to_string(),
        });
    }
    tools::check()?;
    let tmp = root
        .join("base")
        .join(format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let result = build_base(def, &tmp, verbose, progress);
    let tree = tmp.join("root");
    if tree.exists() {
        let _ = unmount_all(&tree);
        let _ = fs::remove_dir_all(&tree);
    }
    let kernel_version = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &dir).map_err(io_err(format!("moving the base into {}", dir.display())))?;
    Ok(Base {
        dir,
        kernel_version,
    })
}

fn chroot(tree: &Path) -> Command {
    let mut c = Command::new("chroot");
    c.arg(tree)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C");
    c
}

fn unmount_all(tree: &Path) -> Result<(), nix::Error> {
    nix::mount::umount2(&tree.join("proc"), nix::mount::MntFlags::MNT_DETACH)
}

fn build_base(
    def: &Definition,
    tmp: &Path,
    verbose: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<String, ImageError> {
    let tree = tmp.join("root");
    progress(&format!(
        "debootstrap {} (minbase) from {} — about a minute",
        def.release, def.mirror
    ));
    let out = tools::run(
        "debootstrap",
        Command::new("debootstrap")
            .args(["--variant=minbase", &def.release])
            .arg(&tree)
            .arg(&def.mirror),
    )?;
    if verbose {
        out.lines().for_each(&mut *progress);
    }
    // Don't let package scripts start services inside the chroot.
    let policy = tree.join("usr/sbin/policy-rc.d");
    fs::write(&policy, "#!/bin/sh\nexit 101\n").map_err(io_err("writing policy-rc.d"))?;
    set_mode(&policy, 0o755)?;
    nix::mount::mount(
        Some("proc"),
        &tree.join("proc"),
        Some("proc"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| ImageError::Step {
        step: "mounting /proc in the chroot".into(),
        message: e.to_string(),
    })?;

    progress(&format!(
        "installing {} — a minute or two",
        def.packages.join(" ")
    ));
    let out = tools::run(
        "apt-get install",
        chroot(&tree)
            .args(["apt-get", "install", "-y", "-q", "--no-install-recommends"])
            .args(&def.packages),
    )?;
    if verbose {
        out.lines().for_each(&mut *progress);
    }

    progress(&format!("fetching the kernel ({})", def.kernel_package));
    let deps = tools::run(
        "apt-cache depends",
        chroot(&tree).args([
            "apt-cache",
            "depends",
            "--no-recommends",
            "--no-suggests",
            &def.kernel_package,
        ]),
    )?;
    let versioned = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| ImageError::Step {
            step: "resolving the kernel package".into(),
            message: format!("{} has no linux-image-* dependency", def.kernel_package),
        })?
        .to_string();
    tools::run(
        "apt-get download",
        chroot(&tree).args([
            "sh",
            "-c",
            &format!("cd /tmp && apt-get download -q {versioned}"),
        ]),
    )?;
    let _ = unmount_all(&tree);
    let deb = fs::read_dir(tree.join("tmp"))
        .map_err(io_err("listing the downloaded kernel"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| ImageError::Step {
            step: "apt-get download".into(),
            message: "no .deb downloaded".into(),
        })?;
    let kdir = tmp.join("kernel");
    tools::run(
        "dpkg-deb -x",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&kdir),
    )?;
    fs::remove_file(&deb).map_err(io_err("removing the kernel .deb"))?;
    let version = versioned.trim_start_matches("linux-image-").to_string();
    fs::copy(
        kdir.join(format!("boot/vmlinuz-{version}")),
        tmp.join("vmlinuz"),
    )
    .map_err(io_err("copying the kernel image"))?;
    // The .deb ships no modules.dep: depmod computes it at install time.
    tools::run(
        "depmod",
        Command::new("depmod").arg("-b").arg(&kdir).arg(&version),
    )?;
    copy_modules(
        &kdir.join("lib/modules").join(&version),
        &def.modules,
        &tmp.join("modules"),
    )?;
    let _ = fs::remove_dir_all(&kdir);

    progress("trimming the rootfs and writing rootfs.ext4");
    tidy(&tree)?;
    let size_mib = tree_size(&tree) / (1024 * 1024) * 115 / 100 + def.rootfs_extra_mib + 64;
    let image = tmp.join("rootfs.ext4");
    tools::run(
        "mkfs.ext4",
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                "gondolin-root",
                "-O",
                "^has_journal",
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(&tree)
            .arg(&image)
            .arg(format!("{size_mib}M")),
    )?;
    fs::write(tmp.join("kernel-version"), format!("{version}\n"))
        .map_err(io_err("writing kernel-version"))?;
    Ok(version)
}

fn set_mode(p: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", p.display())))
}

/// Copy `wanted` modules and their dependencies (per modules.dep) into
/// `dest`, and write `dest/load-order` with dependencies first.
pub fn copy_modules(moddir: &Path, wanted: &[String], dest: &Path) -> Result<(), ImageError> {
    let dep =
        fs::read_to_string(moddir.join("modules.dep")).map_err(io_err("reading modules.dep"))?;
    let builtin = fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let order = resolve_modules(&dep, &builtin, wanted)?;
    fs::create_dir_all(dest).map_err(io_err("creating the modules dir"))?;
    let mut names = Vec::new();
    for rel in &order {
        let name = Path::new(rel)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let src = moddir.join(rel);
        if name.ends_with(".ko") {
            fs::copy(&src, dest.join(&name)).map_err(io_err(format!("copying {rel}")))?;
            names.push(name);
        } else {
            // .ko.xz / .ko.zst: finit_module needs plain ELF on kernels
            // without in-kernel decompression; unpack here.
            let plain = name.split(".ko").next().unwrap().to_string() + ".ko";
            let tool = if name.ends_with(".xz") { "xz" } else { "zstd" };
            let out = Command::new(tool)
                .arg("-dc")
                .arg(&src)
                .output()
                .map_err(io_err(format!("running {tool}")))?;
            if !out.status.success() {
                return Err(ImageError::Step {
                    step: format!("{tool} -d {rel}"),
                    message: out.status.to_string(),
                });
            }
            fs::write(dest.join(&plain), &out.stdout).map_err(io_err("writing a module"))?;
            names.push(plain);
        }
    }
    fs::write(dest.join("load-order"), names.join("\n") + "\n")
        .map_err(io_err("writing load-order"))
}

/// Dependency-first order of the module files for `wanted`. Modules built
/// into the kernel are skipped; unknown ones are an error.
pub fn resolve_modules(
    dep: &str,
    builtin: &str,
    wanted: &[String],
) -> Result<Vec<String>, ImageError> {
    let norm = |s: &str| s.replace('-', "_");
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let file = Path::new(path)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let name = norm(file.split(".ko").next().unwrap_or_default());
        deps.insert(
            name,
            (
                path.to_string(),
                rest.split_whitespace().map(str::to_string).collect(),
            ),
        );
    }
    let builtin: HashSet<String> = builtin
        .lines()
        .filter_map(|l| Path::new(l).file_name())
        .map(|f| norm(f.to_string_lossy().split(".ko").next().unwrap_or_default()))
        .collect();
    let by_path: HashMap<&str, &str> = deps
        .iter()
        .map(|(n, (p, _))| (p.as_str(), n.as_str()))
        .collect();

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        by_path: &HashMap<&str, &str>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let (path, ds) = &deps[name];
        for d in ds {
            if let Some(n) = by_path.get(d.as_str()) {
                visit(n, deps, by_path, seen, order);
            }
        }
        order.push(path.clone());
    }
    for w in wanted {
        let n = norm(w);
        if deps.contains_key(&n) {
            visit(&n, &deps, &by_path, &mut seen, &mut order);
        } else if !builtin.contains(&n) {
            return Err(ImageError::Step {
                step: "resolving kernel modules".into(),
                message: format!("module {w} is neither built in nor in modules.dep"),
            });
        }
    }
    Ok(order)
}

/// Drop what a sandbox never reads, and set the few files a booted system
/// expects.
fn tidy(tree: &Path) -> Result<(), ImageError> {
    for d in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "var/lib/apt/lists",
        "var/cache/apt",
        "var/log",
    ] {
        let p = tree.join(d);
        let _ = fs::remove_dir_all(&p);
        let _ = fs::create_dir_all(&p);
    }
    let _ = fs::remove_file(tree.join("usr/sbin/policy-rc.d"));
    let write = |rel: &str, text: &str| {
        fs::write(tree.join(rel), text).map_err(io_err(format!("writing /{rel}")))
    };
    write("etc/hostname", "gondolin\n")?;
    // Mount points for the host-served filesystem, so they exist even when
    // the root disk is attached read-only.
    for d in MOUNT_POINTS {
        fs::create_dir_all(tree.join(d)).map_err(io_err(format!("creating /{d}")))?;
    }
    write(
        "etc/hosts",
        "127.0.0.1\tlocalhost gondolin\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    let _ = fs::remove_file(tree.join("etc/resolv.conf"));
    write("etc/resolv.conf", "")?;
    let py = tree.join("usr/bin/python");
    if !py.exists() {
        std::os::unix::fs::symlink("python3", &py).map_err(io_err("linking python"))?;
    }
    Ok(())
}

fn tree_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.len().max(4096);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_resolve_dependencies_first() {
        let dep = "kernel/drivers/virtio/virtio.ko:\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
                   kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko\n";
        let order = resolve_modules(
            dep,
            "kernel/fs/ext4/ext4.ko\n",
            &[
                "virtio_pci".into(),
                "virtio_blk".into(),
                "virtio_rng".into(),
                "ext4".into(),
            ],
        )
        .unwrap();
        let pos = |s: &str| order.iter().position(|p| p.ends_with(s)).unwrap();
        assert!(pos("/virtio.ko") < pos("virtio_pci.ko"));
        assert!(pos("virtio_ring.ko") < pos("virtio_blk.ko"));
        assert!(pos("virtio_pci_modern_dev.ko") < pos("virtio_pci.ko"));
        assert!(order.iter().any(|p| p.ends_with("virtio-rng.ko")));
        assert_eq!(order.len(), 6, "each module once: {order:?}");
        let e = resolve_modules(dep, "", &["nope".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("module nope"), "{e}");
    }
}

//! Stage 1: the Debian base (rootfs.ext4, kernel, modules), cached per
//! definition. Slow: one mmdebstrap run (root mode as root, unshare mode
//! in a user namespace otherwise), then `mkfs.ext4 -d` on its tar.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{io_err, tools, Definition, ImageError};

/// Bump when the base layout or its recipe changes.
const BASE_FORMAT: &str = "gondolin-base-v3";
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

pub fn base_hash(def: &Definition) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    h.update(BASE_FORMAT);
    h.update(def.inputs_hash()?);
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex[..24].to_string())
}

pub fn ensure(
    def: &Definition,
    root: &Path,
    verbose: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<Base, ImageError> {
    let dir = root.join("base").join(base_hash(def)?);
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
    let kernel_version = match result {
        Ok(v) => v,
        Err(e) => {
            // A tree unpacked without root may hold read-only directories.
            let _ = Command::new("chmod")
                .arg("-R")
                .arg("u+w")
                .arg(&tmp)
                .status();
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

/// Shell for a `--customize-hook`: `$1` is the tree. Drops what a sandbox
/// never reads and sets the few files a booted system expects; the
/// [`MOUNT_POINTS`] are made after it.
const TIDY_HOOK: &str = r#"set -e
for d in usr/share/doc usr/share/man usr/share/info var/log; do rm -rf "$1/$d"; mkdir -p "$1/$d"; done
echo gondolin > "$1/etc/hostname"
printf '127.0.0.1\tlocalhost gondolin\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$1/etc/hosts"
rm -f "$1/etc/resolv.conf"; : > "$1/etc/resolv.conf"
[ -e "$1/usr/bin/python" ] || [ ! -e "$1/usr/bin/python3" ] || ln -s python3 "$1/usr/bin/python"
"#;

/// Shell run in the chroot: download the versioned kernel package the
/// meta package `$1` depends on into /tmp/kernel.
const KERNEL_HOOK: &str = r#"set -e
v=$(apt-cache depends --no-recommends --no-suggests "$1" | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n 1)
[ -n "$v" ] || { echo "$1 has no linux-image-* dependency" >&2; exit 1; }
mkdir -p /tmp/kernel && cd /tmp/kernel && apt-get download -q "$v" >/dev/null
"#;

/// Shell quoting for one word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn build_base(
    def: &Definition,
    tmp: &Path,
    verbose: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<String, ImageError> {
    let root = nix::unistd::geteuid().is_root();
    let tar = tmp.join("root.tar");
    let kdeb = tmp.join("kernel-deb");
    progress(&format!(
        "mmdebstrap {} ({} mode) from {} with {} — a few minutes",
        def.release,
        if root { "root" } else { "rootless, unshare" },
        def.mirror,
        def.packages.join(" ")
    ));
    let mut mm = Command::new("mmdebstrap");
    mm.arg(if root {
        "--mode=root"
    } else {
        "--mode=unshare"
    })
    .args([
        "--variant=minbase",
        "--format=tar",
        "--aptopt=APT::Install-Recommends \"false\"",
    ]);
    if !def.packages.is_empty() {
        mm.arg(format!("--include={}", def.packages.join(",")));
    }
    // The definition's own steps, in order: files in, then commands.
    for f in &def.post_build.copy {
        let dest = f.dest.to_string_lossy();
        let parent = f
            .dest
            .parent()
            .map(|p| p.to_string_lossy())
            .unwrap_or_default();
        mm.arg(format!(
            "--customize-hook=mkdir -p \"$1\"{}",
            sh_quote(&parent)
        ))
        .arg(format!(
            "--customize-hook=upload {} {}",
            sh_quote(&f.src.to_string_lossy()),
            sh_quote(&dest)
        ));
    }
    for c in &def.post_build.commands {
        mm.arg(format!(
            "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive sh -c {}",
            sh_quote(c)
        ));
    }
    mm.arg(format!(
        "--customize-hook=chroot \"$1\" sh -c {} kernel {}",
        sh_quote(KERNEL_HOOK),
        sh_quote(&def.kernel_package)
    ))
    .arg(format!(
        "--customize-hook=sync-out /tmp/kernel {}",
        sh_quote(&kdeb.to_string_lossy())
    ))
    .arg("--customize-hook=rm -rf \"$1/tmp/kernel\"")
    .arg(format!(
        "--customize-hook=sh -c {} tidy \"$1\"",
        sh_quote(TIDY_HOOK)
    ))
    // Mount points for the host-served filesystem, so they exist even when
    // the root disk is attached read-only.
    .arg(format!(
        "--customize-hook=cd \"$1\" && mkdir -p {}",
        MOUNT_POINTS.join(" ")
    ))
    .arg(&def.release)
    .arg(&tar)
    .arg(&def.mirror)
    .env("LC_ALL", "C");
    let out = tools::run("mmdebstrap", &mut mm)?;
    if verbose {
        out.lines().for_each(&mut *progress);
    }

    progress(&format!("unpacking the kernel ({})", def.kernel_package));
    let deb = fs::read_dir(&kdeb)
        .map_err(io_err("listing the downloaded kernel"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| ImageError::Step {
            step: "downloading the kernel".into(),
            message: "no .deb downloaded".into(),
        })?;
    let kdir = tmp.join("kernel");
    tools::run(
        "dpkg-deb -x",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&kdir),
    )?;
    let version = deb
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("linux-image-"))
        .and_then(|n| n.split('_').next())
        .ok_or_else(|| ImageError::Step {
            step: "reading the kernel version".into(),
            message: format!("unexpected package file {}", deb.display()),
        })?
        .to_string();
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
    let _ = fs::remove_dir_all(&kdeb);

    progress("writing rootfs.ext4");
    let tar_mib = fs::metadata(&tar)
        .map_err(io_err("reading the rootfs tar"))?
        .len()
        >> 20;
    let size_mib = tar_mib * 115 / 100 + def.rootfs_extra_mib + 64;
    // Ownership comes from the tar: as root it is real; without root,
    // fakeroot records it while tar unpacks and mkfs.ext4 reads it back.
    let script = format!(
        "set -e; mkdir tree; tar -xpf root.tar -C tree --numeric-owner; \
         mkfs.ext4 -q -F -L gondolin-root -O ^has_journal -E root_owner=0:0 -d tree rootfs.ext4 {size_mib}M; \
         chmod -R u+w tree; rm -rf tree root.tar"
    );
    let mut mk = if root {
        Command::new("sh")
    } else {
        let mut c = Command::new("fakeroot");
        c.arg("sh");
        c
    };
    tools::run("mkfs.ext4", mk.arg("-c").arg(&script).current_dir(tmp))?;
    fs::write(tmp.join("kernel-version"), format!("{version}\n"))
        .map_err(io_err("writing kernel-version"))?;
    Ok(version)
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

//! OCI images as a rootfs source (`gondolin build --from-oci REF`).
//!
//! REF is an OCI layout directory (`oci-layout:PATH[:TAG]`, or a path
//! holding `oci-layout` + `index.json`) or a registry reference, which our
//! registry client (`oci::fetch_to_layout`, the one `gondolin image pull`
//! uses) brings into the local OCI cache, itself a layout (see
//! ocirootfs_source.rs for the pull policy). The manifest is resolved (an
//! index by platform, default linux/<this machine>), every blob is checked
//! against its sha256, and the layers are flattened in Rust into one tar
//! with whiteouts applied (`.wh.NAME` removes NAME from lower layers,
//! `.wh..wh..opq` their contents of the directory). That tar is unpacked and
//! turned into ext4 in one shell, under `fakeroot` when not root, like the
//! Debian base, so ownership and modes in the ext4 are the layers'.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::{io_err, tools, ImageError};

/// Bump when the flattening or the additions for our guest change.
pub const OCI_ROOTFS_FORMAT: &str = "gondolin-ocirootfs-v1";

#[path = "ocirootfs_source.rs"]
mod source;
pub use source::{
    parse_source, parse_source_in, resolve, resolve_layout, Fetch, Platform, PullPolicy, Source,
    CACHE_DIR, REF_NAME,
};

fn step(step: &str, message: impl Into<String>) -> ImageError {
    ImageError::Step {
        step: step.into(),
        message: message.into(),
    }
}

/// A resolved image: its manifest digest and layers (bottom first).
pub struct Resolved {
    pub digest: String,
    layers: Vec<(PathBuf, String)>,
}

fn layer_reader(path: &Path, media_type: &str) -> Result<Box<dyn Read>, ImageError> {
    let f = BufReader::new(
        fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?,
    );
    Ok(if media_type.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else if media_type.ends_with("zstd") {
        Box::new(zstd::Decoder::with_buffer(f).map_err(io_err("starting zstd"))?)
    } else {
        Box::new(f)
    })
}

/// `./a/b/` → `a/b`; None for the root or a path leaving it.
fn normalize(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir | Component::RootDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Remove `path` and everything under it that came from a layer below `layer`.
fn remove_lower(
    map: &mut BTreeMap<String, (usize, usize)>,
    path: &str,
    layer: usize,
    self_too: bool,
) {
    if self_too && map.get(path).is_some_and(|e| e.0 < layer) {
        map.remove(path);
    }
    let lo = format!("{path}/");
    let hi = format!("{path}0");
    let doomed: Vec<String> = map
        .range(lo..hi)
        .filter(|(_, e)| e.0 < layer)
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        map.remove(&k);
    }
}

/// Which entries survive: path → (layer, entry index).
fn plan(layers: &[(PathBuf, String)]) -> Result<BTreeMap<String, (usize, usize)>, ImageError> {
    let mut map = BTreeMap::new();
    for (i, (p, mt)) in layers.iter().enumerate() {
        let mut ar = tar::Archive::new(layer_reader(p, mt)?);
        let entries = ar.entries().map_err(io_err("reading a layer"))?;
        for (j, e) in entries.enumerate() {
            let e = e.map_err(io_err(format!("reading layer {i}")))?;
            let raw = e.path().map_err(io_err("reading a layer path"))?;
            let Some(path) = normalize(&raw) else {
                continue;
            };
            let (parent, base) = match path.rsplit_once('/') {
                Some((d, b)) => (Some(d), b),
                None => (None, path.as_str()),
            };
            if base == ".wh..wh..opq" {
                match parent {
                    Some(d) => remove_lower(&mut map, d, i, false),
                    None => map.retain(|_, v: &mut (usize, usize)| v.0 >= i),
                }
            } else if let Some(name) = base.strip_prefix(".wh.") {
                let target = match parent {
                    Some(d) => format!("{d}/{name}"),
                    None => name.to_string(),
                };
                remove_lower(&mut map, &target, i, true);
            } else {
                if !e.header().entry_type().is_dir() {
                    remove_lower(&mut map, &path, i, false);
                }
                map.insert(path, (i, j));
            }
        }
    }
    Ok(map)
}

/// Flatten `layers` into one tar at `out`.
pub fn flatten(resolved: &Resolved, out: &Path) -> Result<(), ImageError> {
    let layers = &resolved.layers;
    let map = plan(layers)?;
    let mut keep: Vec<HashSet<usize>> = vec![HashSet::new(); layers.len()];
    for (i, j) in map.values() {
        keep[*i].insert(*j);
    }
    let f = fs::File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    b.mode(tar::HeaderMode::Complete);
    for (i, (p, mt)) in layers.iter().enumerate() {
        let mut ar = tar::Archive::new(layer_reader(p, mt)?);
        let entries = ar.entries().map_err(io_err("reading a layer"))?;
        for (j, e) in entries.enumerate() {
            let mut e = e.map_err(io_err(format!("reading layer {i}")))?;
            if !keep[i].contains(&j) {
                continue;
            }
            let path = normalize(&e.path().map_err(io_err("reading a layer path"))?)
                .expect("kept entries have a path");
            let mut h = e.header().clone();
            let t = h.entry_type();
            let w = if t.is_symlink() || t.is_hard_link() {
                let link = e
                    .link_name()
                    .map_err(io_err("reading a link name"))?
                    .unwrap_or_default()
                    .into_owned();
                let link = if t.is_hard_link() {
                    PathBuf::from(normalize(&link).unwrap_or_default())
                } else {
                    link
                };
                b.append_link(&mut h, &path, &link)
            } else {
                b.append_data(&mut h, &path, &mut e)
            };
            w.map_err(io_err(format!("writing {path}")))?;
        }
    }
    b.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(io_err("finishing the flattened tar"))
}

/// What our guest needs in any rootfs (base.rs's TIDY_HOOK and mount
/// points): run as `sh -c SCRIPT x TREE`.
const GUEST_FIXUP: &str = r#"set -e
cd "$1"
mkdir -p data workspace etc/gondolin proc sys dev run tmp var/tmp
chmod 1777 tmp var/tmp
echo gondolin > etc/hostname
printf '127.0.0.1\tlocalhost gondolin\n::1\tlocalhost ip6-localhost ip6-loopback\n' > etc/hosts
rm -f etc/resolv.conf; : > etc/resolv.conf
[ -e bin/sh ] || [ -L bin/sh ] || { echo "the image has no /bin/sh" >&2; exit 1; }
"#;

/// Unpack `root.tar` in `tmp` and write `tmp/rootfs.ext4` with
/// `extra_mib` free; root, or one fakeroot session.
pub fn make_rootfs(tmp: &Path, extra_mib: u64) -> Result<PathBuf, ImageError> {
    let tar_mib = fs::metadata(tmp.join("root.tar"))
        .map_err(io_err("reading the flattened tar"))?
        .len()
        >> 20;
    let size_mib = tar_mib * 115 / 100 + extra_mib + 64;
    let quoted = GUEST_FIXUP.replace('\'', r"'\''");
    let script = format!(
        "set -e; mkdir tree; tar -xpf root.tar -C tree --numeric-owner; \
         sh -c '{quoted}' fixup tree; \
         mkfs.ext4 -q -F -L gondolin-root -O ^has_journal -E root_owner=0:0 -d tree rootfs.ext4 {size_mib}M; \
         chmod -R u+w tree; rm -rf tree root.tar"
    );
    let mut mk = if nix::unistd::geteuid().is_root() {
        Command::new("sh")
    } else {
        let mut c = Command::new("fakeroot");
        c.arg("sh");
        c
    };
    tools::run(
        "unpacking the OCI layers",
        mk.arg("-c").arg(&script).current_dir(tmp),
    )?;
    Ok(tmp.join("rootfs.ext4"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(dir: &Path, name: &str, entries: &[(&str, Option<&[u8]>)]) -> (PathBuf, String) {
        let p = dir.join(name);
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            fs::File::create(&p).unwrap(),
            flate2::Compression::fast(),
        ));
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o640);
                    h.set_uid(0);
                    h.set_gid(42);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap().finish().unwrap();
        (p, "application/vnd.oci.image.layer.v1.tar+gzip".into())
    }

    #[test]
    fn whiteouts_and_opaque_dirs_apply_to_lower_layers() {
        let d = std::env::temp_dir().join(format!("gondolin-ocirootfs-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        struct Rm<'a>(&'a Path);
        impl Drop for Rm<'_> {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(self.0);
            }
        }
        let _rm = Rm(&d);
        let l1 = layer(
            &d,
            "l1",
            &[
                ("./etc/", None),
                ("./etc/shadow", Some(b"s")),
                ("./etc/gone", Some(b"g")),
                ("./opt/", None),
                ("./opt/old", Some(b"o")),
                ("./dir/", None),
                ("./dir/sub/x", Some(b"x")),
            ],
        );
        let l2 = layer(
            &d,
            "l2",
            &[
                ("etc/.wh.gone", Some(b"")),
                ("opt/new", Some(b"n")),
                ("opt/.wh..wh..opq", Some(b"")),
                ("dir", Some(b"now a file")),
            ],
        );
        let r = Resolved {
            digest: "sha256:x".into(),
            layers: vec![l1, l2],
        };
        let out = d.join("out.tar");
        flatten(&r, &out).unwrap();
        let mut ar = tar::Archive::new(fs::File::open(&out).unwrap());
        let got: Vec<(String, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().gid().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["etc", "etc/shadow", "opt", "opt/new", "dir"],
            "{got:?}"
        );
        assert_eq!(got[1].1, 42, "group kept");
    }

    #[test]
    fn sources_parse() {
        assert_eq!(
            parse_source("oci-layout:/no/such:py"),
            Source::Layout {
                dir: "/no/such".into(),
                tag: Some("py".into())
            }
        );
        assert_eq!(
            parse_source("127.0.0.1:5000/py:slim"),
            Source::Registry("127.0.0.1:5000/py:slim".into())
        );
        assert!(normalize(Path::new("../x")).is_none());
        assert_eq!(normalize(Path::new("./a/b/")).as_deref(), Some("a/b"));
    }
}

//! Guest images built from Debian packages.
//!
//! An image directory holds `manifest.json`, `vmlinuz`, `initrd.img` and
//! `rootfs.ext4`. Building has two cached stages so that changing our guest
//! binaries never re-runs mmdebstrap:
//!
//! 1. **base** (`<cache>/base/<hash of the definition>/`): mmdebstrap
//!    rootfs as `rootfs.ext4`, the Debian cloud kernel, the kernel modules
//!    the guest needs. Slow (minutes), done once per definition.
//! 2. **image** (`<cache>/images/<buildId>/`): an initramfs holding our
//!    static `init`, `sandboxd` and `sandboxfs` plus the modules; kernel and rootfs are
//!    hard-linked from the base. Fast (about a second).
//!
//! `buildId` is derived from the build inputs (definition bytes, guest
//! binaries, builder version), so the image for the current binaries can be
//! found without building. Both stages are written to a temp dir and renamed
//! into place, under a lock, so a crash never leaves a half image.

mod base;
mod definition;
mod initrd;
pub mod oci;
pub mod ocirootfs;
mod store;
mod tools;

use std::path::{Path, PathBuf};

pub use definition::Definition;
pub use store::{cache_root, verify};

/// Kernel command line every image boots with. `quiet` matters under TCG:
/// every console byte is an emulated UART write.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 \
    8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable no_timer_check \
    cryptomgr.notests random.trust_cpu=on rootfstype=ext4";

/// A resolved image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub dir: PathBuf,
    pub build_id: String,
    pub arch: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub cmdline: String,
    pub default_rootfs_mode: Option<String>,
    /// `KEY=VALUE` entries every exec starts with (the definition's `env`).
    pub default_env: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Image definition JSON (e.g. images/debian-base.json).
    pub definition: PathBuf,
    /// Directory holding the static guest binaries `init`, `sandboxd`, `sandboxfs`.
    pub guest_bin_dir: PathBuf,
    /// Cache root; default [`cache_root`].
    pub cache_root: Option<PathBuf>,
    /// Also copy the finished image here.
    pub output: Option<PathBuf>,
    /// Stream mmdebstrap's output through the progress callback.
    pub verbose: bool,
    /// Our extension: take the rootfs from this OCI image (a layout
    /// directory or a registry reference, see [`ocirootfs::parse_source`])
    /// instead of mmdebstrap; overrides the definition's `oci.image` (its
    /// `platform` and `pullPolicy` still apply). The definition still gives
    /// the kernel, modules, `env`, `runtimeDefaults` and `rootfsExtraMiB`.
    pub from_oci: Option<String>,
    /// Our extension: overrides the definition's `oci.pullPolicy`.
    pub oci_pull_policy: Option<ocirootfs::PullPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{tool} not found: install it with `sudo apt install {package}`")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    /// Not root, and mmdebstrap's unshare mode cannot run either.
    #[error("building the guest image needs root or unprivileged user namespaces: {0}; fix that, or run `sudo gondolin build` once")]
    Rootless(String),
    #[error("image definition {path}: {message}")]
    Definition { path: PathBuf, message: String },
    #[error("guest binary {0} not found; build the guest binaries first (`make guest`)")]
    MissingGuestBinary(PathBuf),
    #[error("invalid image in {dir}: {message}")]
    InvalidImage { dir: PathBuf, message: String },
    #[error("{step} failed: {message}")]
    Step { step: String, message: String },
    /// Our extension (images over OCI registries): the registry has no such image.
    #[error("image {0} not found in the registry")]
    NotInRegistry(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl crate::error::Coded for ImageError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            ImageError::MissingTool { .. } => ErrorCode::MissingTool,
            ImageError::Rootless(_) => ErrorCode::NeedsRoot,
            ImageError::Definition { .. } => ErrorCode::InvalidDefinition,
            ImageError::MissingGuestBinary(_) => ErrorCode::MissingGuestBinary,
            ImageError::InvalidImage { .. } => ErrorCode::InvalidImage,
            ImageError::Step { .. } => ErrorCode::BuildFailed,
            ImageError::NotInRegistry(_) => ErrorCode::MissingAsset,
            ImageError::Io { .. } => ErrorCode::IoError,
        }
    }
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// Read and validate the image in `dir`.
pub fn load_image(dir: &Path) -> Result<ImageInfo, ImageError> {
    store::load(dir)
}

/// The buildId the current inputs produce. For an OCI rootfs (`from_oci`
/// or the definition's `oci`) only a local image (a layout, or the OCI
/// cache) is looked at; None when it would have to be pulled.
pub fn expected_build_id(opts: &BuildOptions) -> Result<Option<String>, ImageError> {
    let def = Definition::load(&opts.definition)?;
    match oci_source(opts, &def) {
        None => store::build_id(&def, &opts.guest_bin_dir).map(Some),
        Some(src) => {
            let root = opts.cache_root.clone().unwrap_or_else(cache_root);
            let images = store::images_dir(Some(&root));
            let registry = oci::RegistryOptions::default();
            let fetch = ocirootfs::Fetch {
                platform: &src.platform,
                policy: ocirootfs::PullPolicy::Never,
                registry: &registry,
                store: &images,
            };
            match ocirootfs::resolve(&src.source, &fetch, &mut |_| {}) {
                Ok(r) => store::oci_build_id(&r.digest, &def, &opts.guest_bin_dir).map(Some),
                Err(_) => Ok(None),
            }
        }
    }
}

/// The image for the current inputs, if it is already in the store.
pub fn find_built(opts: &BuildOptions) -> Result<Option<ImageInfo>, ImageError> {
    let Some(id) = expected_build_id(opts)? else {
        return Ok(None);
    };
    let dir = store::images_dir(opts.cache_root.as_deref()).join(&id);
    if dir.join("manifest.json").exists() {
        store::load(&dir).map(Some)
    } else {
        Ok(None)
    }
}

/// An OCI rootfs source: `--from-oci` (relative to the current directory)
/// over the definition's `oci.image` (relative to the definition).
struct OciSource {
    reference: String,
    source: ocirootfs::Source,
    platform: ocirootfs::Platform,
    policy: ocirootfs::PullPolicy,
}

fn oci_source(opts: &BuildOptions, def: &Definition) -> Option<OciSource> {
    let platform = def
        .oci
        .as_ref()
        .map(|o| o.platform())
        .unwrap_or_else(ocirootfs::Platform::host);
    let policy = opts
        .oci_pull_policy
        .or(def.oci.as_ref().map(|o| o.pull_policy))
        .unwrap_or_default();
    if let Some(r) = &opts.from_oci {
        return Some(OciSource {
            reference: r.clone(),
            source: ocirootfs::parse_source(r),
            platform,
            policy,
        });
    }
    def.oci.as_ref().map(|o| OciSource {
        reference: o.image.clone(),
        source: o.source(&def.path),
        platform,
        policy,
    })
}

/// Build (or reuse) the image for the current inputs.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<ImageInfo, ImageError> {
    let def = Definition::load(&opts.definition)?;
    if let Some(src) = oci_source(opts, &def) {
        let info = build_from_oci(opts, &def, &src, progress)?;
        if let Some(out) = &opts.output {
            store::copy_to(&info, out)?;
        }
        return Ok(info);
    }
    let id = store::build_id(&def, &opts.guest_bin_dir)?;
    let root = opts.cache_root.clone().unwrap_or_else(cache_root);
    let images = store::images_dir(Some(&root));
    let dir = images.join(&id);
    let info = if dir.join("manifest.json").exists() {
        progress(&format!("image {id} is already built"));
        store::load(&dir)?
    } else {
        let _lock = store::lock(&root)?;
        if dir.join("manifest.json").exists() {
            store::load(&dir)?
        } else {
            let base = base::ensure(&def, &root, opts.verbose, progress)?;
            progress("writing the initramfs with init, sandboxd, sandboxfs and kernel modules");
            store::assemble(&def, &base, &opts.guest_bin_dir, &id, &images, None)?
        }
    };
    if let Some(out) = &opts.output {
        store::copy_to(&info, out)?;
    }
    Ok(info)
}

/// `--from-oci` / `oci`: resolve the image (a registry one through the
/// OCI cache, as the pull policy says), then reuse the cached image for
/// its manifest digest or flatten its layers into rootfs.ext4 on the
/// definition's kernel base.
fn build_from_oci(
    opts: &BuildOptions,
    def: &Definition,
    src: &OciSource,
    progress: &mut dyn FnMut(&str),
) -> Result<ImageInfo, ImageError> {
    let reference = src.reference.as_str();
    let root = opts.cache_root.clone().unwrap_or_else(cache_root);
    let images = store::images_dir(Some(&root));
    let work = images.join(format!(".oci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io_err(format!("creating {}", work.display())))?;
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chmod")
                .arg("-R")
                .arg("u+w")
                .arg(self.0)
                .status();
            let _ = std::fs::remove_dir_all(self.0);
        }
    }
    let _cleanup = Cleanup(&work);
    progress(&format!("resolving the OCI image {reference}"));
    let registry = oci::RegistryOptions::default();
    let fetch = ocirootfs::Fetch {
        platform: &src.platform,
        policy: src.policy,
        registry: &registry,
        store: &images,
    };
    let resolved = ocirootfs::resolve(&src.source, &fetch, progress)?;
    let id = store::oci_build_id(&resolved.digest, def, &opts.guest_bin_dir)?;
    let dir = images.join(&id);
    if dir.join("manifest.json").exists() {
        progress(&format!("image {id} is already built"));
        return store::load(&dir);
    }
    let _lock = store::lock(&root)?;
    if dir.join("manifest.json").exists() {
        return store::load(&dir);
    }
    let base = base::ensure(def, &root, opts.verbose, progress)?;
    progress(&format!(
        "flattening the layers of {} (whiteouts applied)",
        resolved.digest
    ));
    ocirootfs::flatten(&resolved, &work.join("root.tar"))?;
    progress("writing rootfs.ext4");
    let rootfs = ocirootfs::make_rootfs(&work, def.rootfs_extra_mib)?;
    progress("writing the initramfs with init, sandboxd, sandboxfs and kernel modules");
    store::assemble(
        def,
        &base,
        &opts.guest_bin_dir,
        &id,
        &images,
        Some(store::OtherRootfs {
            path: &rootfs,
            oci: store::OciInfo {
                reference: reference.to_string(),
                digest: resolved.digest.clone(),
            },
        }),
    )
}

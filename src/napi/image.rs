//! Guest image functions: load an image dir, find or build the default one.

use std::path::PathBuf;

use napi_derive::napi;

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;

use super::error::{spawn_coded, IntoJs, JsFailure};
use super::js_callback::JsCallback;
use gondolin::error::ErrorCode;
use gondolin::image::{self, BuildOptions, ImageInfo};

#[napi(object)]
pub struct NativeImage {
    pub dir: String,
    pub build_id: String,
    pub arch: String,
    pub kernel: String,
    pub initrd: String,
    pub rootfs: String,
    pub cmdline: String,
    pub default_rootfs_mode: Option<String>,
    /// `KEY=VALUE` entries every exec starts with (the image definition's `env`).
    pub default_env: Vec<String>,
}

#[napi(object)]
pub struct NativeBuildOptions {
    pub definition: String,
    pub guest_bin_dir: String,
    pub output: Option<String>,
    pub verbose: Option<bool>,
    /// Our extension: rootfs from this OCI image (layout dir or registry ref).
    pub from_oci: Option<String>,
    /// Our extension: `if-not-present` | `always` | `never`, over the
    /// definition's `oci.pullPolicy`.
    pub oci_pull_policy: Option<String>,
}

impl From<ImageInfo> for NativeImage {
    fn from(i: ImageInfo) -> Self {
        let s = |p: PathBuf| p.display().to_string();
        NativeImage {
            dir: s(i.dir),
            build_id: i.build_id,
            arch: i.arch,
            kernel: s(i.kernel),
            initrd: s(i.initrd),
            rootfs: s(i.rootfs),
            cmdline: i.cmdline,
            default_rootfs_mode: i.default_rootfs_mode,
            default_env: i.default_env,
        }
    }
}

fn opts(o: NativeBuildOptions) -> Result<BuildOptions, image::ImageError> {
    let oci_pull_policy = o
        .oci_pull_policy
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|message| image::ImageError::Definition {
            path: PathBuf::from("ociPullPolicy"),
            message,
        })?;
    Ok(BuildOptions {
        definition: o.definition.into(),
        guest_bin_dir: o.guest_bin_dir.into(),
        cache_root: None,
        output: o.output.map(PathBuf::from),
        verbose: o.verbose.unwrap_or(false),
        from_oci: o.from_oci,
        oci_pull_policy,
    })
}

/// Read and validate the image in `dir`.
#[napi]
pub fn load_image(env: &Env, dir: String) -> napi::Result<NativeImage> {
    image::load_image(std::path::Path::new(&dir))
        .map(Into::into)
        .js(env)
}

/// Check an image directory's assets against its manifest's sha256
/// checksums; resolves to the names of the assets that differ.
#[napi(ts_return_type = "Promise<string[]>")]
pub fn verify_image(env: &Env, dir: String) -> napi::Result<PromiseRaw<'_, Vec<String>>> {
    spawn_coded(env, async move {
        tokio::task::spawn_blocking(move || image::verify(std::path::Path::new(&dir)))
            .await
            .map_err(|e| JsFailure::new(ErrorCode::IoError, e.to_string()))?
            .map_err(|e| JsFailure::from_core(&e))
    })
}

/// The image for the current inputs if it is already built.
#[napi]
pub fn find_image(env: &Env, options: NativeBuildOptions) -> napi::Result<Option<NativeImage>> {
    opts(options)
        .and_then(|o| image::find_built(&o))
        .map(|o| o.map(Into::into))
        .js(env)
}

/// Build (or reuse) the image; `progress` gets one line per stage.
#[napi(ts_return_type = "Promise<NativeImage>")]
pub fn build_image<'e>(
    env: &'e Env,
    options: NativeBuildOptions,
    #[napi(ts_arg_type = "((line: string) => void) | undefined | null")] progress: Option<
        JsCallback<String, ()>,
    >,
) -> napi::Result<PromiseRaw<'e, NativeImage>> {
    let o = opts(options).js(env)?;
    spawn_coded(env, async move {
        let job = tokio::task::spawn_blocking(move || {
            let mut report = |line: &str| {
                if let Some(f) = &progress {
                    f.notify(line.to_string());
                }
            };
            image::build(&o, &mut report)
        });
        match job.await {
            Ok(r) => r.map(Into::into).map_err(|e| JsFailure::from_core(&e)),
            Err(e) => Err(JsFailure::new(
                ErrorCode::BuildFailed,
                format!("the image build crashed: {e}"),
            )),
        }
    })
}

// ---- Images over OCI registries (our extension; src/image/oci.rs) ----

use gondolin::image::oci;

/// Options of `pullImage` / `pushImage`.
#[napi(object)]
pub struct NativeRegistryOptions {
    /// Plain HTTP even for a registry that is not on a loopback address.
    pub insecure: Option<bool>,
    /// The docker config file with `auths` (default `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
    pub docker_config: Option<String>,
    /// Pull: refuse an image for another arch (`aarch64` | `x86_64`).
    pub arch: Option<String>,
}

/// One progress report of a pull or push.
#[napi(object)]
pub struct NativeOciProgress {
    /// `compress` | `upload` (push), `download` | `extract` (pull).
    pub phase: String,
    /// Bytes done in this phase.
    pub done: f64,
    /// Bytes in this phase.
    pub total: f64,
    /// Bytes per second since the phase began.
    pub rate: f64,
    /// Seconds left at that rate; null until known.
    pub eta: Option<f64>,
}

#[napi(object)]
pub struct NativePulled {
    pub image: NativeImage,
    /// The OCI manifest's digest (`sha256:…`).
    pub digest: String,
    /// True when the store had this build already (nothing fetched).
    pub existed: bool,
}

#[napi(object)]
pub struct NativePushed {
    pub digest: String,
    pub reference: String,
    /// Bytes uploaded (blobs the registry had are skipped).
    pub uploaded: f64,
}

type OciProgressCallback = Option<JsCallback<NativeOciProgress, ()>>;

fn registry_opts(o: &Option<NativeRegistryOptions>) -> oci::RegistryOptions {
    oci::RegistryOptions {
        insecure: o.as_ref().and_then(|o| o.insecure).unwrap_or(false),
        docker_config: o
            .as_ref()
            .and_then(|o| o.docker_config.clone())
            .map(PathBuf::from),
        store: None,
    }
}

fn progress_fn(cb: OciProgressCallback) -> oci::ProgressFn {
    Box::new(move |p: oci::Progress| {
        if let Some(f) = &cb {
            f.notify(NativeOciProgress {
                phase: p.phase.to_string(),
                done: p.done as f64,
                total: p.total as f64,
                rate: p.rate,
                eta: p.eta,
            });
        }
    })
}

/// Pull an image from an OCI registry into the store (refs are set by JS).
#[napi(ts_return_type = "Promise<NativePulled>")]
pub fn pull_image<'e>(
    env: &'e Env,
    reference: String,
    options: Option<NativeRegistryOptions>,
    #[napi(ts_arg_type = "((p: NativeOciProgress) => void) | undefined | null")]
    progress: OciProgressCallback,
) -> napi::Result<PromiseRaw<'e, NativePulled>> {
    let o = registry_opts(&options);
    let arch = options.and_then(|o| o.arch);
    spawn_coded(env, async move {
        oci::pull(&reference, &o, arch.as_deref(), progress_fn(progress))
            .await
            .map(|p| NativePulled {
                image: p.image.into(),
                digest: p.digest,
                existed: p.existed,
            })
            .map_err(|e| JsFailure::from_core(&e))
    })
}

/// Push the image directory `dir` to an OCI registry.
#[napi(ts_return_type = "Promise<NativePushed>")]
pub fn push_image<'e>(
    env: &'e Env,
    dir: String,
    reference: String,
    options: Option<NativeRegistryOptions>,
    #[napi(ts_arg_type = "((p: NativeOciProgress) => void) | undefined | null")]
    progress: OciProgressCallback,
) -> napi::Result<PromiseRaw<'e, NativePushed>> {
    let o = registry_opts(&options);
    spawn_coded(env, async move {
        oci::push(
            std::path::Path::new(&dir),
            &reference,
            &o,
            progress_fn(progress),
        )
        .await
        .map(|p| NativePushed {
            digest: p.digest,
            reference: p.reference,
            uploaded: p.uploaded as f64,
        })
        .map_err(|e| JsFailure::from_core(&e))
    })
}

/// The build id of the default image for `options` (what `findImage` looks
/// for), so a registry pull can ask for exactly that build.
#[napi]
pub fn expected_build_id(env: &Env, options: NativeBuildOptions) -> napi::Result<String> {
    opts(options)
        .and_then(|o| image::expected_build_id(&o))
        .and_then(|id| {
            id.ok_or_else(|| image::ImageError::Step {
                step: "computing the build id".into(),
                message: "the OCI rootfs image is not local yet; build it once".into(),
            })
        })
        .js(env)
}

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

fn opts(o: NativeBuildOptions) -> BuildOptions {
    BuildOptions {
        definition: o.definition.into(),
        guest_bin_dir: o.guest_bin_dir.into(),
        cache_root: None,
        output: o.output.map(PathBuf::from),
        verbose: o.verbose.unwrap_or(false),
    }
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
    image::find_built(&opts(options))
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
    let o = opts(options);
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

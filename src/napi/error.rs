//! The one conversion from core errors to JS errors. Every error this addon
//! rejects or throws with is a JS `Error` created here, on the JS thread,
//! with a real `code` property from [`ErrorCode`] and, when the core error
//! has a source, a `cause` (an `Error` whose `code` is Node's errno name for
//! OS errors). The `napi::Error` handed back to napi-rs refers to that very
//! object, so throwing or rejecting with it gives JS the object unchanged.
//!
//! Synchronous methods take the `Env` and call [`IntoJs::js`]; async work
//! goes through [`spawn_coded`], which builds the error once the future is
//! back on the JS thread.

use std::future::Future;

use napi::bindgen_prelude::{PromiseRaw, ToNapiValue};
use napi::{Env, Status};

use gondolin::error::{Coded, ErrorCode};

/// An error on its way to JS: code, message and the cause, if any.
#[derive(Debug, Clone)]
pub struct JsFailure {
    pub code: ErrorCode,
    pub message: String,
    cause: Option<Cause>,
}

#[derive(Debug, Clone)]
struct Cause {
    message: String,
    /// Node's errno name (`ENOENT`) when the cause is an OS error.
    errno: Option<(&'static str, i32)>,
}

impl Cause {
    fn of(source: &(dyn std::error::Error + 'static)) -> Self {
        Cause {
            message: source.to_string(),
            errno: source
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
                .map(|n| (gondolin::vfs::errno_name(n), -n)),
        }
    }
}

impl JsFailure {
    pub fn new(code: ErrorCode, message: impl std::fmt::Display) -> Self {
        JsFailure {
            code,
            message: message.to_string(),
            cause: None,
        }
    }

    /// A core error with its code and its source as the cause.
    pub fn from_core<E: Coded>(e: &E) -> Self {
        JsFailure {
            code: e.code(),
            message: e.to_string(),
            cause: std::error::Error::source(e).map(Cause::of),
        }
    }

    /// The same failure with `source` as its `cause` (an OS error keeps its
    /// errno name), for errors the core does not code itself.
    pub fn caused_by(mut self, source: &(dyn std::error::Error + 'static)) -> Self {
        self.cause = Some(Cause::of(source));
        self
    }

    /// The JS `Error` for this failure, as a `napi::Error` that refers to it.
    pub fn into_napi(self, env: &Env) -> napi::Error {
        let fallback = napi::Error::new(Status::GenericFailure, self.message.clone());
        self.build(env).unwrap_or(fallback)
    }

    fn build(self, env: &Env) -> napi::Result<napi::Error> {
        let mut err = env.create_error(napi::Error::from_reason(self.message))?;
        err.set("code", self.code.as_str())?;
        if let Some(c) = self.cause {
            let mut cause = env.create_error(napi::Error::from_reason(c.message))?;
            match c.errno {
                Some((name, errno)) => {
                    cause.set("code", name)?;
                    cause.set("errno", errno)?;
                }
                None => cause.set("code", ErrorCode::IoError.as_str())?,
            }
            err.set("cause", cause)?;
        }
        Ok(napi::Error::from(err.into_unknown(env)?))
    }
}

/// Core results to JS results, on the JS thread.
pub trait IntoJs<T> {
    fn js(self, env: &Env) -> napi::Result<T>;
}

impl<T, E: Coded> IntoJs<T> for Result<T, E> {
    fn js(self, env: &Env) -> napi::Result<T> {
        self.map_err(|e| JsFailure::from_core(&e).into_napi(env))
    }
}

impl<T> IntoJs<T> for Result<T, JsFailure> {
    fn js(self, env: &Env) -> napi::Result<T> {
        self.map_err(|e| e.into_napi(env))
    }
}

/// Run `fut` on the runtime; its failure rejects the promise with a coded
/// JS error (built back on the JS thread).
pub fn spawn_coded<'e, T, F>(env: &'e Env, fut: F) -> napi::Result<PromiseRaw<'e, T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = Result<T, JsFailure>> + Send + 'static,
{
    env.spawn_future_with_callback(async move { Ok(fut.await) }, |env, r| r.js(env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_keep_code_and_os_cause() {
        let io = std::io::Error::from_raw_os_error(2);
        let f = JsFailure::from_core(&gondolin::vm::VmError::Spawn(io));
        assert_eq!(f.code, ErrorCode::SpawnFailed);
        let c = f.cause.expect("cause");
        assert_eq!(c.errno, Some(("ENOENT", -2)));
    }

    #[test]
    fn caused_by_keeps_the_os_error() {
        let io = std::io::Error::from_raw_os_error(13);
        let f = JsFailure::new(ErrorCode::IoError, "cannot listen").caused_by(&io);
        let c = f.cause.expect("cause");
        assert_eq!(
            (c.errno, c.message),
            (Some(("EACCES", -13)), io.to_string())
        );
    }

    /// index.d.ts mirrors the enum exactly.
    #[test]
    fn index_d_ts_lists_every_code() {
        let dts = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../index.d.ts"),
        )
        .unwrap();
        let start = dts
            .find("export type GondolinErrorCode =")
            .expect("union in index.d.ts");
        let union = &dts[start..start + dts[start..].find("\n\n").unwrap()];
        let listed: Vec<&str> = union
            .lines()
            .filter_map(|l| l.trim().strip_prefix("| \""))
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, all);
    }
}

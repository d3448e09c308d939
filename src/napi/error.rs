//! The one conversion from core errors to JS errors. The JS facade turns the
//! `[code] message` reason into an Error with a `code` property.

use gondolin::control::ControlError;
use gondolin::vm::VmError;

/// A JS error carrying a stable code.
pub fn js_error(code: &str, message: impl std::fmt::Display) -> napi::Error {
    napi::Error::new(napi::Status::GenericFailure, format!("[{code}] {message}"))
}

pub trait IntoJs<T> {
    fn js(self) -> napi::Result<T>;
}

impl<T> IntoJs<T> for Result<T, VmError> {
    fn js(self) -> napi::Result<T> {
        self.map_err(|e| js_error(e.code(), e))
    }
}

impl<T> IntoJs<T> for Result<T, ControlError> {
    fn js(self) -> napi::Result<T> {
        self.map_err(|e| js_error(e.code(), e))
    }
}

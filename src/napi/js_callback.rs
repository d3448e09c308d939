//! The one way Rust calls a JavaScript function: [`JsCallback`], a weak
//! (unref'd: it never keeps Node alive) threadsafe function. Every JS
//! provider, hook, predicate and progress callback goes through it, so the
//! call → await the Promise → name the failure sequence is written once,
//! and each awaited call gets a tracing span with its name and duration
//! (`GONDOLIN_DEBUG=vfs` / `net` / `all`; see `lib.rs`). The shape follows
//! rolldown's `crates/rolldown_binding/src/types/js_callback.rs`.

use std::fmt;
use std::time::Instant;

use napi::bindgen_prelude::{
    FromNapiValue, JsValuesTupleIntoVec, Promise, TypeName, ValidateNapiValue,
};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Status, ValueType};
use tracing::Instrument;

/// A JS function Rust may call from any thread. `Ret` is what the JS
/// function returns: `Promise<T>` for an awaited call, `()` for a
/// fire-and-forget notification.
pub struct JsCallback<Args: 'static + JsValuesTupleIntoVec, Ret: 'static + FromNapiValue>(
    ThreadsafeFunction<Args, Ret, Args, Status, false, true>,
);

/// The debug component a call is logged under (`GONDOLIN_DEBUG=<component>`).
#[derive(Clone, Copy, Debug)]
pub enum Component {
    /// VFS providers, `vfs.hooks`, shadow predicates: target `gondolin::vfs::js`.
    Vfs,
    /// HTTP hooks and `fetch`: target `gondolin::net::js`.
    Net,
    /// The attach server's calls into the VM owner (`snapshot`): target `gondolin::session::js`.
    Session,
}

/// Why a JS call produced no value.
#[derive(Debug)]
pub enum JsCallError {
    /// The function could not be invoked (its environment is gone, or the
    /// arguments did not convert).
    NotCalled(&'static str, napi::Error),
    /// It ran and threw, rejected, or resolved to a value that does not
    /// convert into the expected type (a wrong `action` name, say).
    Failed(&'static str, napi::Error),
}

impl fmt::Display for JsCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsCallError::NotCalled(name, e) => write!(f, "{name} could not be called: {e}"),
            JsCallError::Failed(name, e) => write!(f, "{name} failed: {e}"),
        }
    }
}

impl<Args: 'static + JsValuesTupleIntoVec, Ret: 'static + FromNapiValue> JsCallback<Args, Ret> {
    /// Call without waiting for (or looking at) the result; never blocks.
    pub fn notify(&self, args: Args) {
        let _ = self.0.call(args, ThreadsafeFunctionCallMode::NonBlocking);
    }
}

impl<Args: 'static + JsValuesTupleIntoVec, T: 'static + FromNapiValue>
    JsCallback<Args, Promise<T>>
{
    /// Call the function and await the Promise it returns. `name` is what
    /// the span and the error call it (`stat`, `onRequest`, ...).
    pub async fn call(
        &self,
        component: Component,
        name: &'static str,
        args: Args,
    ) -> Result<T, JsCallError> {
        let span = component.span(name);
        let start = Instant::now();
        let result = async {
            let promise = self
                .0
                .call_async(args)
                .await
                .map_err(|e| JsCallError::NotCalled(name, e))?;
            promise.await.map_err(|e| JsCallError::Failed(name, e))
        }
        .instrument(span.clone())
        .await;
        if !span.is_disabled() {
            let _in = span.enter();
            component.done(start.elapsed().as_micros() as u64, result.is_ok());
        }
        result
    }
}

impl Component {
    // `tracing` needs each target as a constant, hence one arm per component.
    fn span(self, name: &'static str) -> tracing::Span {
        match self {
            Component::Vfs => tracing::debug_span!(target: "gondolin::vfs::js", "js_call", name),
            Component::Net => tracing::debug_span!(target: "gondolin::net::js", "js_call", name),
            Component::Session => {
                tracing::debug_span!(target: "gondolin::session::js", "js_call", name)
            }
        }
    }

    fn done(self, elapsed_us: u64, ok: bool) {
        match self {
            Component::Vfs => {
                tracing::debug!(target: "gondolin::vfs::js", elapsed_us, ok, "js call done")
            }
            Component::Net => {
                tracing::debug!(target: "gondolin::net::js", elapsed_us, ok, "js call done")
            }
            Component::Session => {
                tracing::debug!(target: "gondolin::session::js", elapsed_us, ok, "js call done")
            }
        }
    }
}

impl<Args: 'static + JsValuesTupleIntoVec, Ret: 'static + FromNapiValue> FromNapiValue
    for JsCallback<Args, Ret>
{
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        // SAFETY: the caller's contract (a live env and a value from it) is
        // passed through unchanged to the threadsafe function's conversion.
        unsafe { ThreadsafeFunction::from_napi_value(env, value) }.map(JsCallback)
    }
}

impl<Args: 'static + JsValuesTupleIntoVec, Ret: 'static + FromNapiValue> TypeName
    for JsCallback<Args, Ret>
{
    fn type_name() -> &'static str {
        "JsCallback"
    }
    fn value_type() -> ValueType {
        ValueType::Function
    }
}

impl<Args: 'static + JsValuesTupleIntoVec, Ret: 'static + FromNapiValue> ValidateNapiValue
    for JsCallback<Args, Ret>
{
}

/// A `#[napi(string_enum)]` whose variants carry their JS spelling, plus
/// `as_str()` for spans and messages: the list is written once. A JS value
/// outside the list fails conversion with "value `..` does not match any
/// variant of enum `<Name>`", at the boundary.
macro_rules! boundary_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $js:literal,)* }) => {
        $(#[$meta])*
        #[napi_derive::napi(string_enum)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* #[napi(value = $js)] $variant,)*
        }

        impl $name {
            /// Every variant, in declaration order.
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The JS spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $js,)*
                }
            }
        }
    };
}
pub(crate) use boundary_enum;

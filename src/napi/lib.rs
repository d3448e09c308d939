//! The Node.js binding: every `#[napi]` item lives here and only here.
//! Each exported class has its own file; errors cross into JS through
//! [`error`], which keeps a stable `code`.

// napi-derive registers exports only outside `cfg(test)`, so a test build
// sees the exported items as unused.
#![cfg_attr(test, allow(dead_code))]

mod boot_cancel;
mod checkpoint;
mod error;
mod exec;
mod forward;
mod guest_fs;
mod http_js;
mod http_policy;
mod image;
mod ingress;
mod js_callback;
mod net;
mod options;
mod remote;
mod session;
mod ssh;
mod vfs;
mod vfs_call;
mod vfs_js;
mod vm;

use napi_derive::module_init;

#[module_init]
fn init() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gondolin-rt")
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    napi::bindgen_prelude::create_custom_tokio_runtime(rt);

    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!(
            "gondolin: internal error (a bug in gondolin, not in your code); please report it:"
        );
        default_hook(info);
    }));

    if let Ok(filter) = std::env::var("GONDOLIN_DEBUG") {
        // `GONDOLIN_DEBUG=exec,vm` → tracing targets gondolin::exec, gondolin::vm.
        let directives: Vec<String> = filter
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "1" | "all" | "*" | "true" => "gondolin=debug".to_string(),
                s => format!("gondolin::{s}=debug"),
            })
            .collect();
        let env = tracing_subscriber::EnvFilter::new(directives.join(","));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(env)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

//! Checkpoint files from JS: read and replace the trailer (upstream
//! `VmCheckpoint.load` / `VmCheckpoint.writeTrailer`). The format is the
//! core's (`gondolin::vm::checkpoint`); writing a checkpoint is
//! `NativeVm.checkpoint` (vm.rs).

use std::path::Path;

use napi::Env;
use napi_derive::napi;

use super::error::{IntoJs, JsFailure};
use gondolin::error::ErrorCode;
use gondolin::vm::checkpoint;

/// The trailer JSON of the checkpoint at `path`. Throws `invalid_checkpoint`
/// with upstream's messages (a directory, a legacy `checkpoint.json`, no
/// trailer, an unsupported version, a bad trailer length) and for a memory
/// checkpoint whose saved state does not fit the file (truncated copy).
#[napi]
pub fn read_checkpoint(env: &Env, path: String) -> napi::Result<String> {
    let loaded = checkpoint::load(Path::new(&path)).js(env)?;
    serde_json::to_string_pretty(&loaded.data)
        .map_err(|e| JsFailure::new(ErrorCode::InvalidCheckpoint, e.to_string()))
        .js(env)
}

/// Replace (or add) the trailer of the file at `path` with `json`
/// (a `VmCheckpointData` object as JSON).
#[napi]
pub fn write_checkpoint_trailer(env: &Env, path: String, json: String) -> napi::Result<()> {
    let data: checkpoint::CheckpointData = serde_json::from_str(&json)
        .map_err(|e| {
            JsFailure::new(
                ErrorCode::InvalidOption,
                format!("checkpoint data is not valid VmCheckpointData: {e}"),
            )
        })
        .js(env)?;
    checkpoint::write_trailer(Path::new(&path), &data).js(env)
}

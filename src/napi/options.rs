//! VM options into the core's check (`gondolin::options`): the JS object is
//! read here, on the JS thread, into an `OptValue` tree. Only the paths the
//! check needs are read in full (`options::descends`); providers and hook
//! objects are seen only as their kind, so no user getter runs.

use napi::bindgen_prelude::{JsObjectValue, Object, Unknown};
use napi::{Env, JsValue, KeyCollectionMode, KeyConversion, KeyFilter, ValueType};
use napi_derive::napi;

use super::error::{IntoJs, JsFailure};
use gondolin::error::ErrorCode;
use gondolin::options::{self, OptValue};

/// Most nodes read from one options object: a bound on a hostile or
/// accidental giant (a huge `tmpfs` map).
const MAX_NODES: usize = 10_000;
/// Most elements read from one array (`sandbox.debug`).
const MAX_ARRAY: u32 = 256;

#[napi(object)]
pub struct NativeTmpfsMount {
    pub path: String,
    pub size: Option<String>,
    pub mode: Option<String>,
}

/// What the VM takes from its checked options.
#[napi(object)]
pub struct NativeResolvedOptions {
    /// "readonly" | "memory" | "cow"; absent = the image's default.
    pub rootfs_mode: Option<String>,
    /// `rootfs.size`, checked; absent = the image's size.
    pub rootfs_size: Option<String>,
    /// Absent = the guest's default scratch mounts.
    pub tmpfs: Option<Vec<NativeTmpfsMount>>,
    /// The kernel command-line word for `tmpfs`, when it is set.
    pub tmpfs_cmdline: Option<String>,
    /// Enabled debug components.
    pub debug: Vec<String>,
    pub memory: Option<String>,
    pub cpus: Option<u32>,
    /// Set when the FUSE root moves off `/data` (a mount sits there).
    pub fuse_mount: Option<String>,
    /// `sandbox.bootSnapshot`; absent = the default (boot templates on).
    pub boot_snapshot: Option<bool>,
}

struct Reader {
    nodes: usize,
}

impl Reader {
    fn read(&mut self, v: &Unknown, path: &mut Vec<String>) -> napi::Result<OptValue> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(too_big());
        }
        Ok(match v.get_type()? {
            ValueType::Undefined => OptValue::Undefined,
            ValueType::Null => OptValue::Null,
            ValueType::Boolean => OptValue::Bool(v.coerce_to_bool()?),
            ValueType::Number => OptValue::Number(v.coerce_to_number()?.get_double()?),
            ValueType::String => OptValue::String(v.coerce_to_string()?.into_utf8()?.into_owned()?),
            ValueType::Function => OptValue::Function,
            ValueType::Object => {
                let obj = v.coerce_to_object()?;
                let array = obj.is_array()?;
                let here: Vec<&str> = path.iter().map(String::as_str).collect();
                if !options::descends(&here) {
                    OptValue::Opaque { array }
                } else if array && here.last() == Some(&"debug") {
                    self.array(&obj, path)?
                } else {
                    self.object(&obj, path)?
                }
            }
            // Symbols, bigints, externals: no option takes one.
            _ => OptValue::Opaque { array: false },
        })
    }

    fn array(&mut self, obj: &Object, path: &mut Vec<String>) -> napi::Result<OptValue> {
        let len = obj.get_array_length()?.min(MAX_ARRAY);
        let mut items = Vec::with_capacity(len as usize);
        for i in 0..len {
            path.push(i.to_string());
            let item: Unknown = obj.get_element(i)?;
            items.push(self.read(&item, path)?);
            path.pop();
        }
        Ok(OptValue::Array(items))
    }

    fn object(&mut self, obj: &Object, path: &mut Vec<String>) -> napi::Result<OptValue> {
        let names = obj.get_all_property_names(
            KeyCollectionMode::OwnOnly,
            KeyFilter::Enumerable,
            KeyConversion::NumbersToStrings,
        )?;
        let len = names.get_array_length()?;
        if len as usize > MAX_NODES {
            return Err(too_big());
        }
        let mut fields = Vec::with_capacity(len as usize);
        for i in 0..len {
            let key: Unknown = names.get_element(i)?;
            if key.get_type()? != ValueType::String {
                continue; // a symbol key: no option is one
            }
            let key = key.coerce_to_string()?.into_utf8()?.into_owned()?;
            let value: Unknown = obj.get_named_property(&key)?;
            path.push(key.clone());
            let value = self.read(&value, path)?;
            path.pop();
            fields.push((key, value));
        }
        Ok(OptValue::Object(fields))
    }
}

fn too_big() -> napi::Error {
    napi::Error::from_reason("the VM options are too large to check")
}

/// Check the VM options (unknown keys with the nearest valid one, types,
/// ranges, `tmpfs`, `sandbox.debug`) and resolve what the VM reads from
/// them. Throws `invalid_option` naming the option and the fix.
/// `debugEnv` is `$GONDOLIN_DEBUG`, used when `sandbox.debug` is unset.
#[napi]
pub fn resolve_vm_options(
    env: &Env,
    #[napi(ts_arg_type = "unknown")] options: Unknown,
    debug_env: Option<String>,
) -> napi::Result<NativeResolvedOptions> {
    let value = Reader { nodes: 0 }
        .read(&options, &mut Vec::new())
        .map_err(|e| JsFailure::new(ErrorCode::InvalidOption, e.reason))
        .js(env)?;
    let r = options::resolve(&value, debug_env.as_deref()).js(env)?;
    Ok(NativeResolvedOptions {
        rootfs_mode: r.rootfs_mode.map(|m| m.as_str().to_string()),
        rootfs_size: r.rootfs_size,
        tmpfs_cmdline: r.tmpfs.as_deref().map(options::tmpfs_cmdline),
        tmpfs: r.tmpfs.map(|list| {
            list.into_iter()
                .map(|m| NativeTmpfsMount {
                    path: m.path,
                    size: m.size,
                    mode: m.mode,
                })
                .collect()
        }),
        debug: r.debug.into_iter().map(str::to_string).collect(),
        memory: r.memory,
        cpus: r.cpus,
        fuse_mount: r.fuse_mount,
        boot_snapshot: r.boot_snapshot,
    })
}

/// Refuse the first of `keys` the options object `table` does not accept
/// (`invalid_option`, naming the nearest valid key). `label` names the
/// object in the message (default: `table`).
#[napi]
pub fn check_option_keys(
    env: &Env,
    keys: Vec<String>,
    table: String,
    label: Option<String>,
) -> napi::Result<()> {
    let label = label.as_deref().unwrap_or(&table);
    options::check_keys(keys.iter().map(String::as_str), &table, label).js(env)
}

/// The keys each options object accepts, by table name.
#[napi]
pub fn option_tables() -> std::collections::HashMap<String, Vec<String>> {
    options::tables()
        .map(|t| {
            let keys = options::known_keys(t).unwrap_or_default();
            (t.to_string(), keys.iter().map(|k| k.to_string()).collect())
        })
        .collect()
}

/// The name in `valid` closest to `name`, or null when none is plausibly meant.
#[napi]
pub fn nearest_name(name: String, valid: Vec<String>) -> Option<String> {
    options::nearest(&name, valid.iter().map(String::as_str)).map(str::to_string)
}

/// Every error code, in the order index.d.ts lists `GondolinErrorCode`.
#[napi]
pub fn error_codes() -> Vec<&'static str> {
    ErrorCode::ALL.iter().map(|c| c.as_str()).collect()
}

//! The operation a `vfs.hooks` hook or a shadow predicate is asked about,
//! in upstream's `ctx.op` vocabulary. One list; the addon mirrors it as a
//! JS string enum (checked by a test there).

macro_rules! hook_ops {
    ($($variant:ident = $name:literal,)+) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum HookOp {
            #[default]
            $($variant,)+
        }

        impl HookOp {
            /// Every operation, in declaration order.
            pub const ALL: &'static [HookOp] = &[$(HookOp::$variant,)+];

            /// The name hooks see (`ctx.op`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(HookOp::$variant => $name,)+
                }
            }
        }
    };
}

hook_ops! {
    Stat = "stat",
    Lstat = "lstat",
    Readdir = "readdir",
    Open = "open",
    Read = "read",
    Write = "write",
    Fstat = "fstat",
    Release = "release",
    Truncate = "truncate",
    Chmod = "chmod",
    Chown = "chown",
    Utimes = "utimes",
    Mkdir = "mkdir",
    Rmdir = "rmdir",
    Unlink = "unlink",
    Rename = "rename",
    Link = "link",
    Symlink = "symlink",
    Readlink = "readlink",
    Realpath = "realpath",
    Statfs = "statfs",
    Access = "access",
}

impl std::fmt::Display for HookOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

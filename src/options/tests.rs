use super::*;

/// An option object from (key, value) pairs (also used by the submodules' tests).
pub(super) fn obj(entries: &[(&str, OptValue)]) -> OptValue {
    OptValue::Object(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}
pub(super) fn s(v: &str) -> OptValue {
    OptValue::String(v.into())
}
fn refused(o: OptValue) -> String {
    resolve(&o, None).unwrap_err().0
}

#[test]
fn memory_is_refused_at_construction_naming_the_option() {
    assert_eq!(
        refused(obj(&[("memory", s("32M"))])),
        "memory must be at least 128M: the guest kernel and init do not boot in less (got \"32M\")"
    );
    assert!(refused(obj(&[("memory", OptValue::Number(512.0))]))
        .starts_with("memory must be a size like \"512M\" or \"2G\" (got 512)"));
    assert!(refused(obj(&[("sandbox", obj(&[("memory", s("1.5G"))]))])).contains("(got \"1.5G\")"));
    let r = resolve(
        &obj(&[("memory", s("512M")), ("cpus", OptValue::Number(4.0))]),
        None,
    )
    .unwrap();
    assert_eq!((r.memory.as_deref(), r.cpus), (Some("512M"), Some(4)));
}

#[test]
fn types_and_combinations() {
    assert_eq!(refused(OptValue::Null), "VM options must be an object");
    assert_eq!(
        refused(obj(&[("sandbox", s("x"))])),
        "sandbox must be an object"
    );
    assert_eq!(
        refused(obj(&[("vfs", OptValue::Bool(true))])),
        "vfs must be an object or null"
    );
    assert_eq!(
        refused(obj(&[("rootfs", OptValue::Null)])),
        "rootfs must be an object"
    );
    assert_eq!(
        refused(obj(&[("cpus", OptValue::Number(0.0))])),
        "cpus must be an integer between 1 and 255 (got 0)"
    );
    assert_eq!(
        refused(obj(&[("rootfs", obj(&[("mode", s("rw"))]))])),
        "unsupported rootfs mode: rw"
    );
    assert_eq!(
        refused(obj(&[("autoStart", s("no"))])),
        "autoStart must be a boolean"
    );
    assert_eq!(
        refused(obj(&[("onEgress", OptValue::Number(1.0))])),
        "onEgress must be a function"
    );
    assert_eq!(
        refused(obj(&[("startTimeoutMs", s("5"))])),
        "startTimeoutMs must be a number"
    );
    let provider = OptValue::Opaque { array: false };
    assert_eq!(
        refused(obj(&[
            ("vfs", obj(&[])),
            ("sandbox", obj(&[("vfsProvider", provider)]))
        ])),
        "VM cannot specify both vfs and sandbox.vfsProvider"
    );
    assert!(refused(obj(&[(
        "sandbox",
        obj(&[("rootDiskSnapshot", OptValue::Bool(true))])
    )]))
    .contains("has been removed"));
}

#[test]
fn root_overlay_implies_a_mode_and_must_agree() {
    let mode = |overlay: bool| {
        let o = obj(&[("sandbox", obj(&[("rootOverlay", OptValue::Bool(overlay))]))]);
        resolve(&o, None).unwrap().rootfs_mode
    };
    assert_eq!(mode(true), Some(RootfsMode::Cow));
    assert_eq!(mode(false), Some(RootfsMode::Readonly));
    let o = obj(&[
        ("sandbox", obj(&[("rootOverlay", OptValue::Bool(true))])),
        ("rootfs", obj(&[("mode", s("readonly"))])),
    ]);
    assert_eq!(
        refused(o),
        "sandbox.rootOverlay: true contradicts rootfs.mode: \"readonly\"; use rootfs.mode alone"
    );
}

#[test]
fn the_reader_descends_only_into_data() {
    assert!(descends(&[]));
    assert!(descends(&["sandbox", "tmpfs", "/tmp"]));
    assert!(descends(&["vfs", "mounts"]), "mount points are data");
    assert!(
        !descends(&["vfs", "mounts", "/data"]),
        "providers are not read"
    );
    assert!(!descends(&["httpHooks"]));
}

#[test]
fn the_fuse_root_moves_off_a_mount_at_data_or_must_not_collide() {
    let mounts = |keys: &[&str]| {
        let p = OptValue::Opaque { array: false };
        obj(&keys.iter().map(|k| (*k, p.clone())).collect::<Vec<_>>())
    };
    let fm = |vfs: OptValue| resolve(&obj(&[("vfs", vfs)]), None).map(|r| r.fuse_mount);
    assert_eq!(
        fm(obj(&[("mounts", mounts(&["/data"]))]))
            .unwrap()
            .as_deref(),
        Some(HIDDEN_FUSE_MOUNT)
    );
    assert_eq!(fm(obj(&[("mounts", mounts(&["/srv/x"]))])).unwrap(), None);
    assert_eq!(fm(obj(&[("mounts", mounts(&["/"]))])).unwrap(), None);
    let e = fm(obj(&[
        ("fuseMount", s("/data")),
        ("mounts", mounts(&["/data/x/"])),
    ]))
    .unwrap_err();
    assert!(
        e.0.starts_with("vfs.mounts key /data/x collides with vfs.fuseMount /data; choose"),
        "{}",
        e.0
    );
    assert!(fm(obj(&[
        ("fuseMount", s("/srv")),
        ("mounts", mounts(&["/data"]))
    ]))
    .unwrap()
    .is_none());
}

#[test]
fn boot_snapshot_is_a_boolean_and_defaults_to_unset() {
    let r = |v: OptValue| resolve(&obj(&[("sandbox", obj(&[("bootSnapshot", v)]))]), None);
    assert_eq!(r(OptValue::Bool(false)).unwrap().boot_snapshot, Some(false));
    assert_eq!(r(OptValue::Bool(true)).unwrap().boot_snapshot, Some(true));
    assert_eq!(resolve(&obj(&[]), None).unwrap().boot_snapshot, None);
    assert_eq!(
        r(s("no")).unwrap_err().0,
        "sandbox.bootSnapshot must be a boolean"
    );
    assert_eq!(
        refused(obj(&[(
            "sandbox",
            obj(&[("bootSnapshop", OptValue::Bool(false))])
        )])),
        "unknown option sandbox.bootSnapshop; did you mean sandbox.bootSnapshot?"
    );
}

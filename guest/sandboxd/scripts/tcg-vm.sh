#!/bin/sh
# Run sandboxd's integration tests (or perf measurements) inside a QEMU TCG
# VM, over the real gondolin.control virtio-serial port instead of a unix
# socket. Builds a throwaway initramfs: Debian's cloud kernel, busybox-static
# as the userland, the static guest sandboxd, and the virtio modules.
#
#   guest/sandboxd/scripts/tcg-vm.sh            # build, then run the exec tests
#   guest/sandboxd/scripts/tcg-vm.sh perf       # the perf measurements instead
#
# Needs a Debian host (apt-get download) and qemu-system-x86_64. Extra kernel
# arguments: TCG_APPEND (e.g. "init_on_alloc=0 norandmaps"); CPU model:
# TCG_CPU (default max, as the VM launcher uses).
set -eu

ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
WORK=${TCG_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/gondolin/sandboxd-tcg}
SUITE=${1:-exec}
mkdir -p "$WORK"
cd "$WORK"

if [ ! -f vmlinuz ] || [ ! -f busybox ]; then
    kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
    rm -rf debs extract && mkdir -p debs extract
    (cd debs && apt-get download "$kpkg" busybox-static)
    for d in debs/*.deb; do dpkg-deb -x "$d" extract; done
    kver=${kpkg#linux-image-}
    cp "extract/boot/vmlinuz-$kver" vmlinuz
    cp extract/bin/busybox busybox
    mkdir -p modules
    for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console; do
        cp "$(find "extract/lib/modules/$kver" -name "$m.ko*" | head -1)" modules/
    done
    rm -rf debs extract
fi

(cd "$ROOT" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build -q --profile guest --target x86_64-unknown-linux-gnu -p sandboxd)

rm -rf initrd && mkdir -p initrd/bin initrd/sbin initrd/proc initrd/sys initrd/dev initrd/tmp \
    initrd/root initrd/usr/bin initrd/lib/modules
cp busybox initrd/bin/busybox
cp modules/* initrd/lib/modules/
cp "$ROOT/target/x86_64-unknown-linux-gnu/guest/sandboxd" initrd/sbin/sandboxd
cat > initrd/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console; do
    insmod /lib/modules/$m.ko*
done
export PATH=/usr/bin:/bin HOME=/root TMPDIR=/tmp LANG=C.UTF-8 TERM=xterm
/sbin/sandboxd &
while true; do wait; sleep 1; done
EOF
chmod +x initrd/init
(cd initrd && find . | cpio -o -H newc 2>/dev/null | gzip -1) > initrd.cpio.gz

SANDBOXD_LAUNCH="exec qemu-system-x86_64 -machine q35 -accel tcg,thread=multi -cpu ${TCG_CPU:-max} \
-smp 2 -m 512 -nodefaults -no-reboot -nographic -serial file:$WORK/console.log \
-kernel $WORK/vmlinuz -initrd $WORK/initrd.cpio.gz -append 'console=ttyS0 panic=-1 ${TCG_APPEND:-}' \
-device virtio-serial-pci,id=vs0 -chardev socket,id=ctl,path={sock},server=off \
-device virtserialport,bus=vs0.0,chardev=ctl,name=gondolin.control"
export SANDBOXD_LAUNCH

cd "$ROOT"
case "$SUITE" in
    perf) SANDBOXD_PERF_MIB=${SANDBOXD_PERF_MIB:-30} \
        cargo test --release -p sandboxd --test perf -- --nocapture --test-threads=1 ;;
    *) cargo test --release -p sandboxd --test exec -- --test-threads=2 ;;
esac

#!/bin/bash
# Builds the vhost-user-blk test guest (a copy of ../shared/tools/guest-build.sh, extended): a Debian 12
# kernel + busybox-static initramfs whose /init
#   1. loads virtio modules, waits for /dev/vda, reports its queues and cache mode
#   2. reads the first $RLEN MiB and checks it is all oracle.rpat
#   3. writes $WLEN MiB of oracle.wpat at oracle.woff MiB (O_DIRECT + fsync) and reads it back
#   4. discards oracle.dlen MiB at oracle.doff MiB
#   5. turns its write cache off (cache_type "write through"), writes oracle.w2count 64 KiB blocks of
#      oracle.w2pat at oracle.w2off MiB, one O_DIRECT write each, and turns the cache back on
#   6. with oracle.mode=loop instead: writes oracle.loops 64 KiB blocks of patterns 1, 2, ... from
#      oracle.woff MiB, printing ORACLE-LOOP n after each (a test restarts the back end meanwhile),
#      then reads them all back
#   7. prints "ORACLE-RESULT ..." and "ORACLE-DONE" on ttyS0 and powers off.
# The result is kept: OUTDIR's files newer than this script are not built again.
# Host-side deps (Debian 12): busybox-static, apt (for apt-get download), dpkg, gzip. No root-only steps
# other than apt-get download if the kernel .deb is not cached.
# Usage: build_initramfs.sh [OUTDIR]  -> OUTDIR/vmlinuz, OUTDIR/initramfs.cpio.gz
set -euo pipefail
OUT=${1:-${GUEST_DIR:-${TMPDIR:-/tmp}/strata-guest}/out}
mkdir -p "$OUT" "${GUEST_DIR:-${TMPDIR:-/tmp}/strata-guest}"
if [ -f "$OUT/initramfs.cpio.gz" ] && [ -f "$OUT/vmlinux" ] && [ "$OUT/initramfs.cpio.gz" -nt "$0" ]; then exit 0; fi
trap 'rm -rf "$WORK"' EXIT
WORK=$(mktemp -d "${GUEST_DIR:-${TMPDIR:-/tmp}/strata-guest}/build.XXXX")
KDEB_DIR=${GUEST_DIR:-${TMPDIR:-/tmp}/strata-guest}
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
DEB=$(ls $KDEB_DIR/${KPKG}_*.deb 2>/dev/null | head -1 || true)
if [ -z "$DEB" ]; then (cd $KDEB_DIR && apt-get download "$KPKG"); DEB=$(ls $KDEB_DIR/${KPKG}_*.deb | head -1); fi
KX=$KDEB_DIR/kpkg
[ -d $KX/boot ] || dpkg -x "$DEB" $KX
KVER=$(ls $KX/lib/modules | head -1)
cp $KX/boot/vmlinuz-$KVER "$OUT/vmlinuz"
# Uncompressed ELF vmlinux (66 MB) for PVH direct boot (-kernel vmlinux): skips SeaBIOS + in-guest XZ
# decompression, which is ~3 s of the ~6 s TCG run. Debian's kernel has CONFIG_PVH=y.
[ -f "$OUT/vmlinux" ] || /usr/bin/python3 - "$OUT/vmlinuz" "$OUT/vmlinux" <<'PY'
import lzma, sys
d = open(sys.argv[1], 'rb').read(); pos = 0
while (i := d.find(b'\xfd7zXZ\x00', pos)) >= 0:
    try:
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:])
        if out[:4] == b'\x7fELF': open(sys.argv[2], 'wb').write(out); break
    except lzma.LZMAError: pass
    pos = i + 1
PY

R=$WORK/root
mkdir -p $R/{bin,dev,proc,sys,lib/modules}
cp /bin/busybox $R/bin/busybox            # from busybox-static
MODS="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_mmio"
for m in $MODS; do
  f=$(find $KX/lib/modules/$KVER/kernel/drivers -name "$m.ko" | head -1)
  cp "$f" $R/lib/modules/
done

cat > $R/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "ORACLE-BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_mmio; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
# defaults, overridable from the kernel command line
RPAT=0x42; RLEN=4; WPAT=0x55; WOFF=16; WLEN=1; DEV=vda; DOFF=32; DLEN=1; W2PAT=0x77; W2OFF=40; W2COUNT=8; MODE=basic; LOOPS=12
for a in $(cat /proc/cmdline); do
  case $a in
    oracle.rpat=*) RPAT=${a#*=};; oracle.rlen=*) RLEN=${a#*=};;
    oracle.wpat=*) WPAT=${a#*=};; oracle.woff=*) WOFF=${a#*=};; oracle.wlen=*) WLEN=${a#*=};;
    oracle.dev=*) DEV=${a#*=};; oracle.doff=*) DOFF=${a#*=};; oracle.dlen=*) DLEN=${a#*=};;
    oracle.w2pat=*) W2PAT=${a#*=};; oracle.w2off=*) W2OFF=${a#*=};; oracle.w2count=*) W2COUNT=${a#*=};;
    oracle.mode=*) MODE=${a#*=};; oracle.loops=*) LOOPS=${a#*=};;
  esac
done
i=0; while [ ! -b /dev/$DEV ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ ! -b /dev/$DEV ]; then echo "ORACLE-RESULT FAIL no /dev/$DEV"; ls /sys/block; echo ORACLE-DONE; poweroff -f; fi
oct() { printf '\\%03o' $(($1)); }
pattern() { dd if=/dev/zero bs=$2 count=1 2>/dev/null | tr '\000' "$(oct $1)"; }
SECT=$(cat /sys/block/$DEV/size)
NQ=$(ls /sys/block/$DEV/mq 2>/dev/null | wc -l)
echo "ORACLE-DISK dev=$DEV sectors=$SECT mq_queues=$NQ lbs=$(cat /sys/block/$DEV/queue/logical_block_size) ncpu=$(nproc) cache=$(cat /sys/block/$DEV/cache_type 2>/dev/null | tr ' ' _) discard_max=$(cat /sys/block/$DEV/queue/discard_max_bytes)"
if [ "$MODE" = loop ]; then
  LRES=PASS
  n=0; while [ $n -lt $LOOPS ]; do
    pattern $((n + 1)) 65536 | dd of=/dev/$DEV bs=65536 seek=$((WOFF * 16 + n)) oflag=direct conv=notrunc 2>/dev/null || LRES=FAIL
    echo "ORACLE-LOOP $n"
    n=$((n + 1))
  done
  n=0; while [ $n -lt $LOOPS ]; do
    GOT=$(dd if=/dev/$DEV bs=65536 skip=$((WOFF * 16 + n)) count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$GOT" = "$(pattern $((n + 1)) 65536 | md5sum | cut -d' ' -f1)" ] || LRES=FAIL
    n=$((n + 1))
  done
  echo "ORACLE-RESULT loop=$LRES uptime=$(cut -d' ' -f1 /proc/uptime)"
  echo "ORACLE-DONE"
  poweroff -f
fi
# read check: first RLEN MiB must all be RPAT
GOT=$(dd if=/dev/$DEV bs=1M count=$RLEN iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
EXP=$(dd if=/dev/zero bs=1M count=$RLEN 2>/dev/null | tr '\000' "$(oct $RPAT)" | md5sum | cut -d' ' -f1)
[ "$GOT" = "$EXP" ] && RRES=PASS || RRES=FAIL
# parallel reads on all CPUs (exercises multiple virtqueues when num-queues>1)
for c in $(seq 0 $(( $(nproc) - 1 ))); do
  taskset -c $c dd if=/dev/$DEV of=/dev/null bs=64k count=256 skip=$((c*256)) iflag=direct 2>/dev/null &
done; wait
# write: WLEN MiB of WPAT at WOFF MiB, O_DIRECT, then flush
dd if=/dev/zero bs=1M count=$WLEN 2>/dev/null | tr '\000' "$(oct $WPAT)" | \
  dd of=/dev/$DEV bs=1M seek=$WOFF iflag=fullblock oflag=direct conv=fsync,notrunc 2>/dev/null && WRES=PASS || WRES=FAIL
blockdev --flushbufs /dev/$DEV
# read back what we wrote (bypassing page cache)
GOT2=$(dd if=/dev/$DEV bs=1M skip=$WOFF count=$WLEN iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
EXP2=$(dd if=/dev/zero bs=1M count=$WLEN 2>/dev/null | tr '\000' "$(oct $WPAT)" | md5sum | cut -d' ' -f1)
[ "$GOT2" = "$EXP2" ] || WRES=FAIL
# discard DLEN MiB at DOFF MiB
blkdiscard -o $((DOFF * 1048576)) -l $((DLEN * 1048576)) /dev/$DEV && DRES=PASS || DRES=FAIL
# write cache off: every write must be durable when it completes (the device flushes after each)
if echo "write through" > /sys/block/$DEV/cache_type && [ "$(cat /sys/block/$DEV/cache_type)" = "write through" ]; then
  CRES=PASS
  n=0; while [ $n -lt $W2COUNT ]; do
    pattern $W2PAT 65536 | dd of=/dev/$DEV bs=65536 seek=$((W2OFF * 16 + n)) oflag=direct conv=notrunc 2>/dev/null || CRES=FAIL
    n=$((n + 1))
  done
  echo "write back" > /sys/block/$DEV/cache_type || CRES=FAIL
else
  CRES=FAIL
fi
echo "ORACLE-RESULT read=$RRES md5=$GOT write=$WRES discard=$DRES wce=$CRES uptime=$(cut -d' ' -f1 /proc/uptime)"
echo "ORACLE-DONE"
sync
poweroff -f
EOF
chmod +x $R/init
(cd $R && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$OUT/initramfs.cpio.gz")
ls -l "$OUT/vmlinuz" "$OUT/vmlinux" "$OUT/initramfs.cpio.gz"

# Sourced by /init of the VDUSE proof guest when the kernel command line says vduse_scenario=blk: the IFC
# block VF through VDUSE. The daemon makes a block VF on a raw image in the guest's tmpfs; it joins the vDPA
# bus through VDUSE and the kernel's virtio_blk drives it (virtio_vdpa), giving /dev/vdX: mkfs.ext4, mount,
# write known data, umount, fsck clean, read back after a remount; the image file itself (read beside the
# device, not through it) holds the same file system and data. Then a read-only VF refuses writes.
# Uses say, wait_for and finish from /init. Lines for the host test start with VDUSE-BLK.
# e2fsprogs by full path: busybox sh runs its own applets first (its mke2fs makes ext2 only)
E=/usr/sbin
bsay() { echo "VDUSE-BLK $*"; }
blkdev_of() { for b in /sys/bus/vdpa/devices/$1/virtio*/block/*; do [ -e "$b" ] && basename "$b"; done; }
has_blkdev() { [ -n "$(blkdev_of "$1")" ]; }
blk_fail() {
  dmesg | tail -n 40 | sed 's/^/VDUSE-DMESG /'
  sed 's/^/VDUSE-DAEMON /' /tmp/daemon.log
  finish error
}

ifcvf daemon >/tmp/daemon.log 2>&1 &
dpid=$!
wait_for 20 ifcvf mgmtdev show >/dev/null 2>&1
truncate -s 64M /tmp/disk.img
ifcvf sim add class blk backend file:/tmp/disk.img queues 2 >/dev/null
bsay "sim-add rc=$?"
ifcvf dev add name blk0 mgmtdev sim/ifcvf0
bsay "dev-add rc=$?"
ifcvf dev attach blk0 vduse vdblk0
bsay "attach rc=$? node=$(ls /dev/vduse | tr '\n' ' ')"
vdpa mgmtdev show | sed 's/^/VDPA mgmtdev /'
vdpa dev add name vdblk0 mgmtdev vduse
bsay "vdpa-dev-add rc=$?"
vdpa dev show -jp | tr -d ' \n' | sed 's/^/VDPA dev-show-json /'; echo
vdpa dev config show vdblk0 2>&1 | sed 's/^/VDPA config /'
wait_for 20 has_blkdev vdblk0
b=$(blkdev_of vdblk0)
drv=$(basename "$(readlink /sys/bus/vdpa/devices/vdblk0/driver)" 2>/dev/null)
[ -n "$b" ] || { bsay "no block device"; blk_fail; }
bsay "blockdev $b driver=$drv sectors=$(cat /sys/block/$b/size) ro=$(cat /sys/block/$b/ro) lbs=$(cat /sys/block/$b/queue/logical_block_size) hwqueues=$(ls /sys/block/$b/mq | wc -l) image-sectors=$(( $(stat -c %s /tmp/disk.img) / 512 ))"

# ext4 on the VF: every block the file system writes goes through virtio_blk -> VDUSE -> the block personality
$E/mke2fs -t ext4 -q -F "/dev/$b" >/tmp/mkfs.log 2>&1
bsay "mkfs rc=$? $(tr '\n' ' ' </tmp/mkfs.log)"
mkdir -p /mnt
mount -t ext4 "/dev/$b" /mnt
bsay "mount rc=$? $(grep " /mnt " /proc/mounts)"
dd if=/dev/urandom of=/tmp/data bs=65536 count=96 2>/dev/null   # 6 MiB of known data
mkdir -p /mnt/dir
cp /tmp/data /mnt/dir/data
dd if=/tmp/data of=/mnt/direct bs=1M oflag=direct 2>/dev/null
bsay "write rc=$?"
sync
umount /mnt
bsay "umount rc=$?"
$E/e2fsck -f -n "/dev/$b" >/tmp/fsck.log 2>&1
bsay "fsck rc=$? $(tail -n 1 /tmp/fsck.log)"
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 -o ro "/dev/$b" /mnt
bsay "remount rc=$?"
bsay "sha data=$(sha256sum /tmp/data | cut -d' ' -f1) fs=$(sha256sum /mnt/dir/data | cut -d' ' -f1) direct=$(sha256sum /mnt/direct | cut -d' ' -f1) bytes=$(stat -c %s /mnt/dir/data)"
umount /mnt
for q in 0 1; do bsay "vstats q$q $(ifcvf dev vstats show blk0 qidx $q)"; done
# the whole device read through VDUSE equals the image file read beside it
echo 3 >/proc/sys/vm/drop_caches
bsay "device-vs-image dev=$(sha256sum "/dev/$b" | cut -d' ' -f1) image=$(sha256sum /tmp/disk.img | cut -d' ' -f1)"

vdpa dev del vdblk0
bsay "vdpa-dev-del rc=$? on-bus=$(ls /sys/bus/vdpa/devices | grep -c vdblk0)"
ifcvf dev detach blk0
bsay "detach rc=$? node-left=$(ls /dev/vduse | grep -c vdblk0)"
# the image file on its own (the device gone): a clean file system holding the data written through it
$E/e2fsck -f -n /tmp/disk.img >/tmp/fsck2.log 2>&1
bsay "image-fsck rc=$? $(tail -n 1 /tmp/fsck2.log)"
$E/debugfs -R "dump /dir/data /tmp/out" /tmp/disk.img >/dev/null 2>&1
bsay "image-sha rc=$? data=$(sha256sum /tmp/data | cut -d' ' -f1) image=$(sha256sum /tmp/out 2>/dev/null | cut -d' ' -f1)"

# read-only, provisioned with one of the VF's two queues: the VF offers VIRTIO_BLK_F_RO and declares one
# queue; the kernel marks the disk read-only
cp /tmp/disk.img /tmp/ro.img
before=$(sha256sum /tmp/ro.img | cut -d' ' -f1)
ifcvf sim add class blk backend file:/tmp/ro.img queues 2 >/dev/null
ifcvf dev add name blk1 mgmtdev sim/ifcvf1 readonly queues 1
ifcvf dev attach blk1 vduse vdblk1
vdpa dev add name vdblk1 mgmtdev vduse
wait_for 20 has_blkdev vdblk1
r=$(blkdev_of vdblk1)
[ -n "$r" ] || { bsay "no read-only block device"; blk_fail; }
bsay "ro-blockdev $r ro=$(cat /sys/block/$r/ro) hwqueues=$(ls /sys/block/$r/mq | wc -l) $(vdpa dev show vdblk1 -jp | tr -d ' \n' | grep -o '"max_vqs":[0-9]*')"
dd if=/dev/zero of="/dev/$r" bs=4096 count=1 oflag=direct 2>/tmp/ro-dd.err
bsay "ro-write rc=$? $(tr '\n' ' ' </tmp/ro-dd.err)"
mount -t ext4 "/dev/$r" /mnt 2>/tmp/ro-mount.err
bsay "ro-mount rc=$? $(grep " /mnt " /proc/mounts | cut -d' ' -f4 | cut -d, -f1)"
bsay "ro-read sha=$(sha256sum /mnt/dir/data | cut -d' ' -f1)"
touch /mnt/new 2>/dev/null
bsay "ro-touch rc=$?"
umount /mnt
vdpa dev del vdblk1
ifcvf dev detach blk1
bsay "ro-image unchanged=$([ "$(sha256sum /tmp/ro.img | cut -d' ' -f1)" = "$before" ] && echo yes || echo no)"
# the single-device form: serve --vduse with a memory backend (16 MiB), no daemon involved
ifcvf serve --vduse vdblk2 --class blk --backend mem:16M --queues 2 >/tmp/serve.log 2>&1 &
spid=$!
vduse_node() { [ -e /dev/vduse/vdblk2 ]; }
wait_for 20 vduse_node
vdpa dev add name vdblk2 mgmtdev vduse
wait_for 20 has_blkdev vdblk2
m=$(blkdev_of vdblk2)
dd if=/dev/urandom of=/tmp/mdata bs=65536 count=16 2>/dev/null
dd if=/tmp/mdata of="/dev/$m" bs=65536 seek=8 oflag=direct 2>/dev/null
dd if="/dev/$m" of=/tmp/mback bs=65536 skip=8 count=16 iflag=direct 2>/dev/null
bsay "serve-blockdev ${m:-none} sectors=$(cat /sys/block/$m/size 2>/dev/null) hwqueues=$(ls /sys/block/$m/mq 2>/dev/null | wc -l) written=$(sha256sum /tmp/mdata | cut -d' ' -f1) read=$(sha256sum /tmp/mback | cut -d' ' -f1)"
timeout 30 vdpa dev del vdblk2
bsay "serve-dev-del rc=$? on-bus=$(ls /sys/bus/vdpa/devices | grep -c vdblk2)"
kill -TERM $spid   # not INT: a background job of a non-interactive shell starts with SIGINT ignored
( sleep 30; kill -9 $spid 2>/dev/null && echo "VDUSE-BLK serve did not stop within 30 s" ) &
wdog=$!
wait $spid
bsay "serve-exit rc=$?"
kill $wdog 2>/dev/null
sed 's/^/VDUSE-SERVE /' /tmp/serve.log
bsay "oops=$(dmesg | grep -cE 'BUG:|Oops:|Call Trace')"  # case-sensitive: TCG's "loops_per_jiffy" warning is no oops
dmesg | grep -E 'BUG:|Oops:|Call Trace|virtio_blk|EXT4-fs' | head -n 40 | sed 's/^/VDUSE-DMESG /'
kill -TERM $dpid
wait $dpid
bsay "daemon-exit rc=$?"
sed 's/^/VDUSE-DAEMON /' /tmp/daemon.log
finish ok

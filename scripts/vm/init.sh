#!/bin/busybox sh
# /init of the test guest's initramfs (packed by scripts/vm/build.sh with a static busybox and the
# virtio/9p modules listed in /modules.order). Runs as PID 1 under test/helpers/vm.ts:
#   - mounts the host's root read-only over 9p (mount tag "hostroot"),
#   - tmpfs on /tmp /run /var/tmp /root; the working directory and the vm.keep= directories are bound
#     back over them, so they stay visible wherever they live on the host,
#   - switch_root, then runs the script file named on the kernel command line with /bin/bash,
#   - prints "@@VIRTIOFS-VM-EXIT <token> <status>" and powers off (poweroff -f);
#   - on the way, "@@VIRTIOFS-VM-STEP <token> - <phase>" when each phase begins (init-modules, init-9p,
#     init-switch-root), then "@@VIRTIOFS-VM-BEGIN <token>" just before the script.
# Kernel parameters read from /proc/cmdline: vm.script=HOST_PATH vm.cwd=DIR vm.token=WORD
# vm.keep=DIR,DIR,... (absolute host paths, no spaces or commas).
# It never falls back to an interactive shell: any failure prints "@@VIRTIOFS-VM-FAIL <token> <why>"
# and powers off.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys

token=none script= cwd=/ keep=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vm.script=*) script=${arg#vm.script=} ;;
    vm.cwd=*) cwd=${arg#vm.cwd=} ;;
    vm.token=*) token=${arg#vm.token=} ;;
    vm.keep=*) keep=${arg#vm.keep=} ;;
  esac
done

# Phase markers, timed by the host as they arrive: "@@VIRTIOFS-VM-STEP <token> - <phase>".
step() {
  echo "@@VIRTIOFS-VM-STEP $token - $1"
}
step init-modules

fail() {
  echo "@@VIRTIOFS-VM-FAIL $token $*"
  poweroff -f
  sleep 5
  exit 1
}

for m in $(cat /modules.order); do
  insmod "/lib/modules/$m" || fail "insmod $m"
done

step init-9p
mkdir -p /newroot /hold
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot \
  || fail "mount of the host root over 9p"
[ -n "$script" ] || fail "no vm.script= on the kernel command line"
# Read what lives under a tmpfs-to-be before the tmpfs hides it.
cp "/newroot$script" /script.sh || fail "cannot read the script $script through 9p"
[ -d "/newroot$cwd" ] || fail "working directory $cwd does not exist on the host"
IFS=,
set -- "$cwd" $keep
unset IFS
n=0
for dir in "$@"; do
  n=$((n + 1))
  mkdir -p "/hold/$n"
  mount -o bind "/newroot$dir" "/hold/$n" || fail "cannot bind $dir (does it exist on the host?)"
done

mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || fail "tmpfs /tmp"
mount -t tmpfs -o mode=1777 tmpfs /newroot/var/tmp || fail "tmpfs /var/tmp"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run || fail "tmpfs /run"
mount -t tmpfs -o mode=0700 tmpfs /newroot/root || fail "tmpfs /root"
n=0
for dir in "$@"; do
  n=$((n + 1))
  mkdir -p "/newroot$dir" 2>/dev/null # inside a tmpfs; elsewhere it exists already
  mount -o move "/hold/$n" "/newroot$dir" || fail "cannot bind $dir back"
done

vm=/newroot/run/virtiofs-vm
mkdir -p "$vm"
cp /script.sh "$vm/script.sh"
cp /bin/busybox "$vm/busybox"
cat >"$vm/runner.sh" <<EOF
# PID 1 after switch_root: runs the test script and reports its exit status.
cd "$cwd" || { echo "@@VIRTIOFS-VM-FAIL $token cannot cd to $cwd"; exec /run/virtiofs-vm/busybox poweroff -f; }
export HOME=/root TERM=dumb LANG=C.UTF-8
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "@@VIRTIOFS-VM-BEGIN $token"
/bin/bash /run/virtiofs-vm/script.sh
echo "@@VIRTIOFS-VM-EXIT $token \$?"
exec /run/virtiofs-vm/busybox poweroff -f
EOF

step init-switch-root
for d in proc sys dev; do
  mount -o move "/$d" "/newroot/$d" || fail "move /$d"
done
mkdir -p /newroot/dev/shm /newroot/dev/pts /newroot/dev/hugepages
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t hugetlbfs hugetlbfs /newroot/dev/hugepages

exec switch_root /newroot /run/virtiofs-vm/busybox sh /run/virtiofs-vm/runner.sh
fail "switch_root"

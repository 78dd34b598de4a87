#!/usr/bin/env bash
# One-time, idempotent machine set-up for virtiofs-client.
#   bash scripts/setup.sh                what the demo and the CLI need
#   bash scripts/setup.sh --for-tests    everything the test suite uses (implies --for-vm, --for-foreign)
#   bash scripts/setup.sh --for-bench    plus what bench/mount.ts runs and builds
#   bash scripts/setup.sh --for-vm       plus what the QEMU guest harness builds and boots
#   bash scripts/setup.sh --for-foreign  plus what scripts/foreign/build.sh needs
# Flags combine. Installs Debian packages only when they are missing (needs root
# then), and node_modules only when package-lock.json changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

for_tests=0 for_bench=0 for_vm=0 for_foreign=0
for a in "$@"; do
  case $a in
    --for-tests) for_tests=1 for_vm=1 for_foreign=1 ;;
    --for-bench) for_bench=1 ;;
    --for-vm) for_vm=1 ;;
    --for-foreign) for_foreign=1 ;;
    *) printf 'setup: unknown option %s\n' "$a" >&2; exit 2 ;;
  esac
done

say() { printf 'setup: %s\n' "$*" >&2; }

# package -> why we need it (printed when it gets installed)
declare -A why=(
  [libfuse2]="libfuse.so.2 for the fuse-native frontend (fuse-native's bundled copy is missing)"
  [fuse3]="fusermount3, and the FUSE userspace tools for unprivileged mounts"
  [qemu-system-common]="/usr/lib/qemu/virtiofsd, the real virtio-fs device backend used by the demo"
)
needed=(libfuse2 fuse3 qemu-system-common)

if (( for_tests )); then
  why[gcc]="cc and cpp: tests compile <linux/fuse.h> and preprocess each architecture's headers"
  why[python3]="the tests read xattrs with os.getxattr, and the fuzzer, crash and concurrency tests run their applications in it"
  why[git]="the mount tests run git init/commit/fsck inside a mounted directory"
  why[systemd]="systemd-analyze verify checks the example units in examples/systemd"
  why[binutils]="readelf: scripts/rust-virtiofsd/build.sh checks the Rust virtiofsd's libraries (a second real backend)"
  why[e2fsprogs]="lsattr and chattr: the fileattr ioctl tests through a mount"
  needed+=(gcc python3 git systemd binutils e2fsprogs)
  # Every Linux architecture's uapi headers: the ground truth the arch tables are tested against.
  for a in amd64 i386 arm64 armhf alpha hppa m68k mips64el mipsel powerpc ppc64el riscv64 s390x sparc64; do
    why[linux-libc-dev-$a-cross]="$a's real fcntl.h/errno.h, compared with client/arch tables by the tests"
    needed+=("linux-libc-dev-$a-cross")
  done
fi

if (( for_bench )); then
  why[fio]="the I/O workloads of bench/mount.ts (sequential and random read/write)"
  why[libfuse3-dev]="passthrough_ll.c and fuse3.pc: bench/mount.ts builds libfuse's C passthrough as its FUSE baseline"
  why[pkg-config]="pkg-config fuse3 --cflags --libs, to build that passthrough"
  why[gcc]="compiles libfuse's passthrough_ll.c at bench time"
  needed+=(fio libfuse3-dev pkg-config gcc)
fi

if (( for_vm )); then
  # scripts/vm/build.sh and test/helpers/vm.ts; the kernel, headers and sources come from apt-get download.
  why[qemu-system-x86]="qemu-system-x86_64: the test guest with a vhost-user-fs-pci device (TCG)"
  why[busybox-static]="the guest initramfs: a static sh, mount, insmod, switch_root, and cpio to pack it"
  why[kmod]="depmod -b and modprobe -d: the guest kernel's module tree, extracted outside /lib/modules"
  why[python3]="its lzma module takes the uncompressed vmlinux out of Debian's vmlinuz"
  why[xz-utils]="unpacks drivers/vfio from linux-source's tar.xz"
  why[make]="kbuild: builds the no-IOMMU vfio.ko out of tree"
  why[gcc-12]="the compiler Debian's linux-headers name (CC = gcc-12), for that vfio.ko"
  needed+=(qemu-system-x86 busybox-static kmod python3 xz-utils make gcc-12)
fi

# Foreign-architecture devices (scripts/foreign/build.sh; test/e2e/foreign-devices.test.ts runs them too).
if (( for_foreign )); then
  why[qemu-user-static]="qemu-aarch64/ppc64le/mips64el-static: run Debian's arm64, ppc64el and mips64el virtiofsd on this machine"
  why[binutils-aarch64-linux-gnu]="assembles and links the no-op libseccomp stub for the arm64 virtiofsd (qemu-user has no seccomp)"
  why[binutils-powerpc64le-linux-gnu]="assembles and links the no-op libseccomp stub for the ppc64el virtiofsd"
  why[binutils-mips64el-linux-gnuabi64]="assembles and links the no-op libseccomp stub for the mips64el virtiofsd"
  needed+=(qemu-user-static binutils-aarch64-linux-gnu binutils-powerpc64le-linux-gnu binutils-mips64el-linux-gnuabi64)
fi

missing=()
for p in "${needed[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if (( ${#missing[@]} )); then
  if [[ $(id -u) -ne 0 ]]; then
    say "missing Debian packages: ${missing[*]}"
    say "run this script as root once (it installs them with apt-get), or install them yourself."
    exit 1
  fi
  for p in "${missing[@]}"; do say "installing $p: ${why[$p]}"; done
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# One install at a time: two set-ups racing in one checkout break each other's native builds.
exec 9>>"${TMPDIR:-/tmp}/virtiofs-client-setup.lock"
flock 9
stamp=node_modules/.virtiofs-client-lock
if [[ ! -f $stamp ]] || ! cmp -s package-lock.json "$stamp"; then
  say "installing node modules (npm ci; native addons koffi, ioctl-napi and fuse-native are built from source)"
  npm ci --no-audit --no-fund >&2
  cp package-lock.json "$stamp"
fi

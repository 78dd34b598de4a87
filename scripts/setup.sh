#!/usr/bin/env bash
# One-time, idempotent machine set-up for virtiofs-client.
#   bash scripts/setup.sh              what the demo and the CLI need
#   bash scripts/setup.sh --for-tests  plus what the test suite compares against
# Installs Debian packages only when they are missing (needs root then), and
# node_modules only when package-lock.json changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

for_tests=0
[[ "${1:-}" == "--for-tests" ]] && for_tests=1

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
  why[python3]="the tests read xattrs of the shared directory with os.getxattr"
  needed+=(gcc python3)
  # Every Linux architecture's uapi headers: the ground truth the arch tables are tested against.
  for a in amd64 i386 arm64 armhf alpha hppa m68k mips64el mipsel powerpc ppc64el riscv64 s390x sparc64; do
    why[linux-libc-dev-$a-cross]="$a's real fcntl.h/errno.h, compared with client/arch tables by the tests"
    needed+=("linux-libc-dev-$a-cross")
  done
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

stamp=node_modules/.virtiofs-client-lock
if [[ ! -f $stamp ]] || ! cmp -s package-lock.json "$stamp"; then
  say "installing node modules (npm ci; native addons koffi, ioctl-napi and fuse-native are built from source)"
  npm ci --no-audit --no-fund >&2
  cp package-lock.json "$stamp"
fi

#!/usr/bin/env bash
# Builds what test/helpers/vm.ts boots, from Debian packages only, into a cache directory
# (default node_modules/.cache/virtiofs-vm; $VIRTIOFS_VM_CACHE overrides):
#   - the guest kernel: Debian's linux-image-<release> that linux-image-amd64 depends on, dpkg -x'ed,
#     its module tree depmod'ed, and the uncompressed vmlinux taken out of vmlinuz (QEMU boots an ELF
#     vmlinux through PVH at once; decompressing vmlinuz under TCG costs 5-7 s per boot),
#   - initrd.img: static busybox, the virtio-pci + 9p modules, and scripts/vm/init.sh as /init,
#   - vfio-noiommu/vfio.ko: Debian's vfio.ko rebuilt from linux-source with CONFIG_VFIO_NOIOMMU
#     (Debian builds it without) against the same release's linux-headers and linux-kbuild.
# Prints the path of build.json, which names all of them. Idempotent: a second run only checks
# build.json against this script and init.sh (milliseconds); each step also keeps its own result, so an
# interrupted or changed build redoes only what is missing. The kernel chosen the first time is pinned
# in kernel.pin; --update-kernel picks linux-image-amd64's current one again. Needs the packages of
# `bash scripts/setup.sh --for-vm`; apt-get downloads need the network to Debian's mirror once.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VIRTIOFS_VM_CACHE:-$repo/node_modules/.cache/virtiofs-vm}

update_kernel=0
for a in "$@"; do
  case "$a" in
    --update-kernel) update_kernel=1 ;;
    *) echo "usage: $0 [--update-kernel]" >&2; exit 2 ;;
  esac
done

say() { printf 'vm-build: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one build at a time (ava runs test files in parallel processes)

inputs=$(cat "$here/build.sh" "$here/init.sh" | sha256sum | cut -c1-16)
manifest=$cache/build.json

# Fast path: everything built by these very scripts is still there.
if (( ! update_kernel )) && [[ -f $manifest ]] && grep -q "\"inputs\": \"$inputs\"" "$manifest"; then
  ok=1
  for f in $(sed -n 's/^  "\(vmlinux\|initrd\|vfioNoiommuKo\|modRoot\)": "\(.*\)",\{0,1\}$/\2/p' "$manifest"); do
    [[ -e $f ]] || ok=0
  done
  if (( ok )); then
    echo "$manifest"
    exit 0
  fi
fi

started=$SECONDS
step_start=$SECONDS
step() { say "$1 ($((SECONDS - step_start)) s)"; step_start=$SECONDS; }

# --- tools -----------------------------------------------------------------------------------------
missing=()
for c in apt-get apt-cache dpkg-deb depmod modprobe python3 make gcc-12 xz sha256sum flock; do
  command -v "$c" >/dev/null || missing+=("$c")
done
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || missing+=(busybox-static)
(( ${#missing[@]} == 0 )) || die "missing ${missing[*]}: run bash scripts/setup.sh --for-vm (as root) first"
busybox=/bin/busybox

apt_opts=()
[[ $(id -u) -eq 0 ]] && apt_opts=(-o APT::Sandbox::User=root) # else apt warns that _apt cannot write here

# --- which kernel ----------------------------------------------------------------------------------
apt_updated=0
apt_update() { # once per run, as root only
  (( ! apt_updated )) && [[ $(id -u) -eq 0 ]] || return 1
  say "apt-get update ($1)"
  apt-get update -qq >&2
  apt_updated=1
}
# The pin holds while its kernel is extracted; a kernel never built is chosen afresh (the mirror
# may have dropped the old version since).
pin=$cache/kernel.pin
pinned_done=0
if [[ -f $pin ]]; then
  k=$(sed -n 's/^kpkg=linux-image-//p' "$pin")-$(sed -n 's/^kver=//p' "$pin")
  [[ -f $cache/kernel-$k/root.done ]] && pinned_done=1
fi
if (( update_kernel )) || (( ! pinned_done )); then
  if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    apt_update "apt knows no linux-image-amd64 yet" || die "apt knows no linux-image-amd64: run apt-get update as root"
  fi
  kpkg=$(apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
  [[ -n $kpkg ]] || die "cannot tell which kernel linux-image-amd64 depends on"
  kver=$(apt-cache show --no-all-versions "$kpkg" | awk '$1 == "Version:" { print $2; exit }')
  printf 'kpkg=%s\nkver=%s\n' "$kpkg" "$kver" >"$pin.tmp"
  mv "$pin.tmp" "$pin"
fi
kpkg=$(sed -n 's/^kpkg=//p' "$pin")
kver=$(sed -n 's/^kver=//p' "$pin")
krel=${kpkg#linux-image-}                                  # 6.1.0-56-amd64
series=$(echo "$krel" | cut -d. -f1,2)                     # 6.1
flavour=${krel##*-}                                        # amd64
abi=${krel%-"$flavour"}                                    # 6.1.0-56
K=$cache/kernel-$krel-$kver
mkdir -p "$K"
say "guest kernel $kpkg $kver in $K"

# Leftovers of kernels no longer pinned (only this script's own kernel-* directories).
for d in "$cache"/kernel-*/; do
  d=${d%/}
  [[ -d $d && $d != "$K" ]] || continue
  say "removing the old build ${d##*/}"
  rm -rf "$d"
done

debs=$K/debs
download() { # download PACKAGE [VERSION]: the .deb's path on stdout; the exact version when it exists
  local pkg=$1 ver=${2:-} f
  mkdir -p "$debs"
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    apt_update "apt knows no $pkg" || die "apt knows no $pkg: run apt-get update as root"
  fi
  if [[ -n $ver ]] && apt-cache madison "$pkg" | awk -v v="$ver" '$3 == v { f = 1 } END { exit !f }'; then
    f=$(ls "$debs/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n 1 || true)
    [[ -n $f ]] || (cd "$debs" && apt-get "${apt_opts[@]}" -q download "$pkg=$ver" >&2) \
      || { apt_update "the download of $pkg $ver failed" && (cd "$debs" && apt-get "${apt_opts[@]}" -q download "$pkg=$ver" >&2); }
    ls "$debs/${pkg}_${ver//:/%3a}_"*.deb | head -n 1
  else
    f=$(ls "$debs/${pkg}_"*.deb 2>/dev/null | head -n 1 || true)
    [[ -n $f ]] || (cd "$debs" && apt-get "${apt_opts[@]}" -q download "$pkg" >&2) \
      || { apt_update "the download of $pkg failed" && (cd "$debs" && apt-get "${apt_opts[@]}" -q download "$pkg" >&2); }
    ls "$debs/${pkg}_"*.deb | head -n 1
  fi
}

# --- kernel image and module tree ------------------------------------------------------------------
root=$K/root
if [[ ! -f $K/root.done ]]; then
  deb=$(download "$kpkg" "$kver")
  rm -rf "$root" && mkdir -p "$root"
  dpkg-deb -x "$deb" "$root"
  depmod -b "$root" "$krel"
  touch "$K/root.done"
  rm -f "$deb"
  step "kernel $krel extracted, modules depmod'ed"
fi

if [[ ! -f $K/vmlinux ]]; then
  python3 - "$root/boot/vmlinuz-$krel" "$K/vmlinux.tmp" <<'EOF'
# vmlinuz is a boot stub followed by an xz stream of the ELF vmlinux: find the stream that
# decompresses to an ELF file (stray magic bytes may come first).
import lzma, sys
data = open(sys.argv[1], 'rb').read()
pos = data.find(b'\xfd7zXZ\x00')
while pos >= 0:
    try:
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[pos:])
    except lzma.LZMAError:
        out = b''
    if out[:4] == b'\x7fELF':
        open(sys.argv[2], 'wb').write(out)
        sys.exit(0)
    pos = data.find(b'\xfd7zXZ\x00', pos + 1)
sys.exit('no xz-compressed ELF kernel in ' + sys.argv[1])
EOF
  mv "$K/vmlinux.tmp" "$K/vmlinux"
  step "vmlinux extracted from vmlinuz"
fi

# --- initramfs -------------------------------------------------------------------------------------
initrd_inputs=$(cat "$here/init.sh" "$here/build.sh" | sha256sum | cut -c1-16)
if [[ ! -f $K/initrd.img ]] || [[ "$(cat "$K/initrd.inputs" 2>/dev/null)" != "$initrd_inputs" ]]; then
  stage=$K/initrd.stage
  rm -rf "$stage"
  mkdir -p "$stage"/{bin,dev,proc,sys,newroot,hold,lib/modules}
  cp "$busybox" "$stage/bin/busybox"
  install -m 0755 "$here/init.sh" "$stage/init"
  : >"$stage/modules.order"
  # virtio-pci for both devices, 9p over virtio for the host root; in dependency order.
  for m in $(for n in virtio_pci 9pnet_virtio 9p; do modprobe -d "$root" -S "$krel" --show-depends "$n"; done |
             awk '$1 == "insmod" { print $2 }'); do
    b=${m##*/}
    grep -qx "$b" "$stage/modules.order" && continue
    cp "$m" "$stage/lib/modules/$b"
    echo "$b" >>"$stage/modules.order"
  done
  (cd "$stage" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) >"$K/initrd.img.tmp"
  mv "$K/initrd.img.tmp" "$K/initrd.img"
  echo "$initrd_inputs" >"$K/initrd.inputs"
  step "initrd.img: busybox, init.sh and $(tr '\n' ' ' <"$stage/modules.order")"
  rm -rf "$stage"
fi

# --- vfio.ko with CONFIG_VFIO_NOIOMMU --------------------------------------------------------------
ko=$K/vfio-noiommu/vfio.ko
if [[ ! -f $ko ]]; then
  work=$K/vfio-work
  rm -rf "$work" && mkdir -p "$work/hdr" "$work/src" "$work/mod"
  for p in "linux-headers-$krel" "linux-headers-$abi-common" "linux-kbuild-$series"; do
    deb=$(download "$p" "$kver") # linux-kbuild: the same version, or the newest when that is gone
    dpkg-deb -x "$deb" "$work/hdr"
  done
  # The flavour's Makefile includes the common tree by its absolute path under /usr/src.
  build=$work/hdr/usr/src/linux-headers-$krel
  sed -i "s#^include /usr/src/#include $work/hdr/usr/src/#" "$build/Makefile"
  # linux-source is one big tar.xz inside the .deb: take drivers/vfio/* only, without storing it.
  deb=$(download "linux-source-$series" "$kver")
  dpkg-deb --fsys-tarfile "$deb" \
    | tar -xO "./usr/src/linux-source-$series.tar.xz" \
    | xz -dc -T0 \
    | tar -x -C "$work/src" --wildcards "linux-source-$series/drivers/vfio/*"
  step "linux-headers, linux-kbuild and drivers/vfio of linux-source-$series extracted"
  vsrc=$work/src/linux-source-$series/drivers/vfio
  cp "$vsrc"/*.c "$vsrc"/*.h "$work/mod/"
  {
    echo "obj-m := vfio.o"
    echo "ccflags-y := -DCONFIG_VFIO_NOIOMMU=1"
    # vfio.ko's objects as upstream lists them (vfio-y += ..., with continuation lines).
    awk '/^vfio-/ { on = 1 } on { print } !/\\$/ { on = 0 }' "$vsrc/Makefile"
  } >"$work/mod/Kbuild"
  make -s -C "$build" M="$work/mod" -j"$(nproc)" modules >&2 2> >(grep -v 'Skipping BTF generation' >&2)
  mkdir -p "$(dirname "$ko")"
  cp "$work/mod/vfio.ko" "$ko.tmp"
  mv "$ko.tmp" "$ko"
  rm -rf "$work" "$debs"
  step "vfio.ko built with CONFIG_VFIO_NOIOMMU"
fi
rm -rf "$debs"

cat >"$manifest.tmp" <<EOF
{
  "inputs": "$inputs",
  "kernelPackage": "$kpkg",
  "kernelVersion": "$kver",
  "kernelRelease": "$krel",
  "modRoot": "$root",
  "vmlinux": "$K/vmlinux",
  "initrd": "$K/initrd.img",
  "vfioNoiommuKo": "$ko"
}
EOF
mv "$manifest.tmp" "$manifest"
say "done in $((SECONDS - started)) s"
echo "$manifest"

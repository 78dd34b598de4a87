#!/usr/bin/env bash
# Builds real foreign-architecture virtio-fs devices: Debian bookworm's C virtiofsd
# (qemu-system-common:<arch>) for arm64, ppc64el and mips64el, runnable on this x86_64 machine
# under qemu-user, from Debian packages only, into a cache directory
# (default node_modules/.cache/virtiofs-foreign; $VIRTIOFS_FOREIGN_CACHE overrides):
#   <cache>/<arch>/root/         a sysroot: virtiofsd's package and the packages of every library it
#                                needs (its ELF NEEDED closure), apt-get download'ed and dpkg -x'ed
#   <cache>/<arch>/launch.json   how to start it: the qemu-user binary, the target's own loader in
#                                root/lib/<triplet>/ with --library-path, and the virtiofsd binary
# qemu-user has no seccomp(2) and this virtiofsd cannot be told to skip it, so the sysroot's
# libseccomp.so.2 is replaced by a no-op stub, assembled from scripts/foreign/seccomp-stub.<arch>.s
# with the target's binutils.
#
# usage: bash scripts/foreign/build.sh [arm64|ppc64el|mips64el ...]   (default: all three)
# Prints the path of each architecture's launch.json. Idempotent: a second run only compares each
# launch.json with this script and the stub source (milliseconds). Needs the packages of
# `bash scripts/setup.sh --for-foreign` (qemu-user-static and the three cross binutils); the first run
# also needs root, once, to add the foreign architectures to dpkg (dpkg --add-architecture, apt-get
# update; the machine's apt sources are not touched) and the network to Debian's mirror.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VIRTIOFS_FOREIGN_CACHE:-$repo/node_modules/.cache/virtiofs-foreign}

all_arches=(arm64 ppc64el mips64el)
declare -A triplet=([arm64]=aarch64-linux-gnu [ppc64el]=powerpc64le-linux-gnu [mips64el]=mips64el-linux-gnuabi64)
declare -A qemu=([arm64]=qemu-aarch64-static [ppc64el]=qemu-ppc64le-static [mips64el]=qemu-mips64el-static)
declare -A loader=([arm64]=ld-linux-aarch64.so.1 [ppc64el]=ld64.so.2 [mips64el]=ld.so.1)
# The ISA Debian builds for (the cross assembler's own default, mips3, would do but says less).
declare -A asflags=([arm64]= [ppc64el]= [mips64el]=-march=mips64r2)

say() { printf 'foreign-build: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

arches=()
for a in "$@"; do
  [[ -n ${triplet[$a]:-} ]] || { echo "usage: $0 [arm64|ppc64el|mips64el ...]" >&2; exit 2; }
  arches+=("$a")
done
(( ${#arches[@]} )) || arches=("${all_arches[@]}")

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one build at a time (ava runs test files in parallel processes)

inputs_of() { cat "$here/build.sh" "$here/seccomp-stub.$1.s" | sha256sum | cut -c1-16; }

# Fast path: launch.json written by these very inputs, and everything it names still there.
ready() {
  local manifest=$cache/$1/launch.json f
  [[ -f $manifest ]] && grep -q "\"inputs\": \"$(inputs_of "$1")\"" "$manifest" || return 1
  for f in $(grep -o '"/[^"]*"' "$manifest" | tr -d '"' | tr ':' ' '); do
    [[ -e $f ]] || return 1
  done
}
todo=()
for a in "${arches[@]}"; do ready "$a" || todo+=("$a"); done
if (( ${#todo[@]} == 0 )); then
  for a in "${arches[@]}"; do echo "$cache/$a/launch.json"; done
  exit 0
fi

started=$SECONDS

# --- tools -------------------------------------------------------------------------------------------
missing=()
for c in apt-get apt-cache dpkg dpkg-deb sha256sum flock timeout; do command -v "$c" >/dev/null || missing+=("$c"); done
for a in "${todo[@]}"; do
  for c in "${qemu[$a]}" "${triplet[$a]}-as" "${triplet[$a]}-ld" "${triplet[$a]}-readelf"; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
done
(( ${#missing[@]} == 0 )) || die "missing ${missing[*]}: run bash scripts/setup.sh --for-foreign (as root) first"

apt_opts=(-o DPkg::Lock::Timeout=600)
[[ $(id -u) -eq 0 ]] && apt_opts+=(-o APT::Sandbox::User=root) # else apt warns that _apt cannot write here

# --- foreign architectures in dpkg (Debian's own multiarch switch) ------------------------------------
native=$(dpkg --print-architecture)
known=" $(dpkg --print-foreign-architectures | tr '\n' ' ') "
add=()
for a in "${todo[@]}"; do
  [[ $a == "$native" || $known == *" $a "* ]] || add+=("$a")
done
if (( ${#add[@]} )); then
  # All three at once, so that the one apt-get update below serves every later build too.
  add=()
  for a in "${all_arches[@]}"; do [[ $a == "$native" || $known == *" $a "* ]] || add+=("$a"); done
  [[ $(id -u) -eq 0 ]] || die "dpkg does not know architecture(s) ${add[*]} yet: run this once as root"
  for a in "${add[@]}"; do
    say "dpkg --add-architecture $a: apt may then download $a packages (only their indexes are fetched; nothing is installed)"
    dpkg --add-architecture "$a"
  done
fi
indexed() { apt-cache show "${@/#/qemu-system-common:}" >/dev/null 2>&1; }
unindexed=()
if ! indexed "${todo[@]}"; then
  for a in "${todo[@]}"; do indexed "$a" || unindexed+=("$a"); done
fi
if (( ${#unindexed[@]} )); then
  [[ $(id -u) -eq 0 ]] || die "apt has no package index for ${unindexed[*]}: run this once as root (apt-get update)"
  say "apt-get update: fetching the package indexes of ${unindexed[*]}"
  # Other sources of this machine may not serve these architectures (or be unreachable): apt's
  # complaints about them are not ours; what counts is whether Debian's index is there afterwards.
  apt-get "${apt_opts[@]}" update -qq >&2 || say "apt-get update reported errors (checking what we need anyway)"
  for a in "${unindexed[@]}"; do indexed "$a" || die "apt-get update did not bring qemu-system-common:$a"; done
fi
say "tools and indexes ready ($((SECONDS - started)) s)"

# --- helpers --------------------------------------------------------------------------------------------
. "$(dirname "${BASH_SOURCE[0]}")/../lib/elf-closure.sh"

# The Debian package that ships a shared library, by its soname: the same package (Multi-Arch: same)
# is installed on this machine for its own architecture, since this machine's own virtiofsd
# (qemu-system-common, which scripts/setup.sh installs) needs the same libraries.
host_multiarch=$(uname -m)-linux-gnu
package_of_soname() {
  dpkg -S "*/$host_multiarch/$1" 2>/dev/null |
    awk -v so="/$host_multiarch/$1" '{ p = $NF; if (substr(p, length(p) - length(so) + 1) == so) { sub(/:.*/, "", $1); print $1; exit } }'
}

# Downloads (once; apt is slow to start, so in one call) and extracts packages into the sysroot being built.
fetch_extract() {
  local pkg deb get=()
  for pkg in "$@"; do compgen -G "$debs/${pkg}_*_$arch.deb" >/dev/null || get+=("$pkg:$arch"); done
  if (( ${#get[@]} )); then
    (cd "$debs" && apt-get "${apt_opts[@]}" download -qq "${get[@]}" >&2) || die "apt-get download ${get[*]} failed"
  fi
  for pkg in "$@"; do
    deb=$(compgen -G "$debs/${pkg}_*_$arch.deb" | head -n1 || true)
    [[ -n $deb ]] || die "apt-get download $pkg:$arch left no ${pkg}_*_$arch.deb"
    dpkg-deb -x "$deb" "$new"
    packages+=("$(basename "$deb" .deb)")
    chosen+="$pkg "
  done
}

# The sonames in the NEEDED closure of $bin that the sysroot's library directories lack.
unresolved() { unresolved_sonames "$R" "$bin" "${libdirs[@]}"; }

# --- one architecture ---------------------------------------------------------------------------------------
for arch in "${todo[@]}"; do
  t=${triplet[$arch]}
  R=$t-readelf
  dir=$cache/$arch
  debs=$dir/debs
  new=$dir/root.new
  root=$dir/root
  mkdir -p "$debs"
  rm -rf "$new" "$dir/launch.json"
  mkdir -p "$new"
  arch_started=$SECONDS

  # Where the loader looks (with --library-path), and the binary.
  libdirs=("$new/lib/$t" "$new/usr/lib/$t")
  bin=$new/usr/lib/qemu/virtiofsd

  # virtiofsd's package; libc6 for the loader; libgcc-s1, a Depends of libc6 that glibc loads at run
  # time (thread cancellation, backtraces), so it appears in no NEEDED list. Then every package that
  # ships a library of the NEEDED closure, until it is complete.
  packages=()
  chosen=" "
  fetch_extract qemu-system-common libc6 libgcc-s1
  [[ -f $bin ]] || die "qemu-system-common:$arch has no /usr/lib/qemu/virtiofsd"
  for round in 1 2 3 4 5 6 7 8; do
    sonames=$(unresolved)
    [[ -z $sonames ]] && break
    more=" "
    for so in $sonames; do
      p=$(package_of_soname "$so")
      [[ -n $p ]] || die "$arch: no package known for $so (dpkg -S finds no /$so on this machine)"
      [[ $chosen == *" $p "* ]] && die "$arch: $p was extracted but has no $so in lib/$t or usr/lib/$t"
      [[ $more == *" $p "* ]] || more+="$p "
    done
    fetch_extract $more
  done
  sonames=$(unresolved)
  [[ -z $sonames ]] || die "$arch: libraries still missing: $sonames"

  # Every package chosen must be a declared dependency (Depends) of qemu-system-common or of
  # another chosen package: the closure above and Debian's own metadata have to agree.
  depends=" $(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
    $(printf "%s:$arch " $chosen) 2>/dev/null |
    awk '$1 == "Depends:" || $1 == "|Depends:" || $1 == "PreDepends:" { sub(/:.*/, "", $2); print $2 }' | tr '\n' ' ') "
  for p in $chosen; do
    [[ $p == qemu-system-common || $depends == *" $p "* ]] || die "$arch: $p provides a library virtiofsd loads, but no chosen package Depends on it"
  done

  # The no-op libseccomp, in place of the sysroot's.
  stubdir=$dir/stub
  rm -rf "$stubdir"; mkdir -p "$stubdir"
  "$t-as" ${asflags[$arch]} -o "$stubdir/seccomp-stub.o" "$here/seccomp-stub.$arch.s"
  "$t-ld" -shared -soname libseccomp.so.2 -z noexecstack -o "$stubdir/libseccomp.so.2" "$stubdir/seccomp-stub.o"
  real=
  for d in "${libdirs[@]}"; do [[ -e $d/libseccomp.so.2 ]] && real=$d; done
  [[ -n $real ]] || die "$arch: the sysroot has no libseccomp.so.2 to replace"
  rm -f "$real"/libseccomp.so.2*
  cp "$stubdir/libseccomp.so.2" "$real/libseccomp.so.2"
  stub=$real/libseccomp.so.2
  [[ $("$R" -dW "$stub" | sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p') == libseccomp.so.2 ]] || die "$arch: stub SONAME is not libseccomp.so.2"
  machine_of() { "$R" -hW "$1" | awk -F: '$1 ~ /Class|Machine/ { gsub(/^ +/, "", $2); printf "%s;", $2 }'; }
  [[ $(machine_of "$stub") == "$(machine_of "$bin")" ]] || die "$arch: stub is $(machine_of "$stub"), virtiofsd is $(machine_of "$bin")"
  imports=$("$R" --dyn-syms -W "$bin" | awk '$7 == "UND" && $8 ~ /^seccomp_/ { sub(/@.*/, "", $8); print $8 }' | sort -u)
  exports=$("$R" --dyn-syms -W "$stub" | awk '$7 != "UND" && $5 == "GLOBAL" && $4 == "FUNC" { print $8 }' | sort -u)
  lacking=$(comm -23 <(echo "$imports") <(echo "$exports"))
  [[ -z $lacking ]] || die "$arch: virtiofsd imports $(echo $lacking) from libseccomp, which the stub does not define"
  [[ -z $(needed_of "$R" "$stub") ]] || die "$arch: the stub should need no library"

  # The loader: the real file in lib/<triplet>/ (qemu-user exits silently when given the absolute
  # lib64/ symlink), resolving inside the sysroot.
  ld=$new/lib/$t/${loader[$arch]}
  [[ -e $ld ]] || die "$arch: no loader at lib/$t/${loader[$arch]}"
  [[ -L $ld && $(readlink "$ld") == /* ]] && die "$arch: lib/$t/${loader[$arch]} is an absolute symlink"

  # Swap the finished sysroot in, then check it runs from its final place.
  rm -rf "$root"
  mv "$new" "$root"
  ld=$root/lib/$t/${loader[$arch]}
  bin=$root/usr/lib/qemu/virtiofsd
  libpath=$root/lib/$t:$root/usr/lib/$t
  qemu_bin=$(command -v "${qemu[$arch]}")
  version=$(timeout 60 "$qemu_bin" "$ld" --library-path "$libpath" "$bin" --version 2>&1) ||
    die "$arch: virtiofsd --version under ${qemu[$arch]} failed: $version"
  [[ $version == *"virtiofsd version"* ]] || die "$arch: unexpected virtiofsd --version output: $version"

  {
    printf '{\n'
    printf '  "arch": "%s",\n' "$arch"
    printf '  "inputs": "%s",\n' "$(inputs_of "$arch")"
    printf '  "version": "%s",\n' "$(head -n1 <<<"$version")"
    printf '  "launcher": ["%s", "%s", "--library-path", "%s"],\n' "$qemu_bin" "$ld" "$libpath"
    printf '  "binary": "%s",\n' "$bin"
    printf '  "seccompStub": "%s",\n' "${stub/$new/$root}"
    printf '  "packages": [%s]\n' "$(printf '"%s", ' "${packages[@]}" | sed 's/, $//')"
    printf '}\n'
  } >"$dir/launch.json.tmp"
  mv "$dir/launch.json.tmp" "$dir/launch.json"
  say "$arch: $(head -n1 <<<"$version") from ${#packages[@]} packages ($((SECONDS - arch_started)) s)"
done

say "done ($((SECONDS - started)) s)"
for a in "${arches[@]}"; do echo "$cache/$a/launch.json"; done

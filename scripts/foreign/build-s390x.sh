#!/usr/bin/env bash
# Builds a real BIG-ENDIAN virtio-fs device: Debian trixie's Rust virtiofsd for s390x, runnable on
# this x86_64 machine under qemu-s390x-static, from Debian packages only, into a cache directory
# (default node_modules/.cache/virtiofs-foreign/s390x; $VIRTIOFS_FOREIGN_CACHE overrides the parent):
#   <dir>/apt/          a private apt configuration: its own sources file (suite trixie, s390x only, on
#                       the Debian mirror this machine's own apt sources name), its own lists, cache,
#                       state and an empty dpkg status. The machine's apt sources, lists and dpkg
#                       database are never touched (no dpkg --add-architecture either).
#   <dir>/root/         a sysroot: virtiofsd and the packages of every library it needs (its library
#                       Depends, libgcc-s1, and whatever its ELF NEEDED closure asks for), apt-get
#                       download'ed and dpkg -x'ed
#   <dir>/run.sh        the launcher: execs qemu-s390x-static with the sysroot's own loader (the real
#                       file in usr/lib/s390x-linux-gnu/, not a symlink) and --library-path, running
#                       the binary it is given with --seccomp=none inserted (qemu-user has no
#                       seccomp(2); the Rust virtiofsd can be told to skip it, so no stub is needed)
#   <dir>/launch.json   { arch, flavor: "rust", launcher: [run.sh], binary, ... } for Virtiofsd.start
# Separate from build.sh (bookworm's C virtiofsd + a libseccomp stub, dpkg multiarch): s390x comes
# from trixie through a private apt configuration, like scripts/rust-virtiofsd/build.sh does for amd64.
#
# usage: bash scripts/foreign/build-s390x.sh [--update]
#   --update   apt-get update the private lists again and rebuild with trixie's current packages
# Prints the path of launch.json. Idempotent: a second run only checks launch.json against this
# script (milliseconds). Needs qemu-user-static and readelf (binutils), and for the first run the
# network to the Debian mirror; not root. Running virtiofsd itself needs root.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${VIRTIOFS_FOREIGN_CACHE:-$repo/node_modules/.cache/virtiofs-foreign}/s390x

suite=trixie
# Debian's mirror (and the one this machine is given) at times lacks the newest trixie libc6 for an
# architecture: its Packages index names a version whose .deb the pool no longer (or not yet) has
# (here: libc6 2.41-12+deb13u5 for s390x, a 404). A package that fails to download from $suite is
# then taken from $fallback (pinned below $suite, so nothing else comes from it): a newer glibc
# serves trixie's binaries (virtiofsd needs GLIBC_2.39).
fallback=forky
arch=s390x
triplet=s390x-linux-gnu
loader_name=ld64.so.1
qemu=qemu-s390x-static

update=0
for a in "$@"; do
  case "$a" in
    --update) update=1 ;;
    *) echo "usage: $0 [--update]" >&2; exit 2 ;;
  esac
done

say() { printf 'foreign-build-s390x: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9

inputs=$(sha256sum <"$here/build-s390x.sh" | cut -c1-16)
manifest=$dir/launch.json

# Fast path: launch.json written by this very script, and everything it names still there.
if (( ! update )) && [[ -f $manifest ]] && grep -q "\"inputs\": \"$inputs\"" "$manifest"; then
  ok=1
  for f in $(grep -o '"/[^"]*"' "$manifest" | tr -d '"' | tr ':' ' '); do
    [[ -e $f ]] || ok=0
  done
  if (( ok )); then
    echo "$manifest"
    exit 0
  fi
fi

rm -f "$manifest"
started=$SECONDS
step_start=$SECONDS
step() { say "$1 ($((SECONDS - step_start)) s)"; step_start=$SECONDS; }

missing=()
for c in apt-get apt-cache dpkg dpkg-deb readelf sha256sum flock timeout "$qemu"; do
  command -v "$c" >/dev/null || missing+=("$c")
done
(( ${#missing[@]} == 0 )) || die "missing ${missing[*]} (apt-get install qemu-user-static binutils)"

# --- the private apt configuration (scripts/lib/private-apt.sh), with the $fallback suite pinned low ---
. "$(dirname "${BASH_SOURCE[0]}")/../lib/private-apt.sh"
private_apt "$dir/apt" "$arch" "$suite $fallback"
A=$dir/apt
pin=$A/preferences.d/$fallback.pref
printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n' "$fallback" >"$pin.tmp"
if cmp -s "$pin.tmp" "$pin"; then rm -f "$pin.tmp"; else mv "$pin.tmp" "$pin"; fi

apt_updated=0
apt_update() {
  (( apt_updated )) && return 1
  say "apt-get update of the private $suite/$arch lists ($1)"
  papt_get update -qq >&2 || die "apt-get update of $mirror $suite ($arch) failed"
  apt_updated=1
}
if (( update )) || ! papt_cache show "virtiofsd:$arch" >/dev/null 2>&1; then
  apt_update "$( (( update )) && echo '--update' || echo 'no virtiofsd in them yet')"
  papt_cache show "virtiofsd:$arch" >/dev/null 2>&1 || die "$mirror $suite has no virtiofsd:$arch"
  step "private apt lists for $suite/$arch ready"
fi

# --- download and extract ----------------------------------------------------------------------------
debs=$dir/debs
new=$dir/root.new
root=$dir/root
mkdir -p "$debs"
rm -rf "$new" && mkdir -p "$new"

packages=()
fallbacks=()
chosen=" "
fetch_extract() {
  local pkg ver deb get=() file
  declare -A want=()
  while read -r pkg ver; do want[$pkg]=$ver; done < <(papt_cache policy "${@/%/:$arch}" 2>/dev/null |
    awk '/^[^ ].*:$/ { p = $1; sub(/:.*/, "", p) } $1 == "Candidate:" { print p, $2 }')
  local alt
  for pkg in "$@"; do
    ver=${want[$pkg]:-}
    [[ -n $ver && $ver != "(none)" ]] || die "$suite has no $pkg:$arch"
    compgen -G "$debs/${pkg}_${ver//:/%3a}_$arch.deb" >/dev/null ||
      compgen -G "$debs/${pkg}_${ver//:/%3a}_all.deb" >/dev/null && continue
    # A rebuild from the cache: the $fallback version an earlier run had to take is still here.
    alt=$(papt_cache madison "$pkg:$arch" | awk -F'|' -v s=" $fallback/" 'index($3, s) { gsub(/ /, "", $2); print $2; exit }')
    if [[ -n $alt ]] && compgen -G "$debs/${pkg}_${alt//:/%3a}_$arch.deb" >/dev/null; then
      say "$pkg:$arch: using the $fallback version $alt already downloaded (an earlier run found no ${want[$pkg]} on $mirror)"
      want[$pkg]=$alt
      fallbacks+=("$pkg=$alt")
      continue
    fi
    get+=("$pkg:$arch=$ver")
  done
  if (( ${#get[@]} )); then
    # apt-get download keeps what it could fetch when another package fails: retry only the rest.
    (cd "$debs" && papt_get download -qq "${get[@]}" >&2) ||
      { apt_update "the download of ${get[*]} failed" && (cd "$debs" && papt_get download -qq "${get[@]}" >&2); } || {
      local still=()
      for pkg in "$@"; do
        compgen -G "$debs/${pkg}_${want[$pkg]//:/%3a}_$arch.deb" >/dev/null ||
          compgen -G "$debs/${pkg}_${want[$pkg]//:/%3a}_all.deb" >/dev/null || still+=("$pkg")
      done
      (( ${#still[@]} )) || die "apt-get download ${get[*]} failed"
      get=()
      for pkg in "${still[@]}"; do
        alt=$(papt_cache madison "$pkg:$arch" | awk -F'|' -v s=" $fallback/" 'index($3, s) { gsub(/ /, "", $2); print $2; exit }')
        [[ -n $alt ]] || die "apt-get download $pkg:$arch=${want[$pkg]} ($suite) failed, and $fallback has no $pkg:$arch"
        say "$pkg:$arch ${want[$pkg]} of $suite is not on $mirror: taking $alt from $fallback"
        want[$pkg]=$alt
        fallbacks+=("$pkg=$alt")
        get+=("$pkg:$arch=$alt")
      done
      (cd "$debs" && papt_get download -qq "${get[@]}" >&2) || die "apt-get download ${get[*]} failed"
    }
  fi
  for pkg in "$@"; do
    file=$(compgen -G "$debs/${pkg}_${want[$pkg]//:/%3a}_$arch.deb" || compgen -G "$debs/${pkg}_${want[$pkg]//:/%3a}_all.deb" || true)
    deb=$(head -n 1 <<<"$file")
    [[ -n $deb ]] || die "apt-get download $pkg left no ${pkg}_${want[$pkg]}_$arch.deb in $debs"
    dpkg-deb -x "$deb" "$new"
    packages+=("$(basename "$deb" .deb)")
    chosen+="$pkg "
  done
}

# virtiofsd and its library Depends (trixie: libc6, libcap-ng0, libseccomp2), plus libgcc-s1, which
# glibc dlopens at run time. uidmap, a program, is left out.
direct=$(papt_cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances "virtiofsd:$arch" |
  awk '$1 == "Depends:" || $1 == "PreDepends:" { sub(/:.*/, "", $2); sub(/^</, "", $2); sub(/>$/, "", $2); print $2 }' | sort -u)
base=(virtiofsd)
for p in $direct libgcc-s1; do
  [[ $p == lib* ]] || continue
  [[ " ${base[*]} " == *" $p "* ]] || base+=("$p")
done
fetch_extract "${base[@]}"
step "downloaded and extracted ${base[*]}"

libdirs=()
for d in "lib/$triplet" "usr/lib/$triplet"; do [[ -d $new/$d ]] && libdirs+=("$d"); done
bin=
for b in usr/libexec/virtiofsd usr/lib/qemu/virtiofsd usr/bin/virtiofsd; do
  [[ -f $new/$b && ! -L $new/$b ]] && { bin=$b; break; }
done
[[ -n $bin ]] || die "virtiofsd's package has no virtiofsd binary where expected"
ld=
for d in "${libdirs[@]}"; do [[ -e $new/$d/$loader_name && ! -L $new/$d/$loader_name ]] && { ld=$d/$loader_name; break; }; done
[[ -n $ld ]] || die "libc6 left no real $loader_name in ${libdirs[*]}"
# Big-endian s390x, as the experiment needs: ELF class 64, data 2's complement big endian, IBM S/390.
header=$(readelf -hW "$new/$bin")
grep -q 'big endian' <<<"$header" && grep -q 'S/390' <<<"$header" || die "$bin is not a big-endian S/390 ELF: $header"

. "$(dirname "${BASH_SOURCE[0]}")/../lib/elf-closure.sh"
unresolved() { unresolved_sonames readelf "$new/$bin" "${libdirs[@]/#/$new/}"; }
# A library outside virtiofsd's Depends: the package that ships the same soname on this machine
# (Multi-Arch: same packages have the same names on every architecture).
host_multiarch=$(uname -m)-linux-gnu
package_of_soname() {
  dpkg -S "*/$host_multiarch/$1" 2>/dev/null |
    awk -v so="/$host_multiarch/$1" '{ p = $NF; if (substr(p, length(p) - length(so) + 1) == so) { sub(/:.*/, "", $1); print $1; exit } }'
}
for round in 1 2 3 4 5 6 7 8; do
  sonames=$(unresolved)
  [[ -z $sonames ]] && break
  more=()
  for so in $sonames; do
    [[ $so == "$loader_name" ]] && continue # the loader itself (NEEDED by libc.so.6), found via ld above
    p=$(package_of_soname "$so")
    [[ -n $p ]] || die "no package known for $so (dpkg -S finds no /$host_multiarch/$so on this machine)"
    [[ $chosen == *" $p "* ]] && die "$p was extracted but has no $so in ${libdirs[*]}"
    [[ " ${more[*]} " == *" $p "* ]] || more+=("$p")
  done
  (( ${#more[@]} )) || break
  fetch_extract "${more[@]}"
  step "added ${more[*]} for $sonames"
done
sonames=$(unresolved | grep -vx "$loader_name" || true)
[[ -z $sonames ]] || die "libraries still missing from the sysroot: $sonames"

# --- swap in, write the launcher, check it runs from its final place -----------------------------------
rm -rf "$root"
mv "$new" "$root"
libpath=$(printf "$root/%s:" "${libdirs[@]}"); libpath=${libpath%:}
qemu_bin=$(command -v "$qemu")
run=$dir/run.sh
{
  echo '#!/bin/sh'
  echo "# Written by scripts/foreign/build-s390x.sh: runs the s390x virtiofsd given as \$1 under $qemu"
  echo '# through the sysroot'"'"'s own loader, with --seccomp=none (qemu-user has no seccomp(2)).'
  echo 'bin=$1; shift'
  printf 'exec %q %q --library-path %q "$bin" --seccomp=none "$@"\n' "$qemu_bin" "$root/$ld" "$libpath"
} >"$run.tmp"
chmod 755 "$run.tmp"
mv "$run.tmp" "$run"

list=$(timeout 60 "$qemu_bin" "$root/$ld" --library-path "$libpath" --list "$root/$bin" 2>&1) || die "$ld --list $bin failed: $list"
outside=$(awk '/=>/ { print $3 }' <<<"$list" | grep -v "^$root/" || true)
[[ -z $outside ]] || die "libraries resolved outside the sysroot: $outside"
! grep -q 'not found' <<<"$list" || die "unresolved libraries: $(grep 'not found' <<<"$list")"
version=$(timeout 60 "$run" "$root/$bin" --version 2>&1) || die "virtiofsd --version under $qemu failed: $version"
[[ $version == *virtiofsd* ]] || die "unexpected virtiofsd --version output: $version"
for f in "$debs"/*.deb; do
  if [[ -e $f && " ${packages[*]} " != *" $(basename "$f" .deb) "* ]]; then rm -f "$f"; fi
done
rm -f "$A"/cache/*.bin

json_list() { local s; s=$(printf '"%s", ' "$@"); echo "${s%, }"; }
{
  printf '{\n'
  printf '  "arch": "%s",\n' "$arch"
  printf '  "inputs": "%s",\n' "$inputs"
  printf '  "suite": "%s",\n' "$suite"
  printf '  "mirror": "%s",\n' "$mirror"
  printf '  "fromFallback": [%s],\n' "$( (( ${#fallbacks[@]} )) && json_list "${fallbacks[@]/#/$fallback:}")"
  printf '  "version": "%s",\n' "$(head -n1 <<<"$version")"
  printf '  "flavor": "rust",\n'
  printf '  "loader": "%s",\n' "$root/$ld"
  printf '  "libraryPath": "%s",\n' "$libpath"
  printf '  "launcher": [%s],\n' "$(json_list "$run")"
  printf '  "binary": "%s",\n' "$root/$bin"
  printf '  "packages": [%s]\n' "$(json_list "${packages[@]}")"
  printf '}\n'
} >"$manifest.tmp"
mv "$manifest.tmp" "$manifest"
say "$(head -n1 <<<"$version") ($arch, big-endian) from ${#packages[@]} packages: ${packages[*]} ($((SECONDS - started)) s)"
echo "$manifest"

#!/usr/bin/env bash
# Makes Debian trixie's Rust virtiofsd (package `virtiofsd`, amd64) runnable on this bookworm machine,
# as a second real vhost-user backend beside bookworm's C one (/usr/lib/qemu/virtiofsd), from Debian
# packages only, into a cache directory (default node_modules/.cache/virtiofs-rust;
# $VIRTIOFS_RUST_CACHE overrides):
#   <cache>/apt/          a private apt configuration: its own sources file (suite trixie, amd64 only,
#                         on the Debian mirror this machine's own apt sources name), its own lists,
#                         cache, state and an empty dpkg status. The machine's apt sources, lists and
#                         dpkg database are never touched (and its apt lock is never taken).
#   <cache>/root/         a sysroot: virtiofsd's package and the packages of every library it needs
#                         (its Depends, plus whatever its ELF NEEDED closure asks for), apt-get
#                         download'ed from trixie and dpkg -x'ed
#   <cache>/launch.json   how to start it: the sysroot's own loader with --library-path, and the binary
# The binary runs through trixie's loader and glibc, not the machine's (bookworm's glibc is older than
# the one it was linked against).
#
# usage: bash scripts/rust-virtiofsd/build.sh [--update]
#   --update   apt-get update the private lists again and rebuild with trixie's current packages
# Prints, on stdout, the command line that starts virtiofsd (append --socket-path=... --shared-dir=...).
# Idempotent: a second run only checks launch.json against this script (milliseconds). Needs readelf
# (binutils) and, for the first run, the network to the Debian mirror; not root (nothing is installed:
# apt-get download and dpkg-deb -x work on the cache alone). Running virtiofsd itself needs root.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VIRTIOFS_RUST_CACHE:-$repo/node_modules/.cache/virtiofs-rust}

suite=trixie
arch=amd64
triplet=x86_64-linux-gnu
loader_name=ld-linux-x86-64.so.2

update=0
for a in "$@"; do
  case "$a" in
    --update) update=1 ;;
    *) echo "usage: $0 [--update]" >&2; exit 2 ;;
  esac
done

say() { printf 'rust-virtiofsd-build: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one build at a time (ava runs test files in parallel processes)

inputs=$(sha256sum <"$here/build.sh" | cut -c1-16)
manifest=$cache/launch.json

# The command line from launch.json's "command" array, one shell-quoted word per element, one line.
command_of() {
  local words=() w
  while IFS= read -r w; do words+=("$w"); done < <(sed -n 's/^  "command": \[\(.*\)\],\{0,1\}$/\1/p' "$1" | grep -o '"[^"]*"' | tr -d '"')
  printf '%q ' "${words[@]}" | sed 's/ $//'
  echo
}

# Fast path: launch.json written by this very script, and everything it names still there.
if (( ! update )) && [[ -f $manifest ]] && grep -q "\"inputs\": \"$inputs\"" "$manifest"; then
  ok=1
  for f in $(grep -o '"/[^"]*"' "$manifest" | tr -d '"' | tr ':' ' '); do
    [[ -e $f ]] || ok=0
  done
  if (( ok )); then
    command_of "$manifest"
    exit 0
  fi
fi

rm -f "$manifest" # until this build has checked what it made
started=$SECONDS
step_start=$SECONDS
step() { say "$1 ($((SECONDS - step_start)) s)"; step_start=$SECONDS; }

# --- tools -------------------------------------------------------------------------------------------
missing=()
for c in apt-get apt-cache dpkg dpkg-deb readelf sha256sum flock timeout; do
  command -v "$c" >/dev/null || missing+=("$c")
done
(( ${#missing[@]} == 0 )) || die "missing ${missing[*]} (readelf: apt-get install binutils)"
[[ $(dpkg --print-architecture) == "$arch" ]] || die "this builds the $arch virtiofsd and runs it natively: this machine is $(dpkg --print-architecture)"

# --- the private apt configuration (scripts/lib/private-apt.sh) ----------------------------------------
. "$(dirname "${BASH_SOURCE[0]}")/../lib/private-apt.sh"
private_apt "$cache/apt" "$arch" "$suite"
A=$cache/apt
say "Debian mirror: $mirror (from the machine's $codename entry)${keyring:+, keyring $keyring}"

apt_updated=0
apt_update() { # once per run
  (( apt_updated )) && return 1
  say "apt-get update of the private $suite lists ($1)"
  papt_get update -qq >&2 || die "apt-get update of $mirror $suite failed"
  apt_updated=1
}
if (( update )) || ! papt_cache show "virtiofsd:$arch" >/dev/null 2>&1; then
  apt_update "$( (( update )) && echo '--update' || echo 'no virtiofsd in them yet')"
  papt_cache show "virtiofsd:$arch" >/dev/null 2>&1 || die "$mirror $suite has no virtiofsd:$arch"
  step "private apt lists for $suite ready"
fi

# --- download and extract ----------------------------------------------------------------------------
debs=$cache/debs
new=$cache/root.new
root=$cache/root
mkdir -p "$debs"
rm -rf "$new" && mkdir -p "$new"

packages=()
chosen=" "
# Downloads (in one apt call: apt is slow to start) what $debs lacks in the candidate version, and
# extracts the packages into the sysroot being built.
fetch_extract() {
  local pkg ver deb get=() file
  declare -A want=()
  # Candidate versions, all in one apt-cache call: "pkg version" lines.
  while read -r pkg ver; do want[$pkg]=$ver; done < <(papt_cache policy "${@/%/:$arch}" 2>/dev/null |
    awk '/^[^ ].*:$/ { p = $1; sub(/:.*/, "", p) } $1 == "Candidate:" { print p, $2 }')
  for pkg in "$@"; do
    ver=${want[$pkg]:-}
    [[ -n $ver && $ver != "(none)" ]] || die "$suite has no $pkg:$arch"
    compgen -G "$debs/${pkg}_${ver//:/%3a}_$arch.deb" >/dev/null ||
      compgen -G "$debs/${pkg}_${ver//:/%3a}_all.deb" >/dev/null || get+=("$pkg:$arch=$ver")
  done
  if (( ${#get[@]} )); then
    (cd "$debs" && papt_get download -qq "${get[@]}" >&2) ||
      { apt_update "the download of ${get[*]} failed" && (cd "$debs" && papt_get download -qq "${get[@]}" >&2); } ||
      die "apt-get download ${get[*]} failed"
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

# virtiofsd and the library packages among its Depends/Pre-Depends (Debian names them lib*; trixie:
# libc6, libcap-ng0, libgcc-s1, libseccomp2), and libgcc-s1 in any case: glibc dlopens it at run time
# (thread cancellation, unwinding). Its other Depends are programs: uidmap (newuidmap/newgidmap,
# which only an unprivileged virtiofsd with --uid-map/--gid-map runs) is left out.
direct=$(papt_cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances "virtiofsd:$arch" |
  awk '$1 == "Depends:" || $1 == "PreDepends:" { sub(/:.*/, "", $2); sub(/^</, "", $2); sub(/>$/, "", $2); print $2 }' | sort -u)
base=(virtiofsd)
skipped=()
for p in $direct libgcc-s1; do
  if [[ $p != lib* ]]; then skipped+=("$p"); continue; fi
  [[ " ${base[*]} " == *" $p "* ]] || base+=("$p")
done
fetch_extract "${base[@]}"
step "downloaded and extracted ${base[*]}${skipped[*]:+ (Depends left out, not libraries: ${skipped[*]})}"

# Where things are: trixie ships merged-/usr packages (usr/lib/<triplet>), older ones lib/<triplet>.
libdirs=()
for d in "lib/$triplet" "usr/lib/$triplet"; do [[ -d $new/$d ]] && libdirs+=("$d"); done
bin=
for b in usr/libexec/virtiofsd usr/lib/qemu/virtiofsd usr/bin/virtiofsd; do
  [[ -f $new/$b && ! -L $new/$b ]] && { bin=$b; break; }
done
[[ -n $bin ]] || die "virtiofsd's package has no virtiofsd binary where expected: $(dpkg-deb -c "$(compgen -G "$debs/virtiofsd_*.deb" | head -n1)" | awk '$1 ~ /^-..x/ { print $NF }' | tr '\n' ' ')"
ld=
for d in "${libdirs[@]}"; do [[ -e $new/$d/$loader_name && ! -L $new/$d/$loader_name ]] && { ld=$d/$loader_name; break; }; done
[[ -n $ld ]] || die "libc6 left no real $loader_name in lib/$triplet or usr/lib/$triplet"

# The sonames in the NEEDED closure of the binary that the sysroot's library directories lack.
. "$(dirname "${BASH_SOURCE[0]}")/../lib/elf-closure.sh"
unresolved() { unresolved_sonames readelf "$new/$bin" "${libdirs[@]/#/$new/}"; }
# A library outside virtiofsd's Depends: the package that ships it on this machine (the same
# package names serve bookworm and trixie for these core libraries), fetched from trixie.
package_of_soname() {
  dpkg -S "*/$triplet/$1" 2>/dev/null |
    awk -v so="/$triplet/$1" '{ p = $NF; if (substr(p, length(p) - length(so) + 1) == so) { sub(/:.*/, "", $1); print $1; exit } }'
}
for round in 1 2 3 4 5 6 7 8; do
  sonames=$(unresolved)
  [[ -z $sonames ]] && break
  more=()
  for so in $sonames; do
    p=$(package_of_soname "$so")
    [[ -n $p ]] || die "no package known for $so (dpkg -S finds no /$triplet/$so on this machine)"
    [[ $chosen == *" $p "* ]] && die "$p was extracted but has no $so in ${libdirs[*]}"
    [[ " ${more[*]} " == *" $p "* ]] || more+=("$p")
  done
  fetch_extract "${more[@]}"
  step "added ${more[*]} for $sonames"
done
sonames=$(unresolved)
[[ -z $sonames ]] || die "libraries still missing from the sysroot: $sonames"

# Swap the finished sysroot in, then check from its final place that the sysroot's own loader
# resolves every library inside the sysroot (its ldd: --list) and that the binary runs.
rm -rf "$root"
mv "$new" "$root"
libpath=$(printf "$root/%s:" "${libdirs[@]}"); libpath=${libpath%:}
launcher=("$root/$ld" --library-path "$libpath")
list=$(timeout 30 "${launcher[@]}" --list "$root/$bin" 2>&1) || die "$ld --list $bin failed: $list"
outside=$(awk '/=>/ { print $3 }' <<<"$list" | grep -v "^$root/" || true)
[[ -z $outside ]] || die "libraries resolved outside the sysroot: $outside"
! grep -q 'not found' <<<"$list" || die "unresolved libraries: $(grep 'not found' <<<"$list")"
version=$(timeout 30 "${launcher[@]}" "$root/$bin" --version 2>&1) || die "virtiofsd --version failed: $version"
[[ $version == *virtiofsd* ]] || die "unexpected virtiofsd --version output: $version"
# .debs of versions this build did not use (an --update moved on) are of no further use.
for f in "$debs"/*.deb; do
  if [[ -e $f && " ${packages[*]} " != *" $(basename "$f" .deb) "* ]]; then rm -f "$f"; fi
done
# apt's binary caches (~80 MB) only pay off within a run; the lists (~20 MB) and the .debs (~4 MB) stay,
# so that a rebuild (this script changed, the sysroot was removed) needs no network.
rm -f "$A"/cache/*.bin

json_list() { local s; s=$(printf '"%s", ' "$@"); echo "${s%, }"; }
{
  printf '{\n'
  printf '  "inputs": "%s",\n' "$inputs"
  printf '  "suite": "%s",\n' "$suite"
  printf '  "mirror": "%s",\n' "$mirror"
  printf '  "version": "%s",\n' "$(head -n1 <<<"$version")"
  printf '  "loader": "%s",\n' "$root/$ld"
  printf '  "libraryPath": "%s",\n' "$libpath"
  printf '  "binary": "%s",\n' "$root/$bin"
  printf '  "launcher": [%s],\n' "$(json_list "${launcher[@]}")"
  printf '  "command": [%s],\n' "$(json_list "${launcher[@]}" "$root/$bin")"
  printf '  "packages": [%s]\n' "$(json_list "${packages[@]}")"
  printf '}\n'
} >"$manifest.tmp"
mv "$manifest.tmp" "$manifest"
say "$(head -n1 <<<"$version") from ${#packages[@]} packages: ${packages[*]}"
say "done in $((SECONDS - started)) s; $manifest describes it; start it with the line below plus --socket-path=... --shared-dir=..."
command_of "$manifest"

# Sourced by the scripts that fetch Debian packages of another release or architecture without
# touching the machine's apt state (scripts/rust-virtiofsd/build.sh, scripts/foreign/build-s390x.sh).
# The caller defines say and die.

# machine_mirror: the URI of the machine's apt entry for its own release ($codename, e.g.
# bookworm; not -updates or -security), from sources.list and sources.list.d/*.list (one-line
# format) or sources.list.d/*.sources (deb822), with its Signed-By keyring when it names a file;
# one "URI<TAB>keyring" line per entry found, the first one first.
machine_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    if [[ $f == *.sources ]]; then
      # deb822: paragraphs of "Key: value" (keys case-insensitive), blank lines between them.
      awk -v want="$codename" '
        function flush() {
          if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no" && (" " suites " ") ~ (" " want " ") && uris != "") {
            split(uris, u, " "); print u[1] "\t" signed; found = 1; exit
          }
          types = uris = suites = signed = enabled = ""
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^[A-Za-z-]+:/ {
          key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
          if (key == "types") types = val; else if (key == "uris") uris = val
          else if (key == "suites") suites = val; else if (key == "enabled") enabled = val
          else if (key == "signed-by" && val ~ /^\//) signed = val
        }
        END { if (!found) flush() }' "$f"
    else
      # one-line: deb [opt=value ...] URI suite component...
      awk -v want="$codename" '
        $1 == "deb" {
          signed = ""; i = 2
          if ($2 ~ /^\[/) {
            for (; i <= NF; i++) {
              o = $i; gsub(/[][]/, "", o)
              if (o ~ /^signed-by=\//) { signed = o; sub(/^signed-by=/, "", signed) }
              if ($i ~ /\]$/) { i++; break }
            }
          }
          if ($(i + 1) == want) { print $i "\t" signed; exit }
        }' "$f"
    fi
  done
}

# private_apt DIR ARCH "SUITE..." : a private apt configuration in DIR that sees only ARCH packages of
# the given suites on the machine's Debian mirror ($VIRTIOFS_RUST_MIRROR overrides its URI), with
# its own lists, cache and an empty dpkg database. Sets mirror, keyring and apt_private; papt_get
# and papt_cache run apt-get and apt-cache with it.
private_apt() {
  local A=$1 arch=$2 suites=$3 entry sources
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ -n $codename ]] || die "/etc/os-release names no VERSION_CODENAME"
  entry=$(machine_mirror | sed -n 1p) # the first entry (sed reads all: no SIGPIPE under pipefail)
  mirror=${VIRTIOFS_RUST_MIRROR:-${entry%%$'\t'*}}
  mirror=${mirror%/}
  keyring=
  [[ $entry == *$'\t'* ]] && keyring=${entry#*$'\t'}
  [[ -n $mirror ]] || die "no apt source for suite $codename in /etc/apt/sources.list{,.d/*.list,.d/*.sources}: set VIRTIOFS_RUST_MIRROR to a Debian mirror URI"

  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/state" "$A/sources.list.d" "$A/preferences.d"
  sources=$A/sources.list.d/${suites%% *}.sources
  {
    echo "Types: deb"
    echo "URIs: $mirror"
    echo "Suites: $suites"
    echo "Components: main"
    echo "Architectures: $arch"
    if [[ -n $keyring ]]; then echo "Signed-By: $keyring"; fi
  } >"$sources.tmp"
  if ! cmp -s "$sources.tmp" "$sources"; then
    mv "$sources.tmp" "$sources"
    rm -rf "$A/lists" && mkdir -p "$A/lists/partial" # lists of another mirror are no use
  else
    rm -f "$sources.tmp"
  fi
  : >>"$A/status" # an empty dpkg database: the packages resolve against nothing installed here
  # Command-line -o options win over everything in /etc/apt/apt.conf{,.d} (whose proxy or
  # Check-Valid-Until settings still apply).
  apt_private=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$A/sources.list.d"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=$A/preferences.d"
    -o "Dir::State=$A/state"
    -o "Dir::State::Lists=$A/lists"
    -o "Dir::State::status=$A/status"
    -o "Dir::Cache=$A/cache"
    -o "Dir::Cache::Archives=$A/cache/archives"
    -o "Dir::Cache::pkgcache=pkgcache.bin" # a binary cache of the lists (docker images often turn it off):
    -o "Dir::Cache::srcpkgcache=srcpkgcache.bin" # without it every apt call re-parses the lists (~1 s)
    -o "APT::Architecture=$arch"
    -o "APT::Architectures=$arch"
    -o "Acquire::Languages=none"
    -o "DPkg::Lock::Timeout=600"
  )
  [[ $(id -u) -eq 0 ]] && apt_private+=(-o APT::Sandbox::User=root) # else apt warns that _apt cannot write here
  return 0
}
papt_get() { apt-get "${apt_private[@]}" "$@"; }
papt_cache() { apt-cache "${apt_private[@]}" "$@"; }

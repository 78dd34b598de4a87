# Sourced by the scripts that fetch Debian packages with a private apt configuration
# (scripts/rust-virtiofsd/build.sh, scripts/foreign/build-s390x.sh).
#
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

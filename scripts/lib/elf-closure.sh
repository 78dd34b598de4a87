# Sourced by the sysroot builds (scripts/foreign/build.sh, scripts/rust-virtiofsd/build.sh,
# scripts/foreign/build-s390x.sh).
#
# needed_of READELF FILE: the sonames FILE's dynamic section names (NEEDED).
# unresolved_sonames READELF FILE DIR...: the sonames in the NEEDED closure of FILE that none of
# the DIRs (absolute paths) holds, one per line; what is found is followed in turn.
needed_of() { "$1" -dW "$2" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'; }
unresolved_sonames() {
  local readelf=$1 start=$2
  shift 2
  local -A seen=()
  local queue=("$start") file so found d
  while (( ${#queue[@]} )); do
    file=${queue[0]}; queue=("${queue[@]:1}")
    for so in $(needed_of "$readelf" "$file"); do
      [[ -n ${seen[$so]:-} ]] && continue
      seen[$so]=1
      found=
      for d in "$@"; do
        if [[ -e $d/$so ]]; then found=$d/$so; break; fi
      done
      if [[ -n $found ]]; then queue+=("$found"); else echo "$so"; fi
    done
  done
}

# Shell functions for scripts that run inside the test guest (test/helpers/vm.ts sources this file
# before the script, which /bin/bash runs). No udev runs in the guest, so nothing loads modules or
# creates links by itself: these do it by hand. The harness sets:
#   VM_MODROOT            root of the guest kernel's extracted package (holds lib/modules/$VM_KREL)
#   VM_KREL               the guest kernel's release (uname -r)
#   VM_VFIO_NOIOMMU_KO    vfio.ko rebuilt with CONFIG_VFIO_NOIOMMU (Debian's has it off)
#   VM_IOMMU              none | intel
#   VM_VIRTIOFS_TAG       the virtio-fs device's tag
#   VM_HOSTVIEW_BDF       the second virtio-fs function (hostview), when the harness adds one
#   VM_EXTRA_VIRTIOFS_BDFS the reference-device functions after the first (referenceDevice.functions)
#   VM_TOKEN              this run's token, for the console markers
#   VM_NODE_TS, VM_CLI    how to start node on a TypeScript file, and the virtiofs-client command
# Every function keeps its variables local, prints what went wrong to stderr and returns non-zero
# on failure.

VM_VIRTIOFS_VENDOR=0x1af4
VM_VIRTIOFS_DEVICE=0x105a

# vm_step NAME [BUDGET]: ends the current step and starts NAME, whose deadline is BUDGET times the
# run's calibration (the guest's first node start; the harness's default budget without BUDGET).
# The marker goes straight to the console, so it also works inside a pipe or $(...).
vm_step() {
  echo "@@VIRTIOFS-VM-STEP $VM_TOKEN ${2:--} $1" >/dev/console
}

# vm_node_ts FILE.ts [ARGS...]: runs a TypeScript entry point with node ($VM_NODE_TS, word-split).
vm_node_ts() {
  $VM_NODE_TS "$@"
}

# vm_cli ARGS...: the virtiofs-client command ($VM_CLI, word-split).
vm_cli() {
  $VM_CLI "$@"
}

# vm_modprobe MODULE [PARAM=VALUE...]: loads a module and its dependencies from the extracted tree;
# does nothing (and spends no 1-2 s on modprobe under TCG) when MODULE is loaded already.
vm_modprobe() {
  [ -d "/sys/module/${1//-/_}" ] && return 0
  modprobe -d "$VM_MODROOT" -S "$VM_KREL" "$@"
}

# vm_pci_find VENDOR DEVICE: prints the BDF of every PCI function with these ids (hex, 0x-prefixed).
# Shell builtins only: each program run from the 9p root costs ~0.1 s under TCG.
vm_pci_find() {
  local d v i
  for d in /sys/bus/pci/devices/*; do
    read -r v <"$d/vendor" && read -r i <"$d/device" || continue
    [ "$v" = "$1" ] && [ "$i" = "$2" ] && echo "${d##*/}"
  done
  return 0
}

# vm_virtiofs_bdf: prints the BDF of the (first) virtio-fs function, 1af4:105a: not hostview, nor
# the harness's extra reference-device functions.
vm_virtiofs_bdf() {
  local bdf other
  bdf=$(vm_pci_find "$VM_VIRTIOFS_VENDOR" "$VM_VIRTIOFS_DEVICE" | grep -vx "${VM_HOSTVIEW_BDF:-none}" | while read -r other; do
    [[ " $VM_EXTRA_VIRTIOFS_BDFS " == *" $other "* ]] || echo "$other"
  done | head -n 1)
  if [ -z "$bdf" ]; then
    echo "vm_virtiofs_bdf: no PCI function 1af4:105a" >&2
    return 1
  fi
  echo "$bdf"
}

# vm_reference_bdf N: prints the BDF of reference-device function N (0: vm_virtiofs_bdf's; N > 0: the
# Nth of VM_EXTRA_VIRTIOFS_BDFS, tag $VM_VIRTIOFS_TAG$N).
vm_reference_bdf() {
  local extra
  if [ "$1" = 0 ]; then
    vm_virtiofs_bdf
    return
  fi
  read -r -a extra <<<"${VM_EXTRA_VIRTIOFS_BDFS:-}"
  if [ -z "${extra[$1 - 1]:-}" ] || [ ! -e "/sys/bus/pci/devices/${extra[$1 - 1]}" ]; then
    echo "vm_reference_bdf: no reference-device function $1 (VM_EXTRA_VIRTIOFS_BDFS='${VM_EXTRA_VIRTIOFS_BDFS:-}')" >&2
    return 1
  fi
  echo "${extra[$1 - 1]}"
}

# vm_pci_driver BDF: prints the name of the driver bound to BDF (nothing when unbound).
vm_pci_driver() {
  local p
  p=$(cd -P "/sys/bus/pci/devices/$1/driver" 2>/dev/null && pwd -P) && echo "${p##*/}"
  return 0
}

# vm_pci_unbind BDF: detaches BDF from its driver, if any.
vm_pci_unbind() {
  if [ -e "/sys/bus/pci/devices/$1/driver" ]; then
    echo "$1" >"/sys/bus/pci/devices/$1/driver/unbind" || return 1
  fi
}

# vm_pci_bind BDF DRIVER: rebinds BDF to DRIVER (already loaded) through driver_override.
vm_pci_bind() {
  local now
  vm_pci_unbind "$1" || return 1
  echo "$2" >"/sys/bus/pci/devices/$1/driver_override" || return 1
  echo "$1" >/sys/bus/pci/drivers_probe || return 1
  now=$(vm_pci_driver "$1")
  if [ "$now" != "$2" ]; then
    echo "vm_pci_bind: $1 is bound to '${now:-nothing}', not $2" >&2
    return 1
  fi
}

# vm_bind_uio BDF: binds BDF to uio_pci_generic and prints its /dev/uioN.
vm_bind_uio() {
  local u
  vm_modprobe uio_pci_generic || return 1
  vm_pci_bind "$1" uio_pci_generic || return 1
  for u in "/sys/bus/pci/devices/$1/uio/"uio*; do
    [ -e "$u" ] || break
    echo "/dev/${u##*/}"
    return 0
  done
  echo "vm_bind_uio: $1 has no uio node" >&2
  return 1
}

# vm_load_vfio_noiommu: loads the rebuilt vfio.ko in no-IOMMU mode, then Debian's vfio-pci on top.
vm_load_vfio_noiommu() {
  if [ ! -d /sys/module/vfio ]; then
    insmod "$VM_VFIO_NOIOMMU_KO" enable_unsafe_noiommu_mode=1 || return 1
  fi
  local on=
  read -r on </sys/module/vfio/parameters/enable_unsafe_noiommu_mode
  if [ "$on" != Y ]; then
    echo "vm_load_vfio_noiommu: vfio is loaded without no-IOMMU mode" >&2
    return 1
  fi
  vm_modprobe vfio-pci
}

# vm_bind_vfio BDF: binds BDF to vfio-pci (no-IOMMU vfio.ko when VM_IOMMU=none) and prints the group's
# device node: /dev/vfio/noiommu-N without an IOMMU, /dev/vfio/N with one.
vm_bind_vfio() {
  local group node
  if [ "$VM_IOMMU" = none ]; then
    vm_load_vfio_noiommu || return 1
  else
    vm_modprobe vfio-pci || return 1
  fi
  vm_pci_bind "$1" vfio-pci || return 1
  group=$(cd -P "/sys/bus/pci/devices/$1/iommu_group" && pwd -P) || return 1
  group=${group##*/}
  for node in "/dev/vfio/noiommu-$group" "/dev/vfio/$group"; do
    if [ -e "$node" ]; then
      echo "$node"
      return 0
    fi
  done
  echo "vm_bind_vfio: no /dev/vfio node for group '$group'" >&2
  return 1
}

# vm_mount_virtiofs DIR: mounts the device with the guest kernel's own virtio-fs driver (it must be
# bound to virtio_pci, as it is at boot), e.g. to compare against the userspace driver.
vm_mount_virtiofs() {
  vm_modprobe virtiofs || return 1
  mkdir -p "$1" && mount -t virtiofs "$VM_VIRTIOFS_TAG" "$1"
}

# vm_mount_hostview DIR: mounts the second virtio-fs function (tag hostview, the harness's hostView
# option) with the guest kernel's driver: the host's files, seen beside the mount under test.
vm_mount_hostview() {
  vm_modprobe virtiofs || return 1
  mkdir -p "$1" && mount -t virtiofs hostview "$1"
}

# vm_relay_pid MOUNTPOINT: prints the pid of the `mount --foreground` relay process serving MOUNTPOINT
# (the CLI's background mount); fails when there is none. Shell builtins only (a scan of /proc).
vm_relay_pid() {
  local p args
  for p in /proc/[0-9]*; do
    mapfile -d '' args <"$p/cmdline" 2>/dev/null || continue
    case " ${args[*]} " in
      *" mount "*" --foreground "*)
        if [[ " ${args[*]} " == *" $1 "* ]]; then
          echo "${p#/proc/}"
          return 0
        fi
        ;;
    esac
  done
  return 1
}

# vm_wait_relay_exit MOUNTPOINT [SECONDS]: waits (default 60 s) until the relay serving MOUNTPOINT has
# exited (it does by itself once unmounted). On a timeout it prints the process, its kernel stack and
# the relay logs to stderr and fails.
vm_wait_relay_exit() {
  local limit=$((${2:-60} * 5)) tries=0 pid
  while pid=$(vm_relay_pid "$1"); do
    if (( ++tries > limit )); then
      echo "vm_wait_relay_exit: relay pid $pid for $1 still running after ${2:-60} s: $(tr '\0' ' ' <"/proc/$pid/cmdline")" >&2
      sed 's/^/  kernel stack: /' "/proc/$pid/stack" >&2 2>/dev/null
      tail -n 20 /run/virtiofs-client/*.log 2>/dev/null | sed 's/^/  relay log: /' >&2
      return 1
    fi
    sleep 0.2
  done
}

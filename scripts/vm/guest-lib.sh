# Shell functions for scripts that run inside the test guest (test/helpers/vm.ts sources this file
# before the script, which /bin/bash runs). No udev runs in the guest, so nothing loads modules or
# creates links by itself: these do it by hand. The harness sets:
#   VM_MODROOT            root of the guest kernel's extracted package (holds lib/modules/$VM_KREL)
#   VM_KREL               the guest kernel's release (uname -r)
#   VM_VFIO_NOIOMMU_KO    vfio.ko rebuilt with CONFIG_VFIO_NOIOMMU (Debian's has it off)
#   VM_IOMMU              none | intel
#   VM_VIRTIOFS_TAG       the virtio-fs device's tag
# Every function keeps its variables local, prints what went wrong to stderr and returns non-zero
# on failure.

VM_VIRTIOFS_VENDOR=0x1af4
VM_VIRTIOFS_DEVICE=0x105a

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

# vm_virtiofs_bdf: prints the BDF of the (first) virtio-fs function, 1af4:105a.
vm_virtiofs_bdf() {
  local bdf
  bdf=$(vm_pci_find "$VM_VIRTIOFS_VENDOR" "$VM_VIRTIOFS_DEVICE" | head -n 1)
  if [ -z "$bdf" ]; then
    echo "vm_virtiofs_bdf: no PCI function 1af4:105a" >&2
    return 1
  fi
  echo "$bdf"
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

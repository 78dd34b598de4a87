/**
 * Whether QEMU guests can use KVM here: /dev/kvm opens, KVM_GET_API_VERSION is 12, KVM_CREATE_VM gives a
 * VM, and the CPU has hardware virtualization (vmx or svm). The last check matters: a /dev/kvm without
 * it (e.g. kvm_pvm, a software hypervisor for PVM-enabled guest kernels) creates VMs, but Debian's kernel
 * stops in them with "KVM internal error ... emulation failure".
 * VIRTIOFS_VM_ACCEL=kvm|tcg overrides the probe.
 */
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { isErrnoError } from '../../ffi/errno.ts';
import { _IO, ioctl } from '../../ffi/ioctl.ts';

const KVMIO = 0xae;
const KVM_GET_API_VERSION = _IO(KVMIO, 0x00);
const KVM_CREATE_VM = _IO(KVMIO, 0x01);
const KVM_API_VERSION = 12;

export interface Accelerator {
  /** QEMU's -accel value. */
  accel: 'kvm' | 'tcg';
  /** QEMU's -cpu value: the host's CPU under KVM, everything TCG emulates otherwise. */
  cpu: 'host' | 'max';
  /** Why, e.g. 'TCG: KVM_CREATE_VM failed: ENXIO'. */
  why: string;
}

let probed: Accelerator | undefined;

/** Probes once per process. */
export function guestAccelerator(): Accelerator {
  probed ??= probe();
  return probed;
}

const kvm = (why: string): Accelerator => ({ accel: 'kvm', cpu: 'host', why: `KVM: ${why}` });
const tcg = (why: string): Accelerator => ({ accel: 'tcg', cpu: 'max', why: `TCG: ${why}` });

function probe(): Accelerator {
  const forced = process.env.VIRTIOFS_VM_ACCEL;
  if (forced === 'kvm') return kvm('forced by VIRTIOFS_VM_ACCEL=kvm');
  if (forced === 'tcg') return tcg('forced by VIRTIOFS_VM_ACCEL=tcg');
  let fd: number;
  try {
    fd = openSync('/dev/kvm', 'r+');
  } catch (e) {
    return tcg(`cannot open /dev/kvm: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    const version = ioctl(fd, KVM_GET_API_VERSION);
    if (version !== KVM_API_VERSION) return tcg(`KVM_GET_API_VERSION is ${version}, not ${KVM_API_VERSION}`);
    try {
      closeSync(ioctl(fd, KVM_CREATE_VM, 0));
    } catch (e) {
      return tcg(`KVM_CREATE_VM failed: ${isErrnoError(e) ? e.code : (e as Error).message}`);
    }
  } catch (e) {
    return tcg(`KVM_GET_API_VERSION failed: ${isErrnoError(e) ? e.code : (e as Error).message}`);
  } finally {
    closeSync(fd);
  }
  const flags = /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.split(/\s+/) ?? [];
  const hardware = flags.find((f) => f === 'vmx' || f === 'svm');
  if (!hardware) {
    const module = ['kvm_intel', 'kvm_amd', 'kvm_pvm'].find((m) => existsSync(`/sys/module/${m}`));
    return tcg(`KVM_CREATE_VM works, but the CPU has no vmx/svm${module ? ` (/dev/kvm is ${module})` : ''}: no hardware virtualization for an unmodified guest kernel`);
  }
  return kvm(`KVM_CREATE_VM works and the CPU has ${hardware}`);
}

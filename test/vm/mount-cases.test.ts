// The shared mount cases (test/helpers/mount-cases.ts; test/e2e/mount.test.ts runs the same ones on
// the host) inside QEMU guests, over one virtio-fs PCI function (vhost-user-fs-pci, QEMU 7.2's
// virtiofsd with xattr, posix_lock, flock and allow_direct_io): first the guest kernel's own
// virtio_fs driver, the reference (the cases must pass there too), then our client over UIO and
// over VFIO in no-IOMMU mode (one boot), and over VFIO type1 behind QEMU's intel-iommu (a second
// boot). $H, the host's view, is a second virtio-fs function on the same host directory mounted by
// the guest kernel (its virtiofsd has cache=none, so it sees every change at once).
import test, { type ExecutionContext } from 'ava';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MOUNT_CASES } from '../helpers/mount-cases.ts';
import { requireRoot } from '../helpers/virtiofsd.ts'; // fails loudly, never skips
import { GUEST_SH, describeTiming, sharedGuestRun, type GuestRun } from '../helpers/vm.ts';

/** One runner over every case: ~2.5 calibrations to start node through tsx, then the cases (~30 idle). */
const CASES_BUDGET = 400;
const MOUNT_BUDGET = 45;

/** Our mount over `transport` (a shell word), the cases, the unmount. */
const ours = (label: string, transport: string) => `
  ${GUEST_SH.step(`${label}-mount`, MOUNT_BUDGET)}
  mkdir -p /tmp/mnt-${label}
  ${GUEST_SH.cli('mount', '--allow-other', '--transport', `"${transport}"`, `/tmp/mnt-${label}`)} || echo "MOUNT_FAILED=${label}"
  ${GUEST_SH.step(`${label}-cases`, CASES_BUDGET)}
  ${GUEST_SH.nodeTs('test/vm/mount-cases-guest.ts', '--label', label, '--mnt', `/tmp/mnt-${label}`, '--host', '/tmp/hostview')}
  ${GUEST_SH.step(`${label}-unmount`, MOUNT_BUDGET)}
  ${GUEST_SH.cli('unmount', `/tmp/mnt-${label}`)} || echo "UNMOUNT_FAILED=${label}"
  vm_wait_relay_exit /tmp/mnt-${label} || echo "RELAY_STUCK=${label}"
`;

const SCRIPTS = {
  none: `
    ${GUEST_SH.modprobe('fuse')}
    ${GUEST_SH.findVirtiofsBdf}
    ${GUEST_SH.mountHostView('/tmp/hostview')}
    ${GUEST_SH.step('kernel-cases', CASES_BUDGET)}
    ${GUEST_SH.mountVirtiofs('/tmp/mnt-kernel')}
    ${GUEST_SH.nodeTs('test/vm/mount-cases-guest.ts', '--label', 'kernel', '--mnt', '/tmp/mnt-kernel', '--host', '/tmp/hostview')}
    umount /tmp/mnt-kernel
    ${GUEST_SH.bindUio}
    ${ours('uio', 'uio:${UIO#/dev/}')}
    ${GUEST_SH.bindVfio}
    ${ours('vfio', 'vfio:$BDF')}
  `,
  intel: `
    ${GUEST_SH.modprobe('fuse')}
    ${GUEST_SH.findVirtiofsBdf}
    ${GUEST_SH.mountHostView('/tmp/hostview')}
    ${GUEST_SH.bindVfio}
    ${ours('vfio-iommu', 'vfio:$BDF')}
  `,
} as const;

const LABELS = { none: ['kernel', 'uio', 'vfio'], intel: ['vfio-iommu'] } as const;

interface Outcome {
  run: GuestRun;
  /** 'label n' -> the case's line. */
  cases: Map<string, { ok: boolean; ms: number; detail: string }>;
}

function boot(iommu: 'none' | 'intel') {
  let joinRun: ((t: ExecutionContext) => Promise<GuestRun>) | undefined;
  let outcome: Promise<Outcome> | undefined;
  return (t: ExecutionContext): Promise<Outcome> => {
    if (joinRun && outcome) {
      void joinRun(t);
      return outcome;
    }
    const dir = mkdtempSync(join(tmpdir(), 'vm-cases-'));
    chmodSync(dir, 0o755); // the permission case runs as nobody
    joinRun = sharedGuestRun({
      sharedDir: dir,
      iommu,
      hostView: true,
      virtiofsdOptions: { cache: 'auto', xattr: true, posixLock: true, flock: true, allowDirectIo: true },
      script: SCRIPTS[iommu],
      timeoutMs: 1_500_000,
      label: `mount cases (${iommu})`,
    });
    outcome = joinRun(t).then(
      (run) => {
        rmSync(dir, { recursive: true, force: true });
        const cases = new Map<string, { ok: boolean; ms: number; detail: string }>();
        for (const line of run.output.split('\n')) {
          const m = /^CASE (\S+) (\d+) (ok|fail) (\d+)(?: (.*))?$/.exec(line.trimEnd());
          if (m) cases.set(`${m[1]} ${m[2]}`, { ok: m[3] === 'ok', ms: Number(m[4]), detail: m[5] ?? '' });
        }
        return { run, cases };
      },
      (error: unknown) => {
        rmSync(dir, { recursive: true, force: true });
        throw error;
      },
    );
    return outcome;
  };
}

for (const iommu of ['none', 'intel'] as const) {
  const guest = boot(iommu);
  for (const label of LABELS[iommu]) {
    for (const [n, c] of MOUNT_CASES.entries()) {
      test(`${label} (guest): ${c.title}`, async (t) => {
        if (!requireRoot(t)) return;
        const { run, cases } = await guest(t);
        const r = cases.get(`${label} ${n}`);
        if (!r) {
          t.log(describeTiming(run));
          t.log(run.output.trimEnd());
        }
        t.truthy(r, `case ${n} ran under ${label}`);
        t.true(r?.ok, r?.detail);
        if (r) t.log(`${r.ms} ms in the guest`);
        for (const problem of ['MOUNT_FAILED', 'UNMOUNT_FAILED', 'RELAY_STUCK']) t.false(run.output.includes(`${problem}=${label}`), `${problem} for ${label}`);
      });
    }
  }
}

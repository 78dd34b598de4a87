// The QEMU guest harness (test/helpers/vm.ts) works: a real virtio-fs PCI function (vhost-user-fs-pci
// backed by virtiofsd) shows up in the guest and can be handed to userspace through UIO and VFIO.
// Two boots under TCG, ~10-25 s each: no IOMMU (uio_pci_generic, then vfio-pci in no-IOMMU mode) and
// QEMU's emulated VT-d (the guest kernel's virtiofs driver on the device, then vfio-pci with a real group).
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireRoot } from '../helpers/virtiofsd.ts'; // fails loudly, never skips
import { GUEST_SH, REPO_ROOT, runInGuest, runningGuests, type GuestRun } from '../helpers/vm.ts';

/** KEY=VALUE lines the guest script printed. */
function results(run: GuestRun): Map<string, string> {
  const found = new Map<string, string>();
  for (const line of run.output.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line);
    if (m) found.set(m[1]!, m[2]!);
  }
  return found;
}

function report(t: ExecutionContext, run: GuestRun): void {
  t.log(`boot to script ${run.bootMs} ms, whole run ${run.durationMs} ms`);
  t.log(run.output.trimEnd());
}

test('no IOMMU: node runs, the virtio-fs function binds to uio_pci_generic and to vfio-pci (no-IOMMU)', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(150_000);
  const shared = mkdtempSync(join(tmpdir(), 'vm-harness-'));
  const fixtures = mkdtempSync(join(tmpdir(), 'vm-harness-fixtures-'));
  writeFileSync(join(fixtures, 'note.txt'), 'seen through 9p');
  try {
    const run = await runInGuest({
      sharedDir: shared,
      hostPaths: [fixtures], // under /tmp, which the guest covers with tmpfs
      script: `
        echo "FIXTURE=$(cat ${fixtures}/note.txt)"
        t0=$(date +%s%N); echo "NODE=$(node --version)"; echo "NODE_MS=$(( ($(date +%s%N) - t0) / 1000000 ))"
        echo "KREL=$(uname -r)"
        echo "CWD=$(pwd)"
        echo "HUGEPAGES=$(cat /proc/sys/vm/nr_hugepages)"
        # lspci-free: every function's vendor and device ids from sysfs
        for d in /sys/bus/pci/devices/*; do echo "PCI \${d##*/} $(cat $d/vendor):$(cat $d/device)"; done
        ${GUEST_SH.findVirtiofsBdf}
        echo "BDF=$BDF"
        echo "IDS=$(cat /sys/bus/pci/devices/$BDF/vendor):$(cat /sys/bus/pci/devices/$BDF/device)"
        echo "BOOT_DRIVER=$(${GUEST_SH.driver})"
        ${GUEST_SH.bindUio}
        echo "UIO=$UIO"
        [ -c "$UIO" ] && echo "UIO_CHAR=yes"
        echo "UIO_NAME=$(cat /sys/class/uio/\${UIO#/dev/}/name)"
        echo "UIO_DRIVER=$(${GUEST_SH.driver})"
        ${GUEST_SH.bindVfio}
        echo "VFIO=$VFIO"
        [ -c "$VFIO" ] && [ -c /dev/vfio/vfio ] && echo "VFIO_CHAR=yes"
        echo "VFIO_DRIVER=$(${GUEST_SH.driver})"
        echo "NOIOMMU=$(cat /sys/module/vfio/parameters/enable_unsafe_noiommu_mode)"
      `,
    });
    report(t, run);
    t.is(run.exitCode, 0, 'the guest script failed');
    const r = results(run);
    t.regex(r.get('NODE') ?? '', /^v\d+\./, 'node runs in the guest');
    t.is(r.get('KREL'), run.artifacts.kernelRelease);
    t.is(r.get('CWD'), REPO_ROOT);
    t.is(r.get('HUGEPAGES'), '16');
    t.is(r.get('IDS'), '0x1af4:0x105a');
    t.is(r.get('BOOT_DRIVER'), 'virtio-pci');
    t.is(r.get('UIO'), '/dev/uio0');
    t.is(r.get('UIO_CHAR'), 'yes');
    t.is(r.get('UIO_NAME'), 'uio_pci_generic');
    t.is(r.get('UIO_DRIVER'), 'uio_pci_generic');
    t.is(r.get('VFIO'), '/dev/vfio/noiommu-0');
    t.is(r.get('VFIO_CHAR'), 'yes');
    t.is(r.get('VFIO_DRIVER'), 'vfio-pci');
    t.is(r.get('NOIOMMU'), 'Y');
    t.is(r.get('FIXTURE'), 'seen through 9p');
  } finally {
    rmSync(shared, { recursive: true, force: true });
    rmSync(fixtures, { recursive: true, force: true });
  }
});

test('intel IOMMU: the device serves sharedDir, vfio-pci gets a real group, the exit status comes back', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(150_000);
  const shared = mkdtempSync(join(tmpdir(), 'vm-harness-'));
  const secret = randomBytes(8).toString('hex');
  writeFileSync(join(shared, 'from-host.txt'), secret);
  try {
    const run = await runInGuest({
      sharedDir: shared,
      iommu: 'intel',
      env: { GUEST_WORD: 'it works' },
      script: `
        echo "ENV=$GUEST_WORD"
        echo "DMAR=$(ls /sys/class/iommu)"
        ${GUEST_SH.mountVirtiofs('/mnt')}
        echo "READ=$(cat /mnt/from-host.txt)"
        echo "$(cat /mnt/from-host.txt)-back" > /mnt/from-guest.txt
        umount /mnt
        ${GUEST_SH.findVirtiofsBdf}
        ${GUEST_SH.bindVfio}
        echo "VFIO=$VFIO"
        echo "GROUP=$(basename "$(readlink /sys/bus/pci/devices/$BDF/iommu_group)")"
        exit 3
      `,
    });
    report(t, run);
    t.is(run.exitCode, 3, "the script's own exit status");
    const r = results(run);
    t.is(r.get('ENV'), 'it works');
    t.regex(r.get('DMAR') ?? '', /^dmar\d/, 'the guest sees VT-d');
    t.is(r.get('READ'), secret, 'the guest kernel read sharedDir through the virtio-fs device');
    t.is(readFileSync(join(shared, 'from-guest.txt'), 'utf8'), `${secret}-back\n`);
    t.regex(r.get('VFIO') ?? '', /^\/dev\/vfio\/\d+$/, 'a real IOMMU group, not no-IOMMU');
    t.is(r.get('VFIO'), `/dev/vfio/${r.get('GROUP')}`);
  } finally {
    rmSync(shared, { recursive: true, force: true });
  }
});

// Serial: ava runs it before the others, so runningGuests() sees only its own guest.
test.serial('a timeout kills QEMU and stops virtiofsd', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(150_000);
  const shared = mkdtempSync(join(tmpdir(), 'vm-harness-'));
  try {
    await t.throwsAsync(runInGuest({ sharedDir: shared, script: 'sleep 600', timeoutMs: 2000 }), {
      name: 'GuestError',
      message: /no exit status after 2000 ms \(QEMU killed\)/,
    });
    t.is(runningGuests(), 0);
  } finally {
    rmSync(shared, { recursive: true, force: true });
  }
});

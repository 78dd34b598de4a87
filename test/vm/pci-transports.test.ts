// The VFIO and UIO transports against a real virtio-fs PCI function: QEMU's
// vhost-user-fs-pci (backed by virtiofsd on the host) inside a TCG guest. In
// each boot the function is handed to userspace and driven by this project:
// through the client API (pci-probe.ts), then mounted with the CLI.
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireRoot } from '../helpers/virtiofsd.ts';
import { GUEST_SH, runInGuest, type GuestRun } from '../helpers/vm.ts';

function results(run: GuestRun): Map<string, string[]> {
  const found = new Map<string, string[]>();
  for (const line of run.output.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trimEnd());
    if (m) found.set(m[1]!, [...(found.get(m[1]!) ?? []), m[2]!]);
  }
  return found;
}

/** The API probe then a CLI mount, over `transport` (a shell word, may use $BDF/$UIO). */
const session = (name: string, transport: string) => `
  echo "== ${name}: API"
  node --import tsx test/vm/pci-probe.ts "${transport}" || echo "PROBE_FAILED=$?"
  echo "== ${name}: mount"
  mkdir -p /tmp/mnt-${name}
  node bin/virtiofs-client.js mount --transport "${transport}" /tmp/mnt-${name} || echo "MOUNT_FAILED=$?"
  echo "MOUNT_LS=$(ls /tmp/mnt-${name} | sort | tr '\\n' ',')"
  echo "MOUNT_CAT=$(cat /tmp/mnt-${name}/host.txt)"
  dd if=/dev/urandom of=/tmp/payload bs=64k count=40 status=none
  cp /tmp/payload /tmp/mnt-${name}/copied-${name}.bin && cmp /tmp/payload /tmp/mnt-${name}/copied-${name}.bin && echo "MOUNT_CMP=ok"
  node bin/virtiofs-client.js status /tmp/mnt-${name} | grep -E 'transport|answer' | sed 's/^/STATUS=/'
  node bin/virtiofs-client.js unmount /tmp/mnt-${name} && echo "UNMOUNT=ok"
  sleep 0.5
`;

async function guest(t: ExecutionContext, iommu: 'none' | 'intel', script: string): Promise<{ r: Map<string, string[]>; shared: string }> {
  const shared = mkdtempSync(join(tmpdir(), 'vm-pci-'));
  writeFileSync(join(shared, 'host.txt'), 'from host\n');
  try {
    const run = await runInGuest({ sharedDir: shared, iommu, script, timeoutMs: 240_000 });
    t.log(`boot ${run.bootMs} ms, run ${run.durationMs} ms`);
    t.log(run.output.trimEnd());
    t.is(run.exitCode, 0);
    const copies = ['uio', 'vfio', 'vfio-iommu'].filter((n) => {
      try {
        return readFileSync(join(shared, `copied-${n}.bin`)).length === 40 * 65536;
      } catch {
        return false;
      }
    });
    return { r: results(run), shared: copies.join(',') };
  } finally {
    rmSync(shared, { recursive: true, force: true });
  }
}

function expectSession(t: ExecutionContext, r: Map<string, string[]>, index: number, description: RegExp): void {
  const at = (k: string) => r.get(k)?.[index];
  t.regex(at('DESCRIPTION') ?? '', description);
  t.regex(at('INTERRUPTS') ?? '', /^(msix|intx|polling)$/);
  t.is(at('TAG'), 'vfs');
  t.is(at('READ_BACK'), 'true');
  t.is(at('CONCURRENT'), 'true');
  t.is(at('DONE'), 'yes');
  t.regex(at('MOUNT_LS') ?? '', /host\.txt/);
  t.is(at('MOUNT_CAT'), 'from host');
  t.is(at('MOUNT_CMP'), 'ok');
  t.is(at('UNMOUNT'), 'ok');
}

test('no IOMMU: UIO (uio_pci_generic) then VFIO (no-IOMMU mode) drive the device; API and mount', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(300_000);
  const { r, shared } = await guest(
    t,
    'none',
    `
      ${GUEST_SH.modprobe('fuse')}
      ${GUEST_SH.findVirtiofsBdf}
      ${GUEST_SH.bindUio}
      ${session('uio', 'uio:${UIO#/dev/}')}
      node bin/virtiofs-client.js devices | sed 's/^/DEVICES=/'
      # The project's own bind command moves it from uio_pci_generic to vfio-pci (modules loaded first).
      vm_load_vfio_noiommu || exit 1
      node bin/virtiofs-client.js bind "$BDF" vfio-pci | sed 's/^/BIND=/'
      ${session('vfio', 'vfio:$BDF')}
      node bin/virtiofs-client.js devices | sed 's/^/DEVICES=/'
    `,
  );
  t.deepEqual(r.get('PROBE_FAILED'), undefined);
  t.deepEqual(r.get('MOUNT_FAILED'), undefined);
  expectSession(t, r, 0, /^uio:/);
  expectSession(t, r, 1, /^vfio \(no-IOMMU\):/);
  t.is(r.get('INTERRUPTS')?.[0], 'intx', 'uio_pci_generic gives the legacy interrupt');
  t.is(shared, 'uio,vfio', 'the host sees the files written through both transports');
  t.regex(r.get('DEVICES')?.[0] ?? '', /driver uio_pci_generic .*--transport uio:uio0/);
  t.regex(r.get('BIND')?.[0] ?? '', /bound to vfio-pci/);
  t.regex(r.get('DEVICES')?.[1] ?? '', /driver vfio-pci .*--transport vfio:/);
});

test('QEMU intel-iommu: VFIO type1 with DMA mapped at IOVA = guest-physical', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(300_000);
  const { r, shared } = await guest(
    t,
    'intel',
    `
      ${GUEST_SH.modprobe('fuse')}
      ${GUEST_SH.findVirtiofsBdf}
      ${GUEST_SH.bindVfio}
      ${session('vfio-iommu', 'vfio:$BDF')}
    `,
  );
  t.deepEqual(r.get('PROBE_FAILED'), undefined);
  expectSession(t, r, 0, /^vfio:/);
  t.is(shared, 'vfio-iommu');
});

// Real virtio-fs PCI functions in QEMU guests: QEMU's vhost-user-fs-pci (backed by virtiofsd on the
// host), one boot per IOMMU setup, each shared by two tests of this file:
//   - the harness (test/helpers/vm.ts, scripts/vm/*) works: node runs, 9p and the env reach the script,
//     the function binds to uio_pci_generic / vfio-pci, the script's exit status comes back;
//   - the VFIO and UIO transports drive the function: through the client API (pci-probe.ts), then
//     mounted with the CLI.
// The guests run one at a time (a lock shared by ava's workers); every step has a deadline derived
// from the guest's measured speed, and each test logs the steps' durations.
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireRoot } from '../helpers/virtiofsd.ts'; // fails loudly, never skips
import { GUEST_SH, REPO_ROOT, describeTiming, sharedGuestRun, type GuestRun } from '../helpers/vm.ts';

/** KEY=VALUE lines the guest script printed; a key printed more than once keeps every value. */
function results(run: GuestRun): Map<string, string[]> {
  const found = new Map<string, string[]>();
  for (const line of run.output.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trimEnd());
    if (m) found.set(m[1]!, [...(found.get(m[1]!) ?? []), m[2]!]);
  }
  return found;
}

// Step budgets, in calibrations (the guest's first `node -e 0`: ~1.1 s under TCG here on an idle
// machine, ~3 s with the rest of the suite running); the harness's floor (40 s) applies too. Steps
// took up to ~16 calibrations when the machine got busier after the calibration: these leave room
// for that, while a hang still shows within a minute or so instead of at the run's cap.
/** One node start through tsx (~2.5 calibrations idle) and its work: the API probe, a CLI command. */
const NODE_TS_BUDGET = 25;
/** A CLI mount: the command and its relay process, two node starts, and the device's set-up (~9 idle). */
const MOUNT_BUDGET = 45;
/** Shell tools only. */
const SHELL_BUDGET = 8;

/** The API probe then a CLI mount, over `transport` (a shell word, may use $BDF/$UIO). */
const session = (name: string, transport: string) => `
  ${GUEST_SH.step(`${name}-api`, NODE_TS_BUDGET)}
  echo "== ${name}: API"
  ${GUEST_SH.nodeTs('test/vm/pci-probe.ts', `"${transport}"`)} || echo "PROBE_FAILED=$?"
  ${GUEST_SH.step(`${name}-mount`, MOUNT_BUDGET)}
  echo "== ${name}: mount"
  mkdir -p /tmp/mnt-${name}
  mounted=$(${GUEST_SH.cli('mount', '--transport', `"${transport}"`, `/tmp/mnt-${name}`)}) || echo "MOUNT_FAILED=$?"
  echo "$mounted"
  pid=\${mounted#*(pid }; echo "MOUNT_PID=\${pid%%)*}"
  echo "RELAY_PID=$(vm_relay_pid /tmp/mnt-${name})"
  ${GUEST_SH.step(`${name}-io`, SHELL_BUDGET)}
  echo "MOUNT_LS=$(ls /tmp/mnt-${name} | sort | tr '\\n' ',')"
  echo "MOUNT_CAT=$(cat /tmp/mnt-${name}/host.txt)"
  dd if=/dev/urandom of=/tmp/payload bs=64k count=40 status=none
  cp /tmp/payload /tmp/mnt-${name}/copied-${name}.bin && cmp /tmp/payload /tmp/mnt-${name}/copied-${name}.bin && echo "MOUNT_CMP=ok"
  ${GUEST_SH.step(`${name}-status`, NODE_TS_BUDGET)}
  ${GUEST_SH.cli('status', `/tmp/mnt-${name}`)} | grep -E 'transport|answer' | sed 's/^/STATUS=/'
  ${GUEST_SH.step(`${name}-unmount`, NODE_TS_BUDGET)}
  ${GUEST_SH.cli('unmount', `/tmp/mnt-${name}`)} && echo "UNMOUNT=ok"
  ${GUEST_SH.step(`${name}-relay-exit`, SHELL_BUDGET)}
  vm_wait_relay_exit /tmp/mnt-${name} && echo "RELAY_EXIT=ok"
`;

/** The device's directory on the host: what the guests read, and what they wrote. */
interface Shared {
  secret: string;
  /** Transports whose 40 x 64 KiB copy reached the host intact. */
  copies: string;
  /** from-guest.txt, written by the guest kernel's own virtio-fs driver ('' if missing). */
  fromGuest: string;
}

/**
 * One boot, shared by the tests that call the returned function: runs `script`, then reads what the
 * guest left in the shared directory.
 */
function boot(iommu: 'none' | 'intel', script: string, more: { fsBehindBridge?: boolean; qemuArgs?: string[] } = {}) {
  let joinRun: ((t: ExecutionContext) => Promise<GuestRun>) | undefined;
  let result: Promise<{ run: GuestRun; r: Map<string, string[]>; shared: Shared }> | undefined;
  return (t: ExecutionContext) => {
    if (joinRun && result) {
      void joinRun(t); // the same run; this test's timeout follows it
      return result;
    }
    const fixtures = mkdtempSync(join(tmpdir(), 'vm-pci-fixtures-'));
    writeFileSync(join(fixtures, 'note.txt'), 'seen through 9p');
    const dir = mkdtempSync(join(tmpdir(), 'vm-pci-'));
    const secret = randomBytes(8).toString('hex');
    writeFileSync(join(dir, 'host.txt'), 'from host\n');
    writeFileSync(join(dir, 'from-host.txt'), secret);
    const inspect = (): Shared => {
      const copies = ['uio', 'vfio', 'vfio-iommu'].filter((n) => {
        try {
          return readFileSync(join(dir, `copied-${n}.bin`)).length === 40 * 65536;
        } catch {
          return false;
        }
      });
      let fromGuest = '';
      try {
        fromGuest = readFileSync(join(dir, 'from-guest.txt'), 'utf8');
      } catch {
        // '' fails the test that expects it
      }
      rmSync(dir, { recursive: true, force: true });
      rmSync(fixtures, { recursive: true, force: true });
      return { secret, copies: copies.join(','), fromGuest };
    };
    joinRun = sharedGuestRun({
      sharedDir: dir,
      iommu,
      hostPaths: [fixtures], // under /tmp, which the guest covers with tmpfs
      env: { GUEST_WORD: 'it works', FIXTURES: fixtures },
      script,
      timeoutMs: 420_000,
      ...more,
    });
    result = joinRun(t).then(
      (run) => ({ run, r: results(run), shared: inspect() }),
      (error: unknown) => {
        inspect();
        throw error;
      },
    );
    return result;
  };
}

// --- no IOMMU: uio_pci_generic, then vfio-pci in no-IOMMU mode --------------------------------------

const noIommu = boot(
  'none',
  `
    ${GUEST_SH.step('harness-checks', SHELL_BUDGET)}
    echo "FIXTURE=$(cat "$FIXTURES/note.txt")"
    t0=$(date +%s%N); echo "NODE=$(node --version)"; echo "NODE_MS=$(( ($(date +%s%N) - t0) / 1000000 ))"
    echo "KREL=$(uname -r)"
    echo "CWD=$(pwd)"
    echo "HUGEPAGES=$(cat /proc/sys/vm/nr_hugepages)"
    # lspci-free: every function's vendor and device ids from sysfs
    for d in /sys/bus/pci/devices/*; do echo "PCI \${d##*/} $(cat $d/vendor):$(cat $d/device)"; done
    ${GUEST_SH.modprobe('fuse')}
    ${GUEST_SH.findVirtiofsBdf}
    echo "BDF=$BDF"
    echo "IDS=$(cat /sys/bus/pci/devices/$BDF/vendor):$(cat /sys/bus/pci/devices/$BDF/device)"
    echo "BOOT_DRIVER=$(${GUEST_SH.driver})"
    # First use, before any binding: the one-line error says which modprobe and bind to run.
    ${GUEST_SH.step('first-error', NODE_TS_BUDGET)}
    mkdir -p /tmp/mnt-first
    echo "FIRST_ERROR=$(${GUEST_SH.cli('mount', '--transport', 'vfio:$BDF', '/tmp/mnt-first')} 2>&1 | tr '\n' '|')"
    ${GUEST_SH.step('bind-uio', SHELL_BUDGET)}
    ${GUEST_SH.bindUio}
    echo "UIO=$UIO"
    [ -c "$UIO" ] && echo "UIO_CHAR=yes"
    echo "UIO_NAME=$(cat /sys/class/uio/\${UIO#/dev/}/name)"
    echo "UIO_DRIVER=$(${GUEST_SH.driver})"
    # First use without hugepages reserved: one line that says how many to reserve.
    ${GUEST_SH.step('first-error-hugepages', NODE_TS_BUDGET)}
    echo 0 > /proc/sys/vm/nr_hugepages
    echo "HUGEPAGE_ERROR=$(${GUEST_SH.cli('mount', '--transport', 'uio:${UIO#/dev/}', '/tmp/mnt-first')} 2>&1 | tr '\n' '|')"
    echo 16 > /proc/sys/vm/nr_hugepages
    echo "HUGEPAGES_BACK=$(cat /proc/sys/vm/nr_hugepages)"
    ${session('uio', 'uio:${UIO#/dev/}')}
    ${GUEST_SH.step('devices-uio', NODE_TS_BUDGET)}
    ${GUEST_SH.cli('devices')} | sed 's/^/DEVICES=/'
    # First use of vfio-pci: not loaded; Debian's own vfio (no no-IOMMU mode in its kernels); the
    # rebuilt vfio with the mode off. Each refusal is one line that says what to run.
    ${GUEST_SH.step('first-error-vfio', NODE_TS_BUDGET)}
    echo "BIND_UNLOADED=$(${GUEST_SH.cli('bind', '"$BDF"', 'vfio-pci')} 2>&1 | tr '\n' '|')"
    ${GUEST_SH.modprobe('vfio-pci')}
    echo "BIND_STOCK=$(${GUEST_SH.cli('bind', '"$BDF"', 'vfio-pci')} 2>&1 | tr '\n' '|')"
    echo "AFTER_STOCK_DRIVER=$(${GUEST_SH.driver})"
    for m in vfio_pci vfio_pci_core vfio_iommu_type1 vfio; do [ ! -d /sys/module/$m ] || rmmod $m || exit 1; done
    insmod "$VM_VFIO_NOIOMMU_KO" || exit 1
    ${GUEST_SH.modprobe('vfio-pci')}
    echo "BIND_MODE_OFF=$(${GUEST_SH.cli('bind', '"$BDF"', 'vfio-pci')} 2>&1 | tr '\n' '|')"
    echo Y > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode
    # The project's own bind command moves it from uio_pci_generic to vfio-pci (modules loaded first).
    ${GUEST_SH.step('bind-vfio', NODE_TS_BUDGET)}
    vm_load_vfio_noiommu || exit 1
    ${GUEST_SH.cli('bind', '"$BDF"', 'vfio-pci')} | sed 's/^/BIND=/'
    ${session('vfio', 'vfio:$BDF')}
    ${GUEST_SH.step('devices-vfio', NODE_TS_BUDGET)}
    ${GUEST_SH.cli('devices')} | sed 's/^/DEVICES=/'
    # guest-lib's own vfio binding (the harness's): rebinds it to vfio-pci in no-IOMMU mode.
    ${GUEST_SH.step('harness-vfio', SHELL_BUDGET)}
    ${GUEST_SH.bindVfio}
    echo "VFIO=$VFIO"
    [ -c "$VFIO" ] && [ -c /dev/vfio/vfio ] && echo "VFIO_CHAR=yes"
    echo "VFIO_DRIVER=$(${GUEST_SH.driver})"
    echo "NOIOMMU=$(cat /sys/module/vfio/parameters/enable_unsafe_noiommu_mode)"
  `,
);

test('no IOMMU guest (harness): node runs, 9p and env reach the script, the function binds to uio_pci_generic and vfio-pci (no-IOMMU)', async (t) => {
  if (!requireRoot(t)) return;
  const { run, r } = await noIommu(t);
  t.log(describeTiming(run).split('\n')[0]);
  const one = (k: string) => r.get(k)?.at(-1);
  t.is(run.exitCode, 0, 'the guest script failed');
  t.regex(one('NODE') ?? '', /^v\d+\./, 'node runs in the guest');
  t.is(one('KREL'), run.artifacts.kernelRelease);
  t.is(one('CWD'), REPO_ROOT);
  t.is(one('HUGEPAGES'), '16');
  t.is(one('IDS'), '0x1af4:0x105a');
  t.is(one('BOOT_DRIVER'), 'virtio-pci');
  t.is(one('UIO'), '/dev/uio0');
  t.is(one('UIO_CHAR'), 'yes');
  t.is(one('UIO_NAME'), 'uio_pci_generic');
  t.is(one('UIO_DRIVER'), 'uio_pci_generic');
  t.is(one('VFIO'), '/dev/vfio/noiommu-0');
  t.is(one('VFIO_CHAR'), 'yes');
  t.is(one('VFIO_DRIVER'), 'vfio-pci');
  t.is(one('NOIOMMU'), 'Y');
  t.is(one('FIXTURE'), 'seen through 9p');
  t.regex(
    one('FIRST_ERROR') ?? '',
    /^virtiofs-client: 0000:\S+ is bound to virtio-pci, not vfio-pci: run 'modprobe vfio enable_unsafe_noiommu_mode=1 && modprobe vfio-pci && virtiofs-client bind 0000:\S+ vfio-pci'\|$/,
    'a vfio mount of a function still on virtio-pci says, in one line, what to run',
  );
  t.regex(
    one('HUGEPAGE_ERROR') ?? '',
    /^virtiofs-client: [^|]*DMA memory needs \d+ free 2 MiB hugepages, 0 of 0 are: reserve more with 'echo (\d+) > \/proc\/sys\/vm\/nr_hugepages'[^|]*\|$/,
    'a UIO mount with no hugepages reserved says, in one line, how many to reserve',
  );
  t.is(one('HUGEPAGES_BACK'), '16');
  t.regex(
    one('BIND_UNLOADED') ?? '',
    /^virtiofs-client: driver vfio-pci is not loaded: run 'modprobe vfio enable_unsafe_noiommu_mode=1 && modprobe vfio-pci' first\|$/,
    'binding to vfio-pci before it is loaded names both modprobes',
  );
  t.regex(
    one('BIND_STOCK') ?? '',
    /^virtiofs-client: vfio-pci cannot take 0000:\S+: there is no IOMMU and this kernel's vfio has no no-IOMMU mode \(CONFIG_VFIO_NOIOMMU is not set, as in Debian's kernels\): use uio_pci_generic \('modprobe uio_pci_generic && virtiofs-client bind 0000:\S+ uio_pci_generic'\), or boot with the IOMMU on[^|]*\|$/,
    "Debian's own vfio without an IOMMU: one line that says to use UIO or turn the IOMMU on",
  );
  t.is(one('AFTER_STOCK_DRIVER'), 'uio_pci_generic', 'a refused bind leaves the function where it was');
  t.regex(
    one('BIND_MODE_OFF') ?? '',
    /^virtiofs-client: vfio-pci cannot take 0000:\S+: there is no IOMMU and vfio's no-IOMMU mode is off: run 'echo Y > \/sys\/module\/vfio\/parameters\/enable_unsafe_noiommu_mode'\|$/,
    'a vfio with the mode off: one line with the switch to flip',
  );
  t.true(run.calibrationMs > 0, 'the calibration step ran');
  t.deepEqual(
    run.steps.map((s) => s.name).filter((n) => n.startsWith('init-') || n === 'calibrate'),
    ['init-modules', 'init-9p', 'init-switch-root', 'calibrate'],
    'every boot phase reported its step',
  );
});

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
  t.regex(at('RELAY_PID') ?? '', /^\d+$/, 'the relay process runs while mounted');
  t.is(at('RELAY_PID'), at('MOUNT_PID'), 'the process the mount command named');
  t.is(at('RELAY_EXIT'), 'ok', 'the relay process exits after the unmount');
}

test('no IOMMU: UIO (uio_pci_generic) then VFIO (no-IOMMU mode) drive the device; API and mount', async (t) => {
  if (!requireRoot(t)) return;
  const { run, r, shared } = await noIommu(t);
  t.log(describeTiming(run));
  t.log(run.output.trimEnd());
  t.deepEqual(r.get('PROBE_FAILED'), undefined);
  t.deepEqual(r.get('MOUNT_FAILED'), undefined);
  expectSession(t, r, 0, /^uio:/);
  expectSession(t, r, 1, /^vfio \(no-IOMMU\):/);
  t.is(r.get('INTERRUPTS')?.[0], 'intx', 'uio_pci_generic gives the legacy interrupt');
  t.is(shared.copies, 'uio,vfio', 'the host sees the files written through both transports');
  t.regex(r.get('DEVICES')?.[0] ?? '', /driver uio_pci_generic .*--transport uio:uio0/);
  t.regex(r.get('BIND')?.[0] ?? '', /bound to vfio-pci/);
  t.regex(r.get('DEVICES')?.[1] ?? '', /driver vfio-pci .*--transport vfio:/);
});

// --- QEMU's intel-iommu: the guest kernel's virtiofs driver, then vfio-pci with a real group ------------

const intel = boot(
  'intel',
  `
    ${GUEST_SH.step('harness-checks', SHELL_BUDGET)}
    echo "ENV=$GUEST_WORD"
    echo "DMAR=$(ls /sys/class/iommu)"
    ${GUEST_SH.mountVirtiofs('/mnt')}
    echo "READ=$(cat /mnt/from-host.txt)"
    echo "$(cat /mnt/from-host.txt)-back" > /mnt/from-guest.txt
    umount /mnt
    ${GUEST_SH.modprobe('fuse')}
    ${GUEST_SH.findVirtiofsBdf}
    echo "BDF=$BDF"
    ${GUEST_SH.step('bind-vfio', SHELL_BUDGET)}
    ${GUEST_SH.bindVfio}
    echo "VFIO=$VFIO"
    echo "GROUP=$(basename "$(readlink /sys/bus/pci/devices/$BDF/iommu_group)")"
    # A virtio-rng function behind the same bridge, bound to virtio-pci, shares the group: first use
    # says, in one line, which function to let go of; then it is unbound and the group is viable.
    ${GUEST_SH.step('first-error-group', NODE_TS_BUDGET)}
    for d in /sys/bus/pci/devices/$BDF/iommu_group/devices/*; do
      [ "\${d##*/}" = "$BDF" ] || echo "GROUP_MEMBER=\${d##*/} $(vm_pci_driver "\${d##*/}")"
    done
    mkdir -p /tmp/mnt-first
    echo "GROUP_ERROR=$(${GUEST_SH.cli('mount', '--transport', 'vfio:$BDF', '/tmp/mnt-first')} 2>&1 | tr '\n' '|')"
    RNG=$(vm_pci_find 0x1af4 0x1005); [ -n "$RNG" ] || exit 1
    echo "RNG=$RNG"
    echo "$RNG" > /sys/bus/pci/devices/$RNG/driver/unbind || exit 1
    ${session('vfio-iommu', 'vfio:$BDF')}
    exit 3
  `,
  { fsBehindBridge: true, qemuArgs: ['-device', 'virtio-rng-pci,bus=fsbridge,addr=2'] },
);

test('intel IOMMU guest (harness): the kernel driver serves sharedDir, vfio-pci gets a real group, the exit status comes back', async (t) => {
  if (!requireRoot(t)) return;
  const { run, r, shared } = await intel(t);
  t.log(describeTiming(run).split('\n')[0]);
  const one = (k: string) => r.get(k)?.at(-1);
  t.is(run.exitCode, 3, "the script's own exit status");
  t.is(one('ENV'), 'it works');
  t.regex(one('DMAR') ?? '', /^dmar\d/, 'the guest sees VT-d');
  t.is(one('READ'), shared.secret, 'the guest kernel read sharedDir through the virtio-fs device');
  t.is(shared.fromGuest, `${shared.secret}-back\n`);
  t.regex(one('VFIO') ?? '', /^\/dev\/vfio\/\d+$/, 'a real IOMMU group, not no-IOMMU');
  t.is(one('VFIO'), `/dev/vfio/${one('GROUP')}`);
  t.true((r.get('GROUP_MEMBER') ?? []).some((m) => m === `${one('RNG')} virtio-pci`), `the rng shares the group: ${(r.get('GROUP_MEMBER') ?? []).join('; ')}`);
  const rng = one('RNG') ?? '?';
  t.is(
    one('GROUP_ERROR'),
    `virtiofs-client: IOMMU group ${one('GROUP')} is not viable: ${rng} (virtio-pci) shares it with ${one('BDF') ?? '?'}: unbind it ('echo ${rng} > /sys/bus/pci/devices/${rng}/driver/unbind') or bind it to vfio-pci too|`,
    'a group that is not viable: one line naming the function to let go of, and how',
  );
});

test('QEMU intel-iommu: VFIO type1 with DMA mapped at IOVA = guest-physical', async (t) => {
  if (!requireRoot(t)) return;
  const { run, r, shared } = await intel(t);
  t.log(describeTiming(run));
  t.log(run.output.trimEnd());
  t.deepEqual(r.get('PROBE_FAILED'), undefined);
  t.deepEqual(r.get('MOUNT_FAILED'), undefined);
  expectSession(t, r, 0, /^vfio:/);
  t.is(shared.copies, 'vfio-iommu');
});

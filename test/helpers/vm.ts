/**
 * Runs a shell script inside a QEMU guest that has a real virtio-fs PCI function: QEMU's
 * vhost-user-fs-pci backed by virtiofsd on the host (test-beds notes, section 2). KVM when it really
 * works here (test/helpers/kvm.ts), TCG otherwise.
 *
 * The guest boots Debian's kernel with the initramfs of scripts/vm/build.sh (built once into
 * node_modules/.cache/virtiofs-vm), mounts the host's root read-only over 9p, puts tmpfs on /tmp /run
 * /var/tmp /root, and runs the script as root with /bin/bash in this checkout, then powers off. The
 * script's exit status comes back over the serial console.
 *
 * Inside, no udev runs: scripts/vm/guest-lib.sh (sourced before the script) loads modules from the
 * extracted tree and rebinds the device to uio_pci_generic or vfio-pci; see GUEST_SH below.
 *
 * Time: one guest at a time on this machine (a flock in the cache directory, shared by ava's worker
 * processes), and every run is cut into steps (test/helpers/guest-steps.ts): the boot phases, a
 * calibration (the guest's first `node -e 0`), then the script's own `vm_step NAME [BUDGET]` steps,
 * each with a deadline of BUDGET calibrations. GuestRun.steps has their durations.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { Virtiofsd, type VirtiofsdOptions } from '../../client/backends/virtiofsd.ts';
import { acquireGuestLock, type GuestLock } from './guest-lock.ts';
import { CALIBRATION_STEP, StepClock, formatSteps, parseStepMarker, type GuestStep, type StepExpiry, type StepPolicy } from './guest-steps.ts';
import { guestAccelerator, type Accelerator } from './kvm.ts';

export { formatSteps, type GuestStep } from './guest-steps.ts';

/** Where RunInGuestOptions.hostView puts its function. */
const HOSTVIEW_BDF = '0000:00:10.0';
/** Where RunInGuestOptions.referenceDevice puts its functions after the first: slot 0x11, 0x12, ... */
const EXTRA_FUNCTION_SLOT = 0x11;

/** The checkout the guest runs scripts in (seen through the 9p host root). */
export const REPO_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const VM_BUILD_SCRIPT = join(REPO_ROOT, 'scripts/vm/build.sh');
/** Sourced before every guest script; its functions are listed in GUEST_SH. */
export const GUEST_LIB = join(REPO_ROOT, 'scripts/vm/guest-lib.sh');
/** The reference device's entry point (RunInGuestOptions.referenceDevice runs it on the host). */
const REFERENCE_DEVICE_MAIN = join(REPO_ROOT, 'examples/reference-device/main.ts');

/**
 * How the guest starts node: `ts` runs a TypeScript entry point (followed by its path), `cli` is the
 * virtiofs-client command, the compiled package in dist/ (npm test builds it first): under TCG a
 * node start through tsx costs ~2.7 s against ~0.3 s for compiled JavaScript.
 * Exported to the guest as VM_NODE_TS and VM_CLI; guest-lib.sh's vm_node_ts and vm_cli use them.
 */
export const GUEST_NODE = {
  ts: 'node --import tsx',
  cli: 'node dist/client/cli/main.js',
} as const;

/** Throws unless dist/ (what the guest's CLI runs) is built and newer than every source of it. */
export function requireFreshDist(): void {
  const main = join(REPO_ROOT, 'dist/client/cli/main.js');
  const built = statSync(main, { throwIfNoEntry: false })?.mtimeMs;
  if (built === undefined) throw new Error(`${main} is missing: run npm run build (npm test does)`);
  const sources = ['client', 'ffi'].flatMap((d) =>
    (readdirSync(join(REPO_ROOT, d), { recursive: true }) as string[]).filter((f) => f.endsWith('.ts')).map((f) => join(REPO_ROOT, d, f)),
  );
  const newer = sources.find((f) => statSync(f).mtimeMs > built);
  if (newer) throw new Error(`dist/ is older than ${newer}: run npm run build (npm test does)`);
}

/**
 * Guest-side shell snippets (the functions of scripts/vm/guest-lib.sh), to paste into a script.
 * Each prints its result on stdout and fails (non-zero, message on stderr) otherwise.
 */
export const GUEST_SH = {
  /**
   * Starts step `name` (and ends the one before): its deadline is `budget` calibrations (a guest
   * `node -e 0`; default RunInGuestOptions.defaultBudget), never under stepFloorMs.
   */
  step: (name: string, budget?: number) => ['vm_step', name, ...(budget === undefined ? [] : [String(budget)])].join(' '),
  /** Runs a TypeScript entry point with node: `vm_node_ts FILE ARGS...` (see GUEST_NODE). */
  nodeTs: (file: string, ...args: string[]) => ['vm_node_ts', file, ...args].join(' '),
  /** The virtiofs-client command: `vm_cli ARGS...` (see GUEST_NODE). */
  cli: (...args: string[]) => ['vm_cli', ...args].join(' '),
  /** Loads a module and its dependencies from the extracted tree: `vm_modprobe MOD [PARAM=V...]`. */
  modprobe: (module: string, ...params: string[]) => ['vm_modprobe', module, ...params].map(shellQuote).join(' '),
  /** Sets BDF to the virtio-fs function's address (1af4:105a, found through sysfs). */
  findVirtiofsBdf: 'BDF=$(vm_virtiofs_bdf) || exit 1',
  /** Prints the driver bound to $BDF. */
  driver: 'vm_pci_driver "$BDF"',
  /** Unbinds $BDF from virtio_pci, binds uio_pci_generic; sets UIO=/dev/uioN. */
  bindUio: 'UIO=$(vm_bind_uio "$BDF") || exit 1',
  /**
   * Binds $BDF to vfio-pci; sets VFIO=/dev/vfio/noiommu-N (iommu 'none': the rebuilt vfio.ko is
   * loaded with enable_unsafe_noiommu_mode=1 first) or /dev/vfio/N (iommu 'intel').
   */
  bindVfio: 'VFIO=$(vm_bind_vfio "$BDF") || exit 1',
  /** Mounts the device with the guest kernel's own virtiofs driver (while bound to virtio_pci). */
  mountVirtiofs: (dir: string) => `vm_mount_virtiofs ${shellQuote(dir)} || exit 1`,
  /**
   * Sets BDF to the address of reference-device function `n` (RunInGuestOptions.referenceDevice;
   * 0 is the usual function, the same as findVirtiofsBdf).
   */
  findReferenceBdf: (n: number) => `BDF=$(vm_reference_bdf ${n}) || exit 1`,
  /** Mounts the hostView function (RunInGuestOptions.hostView) with the guest kernel's virtiofs driver. */
  mountHostView: (dir: string) => `vm_mount_hostview ${shellQuote(dir)} || exit 1`,
} as const;

export interface VmArtifacts {
  kernelPackage: string;
  kernelVersion: string;
  /** uname -r in the guest. */
  kernelRelease: string;
  /** Holds lib/modules/<kernelRelease>, depmod'ed (modprobe -d). */
  modRoot: string;
  vmlinux: string;
  initrd: string;
  /** vfio.ko built with CONFIG_VFIO_NOIOMMU. */
  vfioNoiommuKo: string;
  /** The build cache (holds build.json and the guest lock). */
  cacheDir: string;
}

export interface RunInGuestOptions {
  /** Shell script run as root inside the guest by /bin/bash, cwd = this checkout. */
  script: string;
  /** The virtio-fs device's directory (what virtiofsd serves). */
  sharedDir: string;
  /** 'intel': QEMU's emulated VT-d (intel_iommu=on) gives vfio a real group. Default 'none'. */
  iommu?: 'none' | 'intel';
  virtiofsdOptions?: Omit<Partial<VirtiofsdOptions>, 'sharedDir' | 'socketPath'>;
  /** Cap on the whole run, from QEMU's start (the guest lock held) to its exit. Default 600 s. */
  timeoutMs?: number;
  /** Deadline of each step before the calibration: QEMU start, kernel, init, calibration. Default 60 s. */
  bootStepMs?: number;
  /** The least deadline of a calibrated step. Default 40 s. */
  stepFloorMs?: number;
  /** Deadline, in calibrations, of a step that names no budget (and of the script before its first step). Default 10. */
  defaultBudget?: number;
  /** How long to wait for the guest lock (another guest running). Default 20 min. */
  lockWaitMs?: number;
  /** Who runs this guest, for the lock's holder description (e.g. the test's title). */
  label?: string;
  /**
   * Called with a time limit for the caller's own timeout (ava's t.timeout): first covering the
   * artifact build and the wait for the guest lock, then, once the guest holds it, the run's cap.
   */
  onTimeout?: (ms: number, why: string) => void;
  /** Exported to the script. */
  env?: Record<string, string>;
  /** The virtio-fs tag. Default 'vfs'. */
  tag?: string;
  /** Guest memory (memfd-backed, shared with virtiofsd). Default 1024. */
  memoryMiB?: number;
  /** 2 MiB hugepages reserved at boot (for UIO DMA). Default 16. */
  hugepages?: number;
  /**
   * Host directories the guest must see although they lie under /tmp, /run, /var/tmp or /root (which
   * the guest covers with tmpfs): bound back read-only. The checkout and the build cache always are.
   */
  hostPaths?: string[];
  /** More kernel command line parameters. */
  kernelArgs?: string[];
  /** More QEMU arguments (e.g. another -device). */
  qemuArgs?: string[];
  /**
   * Puts the virtio-fs function behind a PCIe-to-PCI bridge (id 'fsbridge'): with an IOMMU, every
   * function behind it shares one group, so another device there (qemuArgs: -device ...,bus=fsbridge)
   * makes the group not viable until that device is unbound.
   */
  fsBehindBridge?: boolean;
  /**
   * A second virtio-fs function on the same shared directory (tag 'hostview', at 0000:00:10.0, its
   * own virtiofsd with cache=none and virtiofsdOptions otherwise): mounted by the guest kernel
   * (vm_mount_hostview), it is a view of the host's files beside the mount under test.
   * vm_virtiofs_bdf never names it.
   */
  hostView?: boolean;
  /**
   * The function under test is served by the reference device (examples/reference-device/main.ts
   * --queues `queues`) in front of its virtiofsd, and offers `queues` request queues
   * (num-request-queues): QEMU 7.2's virtiofsds refuse a second request queue. The reference device
   * serves one FUSE session per process (a second FUSE_INIT fails), so a boot that needs several
   * sessions asks for `functions` (default 1) such functions, each with its own virtiofsd and
   * reference device on sharedDir: function 0 is the usual one (tag `tag`, findVirtiofsBdf), function
   * n > 0 has tag `${tag}${n}` and sits at 0000:00:(0x10 + n).0 (findReferenceBdf(n)). `args`: more
   * reference-device arguments. What each device printed is in GuestRun.referenceDeviceOutput.
   */
  referenceDevice?: { queues: number; functions?: number; args?: string[] };
  /** Every console line as it arrives (kernel messages included). */
  onConsole?: (line: string) => void;
}

export interface GuestRun {
  /** The script's exit status. */
  exitCode: number;
  /** What the script printed (stdout and stderr, interleaved as on the console), without step markers. */
  output: string;
  /** The whole serial console: firmware, kernel messages, markers. */
  console: string;
  /** Whole run: virtiofsd start to QEMU exit (the wait for the guest lock not included). */
  durationMs: number;
  /** QEMU start to the script's start. */
  bootMs: number;
  /** The guest's first `node -e 0`, ms: the unit of the steps' budgets. */
  calibrationMs: number;
  /** Every step: boot phases, calibration, the script's vm_step steps, poweroff. */
  steps: GuestStep[];
  /** Waiting for the guest lock (another guest was running). */
  lockWaitMs: number;
  accelerator: Accelerator;
  artifacts: VmArtifacts;
  /** RunInGuestOptions.referenceDevice: each function's device's output lines (stdout and stderr), once it exited. */
  referenceDeviceOutput: string[][];
}

/** The guest never reported the script's exit status (deadline, init failure, QEMU failure). */
export class GuestError extends Error {
  constructor(
    message: string,
    readonly console: string,
    /** The steps up to the failure. */
    readonly steps: GuestStep[] = [],
    /** Set when a deadline ended the run. */
    readonly expiry?: StepExpiry,
    /** Where the console's tail in the message ends (before a blocked-task dump). */
    tailEnd = console.length,
  ) {
    super(
      [
        message,
        ...(steps.length ? ['--- steps (ms, deadline ms, QEMU CPU-s/s) ---', formatSteps(steps)] : []),
        '--- guest console (last lines) ---',
        console.slice(0, tailEnd).split('\n').slice(-40).join('\n'),
      ].join('\n'),
    );
    this.name = 'GuestError';
  }
}

export function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

let building: Promise<VmArtifacts> | undefined;

/**
 * Builds the kernel, initramfs and no-IOMMU vfio.ko when missing (scripts/vm/build.sh: about 30 s and
 * 230 MB of downloads the first time, milliseconds after), once per process.
 */
export function ensureVmArtifacts(): Promise<VmArtifacts> {
  building ??= new Promise<VmArtifacts>((resolvePromise, reject) => {
    execFile('bash', [VM_BUILD_SCRIPT], { maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      if (error) {
        reject(new Error(`${VM_BUILD_SCRIPT} failed (${error.message.split('\n')[0]}):\n${stderr.slice(-4000)}`));
        return;
      }
      try {
        const manifest = stdout.trim().split('\n').at(-1)!;
        const artifacts = JSON.parse(readFileSync(manifest, 'utf8')) as Omit<VmArtifacts, 'cacheDir'>;
        resolvePromise({ ...artifacts, cacheDir: dirname(manifest) });
      } catch (e) {
        reject(e as Error);
      }
    });
  });
  building.catch(() => (building = undefined));
  return building;
}

/** QEMU processes still running, killed if this process exits first (e.g. ava's timeout). */
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
  live.add(child);
  child.once('exit', () => live.delete(child));
}

/** How many guests of this process are running. */
export function runningGuests(): number {
  return live.size;
}

// Console markers printed by scripts/vm/init.sh, each followed by the run's random token.
const BEGIN = '@@VIRTIOFS-VM-BEGIN';
const EXIT = '@@VIRTIOFS-VM-EXIT';
const FAIL = '@@VIRTIOFS-VM-FAIL';
/** Printed by SeaBIOS when it hands over to the kernel (PVH boot of the vmlinux). */
const FIRMWARE_DONE = 'Booting from ROM';
/** Build and lock wait, for the caller's timeout before the guest starts. */
const BUILD_ALLOWANCE_MS = 10 * 60_000;
/** The caller's timeout beyond the cap: virtiofsd's stop, clean-up, assertions. */
const TEARDOWN_ALLOWANCE_MS = 30_000;
const WATCH_MS = 500;
/** QEMU's -nographic console multiplexer: Ctrl-A b sends a break on the serial line. */
const SERIAL_BREAK = '\x01b';
/** How long a stuck guest's kernel gets to print its blocked tasks before QEMU is killed. */
const BLOCKED_DUMP_MS = 4000;

/** The guest kernel's blocked-task dump (SysRq w), printed after `from`, for the error message. */
function blockedTasks(consoleText: string, from: number): string {
  if (from < 0) return '';
  const dump = consoleText
    .slice(from)
    .split('\n')
    .map((l) => l.replace(/^\[\s*\d+\.\d+\] /, ''));
  const start = dump.findIndex((l) => /sysrq: Show Blocked State/.test(l));
  if (start < 0) return '\n(no blocked-task dump from the guest kernel)';
  // The tasks and their call chains; not the registers, nor the '?' (unreliable) frames.
  const lines = dump.slice(start).filter((l) => /^(sysrq:|task:)/.test(l) || /^ [\w.]+\+0x/.test(l));
  return `\n--- guest kernel: blocked tasks (SysRq w) ---\n${lines.slice(0, 120).join('\n')}${lines.length > 120 ? '\n...' : ''}`;
}

/** QEMU's user + system CPU time, ms (/proc/PID/stat, in USER_HZ = 100 ticks per second). */
function processCpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return undefined;
  }
}

/** Boots the guest, runs `options.script` in it, and returns its exit status, output and steps. */
export async function runInGuest(options: RunInGuestOptions): Promise<GuestRun> {
  const lockWaitMs = options.lockWaitMs ?? 20 * 60_000;
  const capMs = options.timeoutMs ?? 600_000;
  options.onTimeout?.(BUILD_ALLOWANCE_MS + lockWaitMs + capMs + TEARDOWN_ALLOWANCE_MS, 'building the VM artifacts and waiting for the guest lock');
  requireFreshDist();
  const artifacts = await ensureVmArtifacts();
  const iommu = options.iommu ?? 'none';
  const tag = options.tag ?? 'vfs';
  const reference = options.referenceDevice;
  const functions = reference ? (reference.functions ?? 1) : 1;
  if (reference && (!Number.isInteger(reference.queues) || reference.queues < 1 || !Number.isInteger(functions) || functions < 1 || functions > 8)) {
    throw new Error(`referenceDevice: ${reference.queues} queues, ${functions} functions (1.., 1..8)`);
  }
  const extraBdfs = Array.from({ length: functions - 1 }, (_, i) => `0000:00:${(EXTRA_FUNCTION_SLOT + i).toString(16)}.0`);
  const memoryMiB = options.memoryMiB ?? 1024;
  const policy: StepPolicy = {
    bootStepMs: options.bootStepMs ?? 60_000,
    stepFloorMs: options.stepFloorMs ?? 40_000,
    defaultBudget: options.defaultBudget ?? 10,
    poweroffMs: 30_000,
    capMs,
  };
  const keep = [dirname(artifacts.modRoot), ...(options.hostPaths ?? []).map((p) => resolve(p))];
  for (const p of [REPO_ROOT, ...keep]) {
    // They travel on the kernel command line, which splits at spaces; vm.keep= splits at commas.
    if (/[\s,]/.test(p)) throw new Error(`the guest cannot see ${p}: no spaces or commas in its paths, please`);
  }

  if (/\s/.test(tmpdir())) throw new Error(`the guest cannot read its script from ${tmpdir()}: no spaces in TMPDIR, please`);
  const work = mkdtempSync(join(tmpdir(), 'virtiofs-vm-'));
  const token = randomBytes(8).toString('hex');
  const scriptPath = join(work, 'script.sh');
  const env: Record<string, string> = {
    VM_MODROOT: artifacts.modRoot,
    VM_KREL: artifacts.kernelRelease,
    VM_VFIO_NOIOMMU_KO: artifacts.vfioNoiommuKo,
    VM_IOMMU: iommu,
    VM_VIRTIOFS_TAG: tag,
    ...(options.hostView ? { VM_HOSTVIEW_BDF: HOSTVIEW_BDF } : {}),
    ...(extraBdfs.length ? { VM_EXTRA_VIRTIOFS_BDFS: extraBdfs.join(' ') } : {}),
    VM_TOKEN: token,
    VM_NODE_TS: GUEST_NODE.ts,
    VM_CLI: GUEST_NODE.cli,
    ...options.env,
  };
  writeFileSync(
    scriptPath,
    [
      ...Object.entries(env).map(([k, v]) => `export ${k}=${shellQuote(v)}`),
      `. ${shellQuote(GUEST_LIB)}`,
      // The calibration: the guest's first node start (node and its libraries cold in the 9p cache).
      `vm_step ${CALIBRATION_STEP}`,
      'node -e 0 || { echo "node does not start in the guest" >&2; exit 125; }',
      'vm_step script',
      options.script,
      '',
    ].join('\n'),
  );

  let lock: GuestLock | undefined;
  let daemon: Virtiofsd | undefined;
  let hostView: Virtiofsd | undefined;
  /** referenceDevice: function n's virtiofsd (0 is `daemon`) and reference device. */
  const extraDaemons: Virtiofsd[] = [];
  const devices: ReferenceDeviceProcess[] = [];
  let qemu: ChildProcess | undefined;
  let watch: NodeJS.Timeout | undefined;
  try {
    const label = `${options.label ?? 'a guest'} (iommu ${iommu})`;
    lock = await acquireGuestLock(join(artifacts.cacheDir, 'guest.lock'), label, lockWaitMs);
    options.onTimeout?.(capMs + TEARDOWN_ALLOWANCE_MS, `the guest's cap of ${capMs} ms`);
    const started = Date.now();
    const accelerator = guestAccelerator();
    daemon = await Virtiofsd.start({ ...options.virtiofsdOptions, sharedDir: options.sharedDir, socketPath: join(work, 'vhost.sock') });
    if (options.hostView) {
      hostView = await Virtiofsd.start({ ...options.virtiofsdOptions, cache: 'none', sharedDir: options.sharedDir, socketPath: join(work, 'hostview.sock') });
    }
    /** The vhost-user socket of each function under test. */
    const fsSockets = [daemon.socketPath];
    if (reference) {
      for (let n = 1; n < functions; n++) {
        extraDaemons.push(await Virtiofsd.start({ ...options.virtiofsdOptions, sharedDir: options.sharedDir, socketPath: join(work, `vhost${n}.sock`) }));
      }
      const backends = [daemon, ...extraDaemons];
      for (const [n, backend] of backends.entries()) {
        devices.push(await startReferenceDevice(backend.socketPath, join(work, `refdev${n}.sock`), ['--queues', String(reference.queues), ...(reference.args ?? [])]));
      }
      fsSockets.splice(0, 1, ...devices.map((d) => d.socket));
    }
    const queuesArg = reference ? `,num-request-queues=${reference.queues}` : '';
    const append = [
      'console=ttyS0',
      'panic=-1',
      'quiet',
      'mitigations=off',
      `hugepages=${options.hugepages ?? 16}`,
      'sysrq_always_enabled', // for the blocked-task dump of a stuck guest
      ...(iommu === 'intel' ? ['intel_iommu=on'] : []),
      ...(options.kernelArgs ?? []),
      `vm.script=${scriptPath}`,
      `vm.cwd=${REPO_ROOT}`,
      `vm.keep=${keep.join(',')}`,
      `vm.token=${token}`,
    ];
    const args = [
      '-machine', iommu === 'intel' ? 'q35,kernel-irqchip=split' : 'q35',
      '-accel', accelerator.accel,
      '-cpu', accelerator.cpu,
      '-smp', '2',
      '-m', `${memoryMiB}M`,
      '-nographic',
      '-vga', 'none',
      '-no-reboot',
      '-nic', 'none',
      // The IOMMU has to exist before the PCI devices it translates for.
      ...(iommu === 'intel' ? ['-device', 'intel-iommu,intremap=on'] : []),
      // vhost-user: virtiofsd maps all guest memory, so it must be a shared, fd-backed object.
      '-object', `memory-backend-memfd,id=mem,size=${memoryMiB}M,share=on`,
      '-numa', 'node,memdev=mem',
      '-chardev', `socket,id=c0,path=${fsSockets[0]}`,
      ...(options.fsBehindBridge ? ['-device', 'pcie-pci-bridge,id=fsbridge'] : []),
      '-device', `vhost-user-fs-pci,chardev=c0,tag=${tag}${queuesArg}${options.fsBehindBridge ? ',bus=fsbridge,addr=1' : ''}`,
      ...fsSockets.slice(1).flatMap((path, i) => [
        '-chardev', `socket,id=f${i + 1},path=${path}`,
        '-device', `vhost-user-fs-pci,chardev=f${i + 1},tag=${tag}${i + 1}${queuesArg},addr=0x${(EXTRA_FUNCTION_SLOT + i).toString(16)}`,
      ]),
      ...(hostView ? ['-chardev', `socket,id=c1,path=${hostView.socketPath}`, '-device', `vhost-user-fs-pci,chardev=c1,tag=hostview,addr=0x${HOSTVIEW_BDF.slice(8, 10)}`] : []),
      '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
      '-kernel', artifacts.vmlinux,
      '-initrd', artifacts.initrd,
      '-append', append.join(' '),
      ...(options.qemuArgs ?? []),
    ];

    const clock = new StepClock(policy);
    let bootMs = -1;
    let blockedFrom = -1;
    let exitSeen = false;
    let consoleText = '';
    let partial = '';
    // stdin: the serial line's input, used only to ask a stuck guest's kernel for its blocked tasks.
    const child = spawn(process.env.QEMU_SYSTEM_X86_64 ?? 'qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdin!.on('error', () => {}); // QEMU gone
    qemu = child;
    track(child);
    const onLine = (line: string) => {
      const marker = parseStepMarker(line, token);
      if (marker) clock.begin(marker.name, marker.budget);
      else if (line.includes(`${BEGIN} ${token}`)) {
        bootMs = clock.elapsed();
        clock.begin('bash');
      } else if (!exitSeen && line.includes(`${EXIT} ${token}`)) {
        exitSeen = true;
        clock.begin('poweroff');
      }
      options.onConsole?.(line);
    };
    const onData = (chunk: Buffer) => {
      // The serial line ends lines with CRLF; SeaBIOS clears the screen with escape sequences.
      const text = chunk.toString('latin1').replace(/\r/g, '').replace(/\x1b(\[[0-9;?]*[A-Za-z]|c)/g, '');
      if (!text) return;
      if (consoleText === '' && clock.running === 'qemu') clock.begin('firmware');
      consoleText += text;
      clock.output();
      // Not a line of its own: the kernel's first output follows on the same line.
      if (clock.running === 'firmware' && consoleText.includes(FIRMWARE_DONE)) clock.begin('kernel');
      const lines = (partial + text).split('\n');
      partial = lines.pop()!;
      for (const line of lines) onLine(line);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);

    let expiry: StepExpiry | undefined;
    let dumpAt = -1;
    watch = setInterval(() => {
      const cpu = processCpuMs(child.pid);
      if (cpu !== undefined) clock.cpu(cpu);
      if (expiry) {
        if (Date.now() - dumpAt >= BLOCKED_DUMP_MS) child.kill('SIGKILL');
        return;
      }
      expiry = clock.expiry();
      if (!expiry) return;
      if (expiry.verdict === 'stuck') {
        // Where is it stuck? A serial break then a key is the kernel's magic SysRq: '9' raises the
        // console loglevel, 'w' lists the blocked (D state) tasks with their stacks. QEMU dies shortly after.
        dumpAt = Date.now();
        blockedFrom = consoleText.length;
        child.stdin!.write(`${SERIAL_BREAK}9`);
        setTimeout(() => child.stdin!.write(`${SERIAL_BREAK}w`), 500); // one SysRq per break
      } else child.kill('SIGKILL');
    }, WATCH_MS);
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>((done) => {
      child.once('error', (error) => done({ code: null, signal: null, error }));
      child.once('close', (code, signal) => done({ code, signal }));
    });
    clearInterval(watch);
    if (partial) onLine(partial);
    const steps = clock.finish(expiry ? `killed: ${expiry.kind === 'cap' ? 'run cap' : 'deadline'} (${expiry.verdict})` : undefined);

    const fail = consoleText.match(new RegExp(`${FAIL} ${token} (.*)`));
    if (fail) throw new GuestError(`the guest's init failed: ${fail[1]}`, consoleText, steps);
    const end = consoleText.match(new RegExp(`${EXIT} ${token} (\\d+)`));
    if (!end) {
      const why = exit.error
        ? `QEMU did not start: ${exit.error.message}`
        : expiry
          ? `no exit status: ${expiry.message}\nQEMU killed (${accelerator.why})${blockedTasks(consoleText, blockedFrom)}`
          : `QEMU exited (${exit.signal ?? exit.code}) before the script reported its exit status`;
      const deviceOutput = devices.map((d, n) => `\nreference device ${n} said:\n${d.output.slice(-20).join('\n')}`).join('');
      throw new GuestError(`${why}\nvirtiofsd said:\n${daemon.recentOutput()}${deviceOutput}`, consoleText, steps, expiry, blockedFrom < 0 ? undefined : blockedFrom);
    }
    // Each device exits by itself once QEMU (its frontend) is gone, after logging what it served.
    const referenceDeviceOutput = await Promise.all(devices.map(async (d) => (await d.finish(), d.output)));
    const beginAt = consoleText.indexOf(`${BEGIN} ${token}`);
    const outputStart = consoleText.indexOf('\n', beginAt) + 1;
    const calibration = steps.find((s) => s.name === CALIBRATION_STEP);
    return {
      exitCode: Number(end[1]),
      output: consoleText
        .slice(outputStart, Math.max(outputStart, end.index!))
        .split('\n')
        .filter((line) => !parseStepMarker(line, token))
        .join('\n'),
      console: consoleText,
      durationMs: Date.now() - started,
      bootMs,
      calibrationMs: clock.calibrationMs ?? calibration?.ms ?? -1,
      steps,
      lockWaitMs: lock.waitedMs,
      accelerator,
      artifacts,
      referenceDeviceOutput,
    };
  } finally {
    clearInterval(watch);
    if (qemu && qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
    for (const d of devices) await d.finish();
    await daemon?.stop();
    for (const d of extraDaemons) await d.stop();
    await hostView?.stop();
    lock?.release();
    rmSync(work, { recursive: true, force: true });
  }
}

interface ReferenceDeviceProcess {
  socket: string;
  /** Every line it printed, stdout and stderr. */
  output: string[];
  /** Waits for it to exit (it does once its frontend hangs up), killing it after REFERENCE_DEVICE_EXIT_MS. */
  finish(): Promise<void>;
}

/** How long a reference device may take to start listening (a tsx start on the host), and to exit. */
const REFERENCE_DEVICE_START_MS = 30_000;
const REFERENCE_DEVICE_EXIT_MS = 10_000;

/** Starts the reference device on `socket` in front of `backendSocket`; resolves once it listens. */
async function startReferenceDevice(backendSocket: string, socket: string, args: string[]): Promise<ReferenceDeviceProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', REFERENCE_DEVICE_MAIN, '--socket', socket, '--backend', `vhost-user:${backendSocket}`, ...args], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  track(child);
  const output: string[] = [];
  const exited = new Promise<void>((done) => child.once('close', () => done()));
  let partial = '';
  const collect = (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop()!;
    output.push(...lines.filter((l) => l));
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
  void exited.then(() => partial && output.push(partial));
  const finish = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const timer = setTimeout(() => child.kill('SIGKILL'), REFERENCE_DEVICE_EXIT_MS);
      await exited;
      clearTimeout(timer);
    } else await exited;
  };
  const listening = await new Promise<boolean>((done) => {
    const timer = setTimeout(() => done(false), REFERENCE_DEVICE_START_MS);
    const look = () => {
      if (output.some((l) => l.includes('listening on'))) {
        clearTimeout(timer);
        done(true);
      }
    };
    child.stdout!.on('data', look);
    void exited.then(() => {
      clearTimeout(timer);
      done(false);
    });
  });
  if (!listening) {
    child.kill('SIGKILL');
    await exited;
    throw new Error(`the reference device did not listen on ${socket} within ${REFERENCE_DEVICE_START_MS} ms:\n${output.join('\n')}`);
  }
  return { socket, output, finish };
}

/**
 * One guest run shared by the tests of a file that check different things of the same boot: the
 * first call starts it, every test awaits the same result. Each test's ava timeout follows the run
 * (long while it waits for its turn, then the run's cap), so none fires while merely waiting.
 */
export function sharedGuestRun(options: RunInGuestOptions): (t: ExecutionContext) => Promise<GuestRun> {
  const tests = new Set<ExecutionContext>();
  let limit: { until: number; why: string } | undefined;
  let run: Promise<GuestRun> | undefined;
  return (t) => {
    tests.add(t);
    if (limit) t.timeout(Math.max(1, limit.until - Date.now()), limit.why);
    run ??= runInGuest({
      label: t.title,
      ...options,
      onTimeout: (ms, why) => {
        limit = { until: Date.now() + ms, why };
        for (const each of tests) each.timeout(ms, `timed out ${why}`);
        options.onTimeout?.(ms, why);
      },
    });
    return run;
  };
}

/** The run's timing, for t.log: the accelerator, the lock wait, then one line per step. */
export function describeTiming(run: GuestRun): string {
  return [
    `${run.accelerator.why}; waited ${run.lockWaitMs} ms for the guest lock; boot ${run.bootMs} ms, calibration ${run.calibrationMs} ms, whole run ${run.durationMs} ms`,
    formatSteps(run.steps),
  ].join('\n');
}

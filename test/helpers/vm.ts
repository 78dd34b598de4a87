/**
 * Runs a shell script inside a QEMU guest that has a real virtio-fs PCI function: QEMU's
 * vhost-user-fs-pci backed by virtiofsd on the host (test-beds notes, section 2). No KVM here: TCG.
 *
 * The guest boots Debian's kernel with the initramfs of scripts/vm/build.sh (built once into
 * node_modules/.cache/virtiofs-vm), mounts the host's root read-only over 9p, puts tmpfs on /tmp /run
 * /var/tmp /root, and runs the script as root with /bin/bash in this checkout, then powers off. The
 * script's exit status comes back over the serial console.
 *
 * Inside, no udev runs: scripts/vm/guest-lib.sh (sourced before the script) loads modules from the
 * extracted tree and rebinds the device to uio_pci_generic or vfio-pci; see GUEST_SH below.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Virtiofsd, type VirtiofsdOptions } from '../../client/backends/virtiofsd.ts';

/** The checkout the guest runs scripts in (seen through the 9p host root). */
export const REPO_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const VM_BUILD_SCRIPT = join(REPO_ROOT, 'scripts/vm/build.sh');
/** Sourced before every guest script; its functions are listed in GUEST_SH. */
export const GUEST_LIB = join(REPO_ROOT, 'scripts/vm/guest-lib.sh');

/**
 * Guest-side shell snippets (the functions of scripts/vm/guest-lib.sh), to paste into a script.
 * Each prints its result on stdout and fails (non-zero, message on stderr) otherwise.
 */
export const GUEST_SH = {
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
}

export interface RunInGuestOptions {
  /** Shell script run as root inside the guest by /bin/bash, cwd = this checkout. */
  script: string;
  /** The virtio-fs device's directory (what virtiofsd serves). */
  sharedDir: string;
  /** 'intel': QEMU's emulated VT-d (intel_iommu=on) gives vfio a real group. Default 'none'. */
  iommu?: 'none' | 'intel';
  virtiofsdOptions?: Omit<Partial<VirtiofsdOptions>, 'sharedDir' | 'socketPath'>;
  /** Kills QEMU after this long (boot included). Default 90 s. */
  timeoutMs?: number;
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
  /** Every console line as it arrives (kernel messages included). */
  onConsole?: (line: string) => void;
}

export interface GuestRun {
  /** The script's exit status. */
  exitCode: number;
  /** What the script printed (stdout and stderr, interleaved as on the console). */
  output: string;
  /** The whole serial console: firmware, kernel messages, markers. */
  console: string;
  /** Whole run: virtiofsd start to QEMU exit. */
  durationMs: number;
  /** QEMU start to the script's start. */
  bootMs: number;
  artifacts: VmArtifacts;
}

/** The guest never reported the script's exit status (timeout, init failure, QEMU failure). */
export class GuestError extends Error {
  constructor(
    message: string,
    readonly console: string,
  ) {
    super(`${message}\n--- guest console (last lines) ---\n${console.split('\n').slice(-40).join('\n')}`);
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
        resolvePromise(JSON.parse(readFileSync(stdout.trim().split('\n').at(-1)!, 'utf8')) as VmArtifacts);
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

/** Boots the guest, runs `options.script` in it, and returns its exit status and output. */
export async function runInGuest(options: RunInGuestOptions): Promise<GuestRun> {
  const artifacts = await ensureVmArtifacts();
  const started = Date.now();
  const iommu = options.iommu ?? 'none';
  const tag = options.tag ?? 'vfs';
  const memoryMiB = options.memoryMiB ?? 1024;
  const timeoutMs = options.timeoutMs ?? 90_000;
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
    ...options.env,
  };
  writeFileSync(
    scriptPath,
    [
      ...Object.entries(env).map(([k, v]) => `export ${k}=${shellQuote(v)}`),
      `. ${shellQuote(GUEST_LIB)}`,
      options.script,
      '',
    ].join('\n'),
  );

  let daemon: Virtiofsd | undefined;
  let qemu: ChildProcess | undefined;
  try {
    daemon = await Virtiofsd.start({ ...options.virtiofsdOptions, sharedDir: options.sharedDir, socketPath: join(work, 'vhost.sock') });
    const append = [
      'console=ttyS0',
      'panic=-1',
      'quiet',
      'mitigations=off',
      `hugepages=${options.hugepages ?? 16}`,
      ...(iommu === 'intel' ? ['intel_iommu=on'] : []),
      ...(options.kernelArgs ?? []),
      `vm.script=${scriptPath}`,
      `vm.cwd=${REPO_ROOT}`,
      `vm.keep=${keep.join(',')}`,
      `vm.token=${token}`,
    ];
    const args = [
      '-machine', iommu === 'intel' ? 'q35,kernel-irqchip=split' : 'q35',
      '-accel', 'tcg',
      '-cpu', 'max',
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
      '-chardev', `socket,id=c0,path=${daemon.socketPath}`,
      '-device', `vhost-user-fs-pci,chardev=c0,tag=${tag}`,
      '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
      '-kernel', artifacts.vmlinux,
      '-initrd', artifacts.initrd,
      '-append', append.join(' '),
      ...(options.qemuArgs ?? []),
    ];

    const qemuStarted = Date.now();
    let bootMs = -1;
    let consoleText = '';
    let partial = '';
    const child = spawn(process.env.QEMU_SYSTEM_X86_64 ?? 'qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    qemu = child;
    track(child);
    const onData = (chunk: Buffer) => {
      // The serial line ends lines with CRLF; SeaBIOS clears the screen with escape sequences.
      const text = chunk.toString('latin1').replace(/\r/g, '').replace(/\x1b(\[[0-9;?]*[A-Za-z]|c)/g, '');
      consoleText += text;
      if (bootMs < 0 && consoleText.includes(`${BEGIN} ${token}`)) bootMs = Date.now() - qemuStarted;
      if (options.onConsole) {
        const lines = (partial + text).split('\n');
        partial = lines.pop()!;
        for (const line of lines) options.onConsole(line);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);

    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>((done) => {
      child.once('error', (error) => done({ code: null, signal: null, error }));
      child.once('close', (code, signal) => done({ code, signal }));
    });
    clearTimeout(timer);
    if (options.onConsole && partial) options.onConsole(partial);

    const fail = consoleText.match(new RegExp(`${FAIL} ${token} (.*)`));
    if (fail) throw new GuestError(`the guest's init failed: ${fail[1]}`, consoleText);
    const end = consoleText.match(new RegExp(`${EXIT} ${token} (\\d+)`));
    if (!end) {
      const why = exit.error
        ? `QEMU did not start: ${exit.error.message}`
        : timedOut
          ? `no exit status after ${timeoutMs} ms (QEMU killed)`
          : `QEMU exited (${exit.signal ?? exit.code}) before the script reported its exit status`;
      throw new GuestError(`${why}; virtiofsd said:\n${daemon.recentOutput()}`, consoleText);
    }
    const beginAt = consoleText.indexOf(`${BEGIN} ${token}`);
    const outputStart = consoleText.indexOf('\n', beginAt) + 1;
    return {
      exitCode: Number(end[1]),
      output: consoleText.slice(outputStart, Math.max(outputStart, end.index!)),
      console: consoleText,
      durationMs: Date.now() - started,
      bootMs,
      artifacts,
    };
  } finally {
    if (qemu && qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
    await daemon?.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

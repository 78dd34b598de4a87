/**
 * Starts and stops QEMU's virtiofsd (Debian: qemu-system-common) on a
 * directory: the real vhost-user device backend used by the demo, examples and
 * tests. virtiofsd serves one connection and exits when it closes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const DEFAULT_VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

export interface VirtiofsdOptions {
  /** The directory the device exports. */
  sharedDir: string;
  /** Where to listen; default: a fresh temporary directory's `vhost.sock`. */
  socketPath?: string;
  /** chroot works anywhere root does; namespace needs unshare rights. */
  sandbox?: 'chroot' | 'namespace';
  cache?: 'auto' | 'always' | 'none';
  xattr?: boolean;
  posixLock?: boolean;
  flock?: boolean;
  allowDirectIo?: boolean;
  writeback?: boolean;
  /**
   * C virtiofsd only: --thread-pool-size, the threads that serve requests (0, its default: the
   * queue's own thread serves each request before taking the next).
   */
  threadPoolSize?: number;
  /** virtiofsd -d: logs every request with its flags (to `onLog`). */
  debug?: boolean;
  /**
   * Whose command line the binary takes: 'c' (QEMU's C virtiofsd, `-o` options; the default) or
   * 'rust' (the Rust virtiofsd of virtio-fs/virtiofsd, Debian trixie's `virtiofsd`: `--option`s).
   * The Rust one has no POSIX or flock lock support: posixLock and flock are not passed to it, and
   * it answers lock requests with ENOSYS (the kernel then keeps locks local).
   */
  flavor?: 'c' | 'rust';
  /** Binary; default $VIRTIOFSD or /usr/lib/qemu/virtiofsd. */
  binary?: string;
  /** Runs the binary through this command (e.g. a qemu-user loader line). */
  launcher?: string[];
  /** Every line virtiofsd prints. */
  onLog?: (line: string) => void;
  /** How long to wait for the socket to appear. */
  startTimeoutMs?: number;
}

export class Virtiofsd {
  /** Resolves when the process has exited, with its exit code or signal. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly output: string[] = [];

  private constructor(
    private readonly child: ChildProcess,
    readonly socketPath: string,
    private readonly ownedDir: string | undefined,
    onLog: ((line: string) => void) | undefined,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    const collect = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) {
        if (!line) continue;
        this.output.push(line);
        if (this.output.length > 200) this.output.shift();
        onLog?.(line);
      }
    };
    child.stdout?.on('data', collect);
    child.stderr?.on('data', collect);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** The last lines virtiofsd printed (for error messages). */
  recentOutput(): string {
    return this.output.slice(-20).join('\n');
  }

  static async start(options: VirtiofsdOptions): Promise<Virtiofsd> {
    const binary = options.binary ?? process.env.VIRTIOFSD ?? DEFAULT_VIRTIOFSD;
    if (!options.launcher && !existsSync(binary)) {
      throw Object.assign(new Error(`virtiofsd not found at ${binary}: run bash scripts/setup.sh (installs qemu-system-common)`), {
        code: 'ENOENT',
      });
    }
    if (!statSync(options.sharedDir, { throwIfNoEntry: false })?.isDirectory()) {
      throw Object.assign(new Error(`shared directory ${options.sharedDir} does not exist`), { code: 'ENOENT' });
    }
    const ownedDir = options.socketPath ? undefined : mkdtempSync(join(tmpdir(), 'virtiofsd-'));
    const socketPath = options.socketPath ?? join(ownedDir!, 'vhost.sock');
    rmSync(socketPath, { force: true });

    const args = options.flavor === 'rust' ? rustArguments(options, socketPath) : cArguments(options, socketPath);
    const [cmd, ...pre] = options.launcher ? [...options.launcher, binary] : [binary];
    const child = spawn(cmd!, [...pre, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const daemon = new Virtiofsd(child, socketPath, ownedDir, options.onLog);

    const deadline = Date.now() + (options.startTimeoutMs ?? 10_000);
    let exited = false;
    void daemon.exited.then(() => (exited = true));
    await new Promise<void>((resolve) => child.once('spawn', resolve).once('error', () => resolve()));
    while (!existsSync(socketPath)) {
      if (exited || child.exitCode !== null) {
        daemon.cleanup();
        throw new Error(`virtiofsd exited before listening:\n${daemon.recentOutput()}`);
      }
      if (Date.now() > deadline) {
        await daemon.stop();
        throw new Error(`virtiofsd did not create ${socketPath} in time:\n${daemon.recentOutput()}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return daemon;
  }

  /** Sends a signal (tests use SIGKILL to simulate a dying device). */
  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    this.child.kill(signal);
  }

  /** Stops it (SIGTERM, then SIGKILL after a second) and removes what start() created. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 1000);
      await this.exited;
      clearTimeout(timer);
    }
    this.cleanup();
  }

  private cleanup(): void {
    rmSync(this.socketPath, { force: true });
    if (this.ownedDir) rmSync(this.ownedDir, { recursive: true, force: true });
  }
}

/** QEMU's C virtiofsd: `-o name` options. */
function cArguments(options: VirtiofsdOptions, socketPath: string): string[] {
  const o = (flag: boolean | undefined, on: string, off: string) => (flag === undefined ? [] : ['-o', flag ? on : off]);
  return [
    `--socket-path=${socketPath}`,
    '-o', `source=${options.sharedDir}`,
    '-o', `sandbox=${options.sandbox ?? 'chroot'}`,
    ...(options.cache ? ['-o', `cache=${options.cache}`] : []),
    ...o(options.xattr, 'xattr', 'no_xattr'),
    ...o(options.posixLock, 'posix_lock', 'no_posix_lock'),
    ...o(options.flock, 'flock', 'no_flock'),
    ...o(options.allowDirectIo, 'allow_direct_io', 'no_allow_direct_io'),
    ...o(options.writeback, 'writeback', 'no_writeback'),
    ...(options.threadPoolSize !== undefined ? [`--thread-pool-size=${options.threadPoolSize}`] : []),
    options.debug ? '-d' : '-f',
  ];
}

/** The Rust virtiofsd: `--name[=value]` options (its cache=none is spelled never; xattrs are off unless asked). */
function rustArguments(options: VirtiofsdOptions, socketPath: string): string[] {
  return [
    `--socket-path=${socketPath}`,
    `--shared-dir=${options.sharedDir}`,
    `--sandbox=${options.sandbox ?? 'chroot'}`,
    ...(options.cache ? [`--cache=${options.cache === 'none' ? 'never' : options.cache}`] : []),
    ...(options.xattr ? ['--xattr'] : []),
    ...(options.allowDirectIo ? ['--allow-direct-io'] : []),
    ...(options.writeback ? ['--writeback'] : []),
    ...(options.debug ? ['--log-level=debug'] : []),
  ];
}

// A real local mount for end-to-end tests: QEMU's virtiofsd on a fresh shared
// directory, mounted by the CLI (`virtiofs-client mount`, which returns once the
// mount is ready and keeps the frontend running in a background process), used
// with ordinary shell tools, then unmounted and removed.
//
// The frontend runs in its own process, never in the test's: the kernel's
// requests for a mount are served by that process's event loop, so the tests
// may run synchronous commands (execFileSync/spawnSync) on the mount.
import type { ExecutionContext } from 'ava';
import { spawn, spawnSync, type ChildProcess, type SpawnSyncOptions } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Virtiofsd, type VirtiofsdOptions } from '../../client/backends/virtiofsd.ts';
import { logPath } from '../../client/frontend/control.ts';
import { mountsAt, unmount } from '../../client/frontend/fuse-mount.ts';
import { rustVirtiofsd } from '../../scripts/rust-virtiofsd/launch.ts';
import { requireRoot } from './virtiofsd.ts';

/**
 * Every frontend the mount suite runs against, each over QEMU 7.2's C virtiofsd, and the relay
 * over Debian trixie's Rust virtiofsd (the one users run today); each test is registered once per entry.
 */
export const FRONTENDS = ['relay', 'fuse-native', 'relay/rust-virtiofsd'] as const;
export type Frontend = (typeof FRONTENDS)[number];

/** What `virtiofs-client mount` needs to select each frontend. */
const FRONTEND_ARGS: Record<Frontend, string[]> = {
  relay: [],
  'fuse-native': ['--frontend', 'fuse-native'],
  'relay/rust-virtiofsd': [],
};

/** The device each entry mounts: QEMU's C virtiofsd, or the Rust one. */
async function backendOf(frontend: Frontend): Promise<Partial<VirtiofsdOptions>> {
  return frontend === 'relay/rust-virtiofsd' ? rustVirtiofsd() : {};
}

/**
 * A test a frontend fails for a documented reason (README, "Frontends"). The
 * test still runs in full and passes only if it fails as documented: one of
 * its failures (assertion message and details, or a thrown error) must match
 * `shows`. A limitation that stops showing fails the test, so the list
 * cannot go stale, and nothing is skipped.
 */
export interface KnownLimitation {
  reason: string;
  shows: RegExp;
}

/** `find -printf %T@` of a time fuse-native carried: milliseconds, then seven zeros (on the mount's side of a diff). */
const MS_TIMES = /^\s*-\s.*\d\.\d{3}0{7}(\D|$)/m;
const LOCKS_LOCAL = 'fuse-native has no lock/flock operation: locks are kept by this machine\'s kernel, the device never sees them';
const RUST_NO_LOCKS = "the Rust virtiofsd has no POSIX or flock lock support (ENOSYS): this machine's kernel keeps the locks, the host never sees them";

/** Per frontend, by test title (as given to the suite, without the frontend prefix). */
export const KNOWN_LIMITATIONS: { [F in Frontend]?: Record<string, KnownLimitation> } = {
  'fuse-native': {
    'cp -a of a tree with symlinks and hard links into the mount and back out: diff -r clean, links kept': {
      reason: 'times are milliseconds in fuse-native\'s stat',
      shows: MS_TIMES,
    },
    'tar round trip preserves mtimes (out of the mount and into it)': {
      reason: 'times are milliseconds in fuse-native\'s stat and utimens',
      shows: MS_TIMES,
    },
    'find and du give the same answers through the mount as on the host': {
      reason: 'times are milliseconds in fuse-native\'s stat',
      shows: MS_TIMES,
    },
    'flock with virtiofsd -o flock: exclusion between processes, and with the host': {
      reason: LOCKS_LOCAL,
      shows: /the lock is held on the device: the host sees it too/,
    },
    'fcntl (POSIX) locks with virtiofsd -o posix_lock: ranges, EAGAIN, F_GETLK, seen by the host': {
      reason: LOCKS_LOCAL,
      shows: /the lock is held on the device: the host conflicts too/,
    },
    'fallocate reserves blocks; a sparse file keeps its hole (SEEK_DATA / SEEK_HOLE)': {
      reason: 'fuse-native has no fallocate operation (EOPNOTSUPP)',
      shows: /fallocate failed: Operation not supported/,
    },
    'permissions are enforced for an unprivileged user (--allow-other)': {
      reason: 'fuse-native does not pass the caller\'s uid/gid: the device gets the frontend\'s (root), so new files are root\'s',
      shows: /a file nobody creates is nobody's on the host[\s\S]*root:root/,
    },
  },
};

KNOWN_LIMITATIONS['relay/rust-virtiofsd'] = {
  'flock with virtiofsd -o flock: exclusion between processes, and with the host': {
    reason: RUST_NO_LOCKS,
    shows: /the lock is held on the device: the host sees it too/,
  },
  'fcntl (POSIX) locks with virtiofsd -o posix_lock: ranges, EAGAIN, F_GETLK, seen by the host': {
    reason: RUST_NO_LOCKS,
    shows: /the lock is held on the device: the host conflicts too/,
  },
};

export function knownLimitation(frontend: Frontend, title: string): KnownLimitation | undefined {
  return KNOWN_LIMITATIONS[frontend]?.[title];
}

/** Runs `test` as an attempt that must fail the way `limitation` says; fails if it passes or fails otherwise. */
export async function expectLimitation(t: ExecutionContext, limitation: KnownLimitation, test: (t: ExecutionContext) => Promise<void>): Promise<void> {
  const attempt = await t.try(test);
  const ansi = /\x1b\[[0-9;]*m/g;
  const failures = attempt.errors.map((e) => {
    const error = e as Error & { formattedDetails?: { label: string; formatted: string }[]; cause?: unknown };
    const details = (error.formattedDetails ?? []).map((d) => `${d.label}\n${d.formatted}`);
    const cause = error.cause instanceof Error ? [error.cause.message] : [];
    return [error.message, ...details, ...cause].join('\n').replace(ansi, '');
  });
  attempt.discard();
  for (const line of attempt.logs) t.log(line);
  if (attempt.passed) {
    t.fail(`the known limitation no longer shows (${limitation.reason}): the test passes; remove it from KNOWN_LIMITATIONS`);
    return;
  }
  t.true(
    failures.some((f) => limitation.shows.test(f)),
    `failed, but not as documented (${limitation.reason}; expected a failure matching ${limitation.shows}):\n${failures.join('\n---\n')}`,
  );
  t.log(`known limitation shows: ${limitation.reason}`);
}

export const CLI = fileURLToPath(new URL('../../bin/virtiofs-client.js', import.meta.url));

export interface MountFixtureOptions {
  /** virtiofsd options for this test (posixLock, flock, xattr, allowDirectIo, cache, ...). */
  virtiofsd?: Omit<Partial<VirtiofsdOptions>, 'sharedDir' | 'socketPath' | 'onLog'>;
  /** mount --allow-other (needed for any user but root to use the mount). */
  allowOther?: boolean;
  /** Further `virtiofs-client mount` options, e.g. ['--arch-mode', 'canonical']. */
  mountArgs?: string[];
  /** Tools the test runs: a missing one fails the test with what to install. */
  tools?: string[];
}

export interface ShResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface ShOptions {
  cwd?: string;
  /** Added to the environment; the fixture's scripts also get $M (mountpoint), $H (host's shared dir), $S (scratch). */
  env?: Record<string, string>;
  input?: string;
  /** Default 60 s: a hung mount fails the test instead of hanging the suite. */
  timeoutMs?: number;
}

/** A process running alongside the test (a lock holder, a long reader). */
export interface Background {
  child: ChildProcess;
  readonly stdout: string;
  readonly stderr: string;
  /** Resolves once the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Whether it has exited. */
  done(): boolean;
  /** Waits until stdout matches `re`; false on timeout or exit first. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<boolean>;
  /** Writes a line to its stdin. */
  send(line: string): void;
}

export interface MountFixture {
  frontend: Frontend;
  /** The shared directory, as the host (virtiofsd) sees it. */
  host: string;
  /** The mountpoint: the same files through our frontend. */
  mnt: string;
  /** A directory outside the mount for sources and copies; removed at the end. */
  scratch: string;
  daemon: Virtiofsd;
  /** The process serving the mount (from `mounted ... (pid N)`). */
  pid: number;
  /** Runs a bash script (set -euo pipefail, cwd scratch); throws with its stderr and the frontend's log on failure. */
  sh(script: string, options?: ShOptions): string;
  /** Runs a bash script and returns what happened, failing or not. */
  run(script: string, options?: ShOptions): ShResult;
  /** Starts a bash script in the background (same environment as `sh`); killed before the unmount if still running. */
  background(script: string, options?: { cwd?: string }): Background;
  /** The frontend's log so far (the background mount's log file). */
  log(): string;
  /** Whether the mountpoint is still listed in /proc/self/mountinfo. */
  isMounted(): boolean;
  /** Whether the frontend process is still alive. */
  frontendAlive(): boolean;
}

/** Runs `bash -c` with strict settings; never throws. */
export function runScript(script: string, options: ShOptions & { cwd: string }): ShResult {
  const spawnOptions: SpawnSyncOptions = {
    cwd: options.cwd,
    input: options.input ?? '',
    env: { ...process.env, ...options.env },
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 60_000,
    killSignal: 'SIGKILL',
    maxBuffer: 64 * 1024 * 1024,
  };
  const r = spawnSync('bash', ['-c', `set -euo pipefail\n${script}`], spawnOptions);
  return {
    status: r.status,
    signal: r.signal,
    stdout: String(r.stdout ?? ''),
    stderr: String(r.stderr ?? '') + (r.error ? `\n(${r.error.message})` : ''),
  };
}

function cli(args: string[], timeoutMs = 30_000): ShResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: timeoutMs, killSignal: 'SIGKILL' });
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: (r.stderr ?? '') + (r.error ? `\n(${r.error.message})` : '') };
}

/** Whether `pid` is a live process (a zombie counts as gone). */
export function processAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

export async function waitFor(condition: () => boolean, timeoutMs: number, intervalMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (condition()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

function tail(text: string, lines = 40): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

/** Lines of a frontend log that are not the usual start-up and shut-down chatter. */
export function unusualLogLines(log: string): string[] {
  return log
    .split('\n')
    .filter(Boolean)
    .filter((l) => !/^(mounted |  |virtiofs-client: .*: unmounted$)/.test(l));
}

/**
 * Gives `fn` its own virtiofsd on a new shared directory, mounted on a new
 * mountpoint by `frontend`. Always unmounts, stops virtiofsd and removes the
 * directories afterwards, also when `fn` fails; fails the test (never skips)
 * when not root or a tool is missing.
 */
export async function withMount(
  t: ExecutionContext,
  frontend: Frontend,
  options: MountFixtureOptions,
  fn: (m: MountFixture) => Promise<void> | void,
): Promise<void> {
  if (!requireRoot(t)) return;
  for (const tool of options.tools ?? []) {
    if (runScript(`command -v ${tool}`, { cwd: '/' }).status !== 0) {
      t.fail(`${tool} is not installed: run bash scripts/setup.sh --for-tests`);
      return;
    }
  }
  const base = mkdtempSync(join(tmpdir(), 'vfs-mount-'));
  const host = join(base, 'shared');
  const mnt = join(base, 'mnt');
  const scratch = join(base, 'scratch');
  for (const d of [host, mnt, scratch]) mkdirSync(d);
  // Other users (the permission tests) must be able to reach the mount and its root.
  for (const d of [base, host, mnt, scratch]) chmodSync(d, 0o755);
  const mountLog = logPath(mnt);
  rmSync(mountLog, { force: true });

  const daemonLog: string[] = [];
  const daemon = await Virtiofsd.start({ cache: 'auto', ...options.virtiofsd, ...(await backendOf(frontend)), sharedDir: host, onLog: (l) => daemonLog.push(l) });
  let daemonExit = '';
  void daemon.exited.then(({ code, signal }) => (daemonExit = ` (exited at ${new Date().toISOString()}: ${signal ?? `status ${code}`})`));
  const log = () => (existsSync(mountLog) ? readFileSync(mountLog, 'utf8') : '');
  const diagnostics = () =>
    `--- frontend log (${mountLog}):\n${tail(log())}\n--- virtiofsd pid ${daemon.pid}${daemonExit}:\n${tail(daemonLog.join('\n'), 15)}`;
  let pid = -1;
  let failure: unknown;
  const env = { M: mnt, H: host, S: scratch };
  const children: Background[] = [];
  try {
    const args = [
      'mount',
      ...FRONTEND_ARGS[frontend],
      '--transport',
      `vhost-user:${daemon.socketPath}`,
      ...(options.allowOther ? ['--allow-other'] : []),
      ...(process.env.VFS_E2E_TRACE ? ['--trace'] : []),
      ...(options.mountArgs ?? []),
      mnt,
    ];
    const mounted = cli(args);
    if (mounted.status !== 0) {
      throw new Error(`virtiofs-client ${args.join(' ')}: status ${mounted.status}\n${mounted.stdout}${mounted.stderr}\n${diagnostics()}`);
    }
    pid = Number(/\(pid (\d+)\)/.exec(mounted.stdout)?.[1] ?? -1);
    if (!(pid > 0)) throw new Error(`mount printed no pid: ${mounted.stdout}`);
    if (mountsAt(mnt).length !== 1) throw new Error(`mount returned but ${mnt} is not in /proc/self/mountinfo`);

    const fixture: MountFixture = {
      frontend,
      host,
      mnt,
      scratch,
      daemon,
      pid,
      run: (script, o = {}) => runScript(script, { cwd: scratch, ...o, env: { ...env, ...o.env } }),
      sh(script, o = {}) {
        const r = runScript(script, { cwd: scratch, ...o, env: { ...env, ...o.env } });
        if (r.status !== 0) {
          throw new Error(`script failed (status ${r.status}${r.signal ? `, ${r.signal}` : ''}):\n${script}\n--- stderr:\n${tail(r.stderr)}\n${diagnostics()}`);
        }
        return r.stdout;
      },
      background(script, o = {}) {
        const b = startBackground(script, o.cwd ?? scratch, env);
        children.push(b);
        return b;
      },
      log,
      isMounted: () => mountsAt(mnt).length > 0,
      frontendAlive: () => processAlive(pid),
    };
    await fn(fixture);
  } catch (e) {
    failure = e;
  } finally {
    for (const b of children) {
      if (!b.done()) b.child.kill('SIGKILL');
      await Promise.race([b.exited, new Promise((r) => setTimeout(r, 5000))]);
    }
    const problems = await cleanUp(mnt, pid, daemon);
    const unusual = unusualLogLines(log());
    const report = diagnostics(); // before the log file goes
    if (mountsAt(mnt).length === 0) {
      rmSync(base, { recursive: true, force: true });
      rmSync(mountLog, { force: true });
    } else {
      problems.push(`${mnt} is still mounted after clean-up: left ${base} in place`);
    }
    if (failure !== undefined || problems.length > 0) t.log(report);
    else if (unusual.length > 0) t.log(`frontend log:\n${unusual.slice(-30).join('\n')}`);
    // A failed assertion throws: everything above is done first. The test's own
    // error comes first; clean-up trouble after it is only logged.
    if (problems.length > 0) {
      if (failure === undefined) t.fail(`clean-up: ${problems.join('; ')}`);
      else t.log(`clean-up: ${problems.join('; ')}`);
    }
  }
  if (failure !== undefined) throw failure;
}

export function startBackground(script: string, cwd: string, env: Record<string, string>): Background {
  const child = spawn('bash', ['-c', `set -euo pipefail\n${script}`], { cwd, env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let exitedYet = false;
  const listeners = new Set<() => void>();
  child.stdout!.setEncoding('utf8').on('data', (c: string) => {
    stdout += c;
    for (const l of listeners) l();
  });
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  child.stdin!.on('error', () => {}); // it may exit before reading
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => {
      exitedYet = true;
      for (const l of listeners) l();
      resolve({ code, signal });
    }),
  );
  return {
    child,
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    exited,
    done: () => exitedYet,
    waitFor(re, timeoutMs = 10_000) {
      return new Promise((resolve) => {
        const check = () => {
          if (re.test(stdout)) finish(true);
          else if (exitedYet) finish(false);
        };
        const timer = setTimeout(() => finish(false), timeoutMs);
        const finish = (ok: boolean) => {
          clearTimeout(timer);
          listeners.delete(check);
          resolve(ok);
        };
        listeners.add(check);
        check();
      });
    },
    send(line) {
      child.stdin!.write(`${line}\n`);
    },
  };
}

/**
 * Unmounts (with the function behind `virtiofs-client unmount`, without paying
 * for another CLI start), waits for the frontend to exit, stops virtiofsd.
 * Returns what went wrong.
 */
async function cleanUp(mnt: string, pid: number, daemon: Virtiofsd): Promise<string[]> {
  const problems: string[] = [];
  try {
    unmount(mnt);
  } catch (e) {
    problems.push(`unmount ${mnt}: ${(e as Error).message}`);
    runScript(`umount -l ${JSON.stringify(mnt)}`, { cwd: '/' });
  }
  if (pid > 0 && !(await waitFor(() => !processAlive(pid), 10_000))) {
    problems.push(`frontend process ${pid} still running 10 s after unmount: killed`);
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  await daemon.stop();
  return problems;
}

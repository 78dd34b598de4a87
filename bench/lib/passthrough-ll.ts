/**
 * libfuse's own C passthrough (passthrough_ll.c from Debian's libfuse3-dev
 * examples), built at bench time into node_modules/.cache and mounted as the
 * "plain FUSE daemon" baseline. Nothing of it is committed here.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { mountsAt, unmount } from '../../client/frontend/fuse-mount.ts';
import { runOk, terminate, type Cleanup } from './cleanup.ts';

export const EXAMPLES = '/usr/share/doc/libfuse3-dev/examples';
/** The example includes this header from its own directory. */
const SOURCES = ['passthrough_ll.c', 'passthrough_helpers.h'];
const DEFINES = ['-DHAVE_UTIMENSAT', '-DHAVE_FALLOCATE', '-DHAVE_POSIX_FALLOCATE', '-DHAVE_SETXATTR', '-DHAVE_COPY_FILE_RANGE'];

/** Reads an example file, gzipped or not (Debian compresses larger docs). */
function readExample(name: string): Buffer {
  const plain = join(EXAMPLES, name);
  if (existsSync(plain)) return readFileSync(plain);
  if (existsSync(`${plain}.gz`)) return gunzipSync(readFileSync(`${plain}.gz`));
  throw Object.assign(new Error(`${plain} not found: run bash scripts/setup.sh --for-bench (installs libfuse3-dev)`), { code: 'ENOENT' });
}

/**
 * Builds passthrough_ll into `cacheDir` unless the same sources were already built there; returns the binary.
 * `include`: a header of ours force-included (gcc -include) ahead of the source, built as `<name>`.
 */
export async function buildPassthroughLl(cleanup: Cleanup, cacheDir: string, include?: { header: string; name: string }): Promise<string> {
  mkdirSync(cacheDir, { recursive: true });
  const sources = SOURCES.map((name) => [name, readExample(name)] as const);
  const name = include?.name ?? 'passthrough_ll';
  const flags = (await runOk(cleanup, 'pkg-config', ['fuse3', '--cflags', '--libs'])).stdout.trim().split(/\s+/).filter(Boolean);
  const args = ['-Wall', '-O2', ...(include ? ['-include', include.header] : []), 'passthrough_ll.c', ...flags, ...DEFINES, '-o', name];
  const hash = createHash('sha256');
  for (const [file, text] of sources) hash.update(file).update(text);
  if (include) hash.update(readFileSync(include.header));
  hash.update(args.join(' '));
  const stamp = join(cacheDir, `${name}.sha256`);
  const binary = join(cacheDir, name);
  const digest = hash.digest('hex');
  if (existsSync(binary) && existsSync(stamp) && readFileSync(stamp, 'utf8') === digest) return binary;
  for (const [file, text] of sources) writeFileSync(join(cacheDir, file), text);
  await runOk(cleanup, 'gcc', args, { cwd: cacheDir });
  writeFileSync(stamp, digest);
  return binary;
}

/** The libfuse version the binary links against (pkg-config's view). */
export async function libfuseVersion(cleanup: Cleanup): Promise<string> {
  return (await runOk(cleanup, 'pkg-config', ['--modversion', 'fuse3'])).stdout.trim();
}

/** A mounted passthrough_ll. */
export interface PassthroughLl {
  /** The daemon's process (it runs in the foreground: this one serves the mount). */
  pid: number;
  /** Unmounts and waits for the daemon to exit (also registered with `cleanup`). */
  stop(): Promise<void>;
}

/**
 * Mounts `source` on `mountpoint` with passthrough_ll in the foreground (its
 * own process group, so Ctrl-C reaches only us and we take it down in order).
 * Returns once the mount answers; registers its unmount with `cleanup`.
 */
export async function mountPassthroughLl(
  cleanup: Cleanup,
  binary: string,
  source: string,
  mountpoint: string,
  options: string[],
  env?: NodeJS.ProcessEnv,
  /** Command-line flags besides -f, e.g. ['-s'] (libfuse's single-threaded loop). */
  flags: string[] = [],
): Promise<PassthroughLl> {
  const child = cleanup.spawnChecked(
    binary,
    ['-f', ...flags, '-o', `source=${source}`, ...options.flatMap((o) => ['-o', o]), mountpoint],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      ...(env ? { env: { ...process.env, ...env } } : {}),
    },
    false,
  );
  const output: string[] = [];
  child.stdout?.on('data', (c: Buffer) => output.push(c.toString()));
  child.stderr?.on('data', (c: Buffer) => output.push(c.toString()));
  let failed = false;
  child.once('error', (e) => {
    failed = true;
    output.push(e.message);
  });
  const stop = cleanup.add(`passthrough_ll on ${mountpoint}`, async () => {
    // Unmounting ends its session loop; it then exits by itself.
    if (mountsAt(mountpoint).length > 0) unmount(mountpoint);
    const timer = setTimeout(() => void terminate(child), 3000);
    if (!failed && child.exitCode === null && child.signalCode === null) await new Promise((r) => child.once('exit', r));
    clearTimeout(timer);
  });
  const deadline = Date.now() + 10_000;
  while (!mountsAt(mountpoint).some((m) => m.fstype.startsWith('fuse'))) {
    cleanup.check();
    if (failed || child.exitCode !== null || child.signalCode !== null) {
      await stop();
      throw new Error(`passthrough_ll exited before mounting ${mountpoint}:\n${output.join('').trim()}`);
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`passthrough_ll did not mount ${mountpoint} within 10 s:\n${output.join('').trim()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { pid: child.pid!, stop };
}

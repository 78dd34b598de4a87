// Crashes while writers run, against the real QEMU virtiofsd through a real mount: the client
// killed with SIGKILL, the client stopped with SIGTERM, the device killed. Writers append numbered
// 4 KiB records and fsync each, printing its number once fsync returned: whatever the crash, every
// record a writer saw fsync'd is on the host intact, the writer gets an error (not a hang, not a
// silent success) within 2 s, and nothing is left mounted that `virtiofs-client unmount` cannot clear.
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Virtiofsd } from '../../client/backends/virtiofsd.ts';
import { controlSocketPath, logPath } from '../../client/frontend/control.ts';
import { mountsAt } from '../../client/frontend/fuse-mount.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const RECORD = 4096;
/** A crash must reach the writer within this (the request path answers in microseconds; 2 s is the bound). */
const ERROR_WITHIN_MS = 2000;

const cli = (...args: string[]) => spawnSync(process.execPath, ['bin/virtiofs-client.js', ...args], { encoding: 'utf8', timeout: 60_000 });

/** Record n: its number, then a pattern of it, 4 KiB. */
function record(n: number): Buffer {
  const b = Buffer.alloc(RECORD, n & 0xff);
  b.writeUInt32LE(n, 0);
  return b;
}

const WRITER = String.raw`
import os, sys
path, size = sys.argv[1], ${RECORD}
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
n = 0
try:
    while True:
        b = bytearray([n & 0xff]) * size
        b[0:4] = n.to_bytes(4, 'little')
        os.write(fd, b)
        os.fsync(fd)
        print(n, flush=True)
        n += 1
except OSError as e:
    print('ERR', e.errno, e.strerror, flush=True)
`;

interface Writer {
  child: ChildProcess;
  /** The last record number whose fsync returned. */
  synced: number;
  error: string | undefined;
  errorAt: number | undefined;
  exited: Promise<number | null>;
}

function startWriter(path: string): Writer {
  const child = spawn('python3', ['-c', WRITER, path], { stdio: ['ignore', 'pipe', 'pipe'] });
  const w: Writer = { child, synced: -1, error: undefined, errorAt: undefined, exited: new Promise((r) => child.once('exit', (code) => r(code))) };
  createInterface({ input: child.stdout! }).on('line', (line) => {
    if (line.startsWith('ERR')) {
      w.error = line;
      w.errorAt = performance.now();
    } else w.synced = Number(line);
  });
  return w;
}

async function until(condition: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Every record up to `synced` is on the host intact; what follows is whole records or a prefix of one. */
function checkHost(t: ExecutionContext, file: string, synced: number, label: string): void {
  const data = readFileSync(file);
  const whole = Math.floor(data.length / RECORD);
  t.true(whole >= synced + 1, `${label}: ${whole} whole records on the host, ${synced + 1} were fsync'd`);
  let bad = 0;
  for (let n = 0; n < whole; n++) if (!data.subarray(n * RECORD, (n + 1) * RECORD).equals(record(n))) bad++;
  t.is(bad, 0, `${label}: every record on the host is intact and in order`);
  const tail = data.subarray(whole * RECORD);
  t.true(tail.equals(record(whole).subarray(0, tail.length)), `${label}: a partial last record is a prefix of the record`);
}

async function withMount(fn: (work: string, mnt: string, relayPid: number, daemon: Virtiofsd) => Promise<void>): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'vfs-crash-'));
  const shared = join(work, 'shared');
  const mnt = join(work, 'mnt');
  mkdirSync(shared);
  mkdirSync(mnt);
  const daemon = await Virtiofsd.start({ sharedDir: shared });
  try {
    const mounted = cli('mount', '--transport', `vhost-user:${daemon.socketPath}`, mnt);
    const pid = Number(/\(pid (\d+)\)/.exec(mounted.stdout)?.[1]);
    if (!(pid > 0)) throw new Error(`mount failed: ${mounted.stdout}${mounted.stderr}`);
    await fn(work, mnt, pid, daemon);
  } finally {
    if (mountsAt(mnt).length > 0) cli('unmount', mnt);
    await daemon.stop();
    rmSync(work, { recursive: true, force: true });
    rmSync(logPath(mnt), { force: true });
    rmSync(controlSocketPath(mnt), { force: true });
  }
}

test('kill -9 of the client while writers fsync: they get an error within 2 s, the mount says ENOTCONN, unmount clears it, every fsync\'d record is on the host', async (t) => {
  if (!requireRoot(t)) return;
  await withMount(async (work, mnt, pid) => {
    const writers = [0, 1, 2].map((i) => startWriter(join(mnt, `log${i}`)));
    await until(() => writers.every((w) => w.synced >= 20), 20_000, 'every writer to fsync 20 records');
    const killedAt = performance.now();
    process.kill(pid, 'SIGKILL');
    await Promise.race([Promise.all(writers.map((w) => w.exited)), new Promise((r) => setTimeout(r, 10_000))]);
    for (const [i, w] of writers.entries()) {
      t.truthy(w.error, `writer ${i} got an error`);
      t.log(`writer ${i}: ${w.synced + 1} records fsync'd; ${w.error} ${Math.round(w.errorAt! - killedAt)} ms after SIGKILL`);
      t.true(w.errorAt! - killedAt < ERROR_WITHIN_MS, `writer ${i}: the error came within ${ERROR_WITHIN_MS} ms`);
    }
    const stat = spawnSync('stat', [mnt], { encoding: 'utf8', timeout: 10_000 });
    t.regex(stat.stderr, /Transport endpoint is not connected/, 'the mount answers ENOTCONN, at once');
    const unmounted = cli('unmount', mnt);
    t.is(unmounted.status, 0, unmounted.stderr);
    t.is(mountsAt(mnt).length, 0);
    writers.forEach((w, i) => checkHost(t, join(work, 'shared', `log${i}`), w.synced, `writer ${i}`));
  });
});

test('SIGTERM to the client while writers fsync: it unmounts and exits; writers end with an error, none silently; every fsync\'d record is on the host', async (t) => {
  if (!requireRoot(t)) return;
  await withMount(async (work, mnt, pid) => {
    const writers = [0, 1].map((i) => startWriter(join(mnt, `log${i}`)));
    await until(() => writers.every((w) => w.synced >= 20), 20_000, 'every writer to fsync 20 records');
    const termAt = performance.now();
    process.kill(pid, 'SIGTERM');
    await Promise.race([Promise.all(writers.map((w) => w.exited)), new Promise((r) => setTimeout(r, 10_000))]);
    for (const [i, w] of writers.entries()) {
      t.truthy(w.error, `writer ${i} ended with an error`);
      t.log(`writer ${i}: ${w.synced + 1} records fsync'd; ${w.error} ${Math.round(w.errorAt! - termAt)} ms after SIGTERM`);
      t.true(w.errorAt! - termAt < ERROR_WITHIN_MS, `writer ${i}: within ${ERROR_WITHIN_MS} ms`);
    }
    await until(() => mountsAt(mnt).length === 0, 10_000, 'the client to unmount');
    await until(() => !isAlive(pid), 10_000, 'the client to exit');
    writers.forEach((w, i) => checkHost(t, join(work, 'shared', `log${i}`), w.synced, `writer ${i}`));
  });
});

test('virtiofsd killed while dd conv=fsync writes: dd fails within 2 s, the mount goes, the host holds a prefix of what dd wrote', async (t) => {
  if (!requireRoot(t)) return;
  await withMount(async (work, mnt, _pid, daemon) => {
    const source = join(work, 'source');
    // A pattern that differs in every 4 KiB block, so a misplaced block shows.
    const size = 256 << 20;
    const block = Buffer.alloc(1 << 20);
    const fd = openSync(source, 'w');
    for (let mib = 0; mib < size >> 20; mib++) {
      for (let i = 0; i < block.length; i += 4096) block.fill((mib * 256 + i / 4096) & 0xff, i, i + 4096);
      writeSync(fd, block);
    }
    closeSync(fd);
    const dd = spawn('dd', [`if=${source}`, `of=${join(mnt, 'out')}`, 'bs=1M', 'conv=fsync', 'status=none'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    dd.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const ended = new Promise<{ code: number | null; at: number }>((r) => dd.once('exit', (code) => r({ code, at: performance.now() })));
    const hostFile = join(work, 'shared', 'out');
    await until(() => {
      try {
        return readFileSync(hostFile).length >= 16 << 20;
      } catch {
        return false;
      }
    }, 30_000, 'dd to have written 16 MiB');
    const killedAt = performance.now();
    daemon.kill('SIGKILL');
    const { code, at } = await Promise.race([ended, new Promise<{ code: number | null; at: number }>((r) => setTimeout(() => r({ code: -1, at: Infinity }), 10_000))]);
    t.log(`dd: exit ${code} ${Math.round(at - killedAt)} ms after SIGKILL: ${stderr.trim()}`);
    t.not(code, 0, 'dd does not succeed');
    t.true(at - killedAt < ERROR_WITHIN_MS, `dd ended within ${ERROR_WITHIN_MS} ms`);
    await until(() => mountsAt(mnt).length === 0, 10_000, 'the client to unmount');
    const host = readFileSync(hostFile);
    t.true(host.length < size, `${host.length} of ${size} bytes reached the host`);
    t.true(host.equals(readFileSync(source).subarray(0, host.length)), 'what the host holds is a prefix of what dd wrote');
  });
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

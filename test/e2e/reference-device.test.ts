// The reference device (examples/reference-device) between this project's
// client and a real x86 virtiofsd: each of its three answers to the arch
// negotiation, checked by what a mips client gets back; its exit when the
// frontend hangs up; and its ring code against malformed chains.
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsc, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openFlagValue, resolveArch, type Architecture } from '../../client/arch/index.ts';
import { FOREIGN_SANDBOX, foreignArchName, foreignVirtiofsd, type ForeignArch } from '../../client/backends/foreign.ts';
import { Virtiofsd, type VirtiofsdOptions } from '../../client/backends/virtiofsd.ts';
import { ROOT, VirtioFsClient, type ConnectOptions } from '../../client/client.ts';
import { FuseRelay } from '../../client/frontend/relay.ts';
import { VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../../client/virtio/features.ts';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../client/virtio/ring-layout.ts';
import { Virtqueue } from '../../client/virtio/virtqueue.ts';
import { SharedMemory } from '../../ffi/shared-memory.ts';
import { DeviceRing, RingBrokenError, readChain, writeChain, type Chain } from '../../examples/reference-device/device-ring.ts';
import { GuestMemory } from '../../examples/reference-device/guest-memory.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const mips = resolveArch('mips64');
const x86 = resolveArch('x86_64');
const MIPS_EEXIST = mips.errno.numbers.EEXIST!;
const MIPS_ENOTEMPTY = mips.errno.numbers.ENOTEMPTY!;
const X86_ENOTEMPTY = x86.errno.numbers.ENOTEMPTY!;

/** open(2) flags by name, in `arch`'s encoding. */
function flags(arch: Architecture, ...names: string[]): number {
  return names.reduce((value, name) => value | openFlagValue(name, arch)!, 0);
}

interface DeviceProcess {
  child: ChildProcess;
  socket: string;
  /** Everything it printed. */
  output: string[];
  exited: Promise<number | null>;
}

/**
 * How long a reference device may take to listen: 20 s, or 15 times what starting node with tsx
 * takes on this machine now, measured when the device is started (a fresh-clone CI run, with a TCG
 * guest beside it, once took more than 20 s to start one in front of a ppc64 virtiofsd under
 * qemu-user; alone it takes under 5 s).
 */
async function listenDeadlineMs(): Promise<number> {
  const started = performance.now();
  await new Promise<void>((resolve) => spawn(process.execPath, ['--import', 'tsx', '-e', '0'], { stdio: 'ignore' }).once('exit', () => resolve()));
  return Math.max(20_000, 15 * (performance.now() - started));
}

/** Starts examples/reference-device/main.ts in front of `backendSocket`; resolves once it listens. */
async function startDevice(backendSocket: string, socket: string, args: string[]): Promise<DeviceProcess> {
  const deadlineMs = await listenDeadlineMs();
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', 'examples/reference-device/main.ts', '--socket', socket, '--backend', `vhost-user:${backendSocket}`, ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const output: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      // Not left listening for a frontend that never comes.
      child.kill('SIGKILL');
      reject(new Error(`reference device did not listen in ${Math.round(deadlineMs / 1000)} s:\n${output.join('\n')}`));
    }, deadlineMs);
    const collect = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) {
        if (!line) continue;
        output.push(line);
        if (line.includes('listening on')) {
          clearTimeout(timer);
          resolve();
        }
      }
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`reference device exited (${code}) before listening:\n${output.join('\n')}`));
    });
  });
  return { child, socket, output, exited };
}

interface Fixture {
  dir: string;
  daemon: Virtiofsd;
  device: DeviceProcess;
  client: VirtioFsClient;
  clientLog: string[];
}

/**
 * virtiofsd on a fresh directory, the reference device in front of it, a
 * client connected to the device. Afterwards the client is closed and the
 * device must exit by itself with status 0 (it serves one frontend).
 */
async function withReferenceDevice(
  t: ExecutionContext,
  options: { device: string[]; client?: Partial<ConnectOptions>; virtiofsd?: Partial<VirtiofsdOptions> },
  fn: (f: Fixture) => Promise<void>,
): Promise<void> {
  if (!requireRoot(t)) return;
  const dir = mkdtempSync(join(tmpdir(), 'vfs-refdev-'));
  const sockets = mkdtempSync(join(tmpdir(), 'vfs-refdev-sock-'));
  const daemon = await Virtiofsd.start({ sharedDir: dir, ...options.virtiofsd });
  let device: DeviceProcess | undefined;
  let client: VirtioFsClient | undefined;
  const clientLog: string[] = [];
  try {
    device = await startDevice(daemon.socketPath, join(sockets, 'device.sock'), options.device);
    client = await VirtioFsClient.connect({ transport: `vhost-user:${device.socket}`, log: (line) => clientLog.push(line), ...options.client });
    await fn({ dir, daemon, device, client, clientLog });
    await client.close();
    client = undefined;
    const code = await Promise.race([device.exited, sleep(10_000).then(() => 'still running')]);
    t.is(code, 0, `the device exits with 0 once its frontend is gone:\n${device.output.join('\n')}`);
  } catch (error) {
    t.log(`device output:\n${device?.output.join('\n')}\nclient log:\n${clientLog.join('\n')}`);
    throw error;
  } finally {
    await client?.close();
    if (device && device.child.exitCode === null && device.child.signalCode === null) {
      device.child.kill('SIGKILL');
      await device.exited;
    }
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(sockets, { recursive: true, force: true });
  }
}

/** The answers by which a device of another architecture gets correct values: (a) it translates, (d) the client does. */
const ANSWERS_THAT_TRANSLATE = [
  ['translate', 'device-translates', '(a)'],
  ['device', 'device-encoding', '(d)'],
] as const;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test('--queues 2 through a mount: the relay runs one thread per request queue, each with its own /dev/fuse clone, and the kernel\'s requests reach both', async (t) => {
  if (!requireRoot(t)) return;
  const dir = mkdtempSync(join(tmpdir(), 'vfs-refdev-mq-'));
  const sockets = mkdtempSync(join(tmpdir(), 'vfs-refdev-mq-sock-'));
  const mnt = mkdtempSync(join(tmpdir(), 'vfs-refdev-mq-mnt-'));
  const daemon = await Virtiofsd.start({ sharedDir: dir });
  let device: DeviceProcess | undefined;
  let relay: FuseRelay | undefined;
  const log: string[] = [];
  try {
    device = await startDevice(daemon.socketPath, join(sockets, 'device.sock'), ['--queues', '2']);
    relay = await FuseRelay.mount({ transport: `vhost-user:${device.socket}`, mountpoint: mnt, requestQueues: 2, log: (l) => log.push(l) });
    const files = Array.from({ length: 8 }, (_, i) => ({ name: `f${i}`, data: randomBytes(256 * 1024 + i) }));
    // Eight writers and then eight readers at once, in other processes: the kernel queues their
    // requests on the one FUSE connection and whichever thread is free reads each.
    await Promise.all(files.map((f) => runShell(`cat > ${join(mnt, f.name)}`, f.data)));
    const read = await Promise.all(files.map((f) => runShell(`cat ${join(mnt, f.name)} && ls -l ${mnt} > /dev/null`)));
    files.forEach((f, i) => {
      const got = read[i]!;
      if (!got.equals(f.data)) {
        // Say what came back (once: the tail of cat's output, still in the pipe when runShell took
        // the process's 'exit' for the end of it).
        let at = 0;
        while (at < Math.min(got.length, f.data.length) && got[at] === f.data[at]) at++;
        const host = readFileSync(join(dir, f.name));
        t.log(`${f.name}: read ${got.length} bytes of ${f.data.length}, first difference at ${at}; the host file is ${host.equals(f.data) ? 'right' : `wrong too (${host.length} bytes)`}`);
      }
      t.true(got.equals(f.data), `${f.name} reads back byte-exact`);
    });
    files.forEach((f) => t.true(readFileSync(join(dir, f.name)).equals(f.data), `${f.name} is on the device`));
    const queues = relay.status().queues!;
    t.log(queues.map((q) => `${q.name} ${q.requests}`).join(', '));
    t.deepEqual(queues.map((q) => q.name), ['hiprio', 'request0', 'request1']);
    t.true(queues[1]!.requests > 0 && queues[2]!.requests > 0, 'both request threads carried requests');
    t.deepEqual(log.filter((l) => !l.includes('device offers')), [], 'nothing went wrong');
  } finally {
    await relay?.unmount();
    if (device && device.child.exitCode === null) {
      const code = await Promise.race([device.exited, sleep(10_000).then(() => 'still running')]);
      t.is(code, 0, `the device exits with 0 once the relay is gone:\n${device.output.join('\n')}`);
    }
    await daemon.stop();
    for (const d of [dir, sockets, mnt]) rmSync(d, { recursive: true, force: true });
  }
});

// Serial: it times replies on this process's event loop, which the file's other tests (run
// concurrently) can hold up for seconds on a loaded machine (a fresh-clone CI run: 3,640 ms).
test.serial('--queues 2: each request queue has a thread of its own: while one is held (--stall-lookup), the other\'s requests complete', async (t) => {
  const STALL_MS = 4000;
  await withReferenceDevice(t, { device: ['--queues', '2', '--stall-lookup', `held:${STALL_MS}`], client: { requestQueues: 2 } }, async ({ client, device }) => {
    await client.mkdir(ROOT, 'a', 0o755);
    // Both queues' threads start on first use (each costs ~300 ms of CPU, seconds on a loaded
    // machine): start them before timing anything, so the measure is of serving, not starting.
    await Promise.all([client.getattr(ROOT), client.getattr(ROOT), client.getattr(ROOT)]);
    const t0 = performance.now();
    // The client puts requests on its queues in turn: the held LOOKUP on one, then one GETATTR on
    // each. The held queue's thread sleeps; the other's GETATTR must not wait for it.
    const held = client.lookup(ROOT, 'held').then(
      () => performance.now() - t0,
      () => performance.now() - t0,
    );
    await sleep(200);
    const getattrs = [0, 1].map(() => client.getattr(ROOT).then(() => performance.now() - t0));
    const first = await Promise.race(getattrs);
    const heldMs = await held;
    const both = await Promise.all(getattrs);
    t.log(`held LOOKUP answered after ${heldMs.toFixed(0)} ms; GETATTRs after ${both.map((ms) => ms.toFixed(0)).join(' and ')} ms`);
    t.true(device.output.some((l) => /request\d: LOOKUP held: holding this thread/.test(l)), device.output.join('\n'));
    t.true(heldMs >= STALL_MS - 100, 'the LOOKUP was held');
    t.true(first < heldMs - STALL_MS / 4, `one GETATTR was answered while the other queue's thread was held (after ${first.toFixed(0)} ms)`);
    t.true(Math.max(...both) >= STALL_MS - 300, 'the GETATTR behind the held LOOKUP waited for it: each queue is served in order by its thread');
    t.true((await client.getattr(ROOT)).ino > 0, 'both threads serve on afterwards');
  });
});

// The fileattr ioctls (lsattr, chattr) through a ppc64 device: Debian's ppc64el virtiofsd under
// qemu-user behind the reference device as ppc64, which serves these ioctls itself on the
// virtiofsd's directory (neither real virtiofsd implements FUSE_IOCTL: both answer ENOSYS), reading
// each command in ppc64's layout. What decides is whether the command reaches it in that layout.
const PPC_ANSWERS = [
  { answer: 'translate', works: true, how: 'the device translates x86 -> ppc64 (a)' },
  { answer: 'canonical', works: true, how: 'x86 on the wire, the device translates (b)' },
  { answer: 'device', works: true, how: 'the client translates to ppc64 (d)' },
  { answer: 'legacy', works: false, how: 'nobody translates (c): x86 FS_IOC_GETFLAGS is _IOW(\'f\', 1, 8) to ppc64' },
] as const;
for (const { answer, works, how } of PPC_ANSWERS) {
  test(`fileattr through a mount, ppc64 device answering ${answer}: lsattr/chattr ${works ? 'work' : 'fail'}: ${how}`, async (t) => {
    if (!requireRoot(t)) return;
    for (const tool of ['lsattr', 'chattr']) {
      if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return t.fail(`${tool} is missing (e2fsprogs): run bash scripts/setup.sh --for-tests`);
    }
    const dir = mkdtempSync(join(tmpdir(), 'vfs-refdev-fileattr-'));
    const sockets = mkdtempSync(join(tmpdir(), 'vfs-refdev-fileattr-sock-'));
    const mnt = mkdtempSync(join(tmpdir(), 'vfs-refdev-fileattr-mnt-'));
    writeFileSync(join(dir, 'f'), 'x');
    mkdirSync(join(dir, 'sub'));
    const daemon = await Virtiofsd.start({ sharedDir: dir, ...(await foreign('ppc64el')) });
    let device: DeviceProcess | undefined;
    let relay: FuseRelay | undefined;
    const sh = (command: string) => spawnSync('sh', ['-c', command], { encoding: 'utf8', timeout: 30_000 });
    try {
      device = await startDevice(daemon.socketPath, join(sockets, 'device.sock'), ['--arch', 'ppc64', '--answer', answer, '--fileattr-dir', dir]);
      relay = await FuseRelay.mount({ transport: `vhost-user:${device.socket}`, mountpoint: mnt, log: () => {} });
      t.teardown(() => {
        if (!t.passed) t.log(device!.output.slice(-30).join('\n'));
      });
      const f = join(mnt, 'f');
      if (!works) {
        const r = sh(`lsattr ${f}`);
        t.not(r.status, 0, 'lsattr fails');
        t.regex(r.stderr, /Operation not supported/, r.stderr);
        t.is(sh(`chattr +d ${f}`).status, 1, 'chattr fails');
        t.notRegex(sh(`lsattr ${join(dir, 'f')}`).stdout.split(' ')[0]!, /d/, 'nothing changed on the device');
        return;
      }
      const host = (name: string) => sh(`lsattr -d ${join(dir, name)}`).stdout.split(' ')[0]!;
      const mounted = (name: string) => {
        const r = sh(`lsattr -d ${join(mnt, name)}`);
        t.is(r.status, 0, `lsattr ${name}: ${r.stderr}`);
        return r.stdout.split(' ')[0]!;
      };
      t.is(mounted('f'), host('f'), 'lsattr (FS_IOC_GETFLAGS) shows what the host has');
      t.is(sh(`chattr +d ${f}`).status, 0, 'chattr +d (FS_IOC_GETFLAGS, FS_IOC_SETFLAGS)');
      t.regex(host('f'), /d/, 'the nodump flag is on the file on the device');
      t.is(mounted('f'), host('f'));
      t.is(sh(`chattr +d ${join(mnt, 'sub')}`).status, 0, 'on a directory too');
      t.regex(host('sub'), /d/);
      t.is(sh(`chattr -d ${f}`).status, 0);
      t.notRegex(host('f'), /d/, 'and off again');
      // FS_IOC_FSGETXATTR and FS_IOC_FSSETXATTR: the project id (0: this ext4 has no project quota).
      const project = sh(`lsattr -p ${f}`);
      t.is(project.status, 0, `lsattr -p: ${project.stderr}`);
      t.regex(project.stdout, /^\s*0 /, project.stdout);
      t.is(sh(`chattr -p 0 ${f}`).status, 0, 'chattr -p 0 (FS_IOC_FSSETXATTR)');
      // The host's EOPNOTSUPP (a project id without the feature) comes back by name.
      const refused = sh(`chattr -p 42 ${f}`);
      t.not(refused.status, 0);
      t.regex(refused.stderr, /Operation not supported/, refused.stderr);
    } finally {
      await relay?.unmount();
      if (device && device.child.exitCode === null && device.child.signalCode === null) {
        await Promise.race([device.exited, sleep(10_000)]);
        if (device.child.exitCode === null) device.child.kill('SIGKILL');
      }
      await daemon.stop();
      spawnSync('chattr', ['-d', join(dir, 'f'), join(dir, 'sub')]);
      for (const d of [dir, sockets, mnt]) rmSync(d, { recursive: true, force: true });
    }
  });
}

const cli = (...args: string[]) => spawnSync(process.execPath, ['bin/virtiofs-client.js', ...args], { encoding: 'utf8', timeout: 120_000 });

/** A foreign virtiofsd on a fresh directory with the reference device answering (d) in front of it; `fn` gets the device's socket. */
async function withDeviceAnsweringD(arch: ForeignArch, fn: (socket: string, dir: string) => Promise<void> | void): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), `vfs-refdev-d-${arch}-`));
  const sockets = mkdtempSync(join(tmpdir(), 'vfs-refdev-d-sock-'));
  const daemon = await Virtiofsd.start({ sharedDir: dir, ...(await foreign(arch, { allowDirectIo: true })) });
  let device: DeviceProcess | undefined;
  try {
    device = await startDevice(daemon.socketPath, join(sockets, 'device.sock'), ['--arch', foreignArchName[arch], '--answer', 'device']);
    await fn(device.socket, dir);
    await Promise.race([device.exited, sleep(10_000)]);
  } finally {
    if (device && device.child.exitCode === null && device.child.signalCode === null) device.child.kill('SIGKILL');
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(sockets, { recursive: true, force: true });
  }
}

for (const arch of ['arm64', 'mips64el'] as const) {
  test(`outcome (d): ${arch} virtiofsd behind a device that names its encoding: an unconfigured x86 client passes check`, async (t) => {
    if (!requireRoot(t)) return;
    t.timeout(180_000);
    await withDeviceAnsweringD(arch, (socket) => {
      const r = cli('check', `vhost-user:${socket}`, '--json');
      const report = JSON.parse(r.stdout) as { ok: boolean; wireArch: string; results: { check: string; verdict: string }[]; negotiation?: string[] };
      t.is(report.wireArch, foreignArchName[arch], 'the client translates to the encoding the device named');
      t.deepEqual(report.results.filter((x) => x.verdict === 'fail'), []);
      t.is(r.status, 0, r.stderr);
    });
  });
}

test('outcome (d) mounted: dd oflag=direct through an unconfigured x86 mount reaches the arm64 virtiofsd byte-exact', async (t) => {
  if (!requireRoot(t)) return;
  t.timeout(180_000);
  await withDeviceAnsweringD('arm64', (socket, dir) => {
    const mnt = mkdtempSync(join(tmpdir(), 'vfs-refdev-d-mnt-'));
    try {
      const m = cli('mount', '--transport', `vhost-user:${socket}`, mnt);
      t.is(m.status, 0, m.stderr);
      const status = cli('status', mnt);
      t.regex(status.stdout, /device answer device-encoding/);
      t.regex(status.stdout, /wire encoding arm64: device named its encoding, arm64: the client translates to it \(d\)/);
      const dd = spawnSync('sh', ['-c', `head -c 1048576 /dev/urandom > ${mnt}.src && dd if=${mnt}.src of=${mnt}/direct.bin bs=64k oflag=direct status=none`], { encoding: 'utf8' });
      t.is(dd.status, 0, dd.stderr);
      t.true(readFileSync(join(dir, 'direct.bin')).equals(readFileSync(`${mnt}.src`)));
      t.is(cli('unmount', mnt).status, 0);
    } finally {
      cli('unmount', mnt);
      rmSync(`${mnt}.src`, { force: true });
      rmSync(mnt, { recursive: true, force: true });
    }
  });
});

/** Runs `command` under sh with `input` on stdin; resolves with its stdout, rejects on failure. */
function runShell(command: string, input?: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', command], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    // 'close', not 'exit': the process may be gone while its output still sits in the pipe (under
    // load 'exit' came with 240,704 of a 262,144-byte cat's output read, and f0 'read back wrong').
    child.once('close', (code) => (code === 0 ? resolve(Buffer.concat(out)) : reject(new Error(`${command}: exit ${code}: ${Buffer.concat(err)}`))));
    child.stdin.end(input);
  });
}

async function errnoOf(promise: Promise<unknown>): Promise<number | undefined> {
  try {
    await promise;
    return undefined;
  } catch (error) {
    return (error as { errno?: number }).errno;
  }
}

/** The two behaviours the mips tests look at: O_EXCL create of an existing file, rmdir of a non-empty directory. */
async function mipsBehaviour(client: VirtioFsClient, dir: string): Promise<{ exclErrno: number | undefined; rmdirErrno: number | undefined }> {
  writeFileSync(join(dir, 'exists'), 'x');
  mkdirSync(join(dir, 'full'));
  writeFileSync(join(dir, 'full', 'f'), 'y');
  const exclusive = client.create(ROOT, 'exists', flags(mips, 'O_RDWR', 'O_CREAT', 'O_EXCL'), 0o644);
  const exclErrno = await errnoOf(
    exclusive.then(async (created) => {
      // Only a misread O_EXCL gets here: release what was opened.
      await client.release(created.entry.nodeid, created.fh);
    }),
  );
  // virtiofsd removes only what it has looked up (else EIO), as the kernel always does first.
  await client.lookup(ROOT, 'full');
  const rmdirErrno = await errnoOf(client.rmdir(ROOT, 'full'));
  return { exclErrno, rmdirErrno };
}

test('--answer translate, x86 device: an x86 client in auto mode gets (a); data and O_DIRECT cross the device', async (t) => {
  await withReferenceDevice(t, { device: ['--arch', 'x86_64', '--answer', 'translate'], virtiofsd: { allowDirectIo: true } }, async ({ client, dir, device }) => {
    const init = client.session.init;
    t.is(init.arch.outcome, 'device-translates');
    t.is(init.arch.deviceIndicator, x86.indicator, 'the device states its own arch in fuse_init_out.arch_indicator');
    t.regex(client.describe().join('\n'), /device answer device-translates/);

    const data = randomBytes(3 * client.session.maxWrite + 17);
    const f = await client.create(ROOT, 'plain', fsc.O_RDWR, 0o644);
    t.is(await client.write(f.entry.nodeid, f.fh, 0, data), data.length);
    t.true((await client.read(f.entry.nodeid, f.fh, 0, data.length)).equals(data));
    await client.release(f.entry.nodeid, f.fh, fsc.O_RDWR);
    t.true(readFileSync(join(dir, 'plain')).equals(data));

    const direct = fsc.O_RDWR | fsc.O_DIRECT;
    const d = await client.create(ROOT, 'direct', direct, 0o644);
    const block = randomBytes(64 * 1024);
    t.is(await client.write(d.entry.nodeid, d.fh, 0, block, direct), block.length);
    t.true((await client.read(d.entry.nodeid, d.fh, 0, block.length, direct)).equals(block));
    await client.release(d.entry.nodeid, d.fh, direct);
    t.true(readFileSync(join(dir, 'direct')).equals(block));

    mkdirSync(join(dir, 'sub'));
    const names = Array.from({ length: 200 }, (_, i) => `n${i}`);
    for (const n of names) writeFileSync(join(dir, 'sub', n), n);
    const sub = await client.lookup(ROOT, 'sub');
    t.deepEqual((await client.list(sub.nodeid)).map((e) => e.name).filter((n) => n.startsWith('n')).sort(), names.sort());
    const missing = await t.throwsAsync(client.lookup(ROOT, 'missing'));
    t.is((missing as NodeJS.ErrnoException).code, 'ENOENT');
    t.true(device.output.some((l) => /INIT: FUSE 7\.\d+; client is x86_64: device translates \(a\)/.test(l)), device.output.join('\n'));
  });
});

test('--answer translate, x86 device: a mips client gets (a) and mips behaviour (O_EXCL, ENOTEMPTY 93)', async (t) => {
  await withReferenceDevice(t, { device: ['--arch', 'x86_64', '--answer', 'translate'], client: { clientArch: mips } }, async ({ client, dir }) => {
    t.is(client.session.init.arch.outcome, 'device-translates');
    t.is(client.session.wireArch, mips, 'the client sends its own encoding');
    const { exclErrno, rmdirErrno } = await mipsBehaviour(client, dir);
    t.is(exclErrno, MIPS_EEXIST, 'mips O_EXCL reached virtiofsd as O_EXCL');
    t.is(rmdirErrno, MIPS_ENOTEMPTY, "virtiofsd's ENOTEMPTY (39) came back as mips ENOTEMPTY (93)");
    t.true(existsSync(join(dir, 'full', 'f')));
  });
});

test('--answer translate, x86 device: an alpha client\'s lock types cross both ways (SETLK in, GETLK reply out)', async (t) => {
  const alpha = resolveArch('alpha');
  await withReferenceDevice(t, { device: ['--arch', 'x86_64', '--answer', 'translate'], client: { clientArch: alpha }, virtiofsd: { posixLock: true } }, async ({ client }) => {
    t.is(client.session.init.arch.outcome, 'device-translates');
    // alpha's F_WRLCK is 2 and F_UNLCK 8; x86's are 1 and 2: each would be misread untranslated.
    t.not(alpha.lockTypes.types.F_WRLCK, x86.lockTypes.types.F_WRLCK);
    const f = await client.create(ROOT, 'locked', flags(alpha, 'O_RDWR'), 0o644);
    const range = { start: 0n, end: 99n, pid: 0 }; // GETLK pid 0, as the kernel sends it
    t.is((await client.getlk(f.entry.nodeid, f.fh, 2n, { type: 'F_WRLCK', ...range })).type, 'F_UNLCK');
    await client.setlk(f.entry.nodeid, f.fh, 1n, { type: 'F_WRLCK', ...range });
    const held = await client.getlk(f.entry.nodeid, f.fh, 2n, { type: 'F_RDLCK', ...range });
    t.is(held.type, 'F_WRLCK', 'the x86 answer (1) reached the alpha client as its F_WRLCK (2)');
    await client.release(f.entry.nodeid, f.fh);
  });
});

test('--answer canonical: a mips client in auto mode gets (b), translates to x86 itself, and behaves', async (t) => {
  await withReferenceDevice(t, { device: ['--arch', 'x86_64', '--answer', 'canonical'], client: { clientArch: mips } }, async ({ client, dir, device }) => {
    t.is(client.session.init.arch.outcome, 'canonical');
    t.is(client.session.wireArch, x86, 'canonical encoding on the wire');
    const { exclErrno, rmdirErrno } = await mipsBehaviour(client, dir);
    t.is(exclErrno, MIPS_EEXIST);
    t.is(rmdirErrno, MIPS_ENOTEMPTY);
    t.true(device.output.some((l) => /device asks for canonical encoding \(b\), x86_64 -> x86_64/.test(l)), device.output.join('\n'));
  });
});

test('--answer legacy: (c); a mips client without a device arch misbehaves (wrong errno, O_EXCL ignored)', async (t) => {
  await withReferenceDevice(t, { device: ['--arch', 'x86_64', '--answer', 'legacy'], client: { clientArch: mips } }, async ({ client, dir }) => {
    t.is(client.session.init.arch.outcome, 'legacy');
    t.is(client.session.init.arch.deviceIndicator, x86.indicator, 'a legacy answer still states the device arch');
    const { exclErrno, rmdirErrno } = await mipsBehaviour(client, dir);
    t.is(exclErrno, undefined, 'mips O_EXCL (0x400) is x86 O_APPEND: the create of an existing file succeeds');
    t.is(rmdirErrno, X86_ENOTEMPTY, "virtiofsd's 39 reaches the mips client untranslated (mips ENOTEMPTY is 93)");
    t.not(rmdirErrno, MIPS_ENOTEMPTY);
  });
});

test('--answer legacy: the same mips client with deviceArch x86_64 configured translates itself and behaves', async (t) => {
  await withReferenceDevice(
    t,
    { device: ['--arch', 'x86_64', '--answer', 'legacy'], client: { clientArch: mips, archMode: { kind: 'auto', deviceArch: x86 } } },
    async ({ client, dir }) => {
      t.is(client.session.init.arch.outcome, 'legacy');
      t.is(client.session.wireArch, x86);
      const { exclErrno, rmdirErrno } = await mipsBehaviour(client, dir);
      t.is(exclErrno, MIPS_EEXIST);
      t.is(rmdirErrno, MIPS_ENOTEMPTY);
    },
  );
});

test('frontend hang-up without DESTROY: the device ends the backend session, removes its socket and exits 0', async (t) => {
  if (!requireRoot(t)) return;
  const dir = mkdtempSync(join(tmpdir(), 'vfs-refdev-'));
  const sockets = mkdtempSync(join(tmpdir(), 'vfs-refdev-sock-'));
  const daemon = await Virtiofsd.start({ sharedDir: dir });
  let device: DeviceProcess | undefined;
  try {
    device = await startDevice(daemon.socketPath, join(sockets, 'device.sock'), ['--answer', 'translate']);
    const client = await VirtioFsClient.connect({ transport: `vhost-user:${device.socket}` });
    t.false(existsSync(device.socket), 'the socket is removed once the one frontend it serves connected');
    await client.mkdir(ROOT, 'made', 0o755);
    // Drop the connection under the session: no FUSE_DESTROY, as when a guest dies.
    client.session.device.close();
    const code = await Promise.race([device.exited, sleep(10_000).then(() => 'still running')]);
    t.is(code, 0, device.output.join('\n'));
    t.true(device.output.some((l) => /frontend hung up/.test(l)), device.output.join('\n'));
    // The device closed its backend connection, so virtiofsd (one connection per life) exits too.
    const backend = await Promise.race([daemon.exited, sleep(5_000).then(() => 'still running')]);
    t.not(backend, 'still running', 'virtiofsd exited after the device hung up on it');
    t.true(existsSync(join(dir, 'made')));
  } finally {
    if (device && device.child.exitCode === null) device.child.kill('SIGKILL');
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(sockets, { recursive: true, force: true });
  }
});

// --- in front of a foreign virtiofsd (client/backends/foreign.ts: Debian's virtiofsd under qemu-user) ---

/** virtiofsd options for `arch`'s binary under qemu-user (built on first use by scripts/foreign/build.sh). */
async function foreign(arch: ForeignArch, extra: Partial<VirtiofsdOptions> = {}): Promise<Partial<VirtiofsdOptions>> {
  const { launcher, binary } = await foreignVirtiofsd(arch);
  return { launcher, binary, sandbox: FOREIGN_SANDBOX, startTimeoutMs: 30_000, ...extra };
}

for (const [answer, outcome, label] of ANSWERS_THAT_TRANSLATE) {
test(`arm64 virtiofsd behind an arm64 device answering ${answer}: an x86 client in auto mode gets ${label}, and O_DIRECT open/write works`, async (t) => {
  if (!requireRoot(t)) return;
  const virtiofsd = await foreign('arm64', { allowDirectIo: true });
  await withReferenceDevice(t, { device: ['--arch', foreignArchName.arm64, '--answer', answer], virtiofsd }, async ({ client, dir }) => {
    t.is(client.session.init.arch.outcome, outcome);
    t.is(client.session.wireArch.name, outcome === 'device-encoding' ? 'arm64' : 'x86_64', 'who translates: the client in (d), the device in (a)');
    t.is(client.session.init.arch.deviceIndicator, resolveArch('arm64').indicator);
    // x86 O_DIRECT (040000) is arm64 O_DIRECTORY: untranslated, this create would fail with ENOTDIR.
    const direct = fsc.O_RDWR | fsc.O_DIRECT;
    const f = await client.create(ROOT, 'direct', direct, 0o644);
    const block = randomBytes(64 * 1024);
    t.is(await client.write(f.entry.nodeid, f.fh, 0, block, direct), block.length);
    await client.release(f.entry.nodeid, f.fh, direct);
    const e = await client.lookup(ROOT, 'direct');
    const o = await client.open(e.nodeid, direct);
    t.true((await client.read(e.nodeid, o.fh, 0, block.length, direct)).equals(block));
    await client.release(e.nodeid, o.fh, direct);
    t.true(readFileSync(join(dir, 'direct')).equals(block));
  });
});
}

test('arm64 virtiofsd behind a device answering legacy: the same x86 O_DIRECT create reaches it as O_DIRECTORY and fails', async (t) => {
  if (!requireRoot(t)) return;
  const virtiofsd = await foreign('arm64', { allowDirectIo: true });
  await withReferenceDevice(t, { device: ['--arch', foreignArchName.arm64, '--answer', 'legacy'], virtiofsd }, async ({ client }) => {
    t.is(client.session.init.arch.outcome, 'legacy');
    const error = await t.throwsAsync(client.create(ROOT, 'direct', fsc.O_RDWR | fsc.O_DIRECT, 0o644));
    t.log(`create(O_RDWR|O_DIRECT) through a legacy answer: ${(error as NodeJS.ErrnoException).code}`);
    t.true(['ENOTDIR', 'EINVAL', 'EISDIR'].includes((error as NodeJS.ErrnoException).code!), (error as Error).message);
  });
});

for (const [answer, outcome, label] of ANSWERS_THAT_TRANSLATE) {
test(`mips64el virtiofsd behind a mips64 device answering ${answer}: an x86 client in auto mode gets ${label}, and rmdir of a non-empty dir says ENOTEMPTY`, async (t) => {
  if (!requireRoot(t)) return;
  const virtiofsd = await foreign('mips64el');
  await withReferenceDevice(t, { device: ['--arch', foreignArchName.mips64el, '--answer', answer], virtiofsd }, async ({ client, dir }) => {
    t.is(client.session.init.arch.outcome, outcome);
    t.is(client.session.init.arch.deviceIndicator, mips.indicator);
    mkdirSync(join(dir, 'full'));
    writeFileSync(join(dir, 'full', 'f'), 'y');
    await client.lookup(ROOT, 'full');
    const error = await t.throwsAsync(client.rmdir(ROOT, 'full'));
    // The mips virtiofsd says 93; untranslated, an x86 client would read EPROTONOSUPPORT.
    t.is((error as NodeJS.ErrnoException).code, 'ENOTEMPTY');
    t.is((error as NodeJS.ErrnoException).errno, X86_ENOTEMPTY);
  });
});
}

// --- the device's ring code against a broken frontend (in process, no root) ----------------------

const RING_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;

/** A driver-side queue in a memfd, and the device's view of the same memory (through a second fd, as a backend gets it). */
function ringPair(size = 8) {
  const memory = new SharedMemory(1 << 16, 'refdev-test');
  const queue = new Virtqueue<string>({ name: 'request0', region: memory, offset: 0, size, features: RING_FEATURES, maxIndirectSegments: 4 });
  const fd = openSync(`/proc/self/fd/${memory.fd}`, 'r+');
  const guest = GuestMemory.map([{ guestPhysAddr: memory.userAddress, size: BigInt(memory.size), userspaceAddr: memory.userAddress, mmapOffset: 0n }], [fd]);
  const ring = new DeviceRing(guest, {
    name: 'request0',
    size,
    desc: queue.descTableAddress,
    avail: queue.availRingAddress,
    used: queue.usedRingAddress,
    eventIdx: true,
    indirect: true,
    lastAvailIdx: 0,
  });
  const data = 0x8000; // buffers live here, past the rings
  /** Publishes descriptor `head` (already written by the test) on the avail ring, as a driver would. */
  const publish = (head: number) => {
    const avail = Number(queue.availRingAddress - memory.userAddress);
    const idx = memory.view.getUint16(avail + 2, true);
    memory.view.setUint16(avail + 4 + 2 * (idx % size), head, true);
    memory.view.setUint16(avail + 2, (idx + 1) & 0xffff, true);
  };
  const descAt = Number(queue.descTableAddress - memory.userAddress);
  const writeDesc = (table: number, i: number, offset: number, length: number, descFlags: number, next = 0) => {
    const at = table + 16 * i;
    memory.view.setBigUint64(at, memory.userAddress + BigInt(offset), true);
    memory.view.setUint32(at + 8, length, true);
    memory.view.setUint16(at + 12, descFlags, true);
    memory.view.setUint16(at + 14, next, true);
  };
  const close = () => {
    guest.close();
    memory.close();
  };
  return { memory, queue, guest, ring, data, publish, descAt, writeDesc, close };
}

test('device ring: a well-formed chain round-trips, with data, to the driver', (t) => {
  const p = ringPair();
  try {
    p.memory.bytes.set(Buffer.from('request!'), p.data);
    t.true(p.queue.add([p.data, 8], [p.data + 4096, 16], 'token'));
    const popped = p.ring.pop();
    t.true(popped?.ok);
    const chain = (popped as { chain: Chain }).chain;
    t.is(chain.readableBytes, 8);
    t.is(chain.writableBytes, 16);
    const got = new Uint8Array(8);
    readChain(p.guest, chain, 0, got);
    t.is(Buffer.from(got).toString(), 'request!');
    writeChain(p.guest, chain, 0, Buffer.from('reply'));
    p.ring.pushUsed(chain.head, 5);
    t.true(p.ring.shouldNotify(), 'EVENT_IDX: the driver asked for the first completion');
    const done: [string, number][] = [];
    p.queue.drainUsed((token, len) => done.push([token, len]), () => t.fail());
    t.deepEqual(done, [['token', 5]]);
    t.is(Buffer.from(p.memory.bytes.subarray(p.data + 4096, p.data + 4101)).toString(), 'reply');
    t.is(p.ring.pop(), undefined);
    t.throws(() => writeChain(p.guest, chain, 12, Buffer.alloc(8)), { message: /past the 16 writable bytes/ });
  } finally {
    p.close();
  }
});

test('device ring: loops, buffers outside memory, readable after writable and nested indirect tables fail one chain each', (t) => {
  const p = ringPair();
  try {
    const { writeDesc, descAt, data } = p;
    // 0 -> 1 -> 0: a loop.
    writeDesc(descAt, 0, data, 16, VIRTQ_DESC_F_NEXT, 1);
    writeDesc(descAt, 1, data, 16, VIRTQ_DESC_F_NEXT, 0);
    p.publish(0);
    // 2: a buffer beyond the memory table.
    writeDesc(descAt, 2, 1 << 20, 16, 0);
    p.publish(2);
    // 3 -> 4: writable then readable.
    writeDesc(descAt, 3, data, 16, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 4);
    writeDesc(descAt, 4, data, 16, 0);
    p.publish(3);
    // 5: an indirect table whose entry is itself indirect.
    const table = data + 0x1000;
    writeDesc(descAt, 5, table - 0, 32, VIRTQ_DESC_F_INDIRECT);
    writeDesc(table, 0, data, 16, VIRTQ_DESC_F_INDIRECT);
    p.publish(5);
    // 6: next points outside the queue.
    writeDesc(descAt, 6, data, 16, VIRTQ_DESC_F_NEXT, 99);
    p.publish(6);

    const reasons: string[] = [];
    for (let popped = p.ring.pop(); popped; popped = p.ring.pop()) {
      t.false(popped.ok);
      if (!popped.ok) {
        reasons.push(popped.reason);
        p.ring.pushUsed(popped.head, 0);
      }
    }
    t.is(reasons.length, 5);
    t.regex(reasons[0]!, /longer than its descriptor table/);
    t.regex(reasons[1]!, /outside the memory table/);
    t.regex(reasons[2]!, /readable buffer after a device-writable one/);
    t.regex(reasons[3]!, /indirect descriptor inside an indirect table/);
    t.regex(reasons[4]!, /next 99 is outside its table/);
  } finally {
    p.close();
  }
});

test('device ring: a head outside the table or an avail idx racing ahead stops the queue', (t) => {
  const p = ringPair();
  try {
    p.publish(200);
    t.throws(() => p.ring.pop(), { instanceOf: RingBrokenError, message: /names descriptor 200/ });
  } finally {
    p.close();
  }
  const q = ringPair();
  try {
    const avail = Number(q.queue.availRingAddress - q.memory.userAddress);
    q.memory.view.setUint16(avail + 2, 100, true);
    t.throws(() => q.ring.pop(), { instanceOf: RingBrokenError, message: /more than the queue size/ });
  } finally {
    q.close();
  }
});

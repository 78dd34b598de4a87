// Real foreign-architecture devices: Debian's arm64, ppc64el and mips64el C virtiofsd
// (scripts/foreign/build.sh) under qemu-user, driven through the client API.
//
// The oracle is this machine's own x86 virtiofsd, the same C code (QEMU 7.2): in device-arch mode
// every probe must come back exactly as the x86 device answers it, while native mode (no
// translation) shows the cross-architecture failures. Where the device's -d log names the open
// flags it received (lo_open), the test checks the very bits; where the host kernel can tell
// (/proc/<virtiofsd>/fdinfo), whether the file really is open O_DIRECT.
//
// Two probes cannot give what one might expect from open(2), on x86 too, because of this virtiofsd:
// - O_DIRECTORY on a regular file: EINVAL, not ENOTDIR. do_open() refuses any flags with a bit of
//   O_CREAT | O_TMPFILE, and O_TMPFILE includes O_DIRECTORY.
// - O_NOFOLLOW on a symlink: EBADF, not ELOOP. lo_inode_open() opens only regular files and
//   directories, and always clears O_NOFOLLOW (it opens through /proc/self/fd). That O_NOFOLLOW
//   arrives as the device's own bit is checked in its log, on a regular file.
import test, { type ExecutionContext } from 'ava';
import { constants as fsc, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { errnoName, hostArch, resolveArch, type Architecture } from '../../client/arch/index.ts';
import { foreignArchName, foreignArches, foreignVirtiofsd, FOREIGN_SANDBOX, type ForeignArch } from '../../client/backends/foreign.ts';
import { Virtiofsd, type VirtiofsdOptions } from '../../client/backends/virtiofsd.ts';
import { ROOT, VirtioFsClient } from '../../client/client.ts';
import type { ArchMode } from '../../client/fuse/arch-mode.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const x86 = hostArch();
const BLOCK = 4096;
/** x86's O_PATH (Node does not export it). */
const O_PATH = 0o10000000;

/** What one probe came to: 'ok', 'ok: <detail>', or the error's name. Compared across devices. */
type Outcomes = Record<string, string>;

interface Run {
  outcomes: Outcomes;
  /** The open flags the device's lo_open logged, by probe, as it received them (its encoding). */
  deviceFlags: Record<string, number | undefined>;
}

/** The error's name in this machine's encoding, by client/arch's tables (Node's lack some, e.g. EREMCHG). */
function errorName(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (typeof err.errno !== 'number') throw e;
  return errnoName(err.errno, x86) ?? String(err.code);
}

/** The shared directory every run starts from. */
function populate(dir: string): void {
  writeFileSync(join(dir, 'data'), Buffer.alloc(BLOCK, 'd'));
  writeFileSync(join(dir, 'append.txt'), 'hello');
  writeFileSync(join(dir, 'exists'), 'x');
  mkdirSync(join(dir, 'full'));
  writeFileSync(join(dir, 'full', 'inner'), '');
  symlinkSync('data', join(dir, 'link'));
}

/**
 * open(2) flags (host encoding) of the file `path` as the virtiofsd process `pid` holds it open,
 * per the host kernel; its O_PATH handle on the same inode (one per looked-up inode) does not count.
 */
function hostOpenFlags(pid: number, path: string): number | undefined {
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    if (target !== path) continue;
    const info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    const m = /^flags:\s+([0-7]+)$/m.exec(info);
    const flags = m ? parseInt(m[1]!, 8) : 0;
    if ((flags & O_PATH) === 0) return flags;
  }
  return undefined;
}

/**
 * The open flags virtiofsd logged (lo_open) for the OPEN of `nodeid` sent after log line `from`,
 * once its reply's line has come through the pipe; undefined when the device answered without
 * reaching lo_open (do_open refuses some flags first).
 */
async function loggedOpenFlags(logs: string[], from: number, nodeid: bigint): Promise<number | undefined> {
  const request = new RegExp(`\\] +unique: (\\d+), opcode: OPEN \\(14\\), nodeid: ${nodeid},`);
  const open = new RegExp(`\\] lo_open\\(ino=${nodeid}, flags=(\\d+)`);
  for (let waited = 0; waited < 5000; waited += 5) {
    let start = -1;
    let unique: string | undefined;
    for (let i = from; i < logs.length; i++) {
      const m = request.exec(logs[i]!);
      if (m) {
        start = i;
        unique = m[1];
        break;
      }
    }
    const reply = new RegExp(`\\] +unique: ${unique}, (success|error)`);
    const end = start < 0 ? -1 : logs.findIndex((line, i) => i > start && reply.test(line));
    if (end >= 0) {
      for (let i = start; i < end; i++) {
        const m = open.exec(logs[i]!);
        if (m) return Number(m[1]);
      }
      return undefined;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`virtiofsd logged no OPEN of node ${nodeid} and its reply after line ${from}`);
}

/**
 * Starts a device (the host's x86 virtiofsd, or a foreign one), connects in `archMode`, and runs
 * every probe once, each on its own files.
 */
async function probe(t: ExecutionContext, start: Partial<VirtiofsdOptions>, archMode: ArchMode): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), 'vfs-foreign-'));
  populate(dir);
  const logs: string[] = [];
  const clientLog: string[] = [];
  const daemon = await Virtiofsd.start({ sharedDir: dir, sandbox: FOREIGN_SANDBOX, allowDirectIo: true, debug: true, onLog: (l) => logs.push(l), ...start });
  let client: VirtioFsClient | undefined;
  const outcomes: Outcomes = {};
  const deviceFlags: Record<string, number | undefined> = {};
  try {
    client = await VirtioFsClient.connect({ transport: `vhost-user:${daemon.socketPath}`, archMode, log: (l) => clientLog.push(l) });
    const c = client;
    const attempt = async (name: string, fn: () => Promise<string>) => {
      try {
        outcomes[name] = await fn();
      } catch (e) {
        outcomes[name] = errorName(e);
      }
    };
    const data = await c.lookup(ROOT, 'data');
    const openFile = async (name: string, flags: number, use: (fh: bigint) => Promise<string>) => {
      const mark = logs.length;
      await attempt(name, async () => {
        const { fh } = await c.open(data.nodeid, flags);
        try {
          return await use(fh);
        } finally {
          await c.release(data.nodeid, fh, flags);
        }
      });
      deviceFlags[name] = await loggedOpenFlags(logs, mark, data.nodeid);
    };

    // x86 O_DIRECT is arm64's and powerpc's O_DIRECTORY, mips' __O_SYNC.
    await openFile('O_DIRECT open', fsc.O_RDONLY | fsc.O_DIRECT, async (fh) => {
      const host = hostOpenFlags(daemon.pid, join(dir, 'data'));
      if (host === undefined) throw new Error('virtiofsd holds no fd on data');
      const back = await c.read(data.nodeid, fh, 0, BLOCK, fsc.O_RDONLY | fsc.O_DIRECT);
      const direct = (host & fsc.O_DIRECT) !== 0 ? 'direct' : 'NOT direct';
      return `ok: ${direct} on the host, read ${back.equals(Buffer.alloc(BLOCK, 'd')) ? 'back' : 'WRONG DATA'}`;
    });
    await openFile('O_DIRECTORY on a regular file', fsc.O_RDONLY | fsc.O_DIRECTORY, async () => 'ok');
    await openFile('O_NOFOLLOW on a regular file', fsc.O_RDONLY | fsc.O_NOFOLLOW, async () => 'ok');

    await attempt('O_NOFOLLOW on a symlink', async () => {
      const link = await c.lookup(ROOT, 'link');
      const { fh } = await c.open(link.nodeid, fsc.O_RDONLY | fsc.O_NOFOLLOW);
      await c.release(link.nodeid, fh);
      return 'ok';
    });
    await attempt('rmdir of a non-empty directory', async () => {
      await c.lookup(ROOT, 'full'); // virtiofsd removes only what was looked up (EIO otherwise), as the kernel always has
      await c.rmdir(ROOT, 'full');
      return 'ok';
    });
    await attempt('lookup of a 300-char name', async () => {
      await c.lookup(ROOT, 'n'.repeat(300));
      return 'ok';
    });
    await attempt('O_APPEND write at offset 0', async () => {
      const file = await c.lookup(ROOT, 'append.txt');
      const { fh } = await c.open(file.nodeid, fsc.O_WRONLY | fsc.O_APPEND);
      await c.write(file.nodeid, fh, 0, Buffer.from('XY'), fsc.O_WRONLY | fsc.O_APPEND);
      await c.release(file.nodeid, fh, fsc.O_WRONLY | fsc.O_APPEND);
      return `ok: host has '${readFileSync(join(dir, 'append.txt'), 'utf8')}'`;
    });
    await attempt('O_CREAT|O_EXCL on an existing file', async () => {
      const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL;
      const made = await c.create(ROOT, 'exists', flags, 0o644);
      await c.release(made.entry.nodeid, made.fh, flags);
      return 'ok';
    });
    await attempt('getxattr without xattr support', async () => {
      await c.getxattr(data.nodeid, 'user.test');
      return 'ok';
    });
  } finally {
    await client?.close();
    await daemon.stop();
    rmSync(dir, { recursive: true, force: true });
    if (clientLog.length) t.log(clientLog.join('\n'));
  }
  return { outcomes, deviceFlags };
}

/** The x86 device's answers: what a correctly translating client must see from any device. */
let reference: Promise<Run> | undefined;
const referenceRun = (t: ExecutionContext) => (reference ??= probe(t, {}, { kind: 'native' }));

const deviceArch = (arch: ForeignArch): Architecture => resolveArch(foreignArchName[arch]);

/** Probes whose outcome differs from the x86 device's, with both outcomes. */
function deviations(run: Run, ref: Run): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, got] of Object.entries(run.outcomes)) {
    if (got !== ref.outcomes[name]) out[name] = `${got} (x86 device: ${ref.outcomes[name]})`;
  }
  return out;
}

const table = (run: Run) =>
  Object.entries(run.outcomes)
    .map(([name, got]) => `  ${name.padEnd(34)} ${got}` + (run.deviceFlags[name] === undefined ? '' : ` [device got flags 0${run.deviceFlags[name]!.toString(8)}]`))
    .join('\n');

test.before('build the foreign virtiofsd (scripts/foreign/build.sh; ~35 s the first time, then milliseconds)', async () => {
  for (const arch of foreignArches) await foreignVirtiofsd(arch);
});

test('the x86 reference device answers as its C code says', async (t) => {
  if (!requireRoot(t)) return;
  const ref = await referenceRun(t);
  t.log(`x86 virtiofsd (reference):\n${table(ref)}`);
  t.deepEqual(ref.outcomes, {
    'O_DIRECT open': 'ok: direct on the host, read back',
    'O_DIRECTORY on a regular file': 'EINVAL', // do_open: O_TMPFILE contains O_DIRECTORY
    'O_NOFOLLOW on a regular file': 'ok', // cleared by lo_inode_open
    'O_NOFOLLOW on a symlink': 'EBADF', // lo_inode_open: regular files and directories only
    'rmdir of a non-empty directory': 'ENOTEMPTY',
    'lookup of a 300-char name': 'ENAMETOOLONG',
    'O_APPEND write at offset 0': "ok: host has 'helloXY'",
    'O_CREAT|O_EXCL on an existing file': 'EEXIST',
    'getxattr without xattr support': 'ENOSYS',
  });
  t.is(ref.deviceFlags['O_DIRECT open'], fsc.O_DIRECT);
  t.is(ref.deviceFlags['O_NOFOLLOW on a regular file'], fsc.O_NOFOLLOW);
});

for (const arch of foreignArches) {
  const wire = deviceArch(arch);

  test(`${arch} virtiofsd, native mode: INIT completes, then the cross-architecture failures`, async (t) => {
    if (!requireRoot(t)) return;
    const ref = await referenceRun(t);
    const foreign = await foreignVirtiofsd(arch);
    const run = await probe(t, foreign, { kind: 'native' });
    t.log(`${arch} virtiofsd, native mode:\n${table(run)}`);
    const wrong = deviations(run, ref);

    // The device receives x86's bits and reads them as its own.
    t.is(run.deviceFlags['O_NOFOLLOW on a regular file'], fsc.O_NOFOLLOW, 'native mode sends the client encoding');

    if (arch === 'mips64el') {
      // x86 O_DIRECT (040000) is mips __O_SYNC: the open works, but is not direct.
      t.is(run.outcomes['O_DIRECT open'], 'ok: NOT direct on the host, read back');
      t.is(run.deviceFlags['O_DIRECT open'], wire.openFlags.bits.__O_SYNC);
      // mips ENOTEMPTY (93) read as x86's 93, ENAMETOOLONG (78) as x86's 78.
      t.is(run.outcomes['rmdir of a non-empty directory'], 'EPROTONOSUPPORT');
      t.is(run.outcomes['lookup of a 300-char name'], 'EREMCHG');
      t.deepEqual(Object.keys(wrong).sort(), [
        'O_APPEND write at offset 0', // x86 O_APPEND (02000) is mips O_EXCL: the write lands at offset 0
        'O_CREAT|O_EXCL on an existing file', // x86 O_EXCL (0200) is mips O_NONBLOCK: no EEXIST
        'O_DIRECT open',
        'getxattr without xattr support', // mips ENOSYS (89) is x86 EDESTADDRREQ
        'lookup of a 300-char name',
        'rmdir of a non-empty directory',
      ]);
      t.is(run.outcomes['O_APPEND write at offset 0'], "ok: host has 'XYllo'");
      t.is(run.outcomes['O_CREAT|O_EXCL on an existing file'], 'ok');
      t.is(run.outcomes['getxattr without xattr support'], 'EDESTADDRREQ');
    } else {
      // x86 O_DIRECT (040000) is arm64's and powerpc's O_DIRECTORY, which virtiofsd's do_open refuses
      // (O_TMPFILE includes it); and x86 O_DIRECTORY (0200000) is their O_DIRECT or O_LARGEFILE.
      t.true(['EINVAL', 'ENOTDIR'].includes(run.outcomes['O_DIRECT open']!), run.outcomes['O_DIRECT open']);
      t.is(run.outcomes['O_DIRECTORY on a regular file'], 'ok');
      t.deepEqual(Object.keys(wrong).sort(), ['O_DIRECT open', 'O_DIRECTORY on a regular file']);
    }
  });

  test(`${arch} virtiofsd, device-arch mode (${wire.name}): every answer is the x86 device's`, async (t) => {
    if (!requireRoot(t)) return;
    const ref = await referenceRun(t);
    const foreign = await foreignVirtiofsd(arch);
    const run = await probe(t, foreign, { kind: 'device-arch', deviceArch: wire });
    t.log(`${arch} virtiofsd, device-arch mode:\n${table(run)}`);
    t.deepEqual(deviations(run, ref), {});
    t.deepEqual(run.outcomes, ref.outcomes);

    // The device received exactly its own bits.
    t.is(run.deviceFlags['O_DIRECT open'], wire.openFlags.bits.O_DIRECT);
    t.is(run.deviceFlags['O_NOFOLLOW on a regular file'], wire.openFlags.bits.O_NOFOLLOW);
    // Spelled out (all also in the comparison above):
    t.is(run.outcomes['O_DIRECT open'], 'ok: direct on the host, read back');
    t.is(run.outcomes['rmdir of a non-empty directory'], 'ENOTEMPTY');
    t.is(run.outcomes['lookup of a 300-char name'], 'ENAMETOOLONG');
    t.is(run.outcomes['O_APPEND write at offset 0'], "ok: host has 'helloXY'");
    t.is(run.outcomes['O_CREAT|O_EXCL on an existing file'], 'EEXIST');
  });
}

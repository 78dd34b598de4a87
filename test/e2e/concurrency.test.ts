// Many processes at once through one mount (the relay over QEMU's C virtiofsd with POSIX and flock
// locks): 16 processes for a bounded time, each on a file of its own, on a slot of its own in one
// shared file, and on two shared files guarded by locks (taken without waiting, and retried:
// QEMU 7.2's virtiofsd refuses blocking lock requests). Afterwards the tree, read through the
// mount and on the host, must equal what a model of the acknowledged operations says: no lost
// write, no torn record, no wrong size, and the locks excluded across processes.
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Virtiofsd } from '../../client/backends/virtiofsd.ts';
import { FuseRelay } from '../../client/frontend/relay.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const PROCESSES = 16;
const SECONDS = 4;
const SLOT = 64 * 1024;
const RECORD = 512;

/**
 * One process: loops until its time is up over four kinds of work, counting what was acknowledged;
 * prints the counts as JSON at the end. Records carry (process, sequence) and a pattern of both.
 */
const WORKER = String.raw`
import fcntl, json, os, struct, sys, time
root, me, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
SLOT, RECORD = ${SLOT}, ${RECORD}
def posix(kind):
    # F_SETLK on the whole file (lockf's unlock is F_SETLKW, which that virtiofsd refuses too).
    return lambda fd, _flags: fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack('hhqqi', kind, 0, 0, 0, 0))
def take(lock, fd):
    # QEMU 7.2's virtiofsd answers blocking lock requests (SETLKW) with EOPNOTSUPP: try, and retry.
    while True:
        try:
            return lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (11, 13): raise
            time.sleep(0.0005)
def rec(p, k, size):
    head = struct.pack('<II', p, k)
    return head + bytes([(p * 31 + k) & 0xff]) * (size - len(head))
own = os.open(os.path.join(root, 'own-%d' % me), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
slots = os.open(os.path.join(root, 'slots'), os.O_RDWR)
counter = os.open(os.path.join(root, 'counter'), os.O_RDWR)
journal = os.open(os.path.join(root, 'journal'), os.O_WRONLY | os.O_APPEND)
n = {'own': 0, 'slot': 0, 'increments': 0, 'journal': 0}
end = time.monotonic() + seconds
while time.monotonic() < end:
    os.write(own, rec(me, n['own'], RECORD)); n['own'] += 1
    os.pwrite(slots, rec(me, n['slot'], SLOT), me * SLOT); n['slot'] += 1
    take(posix(fcntl.F_WRLCK), counter)
    try:
        v = int(os.pread(counter, 32, 0).decode() or '0')
        os.pwrite(counter, ('%020d' % (v + 1)).encode(), 0)
        n['increments'] += 1
    finally:
        posix(fcntl.F_UNLCK)(counter, 0)
    take(fcntl.flock, journal)
    try:
        os.write(journal, rec(me, n['journal'], RECORD)); n['journal'] += 1
    finally:
        fcntl.flock(journal, fcntl.LOCK_UN | fcntl.LOCK_NB)
    if n['own'] % 32 == 0: os.fsync(own)
print(json.dumps(n), flush=True)
`;

interface Counts {
  own: number;
  slot: number;
  increments: number;
  journal: number;
}

function record(p: number, k: number, size: number): Buffer {
  const b = Buffer.alloc(size, (p * 31 + k) & 0xff);
  b.writeUInt32LE(p, 0);
  b.writeUInt32LE(k, 4);
  return b;
}

function run(root: string, me: number): Promise<Counts> {
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-c', WORKER, root, String(me), String(SECONDS)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), (SECONDS + 30) * 1000);
    // 'close', not 'exit': output may still sit in the pipe when the process is gone.
    child.once('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(JSON.parse(out) as Counts);
      else reject(new Error(`process ${me}: exit ${code}: ${err.trim()}`));
    });
  });
}

test(`${PROCESSES} processes for ${SECONDS} s on own and shared files, locks between them: nothing lost, torn or miscounted, through the mount and on the host`, async (t) => {
  if (!requireRoot(t)) return;
  const work = mkdtempSync(join(tmpdir(), 'vfs-many-'));
  const shared = join(work, 'shared');
  const mnt = join(work, 'mnt');
  mkdirSync(shared);
  mkdirSync(mnt);
  writeFileSync(join(shared, 'slots'), Buffer.alloc(PROCESSES * SLOT));
  writeFileSync(join(shared, 'counter'), '');
  writeFileSync(join(shared, 'journal'), '');
  const daemon = await Virtiofsd.start({ sharedDir: shared, posixLock: true, flock: true });
  const log: string[] = [];
  const relay = await FuseRelay.mount({ transport: `vhost-user:${daemon.socketPath}`, mountpoint: mnt, log: (l) => log.push(l) });
  try {
    const counts = await Promise.all(Array.from({ length: PROCESSES }, (_, me) => run(mnt, me)));
    const total = (k: keyof Counts) => counts.reduce((s, c) => s + c[k], 0);
    t.log(`${total('own')} own records, ${total('slot')} slot writes, ${total('increments')} locked increments, ${total('journal')} journal records`);
    for (const [label, root] of [['through the mount', mnt], ['on the host', shared]] as const) {
      counts.forEach((c, me) => {
        const own = readFileSync(join(root, `own-${me}`));
        t.is(own.length, c.own * RECORD, `${label}: own-${me} has every record`);
        let bad = 0;
        for (let k = 0; k < c.own; k++) if (!own.subarray(k * RECORD, (k + 1) * RECORD).equals(record(me, k, RECORD))) bad++;
        t.is(bad, 0, `${label}: own-${me} in order, intact`);
      });
      const slots = readFileSync(join(root, 'slots'));
      t.is(slots.length, PROCESSES * SLOT, `${label}: slots keeps its size`);
      counts.forEach((c, me) => t.true(slots.subarray(me * SLOT, (me + 1) * SLOT).equals(record(me, c.slot - 1, SLOT)), `${label}: slot ${me} holds its last write whole`));
      t.is(Number(readFileSync(join(root, 'counter'), 'utf8')), total('increments'), `${label}: the POSIX lock kept every increment (no lost update)`);
      const journal = readFileSync(join(root, 'journal'));
      t.is(journal.length, total('journal') * RECORD, `${label}: the journal has every record`);
      const next = new Array<number>(PROCESSES).fill(0);
      let torn = 0;
      for (let at = 0; at < journal.length; at += RECORD) {
        const p = journal.readUInt32LE(at);
        const k = journal.readUInt32LE(at + 4);
        if (p >= PROCESSES || k !== next[p] || !journal.subarray(at, at + RECORD).equals(record(p, k, RECORD))) torn++;
        else next[p]!++;
      }
      t.is(torn, 0, `${label}: journal records whole, each process's in order`);
    }
    t.deepEqual(log.filter((l) => !/device offers/.test(l)), [], 'the client logged no trouble');
  } finally {
    await relay.unmount();
    await daemon.stop();
    rmSync(work, { recursive: true, force: true });
  }
});

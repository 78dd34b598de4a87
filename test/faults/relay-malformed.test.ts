// The malformed replies of test/helpers/malformed-cases.ts, through a real /dev/fuse mount: the relay
// over the fault-injecting device, this machine's FUSE module making the requests and shell tools
// (child processes) as the application. Each bad reply gives the application EIO, one log line
// names the opcode and the field, nothing hangs, and the mount keeps working.
import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FuseRelay } from '../../client/frontend/relay.ts';
import { FILE_SIZE, FakeVirtioFs, fileData, until } from '../helpers/fake-virtio-fs.ts';
import { MALFORMED_CASES, type MalformedCase } from '../helpers/malformed-cases.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const FILE = Buffer.from(fileData());
/** Every application call returns within this (the relay's requests get replies in microseconds). */
const APP_TIMEOUT_MS = 10_000;

interface AppResult {
  status: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs a tool in a child process (this process serves the mount) and waits for it. */
function app(command: string, ...args: string[]): Promise<AppResult> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { encoding: 'buffer', timeout: APP_TIMEOUT_MS, killSignal: 'SIGKILL' }, (error, stdout, stderr) => {
      const killed = error !== null && (error as NodeJS.ErrnoException & { killed?: boolean }).killed;
      if (killed) reject(new Error(`${command} ${args.join(' ')} did not return within ${APP_TIMEOUT_MS} ms`));
      else resolve({ status: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr: stderr.toString() });
    });
  });
}

/** What the application does to make `op` reach the device, freshly mounted (nothing cached yet). */
function provoke(mnt: string, op: MalformedCase['op']): Promise<AppResult> {
  switch (op) {
    case 'GETATTR':
      return app('stat', '-c', '%s', mnt);
    case 'READ':
      // O_DIRECT: one READ of exactly this size, not readahead whose failure the page cache hides.
      return app('dd', `if=${join(mnt, 'hello.txt')}`, 'bs=4096', 'count=1', 'iflag=direct', 'status=none');
    case 'READDIRPLUS':
      return app('ls', mnt);
  }
}

async function stillWorks(t: ExecutionContext, mnt: string, fake: FakeVirtioFs, relay: FuseRelay): Promise<void> {
  t.is((await app('stat', '-c', '%s', join(mnt, 'hello.txt'))).stdout.toString().trim(), String(FILE_SIZE));
  const cat = await app('cat', join(mnt, 'hello.txt'));
  t.is(cat.status, 0, cat.stderr);
  t.true(cat.stdout.equals(FILE), 'the whole file reads back byte-exact');
  t.deepEqual((await app('ls', mnt)).stdout.toString().split('\n').filter(Boolean), ['hello.txt', 'sub']);
  t.is(relay.session.device.failed, undefined, 'one bad reply does not fail the device');
  // RELEASE follows a close asynchronously: give the last one its round trip.
  await until(() => relay.status().inFlight === 0, 2000, 'every slot back').catch(() => undefined);
  t.is(relay.status().inFlight, 0, 'every request came back from the device');
  t.deepEqual(fake.violations, []);
}

interface FakeMount {
  mnt: string;
  fake: FakeVirtioFs;
  relay: FuseRelay;
  /** Every line the relay logged. */
  logs: string[];
}

/** The relay mounted over a fresh fault-injecting device (request timeout `timeoutMs`), unmounted after `fn`. */
async function withFakeMount(timeoutMs: number | undefined, fn: (m: FakeMount) => Promise<void>, timeEvery?: number): Promise<void> {
  const mnt = mkdtempSync(join(tmpdir(), 'vfs-relay-fault-'));
  const fake = new FakeVirtioFs();
  const logs: string[] = [];
  const relay = await FuseRelay.mount({
    transport: fake,
    mountpoint: mnt,
    ...(timeoutMs ? { timeoutMs } : {}),
    ...(timeEvery ? { timeEvery } : {}),
    log: (line) => logs.push(line),
  });
  try {
    await fn({ mnt, fake, relay, logs });
  } finally {
    await relay.unmount();
    rmSync(mnt, { recursive: true, force: true });
  }
}

for (const c of MALFORMED_CASES) {
  test(`through a mount: ${c.title}`, async (t) => {
    if (!requireRoot(t)) return;
    await withFakeMount(undefined, async ({ mnt, fake, relay, logs }) => {
      fake.faultNext(c.op, c.fault);
      const bad = await provoke(mnt, c.op);
      t.not(bad.status, 0, `${c.op} with a malformed reply must fail`);
      t.regex(bad.stderr, /Input\/output error/, 'the application sees EIO');
      const lines = logs.filter((l) => l.includes(c.op) && c.field.test(l));
      t.is(lines.length, 1, `one log line names ${c.op} and ${c.field}; got:\n${logs.join('\n')}`);
      t.log(lines[0]);
      await stillWorks(t, mnt, fake, relay);
    });
  });
}

// timeEvery 16: what a machine with a slow clock (a TCG guest) runs: most requests untimed, timeouts
// from the thread's last clock reading.
for (const timeEvery of [1, 16]) {
  test(`through a mount (one request in ${timeEvery} timed): a reply that never comes gives the application EIO after the request timeout, one log line; the slot comes back when the device answers late`, async (t) => {
    if (!requireRoot(t)) return;
    const timeoutMs = 500;
    await withFakeMount(timeoutMs, async ({ mnt, fake, relay, logs }) => {
      // The same call answered, for what this machine takes now (spawning dd is most of it).
      let started = performance.now();
      t.is((await provoke(mnt, 'READ')).status, 0);
      const answered = performance.now() - started;
      fake.faultNext('READ', () => 'hold');
      started = performance.now();
      const bad = await provoke(mnt, 'READ');
      const took = performance.now() - started;
      t.not(bad.status, 0);
      t.regex(bad.stderr, /Input\/output error/, 'the application sees EIO');
      t.log(`EIO after ${Math.round(took)} ms (timeout ${timeoutMs} ms; answered, the call took ${Math.round(answered)} ms)`);
      t.true(took >= timeoutMs, 'not before the timeout');
      t.true(took < 4 * (answered + timeoutMs), 'and not much after it');
      const lines = logs.filter((l) => /READ unique \d+: no reply from the device after 500 ms/.test(l));
      t.is(lines.length, 1, logs.join('\n'));
      t.is(fake.held.length, 1, 'the device still holds the request');
      t.is(relay.status().inFlight, 1, 'its slot stays with the device');
      t.is(fake.answerHeld(), 1);
      await until(() => relay.status().inFlight === 0, 2000, 'the late answer frees the slot');
      await stillWorks(t, mnt, fake, relay);
      const status = relay.status();
      t.is(status.timing?.every, timeEvery);
      const reads = status.operations.find((o) => o.opcode === 'READ');
      t.true(reads !== undefined && reads.count >= 3 && reads.errors === 1, JSON.stringify(reads));
    }, timeEvery);
  });
}

test('through a mount: unmounting does not wait for a request the device never answered', async (t) => {
  if (!requireRoot(t)) return;
  await withFakeMount(300, async ({ mnt, fake, relay }) => {
    fake.faultNext('READ', () => 'hold');
    t.not((await provoke(mnt, 'READ')).status, 0);
    const started = performance.now();
    await relay.unmount();
    const took = performance.now() - started;
    t.true(took < 2000, `unmounted in ${Math.round(took)} ms with a timed-out request still at the device`);
  });
});

test('through a mount: a used entry naming a chain never given breaks the device: EIO, the mount goes, no FUSE_DESTROY down the broken ring', async (t) => {
  if (!requireRoot(t)) return;
  await withFakeMount(2000, async ({ mnt, fake, relay, logs }) => {
    fake.faultNext('READ', (_request, reply) => {
      reply.usedId = 0xffff_ffff;
    });
    const bad = await provoke(mnt, 'READ');
    t.not(bad.status, 0);
    t.regex(bad.stderr, /Input\/output error|Transport endpoint is not connected|Software caused connection abort/);
    const started = performance.now();
    const reason = await relay.closed;
    t.regex(reason, /device failed: .*corrupt used ring: id 4294967295 is out of range/);
    t.true(performance.now() - started < 1000, 'torn down at once, not after a DESTROY timeout');
    t.deepEqual(fake.requests.filter((r) => r.name === 'DESTROY'), [], 'no DESTROY sent');
    t.true(logs.some((l) => /corrupt used ring/.test(l)), logs.join('\n'));
  });
});

// The device-behaviour fuzzer, a short fixed-seed run of each target (npm run fuzz runs long ones):
// mutated replies through a real /dev/fuse mount, through the client API, and through the client API
// over the real virtio-pci transport on a PCI function of this process (which also sets
// DEVICE_NEEDS_RESET and changes its configuration). Every mutation the
// client must catch is named in exactly one log line (opcode, field, unique); no line names an
// unmutated reply; no call hangs; no thread crashes; the device failures (a used ring naming a
// chain never given) end in a remount; descriptors do not pile up over the remounts.
import test from 'ava';
import { formatReport, fuzzApi, fuzzMount, type FuzzReport } from '../helpers/reply-fuzzer.ts';
import { MUTATION_KINDS } from '../helpers/reply-mutator.ts';
import { requireRoot } from '../helpers/virtiofsd.ts';

const SEED = 20261205;
const REPLIES = 2000;
/** A call through the relay answers in well under a millisecond here; a hang is one that has not in 10 s. */
const HANG_MS = 10_000;
/** Replies never sent fail this fast (each holds the run up that long). */
const REQUEST_TIMEOUT_MS = 300;

/** Kinds too rare to come up in 2,000 draws every time; those that need a directory listing at the device; PCI's own. */
const RARE = ['used id never issued', 'device gone mid-stream', 'device needs reset'];
const DIRENT = ['dirent namelen', 'dirent off'];
const PCI_ONLY = ['device needs reset', 'config change'];

function assertClean(t: import('ava').ExecutionContext, r: FuzzReport): void {
  t.log(formatReport(r));
  t.is(r.mutated, REPLIES);
  t.deepEqual(r.missed, [], 'every mutation the client must catch is named');
  t.deepEqual(r.falseAlarms, [], 'no line names a reply that was not mutated');
  t.deepEqual(r.namedTwice, [], 'one line per bad reply');
  t.deepEqual(r.hangs, []);
  t.deepEqual(r.crashes, []);
  t.true(r.named > REPLIES / 2, `${r.named} of ${REPLIES} mutated replies named`);
  // Every kind but the rare device-breaking ones comes up in 2,000 draws. Through a mount, which
  // listings reach the device is the kernel's choice (READDIRPLUS_AUTO, timing): there the
  // dirent kinds are not required; the client API lists a directory on every fifth call or so.
  const required = MUTATION_KINDS.filter((k) => !RARE.includes(k) && (r.target !== 'mount' || !DIRENT.includes(k)) && (r.target === 'pci' || !PCI_ONLY.includes(k)));
  for (const kind of required) t.true((r.byKind.get(kind)?.mutated ?? 0) > 0, `${kind} was tried`);
  if (r.target !== 'pci') for (const kind of PCI_ONLY) t.is(r.byKind.get(kind), undefined, `${kind} only on PCI`);
  else {
    // Each change is said; changes that come faster than the client looks are said together.
    t.true(r.configLines > 0 && r.configLines <= r.configChanges, `${r.configLines} lines for ${r.configChanges} configuration changes`);
  }
  t.true(r.fdsAfter - r.fdsBefore < 64, `open descriptors ${r.fdsBefore} -> ${r.fdsAfter} over ${r.remounts} remounts`);
}

test.serial('fuzz through a /dev/fuse mount: 2,000 mutated replies, seed 20261205', async (t) => {
  if (!requireRoot(t)) return;
  assertClean(t, await fuzzMount({ seed: SEED, replies: REPLIES, hangMs: HANG_MS, requestTimeoutMs: REQUEST_TIMEOUT_MS }));
});

test.serial('fuzz through the client API: 2,000 mutated replies, seed 20261205', async (t) => {
  assertClean(t, await fuzzApi({ seed: SEED, replies: REPLIES, hangMs: HANG_MS, requestTimeoutMs: REQUEST_TIMEOUT_MS }));
});

test.serial('fuzz through the virtio-pci transport (MSI-X, INTx, polling): 2,000 mutated replies, seed 20261205', async (t) => {
  assertClean(t, await fuzzApi({ seed: SEED, replies: REPLIES, hangMs: HANG_MS, requestTimeoutMs: REQUEST_TIMEOUT_MS }, true));
});

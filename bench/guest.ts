// The guest kernel's own virtio_fs driver and this client, side by side in one QEMU guest boot, over
// the same virtio-fs PCI function (QEMU's vhost-user-fs-pci, QEMU 7.2's virtiofsd on the host): the
// kernel first (the function bound to virtio_pci), then libfuse's C passthrough_ll on top of the
// kernel's mount (what one userspace FUSE hop costs a C program here), then the client over VFIO in
// no-IOMMU mode (or UIO), the same workloads on the same files. Prints each figure and X/kernel.
// Under TCG (no usable KVM here) absolute figures mean little: the ratio, from one boot, is the
// figure. Never a timed test.
// Run: npm run bench:guest [-- --seconds 5 --transport vfio|uio|both --boots N]
// Boot to boot the ratios move (the kernel's own cold 1 MiB read went from 38 to 117 MiB/s between
// two boots on 2026-12-05): --boots N prints every boot's table and then each ratio's median.
// --queues-compare: instead, the client with 1 and with 2 request queues (mount --queues), in one boot,
// each on its own function of QEMU's vhost-user-fs-pci with num-request-queues=2 served by the
// reference device (QEMU 7.2's virtiofsds refuse a second request queue; the reference device serves
// one session per process, hence one function each), under 4 jobs at once; prints 2-queue/1-queue.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { GUEST_SH, runInGuest } from '../test/helpers/vm.ts';
import { Cleanup } from './lib/cleanup.ts';
import { buildPassthroughLl } from './lib/passthrough-ll.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    transport: { type: 'string', default: 'vfio' },
    'queues-compare': { type: 'boolean', default: false },
    /** Node options for our client's processes in the guest (NODE_OPTIONS), e.g. --jitless. */
    'client-node-options': { type: 'string', default: '' },
    /** Boots to run: each prints its own table; with several, the median ratio of each cell follows. */
    boots: { type: 'string', default: '1' },
  },
});
const seconds = Number(values.seconds);
const boots = Number(values.boots);
const transports = values.transport === 'both' ? ['vfio', 'uio'] : [values.transport!];
if (!(seconds > 0) || !(Number.isInteger(boots) && boots >= 1) || transports.some((t) => t !== 'vfio' && t !== 'uio')) {
  throw new Error('usage: bench:guest [-- --seconds N --transport vfio|uio|both --boots N] [--queues-compare]');
}

/** Sequential files: 64 MiB (guest memory is 1 GiB, and TCG is slow). The random-read file is laid out on the host. */
const SEQ_MIB = 64;
const RAND_MIB = 128;
/** create + fstat + unlink rounds. */
const META_ROUNDS = 500;

const WORKLOADS = [
  { key: 'seqwrite', title: '1 MiB sequential write (fsync at end)' },
  { key: 'seqread', title: '1 MiB sequential read (cold)' },
  { key: 'randread', title: '4 KiB random read, 1 job (cold)' },
  { key: 'meta', title: 'create + stat + unlink' },
] as const;

const PY_FIO = `import json,sys; j=json.load(sys.stdin)["jobs"][0]; d=j[sys.argv[1]]; print(int(d["bw_bytes"]), int(d["iops"]))`;
const PY_META = `
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
for i in range(n):
    p = os.path.join(d, f"m{i}")
    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.fstat(fd); os.close(fd); os.stat(p); os.unlink(p)
print(0, round(n / (time.perf_counter() - t0)))`;

/**
 * The guest's `RESULT <who> <key> <bytes/s> <ops/s>` lines: a workload's figure, MiB/s for the
 * sequential ones (their key starts with 'seq'), ops/s for the others.
 */
function figures(run: { output: string }): (who: string, key: string) => number | undefined {
  const results = new Map<string, { bytes: number; ops: number }>();
  for (const line of run.output.split('\n')) {
    const m = /^RESULT (\S+) (\S+) (\d+) (\d+)$/.exec(line.trim());
    if (m) results.set(`${m[1]}/${m[2]}`, { bytes: Number(m[3]), ops: Number(m[4]) });
  }
  return (who, key) => {
    const r = results.get(`${who}/${key}`);
    return r === undefined ? undefined : key.startsWith('seq') ? r.bytes / 2 ** 20 : r.ops;
  };
}

const fio = (dir: string, rw: string, bs: string, extra: string) =>
  `fio --name=g --filename=${dir} --rw=${rw} --bs=${bs} --ioengine=psync --output-format=json ${extra} 2>/dev/null | python3 -c '${PY_FIO}' ${rw.includes('write') ? 'write' : 'read'}`;

/** The workloads on `dir`, each printing `RESULT <who> <key> <bytes/s> <ops/s>`. */
const workloads = (who: string, dir: string) => `
  vm_step ${who}-seqwrite 200
  echo "RESULT ${who} seqwrite $(${fio(`${dir}/seq-${who}.dat`, 'write', '1M', `--size=${SEQ_MIB}M --end_fsync=1`)})"
  sync; echo 3 > /proc/sys/vm/drop_caches
  vm_step ${who}-seqread 200
  echo "RESULT ${who} seqread $(${fio(`${dir}/seq-${who}.dat`, 'read', '1M', `--size=${SEQ_MIB}M --invalidate=1`)})"
  rm -f ${dir}/seq-${who}.dat
  sync; echo 3 > /proc/sys/vm/drop_caches
  vm_step ${who}-randread 200
  echo "RESULT ${who} randread $(${fio(`${dir}/rand.dat`, 'randread', '4k', `--size=${RAND_MIB}M --invalidate=1 --time_based --runtime=${seconds}`)})"
  vm_step ${who}-meta 200
  mkdir -p ${dir}/meta-${who}
  echo "RESULT ${who} meta $(python3 -c '${PY_META}' ${dir}/meta-${who} ${META_ROUNDS})"
  rmdir ${dir}/meta-${who}
`;

const clientRun = (transport: string) => `
  ${transport === 'vfio' ? GUEST_SH.bindVfio : GUEST_SH.bindUio}
  mkdir -p /tmp/mnt-${transport}
  vm_step ${transport}-mount 60
  ${values['client-node-options'] ? `NODE_OPTIONS=${JSON.stringify(values['client-node-options'])} ` : ''}${GUEST_SH.cli('mount', '--transport', transport === 'vfio' ? 'vfio:$BDF' : 'uio:${UIO#/dev/}', `/tmp/mnt-${transport}`)} || exit 1
  ${workloads(transport, `/tmp/mnt-${transport}`)}
  vm_step ${transport}-status 60
  ${GUEST_SH.cli('status', `/tmp/mnt-${transport}`)} | grep -E 'transport|interrupt|polling|timing|per request|READ |CREATE ' | sed 's/^/STATUS ${transport}: /'
  vm_step ${transport}-unmount 60
  ${GUEST_SH.cli('unmount', `/tmp/mnt-${transport}`)} || exit 1
  vm_wait_relay_exit /tmp/mnt-${transport} || exit 1
`;

const guestScript = (PASSTHROUGH_LL: string) => `
  ${GUEST_SH.modprobe('fuse')}
  ${GUEST_SH.findVirtiofsBdf}
  vm_step kernel-mount 30
  ${GUEST_SH.mountVirtiofs('/tmp/mnt-kernel')}
  ${workloads('kernel', '/tmp/mnt-kernel')}
  # The C analog of a userspace client: libfuse's passthrough_ll relaying a FUSE mount to the
  # kernel's virtio_fs mount. One userspace hop through /dev/fuse, as ours, with the kernel's
  # virtio path behind it (ours does virtio itself).
  vm_step ptll-mount 30
  mkdir -p /tmp/mnt-ptll
  ${PASSTHROUGH_LL} -f -o source=/tmp/mnt-kernel -o cache=auto /tmp/mnt-ptll &
  for i in $(seq 100); do grep -q ' /tmp/mnt-ptll fuse' /proc/mounts && break; sleep 0.2; done
  ${workloads('ptll', '/tmp/mnt-ptll')}
  fusermount3 -u /tmp/mnt-ptll; wait
  umount /tmp/mnt-kernel
  ${transports.map(clientRun).join('\n')}
`;

/** --queues-compare: 4 jobs at once. */
const JOBS = 4;
const QUEUE_WORKLOADS = [
  { key: 'randread4', title: `4 KiB random read, ${JOBS} jobs (cold)` },
  { key: 'seqwrite4', title: `1 MiB sequential write, ${JOBS} jobs (fsync at end)` },
  { key: 'meta4', title: `create + stat + unlink, ${JOBS} processes` },
] as const;

/** The client with `queues` request queues on reference-device function `n`, the 4-job workloads. */
const queuesRun = (transport: string, n: number, queues: number) => {
  const who = `q${queues}`;
  const dir = `/tmp/mnt-${who}`;
  return `
  BDF=$(vm_reference_bdf ${n}) || exit 1
  ${transport === 'vfio' ? GUEST_SH.bindVfio : GUEST_SH.bindUio}
  mkdir -p ${dir}
  vm_step ${who}-mount 60
  ${GUEST_SH.cli('mount', '--queues', String(queues), '--transport', transport === 'vfio' ? 'vfio:$BDF' : 'uio:${UIO#/dev/}', dir)} || exit 1
  vm_step ${who}-randread4 200
  echo "RESULT ${who} randread4 $(${fio(`${dir}/rand.dat`, 'randread', '4k', `--size=${RAND_MIB}M --invalidate=1 --time_based --runtime=${seconds} --numjobs=${JOBS} --group_reporting`)})"
  vm_step ${who}-seqwrite4 200
  mkdir -p ${dir}/seq-${who}
  echo "RESULT ${who} seqwrite4 $(fio --name=g --directory=${dir}/seq-${who} --rw=write --bs=1M --size=${SEQ_MIB / JOBS}M --end_fsync=1 --numjobs=${JOBS} --group_reporting --ioengine=psync --output-format=json 2>/dev/null | python3 -c '${PY_FIO}' write)"
  rm -rf ${dir}/seq-${who}
  vm_step ${who}-meta4 200
  for j in $(seq ${JOBS}); do mkdir -p ${dir}/meta-${who}-$j; python3 -c '${PY_META}' ${dir}/meta-${who}-$j ${META_ROUNDS / JOBS} > /tmp/meta-$j & done; wait
  echo "RESULT ${who} meta4 0 $(cat /tmp/meta-* | awk '{ s += $2 } END { print s }')"
  rm -rf ${dir}/meta-${who}-*
  vm_step ${who}-status 60
  ${GUEST_SH.cli('status', dir)} | grep -E 'transport|interrupts|queues|per request' | sed 's/^/STATUS ${who}: /'
  vm_step ${who}-unmount 60
  ${GUEST_SH.cli('unmount', dir)} || exit 1
  vm_wait_relay_exit ${dir} || exit 1
`;
};

async function compareQueues(): Promise<void> {
  const transport = transports[0]!;
  const shared = mkdtempSync(join(tmpdir(), 'vfs-bench-guest-q-'));
  try {
    writeFileSync(join(shared, 'rand.dat'), Buffer.alloc(RAND_MIB << 20, 0x5a));
    const load = loadavg()[0]!.toFixed(2);
    const script = `${GUEST_SH.modprobe('fuse')}\n${queuesRun(transport, 0, 1)}\n${queuesRun(transport, 1, 2)}`;
    const run = await runInGuest({
      script,
      sharedDir: shared,
      referenceDevice: { queues: 2, functions: 2 },
      timeoutMs: 1_800_000,
      defaultBudget: 60,
      label: 'bench:guest --queues-compare',
      onConsole: (l) => process.env.VERBOSE && console.error(l),
    });
    if (run.exitCode !== 0) throw new Error(`the guest script failed (${run.exitCode}):\n${run.output}`);
    const figure = figures(run);
    console.log(`virtiofs-client in a QEMU guest, 1 vs 2 request queues (${transport}): one boot, ${new Date().toISOString().slice(0, 10)}`);
    console.log(
      `guest: ${run.artifacts.kernelRelease}, ${run.accelerator.accel}, 2 vCPUs, 1 GiB; device: vhost-user-fs-pci num-request-queues=2, the reference device (--queues 2) in front of QEMU 7.2's virtiofsd, one function per mount; host: ${cpus().length} CPUs, load ${load} at the start; whole run ${(run.durationMs / 1000).toFixed(0)} s`,
    );
    console.log('| workload | 1 queue | 2 queues | 2/1 |');
    console.log('|---|---:|---:|---:|');
    for (const w of QUEUE_WORKLOADS) {
      const one = figure('q1', w.key);
      const two = figure('q2', w.key);
      const unit = w.key.startsWith('seq') ? 'MiB/s' : 'ops/s';
      console.log(`| ${w.title}, ${unit} | ${one?.toFixed(1) ?? '-'} | ${two?.toFixed(1) ?? '-'} | ${one && two ? (two / one).toFixed(3) : '-'} |`);
    }
    for (const line of run.output.split('\n')) if (line.startsWith('STATUS ')) console.log(line.slice('STATUS '.length).trimEnd());
    for (const [n, output] of run.referenceDeviceOutput.entries()) {
      const served = output.find((l) => l.includes('served on their own threads'));
      if (served) console.log(`reference device ${n}: ${served.replace(/^reference-device: /, '')}`);
    }
  } finally {
    rmSync(shared, { recursive: true, force: true });
  }
}

if (values['queues-compare']) {
  await compareQueues();
  process.exit(0);
}

const CACHE_DIR = fileURLToPath(new URL('../node_modules/.cache/virtiofs-bench/', import.meta.url));
const cleanup = new Cleanup();
const shared = mkdtempSync(join(tmpdir(), 'vfs-bench-guest-'));
try {
  writeFileSync(join(shared, 'rand.dat'), Buffer.alloc(RAND_MIB << 20, 0x5a));
  const load = loadavg()[0]!.toFixed(2);
  const passthroughLl = await buildPassthroughLl(cleanup, CACHE_DIR);
  const columns = ['ptll', ...transports];
  const unit = (key: string) => (key === 'seqwrite' || key === 'seqread' ? 'MiB/s' : 'ops/s');
  /** Per boot: each (column, workload)'s ratio to the kernel. */
  const ratios: Map<string, number>[] = [];
  for (let boot = 1; boot <= boots; boot++) {
    const run = await runInGuest({ script: guestScript(passthroughLl), sharedDir: shared, timeoutMs: 1_800_000, defaultBudget: 60, label: 'bench:guest', onConsole: (l) => process.env.VERBOSE && console.error(l) });
    if (run.exitCode !== 0) throw new Error(`the guest script failed (${run.exitCode}):\n${run.output}`);
    const figure = figures(run);
    console.log(`virtiofs-client in a QEMU guest beside the guest kernel's virtio_fs: one boot${boots > 1 ? ` (${boot} of ${boots})` : ''}, ${new Date().toISOString().slice(0, 10)}`);
    console.log(
      `guest: ${run.artifacts.kernelRelease}, ${run.accelerator.accel} (${run.accelerator.why}), 2 vCPUs, 1 GiB; device: vhost-user-fs-pci, QEMU 7.2 virtiofsd (cache=auto)${values['client-node-options'] ? `; client with NODE_OPTIONS=${values['client-node-options']}` : ''}; host: ${cpus().length} CPUs, load ${boot === 1 ? load : loadavg()[0]!.toFixed(2)} at the start; boot ${(run.bootMs / 1000).toFixed(1)} s, whole run ${(run.durationMs / 1000).toFixed(0)} s`,
    );
    const header = ['workload', 'kernel', ...columns.flatMap((t) => [t === 'ptll' ? 'C passthrough_ll over kernel' : t, `${t === 'ptll' ? 'C' : t}/kernel`])];
    const these = new Map<string, number>();
    const rows = WORKLOADS.map((w) => {
      const k = figure('kernel', w.key);
      const cells = columns.flatMap((t) => {
        const c = figure(t, w.key);
        if (c !== undefined && k) these.set(`${t}/${w.key}`, c / k);
        return [c === undefined ? '-' : c.toFixed(1), c === undefined || !k ? '-' : (c / k).toFixed(3)];
      });
      return [`${w.title}, ${unit(w.key)}`, k === undefined ? '-' : k.toFixed(1), ...cells];
    });
    ratios.push(these);
    console.log(`| ${header.join(' | ')} |`);
    console.log(`|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`);
    for (const r of rows) console.log(`| ${r.join(' | ')} |`);
    // The client's own view of where a request's time went (status; client-side means over the whole run).
    for (const line of run.output.split('\n')) if (line.startsWith('STATUS ')) console.log(line.slice('STATUS '.length).trimEnd());
  }
  if (boots > 1) {
    const median = (xs: number[]) => {
      const sorted = [...xs].sort((a, b) => a - b);
      const mid = sorted.length >> 1;
      return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
    };
    console.log(`\nmedian of ${boots} boots, each ratio to the kernel of its own boot (min-max in brackets):`);
    const header = ['workload', ...columns.map((t) => `${t === 'ptll' ? 'C' : t}/kernel`)];
    console.log(`| ${header.join(' | ')} |`);
    console.log(`|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`);
    for (const w of WORKLOADS) {
      const cells = columns.map((t) => {
        const xs = ratios.map((r) => r.get(`${t}/${w.key}`)).filter((x): x is number => x !== undefined);
        return xs.length === 0 ? '-' : `${median(xs).toFixed(3)} (${Math.min(...xs).toFixed(3)}-${Math.max(...xs).toFixed(3)})`;
      });
      console.log(`| ${w.title} | ${cells.join(' | ')} |`);
    }
  }
} finally {
  rmSync(shared, { recursive: true, force: true });
  await cleanup.run();
}

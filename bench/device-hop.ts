// What one hop to a device costs a FUSE daemon, in C, against our relay, in one run.
//
// Every virtio-fs request goes from the driver to another party (the device) and back. This
// measures that hop alone, without vhost-user, shared memory or JavaScript: libfuse's own
// passthrough_ll, built twice from the same source, once as it is and once with bench/c/device-hop.h
// force-included, which hands each WRITE's pwrite to a second thread through an eventfd and waits on
// another (VFS_BENCH_DEVICE_HOP=1). Same copies, same syscalls, plus two wake-ups per request. Beside
// them our relay over QEMU's C virtiofsd, the whole path. fio 1 MiB sequential writes (psync,
// buffered), rounds alternating the three mounts; each figure is the median of its rounds.
// Run: npm run bench:device-hop [-- --seconds 3 --rounds 3 --size 128 --bs 1M]
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Virtiofsd } from '../client/backends/virtiofsd.ts';
import { Cleanup, runOk } from './lib/cleanup.ts';
import { runFio } from './lib/fio.ts';
import { mountOurs } from './lib/our-mount.ts';
import { buildPassthroughLl, libfuseVersion, mountPassthroughLl } from './lib/passthrough-ll.ts';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '3' },
    rounds: { type: 'string', default: '3' },
    size: { type: 'string', default: '128' },
    bs: { type: 'string', default: '1M' },
    help: { type: 'boolean', short: 'h' },
  },
});
const usage = 'usage: bench/device-hop.ts [--seconds <s per figure>] [--rounds <n>] [--size <MiB>] [--bs <fio block size, default 1M>]';
if (values.help) {
  console.log(usage);
  process.exit(0);
}
const seconds = Number(values.seconds);
const rounds = Number(values.rounds);
const sizeMiB = Number(values.size);
if (!(seconds > 0) || !Number.isInteger(rounds) || rounds < 1 || !Number.isInteger(sizeMiB) || sizeMiB < 8) {
  console.error(usage);
  process.exit(2);
}

const CACHE_DIR = fileURLToPath(new URL('../node_modules/.cache/virtiofs-bench/', import.meta.url));
const HOP_HEADER = fileURLToPath(new URL('./c/device-hop.h', import.meta.url));
const cleanup = new Cleanup();
cleanup.installHandlers();

type Target = 'passthrough_ll' | 'passthrough_ll + hop' | 'relay';
const TARGETS: Target[] = ['passthrough_ll', 'passthrough_ll + hop', 'relay'];

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench:device-hop mounts filesystems: run it as root');
  const plain = await buildPassthroughLl(cleanup, CACHE_DIR);
  const hop = await buildPassthroughLl(cleanup, CACHE_DIR, { header: HOP_HEADER, name: 'passthrough_ll_hop' });
  const work = mkdtempSync(join(tmpdir(), 'virtiofs-bench-hop-'));
  cleanup.add(`remove ${work}`, () => rmSync(work, { recursive: true, force: true }));
  const data = join(work, 'data');
  mkdirSync(data);
  writeFileSync(join(data, 'write.dat'), Buffer.alloc(sizeMiB << 20, 0x5a));
  const roots = Object.fromEntries(TARGETS.map((t, i) => [t, join(work, `mnt-${i}`)])) as Record<Target, string>;
  for (const t of TARGETS) mkdirSync(roots[t]);

  await mountPassthroughLl(cleanup, plain, data, roots.passthrough_ll, ['cache=auto', 'default_permissions']);
  await mountPassthroughLl(cleanup, hop, data, roots['passthrough_ll + hop'], ['cache=auto', 'default_permissions'], { VFS_BENCH_DEVICE_HOP: '1' });
  const daemon = await Virtiofsd.start({ sharedDir: data, cache: 'auto' });
  cleanup.add('virtiofsd', () => daemon.stop());
  const relay = await mountOurs(cleanup, daemon.socketPath, roots.relay);

  const load = loadavg()[0]!;
  const figures = new Map<Target, number[]>(TARGETS.map((t) => [t, []]));
  for (let r = 0; r < rounds; r++) {
    for (const t of TARGETS) {
      cleanup.check();
      await runOk(cleanup, 'sync', []);
      const result = await runFio(cleanup, { filename: join(roots[t], 'write.dat'), rw: 'write', bs: values.bs, size: `${sizeMiB}M`, seconds, invalidate: false });
      figures.get(t)!.push(result.bytesPerSecond / 2 ** 20);
      console.error(`round ${r + 1}: ${t}: ${result.bytesPerSecond / 2 ** 20 | 0} MiB/s`);
    }
  }
  const phases = await relay.phases();

  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
  const base = median(figures.get('passthrough_ll')!);
  let fioVersion = '?';
  try {
    fioVersion = execFileSync('fio', ['--version'], { encoding: 'utf8' }).trim();
  } catch {}
  console.log(`device hop benchmark: fio seq write ${values.bs} (psync, buffered), ${seconds} s per figure, ${rounds} rounds, median; ${sizeMiB} MiB file`);
  console.log(`environment: kernel ${release()}; libfuse ${await libfuseVersion(cleanup)}; ${fioVersion}; ${availableParallelism()} CPUs; load ${load.toFixed(2)} at the start`);
  console.log('');
  console.log('mount                  MiB/s (each round)            median  / passthrough_ll');
  for (const t of TARGETS) {
    const xs = figures.get(t)!;
    console.log(`${t.padEnd(22)} ${xs.map((x) => x.toFixed(0).padStart(6)).join(' ').padEnd(29)} ${median(xs).toFixed(0).padStart(6)}  ${(median(xs) / base).toFixed(3)}`);
  }
  if (phases) {
    console.log('');
    console.log(`relay, per request: prepare ${phases.prepareUs} us, device ${phases.deviceUs} us, reply ${phases.replyUs} us (means over ${phases.requests})`);
  }
  console.log('');
  console.log('passthrough_ll + hop: the same binary with each WRITE\'s pwrite done by a second thread (eventfd there,');
  console.log('eventfd back): the smallest form of the driver -> device -> driver hop. relay: virtiofs-client mount');
  console.log('over vhost-user to QEMU\'s C virtiofsd (-o cache=auto). The hop\'s ratio bounds what any design in');
  console.log('which another party does the write can reach on this machine.');
}

main()
  .catch((e: unknown) => {
    console.error(`bench:device-hop: ${(e as Error).message}`);
    process.exitCode = 1;
  })
  .finally(() => cleanup.run());

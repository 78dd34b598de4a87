// npm run fuzz -- [--seed S] [--replies N] [--rate R] [--target mount|api|pci|all]
// The device-behaviour fuzzer (test/helpers/reply-fuzzer.ts): a fault-injecting device answers a
// workload with good replies, a seeded share of them mutated; prints what was sent, what the client
// named, what it missed, hangs, crashes, device failures, RSS and descriptors. Exit status 1 when
// anything was missed, named wrongly, hung or crashed. As root (the mount target mounts).
import { parseArgs } from 'node:util';
import { formatReport, fuzzApi, fuzzMount, type FuzzReport } from '../test/helpers/reply-fuzzer.ts';

const { values } = parseArgs({
  options: {
    seed: { type: 'string', default: String(Date.now() % 1_000_000) },
    replies: { type: 'string', default: '10000' },
    rate: { type: 'string', default: '0.5' },
    target: { type: 'string', default: 'all' },
    'hang-ms': { type: 'string', default: '10000' },
    'request-timeout-ms': { type: 'string', default: '300' },
    help: { type: 'boolean', short: 'h' },
  },
});
const usage =
  'usage: npm run fuzz -- [--seed <n>] [--replies <mutated replies>] [--rate <0..1>] [--target mount|api|pci|all] [--hang-ms <ms>]\n' +
  '                       [--request-timeout-ms <ms>: the client\'s timeout for a reply never sent, default 300]';
if (values.help) {
  console.log(usage);
  process.exit(0);
}
const TARGETS = ['mount', 'api', 'pci', 'all'];
const seed = Number(values.seed);
const replies = Number(values.replies);
const rate = Number(values.rate);
const hangMs = Number(values['hang-ms']);
const requestTimeoutMs = Number(values['request-timeout-ms']);
if (!Number.isInteger(seed) || !Number.isInteger(replies) || replies < 1 || !(rate > 0 && rate <= 1) || !TARGETS.includes(values.target) || !(hangMs > 0) || !(requestTimeoutMs > 0 && requestTimeoutMs < hangMs)) {
  console.error(usage);
  process.exit(2);
}
const runs = (target: string) => values.target === target || values.target === 'all';
if (runs('mount') && process.getuid?.() !== 0) {
  console.error('fuzz: the mount target mounts a filesystem: run as root (or --target api or pci)');
  process.exit(2);
}
const progress = (line: string) => console.error(`fuzz: ${line}`);
const reports: FuzzReport[] = [];
if (runs('mount')) reports.push(await fuzzMount({ seed, replies, rate, hangMs, requestTimeoutMs, progress }));
if (runs('api')) reports.push(await fuzzApi({ seed, replies, rate, hangMs, requestTimeoutMs, progress }));
if (runs('pci')) reports.push(await fuzzApi({ seed, replies, rate, hangMs, requestTimeoutMs, progress }, true));
for (const r of reports) console.log(formatReport(r));
const bad = reports.some((r) => r.missed.length + r.falseAlarms.length + r.namedTwice.length + r.hangs.length + r.crashes.length > 0);
process.exit(bad ? 1 : 0);

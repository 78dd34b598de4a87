// Start-up time of the `virtiofs-client` command: the compiled package (dist/, what
// `npm install -g` runs) and the development launcher (bin/virtiofs-client.js, TypeScript through
// tsx), beside bare `node -e 0` in the same run. Prints the median of N runs and the ratio to node.
// Run: npm run bench:startup [-- --runs 20]   (builds dist/ first)
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '15' } } });
const runs = Number(values.runs);

function median(command: string[]): number {
  const times: number[] = [];
  for (let i = 0; i < runs + 1; i++) {
    const started = process.hrtime.bigint();
    const r = spawnSync(command[0]!, command.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (r.status !== 0) throw new Error(`${command.join(' ')} failed (${r.status}): ${r.stderr}`);
    if (i > 0) times.push(ms); // the first run warms the page cache
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

const node = process.execPath;
const baseline = median([node, '-e', '0']);
const rows: [string, number][] = [
  ['node -e 0 (baseline)', baseline],
  ['installed: virtiofs-client --help', median([node, 'dist/client/cli/main.js', '--help'])],
  ['installed: virtiofs-client arch translate ENOTEMPTY --from mips64 --to x86_64', median([node, 'dist/client/cli/main.js', 'arch', 'translate', 'ENOTEMPTY', '--from', 'mips64', '--to', 'x86_64'])],
  ['installed: virtiofs-client mount --help', median([node, 'dist/client/cli/main.js', 'mount', '--help'])],
  ['checkout (tsx): node bin/virtiofs-client.js --help', median([node, 'bin/virtiofs-client.js', '--help'])],
];
console.log(`start-up, median of ${runs} runs (${new Date().toISOString()}, node ${process.version})`);
for (const [what, ms] of rows) console.log(`  ${what.padEnd(80)} ${ms.toFixed(1).padStart(7)} ms  ${(ms / baseline).toFixed(2).padStart(5)}x node`);

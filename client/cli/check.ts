/** `virtiofs-client check`: a conformance probe for device vendors. */
import { parseArgs } from 'node:util';
import { VirtioFsClient } from '../client.ts';
import { runConformance } from '../conformance.ts';
import { parseArchMode, type ArchMode } from '../fuse/arch-mode.ts';
import { resolveArch } from '../arch/index.ts';
import { TRANSPORT_SYNTAX } from '../transport/open.ts';
import type { Command } from './command.ts';
import { UsageError } from './command.ts';

const usage = `usage: virtiofs-client check <transport> [--arch-mode <mode>] [--device-arch <arch>] [--json]

Connects to a virtio-fs device (${TRANSPORT_SYNTAX}), reports the
FUSE_INIT architecture negotiation, then checks operation by operation that
the device reads each architecture-dependent value as the client meant it:
open flags (O_DIRECTORY, O_NOFOLLOW, O_DIRECT, O_APPEND, O_TRUNC, O_EXCL,
O_NOATIME), errno names (ENOENT, ENOTEMPTY, ENAMETOOLONG, EEXIST, ENOTDIR,
EISDIR, ENOSYS) and POSIX lock types. Works in a scratch directory at the
device's root and removes it. Exit status 0 only when everything matched.

  --arch-mode, --device-arch   as for mount (default auto)
  --json                       the report as JSON`;

export const checkCommand: Command = {
  usage,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parseArgs({
      args,
      allowPositionals: true,
      options: { 'arch-mode': { type: 'string', default: 'auto' }, 'device-arch': { type: 'string' }, json: { type: 'boolean', default: false } },
    });
    if (positionals.length !== 1) throw new UsageError(`check takes one transport: ${TRANSPORT_SYNTAX}`);
    let archMode: ArchMode;
    try {
      archMode = parseArchMode(values['arch-mode']!);
      if (values['device-arch']) archMode = { kind: 'auto', deviceArch: resolveArch(values['device-arch']) };
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const logs: string[] = [];
    const client = await VirtioFsClient.connect({ transport: positionals[0]!, archMode, log: (l) => logs.push(l) });
    let report;
    try {
      report = await runConformance(client, positionals[0]!);
    } finally {
      await client.close();
    }
    if (values.json) {
      console.log(JSON.stringify({ ...report, log: logs }, null, 2));
    } else {
      console.log(`device ${report.transport}`);
      for (const line of report.negotiation) console.log(`  ${line}`);
      console.log('');
      const w = Math.max(...report.results.map((r) => r.check.length));
      const e = Math.max(...report.results.map((r) => r.expected.length));
      const g = Math.max(...report.results.map((r) => r.got.length), 3);
      console.log(`  ${'check'.padEnd(w)}  ${'expected'.padEnd(e)}  ${'got'.padEnd(g)}  verdict`);
      for (const r of report.results) {
        console.log(`  ${r.check.padEnd(w)}  ${r.expected.padEnd(e)}  ${r.got.padEnd(g)}  ${r.verdict === 'pass' ? 'ok' : r.verdict === 'n/a' ? 'n/a (device cannot show it)' : 'MISMATCH'}`);
      }
      const failed = report.results.filter((r) => r.verdict === 'fail').length;
      console.log(`\n${failed === 0 ? 'all checks matched' : `${failed} mismatch(es): the device reads these values differently from how this client encodes them`}`);
      for (const l of logs) console.log(`  log: ${l}`);
    }
    return report.ok ? 0 : 1;
  },
};

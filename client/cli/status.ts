/** `virtiofs-client status`: what each running mount negotiated and how its requests fare. */
import { parseArgs } from 'node:util';
import { controlSocketPath, controlSockets, queryStatus } from '../frontend/control.ts';
import type { RelayStatus } from '../frontend/relay.ts';
import type { Command } from './command.ts';
import { UsageError } from './command.ts';

const usage = `usage: virtiofs-client status [<mountpoint>] [--json]

For each running mount (or the one on <mountpoint>): the transport, the FUSE
version, limits and capability flags negotiated in FUSE_INIT, the architecture
outcome and wire encoding, and per-opcode request counts, errors and latency
percentiles since it was mounted.`;

function render(s: RelayStatus): string {
  const lines = [
    `${s.mountpoint}  (pid ${s.pid}, since ${s.startedAt})`,
    `  transport   ${s.transport}`,
    ...s.negotiation.map((l) => `  ${l}`),
    `  in flight   ${s.inFlight}`,
    ...(s.phases
      ? [`  per request prepare ${s.phases.prepareUs} us, device ${s.phases.deviceUs} us, reply ${s.phases.replyUs} us (client-side means over ${s.phases.requests})`]
      : []),
    ...(s.interrupts ? [`  interrupts  ${s.interrupts}`] : []),
    ...(s.timing && s.timing.every > 1
      ? [`  timing      one request in ${s.timing.every} (a clock read costs ${s.timing.clockReadUs} us here); the others are counted`]
      : []),
    ...(s.polling
      ? [
          s.polling.busy ? '  polling     always (--busy-poll)' : `  polling     ${s.polling.budgetUs > 0 ? `up to ${s.polling.budgetUs} us before sleeping` : 'never'}${s.polling.wakeUpUs !== undefined ? ` (a wake-up costs ${s.polling.wakeUpUs} us here, measured at mount)` : ' (--poll-us)'}`,
        ]
      : []),
    ...(s.queues
      ? [
          `  queues      ${s.queues.map((q) => `${q.name} ${q.requests}${q.onThreadOf ? ` (on ${q.onThreadOf}'s thread, no notifications)` : q.ownSignal ? '' : ' (woken by the main thread)'}`).join(', ')} (requests${s.queues.some((q) => q.onThreadOf) ? '' : ', one thread each'}${s.queues.every((q) => q.ownSignal || q.onThreadOf) ? ', each waiting on its own queue signal' : ''})`,
        ]
      : []),
    `  ${'opcode'.padEnd(14)} ${'count'.padStart(9)} ${'errors'.padStart(7)} ${'p50 ms'.padStart(8)} ${'p90 ms'.padStart(8)} ${'p99 ms'.padStart(8)}`,
    ...s.operations.map(
      (o) =>
        `  ${o.opcode.padEnd(14)} ${String(o.count).padStart(9)} ${String(o.errors).padStart(7)} ${o.p50Ms.toFixed(3).padStart(8)} ${o.p90Ms.toFixed(3).padStart(8)} ${o.p99Ms.toFixed(3).padStart(8)}`,
    ),
  ];
  return lines.join('\n');
}

export const statusCommand: Command = {
  usage,
  async run(args: string[]): Promise<number> {
    const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean', default: false } } });
    if (positionals.length > 1) throw new UsageError('status takes at most one mountpoint');
    const sockets = positionals.length ? [controlSocketPath(positionals[0]!)] : controlSockets();
    const found = (await Promise.all(sockets.map((p) => queryStatus(p)))).filter((s): s is RelayStatus => s !== undefined);
    if (values.json) console.log(JSON.stringify(found, null, 2));
    else if (found.length === 0) console.log(positionals.length ? `no virtiofs-client mount answers for ${positionals[0]}` : 'no virtiofs-client mounts running');
    else console.log(found.map(render).join('\n\n'));
    return positionals.length && found.length === 0 ? 1 : 0;
  },
};

/** `virtiofs-client mount`: the device's filesystem on a local mountpoint, through /dev/fuse. */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { resolveArch } from '../arch/index.ts';
import { parseArchMode, type ArchMode } from '../fuse/arch-mode.ts';
import { RUN_DIR, logPath, serveStatus, stopServing } from '../frontend/control.ts';
import { FuseRelay } from '../frontend/relay.ts';
import type { FuseNativeFrontend } from '../frontend/fuse-native/frontend.ts';
import { TRANSPORT_SYNTAX } from '../transport/open.ts';
import type { Command } from './command.ts';
import { UsageError } from './command.ts';

const usage = `usage: virtiofs-client mount --transport <transport> [options] <mountpoint>

Mounts a virtio-fs device on <mountpoint>. This machine's FUSE module makes the
requests (as its virtio_fs driver would); virtiofs-client carries them to the
device over the transport and the replies back, translating the values whose
encoding differs between architectures. As root it mounts with mount(2); any
other user mounts through fusermount3 (Debian's fuse3) on a mountpoint they own.

  --transport <t>        ${TRANSPORT_SYNTAX}
                         e.g. vhost-user:/run/vfs.sock (a virtiofsd --socket-path)
  --frontend <f>         relay (default): the kernel's FUSE requests relayed to the device
                         fuse-native: libfuse 2's path-based API through fuse-native
                           (fewer features: see README, Frontends)
  --arch-mode <mode>     auto (default): negotiate in FUSE_INIT; a device that
                           cannot is treated as --device-arch, else as this machine
                         native: no negotiation, this machine's encoding (today's kernels)
                         canonical: x86 encoding whatever the device says
                         device-arch=<arch>: always translate to <arch> (arm64, mips64, ...)
  --device-arch <arch>   with auto: what a device that cannot negotiate is
  --queues <n>           request queues to use (default 1; the device may offer fewer)
  --queue-size <n>       descriptors per queue (default 128)
  --allow-other          let users other than root use the mount
  --busy-poll            poll the used rings instead of waiting for notifications
  --trace                log every FUSE request and reply, decoded, one line each
  --foreground           stay in the foreground (Ctrl-C unmounts); otherwise the
                         relay continues in the background once the mount is ready
                         and logs to ${RUN_DIR}/<id>.log

See also: virtiofs-client status, virtiofs-client unmount <mountpoint>.`;

interface MountArgs {
  mountpoint: string;
  frontend: 'relay' | 'fuse-native';
  transport: string;
  archMode: ArchMode;
  queues: number | undefined;
  queueSize: number | undefined;
  allowOther: boolean;
  busyPoll: boolean;
  trace: boolean;
  foreground: boolean;
  /** Internal: a background child reports readiness over IPC. */
  notifyParent: boolean;
}

function positiveInt(name: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${name} wants a positive integer, got '${text}'`);
  return n;
}

function parse(args: string[]): MountArgs {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      transport: { type: 'string' },
      frontend: { type: 'string', default: 'relay' },
      'arch-mode': { type: 'string', default: 'auto' },
      'device-arch': { type: 'string' },
      queues: { type: 'string' },
      'queue-size': { type: 'string' },
      'allow-other': { type: 'boolean', default: false },
      'busy-poll': { type: 'boolean', default: false },
      trace: { type: 'boolean', default: false },
      foreground: { type: 'boolean', default: false },
      'notify-parent': { type: 'boolean', default: false },
    },
  });
  if (positionals.length !== 1) throw new UsageError('mount takes exactly one mountpoint (try --help)');
  if (!values.transport) throw new UsageError(`--transport is required: ${TRANSPORT_SYNTAX}`);
  if (values.frontend !== 'relay' && values.frontend !== 'fuse-native') {
    throw new UsageError(`--frontend is relay or fuse-native, not '${values.frontend}'`);
  }
  let archMode: ArchMode;
  try {
    archMode = parseArchMode(values['arch-mode']!);
    if (values['device-arch']) {
      if (archMode.kind !== 'auto') throw new UsageError('--device-arch goes with --arch-mode auto; use --arch-mode device-arch=<arch> to force it');
      archMode = { kind: 'auto', deviceArch: resolveArch(values['device-arch']) };
    }
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError((e as Error).message);
  }
  return {
    mountpoint: positionals[0]!,
    frontend: values.frontend,
    transport: values.transport,
    archMode,
    queues: positiveInt('queues', values.queues),
    queueSize: positiveInt('queue-size', values['queue-size']),
    allowOther: values['allow-other']!,
    busyPoll: values['busy-poll']!,
    trace: values.trace!,
    foreground: values.foreground!,
    notifyParent: values['notify-parent']!,
  };
}

/** Mounts and serves in this process until unmounted; returns the exit status. */
async function serve(a: MountArgs): Promise<number> {
  const log = (line: string) => console.error(`virtiofs-client: ${line}`);
  let relay: FuseRelay | FuseNativeFrontend;
  try {
    // Loaded only when chosen: fuse-native is a native addon linked against libfuse 2.
    const Frontend = a.frontend === 'fuse-native' ? (await import('../frontend/fuse-native/frontend.ts')).FuseNativeFrontend : FuseRelay;
    relay = await Frontend.mount({
      transport: a.transport,
      mountpoint: a.mountpoint,
      archMode: a.archMode,
      requestQueues: a.queues,
      queueSize: a.queueSize,
      allowOther: a.allowOther,
      busyPoll: a.busyPoll,
      log,
      trace: a.trace ? (line) => console.error(line) : undefined,
    });
  } catch (e) {
    if (a.notifyParent) process.send?.({ error: (e as Error).message });
    throw e;
  }
  const control = await serveStatus(relay.mountpoint, () => relay.status());
  const stop = () => void relay.unmount();
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const summary = `mounted ${a.transport} on ${relay.mountpoint} (pid ${process.pid}); ${relay.session.describe()[3]}`;
  console.error(summary);
  for (const line of relay.session.describe()) console.error(`  ${line}`);
  if (a.notifyParent) {
    process.send?.({ ready: summary });
    process.disconnect?.();
  }
  const reason = await relay.closed;
  stopServing(control, relay.mountpoint);
  console.error(`virtiofs-client: ${relay.mountpoint}: ${reason}`);
  return reason === 'unmounted' ? 0 : 1;
}

/** Starts `serve` in a detached child and returns once it has mounted (or failed). */
function background(args: string[], a: MountArgs): Promise<number> {
  mkdirSync(RUN_DIR, { recursive: true });
  const log = logPath(a.mountpoint);
  const out = openSync(log, 'a');
  const bin = fileURLToPath(new URL('../../bin/virtiofs-client.js', import.meta.url));
  const child = spawn(process.execPath, [bin, 'mount', ...args, '--foreground', '--notify-parent'], {
    detached: true,
    stdio: ['ignore', out, out, 'ipc'],
  });
  closeSync(out);
  return new Promise((resolveStatus, reject) => {
    child.once('message', (m: { ready?: string; error?: string }) => {
      if (m.ready) {
        console.log(`${m.ready}\nlog: ${log}`);
        child.disconnect();
        child.unref();
        resolveStatus(0);
      } else {
        reject(Object.assign(new Error(m.error ?? 'mount failed'), { code: 'EMOUNT' }));
      }
    });
    child.once('exit', (code) => reject(Object.assign(new Error(`mount process exited (status ${code}) before mounting; see ${log}`), { code: 'EMOUNT' })));
  });
}

export const mountCommand: Command = {
  name: 'mount',
  summary: 'mount a virtio-fs device on a local directory (relayed through /dev/fuse)',
  usage,
  async run(args: string[]): Promise<number> {
    const a = parse(args);
    return a.foreground ? serve(a) : background(args, a);
  },
};

/** `virtiofs-client mount`: the device's filesystem on a local mountpoint, through /dev/fuse. */
import { spawn } from 'node:child_process';
import { closeSync, fchmodSync, openSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { resolveArch } from '../arch/index.ts';
import { parseArchMode, type ArchMode } from '../fuse/arch-mode.ts';
import { RUN_DIR, ensureRunDir, logPath, serveStatus, stopServing } from '../frontend/control.ts';
import { FuseRelay } from '../frontend/relay.ts';
import type { FuseNativeFrontend } from '../frontend/fuse-native/frontend.ts';
import { isMountFlag } from '../frontend/fuse-mount.ts';
import { TRANSPORT_SYNTAX } from '../transport/spec.ts';
import type { Command } from './command.ts';
import { UsageError } from './command.ts';

const usage = `usage: virtiofs-client mount --transport <transport> [options] <mountpoint>
       virtiofs-client <transport> <mountpoint> [-o <options>]     (mount(8) form)

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
  --poll-us <n>          poll this long for work before sleeping (0: sleep at once): each
                         queue thread of the relay, and fuse-native after a lone request.
                         Default: 50, or what a wake-up costs where that is more (the relay
                         measures it at mount: ~200 us under QEMU's TCG); fuse-native 50.
                         Polling costs CPU
  --request-timeout <s>  a request the device has not answered after this long fails
                         with EIO (default 60); the device keeps its buffers until it
                         returns them
  --trace                log every FUSE request and reply, decoded, one line each
  --foreground           stay in the foreground (Ctrl-C unmounts); otherwise the
                         relay continues in the background once the mount is ready
                         and logs to ${RUN_DIR}/<id>.log
  -o <opt,opt,...>       the options above in mount(8) form: allow_other, arch_mode=<mode>,
                         device_arch=<arch>, frontend=<f>, queues=<n>, queue_size=<n>,
                         busy_poll, poll_us=<n>, request_timeout=<s>, trace; and mount(8)'s generic flags (ro, rw, noexec,
                         noatime, nosuid, suid, nodev, dev, sync, ...; default nosuid,nodev).
                         defaults, auto, noauto, user, users, nofail, _netdev and x-*
                         are fstab's and ignored here.

mount(8) and fstab: with virtiofs-client on the PATH, \`mount -t fuse.virtiofs-client
vhost-user:/run/vfs.sock /mnt/share -o arch_mode=auto\` runs mount.fuse3 (Debian's fuse3),
which runs \`virtiofs-client vhost-user:/run/vfs.sock /mnt/share -o ...\`. fstab:
  vhost-user:/run/vfs.sock  /mnt/share  fuse.virtiofs-client  arch_mode=auto,_netdev  0  0
\`umount /mnt/share\` ends the mount; the relay process exits by itself.

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
  pollUs: number | undefined;
  requestTimeoutMs: number | undefined;
  trace: boolean;
  foreground: boolean;
  /** mount(8)'s generic flags from -o, in order. */
  mountFlags: string[];
  /** The mount(8) form: print nothing when mounted (mount(8) helpers are silent). */
  quiet: boolean;
  /** Internal: a background child reports readiness over IPC. */
  notifyParent: boolean;
}

/** A numeric option within [min, max] (integer unless said otherwise), or undefined when not given. */
function numberOption(name: string, text: string | undefined, what: string, min: number, max = Infinity, integer = true): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (Number.isNaN(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw new UsageError(`--${name} ${text}: expected ${what}${max === Infinity ? '' : `, ${min}..${max}`}`);
  }
  return n;
}

/** -o names and the long option each stands for (a value after '=' where the option takes one). */
const O_OPTIONS: Readonly<Record<string, { option: string; value: boolean }>> = {
  allow_other: { option: 'allow-other', value: false },
  arch_mode: { option: 'arch-mode', value: true },
  device_arch: { option: 'device-arch', value: true },
  frontend: { option: 'frontend', value: true },
  queues: { option: 'queues', value: true },
  queue_size: { option: 'queue-size', value: true },
  busy_poll: { option: 'busy-poll', value: false },
  poll_us: { option: 'poll-us', value: true },
  request_timeout: { option: 'request-timeout', value: true },
  trace: { option: 'trace', value: false },
};

/** What fstab and mount(8) put in -o for their own use. */
function isFstabOnly(name: string): boolean {
  return ['defaults', 'auto', 'noauto', 'user', 'nouser', 'users', 'owner', 'group', 'nofail', '_netdev', 'comment'].includes(name) || name.startsWith('x-');
}

/**
 * Expands `-o a,b=c` into the long options they stand for (placed before the command line's
 * own, so an explicit --option wins) and mount(8)'s generic flags.
 */
export function expandMountOptions(lists: readonly string[]): { args: string[]; flags: string[] } {
  const args: string[] = [];
  const flags: string[] = [];
  for (const item of lists.flatMap((list) => list.split(',')).filter(Boolean)) {
    const eq = item.indexOf('=');
    const name = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? undefined : item.slice(eq + 1);
    const known = O_OPTIONS[name];
    if (known) {
      if (known.value !== (value !== undefined)) {
        throw new UsageError(known.value ? `-o ${name} wants a value (${name}=...)` : `-o ${name} takes no value`);
      }
      args.push(`--${known.option}`, ...(value === undefined ? [] : [value]));
    } else if (isMountFlag(name) && value === undefined) {
      flags.push(name);
    } else if (!isFstabOnly(name)) {
      throw new UsageError(`-o ${item}: unknown mount option (see virtiofs-client mount --help)`);
    }
  }
  return { args, flags };
}

function parse(commandLine: string[]): MountArgs {
  const oLists = parseArgs({ args: commandLine, allowPositionals: true, strict: false, options: { options: { type: 'string', short: 'o', multiple: true } } })
    .values.options as string[] | undefined;
  const expanded = expandMountOptions(oLists ?? []);
  const { values, positionals } = parseArgs({
    args: [...expanded.args, ...commandLine],
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
      'poll-us': { type: 'string' },
      'request-timeout': { type: 'string' },
      trace: { type: 'boolean', default: false },
      foreground: { type: 'boolean', default: false },
      options: { type: 'string', short: 'o', multiple: true },
      quiet: { type: 'boolean', default: false },
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
    queues: numberOption('queues', values.queues, 'a positive integer', 1),
    queueSize: numberOption('queue-size', values['queue-size'], 'a positive integer', 1),
    allowOther: values['allow-other']!,
    busyPoll: values['busy-poll']!,
    pollUs: numberOption('poll-us', values['poll-us'], 'microseconds', 0, 1_000_000),
    requestTimeoutMs: seconds(numberOption('request-timeout', values['request-timeout'], 'seconds', 0.001, 86_400, false)),
    trace: values.trace!,
    foreground: values.foreground!,
    mountFlags: expanded.flags,
    quiet: values.quiet!,
    notifyParent: values['notify-parent']!,
  };
}

const seconds = (s: number | undefined) => (s === undefined ? undefined : Math.round(s * 1000));

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
      mountFlags: a.mountFlags,
      busyPoll: a.busyPoll,
      ...(a.pollUs !== undefined ? { pollUs: a.pollUs } : {}),
      ...(a.requestTimeoutMs !== undefined ? { timeoutMs: a.requestTimeoutMs } : {}),
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
  ensureRunDir();
  const log = logPath(a.mountpoint);
  // Readable by others like any log here, writable by no one else (the umask may be looser).
  const out = openSync(log, 'a', 0o644);
  fchmodSync(out, 0o644);
  // The same entry point this process started from (bin/virtiofs-client.js in a checkout, the
  // package's compiled main.js when installed), with the same node flags.
  const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, 'mount', ...args, '--foreground', '--notify-parent'], {
    detached: true,
    stdio: ['ignore', out, out, 'ipc'],
  });
  closeSync(out);
  return new Promise((resolveStatus, reject) => {
    child.once('message', (m: { ready?: string; error?: string }) => {
      if (m.ready) {
        if (!a.quiet) console.log(`${m.ready}\nlog: ${log}`);
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
  usage,
  async run(args: string[]): Promise<number> {
    const a = parse(args);
    return a.foreground ? serve(a) : background(args, a);
  },
};

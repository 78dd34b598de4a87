/**
 * A virtio-fs device that speaks FUSE architecture negotiation, for device
 * vendors to read and to test clients against: a vhost-user backend that
 * serves one frontend and relays its requests to a real virtio-fs device
 * (a virtiofsd, possibly of another architecture under qemu-user).
 *
 *   node --import tsx examples/reference-device/main.ts \
 *     --socket /tmp/refdev.sock --backend vhost-user:/tmp/virtiofsd.sock \
 *     --arch x86_64 --answer translate
 *
 * Prints "listening on <socket>" once a frontend may connect, serves one
 * connection, and exits (status 0) when that frontend hangs up, closing the
 * backend connection (a virtiofsd then exits too). Each request queue is
 * served on a thread of its own. docs/device-side.md explains the parts.
 */
import { parseArgs } from 'node:util';
import { hostArch, resolveArch, type Architecture } from '../../client/arch/index.ts';
import { sharedPoller } from '../../ffi/poller.ts';
import { BackendRelay } from './backend-relay.ts';
import { ReferenceFsDevice } from './fs-device.ts';
import { Listener } from './listener.ts';
import { ARCH_ANSWERS, type ArchAnswer } from './negotiation.ts';
import { VhostUserBackend } from './vhost-user-backend.ts';
import { VirtiofsError } from '../../ffi/errors.ts';

const USAGE = `usage: reference-device --socket <path> --backend vhost-user:<socket> [--arch <name>] [--answer translate|canonical|legacy|device] [--queues <n>] [--fileattr-dir <dir>] [--poll-us <us>] [--trace]

  --socket   where to listen for the vhost-user frontend
  --backend  the real device to relay to (a running virtiofsd)
  --arch     the device's own architecture: the encoding its backend interprets
             (default: this machine's, ${hostArch().name})
  --answer   what to answer a client that sends FUSE_ARCH_INDICATOR:
               translate  (a) accept its encoding and translate to --arch (default)
               canonical  (b) ask for x86 encoding (if offered) and translate x86 -> --arch
               legacy     (c) answer nothing: values pass through as they come
               device     (d) name --arch and ask the client to translate to it
  --queues   request queues to offer (default 1)
  --fileattr-dir
             serve the fileattr ioctls (lsattr, chattr) itself on this
             directory, the backend's shared one, reading each command in
             --arch's encoding (neither real virtiofsd implements FUSE_IOCTL)
  --poll-us  how long a request queue's thread polls for the backend's reply
             before it sleeps, in us (default 50; 0: never)
  --trace    log every request and reply, decoded
  --stall-lookup <name>:<ms>
             (for tests) a LOOKUP of <name> holds the thread of the queue it
             came on for <ms> ms: the other request queues' threads go on`;

interface Options {
  socket: string;
  backend: string;
  arch: Architecture;
  answer: ArchAnswer;
  queues: number;
  fileattrDir: string | undefined;
  trace: boolean;
  stall: { name: string; ms: number } | undefined;
  pollUs: number;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      socket: { type: 'string' },
      backend: { type: 'string' },
      arch: { type: 'string' },
      answer: { type: 'string', default: 'translate' },
      queues: { type: 'string', default: '1' },
      'fileattr-dir': { type: 'string' },
      trace: { type: 'boolean', default: false },
      'stall-lookup': { type: 'string' },
      'poll-us': { type: 'string', default: '50' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!values.socket || !values.backend) throw new UsageError('--socket and --backend are required');
  if (!ARCH_ANSWERS.includes(values.answer as ArchAnswer)) throw new UsageError(`--answer ${values.answer}: expected ${ARCH_ANSWERS.join(', ')}`);
  const queues = Number(values.queues);
  if (!Number.isInteger(queues) || queues < 1 || queues > 64) throw new UsageError(`--queues ${values.queues}: expected 1..64`);
  const pollUs = Number(values['poll-us']);
  if (!Number.isInteger(pollUs) || pollUs < 0 || pollUs > 1_000_000) throw new UsageError(`--poll-us ${values['poll-us']}: expected 0..1000000`);
  let stall: Options['stall'];
  if (values['stall-lookup'] !== undefined) {
    const m = /^(.+):(\d+)$/.exec(values['stall-lookup']);
    if (!m) throw new UsageError(`--stall-lookup ${values['stall-lookup']}: expected <name>:<ms>`);
    stall = { name: m[1]!, ms: Number(m[2]) };
  }
  return {
    stall,
    pollUs,
    socket: values.socket,
    backend: values.backend,
    arch: values.arch ? resolveArch(values.arch) : hostArch(),
    answer: values.answer as ArchAnswer,
    queues,
    fileattrDir: values['fileattr-dir'],
    trace: values.trace,
  };
}

class UsageError extends VirtiofsError {
  readonly code = 'ERR_USAGE';
}

async function main(): Promise<void> {
  let options: Options;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (error) {
    console.error(`reference-device: ${(error as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  const log = (line: string) => console.error(`reference-device: ${line}`);
  const trace = options.trace ? log : undefined;

  // The backend first: a device that cannot reach its backend should say so before anyone connects.
  let backend: BackendRelay;
  try {
    backend = BackendRelay.open(options.backend, { log, trace });
  } catch (error) {
    throw new Error(`cannot reach the backend ${options.backend}: ${(error as Error).message}`);
  }
  const device = new ReferenceFsDevice(backend, { arch: options.arch, answer: options.answer, requestQueues: options.queues, log, trace, fileattrDir: options.fileattrDir, stall: options.stall, pollUs: options.pollUs });
  const listener = Listener.listen(options.socket);
  let server: VhostUserBackend | undefined;
  let stopping = false;
  const stop = (reason: string) => {
    if (stopping) return;
    stopping = true;
    log(reason);
    listener.close();
    server?.close(reason);
    if (!server) void device.close().finally(() => sharedPoller().close());
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));

  console.log(`reference-device: listening on ${options.socket}; arch ${options.arch.name}, answer ${options.answer}, backend ${backend.description}`);
  let socket;
  try {
    socket = await listener.accept();
  } catch (error) {
    if (stopping) return; // a signal before anyone connected
    throw error;
  }
  // One frontend per device, as a virtiofsd: nobody else may connect now.
  listener.close();
  server = new VhostUserBackend(socket, device, log);
  server.start();
  const reason = await server.closed;
  if (!stopping) log(`${reason}: closing the backend connection`);
  stopping = true;
  await device.close();
  sharedPoller().close();
  log('done');
}

main().catch((error: unknown) => {
  console.error(`reference-device: ${(error as Error).message ?? error}`);
  process.exit(1);
});

/**
 * The main thread's end of a frontend request queue's thread (queue-worker.ts): starts it, hands it
 * the ring, the eventfds and the memory table as vhost-user-backend.ts asks (QueueThread), and
 * posts it what FUSE_INIT settled. Commands go on a MessagePort; the thread reads them when its
 * wake eventfd rings, and the ones vhost-user has to wait for (a ring stopped, an fd replaced,
 * memory remapped) are acknowledged through shared memory, so this thread waits for them
 * (Atomics.wait) and answers the frontend only once they are done.
 */
import { MessageChannel, type MessagePort, type Worker } from 'node:worker_threads';
import { EventFd } from '../../ffi/event-fd.ts';
import { startThread } from '../../ffi/thread.ts';
import type { RingConfig } from './device-ring.ts';
import type { GuestMemory } from './guest-memory.ts';
import { CTL_ACK, CTL_POSTED, CTL_RESULT, CTL_ROUTED, CTL_SERVED, CTL_WORDS, type ReadyCommand, type WorkerCommand, type WorkerMessage, type WorkerSetup } from './queue-worker.ts';
import type { QueueFds, QueueThread } from './vhost-user-backend.ts';

/** How long a command may take the thread (it may be finishing a request, or starting up). */
const COMMAND_TIMEOUT_MS = 10_000;

type Command = WorkerCommand extends infer C ? (C extends { seq: number } ? Omit<C, 'seq'> : never) : never;

export interface WorkerOptions {
  ownArch: string;
  trace: boolean;
  fileattrDir: string | undefined;
  stall: { name: string; ms: number } | undefined;
  pollUs: number;
  log: (line: string) => void;
  onMessage: (handle: WorkerHandle, message: WorkerMessage) => void;
}

export class WorkerHandle implements QueueThread {
  readonly wake = new EventFd();
  private readonly control = new Int32Array(new SharedArrayBuffer(CTL_WORDS * 4));
  private port: MessagePort | undefined;
  private worker: Worker | undefined;
  private seq = 0;
  private exited = false;
  private inFlightAtExit = 0;
  private readonly exitPromise: Promise<number>;
  private resolveExit!: (inFlight: number) => void;
  /** What FUSE_INIT settled, for a thread started after it. */
  private readyCommand: ReadyCommand | undefined;
  /** Set by vhost-user-backend.ts with each queueThread(): the ring broke on the thread. */
  broken: ((lastAvail: number) => void) | undefined;

  /** The thread of request queue `member` ('request<member>'), started when its queue first starts. */
  constructor(
    readonly member: number,
    private readonly options: WorkerOptions,
  ) {
    this.exitPromise = new Promise((resolve) => (this.resolveExit = resolve));
  }

  private start(): void {
    if (this.worker) return;
    const options = this.options;
    const channel = new MessageChannel();
    this.port = channel.port1;
    const setup: WorkerSetup = {
      name: this.name,
      member: this.member,
      port: channel.port2,
      wakeFd: this.wake.fd,
      control: this.control.buffer as SharedArrayBuffer,
      ownArch: options.ownArch,
      trace: options.trace,
      fileattrDir: options.fileattrDir,
      ready: this.readyCommand,
      stall: options.stall,
      pollUs: options.pollUs,
    };
    const worker = startThread(new URL('./queue-worker-main.ts', import.meta.url), setup, this.name, [channel.port2]);
    this.worker = worker;
    worker.on('message', (m: WorkerMessage) => {
      if (m.kind === 'exit') this.inFlightAtExit = m.inFlight;
      options.onMessage(this, m);
    });
    worker.once('error', (e) => options.log(`${this.name} thread failed: ${e.stack ?? e.message}`));
    worker.once('exit', () => {
      this.exited = true;
      this.resolveExit(this.inFlightAtExit);
    });
  }

  get name(): string {
    return `request${this.member}`;
  }

  /** Requests this thread took off its ring. */
  get served(): number {
    return Atomics.load(this.control, CTL_SERVED);
  }

  /** Backend replies to this thread's requests that another thread took off the used ring (and handed over). */
  get routed(): number {
    return Atomics.load(this.control, CTL_ROUTED);
  }

  /**
   * Not waited for: the thread may still be starting (loading its modules takes a while on a busy
   * machine, longer than a frontend waits for its REPLY_ACK). Chains made available meanwhile wait
   * on the ring; a ring the thread cannot serve comes back as 'broken' (the error eventfd signalled).
   */
  attach(ring: RingConfig, memory: GuestMemory, fds: QueueFds): boolean {
    this.start();
    this.post({ kind: 'attach', seq: ++this.seq, ring, memory: memory.describe(), kickFd: fds.kick, callFd: fds.call, errFd: fds.err });
    return true;
  }

  detach(): number {
    return this.command({ kind: 'detach' });
  }

  replaceFds(fds: QueueFds): void {
    this.command({ kind: 'fds', kickFd: fds.kick, callFd: fds.call, errFd: fds.err });
  }

  remap(memory: GuestMemory): boolean {
    return this.command({ kind: 'remap', memory: memory.describe() }) === 0;
  }

  /** What FUSE_INIT settled: the translation and the thread's part of the backend's request queue. */
  ready(command: ReadyCommand): void {
    this.readyCommand = command;
    if (this.worker) this.post(command);
  }

  /** A request the thread handed over is answered. */
  answer(command: Extract<WorkerCommand, { kind: 'answer' }>): void {
    this.post(command);
  }

  /**
   * Tells the thread to stop (without waiting: it may be in the middle of a request); resolves
   * once it has, with the number of its requests the backend still held.
   */
  exit(): Promise<number> {
    if (!this.worker) return Promise.resolve(0);
    if (!this.exited) this.post({ kind: 'exit', seq: ++this.seq });
    return this.exitPromise;
  }

  close(): void {
    this.wake.close();
  }

  private post(command: WorkerCommand): void {
    if (this.exited || !this.port) return;
    this.port.postMessage(command);
    // After the message: a thread that sees the count also finds the message on the port.
    Atomics.add(this.control, CTL_POSTED, 1);
    this.wake.signal();
  }

  /** Posts a command and waits until the thread has carried it out; returns its result (-1: failed). */
  private command(command: Command): number {
    if (this.exited || !this.worker) return -1;
    const seq = ++this.seq;
    this.post({ ...command, seq } as WorkerCommand);
    const deadline = Date.now() + COMMAND_TIMEOUT_MS;
    for (;;) {
      const acked = Atomics.load(this.control, CTL_ACK);
      if (acked >= seq) return Atomics.load(this.control, CTL_RESULT);
      const left = deadline - Date.now();
      if (left <= 0 || this.exited) break;
      Atomics.wait(this.control, CTL_ACK, acked, left);
    }
    throw new Error(`${this.name} thread did not carry out '${command.kind}' within ${COMMAND_TIMEOUT_MS} ms`);
  }
}

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import test, { type ExecutionContext } from 'ava';
import { EventFd } from '../../ffi/event-fd.ts';
import { Poller, type Readiness } from '../../ffi/poller.ts';
import { UnixSocket } from '../../ffi/unix-socket.ts';

const repositoryRoot = fileURLToPath(new URL('../..', import.meta.url));
const ffiModule = (name: string): string => new URL(`../../ffi/${name}`, import.meta.url).href;

function setUp(t: ExecutionContext, doorbellCount = 1): { poller: Poller; doorbells: EventFd[] } {
  const poller = new Poller();
  const doorbells = Array.from({ length: doorbellCount }, () => new EventFd());
  t.teardown(() => {
    poller.close();
    doorbells.forEach((doorbell) => doorbell.close());
  });
  return { poller, doorbells };
}

/** Resolves with the drained count at the first callback. */
function nextRing(poller: Poller, doorbell: EventFd): Promise<number> {
  return new Promise((resolve) => {
    poller.watch(doorbell.fd, 'readable', () => {
      poller.unwatch(doorbell.fd);
      resolve(doorbell.drain());
    });
  });
}

test('an EventFd counts signals until drained', (t) => {
  const doorbell = new EventFd();
  t.teardown(() => doorbell.close());
  t.is(doorbell.drain(), 0);
  doorbell.signal();
  doorbell.signal(4);
  t.is(doorbell.drain(), 5);
  t.is(doorbell.drain(), 0);
});

// Each waiting poller holds a libuv threadpool thread (4 by default): the
// in-process ones run one at a time so they never queue behind each other.
test.serial('a signal from the main thread calls back with readable', async (t) => {
  const { poller, doorbells: [doorbell] } = setUp(t);
  const readiness = new Promise<Readiness>((resolve) => {
    poller.watch(doorbell!.fd, 'readable', (ready) => {
      doorbell!.drain();
      resolve(ready);
    });
  });
  doorbell!.signal();
  t.like(await readiness, { readable: true, writable: false, hangup: false, error: false });
});

test.serial('a signal from a worker thread wakes the waiting poller', async (t) => {
  const { poller, doorbells: [doorbell] } = setUp(t);
  const ring = nextRing(poller, doorbell!);
  const worker = new Worker(
    `const { writeSync } = require('node:fs');
     const { workerData } = require('node:worker_threads');
     setTimeout(() => writeSync(workerData.fd, new BigUint64Array([3n])), 50);`,
    { eval: true, workerData: { fd: doorbell!.fd } },
  );
  const exited = once(worker, 'exit');
  t.is(await ring, 3);
  t.deepEqual(await exited, [0]);
});

test.serial('a signal from another process wakes the waiting poller', async (t) => {
  const { poller, doorbells: [doorbell] } = setUp(t);
  const ring = nextRing(poller, doorbell!);
  // The doorbell becomes the child's fd 3.
  const child = spawn(process.execPath, ['-e', `setTimeout(() => require('node:fs').writeSync(3, new BigUint64Array([7n])), 50)`], {
    stdio: ['ignore', 'inherit', 'inherit', doorbell!.fd],
  });
  const exited = once(child, 'exit');
  t.is(await ring, 7);
  t.deepEqual(await exited, [0, null]);
});

test.serial('several ready fds each get their callback, the others none', async (t) => {
  const { poller, doorbells } = setUp(t, 3);
  const calls: number[] = [];
  const bothCalled = new Promise<void>((resolve) => {
    doorbells.forEach((doorbell, index) => {
      poller.watch(doorbell.fd, 'readable', () => {
        calls.push(index * 10 + doorbell.drain());
        if (calls.length === 2) resolve();
      });
    });
  });
  doorbells[0]!.signal(1);
  doorbells[2]!.signal(2);
  await bothCalled;
  await sleep(50);
  t.deepEqual(calls.sort(), [1, 22]);
});

test.serial('an unwatched fd gets no callback while the poller keeps serving the others', async (t) => {
  const { poller, doorbells: [ignored, served] } = setUp(t, 2);
  poller.watch(ignored!.fd, 'readable', () => t.fail('called after unwatch'));
  poller.unwatch(ignored!.fd);
  const ring = nextRing(poller, served!);
  ignored!.signal();
  await sleep(50);
  served!.signal();
  t.is(await ring, 1);
  t.is(ignored!.drain(), 1);
});

test.serial('unwatching inside a callback also cancels an event already collected for that fd', async (t) => {
  const { poller, doorbells: [a, b] } = setUp(t, 2);
  const called: string[] = [];
  // Whichever runs first unwatches the other, whether or not both came back from the same epoll_wait.
  poller.watch(a!.fd, 'readable', () => {
    called.push('a');
    poller.unwatch(a!.fd);
    poller.unwatch(b!.fd);
  });
  poller.watch(b!.fd, 'readable', () => {
    called.push('b');
    poller.unwatch(a!.fd);
    poller.unwatch(b!.fd);
  });
  await poller.ready;
  a!.signal();
  b!.signal();
  await sleep(100);
  t.is(called.length, 1);
});

test.serial('a peer hang-up is reported', async (t) => {
  const poller = new Poller();
  const [local, remote] = UnixSocket.pair();
  t.teardown(() => {
    poller.close();
    local.close();
  });
  const readiness = new Promise<Readiness>((resolve) => {
    poller.watch(local.fd, 'readable', (ready) => {
      poller.unwatch(local.fd);
      resolve(ready);
    });
  });
  remote.close();
  t.like(await readiness, { hangup: true, readable: true });
});

test.serial('watching an fd twice, or after close, is refused', (t) => {
  const { poller, doorbells: [doorbell] } = setUp(t);
  poller.watch(doorbell!.fd, 'readable', () => doorbell!.drain());
  t.throws(() => poller.watch(doorbell!.fd, 'readable', () => {}), { message: /already watched/ });
  poller.close();
  t.throws(() => poller.watch(doorbell!.fd, 'readable', () => {}), { message: /closed/ });
});

interface ScriptRun {
  /** Resolves with the time a line was printed. */
  line(text: string): Promise<number>;
  exit: Promise<{ code: number | null; at: number; stdout: string; stderr: string }>;
  kill(): void;
}

/** Runs ESM TypeScript in a fresh Node, as a program of its own would. */
function runScript(source: string): ScriptRun {
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '--eval', source], {
    cwd: repositoryRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  const waiters: { text: string; resolve: (at: number) => void }[] = [];
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
    const now = performance.now();
    for (const waiter of waiters) if (stdout.split('\n').includes(waiter.text)) waiter.resolve(now);
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exit = once(child, 'exit').then(([code]) => ({ code: code as number | null, at: performance.now(), stdout, stderr }));
  return {
    line: (text) =>
      Promise.race([
        new Promise<number>((resolve) => waiters.push({ text, resolve })),
        exit.then(({ stdout: out, stderr: err }) => {
          throw new Error(`script exited before printing '${text}'\nstdout: ${out}\nstderr: ${err}`);
        }),
      ]),
    exit,
    kill: () => child.kill('SIGKILL'),
  };
}

const imports = `
  import { Poller } from '${ffiModule('poller.ts')}';
  import { EventFd } from '${ffiModule('event-fd.ts')}';
  const poller = new Poller();
  const doorbell = new EventFd();
`;

async function assertExitsSoonAfter(t: ExecutionContext, script: ScriptRun, line: string): Promise<void> {
  const printedAt = await script.line(line);
  const timer = setTimeout(() => script.kill(), 2000);
  const { code, at, stderr } = await script.exit;
  clearTimeout(timer);
  t.is(code, 0, stderr);
  t.true(at - printedAt < 2000, `exited ${at - printedAt} ms after '${line}'`);
}

test('a process exits once its poller is closed while waiting', async (t) => {
  const script = runScript(`${imports}
    poller.watch(doorbell.fd, 'readable', () => {});
    setTimeout(() => { poller.close(); doorbell.close(); console.log('closed'); }, 100);
  `);
  await assertExitsSoonAfter(t, script, 'closed');
});

test('a process exits once its poller is closed from a callback', async (t) => {
  const script = runScript(`${imports}
    poller.watch(doorbell.fd, 'readable', () => { poller.close(); doorbell.close(); console.log('closed'); });
    setTimeout(() => doorbell.signal(), 100);
  `);
  await assertExitsSoonAfter(t, script, 'closed');
});

test('a process exits once its poller watches nothing, even unclosed', async (t) => {
  const script = runScript(`${imports}
    poller.watch(doorbell.fd, 'readable', () => {});
    setTimeout(() => { poller.unwatch(doorbell.fd); console.log('idle'); }, 100);
  `);
  await assertExitsSoonAfter(t, script, 'idle');
});

test('a process with a watching poller stays alive', async (t) => {
  const script = runScript(`${imports}
    poller.watch(doorbell.fd, 'readable', () => {});
    console.log('watching');
  `);
  await script.line('watching');
  const exited = await Promise.race([script.exit.then(() => true), sleep(1000).then(() => false)]);
  script.kill();
  t.false(exited);
});

test('a callback that throws surfaces as an uncaught exception and the poller carries on', async (t) => {
  const script = runScript(`${imports}
    let calls = 0;
    process.on('uncaughtException', (error) => { console.log('uncaught: ' + error.message); doorbell.signal(); });
    poller.watch(doorbell.fd, 'readable', () => {
      doorbell.drain();
      if (++calls === 1) throw new Error('boom');
      console.log('called again');
      poller.close();
      doorbell.close();
    });
    setTimeout(() => doorbell.signal(), 50);
  `);
  const { code, stdout, stderr } = await script.exit;
  t.is(code, 0, stderr);
  t.is(stdout, 'uncaught: boom\ncalled again\n');
});

// The syscalls a thread blocked in epoll_wait(2) shows in /proc (glibc uses epoll_pwait where epoll_wait is missing).
const epollWaitSyscalls: Partial<Record<string, number[]>> = { x64: [232, 281, 441], arm64: [22, 441] };

test('a signal interrupting the waiting thread (EINTR) does not stop the poller', async (t) => {
  const syscalls = epollWaitSyscalls[process.arch];
  if (syscalls === undefined) {
    t.log(`skipped: epoll_wait syscall numbers unknown for ${process.arch}`);
    t.pass();
    return;
  }
  const script = runScript(`
    import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
    import { constants } from 'node:os';
    import koffi from 'koffi';
    import { Poller } from '${ffiModule('poller.ts')}';
    import { EventFd } from '${ffiModule('event-fd.ts')}';
    const tgkill = koffi.load('libc.so.6').func('int tgkill(int tgid, int tid, int sig)');
    const epollFds = () => readdirSync('/proc/self/fd').filter((fd) => {
      try { return readlinkSync('/proc/self/fd/' + fd) === 'anon_inode:[eventpoll]'; } catch { return false; }
    });
    const before = new Set(epollFds());
    const poller = new Poller();
    const [epollFd] = epollFds().filter((fd) => !before.has(fd)).map(Number);
    const doorbell = new EventFd();
    let signals = 0;
    process.on('SIGUSR2', () => signals++);
    poller.watch(doorbell.fd, 'readable', () => {
      doorbell.drain();
      console.log('called after ' + signals + ' signal');
      poller.close();
      doorbell.close();
    });
    await poller.ready;
    setTimeout(() => {
      const waiting = readdirSync('/proc/self/task').filter((tid) => {
        const [nr, fd] = readFileSync('/proc/self/task/' + tid + '/syscall', 'utf8').split(' ');
        return ${JSON.stringify(syscalls)}.includes(Number(nr)) && Number(fd) === epollFd;
      });
      console.log('waiting threads: ' + waiting.length);
      for (const tid of waiting) tgkill(process.pid, Number(tid), constants.signals.SIGUSR2);
      setTimeout(() => doorbell.signal(), 200);
    }, 200);
  `);
  const { code, stdout, stderr } = await script.exit;
  t.is(code, 0, stderr);
  t.is(stdout, 'waiting threads: 1\ncalled after 1 signal\n');
});

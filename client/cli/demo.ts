/**
 * `virtiofs-client demo`: the main job on an embedded default. Starts a real
 * virtio-fs device (QEMU's virtiofsd) on a temporary directory of sample
 * files, mounts it through the /dev/fuse relay, runs a short session of
 * ordinary shell commands on the mount, and removes everything it created.
 */
import { exec } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { Virtiofsd } from '../backends/virtiofsd.ts';
import { FuseRelay } from '../frontend/relay.ts';
import type { Command } from './command.ts';

const sh = promisify(exec);

const usage = `usage: virtiofs-client demo [--keep]

Starts QEMU's virtiofsd (/usr/lib/qemu/virtiofsd) on a temporary directory
with a few sample files, mounts it on a temporary mountpoint through
/dev/fuse (this machine's FUSE module makes the requests; virtiofs-client
carries them over vhost-user virtqueues), and shows the FUSE_INIT negotiation,
a listing, reading and writing files, and an O_DIRECT write, using ordinary
shell commands on the mount. Then it unmounts and removes everything. Needs root.

  --keep   stay mounted until Ctrl-C (then clean up as usual)`;

export const demoCommand: Command = {
  usage,
  async run(args: string[]): Promise<number> {
    const { values } = parseArgs({ args, options: { keep: { type: 'boolean', default: false } } });
    const work = mkdtempSync(join(tmpdir(), 'virtiofs-demo-'));
    const shared = join(work, 'shared');
    const mountpoint = join(work, 'mnt');
    mkdirSync(join(shared, 'docs'), { recursive: true });
    mkdirSync(mountpoint);
    writeFileSync(join(shared, 'README.txt'), 'This directory is served by virtiofsd and mounted through virtiofs-client.\n');
    writeFileSync(join(shared, 'docs', 'squares.csv'), Array.from({ length: 6 }, (_, i) => `${i},${i * i}`).join('\n') + '\n');

    const step = (title: string) => console.log(`\n== ${title}`);
    const run = async (command: string) => {
      console.log(`$ ${command.replaceAll(work, '$DEMO')}`);
      // cd inside the shell: spawning with cwd on the mount would make libuv wait,
      // synchronously, for a child that waits on this very process to serve its chdir.
      const { stdout, stderr } = await sh(`cd '${mountpoint}' && ${command}`);
      const text = (stdout + stderr).trimEnd().replaceAll(work, '$DEMO');
      if (text) console.log(text.split('\n').map((l) => `  ${l}`).join('\n'));
    };

    step(`starting virtiofsd on $DEMO/shared (DEMO=${work})`);
    const daemon = await Virtiofsd.start({ sharedDir: shared, allowDirectIo: true, xattr: true });
    console.log(`virtiofsd pid ${daemon.pid}, vhost-user socket ${daemon.socketPath}`);
    let relay: FuseRelay | undefined;
    try {
      step('mounting $DEMO/mnt: vhost-user handshake, virtqueues in shared memory, FUSE_INIT relayed to the device');
      relay = await FuseRelay.mount({ transport: `vhost-user:${daemon.socketPath}`, mountpoint, log: (l) => console.log(`  [relay] ${l}`) });
      for (const line of relay.session.describe()) console.log(`  ${line}`);

      step('a session on the mount');
      await run('ls -l');
      await run('cat docs/squares.csv');
      await run('echo "written through the mount" > notes.txt && cat "$0"/notes.txt'.replace('$0', shared));
      await run('dd if=/dev/urandom of=direct.bin bs=64k count=16 oflag=direct status=none && ls -l direct.bin');
      await run(`cmp direct.bin ${join(shared, 'direct.bin')} && echo "O_DIRECT write: identical on the host"`);
      await run('mkdir -p a/b && mv notes.txt a/b/ && find . | sort');
      await run('df -h . | tail -1');

      step('status of the mount (what `virtiofs-client status` shows)');
      for (const o of relay.status().operations.slice(0, 6)) {
        console.log(`  ${o.opcode.padEnd(12)} ${String(o.count).padStart(5)} requests, p50 ${o.p50Ms.toFixed(3)} ms, p99 ${o.p99Ms.toFixed(3)} ms`);
      }

      if (values.keep) {
        step(`mounted on ${mountpoint}; press Ctrl-C to unmount and clean up`);
        await new Promise<void>((resolve) => {
          process.once('SIGINT', resolve);
          process.once('SIGTERM', resolve);
          void relay!.closed.then(() => resolve());
        });
      }
    } finally {
      await relay?.unmount();
      await daemon.stop();
      rmSync(work, { recursive: true, force: true });
    }
    step('done: unmounted, virtiofsd stopped, temporary files removed');
    return 0;
  },
};

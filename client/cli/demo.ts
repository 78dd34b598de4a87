/**
 * `virtiofs-client demo`: the main job on an embedded default. Starts a real
 * virtio-fs device (QEMU's virtiofsd) on a temporary directory of sample
 * files, connects to it over vhost-user, shows the FUSE_INIT negotiation and a
 * short scripted session, and removes everything it created.
 */
import { constants } from 'node:fs';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Virtiofsd } from '../backends/virtiofsd.ts';
import { ROOT, VirtioFsClient } from '../client.ts';
import { flagsToNames, hostArch } from '../arch/index.ts';
import type { Command } from './command.ts';

const usage = `usage: virtiofs-client demo [--keep-files]

Starts QEMU's virtiofsd (/usr/lib/qemu/virtiofsd) on a temporary directory
with a few sample files, connects to it as a virtio-fs driver over vhost-user,
and shows: the FUSE_INIT negotiation (protocol, limits, the architecture
outcome), a directory listing, reading and writing files, an O_DIRECT write,
and an error coming back as a Node-style code. Needs root (virtiofsd does).

  --keep-files   leave the temporary shared directory in place and print its path`;

export const demoCommand: Command = {
  name: 'demo',
  summary: 'start a real virtiofsd on sample files and walk through a session with it',
  usage,
  async run(args: string[]): Promise<number> {
    const { values } = parseArgs({ args, options: { 'keep-files': { type: 'boolean', default: false } } });
    const dir = mkdtempSync(join(tmpdir(), 'virtiofs-demo-'));
    mkdirSync(join(dir, 'docs'));
    writeFileSync(join(dir, 'README.txt'), 'This directory is served by virtiofsd and read through virtiofs-client.\n');
    writeFileSync(join(dir, 'docs', 'numbers.csv'), Array.from({ length: 10 }, (_, i) => `${i},${i * i}`).join('\n') + '\n');

    const step = (title: string) => console.log(`\n== ${title}`);
    step(`starting virtiofsd on ${dir}`);
    const daemon = await Virtiofsd.start({ sharedDir: dir, allowDirectIo: true, xattr: true });
    console.log(`virtiofsd pid ${daemon.pid}, vhost-user socket ${daemon.socketPath}`);
    let client: VirtioFsClient | undefined;
    try {
      step('connecting: vhost-user handshake, virtqueues in shared memory, FUSE_INIT');
      client = await VirtioFsClient.connect({ transport: `vhost-user:${daemon.socketPath}` });
      for (const line of client.describe()) console.log(`  ${line}`);

      step('listing / (READDIRPLUS)');
      for (const e of await client.list(ROOT)) {
        if (e.name === '.' || e.name === '..') continue;
        const kind = (e.entry.attr.mode & 0o170000) === 0o040000 ? 'dir ' : 'file';
        console.log(`  ${kind} ${e.name.padEnd(14)} ${String(e.entry.attr.size).padStart(6)} bytes  mode ${(e.entry.attr.mode & 0o7777).toString(8)}`);
      }

      step('reading /docs/numbers.csv (LOOKUP, OPEN, READ)');
      const csv = await client.resolve('docs/numbers.csv');
      const file = await client.open(csv.nodeid, constants.O_RDONLY);
      console.log((await client.read(csv.nodeid, file.fh, 0, 64)).toString().trimEnd().split('\n').map((l) => `  ${l}`).join('\n'));
      await client.release(csv.nodeid, file.fh);

      const flags = constants.O_WRONLY | constants.O_DIRECT;
      step(`an O_DIRECT write: open flags ${flagsToNames(flags, hostArch()).join('|')} (0${flags.toString(8)}), wire encoding ${client.session.wireArch.name}`);
      const direct = await client.create(ROOT, 'direct.bin', flags, 0o644);
      const block = Buffer.alloc(4096, 0x5a);
      console.log(`  wrote ${await client.write(direct.entry.nodeid, direct.fh, 0, block)} bytes with O_DIRECT`);
      await client.release(direct.entry.nodeid, direct.fh, flags);
      const onHost = readFileSync(join(dir, 'direct.bin'));
      console.log(`  the host's shared directory has direct.bin: ${onHost.length} bytes, ${onHost.equals(block) ? 'identical' : 'DIFFERENT'}`);

      step('an error comes back as a Node-style code');
      await client.lookup(ROOT, 'no-such-file').catch((e: NodeJS.ErrnoException) => console.log(`  ${e.code}: ${e.message}`));
    } finally {
      await client?.close();
      await daemon.stop();
      if (values['keep-files']) console.log(`\nshared directory kept at ${dir}`);
      else rmSync(dir, { recursive: true, force: true });
    }
    step('done: virtiofsd stopped, temporary files removed');
    return 0;
  },
};

/** `virtiofs-client unmount`: ends a mount (the relay process then exits by itself). */
import { parseArgs } from 'node:util';
import { mountsAt, unmount, FS_TYPE } from '../frontend/fuse-mount.ts';
import type { Command } from './command.ts';
import { UsageError } from './command.ts';

const usage = `usage: virtiofs-client unmount <mountpoint>

Unmounts a virtiofs-client mount; its relay process notices and exits. Also
clears a stale mount left by a crashed run (lazily, if files are still open).`;

export const unmountCommand: Command = {
  usage,
  async run(args: string[]): Promise<number> {
    const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
    if (positionals.length !== 1) throw new UsageError('unmount takes exactly one mountpoint');
    const path = positionals[0]!;
    const mounts = mountsAt(path);
    if (mounts.length === 0) throw new UsageError(`nothing is mounted on ${path}`);
    const top = mounts[mounts.length - 1]!;
    if (top.fstype !== FS_TYPE) throw new UsageError(`${path} is a ${top.fstype} mount, not a virtiofs-client one`);
    unmount(path);
    console.log(`unmounted ${path}`);
    return 0;
  },
};

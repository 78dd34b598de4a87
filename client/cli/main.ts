#!/usr/bin/env node
/**
 * The `virtiofs-client` command. Each command's module is imported only when it runs, so
 * `--help` and `arch` do not load the native bindings (koffi) or the transports.
 */
import type { Command } from './command.ts';
import { UsageError } from './command.ts';
import { parseTransportSpec } from '../transport/spec.ts';

interface Entry {
  readonly name: string;
  /** One line for the command list. */
  readonly summary: string;
  readonly load: () => Promise<Command>;
}

const commands: readonly Entry[] = [
  { name: 'mount', summary: 'mount a virtio-fs device on a local directory (relayed through /dev/fuse)', load: async () => (await import('./mount.ts')).mountCommand },
  { name: 'status', summary: 'show running mounts: negotiation result, arch outcome, per-opcode counts and latency', load: async () => (await import('./status.ts')).statusCommand },
  { name: 'unmount', summary: 'unmount a virtiofs-client mount (also a stale one left by a crash)', load: async () => (await import('./unmount.ts')).unmountCommand },
  { name: 'check', summary: 'probe a device: does it read open flags, errno and lock types as the client meant?', load: async () => (await import('./check.ts')).checkCommand },
  { name: 'devices', summary: 'list virtio-fs PCI functions, their driver, and how to use them', load: async () => (await import('./devices.ts')).devicesCommand },
  { name: 'bind', summary: 'bind a PCI function to vfio-pci, uio_pci_generic or back to virtio_pci', load: async () => (await import('./devices.ts')).bindCommand },
  { name: 'demo', summary: 'start a real virtiofsd on sample files, mount it, and run a short session on it', load: async () => (await import('./demo.ts')).demoCommand },
  { name: 'arch', summary: 'show the per-architecture encoding tables; translate a value between architectures', load: async () => (await import('./arch.ts')).archCommand },
];

function overview(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'virtiofs-client: a userspace virtio-fs driver with FUSE architecture negotiation',
    '',
    'usage: virtiofs-client <command> [options]',
    '       virtiofs-client <transport> <mountpoint> [-o <options>]   (mount(8) form: see mount --help)',
    '',
    'commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Run `virtiofs-client <command> --help` for the options of one command.',
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  // mount.fuse3 (mount -t fuse.virtiofs-client, fstab) runs `virtiofs-client <source> <dir> -o <opts>`.
  if (name !== undefined && parseTransportSpec(name)) {
    return (await import('./mount.ts')).mountCommand.run(['--transport', name, '--quiet', ...rest]);
  }
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(overview());
    return name === undefined ? 2 : 0;
  }
  const entry = commands.find((c) => c.name === name);
  if (!entry) throw new UsageError(`unknown command '${name}' (try --help)`);
  const command = await entry.load();
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(command.usage);
    return 0;
  }
  return command.run(rest);
}

main(process.argv.slice(2)).then(
  (status) => {
    process.exitCode = status;
  },
  (err: unknown) => {
    // Expected failures are one line; anything else keeps its stack for a bug report.
    const e = err as Error & { code?: string };
    if (err instanceof UsageError || e.code !== undefined || process.env.VIRTIOFS_DEBUG === undefined) {
      console.error(`virtiofs-client: ${e.message ?? String(err)}`);
      if (!(err instanceof UsageError) && e.code === undefined) {
        console.error('(set VIRTIOFS_DEBUG=1 for the stack trace)');
      }
    } else {
      console.error(e.stack);
    }
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);

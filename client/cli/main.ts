import type { Command } from './command.ts';
import { UsageError } from './command.ts';
import { archCommand } from './arch.ts';
import { checkCommand } from './check.ts';
import { demoCommand } from './demo.ts';
import { bindCommand, devicesCommand } from './devices.ts';
import { mountCommand } from './mount.ts';
import { statusCommand } from './status.ts';
import { unmountCommand } from './unmount.ts';

const commands: readonly Command[] = [mountCommand, statusCommand, unmountCommand, checkCommand, devicesCommand, bindCommand, demoCommand, archCommand];

function overview(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'virtiofs-client: a userspace virtio-fs driver with FUSE architecture negotiation',
    '',
    'usage: virtiofs-client <command> [options]',
    '',
    'commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Run `virtiofs-client <command> --help` for the options of one command.',
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(overview());
    return name === undefined ? 2 : 0;
  }
  const command = commands.find((c) => c.name === name);
  if (!command) throw new UsageError(`unknown command '${name}' (try --help)`);
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

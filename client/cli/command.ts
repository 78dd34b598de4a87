import { VirtiofsError } from '../../ffi/errors.ts';

/** One CLI subcommand's implementation, loaded only when that command runs (see main.ts). */
export interface Command {
  /** Full help text, shown by `virtiofs-client <name> --help`. */
  readonly usage: string;
  /** Returns the process exit status. */
  run(args: string[]): Promise<number>;
}

/** An error the user caused (bad option, missing file): printed as one line, no stack. */
export class UsageError extends VirtiofsError {
  override name = 'UsageError';
  readonly code = 'ERR_USAGE';
}


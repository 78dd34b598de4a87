/** One CLI subcommand: `virtiofs-client <name> ...`. */
export interface Command {
  readonly name: string;
  /** One line for the command list. */
  readonly summary: string;
  /** Full help text, shown by `virtiofs-client <name> --help`. */
  readonly usage: string;
  /** Returns the process exit status. */
  run(args: string[]): Promise<number>;
}

/** An error the user caused (bad option, missing file): printed as one line, no stack. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/**
 * Failed system calls, reported the way Node reports its own: an Error with
 * `code` ('ENOENT'), `errno` and `syscall`.
 */
import { constants } from 'node:os';
import koffi from 'koffi';
import { VirtiofsError } from './errors.ts';

// strerror is only ever called on the main thread, so its static buffer is safe.
const strerror: (errno: number) => string | null = koffi
  .load('libc.so.6')
  .func('const char *strerror(int errnum)');

/**
 * errno number -> name. Where two names share a number (EAGAIN/EWOULDBLOCK,
 * ENOTSUP/EOPNOTSUPP) the first one Node lists wins, which is the name Node
 * itself reports.
 */
const namesByNumber = new Map<number, string>();
for (const [name, number] of Object.entries(constants.errno)) {
  if (!namesByNumber.has(number)) namesByNumber.set(number, name);
}

/** The symbolic name of an errno value ('ENOENT'), or 'E<number>' if Node does not know it. */
export function errnoName(errno: number): string {
  return namesByNumber.get(errno) ?? `E${errno}`;
}

/** The errno value of a symbolic name; throws for names this platform does not define. */
export function errnoNumber(code: string): number {
  const number = (constants.errno as Record<string, number | undefined>)[code];
  if (number === undefined) throw new RangeError(`unknown errno name '${code}'`);
  return number;
}

export class ErrnoError extends VirtiofsError {
  override name = 'ErrnoError';
  /** Symbolic name, as in Node's system errors: 'ENOENT'. */
  readonly code: string;
  /** The C errno value (positive, unlike the negated libuv numbers in Node's fs errors). */
  readonly errno: number;
  readonly syscall: string;

  /**
   * `detail` (a path, what was being waited for) is appended to the message.
   * `code` names errno values Node's table lacks (EREMCHG, ...), from a fuller table.
   */
  constructor(syscall: string, errno: number, detail?: string, code = errnoName(errno)) {
    const description = strerror(errno) ?? 'Unknown error';
    super(`${syscall}: ${code} (${description})${detail === undefined ? '' : `, ${detail}`}`);
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
  }
}

/** Whether `error` is an ErrnoError with one of the given codes. */
export function isErrnoError(error: unknown, ...codes: string[]): error is ErrnoError {
  return error instanceof ErrnoError && (codes.length === 0 || codes.includes(error.code));
}

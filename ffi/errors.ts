/**
 * The one base of every error this package throws on purpose, in every layer (undici's
 * UndiciError is the model): `code` is stable, for programs to branch on, and is an errno name
 * where one fits (ENOENT, EIO, EPROTO, ENOTCONN, ...), otherwise an upper-case name of its own
 * (ERR_ARCH_UNKNOWN, EPROTO_FUSE, BAD_SEGMENTS, ERR_USAGE, ...), documented with its class.
 * `instanceof VirtiofsError` tells them from programming errors (TypeError, RangeError) and from
 * errors of Node itself. It lives in ffi/, the bottom layer, so that every layer can extend it;
 * client/index.ts exports it.
 */
export abstract class VirtiofsError extends Error {
  abstract readonly code: string;
}

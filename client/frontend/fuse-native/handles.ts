/**
 * Small local file handles for fuse-native.
 *
 * fuse-native carries a file handle from JavaScript to libfuse as an int32
 * (NAPI_ARGV_INT32, and 0 means "no handle") and back as a uint32
 * (napi_create_uint32 of fuse_file_info.fh): a device's 64-bit fh cannot make
 * the trip. Each open file gets a number in 1..2^31-1 here instead, mapped to
 * what the device needs (node id, device fh, open flags). Numbers are handed
 * out in increasing order and wrap around, skipping those in use, so a number
 * is not reused right after its release.
 */

/** The largest handle fuse-native can return from open (NAPI_ARGV_INT32, positive). */
export const MAX_HANDLE = 0x7fff_ffff;

export class HandleMap<T> {
  private readonly byHandle = new Map<number, T>();
  private next = 1;

  constructor(private readonly max = MAX_HANDLE) {
    if (!Number.isInteger(max) || max < 1 || max > MAX_HANDLE) throw new RangeError(`handle limit ${max} outside 1..${MAX_HANDLE}`);
  }

  /** Stores `value` under a new handle; throws EMFILE when every handle is in use. */
  add(value: T): number {
    if (this.byHandle.size >= this.max) {
      throw Object.assign(new Error(`all ${this.max} file handles are in use`), { code: 'EMFILE' });
    }
    while (this.byHandle.has(this.next)) this.advance();
    const handle = this.next;
    this.byHandle.set(handle, value);
    this.advance();
    return handle;
  }

  get(handle: number): T | undefined {
    return this.byHandle.get(handle);
  }

  /** Removes and returns the value of `handle` (undefined if it is not open). */
  remove(handle: number): T | undefined {
    const value = this.byHandle.get(handle);
    if (value !== undefined) this.byHandle.delete(handle);
    return value;
  }

  get size(): number {
    return this.byHandle.size;
  }

  values(): IterableIterator<T> {
    return this.byHandle.values();
  }

  private advance(): void {
    this.next = this.next >= this.max ? 1 : this.next + 1;
  }
}

/** PCI config space through a file: sysfs `config` (UIO) or the VFIO device fd's config region. */
import { readSync, writeSync } from 'node:fs';

export function readConfig(fd: number, position: number, width: 1 | 2 | 4): number {
  const buf = Buffer.alloc(width);
  if (readSync(fd, buf, 0, width, position) !== width) throw new RangeError(`short PCI config read at 0x${position.toString(16)}`);
  return width === 1 ? buf.readUInt8() : width === 2 ? buf.readUInt16LE() : buf.readUInt32LE();
}

export function writeConfig(fd: number, position: number, width: 1 | 2 | 4, value: number): void {
  const buf = Buffer.alloc(width);
  if (width === 1) buf.writeUInt8(value);
  else if (width === 2) buf.writeUInt16LE(value);
  else buf.writeUInt32LE(value >>> 0);
  writeSync(fd, buf, 0, width, position);
}

import { readFileSync, readlinkSync } from 'node:fs';
import test from 'ava';
import type { DmaRegion } from '../../ffi/dma.ts';
import { MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap, viewMemory } from '../../ffi/libc.ts';
import { SharedMemory } from '../../ffi/shared-memory.ts';

const SIZE = 3 * 4096 + 100;

test('bytes written through the mapping are visible through a second mapping of the fd', (t) => {
  const memory = new SharedMemory(SIZE);
  t.teardown(() => memory.close());
  memory.bytes.set([1, 2, 3], 5000);
  memory.view.setUint32(SIZE - 4, 0xdeadbeef, true);

  const otherAddress = mmap(SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memory.fd);
  t.teardown(() => munmap(otherAddress, SIZE));
  t.not(otherAddress, memory.userAddress);
  const other = new Uint8Array(viewMemory(otherAddress, SIZE));
  t.deepEqual([...other.subarray(5000, 5003)], [1, 2, 3]);
  t.is(new DataView(other.buffer).getUint32(SIZE - 4, true), 0xdeadbeef);

  // And the other way round: no copy anywhere.
  other[0] = 42;
  t.is(memory.bytes[0], 42);
});

test('the memfd reads back through /proc/self/fd with plain file I/O', (t) => {
  const memory = new SharedMemory(SIZE, 'proc-read');
  t.teardown(() => memory.close());
  memory.bytes.set(new TextEncoder().encode('through the file'), 4096);
  t.is(readlinkSync(`/proc/self/fd/${memory.fd}`), '/memfd:proc-read (deleted)');
  const file = readFileSync(`/proc/self/fd/${memory.fd}`);
  t.is(file.length, SIZE);
  t.is(file.subarray(4096, 4096 + 16).toString(), 'through the file');
});

test('bytes and view cover exactly the region', (t) => {
  const memory = new SharedMemory(SIZE);
  t.teardown(() => memory.close());
  t.is(memory.size, SIZE);
  t.is(memory.bytes.byteLength, SIZE);
  t.is(memory.view.byteLength, SIZE);
  t.is(memory.bytes.buffer, memory.view.buffer);
});

test('device addresses are the user address plus the offset, contiguous to the end', (t) => {
  const memory: SharedMemory = new SharedMemory(SIZE);
  t.teardown(() => memory.close());
  const region: DmaRegion = memory;
  t.is(region.deviceAddress(0), memory.userAddress);
  let previous = -1n;
  for (const offset of [0, 1, 4095, 4096, 8191, SIZE - 1]) {
    const address = region.deviceAddress(offset);
    t.is(address, memory.userAddress + BigInt(offset));
    t.true(address > previous);
    previous = address;
    t.is(region.contiguousFrom(offset), SIZE - offset);
  }
  t.is(memory.userAddress % 4096n, 0n);
});

test('offsets outside the region are refused', (t) => {
  const memory = new SharedMemory(SIZE);
  t.teardown(() => memory.close());
  for (const offset of [-1, SIZE, 1.5, Number.NaN]) {
    t.throws(() => memory.deviceAddress(offset), { instanceOf: RangeError });
    t.throws(() => memory.contiguousFrom(offset), { instanceOf: RangeError });
  }
  t.throws(() => new SharedMemory(0), { instanceOf: RangeError });
});

test('close unmaps the memory and closes the fd, once', (t) => {
  const name = `close-test-${process.pid}`;
  const memory = new SharedMemory(SIZE, name);
  const mapped = (): boolean => readFileSync('/proc/self/maps', 'utf8').includes(`/memfd:${name} `);
  const fdOpen = (): boolean => {
    try {
      return readlinkSync(`/proc/self/fd/${memory.fd}`).startsWith(`/memfd:${name}`);
    } catch {
      return false;
    }
  };
  t.true(mapped());
  t.true(fdOpen());
  memory.close();
  t.false(mapped());
  t.false(fdOpen());
  t.notThrows(() => memory.close());
  t.throws(() => memory.deviceAddress(0), { message: /closed/ });
});

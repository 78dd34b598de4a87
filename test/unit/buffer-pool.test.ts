import test from 'ava';
import { BufferPool, BufferPoolError } from '../../client/virtio/buffer-pool.ts';
import { FakeDma } from '../helpers/fake-dma.ts';

const pool = (slotCount = 4, slotSize = 256, offset = 1024, region = new FakeDma(8192)) =>
  new BufferPool({ region, offset, slotSize, slotCount });

test('acquires every slot once, then -1; released slots come back', (t) => {
  const p = pool();
  const slots = [p.acquire(), p.acquire(), p.acquire(), p.acquire()];
  t.deepEqual([...slots].sort(), [0, 1, 2, 3]);
  t.is(p.available, 0);
  t.is(p.acquire(), -1);
  p.release(2);
  t.is(p.available, 1);
  t.is(p.acquire(), 2);
  t.is(p.acquire(), -1);
  for (const slot of slots) p.release(slot);
  t.is(p.available, 4);
});

test('slot offsets and bytes map to the region range without overlap', (t) => {
  const region = new FakeDma(8192);
  const p = pool(4, 256, 1024, region);
  t.deepEqual([0, 1, 2, 3].map((s) => p.slotOffset(s)), [1024, 1280, 1536, 1792]);
  const bytes = p.slotBytes(1);
  t.is(bytes, p.slotBytes(1), 'the same view every time, no allocation');
  t.is(bytes.length, 256);
  bytes.fill(0xab);
  t.is(region.bytes[1279], 0);
  t.is(region.bytes[1280], 0xab);
  t.is(region.bytes[1535], 0xab);
  t.is(region.bytes[1536], 0);
});

test('double release and foreign slots throw', (t) => {
  const p = pool();
  const slot = p.acquire();
  p.release(slot);
  t.is(t.throws(() => p.release(slot), { instanceOf: BufferPoolError })!.code, 'NOT_ACQUIRED');
  t.is(t.throws(() => p.release(3), { instanceOf: BufferPoolError })!.code, 'NOT_ACQUIRED', 'never acquired');
  for (const bad of [-1, 4, 1.5, Number.NaN]) {
    t.is(t.throws(() => p.release(bad), { instanceOf: BufferPoolError })!.code, 'BAD_SLOT');
    t.is(t.throws(() => p.slotOffset(bad), { instanceOf: BufferPoolError })!.code, 'BAD_SLOT');
  }
  t.is(p.available, 4, 'failed releases changed nothing');
});

test('the slot range must fit the region', (t) => {
  const code = (fn: () => unknown) => t.throws(fn, { instanceOf: BufferPoolError })!.code;
  t.is(code(() => pool(29, 256, 1024)), 'BAD_CONFIG'); // 1024 + 29 * 256 > 8192
  t.notThrows(() => pool(28, 256, 1024));
  t.is(code(() => pool(0)), 'BAD_CONFIG');
  t.is(code(() => pool(4, 0)), 'BAD_CONFIG');
  t.is(code(() => pool(4, 256, -1)), 'BAD_CONFIG');
});

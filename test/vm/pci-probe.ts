// Run inside the QEMU guest by pci-transports.test.ts: drives the virtio-fs PCI
// function through the client API over the given transport and prints KEY=VALUE lines.
import { constants as fsc } from 'node:fs';
import { ROOT, VirtioFsClient } from '../../client/client.ts';
import type { VirtioPciTransport } from '../../client/transport/pci/virtio-pci.ts';

const transport = process.argv[2]!;
const client = await VirtioFsClient.connect({ transport, log: (l) => console.log(`LOG=${l}`), timeoutMs: 20_000 });
const pci = client.session.device.transport as VirtioPciTransport;
console.log(`DESCRIPTION=${pci.description}`);
console.log(`INTERRUPTS=${pci.interruptMode}`);
const config = pci.readConfig();
console.log(`TAG=${config.tag}`);
console.log(`REQUEST_QUEUES=${config.numRequestQueues}`);
console.log(`MINOR=${client.session.init.minor}`);
console.log(`MAX_WRITE=${client.session.maxWrite}`);
const data = Buffer.alloc(3 * client.session.maxWrite + 123);
for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
const f = await client.create(ROOT, `from-${transport.split(':')[0]}.bin`, fsc.O_RDWR, 0o644);
console.log(`WRITTEN=${await client.write(f.entry.nodeid, f.fh, 0, data)}`);
console.log(`READ_BACK=${(await client.read(f.entry.nodeid, f.fh, 0, data.length)).equals(data)}`);
await client.release(f.entry.nodeid, f.fh);
const reads = await Promise.all(Array.from({ length: 16 }, () => client.lookup(ROOT, 'host.txt')));
console.log(`CONCURRENT=${reads.every((e) => e.attr.size === 10n)}`);
console.log(`LISTING=${(await client.list(ROOT)).map((e) => e.name).filter((n) => !n.startsWith('.')).sort().join(',')}`);
await client.close();
console.log('DONE=yes');

// Scripting a virtio-fs device through the client API, no mount involved.
// Run: node --import tsx examples/script-a-device.ts /path/to/vhost-user.sock
// (start a device first, e.g. /usr/lib/qemu/virtiofsd --socket-path=/tmp/vfs.sock -o source=/tmp/share -o sandbox=chroot)
import { constants } from 'node:fs';
import { ROOT, VirtioFsClient } from '../client/client.ts';

const client = await VirtioFsClient.connect({ transport: `vhost-user:${process.argv[2] ?? '/tmp/vfs.sock'}` });
console.log(client.describe().join('\n'));
const file = await client.create(ROOT, 'hello.txt', constants.O_RDWR | constants.O_TRUNC, 0o644);
await client.write(file.entry.nodeid, file.fh, 0, Buffer.from('hello from userspace virtio-fs\n'));
console.log((await client.read(file.entry.nodeid, file.fh, 0, 4096)).toString());
await client.release(file.entry.nodeid, file.fh);
for (const entry of await client.list(ROOT)) console.log(entry.name, entry.entry.attr.size);
await client.lookup(ROOT, 'missing').catch((e: NodeJS.ErrnoException) => console.log('missing:', e.code));
await client.close();

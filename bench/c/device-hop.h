/*
 * Force-included (gcc -include) into libfuse's passthrough_ll.c by
 * bench/device-hop.ts. With VFS_BENCH_DEVICE_HOP set in the environment, each
 * WRITE's data copy (fuse_buf_copy: the pwrite into the file) is done by
 * another thread instead of the libfuse thread that read the request: the
 * libfuse thread signals an eventfd and blocks in read() on a second one until
 * the helper has written. That is the smallest form of the hop every virtio-fs
 * request makes (driver -> device -> driver), in C, with the same copies as
 * plain passthrough_ll and nothing else added. Without the variable the
 * daemon behaves exactly as built from libfuse's source.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

static pthread_once_t hop_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t hop_lock = PTHREAD_MUTEX_INITIALIZER;
static int hop_enabled, hop_go = -1, hop_done = -1;
static struct fuse_bufvec *hop_dst, *hop_src;
static ssize_t hop_result;

static void *hop_device(void *unused)
{
	uint64_t v;
	(void) unused;
	for (;;) {
		if (read(hop_go, &v, sizeof v) != sizeof v)
			continue;
		hop_result = fuse_buf_copy(hop_dst, hop_src, 0);
		v = 1;
		if (write(hop_done, &v, sizeof v) != sizeof v)
			abort();
	}
	return NULL;
}

static void hop_start(void)
{
	pthread_t thread;
	hop_enabled = getenv("VFS_BENCH_DEVICE_HOP") != NULL;
	if (!hop_enabled)
		return;
	hop_go = eventfd(0, 0);
	hop_done = eventfd(0, 0);
	if (hop_go < 0 || hop_done < 0 || pthread_create(&thread, NULL, hop_device, NULL) != 0)
		abort();
}

static ssize_t hop_buf_copy(struct fuse_bufvec *dst, struct fuse_bufvec *src, enum fuse_buf_copy_flags flags)
{
	uint64_t v = 1;
	ssize_t res;
	pthread_once(&hop_once, hop_start);
	if (!hop_enabled)
		return fuse_buf_copy(dst, src, flags);
	pthread_mutex_lock(&hop_lock);
	hop_dst = dst;
	hop_src = src;
	if (write(hop_go, &v, sizeof v) != sizeof v || read(hop_done, &v, sizeof v) != sizeof v)
		abort();
	res = hop_result;
	pthread_mutex_unlock(&hop_lock);
	return res;
}

#define fuse_buf_copy hop_buf_copy

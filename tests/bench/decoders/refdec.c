// refdec: how fast the C decoders QEMU and others use decode the compressed
// clusters of a qcow2 image, one core, for tests/bench/decoders.sh. Not
// part of chainfs, which reads in pure Go; this only sets its decoders'
// speed beside theirs.
//
//	refdec zlib|zstd CLUSTERS CLUSTER_SIZE
//
// CLUSTERS is what BenchmarkInflate writes with INFLATE_BENCH_DIR set
// (layers/inflate_bench_test.go): each compressed stream as a
// little-endian uint32 length and the stream, padded as qcow2 stores it.
// zlib streams are inflated by zlib (as QEMU does: raw deflate, window
// 2^12, until the cluster is full) and by libdeflate; zstd frames by
// libzstd. Prints MB of cluster per CPU-second for each.
#include <libdeflate.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>
#include <zstd.h>

static double cpu_seconds(void) {
	struct timespec t;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

enum { passes = 20 };

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: refdec zlib|zstd CLUSTERS CLUSTER_SIZE\n");
		return 2;
	}
	int zstd = strcmp(argv[1], "zstd") == 0;
	size_t cs = strtoul(argv[3], NULL, 10);
	FILE *f = fopen(argv[2], "rb");
	if (!f) {
		perror(argv[2]);
		return 1;
	}
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	unsigned char *data = malloc(n), *out = malloc(cs);
	if (!data || !out || fread(data, 1, n, f) != (size_t)n) {
		fprintf(stderr, "refdec: reading %s failed\n", argv[2]);
		return 1;
	}
	size_t k = 0, cap = 1024;
	unsigned char **s = malloc(cap * sizeof *s);
	size_t *len = malloc(cap * sizeof *len);
	for (long p = 0; p + 4 <= n; k++) {
		uint32_t l = data[p] | data[p + 1] << 8 | data[p + 2] << 16 | (uint32_t)data[p + 3] << 24;
		if (k == cap) {
			cap *= 2;
			s = realloc(s, cap * sizeof *s);
			len = realloc(len, cap * sizeof *len);
		}
		s[k] = data + p + 4;
		len[k] = l;
		p += 4 + l;
	}
	if (zstd) {
		ZSTD_DCtx *d = ZSTD_createDCtx();
		size_t bad = 0;
		double t0 = cpu_seconds();
		for (int r = 0; r < passes; r++)
			for (size_t i = 0; i < k; i++) {
				size_t fl = ZSTD_findFrameCompressedSize(s[i], len[i]);
				size_t got = ZSTD_isError(fl) ? fl : ZSTD_decompressDCtx(d, out, cs, s[i], fl);
				bad += ZSTD_isError(got) || got != cs;
			}
		double el = cpu_seconds() - t0;
		printf("libzstd %s\t%zu clusters\t%.0f MB/cpu-s\t%.0f us/cluster\tfailed %zu\n",
		       ZSTD_versionString(), k, passes * k * cs / el / 1e6, el / (passes * k) * 1e6, bad / passes);
		return 0;
	}
	struct libdeflate_decompressor *ld = libdeflate_alloc_decompressor();
	size_t bad = 0, got;
	double t0 = cpu_seconds();
	for (int r = 0; r < passes; r++)
		for (size_t i = 0; i < k; i++)
			bad += libdeflate_deflate_decompress(ld, s[i], len[i], out, cs, &got) != LIBDEFLATE_SUCCESS || got != cs;
	double el = cpu_seconds() - t0;
	printf("libdeflate\t%zu clusters\t%.0f MB/cpu-s\t%.0f us/cluster\tfailed %zu\n",
	       k, passes * k * cs / el / 1e6, el / (passes * k) * 1e6, bad / passes);

	bad = 0;
	t0 = cpu_seconds();
	for (int r = 0; r < passes; r++)
		for (size_t i = 0; i < k; i++) {
			z_stream z = {0};
			inflateInit2(&z, -12);
			z.next_in = s[i];
			z.avail_in = len[i];
			z.next_out = out;
			z.avail_out = cs;
			int ret = inflate(&z, Z_FINISH);
			bad += !((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0);
			inflateEnd(&z);
		}
	el = cpu_seconds() - t0;
	printf("zlib %s\t%zu clusters\t%.0f MB/cpu-s\t%.0f us/cluster\tfailed %zu\n",
	       zlibVersion(), k, passes * k * cs / el / 1e6, el / (passes * k) * 1e6, bad / passes);
	return 0;
}

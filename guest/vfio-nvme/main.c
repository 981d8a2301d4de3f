/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfio-nvme: write a pattern to an NVMe namespace and read it back through a
 * driver of our own over VFIO, reporting IOPS and MiB/s as one JSON line.
 *
 *   vfio-nvme --pci 0000:00:04.0 [--iommu iommufd|type1|spapr] [--bs 4K]
 *             [--qd 8] [--size 4M] [--lba 0] [--seed 1] [--timeout-ms 10000]
 *             [--iova ADDR] [--between CMD]
 *
 * The pattern: the 64-bit little-endian word at byte offset o of the
 * namespace is splitmix64(seed + o / 8), so the host can check the disk file.
 * --between runs "/bin/sh -c CMD" after the write phase and before the read
 * phase, with VN_DATA_GPA set to the guest-physical runs of the data buffer
 * ("start+len,..." in hex): a test hook to break the DMA path under the I/O.
 * --iova maps the data buffer at that IOVA (iommufd: IOMMU_IOAS_MAP_FIXED_IOVA;
 * type1: MAP_DMA there) instead of where the kernel or the driver would put it.
 * Exit status 0 only when every byte read back matched.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vn.h"

static struct vn_dma g_dma;
static struct vn_ctrl g_ctrl;
static int g_failing;

uint64_t vn_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void jstr(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            fprintf(f, "\\%c", ch);
        } else if (ch < 0x20 || ch > 0x7e) {
            fprintf(f, "\\u%04x", ch);
        } else {
            fputc(ch, f);
        }
    }
    fputc('"', f);
}

/* The error line, then a bounded best-effort teardown; never returns. */
void vn_fail(const char *stage, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (g_failing++) { /* a failure during the teardown of a failure */
        fprintf(stderr, "vfio-nvme: during teardown: %s: %s\n", stage, msg);
        exit(1);
    }
    printf("{\"ok\": false, \"stage\": ");
    jstr(stdout, stage);
    printf(", \"error\": ");
    jstr(stdout, msg);
    printf(", \"pci\": ");
    jstr(stdout, g_dma.pci);
    printf("}\n");
    fflush(stdout);
    vn_ctrl_close(&g_ctrl);
    vn_dma_close(&g_dma);
    exit(1);
}

static uint64_t splitmix64(uint64_t x)
{
    uint64_t z = x + 0x9e3779b97f4a7c15ULL;

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t le64(uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return __builtin_bswap64(v);
#else
    return v;
#endif
}

static uint64_t parse_size(const char *opt, const char *s)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || end == s) {
        vn_fail("args", "%s %s: not a number", opt, s);
    }
    switch (*end) {
    case 'k':
    case 'K':
        v <<= 10;
        end++;
        break;
    case 'm':
    case 'M':
        v <<= 20;
        end++;
        break;
    case 'g':
    case 'G':
        v <<= 30;
        end++;
        break;
    }
    if (*end) {
        vn_fail("args", "%s %s: trailing '%s'", opt, s, end);
    }
    return v;
}

/* VN_DATA_GPA: the guest-physical runs of [va, va + len). */
static void export_gpa(void *va, size_t len, char *out, size_t outlen)
{
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t run_start = 0, run_len = 0;
    size_t off = 0;

    out[0] = 0;
    for (size_t o = 0; o <= len; o += pg) {
        uint64_t pa = o < len ? vn_phys((char *)va + o) : 0;
        if (run_len && pa == run_start + run_len) {
            run_len += pg;
            continue;
        }
        if (run_len && off < outlen) {
            off += snprintf(out + off, outlen - off, "%s0x%llx+0x%llx", off ? "," : "",
                            (unsigned long long)run_start, (unsigned long long)run_len);
        }
        run_start = pa;
        run_len = pa ? pg : 0;
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: vfio-nvme --pci DDDD:BB:DD.F [--iommu iommufd|type1|spapr] "
            "[--bs 4K] [--qd 8] [--size 4M] [--lba 0] [--seed 1] [--timeout-ms 10000] "
            "[--iova ADDR] [--between CMD]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *pci = NULL, *iommu = "iommufd", *between = NULL;
    uint64_t bs = 4096, qd = 8, size = 4 << 20, lba0 = 0, seed = 1, timeout_ms = 10000;
    enum vn_iommu mode;
    struct vn_buf data = { 0 };
    uint64_t iova = 0;
    bool fixed_iova = false;
    uint8_t *state;
    uint64_t count, t0, wns, rns, mismatched = 0, bad_chunks = 0, failed_chunks = 0;
    uint64_t verified = 0, lbas_per;
    char err[512] = "", gpa[4096];
    int rc;

    g_dma.dev_fd = g_dma.iommufd = g_dma.container_fd = g_dma.group_fd = -1;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
        }
        i++;
        if (!strcmp(o, "--pci")) {
            pci = v;
        } else if (!strcmp(o, "--iommu")) {
            iommu = v;
        } else if (!strcmp(o, "--bs")) {
            bs = parse_size(o, v);
        } else if (!strcmp(o, "--qd")) {
            qd = parse_size(o, v);
        } else if (!strcmp(o, "--size")) {
            size = parse_size(o, v);
        } else if (!strcmp(o, "--lba")) {
            lba0 = parse_size(o, v);
        } else if (!strcmp(o, "--seed")) {
            seed = parse_size(o, v);
        } else if (!strcmp(o, "--timeout-ms")) {
            timeout_ms = parse_size(o, v);
        } else if (!strcmp(o, "--iova")) {
            iova = parse_size(o, v);
            fixed_iova = true;
        } else if (!strcmp(o, "--between")) {
            between = v;
        } else {
            usage();
        }
    }
    if (!pci) {
        usage();
    }
    snprintf(g_dma.pci, sizeof(g_dma.pci), "%s", pci);
    if (!strcmp(iommu, "iommufd")) {
        mode = VN_IOMMUFD;
    } else if (!strcmp(iommu, "type1")) {
        mode = VN_TYPE1;
    } else if (!strcmp(iommu, "spapr")) {
        mode = VN_SPAPR;
    } else {
        vn_fail("args", "--iommu %s: give iommufd, type1 or spapr", iommu);
    }
    if (qd < 1 || qd > 1024) {
        vn_fail("args", "--qd %llu: give 1..1024", (unsigned long long)qd);
    }
    if (bs < 512 || bs > (2u << 20) || (bs & 511)) {
        vn_fail("args", "--bs %llu: give a multiple of 512 up to 2M",
                (unsigned long long)bs);
    }
    if (!size || size % bs || size > (1ULL << 30)) {
        vn_fail("args", "--size %llu: give a multiple of --bs %llu up to 1G",
                (unsigned long long)size, (unsigned long long)bs);
    }
    if (timeout_ms < 1 || timeout_ms > 600000) {
        vn_fail("args", "--timeout-ms %llu: give 1..600000",
                (unsigned long long)timeout_ms);
    }
    count = size / bs;

    vn_dma_open(&g_dma, pci, mode, size + (qd + 8) * 4096);
    g_ctrl.timeout_ms = (uint32_t)timeout_ms;
    vn_ctrl_open(&g_ctrl, &g_dma, (uint32_t)qd);
    vn_ctrl_identify(&g_ctrl);
    if (bs % g_ctrl.lba_size) {
        vn_fail("args", "--bs %llu is not a multiple of the namespace's %u-byte blocks",
                (unsigned long long)bs, g_ctrl.lba_size);
    }
    if (g_ctrl.mdts_bytes && bs > g_ctrl.mdts_bytes) {
        vn_fail("args", "--bs %llu exceeds the controller's maximum transfer of %u bytes",
                (unsigned long long)bs, g_ctrl.mdts_bytes);
    }
    lbas_per = bs / g_ctrl.lba_size;
    if (lba0 > g_ctrl.nsze || count * lbas_per > g_ctrl.nsze - lba0) {
        vn_fail("args", "--lba %llu + --size %llu is past the namespace's end "
                "(%llu blocks of %u bytes)", (unsigned long long)lba0,
                (unsigned long long)size,
                (unsigned long long)g_ctrl.nsze, g_ctrl.lba_size);
    }
    vn_ctrl_create_ioq(&g_ctrl);

    data.len = size;
    data.va = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    state = calloc(count, 1);
    if (data.va == MAP_FAILED || !state) {
        vn_fail("memory", "cannot allocate %llu bytes of data buffer",
                (unsigned long long)size);
    }
    {
        uint64_t *w = data.va, base = lba0 * g_ctrl.lba_size / 8;
        for (uint64_t i = 0; i < size / 8; i++) {
            w[i] = le64(splitmix64(seed + base + i));
        }
    }
    data.iova = iova;
    data.fixed_iova = fixed_iova;
    vn_dma_map(&g_dma, &data);
    export_gpa(data.va, size, gpa, sizeof(gpa));

    t0 = vn_now_ns();
    rc = vn_ctrl_io(&g_ctrl, true, lba0, (uint32_t)bs, count, (uint32_t)qd, &data, state,
                    err, sizeof(err));
    wns = vn_now_ns() - t0;
    if (rc) {
        vn_fail("write", "%s", err);
    }
    if (between) {
        setenv("VN_DATA_GPA", gpa, 1);
        fflush(stdout);
        rc = system(between);
        if (rc) {
            fprintf(stderr, "vfio-nvme: --between command ended with status %d\n", rc);
        }
    }
    memset(data.va, 0xa5, size); /* a read that does not land leaves this poison */
    t0 = vn_now_ns();
    rc = vn_ctrl_io(&g_ctrl, false, lba0, (uint32_t)bs, count, (uint32_t)qd, &data, state,
                    err, sizeof(err));
    rns = vn_now_ns() - t0;
    {
        uint64_t *w = data.va, base = lba0 * g_ctrl.lba_size / 8, per = bs / 8;
        for (uint64_t c = 0; c < count; c++) {
            uint64_t bad = 0;
            if (state[c] != VN_DONE) {
                failed_chunks++;
                continue;
            }
            for (uint64_t i = c * per; i < (c + 1) * per; i++) {
                bad += w[i] != le64(splitmix64(seed + base + i));
            }
            verified += bs;
            mismatched += bad;
            bad_chunks += bad != 0;
        }
    }

    printf("{\"ok\": %s, \"pci\": ", !rc && !mismatched ? "true" : "false");
    jstr(stdout, pci);
    printf(", \"iommu\": \"%s\", \"dma\": ", iommu);
    jstr(stdout, g_dma.info);
    printf(", \"model\": ");
    jstr(stdout, g_ctrl.model);
    printf(", \"serial\": ");
    jstr(stdout, g_ctrl.serial);
    printf(", \"fw\": ");
    jstr(stdout, g_ctrl.fw);
    printf(", \"bar\": \"%s\"", g_ctrl.bar ? "mmap" : "pread");
    printf(", \"vid\": %u, \"nsze\": %llu, \"lba_size\": %u, \"mdts\": %u, \"mqes\": %u",
           g_ctrl.vid, (unsigned long long)g_ctrl.nsze, g_ctrl.lba_size,
           g_ctrl.mdts_bytes, g_ctrl.mqes);
    printf(", \"bs\": %llu, \"qd\": %llu, \"size\": %llu, \"lba\": %llu, \"seed\": %llu",
           (unsigned long long)bs, (unsigned long long)qd, (unsigned long long)size,
           (unsigned long long)lba0, (unsigned long long)seed);
    printf(", \"commands\": %llu, \"data_iova\": %llu, \"queue_iova\": %llu"
           ", \"data_gpa\": ",
           (unsigned long long)count, (unsigned long long)data.iova,
           (unsigned long long)g_ctrl.ctl.iova);
    jstr(stdout, gpa);
    printf(", \"write_s\": %.6f, \"write_iops\": %.0f, \"write_mibs\": %.1f",
           wns / 1e9, count / (wns / 1e9), size / 1048576.0 / (wns / 1e9));
    printf(", \"read_s\": %.6f, \"read_iops\": %.0f, \"read_mibs\": %.1f",
           rns / 1e9, rns ? count / (rns / 1e9) : 0,
           rns ? size / 1048576.0 / (rns / 1e9) : 0);
    printf(", \"verified_bytes\": %llu, \"mismatched_words\": %llu"
           ", \"bad_commands\": %llu, \"failed_commands\": %llu",
           (unsigned long long)verified,
           (unsigned long long)mismatched, (unsigned long long)bad_chunks,
           (unsigned long long)failed_chunks);
    if (rc || mismatched) {
        printf(", \"stage\": \"read\", \"error\": ");
        if (!rc) {
            snprintf(err, sizeof(err),
                     "%llu words in %llu commands differ from the pattern",
                     (unsigned long long)mismatched, (unsigned long long)bad_chunks);
        }
        jstr(stdout, err);
    }
    printf("}\n");
    fflush(stdout);
    g_failing = 1; /* teardown errors go to stderr only */
    vn_ctrl_close(&g_ctrl);
    vn_dma_close(&g_dma);
    munmap(data.va, size);
    return rc || mismatched ? 1 : 0;
}

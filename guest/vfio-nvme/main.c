/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfio-nvme: write a pattern to an NVMe namespace and read it back through a
 * driver of our own over VFIO, reporting IOPS and MiB/s as one JSON line.
 *
 *   vfio-nvme --pci 0000:00:04.0 [--iommu iommufd|type1|spapr] [--bs 4K]
 *             [--qd 8] [--size 4M] [--lba 0] [--seed 1] [--timeout-ms 10000]
 *             [--iova ADDR] [--between CMD] [--with PCI[,PCI...]]
 *
 * The pattern: the 64-bit little-endian word at byte offset o of the
 * namespace is splitmix64(seed + o / 8), so the host can check the disk file.
 * --between runs "/bin/sh -c CMD" after the write phase and before the read
 * phase, with VN_DATA_GPA set to the guest-physical runs of the data buffer
 * ("start+len,..." in hex): a test hook to break the DMA path under the I/O.
 * --iova maps the data buffer at that IOVA (iommufd: IOMMU_IOAS_MAP_FIXED_IOVA;
 * type1: MAP_DMA there) instead of where the kernel or the driver would put it.
 * --with (iommufd only) drives more NVMe functions in the same run: each is
 * bound to the same iommufd and attached to the first one's HWPT, so all of
 * them do DMA through one iommu_domain at once (one thread each per phase),
 * each writing the same pattern to its own namespace; their reports are the
 * "peers" list, and "ok" is true only if every function's bytes came back.
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

static struct vn_dev g_dev[VN_MAX_DEVS];
static struct vn_io g_io;
static int g_ndev;
static const char *g_cur_pci = ""; /* the function an error is about */
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

/* Joined functions first: they borrow the first one's iommufd and IOAS. */
static void close_all(void)
{
    for (int i = g_ndev - 1; i >= 0; i--) {
        vn_ctrl_close(&g_dev[i].ctrl);
        vn_dma_close(&g_dev[i].dma);
    }
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
    jstr(stdout, g_cur_pci);
    printf("}\n");
    fflush(stdout);
    close_all();
    exit(1);
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
            "[--iova ADDR] [--between CMD] [--with DDDD:BB:DD.F[,...]]\n");
    exit(2);
}

/* The fields every function's report has. */
static void report_dev(const struct vn_dev *v)
{
    double w = v->wns / 1e9, r = v->rns / 1e9, size = v->data.len;

    printf("\"pci\": ");
    jstr(stdout, v->dma.pci);
    printf(", \"dma\": ");
    jstr(stdout, v->dma.info);
    printf(", \"model\": ");
    jstr(stdout, v->ctrl.model);
    printf(", \"serial\": ");
    jstr(stdout, v->ctrl.serial);
    printf(", \"data_iova\": %llu, \"queue_iova\": %llu",
           (unsigned long long)v->data.iova, (unsigned long long)v->ctrl.ctl.iova);
    printf(", \"write_s\": %.6f, \"write_iops\": %.0f, \"write_mibs\": %.1f",
           w, w ? g_io.count / w : 0, w ? size / 1048576.0 / w : 0);
    printf(", \"read_s\": %.6f, \"read_iops\": %.0f, \"read_mibs\": %.1f",
           r, r ? g_io.count / r : 0, r ? size / 1048576.0 / r : 0);
    printf(", \"verified_bytes\": %llu, \"mismatched_words\": %llu"
           ", \"bad_commands\": %llu, \"failed_commands\": %llu",
           (unsigned long long)v->verified, (unsigned long long)v->mismatched,
           (unsigned long long)v->bad_chunks, (unsigned long long)v->failed_chunks);
}

int main(int argc, char **argv)
{
    const char *pci = NULL, *iommu = "iommufd", *between = NULL, *with = NULL;
    const char *pcis[VN_MAX_DEVS];
    char withbuf[256] = "", gpa[4096];
    uint64_t bs = 4096, qd = 8, size = 4 << 20, lba0 = 0, seed = 1, timeout_ms = 10000;
    uint64_t iova = 0, lbas_per;
    enum vn_iommu mode;
    bool fixed_iova = false, ok = true;
    int n = 1, bad = -1;

    for (int i = 0; i < VN_MAX_DEVS; i++) {
        g_dev[i].dma.dev_fd = g_dev[i].dma.iommufd = -1;
        g_dev[i].dma.container_fd = g_dev[i].dma.group_fd = -1;
    }
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
        } else if (!strcmp(o, "--with")) {
            with = v;
        } else {
            usage();
        }
    }
    if (!pci) {
        usage();
    }
    g_cur_pci = pcis[0] = pci;
    if (!strcmp(iommu, "iommufd")) {
        mode = VN_IOMMUFD;
    } else if (!strcmp(iommu, "type1")) {
        mode = VN_TYPE1;
    } else if (!strcmp(iommu, "spapr")) {
        mode = VN_SPAPR;
    } else {
        vn_fail("args", "--iommu %s: give iommufd, type1 or spapr", iommu);
    }
    if (with) {
        if (mode != VN_IOMMUFD) {
            vn_fail("args", "--with: only with --iommu iommufd (the functions join one "
                    "iommufd domain)");
        }
        if (strlen(with) >= sizeof(withbuf)) {
            vn_fail("args", "--with: too long");
        }
        memcpy(withbuf, with, strlen(with) + 1);
        for (char *t = strtok(withbuf, ","); t; t = strtok(NULL, ",")) {
            if (n == VN_MAX_DEVS) {
                vn_fail("args", "--with: at most %d more functions", VN_MAX_DEVS - 1);
            }
            for (int j = 0; j < n; j++) {
                if (!strcmp(pcis[j], t)) {
                    vn_fail("args", "--with: %s is given twice", t);
                }
            }
            pcis[n++] = t;
        }
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
    g_io.count = size / bs;
    g_io.lba0 = lba0;
    g_io.bs = (uint32_t)bs;
    g_io.qd = (uint32_t)qd;
    g_io.seed = seed;

    /* Every function brought up in turn; the first owns the IOAS, the others join its HWPT. */
    for (int i = 0; i < n; i++) {
        struct vn_dev *v = &g_dev[i];

        g_cur_pci = pcis[i];
        g_ndev = i + 1;
        if (i == 0) {
            vn_dma_open(&v->dma, pcis[i], mode, size + (qd + 8) * 4096);
        } else {
            vn_dma_join(&v->dma, pcis[i], &g_dev[0].dma);
        }
        v->ctrl.timeout_ms = (uint32_t)timeout_ms;
        vn_ctrl_open(&v->ctrl, &v->dma, (uint32_t)qd);
        vn_ctrl_identify(&v->ctrl);
        if (bs % v->ctrl.lba_size) {
            vn_fail("args", "--bs %llu is not a multiple of the namespace's %u-byte blocks",
                    (unsigned long long)bs, v->ctrl.lba_size);
        }
        if (v->ctrl.mdts_bytes && bs > v->ctrl.mdts_bytes) {
            vn_fail("args", "--bs %llu exceeds the controller's maximum transfer of %u bytes",
                    (unsigned long long)bs, v->ctrl.mdts_bytes);
        }
        lbas_per = bs / v->ctrl.lba_size;
        if (lba0 > v->ctrl.nsze || g_io.count * lbas_per > v->ctrl.nsze - lba0) {
            vn_fail("args", "--lba %llu + --size %llu is past the namespace's end "
                    "(%llu blocks of %u bytes)", (unsigned long long)lba0,
                    (unsigned long long)size,
                    (unsigned long long)v->ctrl.nsze, v->ctrl.lba_size);
        }
        vn_ctrl_create_ioq(&v->ctrl);

        v->data.len = size;
        v->data.va = mmap(NULL, size, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        v->state = calloc(g_io.count, 1);
        if (v->data.va == MAP_FAILED || !v->state) {
            vn_fail("memory", "cannot allocate %llu bytes of data buffer",
                    (unsigned long long)size);
        }
        vn_fill_pattern(v, &g_io);
        v->data.iova = i == 0 ? iova : 0; /* --iova is the first function's */
        v->data.fixed_iova = i == 0 && fixed_iova;
        vn_dma_map(&v->dma, &v->data);
    }
    g_cur_pci = pci;
    export_gpa(g_dev[0].data.va, size, gpa, sizeof(gpa));

    vn_run_phase(g_dev, n, &g_io, true);
    for (int i = 0; i < n; i++) {
        if (g_dev[i].rc) {
            g_cur_pci = pcis[i];
            vn_fail("write", "%s", g_dev[i].err);
        }
    }
    if (between) {
        int rc;
        setenv("VN_DATA_GPA", gpa, 1);
        fflush(stdout);
        rc = system(between);
        if (rc) {
            fprintf(stderr, "vfio-nvme: --between command ended with status %d\n", rc);
        }
    }
    for (int i = 0; i < n; i++) { /* a read that does not land leaves this poison */
        memset(g_dev[i].data.va, 0xa5, size);
    }
    vn_run_phase(g_dev, n, &g_io, false);
    for (int i = 0; i < n; i++) {
        vn_verify(&g_dev[i], &g_io);
        if (!vn_dev_ok(&g_dev[i]) && ok) {
            ok = false;
            bad = i;
        }
    }

    printf("{\"ok\": %s, ", ok ? "true" : "false");
    report_dev(&g_dev[0]);
    printf(", \"iommu\": \"%s\", \"fw\": ", iommu);
    jstr(stdout, g_dev[0].ctrl.fw);
    printf(", \"bar\": \"%s\"", g_dev[0].ctrl.bar ? "mmap" : "pread");
    printf(", \"vid\": %u, \"nsze\": %llu, \"lba_size\": %u, \"mdts\": %u, \"mqes\": %u",
           g_dev[0].ctrl.vid, (unsigned long long)g_dev[0].ctrl.nsze,
           g_dev[0].ctrl.lba_size, g_dev[0].ctrl.mdts_bytes, g_dev[0].ctrl.mqes);
    printf(", \"bs\": %llu, \"qd\": %llu, \"size\": %llu, \"lba\": %llu, \"seed\": %llu",
           (unsigned long long)bs, (unsigned long long)qd, (unsigned long long)size,
           (unsigned long long)lba0, (unsigned long long)seed);
    printf(", \"commands\": %llu, \"data_gpa\": ", (unsigned long long)g_io.count);
    jstr(stdout, gpa);
    if (n > 1) {
        printf(", \"peers\": [");
        for (int i = 1; i < n; i++) {
            printf("%s{\"ok\": %s, ", i > 1 ? ", " : "", vn_dev_ok(&g_dev[i]) ? "true" : "false");
            report_dev(&g_dev[i]);
            if (!vn_dev_ok(&g_dev[i])) {
                printf(", \"error\": ");
                jstr(stdout, g_dev[i].err);
            }
            printf("}");
        }
        printf("]");
    }
    if (!ok) { /* last, so that a reader taking the last "error" gets this one */
        char msg[600];
        snprintf(msg, sizeof(msg), "%s%s%s", bad ? pcis[bad] : "", bad ? ": " : "",
                 g_dev[bad].err);
        printf(", \"stage\": \"read\", \"error\": ");
        jstr(stdout, msg);
    }
    printf("}\n");
    fflush(stdout);
    g_failing = 1; /* teardown errors go to stderr only */
    close_all();
    for (int i = 0; i < n; i++) {
        munmap(g_dev[i].data.va, size);
    }
    return ok ? 0 : 1;
}

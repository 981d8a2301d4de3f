/*
 * iommufd-conformance: run iommufd calls received as text lines against
 * /dev/iommu (with the CONFIG_IOMMUFD_TEST mock domain) and answer each
 * call's result, for the differential run of pyctl's model against the
 * kernel (pyctl/conformance, docs/iommufd.md "Conformance against the kernel").
 *
 * Usage: iommufd-conformance CHANNEL     (a tty or "-" for stdin/stdout)
 *
 * Request:  SEQ OP ARG...        numbers in hex without 0x
 * Answer:   SEQ ok VALUE...  |  SEQ e ERRNO [VALUE...]  |  SEQ bad MESSAGE
 * Map sources are "bN+OFF" (buffer N of the runner's, at offset OFF) or a
 * plain number (a raw user address).  The buffers sit at fixed addresses
 * (BUF_BASE + N * BUF_STRIDE), so the model sees the same addresses.
 *
 * Copyright the iommulab authors.  SPDX-License-Identifier: GPL-2.0-or-later
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <termios.h>
#include <unistd.h>

#include <linux/iommufd.h>
#include "iommufd_test.h"

#define PROTO_VERSION 1
#define NBUF 4
#define BUF_SIZE (8ULL << 20)
#define BUF_STRIDE (1ULL << 30)
#define BUF_BASE (0x200000000000ULL)
#define MAX_ARGS 80
#define MAX_RANGES 64

static int in_fd, out_fd, ictx = -1;
static char outbuf[1 << 16];
static size_t outlen;

static void flush_out(void)
{
    size_t off = 0;

    while (off < outlen) {
        ssize_t n = write(out_fd, outbuf + off, outlen - off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            _exit(3);
        }
        off += n;
    }
    outlen = 0;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    int n;

    if (outlen > sizeof(outbuf) - 4096) {
        flush_out();
    }
    va_start(ap, fmt);
    n = vsnprintf(outbuf + outlen, sizeof(outbuf) - outlen, fmt, ap);
    va_end(ap);
    if (n > 0) {
        outlen += (size_t)n < sizeof(outbuf) - outlen ? (size_t)n : 0;
    }
}

static int open_ctx(void)
{
    int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);

    return fd;
}

static int do_ioctl(int fd, unsigned long req, void *arg)
{
    return ioctl(fd, req, arg) ? -errno : 0;
}

/* "bN+OFF" -> the buffer's address + OFF; otherwise a raw hex address. */
static int parse_src(const char *s, uint64_t *out)
{
    char *end;

    if (s[0] == 'b' && strchr(s, '+')) {
        unsigned long n = strtoul(s + 1, &end, 16);
        uint64_t off;

        if (*end != '+' || n >= NBUF) {
            return -1;
        }
        off = strtoull(end + 1, &end, 16);
        if (*end) {
            return -1;
        }
        *out = BUF_BASE + n * BUF_STRIDE + off;
        return 0;
    }
    *out = strtoull(s, &end, 16);
    return *end ? -1 : 0;
}

static int test_cmd(int fd, struct iommu_test_cmd *cmd)
{
    cmd->size = sizeof(*cmd);
    return do_ioctl(fd, IOMMU_TEST_CMD, cmd);
}

static int iova_ranges(int fd, uint32_t ioas, uint32_t num,
                       struct iommu_ioas_iova_ranges *r,
                       struct iommu_iova_range *ranges)
{
    memset(r, 0, sizeof(*r));
    r->size = sizeof(*r);
    r->ioas_id = ioas;
    r->num_iovas = num;
    r->allowed_iovas = (uintptr_t)ranges;
    return do_ioctl(fd, IOMMU_IOAS_IOVA_RANGES, r);
}

/* THP's PMD size (iopt_alloc_iova()'s alignment cap), 0 without THP. */
static unsigned long hpage_size(void)
{
    unsigned long v = 0;
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "r");

    if (f) {
        if (fscanf(f, "%lu", &v) != 1) {
            v = 0;
        }
        fclose(f);
    }
    return v;
}

/*
 * The facts of the mock device as this kernel reports them, on a context
 * of its own: the page and THP sizes, GET_HW_INFO of a mock device, and what an
 * IOAS with a mock domain allows (aperture minus reserved regions, IOVA
 * alignment = the domain's smallest page).
 */
static void probe(const char *seq)
{
    struct iommu_ioas_alloc ia = { .size = sizeof(ia) };
    struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN };
    struct iommu_test_hw_info data = { 0 };
    struct iommu_hw_info hi = { .size = sizeof(hi) };
    struct iommu_ioas_iova_ranges r;
    struct iommu_iova_range ranges[MAX_RANGES];
    int fd = open_ctx(), rc;
    const char *step = "IOAS_ALLOC";
    uint32_t i;

    if (fd < 0) {
        say("%s e %x /dev/iommu\n", seq, errno);
        return;
    }
    rc = do_ioctl(fd, IOMMU_IOAS_ALLOC, &ia);
    if (!rc) {
        step = "IOMMU_TEST_OP_MOCK_DOMAIN";
        md.id = ia.out_ioas_id;
        rc = test_cmd(fd, &md);
    }
    if (!rc) {
        step = "IOMMU_GET_HW_INFO";
        hi.dev_id = md.mock_domain.out_idev_id;
        hi.data_len = sizeof(data);
        hi.data_uptr = (uintptr_t)&data;
        rc = do_ioctl(fd, IOMMU_GET_HW_INFO, &hi);
    }
    if (!rc) {
        step = "IOMMU_IOAS_IOVA_RANGES";
        rc = iova_ranges(fd, ia.out_ioas_id, MAX_RANGES, &r, ranges);
    }
    close(fd);
    if (rc && !strcmp(step, "IOMMU_TEST_OP_MOCK_DOMAIN")) {
        /* no mock device on this kernel: its errno, and no device facts */
        fprintf(stderr, "iommufd-conformance: probe: %s: %s\n", step, strerror(-rc));
        say("%s ok %lx %lx %x 0 0 0 0 0\n", seq, sysconf(_SC_PAGESIZE), hpage_size(), -rc);
        return;
    }
    if (rc) {
        fprintf(stderr, "iommufd-conformance: probe: %s: %s\n", step, strerror(-rc));
        say("%s e %x probe\n", seq, -rc);
        return;
    }
    say("%s ok %lx %lx 0 %x %x %llx %llx %x", seq, sysconf(_SC_PAGESIZE), hpage_size(),
        hi.out_data_type, data.test_reg, (unsigned long long)hi.out_capabilities,
        (unsigned long long)r.out_iova_alignment, r.num_iovas);
    for (i = 0; i < r.num_iovas; i++) {
        say(" %llx %llx", (unsigned long long)ranges[i].start,
            (unsigned long long)ranges[i].last);
    }
    say("\n");
}

#define NUM(i) strtoull(argv[i], NULL, 16)

/* One request; argv[0] is the sequence number, argv[1] the operation. */
static void run(int argc, char **argv)
{
    const char *seq = argv[0], *op = argv[1];
    int rc = 0;

#define NEED(n)                                                      \
    do {                                                             \
        if (argc != (n) + 2) {                                       \
            say("%s bad %s takes %d arguments\n", seq, op, (n));     \
            return;                                                  \
        }                                                            \
    } while (0)
#define ANSWER(fmt, ...)                                             \
    do {                                                             \
        if (rc) {                                                    \
            say("%s e %x\n", seq, -rc);                              \
        } else {                                                     \
            say("%s ok" fmt "\n", seq, ##__VA_ARGS__);               \
        }                                                            \
    } while (0)

    if (!strcmp(op, "S")) {               /* a new context */
        NEED(0);
        if (ictx >= 0) {
            close(ictx);
        }
        ictx = open_ctx();
        rc = ictx < 0 ? -errno : 0;
        ANSWER("");
    } else if (!strcmp(op, "P")) {
        NEED(0);
        probe(seq);
    } else if (ictx < 0) {
        say("%s bad no context: send S first\n", seq);
    } else if (!strcmp(op, "ia")) {       /* IOMMU_IOAS_ALLOC FLAGS */
        struct iommu_ioas_alloc c = { .size = sizeof(c) };
        NEED(1);
        c.flags = NUM(2);
        rc = do_ioctl(ictx, IOMMU_IOAS_ALLOC, &c);
        ANSWER(" %x", c.out_ioas_id);
    } else if (!strcmp(op, "d")) {        /* IOMMU_DESTROY ID */
        struct iommu_destroy c = { .size = sizeof(c) };
        NEED(1);
        c.id = NUM(2);
        rc = do_ioctl(ictx, IOMMU_DESTROY, &c);
        ANSWER("");
    } else if (!strcmp(op, "m")) {        /* IOMMU_IOAS_MAP IOAS FLAGS IOVA SRC LEN */
        struct iommu_ioas_map c = { .size = sizeof(c) };
        uint64_t src;
        NEED(5);
        if (parse_src(argv[5], &src)) {
            say("%s bad source %s\n", seq, argv[5]);
            return;
        }
        c.ioas_id = NUM(2);
        c.flags = NUM(3);
        c.iova = NUM(4);
        c.user_va = src;
        c.length = NUM(6);
        rc = do_ioctl(ictx, IOMMU_IOAS_MAP, &c);
        ANSWER(" %llx", (unsigned long long)c.iova);
    } else if (!strcmp(op, "u")) {        /* IOMMU_IOAS_UNMAP IOAS IOVA LEN */
        struct iommu_ioas_unmap c = { .size = sizeof(c) };
        NEED(3);
        c.ioas_id = NUM(2);
        c.iova = NUM(3);
        c.length = NUM(4);
        rc = do_ioctl(ictx, IOMMU_IOAS_UNMAP, &c);
        ANSWER(" %llx", (unsigned long long)c.length);
    } else if (!strcmp(op, "c")) {  /* IOAS_COPY DST FLAGS DIOVA SRC SIOVA LEN */
        struct iommu_ioas_copy c = { .size = sizeof(c) };
        NEED(6);
        c.dst_ioas_id = NUM(2);
        c.flags = NUM(3);
        c.dst_iova = NUM(4);
        c.src_ioas_id = NUM(5);
        c.src_iova = NUM(6);
        c.length = NUM(7);
        rc = do_ioctl(ictx, IOMMU_IOAS_COPY, &c);
        ANSWER(" %llx", (unsigned long long)c.dst_iova);
    } else if (!strcmp(op, "r")) {        /* IOMMU_IOAS_IOVA_RANGES IOAS NUM */
        struct iommu_ioas_iova_ranges c;
        struct iommu_iova_range ranges[MAX_RANGES];
        uint32_t num = NUM(3), i;
        NEED(2);
        if (num > MAX_RANGES) {
            say("%s bad at most %d ranges\n", seq, MAX_RANGES);
            return;
        }
        rc = iova_ranges(ictx, NUM(2), num, &c, ranges);
        if (rc == -EMSGSIZE) {
            say("%s e %x %x\n", seq, EMSGSIZE, c.num_iovas);
            return;
        }
        if (rc) {
            ANSWER("");
            return;
        }
        say("%s ok %llx %x", seq, (unsigned long long)c.out_iova_alignment, c.num_iovas);
        for (i = 0; i < c.num_iovas; i++) {
            say(" %llx %llx", (unsigned long long)ranges[i].start,
                (unsigned long long)ranges[i].last);
        }
        say("\n");
    } else if (!strcmp(op, "a")) {  /* IOAS_ALLOW_IOVAS IOAS N START LAST... */
        struct iommu_ioas_allow_iovas c = { .size = sizeof(c) };
        struct iommu_iova_range ranges[MAX_RANGES];
        uint32_t n = argc > 3 ? NUM(3) : 0, i;
        if (n > MAX_RANGES || argc != 4 + 2 * (int)n) {
            say("%s bad a takes IOAS N and N ranges (N <= %d)\n", seq, MAX_RANGES);
            return;
        }
        for (i = 0; i < n; i++) {
            ranges[i].start = NUM(4 + 2 * i);
            ranges[i].last = NUM(5 + 2 * i);
        }
        c.ioas_id = NUM(2);
        c.num_iovas = n;
        c.allowed_iovas = (uintptr_t)ranges;
        rc = do_ioctl(ictx, IOMMU_IOAS_ALLOW_IOVAS, &c);
        ANSWER("");
    } else if (!strcmp(op, "o")) {        /* IOMMU_OPTION OPTION OP OBJECT VAL64 */
        struct iommu_option c = { .size = sizeof(c) };
        NEED(4);
        c.option_id = NUM(2);
        c.op = NUM(3);
        c.object_id = NUM(4);
        c.val64 = NUM(5);
        rc = do_ioctl(ictx, IOMMU_OPTION, &c);
        ANSWER(" %llx", (unsigned long long)c.val64);
    } else if (!strcmp(op, "h")) {  /* HWPT_ALLOC DEV PT FLAGS TYPE LEN IOTLB */
        struct iommu_hwpt_alloc c = { .size = sizeof(c) };
        struct iommu_hwpt_selftest data[2] = { 0 };
        NEED(6);
        c.dev_id = NUM(2);
        c.pt_id = NUM(3);
        c.flags = NUM(4);
        c.data_type = NUM(5);
        c.data_len = NUM(6);
        if (c.data_len > sizeof(data)) {
            say("%s bad data_len at most %zx\n", seq, sizeof(data));
            return;
        }
        data[0].iotlb = NUM(7);
        c.data_uptr = c.data_len ? (uintptr_t)data : 0;
        rc = do_ioctl(ictx, IOMMU_HWPT_ALLOC, &c);
        ANSWER(" %x", c.out_hwpt_id);
    } else if (!strcmp(op, "md")) {       /* IOMMU_TEST_OP_MOCK_DOMAIN PT */
        struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MOCK_DOMAIN };
        NEED(1);
        c.id = NUM(2);
        rc = test_cmd(ictx, &c);
        ANSWER(" %x %x %x", c.mock_domain.out_stdev_id, c.mock_domain.out_hwpt_id,
               c.mock_domain.out_idev_id);
    } else if (!strcmp(op, "mr")) {       /* IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE STDEV PT */
        struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE };
        NEED(2);
        c.id = NUM(2);
        c.mock_domain_replace.pt_id = NUM(3);
        rc = test_cmd(ictx, &c);
        ANSWER(" %x", c.mock_domain_replace.pt_id);
    } else if (!strcmp(op, "gi")) {       /* IOMMU_GET_HW_INFO DEV */
        struct iommu_hw_info c = { .size = sizeof(c) };
        struct iommu_test_hw_info data = { 0 };
        NEED(1);
        c.dev_id = NUM(2);
        c.data_len = sizeof(data);
        c.data_uptr = (uintptr_t)&data;
        rc = do_ioctl(ictx, IOMMU_GET_HW_INFO, &c);
        ANSWER(" %x", c.out_data_type);
    } else {
        say("%s bad unknown operation %s\n", seq, op);
    }
}

/* The buffers at their fixed addresses, written so that every page exists. */
static int map_buffers(void)
{
    int i;

    for (i = 0; i < NBUF; i++) {
        void *want = (void *)(uintptr_t)(BUF_BASE + i * BUF_STRIDE);
        void *p = mmap(want, BUF_SIZE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (p != want) {
            fprintf(stderr, "iommufd-conformance: buffer %d at %p: %s\n", i, want,
                    strerror(errno));
            return -1;
        }
        memset(p, 0x5a + i, BUF_SIZE);
    }
    return 0;
}

int main(int argc, char **argv)
{
    static char line[8192];
    struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };
    size_t have = 0;

    if (argc != 2) {
        fprintf(stderr, "usage: iommufd-conformance CHANNEL (a tty, or - for stdio)\n");
        return 2;
    }
    if (!strcmp(argv[1], "-")) {
        in_fd = 0;
        out_fd = 1;
    } else {
        in_fd = out_fd = open(argv[1], O_RDWR | O_NOCTTY);
        if (in_fd < 0) {
            fprintf(stderr, "iommufd-conformance: %s: %s\n", argv[1], strerror(errno));
            return 2;
        }
    }
    if (isatty(in_fd)) {
        /* raw, no echo: the channel carries only requests and answers */
        struct termios t;

        if (!tcgetattr(in_fd, &t)) {
            cfmakeraw(&t);
            tcsetattr(in_fd, TCSANOW, &t);
        }
    }
    setrlimit(RLIMIT_MEMLOCK, &unlimited);
    if (map_buffers()) {
        return 2;
    }
    say("hello %d %lx %x %llx %llx %llx\n", PROTO_VERSION, sysconf(_SC_PAGESIZE), NBUF,
        (unsigned long long)BUF_SIZE, (unsigned long long)BUF_BASE,
        (unsigned long long)BUF_STRIDE);
    flush_out();
    for (;;) {
        char *nl, *args[MAX_ARGS], *tok, *save;
        ssize_t n;
        int nargs = 0;

        nl = memchr(line, '\n', have);
        if (!nl) {
            if (have == sizeof(line)) {
                say("- bad line longer than %zu bytes\n", sizeof(line));
                flush_out();
                return 2;
            }
            flush_out();    /* answers go out before we wait for more */
            n = read(in_fd, line + have, sizeof(line) - have);
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                return 0;
            }
            have += n;
            continue;
        }
        *nl = 0;
        for (tok = strtok_r(line, " \r", &save); tok && nargs < MAX_ARGS;
             tok = strtok_r(NULL, " \r", &save)) {
            args[nargs++] = tok;
        }
        if (nargs == 2 && !strcmp(args[1], "q")) {
            say("%s ok\n", args[0]);
            flush_out();
            return 0;
        }
        if (nargs >= 2) {
            run(nargs, args);
        } else if (nargs == 1) {
            say("%s bad no operation\n", args[0]);
        }
        have -= nl + 1 - line;
        memmove(line, nl + 1, have);
    }
}

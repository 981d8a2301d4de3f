/*
 * Microbenchmark of the translation core: bench-core MODE N
 *
 *   hit     IOTLB hit (16 hot pages of a stage-2 domain)
 *   s2walk  stage-2 walk, 4 levels to a 4 KiB page (IOTLB bypassed)
 *   nested  nested 4+4 walk: 4 stage-1 levels, each table and the output
 *           translated by a 4-level stage-2 walk (IOTLB bypassed)
 *
 * Prints ns per translation and translations per second.  Run it under
 * callgrind with two values of N to get instructions per translation
 * (scripts/bench-core.sh does).
 *
 * Control operations, N calls each (run under callgrind with
 * --collect-atstart=no --toggle-collect=il_domain_unmap, or
 * il_invalidate_domain for inv-*, so only the operation is counted):
 *
 *   unmap-empty  unmap of one 4 KiB range, the IOTLB empty
 *   unmap-full   the same, the IOTLB full of another domain's entries
 *   unmap-own1   the same, plus one entry of the domain (the unmapped page)
 *   batch512     one unmap of 512 scattered 4 KiB ranges, the IOTLB full of
 *                another domain's entries and of the 512 pages' own
 *   inv-domain   invalidate a domain with 16 entries, the rest of the IOTLB
 *                full of another domain's
 *   inv-empty    invalidate a domain with no entry, the IOTLB full of
 *                another domain's
 */
#include <string.h>
#include <time.h>
#include "check.h"
#include "il-engine.h"

#define MEM_SIZE (4 << 20)
static uint8_t mem[MEM_SIZE];

static bool mem_read(void *opaque, uint64_t addr, void *buf, size_t len)
{
    (void)opaque;
    if (addr >= MEM_SIZE || len > MEM_SIZE - addr) {
        return false;
    }
    memcpy(buf, &mem[addr], len);
    return true;
}

static void s1_set(uint64_t pa, uint64_t val)
{
    for (int i = 0; i < 8; i++) {
        mem[pa + i] = val >> (8 * i);
    }
}

/* Map n pages of domain id, every other page (no merging, 4 KiB leaves). */
static void map_scattered(ILEngine *e, uint32_t id, uint64_t n)
{
    ILMapping m[512];
    size_t bad;

    for (uint64_t i = 0; i < n; i += 512) {
        size_t k = n - i < 512 ? n - i : 512;

        for (size_t j = 0; j < k; j++) {
            m[j] = (ILMapping) { .iova = (i + j) * 8192, .size = 4096,
                                 .addr = (i + j) * 8192, .perm = IL_PERM_RW };
        }
        CHECK_EQ(il_domain_map(e, id, m, k, &bad), IL_OK);
    }
}

/* Fill every IOTLB slot with entries of domain id (16384 pages). */
static void fill_others(ILEngine *e, uint32_t id)
{
    ILDomain *d = il_domain_find(e, id);
    /* 4 KiB leaves: the output is not 2 MiB aligned */
    ILMapping m = { .iova = 0, .size = 16384 * 4096, .addr = 4096,
                    .perm = IL_PERM_RW };
    ILResult r;
    size_t bad;

    CHECK_EQ(il_domain_map(e, id, &m, 1, &bad), IL_OK);
    for (uint64_t i = 0; i < 16384; i++) {
        CHECK(il_translate(e, IL_MODE_DOMAIN, d, 2, i * 4096,
                           IL_ACCESS_READ, 0, &r, NULL));
    }
}

static int bench_control(const char *mode, uint64_t n)
{
    bool batch = !strcmp(mode, "batch512");
    bool inv = !strncmp(mode, "inv-", 4);
    uint64_t pages = batch ? n * 512 : inv ? 16 : n;
    uint64_t done = 0, bytes;
    ILMapping m[512];
    ILEngine e;
    ILDomain *d;
    ILResult r;
    size_t bad;

    if (strcmp(mode, "unmap-empty") && strcmp(mode, "unmap-full") &&
        strcmp(mode, "unmap-own1") && !batch && strcmp(mode, "inv-domain") &&
        strcmp(mode, "inv-empty")) {
        fprintf(stderr, "usage: bench-core hit|s2walk|nested|unmap-empty|"
                "unmap-full|unmap-own1|batch512|inv-domain|inv-empty [N]\n");
        return 2;
    }
    CHECK_EQ(il_engine_init(&e, 4096, 64, mem_read, NULL), IL_OK);
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 48), IL_OK);
    CHECK_EQ(il_domain_alloc_paging(&e, 2, 48), IL_OK);
    d = il_domain_find(&e, 1);
    map_scattered(&e, 1, pages);
    if (strcmp(mode, "unmap-empty")) {
        fill_others(&e, 2);
    }
    printf("%s: %" PRIu64 " calls, IOTLB %u/%u valid at start\n", mode, n,
           il_iotlb_valid(&e), il_iotlb_size(&e));
    for (uint64_t i = 0; i < n; i++) {
        size_t k = batch ? 512 : 1;

        for (size_t j = 0; j < k; j++) {
            uint64_t page = batch ? i * 512 + j : i;

            m[j] = (ILMapping) { .iova = page * 8192, .size = 4096 };
            if (batch || !strcmp(mode, "unmap-own1")) {
                CHECK(il_translate(&e, IL_MODE_DOMAIN, d, 1, page * 8192,
                                   IL_ACCESS_READ, 0, &r, NULL));
            }
        }
        if (inv) {
            if (!strcmp(mode, "inv-domain")) {
                for (uint64_t p = 0; p < 16; p++) {
                    CHECK(il_translate(&e, IL_MODE_DOMAIN, d, 1, p * 8192,
                                       IL_ACCESS_READ, 0, &r, NULL));
                }
            }
            il_invalidate_domain(&e, d);
            continue;
        }
        CHECK_EQ(il_domain_unmap(&e, 1, m, k, &bad, &bytes), IL_OK);
        CHECK_EQ(bytes, k * 4096);
        done += bytes;
    }
    printf("%s: %" PRIu64 " bytes unmapped, IOTLB %u valid at the end\n",
           mode, done, il_iotlb_valid(&e));
    il_engine_destroy(&e);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "hit";
    uint64_t n = argc > 2 ? strtoull(argv[2], NULL, 0) : 10000000;
    const uint64_t base = 0x7f1234560000ULL;
    unsigned flags = IL_TR_NOCACHE;
    volatile uint64_t sink = 0; /* the results are used: no dead loop */
    struct timespec t0, t1;
    ILEngine e;
    ILDomain *d;
    ILResult r;
    size_t bad;
    double ns;

    if (strcmp(mode, "hit") && strcmp(mode, "s2walk") &&
        strcmp(mode, "nested")) {
        return bench_control(mode, n);
    }
    il_engine_init(&e, 4096, 64, mem_read, NULL);
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 48), IL_OK);
    /* 4 KiB stage-2 pages only: the longest walks */
    for (uint64_t i = 0; i < MEM_SIZE / 4096; i++) {
        ILMapping m = { .iova = i * 4096, .size = 4096,
                        .addr = i * 4096, .perm = IL_PERM_RW };
        CHECK_EQ(il_domain_map(&e, 1, &m, 1, &bad), IL_OK);
    }
    for (uint64_t i = 0; i < 16; i++) {
        ILMapping m = { .iova = base + i * 4096, .size = 4096,
                        .addr = 0x100000 + i * 4096, .perm = IL_PERM_RW };
        CHECK_EQ(il_domain_map(&e, 1, &m, 1, &bad), IL_OK);
    }
    d = il_domain_find(&e, 1);
    if (!strcmp(mode, "hit")) {
        flags = 0;
    } else if (!strcmp(mode, "nested")) {
        /* tables at 0x10000 (L4) .. 0x13000 (L1), leaves 16 pages */
        uint64_t rw = IL_S1_P | IL_S1_R | IL_S1_W;

        s1_set(0x10000 + 8 * ((base >> 39) & 511), 0x11000 | rw);
        s1_set(0x11000 + 8 * ((base >> 30) & 511), 0x12000 | rw);
        s1_set(0x12000 + 8 * ((base >> 21) & 511), 0x13000 | rw);
        for (uint64_t i = 0; i < 16; i++) {
            s1_set(0x13000 + 8 * (((base >> 12) + i) & 511),
                   (0x200000 + i * 4096) | rw);
        }
        CHECK_EQ(il_domain_alloc_nested(&e, 2, 1, 0x10000), IL_OK);
        d = il_domain_find(&e, 2);
    }
    /* warm up (fills the IOTLB for hit) and check the result */
    for (uint64_t i = 0; i < 16; i++) {
        CHECK(il_translate(&e, IL_MODE_DOMAIN, d, 1, base + i * 4096 + 8,
                           IL_ACCESS_READ, flags, &r, NULL));
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t i = 0; i < n; i++) {
        il_translate(&e, IL_MODE_DOMAIN, d, 1, base + ((i & 15) << 12),
                     IL_ACCESS_READ, flags, &r, NULL);
        sink += r.addr;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ns = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n;
    printf("%s: %" PRIu64 " translations, %.1f ns each, %.2f M/s "
           "(hits %" PRIu64 ", walks %" PRIu64 ")\n", mode, n, ns, 1e3 / ns,
           e.c.hits, e.c.walks);
    il_engine_destroy(&e);
    return sink == 1;
}

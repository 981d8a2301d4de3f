/*
 * Unit test: the engine (domains, nested walks through a fake guest memory,
 * the IOTLB with stale-before/fresh-after invalidation, faults).
 */
#include <string.h>
#include "check.h"
#include "il-engine.h"
#include "il-alloc.h"

#define MiB (1024 * 1024ULL)
#define MEM_SIZE (16 * MiB)
#define IPA_BASE (8 * MiB)      /* stage 2 maps IPA x to PA x + IPA_BASE */

static uint8_t mem[MEM_SIZE];
static unsigned reads;

static bool mem_read(void *opaque, uint64_t addr, void *buf, size_t len)
{
    (void)opaque;
    reads++;
    if (addr >= MEM_SIZE || len > MEM_SIZE - addr) {
        return false;
    }
    memcpy(buf, &mem[addr], len);
    return true;
}

/* Write a stage-1 entry at IPA table + 8 * index (little-endian). */
static void s1_set(uint64_t table_ipa, unsigned index, uint64_t val)
{
    uint8_t *p = &mem[IPA_BASE + table_ipa + 8 * index];

    for (int i = 0; i < 8; i++) {
        p[i] = val >> (8 * i);
    }
}

static unsigned idx(uint64_t iova, unsigned level)
{
    return (iova >> (12 + 9 * (level - 1))) & 511;
}

static bool tr(ILEngine *e, const ILDomain *d, uint64_t iova, unsigned acc,
               ILResult *r)
{
    return il_translate(e, IL_MODE_DOMAIN, d, 7, iova, acc, 0, r, NULL);
}

static void test_paging(void)
{
    ILEngine e;
    ILMapping m = { .iova = 0x100000, .size = 0x3000, .addr = 0x500000,
                    .perm = IL_PERM_R };
    ILDomain *d;
    ILResult r;
    size_t bad;
    uint64_t bytes;
    bool rec;

    il_engine_init(&e, 64, 4, mem_read, NULL);
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 48), IL_OK);
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 48), IL_ERR_EXISTS);
    CHECK_EQ(il_domain_alloc_paging(&e, 2, 64), IL_ERR_INVAL);
    d = il_domain_find(&e, 1);
    CHECK(d);
    CHECK_EQ(il_domain_map(&e, 1, &m, 1, &bad), IL_OK);
    CHECK_EQ(il_domain_map(&e, 9, &m, 1, &bad), IL_ERR_NOENT);

    CHECK(tr(&e, d, 0x101234, IL_ACCESS_READ, &r));
    CHECK_EQ(r.addr, 0x501234);
    CHECK_EQ(e.c.misses, 1);
    CHECK(tr(&e, d, 0x101238, IL_ACCESS_READ, &r));
    CHECK_EQ(r.addr, 0x501238);
    CHECK_EQ(e.c.hits, 1);
    CHECK_EQ(e.tlb_valid, 1);
    /* permission fault: write to a read-only mapping, even on a hit page */
    CHECK(!il_translate(&e, IL_MODE_DOMAIN, d, 7, 0x101000, IL_ACCESS_WRITE,
                        0, &r, &rec));
    CHECK(rec);
    CHECK_EQ(r.stage, IL_STAGE_2);
    CHECK_EQ(r.reason, IL_REASON_PERMISSION);
    CHECK_EQ(il_faults_count(&e), 1);
    CHECK_EQ(il_faults_get(&e, 0)->iova, 0x101000);
    CHECK_EQ(il_faults_get(&e, 0)->dev, 7);
    CHECK_EQ(il_faults_get(&e, 0)->domain, 1);
    CHECK_EQ(il_faults_get(&e, 0)->access, IL_ACCESS_WRITE);

    /* unmap invalidates before returning: the cached page faults now */
    m.size = 0x1000;
    m.iova = 0x101000;
    CHECK_EQ(il_domain_unmap(&e, 1, &m, 1, &bad, &bytes), IL_OK);
    CHECK_EQ(bytes, 0x1000);
    CHECK_EQ(e.tlb_valid, 0);
    CHECK(!tr(&e, d, 0x101238, IL_ACCESS_READ, &r));
    CHECK_EQ(r.reason, IL_REASON_NOT_PRESENT);
    CHECK(tr(&e, d, 0x102000, IL_ACCESS_READ, &r));

    /* debug translation: no IOTLB, no counters, no queue */
    ILCounters before = e.c;
    uint32_t valid = e.tlb_valid;
    CHECK(il_translate(&e, IL_MODE_DOMAIN, d, 7, 0x100000, IL_ACCESS_READ,
                       IL_TR_DEBUG, &r, NULL));
    CHECK(!il_translate(&e, IL_MODE_DOMAIN, d, 7, 0x900000, IL_ACCESS_READ,
                        IL_TR_DEBUG, &r, &rec));
    CHECK(!rec);
    CHECK(memcmp(&before, &e.c, sizeof(before)) == 0);
    CHECK_EQ(e.tlb_valid, valid);

    /* blocked, bypass, queue overflow, probes */
    CHECK(il_translate(&e, IL_MODE_BYPASS, NULL, 3, 0x1234, IL_ACCESS_WRITE,
                       0, &r, NULL));
    CHECK_EQ(r.addr, 0x1234);
    for (int i = 0; i < 5; i++) {
        CHECK(!il_translate(&e, IL_MODE_BLOCKED, NULL, 3, 0x1000 * i,
                            IL_ACCESS_READ, 0, &r, NULL));
        CHECK_EQ(r.stage, IL_STAGE_DEVICE);
        CHECK_EQ(r.reason, IL_REASON_BLOCKED);
    }
    CHECK_EQ(il_faults_count(&e), 4);
    CHECK_EQ(il_faults_dropped(&e), 3);
    CHECK_EQ(e.c.faults_dropped, 3);
    CHECK_EQ(e.c.faults, 7);
    CHECK(il_faults_get(&e, 1)->has_domain);
    CHECK(!il_faults_get(&e, 3)->has_domain);
    CHECK(!il_translate(&e, IL_MODE_BLOCKED, NULL, 3, 0, 0, 0, &r, &rec));
    CHECK(!rec);
    CHECK_EQ(e.c.faults, 7);
    il_faults_clear(&e);
    CHECK_EQ(il_faults_count(&e), 0);
    CHECK_EQ(il_faults_dropped(&e), 0);

    /* repeats of one fault (same page and cause) are coalesced */
    for (int i = 0; i < 3; i++) {
        CHECK(!il_translate(&e, IL_MODE_BLOCKED, NULL, 3, 0x7000 + 8 * i,
                            IL_ACCESS_READ, 0, &r, &rec));
        CHECK_EQ(rec, i == 0);
    }
    CHECK(!il_translate(&e, IL_MODE_BLOCKED, NULL, 3, 0x7010,
                        IL_ACCESS_WRITE, 0, &r, &rec));
    CHECK(rec);
    CHECK(!il_translate(&e, IL_MODE_BLOCKED, NULL, 3, 0x7000,
                        IL_ACCESS_READ, 0, &r, &rec));
    CHECK(rec);
    CHECK_EQ(il_faults_count(&e), 3);
    CHECK_EQ(e.c.faults, 10);
    il_faults_clear(&e);
    CHECK(!il_translate(&e, IL_MODE_BLOCKED, NULL, 3, 0x7000,
                        IL_ACCESS_READ, 0, &r, &rec));
    CHECK(rec);
    CHECK_EQ(il_faults_count(&e), 1);
    il_faults_clear(&e);

    /* busy domains */
    il_domain_ref(d);
    CHECK_EQ(il_domain_free(&e, 1), IL_ERR_BUSY);
    il_domain_unref(d);
    CHECK_EQ(il_domain_free(&e, 1), IL_OK);
    CHECK_EQ(il_domain_free(&e, 1), IL_ERR_NOENT);
    CHECK_EQ(e.tlb_valid, 0);
    il_engine_destroy(&e);
}

static void test_nested(void)
{
    ILEngine e;
    ILMapping s2m[2] = {
        { .iova = 0, .size = 6 * MiB, .addr = IPA_BASE, .perm = IL_PERM_RW },
        { .iova = 6 * MiB, .size = 2 * MiB, .addr = IPA_BASE + 6 * MiB,
          .perm = IL_PERM_R },
    };
    const uint64_t root = 0x1000, l3 = 0x2000, l2 = 0x3000, l1 = 0x4000;
    const uint64_t iova = 0x40201000ULL;    /* L4 0, L3 1, L2 1, L1 1 */
    const uint64_t rw = IL_S1_P | IL_S1_R | IL_S1_W;
    ILDomain *d, *p;
    ILResult r;
    size_t bad;
    uint64_t bytes;

    memset(mem, 0, sizeof(mem));
    il_engine_init(&e, 64, 16, mem_read, NULL);
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 48), IL_OK);
    CHECK_EQ(il_domain_map(&e, 1, s2m, 2, &bad), IL_OK);
    CHECK_EQ(il_domain_alloc_nested(&e, 2, 9, root), IL_ERR_NOENT);
    CHECK_EQ(il_domain_alloc_nested(&e, 2, 1, root + 8), IL_ERR_ALIGN);
    CHECK_EQ(il_domain_alloc_nested(&e, 2, 1, root), IL_OK);
    CHECK_EQ(il_domain_alloc_nested(&e, 3, 2, root), IL_ERR_TYPE);
    CHECK_EQ(il_domain_map(&e, 2, s2m, 1, &bad), IL_ERR_TYPE);
    d = il_domain_find(&e, 2);
    p = il_domain_find(&e, 1);
    CHECK_EQ(p->children, 1);
    CHECK_EQ(il_domain_free(&e, 1), IL_ERR_BUSY);

    /* empty root: stage-1 not present */
    CHECK(!tr(&e, d, iova, IL_ACCESS_READ, &r));
    CHECK_EQ(r.stage, IL_STAGE_1);
    CHECK_EQ(r.reason, IL_REASON_NOT_PRESENT);

    s1_set(root, idx(iova, 4), l3 | rw);
    s1_set(l3, idx(iova, 3), l2 | rw);
    s1_set(l2, idx(iova, 2), l1 | IL_S1_P | IL_S1_R);   /* read-only below */
    s1_set(l1, idx(iova, 1), 0x200000 | rw);
    /* the IOTLB holds no fault: a new walk sees the tables */
    reads = 0;
    CHECK(tr(&e, d, iova + 0x10, IL_ACCESS_READ, &r));
    CHECK_EQ(reads, 4);
    CHECK_EQ(r.addr, IPA_BASE + 0x200010);
    CHECK_EQ(r.perm, IL_PERM_R);
    CHECK_EQ(r.shift, 12);
    CHECK(!tr(&e, d, iova, IL_ACCESS_WRITE, &r));
    CHECK_EQ(r.stage, IL_STAGE_1);
    CHECK_EQ(r.reason, IL_REASON_PERMISSION);

    /* stale before invalidation, fresh after */
    s1_set(l1, idx(iova, 1), 0x300000 | rw);
    reads = 0;
    CHECK(tr(&e, d, iova, IL_ACCESS_READ, &r));
    CHECK_EQ(r.addr, IPA_BASE + 0x200000);
    CHECK_EQ(reads, 0);
    il_invalidate_range(&e, d, iova + 0x1000, 0x1000);   /* other page */
    CHECK(tr(&e, d, iova, IL_ACCESS_READ, &r));
    CHECK_EQ(r.addr, IPA_BASE + 0x200000);
    il_invalidate_range(&e, d, iova, 0x1000);
    CHECK(tr(&e, d, iova, IL_ACCESS_READ, &r));
    CHECK_EQ(r.addr, IPA_BASE + 0x300000);

    /* a 2 MiB stage-1 leaf; output in the read-only stage-2 range */
    s1_set(l3, idx(iova, 3), l2 | rw);
    s1_set(l2, idx(iova, 2), 0x600000 | rw | IL_S1_PS);
    il_invalidate_domain(&e, d);
    CHECK(tr(&e, d, iova + 0x123, IL_ACCESS_READ, &r));
    CHECK_EQ(r.addr, IPA_BASE + 0x600000 + 0x1123);
    CHECK_EQ(r.shift, 21);
    CHECK_EQ(r.perm, IL_PERM_R);
    CHECK(!tr(&e, d, iova + 0x123, IL_ACCESS_WRITE, &r));
    CHECK_EQ(r.stage, IL_STAGE_2);
    CHECK_EQ(r.reason, IL_REASON_PERMISSION);
    /* misaligned block output and PS at level 4 are malformed */
    s1_set(l2, idx(iova, 2), 0x601000 | rw | IL_S1_PS);
    il_invalidate_all(&e);
    CHECK(!tr(&e, d, iova, IL_ACCESS_READ, &r));
    CHECK_EQ(r.reason, IL_REASON_WALK_ERROR);
    /* a stage-1 output outside stage 2 */
    s1_set(l2, idx(iova, 2), l1 | rw);
    s1_set(l1, idx(iova, 1), 0x900000 | rw);
    il_invalidate_all(&e);
    CHECK(!tr(&e, d, iova, IL_ACCESS_READ, &r));
    CHECK_EQ(r.stage, IL_STAGE_2);
    CHECK_EQ(r.reason, IL_REASON_NOT_PRESENT);
    /* a table pointer outside stage 2 */
    s1_set(l3, idx(iova, 3), 0x800000 | rw);
    il_invalidate_all(&e);
    CHECK(!tr(&e, d, iova, IL_ACCESS_READ, &r));
    CHECK_EQ(r.stage, IL_STAGE_2);
    CHECK_EQ(r.reason, IL_REASON_NOT_PRESENT);
    /* beyond 48 bits */
    CHECK(!tr(&e, d, 1ULL << 48, IL_ACCESS_READ, &r));
    CHECK_EQ(r.stage, IL_STAGE_1);
    CHECK_EQ(r.reason, IL_REASON_ADDRESS_SIZE);

    /* parent unmap drops the child's cached entries, whatever their iova */
    s1_set(l3, idx(iova, 3), l2 | rw);
    s1_set(l1, idx(iova, 1), 0x300000 | rw);
    il_invalidate_all(&e);
    CHECK(tr(&e, d, iova, IL_ACCESS_READ, &r));
    CHECK_EQ(e.tlb_valid, 1);
    ILMapping um = { .iova = 0x300000, .size = 0x1000 };
    CHECK_EQ(il_domain_unmap(&e, 1, &um, 1, &bad, &bytes), IL_OK);
    CHECK_EQ(bytes, 0x1000);
    CHECK_EQ(e.tlb_valid, 0);
    CHECK(!tr(&e, d, iova, IL_ACCESS_READ, &r));
    CHECK_EQ(r.stage, IL_STAGE_2);

    CHECK_EQ(il_domain_free(&e, 2), IL_OK);
    CHECK_EQ(p->children, 0);
    CHECK_EQ(il_domain_free(&e, 1), IL_OK);
    il_engine_destroy(&e);
}

/* The domain limit: the next alloc fails clearly, a free makes room again. */
static void test_domain_limit(void)
{
    ILEngine e;

    il_engine_init(&e, 64, 4, mem_read, NULL);
    for (uint32_t id = 1; id <= IL_MAX_DOMAINS; id++) {
        CHECK_EQ(il_domain_alloc_paging(&e, id, 39), IL_OK);
    }
    CHECK_EQ(il_domain_alloc_paging(&e, 0, 39), IL_ERR_NOSPC);
    CHECK_EQ(il_domain_alloc_nested(&e, 0, 1, 0), IL_ERR_NOSPC);
    CHECK(il_domain_find(&e, 0) == NULL);
    CHECK_EQ(il_domain_free(&e, 7), IL_OK);
    CHECK_EQ(il_domain_alloc_nested(&e, 0, 1, 0), IL_OK);
    il_engine_destroy(&e);
}

/* Tables of all paging domains, as the engine counts them. */
static uint64_t sum_tables(const ILEngine *e)
{
    uint64_t n = 0;

    for (size_t i = 0; i < il_domain_count(e); i++) {
        const ILDomain *d = il_domain_at(e, i);

        n += il_domain_type(d) == IL_DOMAIN_PAGING ? d->s2.tables : 0;
    }
    CHECK_EQ(n, il_engine_tables(e));
    CHECK_EQ(n * 4096, il_engine_table_bytes(e));
    return n;
}

/* The engine-wide page-table limit, shared by all paging domains. */
static void test_table_limit(void)
{
    ILMapping page0 = { .iova = 0, .size = 0x1000, .addr = 0x1000,
                        .perm = IL_PERM_RW };
    ILMapping far = { .iova = 1ULL << 39, .size = 0x1000, .addr = 0x2000,
                      .perm = IL_PERM_RW };
    ILMapping two[2] = { page0, far };
    ILMapping gib = { .iova = 1ULL << 30, .size = 1ULL << 30,
                      .addr = 1ULL << 30, .perm = IL_PERM_RW };
    ILMapping blk = { .iova = 1ULL << 39, .size = 2 * MiB, .addr = 2 * MiB,
                      .perm = IL_PERM_R };
    ILMapping cut = { .iova = (1ULL << 30) + 2 * MiB + 0x1000,
                      .size = 0x1000 };
    ILDomain *d1, *d3;
    ILEngine e;
    ILResult r;
    size_t bad;
    uint64_t bytes;

    CHECK_EQ(il_engine_init(&e, 64, 4, mem_read, NULL), IL_OK);
    CHECK_EQ(il_engine_table_limit(&e), IL_ENGINE_TABLE_LIMIT_DEFAULT);
    CHECK_EQ(il_engine_set_table_limit(&e, 0), IL_ERR_INVAL);
    CHECK_EQ(il_engine_set_table_limit(&e, 4095), IL_ERR_INVAL);
    CHECK_EQ(il_engine_set_table_limit(&e, UINT64_MAX), IL_OK);
    CHECK_EQ(il_engine_table_limit(&e), UINT64_MAX);
    /* 12 tables, rounded down */
    CHECK_EQ(il_engine_set_table_limit(&e, 12 * 4096 + 4095), IL_OK);
    CHECK_EQ(il_engine_table_limit(&e), 12 * 4096);
    CHECK(strcmp(il_strerror(IL_ERR_LIMIT), il_strerror(IL_ERR_NOMEM)));
    CHECK(strstr(il_strerror(IL_ERR_LIMIT), "limit shared by all domains"));

    /* three domains, a 4 KiB page each (root + 3 tables at ias 48) */
    for (uint32_t id = 1; id <= 3; id++) {
        CHECK_EQ(il_domain_alloc_paging(&e, id, 48), IL_OK);
    }
    CHECK_EQ(il_domain_map(&e, 1, &page0, 1, &bad), IL_OK);
    CHECK_EQ(il_domain_map(&e, 2, &page0, 1, &bad), IL_OK);
    CHECK_EQ(sum_tables(&e), 9);
    d1 = il_domain_find(&e, 1);
    d3 = il_domain_find(&e, 3);
    /* 6 more tables do not fit: the batch is rolled back */
    CHECK_EQ(il_domain_map(&e, 3, two, 2, &bad), IL_ERR_LIMIT);
    CHECK_EQ(bad, 1);
    CHECK_EQ(d3->s2.tables, 1);
    CHECK_EQ(d3->s2.mapped, 0);
    CHECK_EQ(sum_tables(&e), 9);
    CHECK_EQ(il_domain_map(&e, 3, &page0, 1, &bad), IL_OK);
    CHECK_EQ(sum_tables(&e), 12);
    /* full: no new paging domain (its root), nested ones need no table */
    CHECK_EQ(il_domain_alloc_paging(&e, 4, 48), IL_ERR_LIMIT);
    CHECK(il_domain_find(&e, 4) == NULL);
    CHECK_EQ(il_domain_alloc_nested(&e, 5, 1, 0), IL_OK);
    CHECK_EQ(il_engine_set_table_limit(&e, 11 * 4096), IL_ERR_BUSY);
    CHECK_EQ(il_engine_table_limit(&e), 12 * 4096);
    /* the domain's own budget still answers for itself */
    d3->s2.max_tables = d3->s2.tables;
    CHECK_EQ(il_engine_set_table_limit(&e, 100 * 4096), IL_OK);
    CHECK_EQ(il_domain_map(&e, 3, &far, 1, &bad), IL_ERR_NOMEM);
    d3->s2.max_tables = IL_S2_MAX_TABLES;
    CHECK_EQ(il_engine_set_table_limit(&e, 12 * 4096), IL_OK);

    /* a block split that needs 2 tables when there are none */
    CHECK_EQ(il_domain_unmap(&e, 1, &page0, 1, &bad, &bytes), IL_OK);
    CHECK_EQ(sum_tables(&e), 9);
    CHECK_EQ(il_domain_map(&e, 1, &gib, 1, &bad), IL_OK);
    CHECK_EQ(il_domain_map(&e, 2, &blk, 1, &bad), IL_OK);
    CHECK_EQ(sum_tables(&e), 12);
    CHECK(tr(&e, d1, cut.iova, IL_ACCESS_WRITE, &r));
    CHECK_EQ(il_domain_unmap(&e, 1, &cut, 1, &bad, &bytes), IL_ERR_LIMIT);
    CHECK_EQ(bytes, 0);
    CHECK_EQ(d1->s2.mapped, 1ULL << 30);
    CHECK_EQ(sum_tables(&e), 12);
    CHECK(tr(&e, d1, cut.iova, IL_ACCESS_WRITE, &r));
    CHECK_EQ(r.shift, 30);
    CHECK_EQ(e.c.hits, 1);                  /* the entry was kept */
    /* freeing a domain gives its tables back to all */
    CHECK_EQ(il_domain_free(&e, 2), IL_OK);
    CHECK_EQ(sum_tables(&e), 6);
    CHECK_EQ(il_domain_unmap(&e, 1, &cut, 1, &bad, &bytes), IL_OK);
    CHECK_EQ(bytes, 0x1000);
    CHECK_EQ(sum_tables(&e), 8);
    CHECK(!tr(&e, d1, cut.iova, IL_ACCESS_READ, &r));
    CHECK(tr(&e, d1, cut.iova + 0x1000, IL_ACCESS_READ, &r));
    CHECK_EQ(r.shift, 12);
    CHECK_EQ(il_domain_alloc_paging(&e, 4, 48), IL_OK);
    CHECK_EQ(sum_tables(&e), 9);
    /* a reset frees every table; the limit stays */
    CHECK_EQ(il_domain_free(&e, 5), IL_OK);
    il_engine_reset(&e);
    CHECK_EQ(il_engine_tables(&e), 0);
    CHECK_EQ(il_engine_table_limit(&e), 12 * 4096);
    il_engine_destroy(&e);
}

typedef struct Seen {
    uint32_t dev[8];
    uint32_t dom[8];
    unsigned n;
} Seen;

static void seen_dev(void *opaque, uint32_t dev, const ILDomain *dom)
{
    Seen *s = opaque;

    CHECK(s->n < 8);
    s->dev[s->n] = dev;
    s->dom[s->n++] = il_domain_id(dom);
}

/* Seen devices, as a bitmap of ids below 32 (the order is not defined). */
static uint32_t seen_devs(const ILDomain *d, bool children)
{
    Seen s = { .n = 0 };
    uint32_t bits = 0;

    il_domain_for_each_dev(d, children, seen_dev, &s);
    for (unsigned i = 0; i < s.n; i++) {
        CHECK(s.dev[i] < 32 && !(bits & (1u << s.dev[i])));
        bits |= 1u << s.dev[i];
    }
    return bits;
}

/* Domains know their devices and their nested children. */
static void test_devices(void)
{
    ILEngine e;
    ILDomain *p, *n1, *n2, *c;
    unsigned nc = 0;

    CHECK_EQ(il_engine_init(&e, 64, 4, mem_read, NULL), IL_OK);
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 48), IL_OK);
    CHECK_EQ(il_domain_alloc_nested(&e, 2, 1, 0), IL_OK);
    CHECK_EQ(il_domain_alloc_nested(&e, 3, 1, 0x1000), IL_OK);
    p = il_domain_find(&e, 1);
    n1 = il_domain_find(&e, 2);
    n2 = il_domain_find(&e, 3);
    CHECK_EQ(il_domain_count(&e), 3);
    CHECK(il_domain_at(&e, 2) == n2);
    CHECK(il_domain_at(&e, 3) == NULL);
    CHECK(il_domain_parent(n1) == p);
    CHECK_EQ(il_domain_ias(n1), 48);
    CHECK_EQ(il_domain_s1_root(n2), 0x1000);
    for (c = il_domain_first_child(p); c; c = il_domain_next_child(c)) {
        CHECK(c == n1 || c == n2);
        nc++;
    }
    CHECK_EQ(nc, 2);
    CHECK_EQ(il_domain_children(p), 2);

    /* many devices: the list grows; sorted, no duplicates */
    for (uint32_t dev = 9; dev >= 4; dev--) {
        CHECK_EQ(il_domain_attach_dev(&e, p, dev), IL_OK);
    }
    CHECK_EQ(il_domain_attach_dev(&e, p, 5), IL_ERR_EXISTS);
    CHECK_EQ(il_domain_devices(p), 6);
    CHECK_EQ(seen_devs(p, false), 0x3f0);
    CHECK_EQ(il_domain_free(&e, 1), IL_ERR_BUSY);
    CHECK_EQ(il_dev_switch_domain(&e, 1, NULL, n1), IL_OK);
    CHECK_EQ(il_dev_switch_domain(&e, 9, p, n2), IL_OK);
    CHECK_EQ(il_dev_switch_domain(&e, 9, n2, n2), IL_OK);
    CHECK(il_domain_has_dev(n2, 9));
    CHECK(!il_domain_has_dev(p, 9));
    CHECK_EQ(seen_devs(p, false), 0x1f0);
    CHECK_EQ(seen_devs(p, true), 0x3f2);
    CHECK_EQ(seen_devs(n1, true), 0x2);
    il_domain_detach_dev(&e, p, 31);            /* not attached: no-op */
    CHECK_EQ(il_domain_devices(p), 5);
    for (uint32_t dev = 4; dev <= 8; dev++) {
        il_domain_detach_dev(&e, p, dev);
    }
    CHECK_EQ(seen_devs(p, false), 0);
    CHECK_EQ(il_domain_devices(p), 0);
    il_domain_detach_dev(&e, n1, 1);
    CHECK_EQ(il_domain_free(&e, 2), IL_OK);
    CHECK_EQ(il_domain_children(p), 1);
    CHECK(il_domain_first_child(p) == n2);
    CHECK(il_domain_next_child(n2) == NULL);
    CHECK_EQ(il_domain_free(&e, 3), IL_ERR_BUSY);
    il_domain_detach_dev(&e, n2, 9);
    CHECK_EQ(il_domain_free(&e, 3), IL_OK);
    CHECK(il_domain_first_child(p) == NULL);
    CHECK_EQ(il_domain_free(&e, 1), IL_OK);
    /* attachments kept by a domain are freed with the engine */
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 39), IL_OK);
    CHECK_EQ(il_domain_attach_dev(&e, il_domain_find(&e, 1), 3), IL_OK);
    il_domain_detach_dev(&e, il_domain_find(&e, 1), 3);
    il_engine_destroy(&e);
    CHECK_EQ(il_fail_nth_live(), 0);
}

/* The per-domain index of the IOTLB: counts, evictions, block entries. */
static void test_iotlb_index(void)
{
    ILMapping pg = { .iova = 0x1000, .size = 0x1000, .addr = 0x5000,
                     .perm = IL_PERM_RW };
    ILMapping blk = { .iova = 4 * MiB, .size = 2 * MiB, .addr = 2 * MiB,
                      .perm = IL_PERM_RW };
    ILMapping cut = { .iova = 5 * MiB, .size = 0x1000 };
    ILDomain *d1, *d2;
    ILEngine e;
    ILResult r;
    size_t bad;
    uint64_t bytes;

    /* one slot: every fill evicts the other domain's entry */
    CHECK_EQ(il_engine_init(&e, 1, 4, mem_read, NULL), IL_OK);
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 48), IL_OK);
    CHECK_EQ(il_domain_alloc_paging(&e, 2, 48), IL_OK);
    d1 = il_domain_find(&e, 1);
    d2 = il_domain_find(&e, 2);
    CHECK_EQ(il_domain_map(&e, 1, &pg, 1, &bad), IL_OK);
    CHECK_EQ(il_domain_map(&e, 2, &pg, 1, &bad), IL_OK);
    CHECK(tr(&e, d1, 0x1008, IL_ACCESS_READ, &r));
    CHECK_EQ(il_domain_iotlb_entries(d1), 1);
    CHECK(tr(&e, d2, 0x1008, IL_ACCESS_READ, &r));
    CHECK_EQ(il_domain_iotlb_entries(d1), 0);
    CHECK_EQ(il_domain_iotlb_entries(d2), 1);
    CHECK_EQ(il_iotlb_valid(&e), 1);
    CHECK(il_iotlb_check(&e));
    /* unmapping in d1 leaves d2's entry */
    CHECK_EQ(il_domain_unmap(&e, 1, &pg, 1, &bad, &bytes), IL_OK);
    CHECK_EQ(il_iotlb_valid(&e), 1);
    CHECK(tr(&e, d2, 0x1008, IL_ACCESS_READ, &r));
    CHECK_EQ(e.c.hits, 1);
    il_invalidate_domain(&e, d1);
    CHECK_EQ(il_domain_iotlb_entries(d2), 1);
    CHECK_EQ(il_domain_free(&e, 2), IL_OK);
    CHECK_EQ(il_iotlb_valid(&e), 0);
    CHECK(il_iotlb_check(&e));
    il_engine_destroy(&e);

    /*
     * A 2 MiB entry filed under its first page: cutting a page elsewhere in
     * the block drops it (the range is widened to the largest leaf cached).
     */
    CHECK_EQ(il_engine_init(&e, 64, 4, mem_read, NULL), IL_OK);
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 48), IL_OK);
    d1 = il_domain_find(&e, 1);
    CHECK_EQ(il_domain_map(&e, 1, &blk, 1, &bad), IL_OK);
    CHECK(tr(&e, d1, 4 * MiB + 8, IL_ACCESS_WRITE, &r));
    CHECK_EQ(r.shift, 21);
    CHECK_EQ(il_domain_iotlb_entries(d1), 1);
    CHECK_EQ(il_domain_unmap(&e, 1, &cut, 1, &bad, &bytes), IL_OK);
    CHECK_EQ(bytes, 0x1000);
    CHECK_EQ(il_domain_iotlb_entries(d1), 0);
    CHECK(tr(&e, d1, 4 * MiB + 8, IL_ACCESS_WRITE, &r));
    CHECK_EQ(r.shift, 12);
    CHECK(il_iotlb_check(&e));
    il_engine_destroy(&e);
}

int main(void)
{
    test_paging();
    test_nested();
    test_domain_limit();
    test_devices();
    test_iotlb_index();
    test_table_limit();
    printf("ok\n");
    return 0;
}

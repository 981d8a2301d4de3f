/*
 * Randomized test of the IOTLB's per-domain index (exact invalidation when
 * unmap and invalidate visit only the entries of the domain they name):
 * many paging domains and nested children share a small IOTLB, so fills
 * collide and evict other domains' entries; random batched maps and unmaps
 * (4 KiB pages and 2 MiB blocks, up to 64 ranges a batch), range, domain and
 * global invalidations, domains freed and their ids reused, translations.
 * After every operation: the index is consistent (il_iotlb_check), every
 * valid entry is what a fresh walk returns now, and translations agree with
 * a page-array model per paging domain (nested: a fixed stage 1 composed
 * with the parent's model).
 *
 * Seed: argv[1], else $IL_SEED, else a fixed default; always printed.
 * Operation count: argv[2] or $IL_OPS.
 */
#include <string.h>
#include "il-engine.h"

#define PG          IL_PAGE_SIZE
#define BLK         (2 * 1024 * 1024ULL)
#define NPAGING     12
#define NNESTED     6
#define NPAGES      4096u               /* model space of each paging domain */
#define BASE        (16 * 1024 * 1024ULL) /* IPA of model page 0 */
#define S1_ROOT     0x1000ULL           /* stage 1: 4 tables, IPA == PA */
#define S1_LEAVES   512u
#define IOVA_BASE   0x7f0000000000ULL
#define MEM         0x10000u

#define RW          (IL_S1_P | IL_S1_R | IL_S1_W)

#define TEST_MEM_SIZE MEM   /* the guest memory of test-util.h */
#include "test-util.h"

static uint64_t model_out[NPAGING][NPAGES];
static uint8_t model_perm[NPAGING][NPAGES];
static int nested_parent[NNESTED];      /* -1: not allocated */
static uint64_t evictions;              /* fills over another domain's entry */
static uint64_t dropped;                /* entries unmaps dropped */

/* Stage-1 leaf i maps IOVA_BASE + i pages to model page s1_page(i). */
static unsigned s1_page(unsigned i)
{
    return (i * 7 + 3) % NPAGES;
}

static void build_stage1(void)
{
    put(S1_ROOT + ((IOVA_BASE >> 39) & 511) * 8, 0x2000 | RW);
    put(0x2000 + ((IOVA_BASE >> 30) & 511) * 8, 0x3000 | RW);
    put(0x3000 + ((IOVA_BASE >> 21) & 511) * 8, 0x4000 | RW);
    for (unsigned i = 0; i < S1_LEAVES; i++) {
        put(0x4000 + i * 8, (BASE + s1_page(i) * PG) | RW);
    }
}

static uint32_t paging_id(unsigned k)
{
    return 1 + k;
}

static uint32_t nested_id(unsigned k)
{
    return 100 + k;
}

/* A paging domain: the stage-1 tables' IPAs mapped identity, no model. */
static void alloc_paging(ILEngine *e, unsigned k)
{
    ILMapping t = { .iova = 0, .size = 0x5000, .addr = 0,
                    .perm = IL_PERM_R };
    size_t bad;

    CHECK_EQ(il_domain_alloc_paging(e, paging_id(k), 48), IL_OK);
    CHECK_EQ(il_domain_map(e, paging_id(k), &t, 1, &bad), IL_OK);
    /* mostly mapped, in 2 MiB blocks and runs of pages */
    for (unsigned p = 0; p < NPAGES; p += BLK / PG) {
        ILMapping m = { .iova = BASE + p * PG, .size = BLK,
                        .addr = below(1ULL << 19) * BLK, .perm = IL_PERM_RW };

        if (below(2)) {
            m.addr += PG;           /* not aligned: 4 KiB leaves */
            m.perm = 1 + below(3);
        }
        CHECK_EQ(il_domain_map(e, paging_id(k), &m, 1, &bad), IL_OK);
        for (unsigned q = 0; q < BLK / PG; q++) {
            model_out[k][p + q] = m.addr + q * PG;
            model_perm[k][p + q] = m.perm;
        }
    }
}

static void random_range(ILMapping *m)
{
    unsigned kind = below(10);

    if (kind < 6) {
        m->iova = below(NPAGES) * PG;
        m->size = (1 + below(8)) * PG;
        m->addr = below(1ULL << 28) * PG;
    } else if (kind < 9) {
        m->iova = below(NPAGES * PG / BLK) * BLK;
        m->size = (1 + below(2)) * BLK + (below(4) ? 0 : PG * below(3));
        m->addr = below(1ULL << 19) * BLK;
    } else {
        m->iova = below(NPAGES) * PG;
        m->size = (1 + below(1024)) * PG;
        m->addr = below(1ULL << 28) * PG;
    }
    if (m->iova / PG + m->size / PG > NPAGES) {
        m->size = (NPAGES - m->iova / PG) * PG;
    }
    m->perm = 1 + below(3);
}

static void op_map(ILEngine *e, unsigned k)
{
    ILMapping m[3];
    size_t n = 1 + below(3), bad;
    ILError want = IL_OK;

    for (size_t i = 0; i < n; i++) {
        random_range(&m[i]);
        for (uint64_t p = m[i].iova / PG; p < (m[i].iova + m[i].size) / PG;
             p++) {
            if (model_perm[k][p]) {
                want = IL_ERR_OVERLAP;
            }
        }
        for (size_t j = 0; j < i && want == IL_OK; j++) {
            if (m[i].iova < m[j].iova + m[j].size &&
                m[j].iova < m[i].iova + m[i].size) {
                want = IL_ERR_OVERLAP_BATCH;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        m[i].iova += BASE;
    }
    if (want != IL_OK) {
        CHECK(il_domain_map(e, paging_id(k), m, n, &bad) != IL_OK);
        return;
    }
    CHECK_EQ(il_domain_map(e, paging_id(k), m, n, &bad), IL_OK);
    for (size_t i = 0; i < n; i++) {
        uint64_t p0 = (m[i].iova - BASE) / PG;

        for (uint64_t p = 0; p < m[i].size / PG; p++) {
            model_out[k][p0 + p] = m[i].addr + p * PG;
            model_perm[k][p0 + p] = m[i].perm;
        }
    }
}

static void op_unmap(ILEngine *e, unsigned k)
{
    ILMapping r[64];
    size_t n = below(4) ? 1 + below(3) : 1 + below(64), bad;
    uint64_t want = 0, got;
    uint32_t valid;

    for (size_t i = 0; i < n; i++) {
        random_range(&r[i]);
        if (below(8)) {
            r[i].size = PG;
        }
        for (uint64_t p = r[i].iova / PG; p < (r[i].iova + r[i].size) / PG;
             p++) {
            want += model_perm[k][p] ? PG : 0;
            model_perm[k][p] = 0;
        }
        r[i].iova += BASE;
    }
    valid = il_iotlb_valid(e);
    CHECK_EQ(il_domain_unmap(e, paging_id(k), r, n, &bad, &got), IL_OK);
    CHECK_EQ(got, want);
    dropped += valid - il_iotlb_valid(e);
}

/* il_translate(), counting fills that evict another domain's entry. */
static bool translate(ILEngine *e, const ILDomain *d, uint64_t iova,
                      ILResult *r)
{
    const ILTlbEntry *t = &e->tlb[il_tlb_index(e, d, iova >> IL_PAGE_SHIFT)];
    const ILDomain *before = t->dom;
    bool ok = il_translate(e, IL_MODE_DOMAIN, d, 1, iova, IL_ACCESS_READ, 0,
                           r, NULL);

    evictions += before && before != d && t->dom == d;
    return ok;
}

/* Translate model page p of paging domain k (the whole leaf checked). */
static void check_paging(ILEngine *e, unsigned k, unsigned p)
{
    const ILDomain *d = il_domain_find(e, paging_id(k));
    uint64_t off = below(PG);
    ILResult r;
    bool ok = translate(e, d, BASE + p * PG + off, &r);

    CHECK_EQ(ok, (model_perm[k][p] & IL_PERM_R) != 0);
    if (ok) {
        uint64_t first = ((BASE + p * PG) >> r.shift) << r.shift;

        CHECK_EQ(r.addr, model_out[k][p] + off);
        CHECK_EQ(r.perm, model_perm[k][p]);
        for (uint64_t q = (first - BASE) / PG;
             q < (first - BASE + (1ULL << r.shift)) / PG; q++) {
            CHECK(q < NPAGES);
            CHECK_EQ(model_perm[k][q], r.perm);
            CHECK_EQ(model_out[k][q], r.addr - off - (p - q) * PG);
        }
    }
}

/* Translate stage-1 leaf i of nested domain k. */
static void check_nested(ILEngine *e, unsigned k, unsigned i)
{
    const ILDomain *d = il_domain_find(e, nested_id(k));
    unsigned pk = nested_parent[k], p = s1_page(i);
    ILResult r;
    bool ok = translate(e, d, IOVA_BASE + i * PG + 8, &r);

    if (model_perm[pk][p] & IL_PERM_R) {
        CHECK(ok);
        CHECK_EQ(r.addr, model_out[pk][p] + 8);
        CHECK_EQ(r.perm, model_perm[pk][p]);
    } else {
        CHECK(!ok);
        CHECK_EQ(r.stage, IL_STAGE_2);
    }
}

/*
 * After an invalidation of [first, last] in d (NULL: all domains): no entry
 * of d overlaps it, and a paging d's children have none left.
 */
static void invalidated(const ILEngine *e, const ILDomain *d, uint64_t first,
                        uint64_t last)
{
    for (uint32_t i = 0; i < il_iotlb_size(e); i++) {
        const ILTlbEntry *t = &e->tlb[i];
        uint64_t lo = (t->page << IL_PAGE_SHIFT) & ~t->mask;

        if (!t->dom) {
            continue;
        }
        CHECK(!d || il_domain_parent(t->dom) != d);
        CHECK(!(t->dom == d || !d) || lo > last || lo + t->mask < first);
    }
}

/* Free a random domain and allocate it again (its children first). */
static void op_realloc(ILEngine *e)
{
    unsigned k = below(NPAGING + NNESTED);

    if (k >= NPAGING) {
        k -= NPAGING;
        if (nested_parent[k] >= 0) {
            CHECK_EQ(il_domain_free(e, nested_id(k)), IL_OK);
        }
        nested_parent[k] = below(NPAGING);
        CHECK_EQ(il_domain_alloc_nested(e, nested_id(k),
                                        paging_id(nested_parent[k]),
                                        S1_ROOT), IL_OK);
        return;
    }
    for (unsigned c = 0; c < NNESTED; c++) {
        if (nested_parent[c] == (int)k) {
            CHECK_EQ(il_domain_free(e, paging_id(k)), IL_ERR_BUSY);
            CHECK_EQ(il_domain_free(e, nested_id(c)), IL_OK);
            nested_parent[c] = -1;
        }
    }
    CHECK_EQ(il_domain_free(e, paging_id(k)), IL_OK);
    alloc_paging(e, k);
}

int main(int argc, char **argv)
{
    const char *s = argc > 1 ? argv[1] : getenv("IL_SEED");
    const char *o = argc > 2 ? argv[2] : getenv("IL_OPS");
    uint64_t seed = s ? strtoull(s, NULL, 0) : 20261202;
    unsigned ops = o ? strtoul(o, NULL, 0) : 20000;
    unsigned tlb = 16u << (seed % 5);           /* 16 .. 256 slots */
    ILEngine e;

    rng_seed(seed);
    printf("seed %" PRIu64 " (override: test-iotlb-random SEED [OPS] or "
           "IL_SEED), %u operations, IOTLB %u\n", seed, ops, tlb);
    CHECK_EQ(il_engine_init(&e, tlb, 8, mem_read, NULL), IL_OK);
    build_stage1();
    for (unsigned k = 0; k < NPAGING; k++) {
        alloc_paging(&e, k);
    }
    for (unsigned k = 0; k < NNESTED; k++) {
        nested_parent[k] = below(NPAGING);
        CHECK_EQ(il_domain_alloc_nested(&e, nested_id(k),
                                        paging_id(nested_parent[k]),
                                        S1_ROOT), IL_OK);
    }
    for (unsigned n = 0; n < ops; n++) {
        unsigned op = below(100), k = below(NPAGING);

        if (op < 12) {
            op_map(&e, k);
        } else if (op < 24) {
            op_unmap(&e, k);
        } else if (op < 27) {
            unsigned pick = below(NPAGING + 1);
            const ILDomain *d = pick < NPAGING ?
                il_domain_find(&e, paging_id(pick)) : NULL;
            uint64_t iova = BASE + below(NPAGES) * PG;

            uint64_t size = PG * (1 + below(600));

            il_invalidate_range(&e, d, iova, size);
            invalidated(&e, d, iova, iova + size - 1);
        } else if (op < 28) {
            unsigned c = below(NNESTED);
            bool child = below(2) && nested_parent[c] >= 0;
            const ILDomain *d = il_domain_find(&e, child ? nested_id(c) :
                                                   paging_id(k));

            il_invalidate_domain(&e, d);
            invalidated(&e, d, 0, UINT64_MAX);
        } else if (op < 29) {
            if (below(8) == 0) {
                il_invalidate_all(&e);
                CHECK_EQ(il_iotlb_valid(&e), 0);
            } else {
                op_realloc(&e);
            }
        } else if (op < 55) {
            unsigned c = below(NNESTED);

            if (nested_parent[c] >= 0) {
                check_nested(&e, c, below(4) ? below(8) : below(S1_LEAVES));
            }
        } else {
            /* a hot set per domain, so that entries stay and get evicted */
            check_paging(&e, k, below(4) ? (k * 97 + below(8) * 13) % NPAGES
                                         : below(NPAGES));
        }
        check_iotlb_exact(&e);
    }
    printf("iotlb hits %" PRIu64 " misses %" PRIu64 " invalidations %"
           PRIu64 "; fills evicting another domain's entry %" PRIu64
           ", entries dropped by unmaps %" PRIu64 ", %u valid at the end\n"
           "ok\n", e.c.hits, e.c.misses, e.c.invalidations, evictions,
           dropped, il_iotlb_valid(&e));
    CHECK(e.c.hits > 0 && evictions > 0 && dropped > 0);
    il_engine_destroy(&e);
    return 0;
}

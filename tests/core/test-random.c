/*
 * Randomized test: thousands of batched map, unmap, invalidate and
 * translate operations on a stage-2 domain (through the engine, so the IOTLB
 * is exercised) compared with a page-array reference model.
 *
 * Seed: argv[1], else $IL_SEED, else a fixed default; always printed, so a
 * failure can be replayed.  Operation count: argv[2] or $IL_OPS.
 */
#include <string.h>
#include "test-util.h"
#include "il-engine.h"

#define NPAGES  (1u << 15)          /* model space: 128 MiB of iova */
#define PG      IL_PAGE_SIZE
#define BLK     (2 * 1024 * 1024ULL)

static uint64_t model_out[NPAGES];  /* output page address */
static uint8_t model_perm[NPAGES];  /* 0: unmapped */
static uint64_t hot[32];            /* pages translated often (IOTLB hits) */

static bool no_read(void *opaque, uint64_t addr, void *buf, size_t len)
{
    (void)opaque;
    (void)addr;
    (void)buf;
    (void)len;
    return false;
}

static uint64_t model_mapped(void)
{
    uint64_t n = 0;

    for (unsigned i = 0; i < NPAGES; i++) {
        n += model_perm[i] != 0;
    }
    return n * PG;
}

static void random_range(ILMapping *m)
{
    unsigned kind = below(10);

    if (kind < 5) {
        m->iova = below(NPAGES) * PG;
        m->size = (1 + below(16)) * PG;
        m->addr = below(1ULL << 28) * PG;
    } else if (kind < 8) {
        m->iova = below(NPAGES * PG / BLK) * BLK;
        m->size = (1 + below(4)) * BLK;
        m->addr = below(1ULL << 19) * BLK;
        if (below(4) == 0) {
            m->size += PG * below(3);
        }
    } else {
        m->iova = below(NPAGES) * PG;
        m->size = (1 + below(1024)) * PG;
        m->addr = below(1ULL << 28) * PG;
    }
    if ((m->iova + m->size) / PG > NPAGES) {
        m->size = NPAGES * PG - m->iova;
    }
    m->perm = 1 + below(3);
}

static bool model_overlaps(const ILMapping *m)
{
    for (uint64_t p = m->iova / PG; p < (m->iova + m->size) / PG; p++) {
        if (model_perm[p]) {
            return true;
        }
    }
    return false;
}

static void op_map(ILEngine *e)
{
    ILMapping m[4];
    size_t n = 1 + below(4), bad = 0, want_bad = 0;
    ILError want = IL_OK, got;

    for (size_t i = 0; i < n; i++) {
        random_range(&m[i]);
    }
    for (size_t i = 0; i < n && want == IL_OK; i++) {
        if (model_overlaps(&m[i])) {
            want = IL_ERR_OVERLAP;
            want_bad = i;
        }
    }
    for (size_t i = 0; i < n && want == IL_OK; i++) {
        for (size_t j = 0; j < i; j++) {
            if (m[i].iova < m[j].iova + m[j].size &&
                m[j].iova < m[i].iova + m[i].size) {
                want = IL_ERR_OVERLAP_BATCH;
            }
        }
    }
    got = il_domain_map(e, 1, m, n, &bad);
    CHECK_EQ(got, want);
    if (want == IL_ERR_OVERLAP) {
        CHECK_EQ(bad, want_bad);
    }
    if (got != IL_OK) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        for (uint64_t k = 0; k < m[i].size / PG; k++) {
            model_out[m[i].iova / PG + k] = m[i].addr + k * PG;
            model_perm[m[i].iova / PG + k] = m[i].perm;
        }
        hot[below(32)] = m[i].iova / PG + below(m[i].size / PG);
    }
}

static void op_unmap(ILEngine *e)
{
    ILMapping r[2];
    size_t n = 1 + below(2), bad;
    uint64_t want = 0, got;

    for (size_t i = 0; i < n; i++) {
        random_range(&r[i]);
        if (below(2)) {
            r[i].iova = hot[below(32)] * PG;
            r[i].size = PG * (1 + below(4));
            if ((r[i].iova + r[i].size) / PG > NPAGES) {
                r[i].size = NPAGES * PG - r[i].iova;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        for (uint64_t p = r[i].iova / PG; p < (r[i].iova + r[i].size) / PG;
             p++) {
            if (model_perm[p]) {
                want += PG;
                model_perm[p] = 0;
            }
        }
    }
    CHECK_EQ(il_domain_unmap(e, 1, r, n, &bad, &got), IL_OK);
    CHECK_EQ(got, want);
}

static void op_translate(ILEngine *e, const ILDomain *d)
{
    uint64_t p = below(10) < 7 ? hot[below(32)] : below(NPAGES + 16);
    uint64_t iova = p * PG + below(PG);
    unsigned acc = below(2) ? IL_ACCESS_READ : IL_ACCESS_WRITE;
    ILResult r;
    bool ok = il_translate(e, IL_MODE_DOMAIN, d, 1, iova, acc, 0, &r, NULL);

    if (p < NPAGES && model_perm[p]) {
        if (model_perm[p] & acc) {
            CHECK(ok);
            CHECK_EQ(r.addr, model_out[p] + iova % PG);
            CHECK_EQ(r.perm, model_perm[p]);
            /* the whole reported block agrees with the model */
            uint64_t first = (iova >> r.shift) << r.shift;
            uint64_t pages = (1ULL << r.shift) / PG;
            uint64_t pbase = r.addr - (iova - first);
            for (uint64_t k = 0; k < pages; k++) {
                CHECK(first / PG + k < NPAGES);
                CHECK_EQ(model_perm[first / PG + k], model_perm[p]);
                CHECK_EQ(model_out[first / PG + k], pbase + k * PG);
            }
        } else {
            CHECK(!ok);
            CHECK_EQ(r.reason, IL_REASON_PERMISSION);
        }
    } else {
        CHECK(!ok);
        CHECK_EQ(r.reason, IL_REASON_NOT_PRESENT);
        CHECK_EQ(r.stage, IL_STAGE_2);
    }
}

typedef struct Walk {
    uint64_t next;
    ILMapping prev;
} Walk;

static void walk_cb(void *opaque, const ILMapping *m)
{
    Walk *w = opaque;

    /* in order, and merged: the previous run cannot be extended by this */
    CHECK(m->iova >= w->next);
    CHECK(!(w->prev.size && w->prev.iova + w->prev.size == m->iova &&
            w->prev.addr + w->prev.size == m->addr &&
            w->prev.perm == m->perm));
    for (; w->next < m->iova; w->next += PG) {
        CHECK(!model_perm[w->next / PG]);
    }
    for (uint64_t k = 0; k < m->size / PG; k++) {
        CHECK_EQ(model_perm[m->iova / PG + k], m->perm);
        CHECK_EQ(model_out[m->iova / PG + k], m->addr + k * PG);
    }
    w->next = m->iova + m->size;
    w->prev = *m;
}

/* Runs of a walk, kept to compare a whole walk with its pages. */
typedef struct Runs {
    ILMapping *v;
    size_t n, cap;
} Runs;

static void runs_add(void *opaque, const ILMapping *m)
{
    Runs *r = opaque;

    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 64;
        r->v = realloc(r->v, r->cap * sizeof(*r->v));
        CHECK(r->v);
    }
    r->v[r->n++] = *m;
}

/*
 * il_s2_walk_page: pages of a random size, each from the last page's next,
 * give exactly the runs of one whole walk (so next is a run boundary); a
 * page from a random iova gives the whole walk's runs clipped to it.
 */
static void check_pages(const ILS2 *s2)
{
    Runs all = { 0 }, paged = { 0 }, from = { 0 };
    uint64_t start = 0, next = ~0ULL, cut;
    size_t pages = 0, i = 0;

    il_s2_for_each(s2, runs_add, &all);
    for (uint64_t max = 1 + below(8);; max = 1 + below(8), pages++) {
        size_t before = paged.n;
        bool more = il_s2_walk_page(s2, start, max, runs_add, &paged, &next);

        CHECK(paged.n - before <= max);
        if (!more) {
            break;
        }
        CHECK_EQ(paged.n - before, max);
        CHECK(next > start);
        CHECK_EQ(next, all.v[paged.n].iova);
        start = next;
    }
    CHECK_EQ(paged.n, all.n);
    CHECK(!memcmp(paged.v, all.v, all.n * sizeof(*all.v)));
    cut = below(NPAGES + 1) * PG + (below(2) ? below(PG) : 0);
    CHECK(!il_s2_walk_page(s2, cut, 0, runs_add, &from, &next));
    while (i < all.n && all.v[i].iova + all.v[i].size <= cut) {
        i++;
    }
    CHECK_EQ(from.n, all.n - i);
    for (size_t j = 0; j < from.n; j++, i++) {
        uint64_t skip = cut > all.v[i].iova ? cut - all.v[i].iova : 0;

        CHECK_EQ(from.v[j].iova, all.v[i].iova + skip);
        CHECK_EQ(from.v[j].size, all.v[i].size - skip);
        CHECK_EQ(from.v[j].addr, all.v[i].addr + skip);
        CHECK_EQ(from.v[j].perm, all.v[i].perm);
    }
    i = from.n;                 /* nothing is mapped near the top of iova */
    CHECK(!il_s2_walk_page(s2, ~0ULL, 1, runs_add, &from, &next));
    CHECK_EQ(from.n, i);
    (void)pages;
    free(all.v);
    free(paged.v);
    free(from.v);
}

int main(int argc, char **argv)
{
    const char *s = argc > 1 ? argv[1] : getenv("IL_SEED");
    const char *o = argc > 2 ? argv[2] : getenv("IL_OPS");
    uint64_t seed = s ? strtoull(s, NULL, 0) : 20261123;
    unsigned ops = o ? strtoul(o, NULL, 0) : 20000;
    unsigned counts[5] = { 0 };
    ILEngine e;
    ILDomain *d;
    size_t bad;
    uint64_t got;

    printf("seed %" PRIu64 " (override: test-random SEED [OPS] or IL_SEED), "
           "%u operations\n", seed, ops);
    rng_seed(seed);
    il_engine_init(&e, 256, 8, no_read, NULL);
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 48), IL_OK);
    d = il_domain_find(&e, 1);
    for (unsigned i = 0; i < 32; i++) {
        hot[i] = below(NPAGES);
    }
    for (unsigned i = 0; i < ops; i++) {
        unsigned k = below(100);

        if (below(50) == 0) {
            hot[below(32)] = below(NPAGES);
        }

        if (k < 20) {
            op_map(&e);
            counts[0]++;
        } else if (k < 30) {
            op_unmap(&e);
            counts[1]++;
        } else if (k < 32) {
            if (below(2)) {
                il_invalidate_all(&e);
            } else {
                il_invalidate_range(&e, below(2) ? d : NULL,
                                    below(NPAGES) * PG, PG * (1 + below(64)));
            }
            counts[2]++;
        } else if (k < 33) {
            Walk w = { .next = 0 };

            il_s2_for_each(&d->s2, walk_cb, &w);
            for (; w.next < NPAGES * PG; w.next += PG) {
                CHECK(!model_perm[w.next / PG]);
            }
            check_pages(&d->s2);
            counts[3]++;
        } else {
            op_translate(&e, d);
            counts[4]++;
        }
        CHECK_EQ(d->s2.mapped, model_mapped());
        CHECK(il_iotlb_check(&e));
    }
    printf("maps %u unmaps %u invalidations %u walks %u translations %u; "
           "iotlb hits %" PRIu64 " misses %" PRIu64 "\n", counts[0],
           counts[1], counts[2], counts[3], counts[4], e.c.hits, e.c.misses);
    ILMapping all = { .iova = 0, .size = 1ULL << 48 };
    CHECK_EQ(il_domain_unmap(&e, 1, &all, 1, &bad, &got), IL_OK);
    CHECK_EQ(got, model_mapped());
    CHECK_EQ(d->s2.tables, 1);
    CHECK_EQ(e.tlb_valid, 0);
    il_engine_destroy(&e);
    printf("ok\n");
    return 0;
}

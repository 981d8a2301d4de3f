/*
 * Randomized test of nested translation: random stage-1 leaf changes (with
 * and without the invalidation the guest owes), random stage-2 map/unmap of
 * the IPAs they point to, and translations compared with the composition of
 * two reference models.  Before an invalidation a changed stage-1 leaf may
 * translate to its old or new value (the IOTLB may hold the old one); after
 * it, only to the new one.  Stage-2 changes take effect at once.
 *
 * Seed: argv[1], else $IL_SEED, else a fixed default; always printed.
 */
#include <string.h>
#include "il-engine.h"

#define PG          4096ULL
#define MEM         (8 << 20)

#define NS1         2048            /* stage-1 leaves: 4 L1 tables */
#define NDATA       256             /* data IPA pages at DATA_IPA */
#define DATA_IPA    0x100000ULL
#define PA_POOL     0x400000ULL     /* data PAs: 1024 pages from here */
#define IOVA_BASE   0x7f0000000000ULL
#define RW          (IL_S1_P | IL_S1_R | IL_S1_W)

#define TEST_MEM_SIZE MEM   /* the guest memory of test-util.h */
#include "test-util.h"

typedef struct S1Leaf {
    bool present;
    unsigned ipa_page;              /* index into the data IPA pages */
    unsigned perm;
} S1Leaf;

static S1Leaf s1[NS1];
static uint64_t s2_pa[NDATA];       /* 0: unmapped */
static unsigned s2_perm[NDATA];

/* Tables are at IPA == PA (stage 2 maps [0, 1 MiB) identity). */
static void write_leaf(unsigned i)
{
    uint64_t e = 0;

    if (s1[i].present) {
        e = (DATA_IPA + s1[i].ipa_page * PG) | IL_S1_P |
            ((s1[i].perm & IL_PERM_R) ? IL_S1_R : 0) |
            ((s1[i].perm & IL_PERM_W) ? IL_S1_W : 0);
    }
    put(0x4000 + (i / 512) * PG + (i % 512) * 8, e);
}

static uint64_t iova_of(unsigned i)
{
    return IOVA_BASE + ((uint64_t)(i / 512) << 21) + (i % 512) * PG;
}

typedef struct Expect {
    bool ok;
    uint64_t addr;
    unsigned perm;
    ILFaultStage stage;
    ILFaultReason reason;
} Expect;

static Expect model(const S1Leaf *l, unsigned acc)
{
    Expect x = { .ok = false };

    if (!l->present) {
        x.stage = IL_STAGE_1;
        x.reason = IL_REASON_NOT_PRESENT;
        return x;
    }
    if (!s2_pa[l->ipa_page]) {
        x.stage = IL_STAGE_2;
        x.reason = IL_REASON_NOT_PRESENT;
        return x;
    }
    x.perm = l->perm & s2_perm[l->ipa_page];
    if ((x.perm & acc) != acc) {
        x.stage = (l->perm & acc) != acc ? IL_STAGE_1 : IL_STAGE_2;
        x.reason = IL_REASON_PERMISSION;
        return x;
    }
    x.ok = true;
    x.addr = s2_pa[l->ipa_page];
    return x;
}

static bool matches(const Expect *x, bool ok, const ILResult *r,
                    uint64_t off)
{
    if (ok != x->ok) {
        return false;
    }
    if (ok) {
        return r->addr == x->addr + off && r->perm == x->perm;
    }
    return r->stage == x->stage && r->reason == x->reason;
}

int main(int argc, char **argv)
{
    const char *s = argc > 1 ? argv[1] : getenv("IL_SEED");
    const char *o = argc > 2 ? argv[2] : getenv("IL_OPS");
    uint64_t seed = s ? strtoull(s, NULL, 0) : 4242;
    unsigned ops = o ? strtoul(o, NULL, 0) : 30000;
    unsigned stale = 0, checks = 0;
    ILMapping tables = { .iova = 0, .size = DATA_IPA, .addr = 0,
                         .perm = IL_PERM_RW };
    ILEngine e;
    ILDomain *d;
    size_t bad;
    uint64_t bytes;

    printf("seed %" PRIu64 " (override: test-nested-random SEED [OPS] or "
           "IL_SEED), %u operations\n", seed, ops);
    rng_seed(seed);
    il_engine_init(&e, 512, 8, mem_read, NULL);
    CHECK_EQ(il_domain_alloc_paging(&e, 1, 48), IL_OK);
    CHECK_EQ(il_domain_map(&e, 1, &tables, 1, &bad), IL_OK);
    put(0x1000 + ((IOVA_BASE >> 39) & 511) * 8, 0x2000 | RW);
    put(0x2000 + ((IOVA_BASE >> 30) & 511) * 8, 0x3000 | RW);
    for (unsigned k = 0; k < NS1 / 512; k++) {
        put(0x3000 + (((IOVA_BASE >> 21) + k) & 511) * 8,
            (0x4000 + k * PG) | RW);
    }
    CHECK_EQ(il_domain_alloc_nested(&e, 2, 1, 0x1000), IL_OK);
    d = il_domain_find(&e, 2);
    /* start mostly mapped and present, so that translations get cached */
    for (unsigned p = 0; p < NDATA; p++) {
        ILMapping m = { .iova = DATA_IPA + p * PG, .size = PG,
                        .addr = PA_POOL + (rnd() % 1024) * PG,
                        .perm = rnd() % 4 ? IL_PERM_RW : 1 + rnd() % 2 };

        CHECK_EQ(il_domain_map(&e, 1, &m, 1, &bad), IL_OK);
        s2_pa[p] = m.addr;
        s2_perm[p] = m.perm;
    }
    for (unsigned i = 0; i < NS1; i++) {
        s1[i] = (S1Leaf){ .present = true, .ipa_page = rnd() % NDATA,
                          .perm = IL_PERM_RW };
        write_leaf(i);
    }

    for (unsigned n = 0; n < ops; n++) {
        unsigned k = rnd() % 100;

        if (k < 10) {
            /* the guest changes a leaf; maybe translate before invalidating */
            unsigned i = rnd() % 4 ? (rnd() % 64) * 31 % NS1 : rnd() % NS1;
            S1Leaf old = s1[i];
            unsigned acc = rnd() % 2 ? IL_ACCESS_READ : IL_ACCESS_WRITE;
            ILResult r;
            bool ok;

            s1[i].present = rnd() % 8 != 0;
            s1[i].ipa_page = rnd() % NDATA;
            s1[i].perm = 1 + rnd() % 3;
            write_leaf(i);
            if (rnd() % 2) {
                Expect xo = model(&old, acc), xn = model(&s1[i], acc);

                ok = il_translate(&e, IL_MODE_DOMAIN, d, 1, iova_of(i) + 8,
                                  acc, 0, &r, NULL);
                CHECK(matches(&xn, ok, &r, 8) || matches(&xo, ok, &r, 8));
                stale += !matches(&xn, ok, &r, 8);
            }
            if (rnd() % 8) {
                il_invalidate_range(&e, d, iova_of(i), PG);
            } else {
                il_invalidate_domain(&e, d);
            }
        } else if (k < 15) {
            /* the control plane changes stage 2 of a data IPA page */
            unsigned p = rnd() % NDATA;
            ILMapping m = { .iova = DATA_IPA + p * PG, .size = PG };

            if (s2_pa[p] && rnd() % 2) {
                CHECK_EQ(il_domain_unmap(&e, 1, &m, 1, &bad, &bytes), IL_OK);
                CHECK_EQ(bytes, PG);
                s2_pa[p] = 0;
            } else {
                if (s2_pa[p]) {     /* remap elsewhere: unmap, then map */
                    CHECK_EQ(il_domain_unmap(&e, 1, &m, 1, &bad, &bytes),
                             IL_OK);
                }
                m.addr = PA_POOL + (rnd() % 1024) * PG;
                m.perm = 1 + rnd() % 3;
                CHECK_EQ(il_domain_map(&e, 1, &m, 1, &bad), IL_OK);
                s2_pa[p] = m.addr;
                s2_perm[p] = m.perm;
            }
        } else {
            unsigned i = rnd() % 64;     /* a hot set: IOTLB hits */
            unsigned acc = rnd() % 2 ? IL_ACCESS_READ : IL_ACCESS_WRITE;
            uint64_t off = rnd() % PG;
            Expect x;
            ILResult r;
            bool ok;

            i = rnd() % 4 ? i * 31 % NS1 : rnd() % NS1;
            x = model(&s1[i], acc);
            ok = il_translate(&e, IL_MODE_DOMAIN, d, 1, iova_of(i) + off, acc,
                              0, &r, NULL);
            if (!matches(&x, ok, &r, off)) {
                fprintf(stderr, "op %u leaf %u acc %u: got ok %d addr 0x%"
                        PRIx64 " stage %u reason %u, want ok %d addr 0x%"
                        PRIx64 " stage %u reason %u\n", n, i, acc, ok,
                        r.addr, r.stage, r.reason, x.ok, x.addr + off,
                        x.stage, x.reason);
                return 1;
            }
            checks++;
        }
        CHECK(il_iotlb_check(&e));
    }
    printf("%u checked translations, %u stale reads before invalidation; "
           "iotlb hits %" PRIu64 " walks %" PRIu64 "\nok\n", checks, stale,
           e.c.hits, e.c.walks);
    CHECK(stale > 0 && e.c.hits > 0);
    il_engine_destroy(&e);
    return 0;
}

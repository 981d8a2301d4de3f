/*
 * Unit test: allocation-failure injection over the engine, in the style of
 * the kernel's iommufd_fail_nth selftest.
 *
 * Each sequence of operations is run again and again with the 1st, 2nd,
 * 3rd, ... allocation of the core failing (il_fail_nth_set(), compiled into
 * the tests' copy of the core only), until a run completes without hitting
 * the failure.  The operation that meets the failure must return
 * IL_ERR_NOMEM and leave everything as it was: the domain list, every
 * mapping (read back by walks), table counts, attached devices, children,
 * the IOTLB (byte for byte, and every entry still what a fresh walk
 * gives), counters and faults, and the number of live allocations (no
 * leak).  Then the same operation is retried without failure and must
 * succeed, and the sequence goes on.  After each run the engine is
 * destroyed and nothing may be left allocated.
 *
 * Then the same sequence is run with the engine-wide page-table limit at 1,
 * 2, 3, ... tables: the op that meets it must fail with IL_ERR_LIMIT, with
 * the same "nothing changed" checks, and succeed once the limit is lifted.
 */
#include <string.h>
#include "test-util.h"
#include "il-engine.h"
#include "il-alloc.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)
#define GiB (1024 * MiB)

#define SNAP_DOMAINS 40
#define SNAP_MAPS 64
#define SNAP_DEVS 8

typedef struct SnapDomain {
    uint32_t id;
    uint32_t type;
    uint32_t parent;
    uint64_t s1_root;
    uint32_t devices;
    uint32_t children;
    uint32_t ndevs;
    uint32_t devs[SNAP_DEVS];
    uint32_t child_ids;         /* bitmap of children ids < 32 */
    uint64_t tables;
    uint64_t mapped;
    unsigned nmaps;
    ILMapping maps[SNAP_MAPS];
} SnapDomain;

typedef struct Snap {
    size_t ndomains;
    SnapDomain dom[SNAP_DOMAINS];
    ILTlbEntry tlb[64];
    uint32_t tlb_valid;
    ILCounters c;
    uint32_t nfaults;
    uint64_t tables;            /* the engine's count, all domains */
    long live;
} Snap;

static void snap_map(void *opaque, const ILMapping *m)
{
    SnapDomain *sd = opaque;

    CHECK(sd->nmaps < SNAP_MAPS);
    sd->maps[sd->nmaps++] = *m;
}

static void snap_take(const ILEngine *e, Snap *s)
{
    uint64_t sum = 0;

    memset(s, 0, sizeof(*s));
    s->ndomains = il_domain_count(e);
    CHECK(s->ndomains <= SNAP_DOMAINS);
    for (size_t i = 0; i < s->ndomains; i++) {
        const ILDomain *d = il_domain_at(e, i);
        SnapDomain *sd = &s->dom[i];

        sd->id = il_domain_id(d);
        sd->type = il_domain_type(d);
        sd->parent = d->parent ? il_domain_id(d->parent) : UINT32_MAX;
        sd->s1_root = il_domain_s1_root(d);
        sd->devices = il_domain_devices(d);
        sd->children = il_domain_children(d);
        sd->ndevs = d->ndevs;
        CHECK(d->ndevs <= SNAP_DEVS);
        if (d->ndevs) {
            memcpy(sd->devs, d->devs, d->ndevs * sizeof(*d->devs));
        }
        for (const ILDomain *c = il_domain_first_child(d); c;
             c = il_domain_next_child(c)) {
            sd->child_ids |= 1u << (il_domain_id(c) & 31);
        }
        if (sd->type == IL_DOMAIN_PAGING) {
            sd->tables = d->s2.tables;
            sd->mapped = d->s2.mapped;
        }
        il_domain_for_each_mapping(d, snap_map, sd);
    }
    CHECK_EQ(il_iotlb_size(e), 64);
    memcpy(s->tlb, e->tlb, sizeof(s->tlb));
    s->tlb_valid = il_iotlb_valid(e);
    s->c = *il_engine_counters(e);
    s->nfaults = il_faults_count(e);
    s->tables = il_engine_tables(e);
    s->live = il_fail_nth_live();
    for (size_t i = 0; i < s->ndomains; i++) {
        sum += s->dom[i].tables;
    }
    CHECK_EQ(sum, s->tables);
}

static void snap_same(const Snap *a, const Snap *b)
{
    CHECK_EQ(a->ndomains, b->ndomains);
    for (size_t i = 0; i < a->ndomains; i++) {
        const SnapDomain *x = &a->dom[i], *y = &b->dom[i];

        CHECK_EQ(x->id, y->id);
        CHECK_EQ(x->type, y->type);
        CHECK_EQ(x->parent, y->parent);
        CHECK_EQ(x->s1_root, y->s1_root);
        CHECK_EQ(x->devices, y->devices);
        CHECK_EQ(x->children, y->children);
        CHECK_EQ(x->child_ids, y->child_ids);
        CHECK_EQ(x->ndevs, y->ndevs);
        CHECK(memcmp(x->devs, y->devs, sizeof(x->devs)) == 0);
        CHECK_EQ(x->tables, y->tables);
        CHECK_EQ(x->mapped, y->mapped);
        CHECK_EQ(x->nmaps, y->nmaps);
        for (unsigned j = 0; j < x->nmaps; j++) {
            CHECK_EQ(x->maps[j].iova, y->maps[j].iova);
            CHECK_EQ(x->maps[j].size, y->maps[j].size);
            CHECK_EQ(x->maps[j].addr, y->maps[j].addr);
            CHECK_EQ(x->maps[j].perm, y->maps[j].perm);
        }
    }
    CHECK(memcmp(a->tlb, b->tlb, sizeof(a->tlb)) == 0);
    CHECK_EQ(a->tlb_valid, b->tlb_valid);
    CHECK(memcmp(&a->c, &b->c, sizeof(a->c)) == 0);
    CHECK_EQ(a->nfaults, b->nfaults);
    CHECK_EQ(a->tables, b->tables);
    CHECK_EQ(a->live, b->live);
}

/* Stage-1 reads: the nested domain's tables are never present here. */
static bool no_mem(void *opaque, uint64_t addr, void *buf, size_t len)
{
    (void)opaque;
    (void)addr;
    memset(buf, 0, len);
    return true;
}

/* One API call (so "as before" is well defined), with an argument. */
typedef ILError OpFn(ILEngine *e, uint32_t arg);

typedef struct Op {
    const char *name;
    OpFn *fn;
    uint32_t arg;
} Op;

static ILError op_init(ILEngine *e, uint32_t arg)
{
    (void)arg;
    return il_engine_init(e, 64, 8, no_mem, NULL);
}

static ILError op_alloc_paging(ILEngine *e, uint32_t id)
{
    return il_domain_alloc_paging(e, id, id == 1 ? 48 : 39);
}

static ILError op_alloc_nested(ILEngine *e, uint32_t arg)
{
    (void)arg;
    return il_domain_alloc_nested(e, 3, 1, 0x1000);
}

/* Blocks (1 GiB, 2 MiB) and pages, several tables, in one batch. */
static ILError op_map(ILEngine *e, uint32_t arg)
{
    static const ILMapping m[] = {
        { .iova = GiB, .size = GiB + 4 * MiB + 12 * KiB, .addr = 8 * GiB,
          .perm = IL_PERM_RW },
        { .iova = 0x7f0000000000ULL, .size = 64 * KiB, .addr = 0x5000,
          .perm = IL_PERM_R },
        { .iova = 16 * GiB + 2 * MiB, .size = 4 * MiB, .addr = 2 * MiB,
          .perm = IL_PERM_W },
    };
    size_t bad;

    (void)arg;
    return il_domain_map(e, 1, m, 3, &bad);
}

static ILError op_map_other(ILEngine *e, uint32_t arg)
{
    ILMapping m = { .iova = 0, .size = 2 * MiB + 8 * KiB, .addr = 0,
                    .perm = IL_PERM_RW };
    size_t bad;

    (void)arg;
    return il_domain_map(e, 2, &m, 1, &bad);
}

/* Fill the IOTLB and queue a fault (no allocation): kept by failing ops. */
static ILError op_translate(ILEngine *e, uint32_t arg)
{
    static const uint64_t iovas[] = {
        GiB + 5, GiB + 3 * MiB, 2 * GiB + 4 * KiB, 0x7f0000003000ULL,
        16 * GiB + 2 * MiB, 16 * GiB + 5 * MiB,
    };
    ILDomain *d = il_domain_find(e, 1);
    ILResult r;

    (void)arg;
    for (unsigned i = 0; i < sizeof(iovas) / sizeof(iovas[0]); i++) {
        CHECK(il_translate(e, IL_MODE_DOMAIN, d, 7, iovas[i], 0, 0, &r,
                           NULL));
    }
    CHECK(!il_translate(e, IL_MODE_DOMAIN, d, 7, 0x1000, IL_ACCESS_READ, 0,
                        &r, NULL));
    return IL_OK;
}

/* Devices 10..15 to domain 1 (its list grows past 4), 20 to domain 3. */
static ILError op_attach(ILEngine *e, uint32_t dev)
{
    return il_domain_attach_dev(e, il_domain_find(e, dev < 20 ? 1 : 3), dev);
}

static ILError op_switch(ILEngine *e, uint32_t dev)
{
    return il_dev_switch_domain(e, dev, il_domain_find(e, 3),
                                il_domain_find(e, 2));
}

/*
 * Unmap splitting blocks: 4 KiB in the 1 GiB block (1 GiB -> 2 MiB ->
 * 4 KiB), 4 KiB twice in one 2 MiB block (one table for both), and half of
 * another 2 MiB block, in one batch.
 */
static ILError op_unmap_split(ILEngine *e, uint32_t arg)
{
    static const ILMapping r[] = {
        { .iova = GiB + 6 * MiB + 8 * KiB, .size = 4 * KiB },
        { .iova = 2 * GiB + 16 * KiB, .size = 4 * KiB },
        { .iova = 2 * GiB + 64 * KiB, .size = 8 * KiB },
        { .iova = 16 * GiB + 2 * MiB, .size = 1 * MiB },
    };
    uint64_t bytes;
    size_t bad;
    ILError err = il_domain_unmap(e, 1, r, 4, &bad, &bytes);

    (void)arg;
    if (err == IL_OK) {
        CHECK_EQ(bytes, 16 * KiB + MiB);
    } else {
        CHECK_EQ(bytes, 0);
    }
    return err;
}

static ILError op_unmap_single_split(ILEngine *e, uint32_t arg)
{
    ILMapping r = { .iova = GiB + 100 * MiB, .size = 4 * KiB };
    uint64_t bytes;
    size_t bad;

    (void)arg;
    return il_domain_unmap(e, 1, &r, 1, &bad, &bytes);
}

static ILError op_unmap_all(ILEngine *e, uint32_t arg)
{
    ILMapping r = { .iova = 0, .size = 1ULL << 48 };
    uint64_t bytes;
    size_t bad;
    ILError err = il_domain_unmap(e, 1, &r, 1, &bad, &bytes);

    (void)arg;
    if (err == IL_OK) {
        CHECK_EQ(il_domain_find(e, 1)->s2.mapped, 0);
        CHECK_EQ(il_domain_find(e, 1)->s2.tables, 1);
    }
    return err;
}

/* Cannot fail: detaching and freeing allocate nothing. */
static ILError op_detach_free(ILEngine *e, uint32_t arg)
{
    ILDomain *d1 = il_domain_find(e, 1);

    (void)arg;
    for (uint32_t dev = 10; dev < 16; dev++) {
        il_domain_detach_dev(e, d1, dev);
    }
    il_domain_detach_dev(e, il_domain_find(e, 2), 20);
    CHECK_EQ(il_domain_free(e, 1), IL_ERR_BUSY);    /* child 3 */
    CHECK_EQ(il_domain_free(e, 3), IL_OK);
    CHECK_EQ(il_domain_free(e, 1), IL_OK);
    CHECK_EQ(il_domain_free(e, 2), IL_OK);
    for (uint32_t id = 100; id < 116; id++) {
        CHECK_EQ(il_domain_free(e, id), IL_OK);
    }
    CHECK_EQ(il_domain_count(e), 0);
    return IL_OK;
}

static Op ops[64];
static unsigned nops;

static void add(const char *name, OpFn *fn, uint32_t arg)
{
    CHECK(nops < sizeof(ops) / sizeof(ops[0]));
    ops[nops].name = name;
    ops[nops].fn = fn;
    ops[nops++].arg = arg;
}

static void build_ops(void)
{
    add("engine init", op_init, 0);
    add("alloc paging", op_alloc_paging, 1);
    add("alloc paging", op_alloc_paging, 2);
    add("alloc nested", op_alloc_nested, 0);
    /* one of these grows the domain array (16 -> 32) */
    for (uint32_t id = 100; id < 116; id++) {
        add("alloc paging", op_alloc_paging, id);
    }
    add("map blocks and pages", op_map, 0);
    add("map", op_map_other, 0);
    add("translate", op_translate, 0);
    for (uint32_t dev = 10; dev < 16; dev++) {
        add("attach", op_attach, dev);
    }
    add("attach", op_attach, 20);
    add("switch", op_switch, 20);
    add("unmap splitting blocks", op_unmap_split, 0);
    add("unmap a page of a block", op_unmap_single_split, 0);
    add("unmap everything", op_unmap_all, 0);
    add("detach and free", op_detach_free, 0);
}

/*
 * One run with the nth allocation failing, or (nth 0) with the engine's
 * page-table limit at limit tables.  Returns false when the run completed
 * without reaching the nth allocation or the limit (nothing left to try).
 * After the limit is met once, it is lifted for the rest of the run.
 */
static bool run(unsigned long nth, uint64_t limit, const char **failed_op)
{
    ILEngine e;
    Snap before, after;
    bool fired = false;

    CHECK_EQ(il_fail_nth_live(), 0);
    memset(&e, 0, sizeof(e));
    il_fail_nth_set(nth);
    for (unsigned i = 0; i < nops; i++) {
        ILError err;

        if (i > 0) {
            check_iotlb_exact(&e);
            snap_take(&e, &before);
        }
        err = ops[i].fn(&e, ops[i].arg);
        if (i == 0 && err == IL_OK && limit) {
            CHECK_EQ(il_engine_set_table_limit(&e, limit * 4096), IL_OK);
        }
        if (err == IL_OK) {
            /* a failed allocation is never swallowed */
            CHECK(!il_fail_nth_fired());
            continue;
        }
        /* Only the injected failure or the limit may fail an op, once. */
        if (limit ? err != IL_ERR_LIMIT || fired :
            err != IL_ERR_NOMEM || !il_fail_nth_fired()) {
            fprintf(stderr, "fail_nth %lu limit %" PRIu64 ": op %u '%s' "
                    "returned %s\n", nth, limit, i, ops[i].name,
                    il_strerror(err));
            exit(1);
        }
        fired = true;
        *failed_op = ops[i].name;
        if (i == 0) {
            CHECK(e.tlb == NULL);
            CHECK_EQ(il_fail_nth_live(), 0);
        } else {
            snap_take(&e, &after);
            snap_same(&before, &after);
            check_iotlb_exact(&e);
        }
        /* the same op again, without failure: the state is usable */
        il_fail_nth_set(0);
        if (limit) {
            CHECK_EQ(il_engine_set_table_limit(&e, UINT64_MAX), IL_OK);
        }
        CHECK_EQ(ops[i].fn(&e, ops[i].arg), IL_OK);
    }
    il_engine_destroy(&e);
    il_fail_nth_set(0);
    CHECK_EQ(il_fail_nth_live(), 0);
    return fired;
}

/*
 * The same sequence with the engine-wide page-table limit at 1, 2, 3, ...
 * tables, until it fits: the op that meets the limit fails with
 * IL_ERR_LIMIT, nothing changed, and succeeds once the limit is lifted.
 */
static void limit_sweep(void)
{
    static const char *const need[] = {
        "alloc paging", "map blocks and pages", "map",
        "unmap splitting blocks",
    };
    unsigned per_need[sizeof(need) / sizeof(need[0])] = { 0 };
    const char *op = NULL;
    uint64_t limit;

    for (limit = 1; run(0, limit, &op); limit++) {
        for (unsigned i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
            per_need[i] += !strcmp(op, need[i]);
        }
        CHECK(limit < 100000);
    }
    printf("table limit: the sequence needs %" PRIu64 " tables; met by\n",
           limit);
    for (unsigned i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
        printf("  %-26s %u\n", need[i], per_need[i]);
        CHECK(per_need[i] > 0);
    }
}

int main(void)
{
    static const char *const need[] = {
        "engine init", "alloc paging", "alloc nested", "map blocks and pages",
        "map", "attach", "switch", "unmap splitting blocks",
        "unmap a page of a block",
    };
    unsigned per_need[sizeof(need) / sizeof(need[0])] = { 0 };
    unsigned long nth;
    const char *op = NULL;

    build_ops();
    for (nth = 1; run(nth, 0, &op); nth++) {
        for (unsigned i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
            per_need[i] += !strcmp(op, need[i]);
        }
        CHECK(nth < 100000);
    }
    printf("fail_nth: %u operations, %lu allocations, each failed in turn\n",
           nops, nth - 1);
    for (unsigned i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
        printf("  %-26s %u\n", need[i], per_need[i]);
        CHECK(per_need[i] > 0);     /* every allocating op met a failure */
    }
    limit_sweep();
    printf("ok\n");
    return 0;
}

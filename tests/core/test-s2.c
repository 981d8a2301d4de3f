/* Unit test: the stage-2 radix table (blocks, splits, validation, memory). */
#include "check.h"
#include "il-s2.h"
#include "il-alloc.h"

#define KiB 1024ULL
#define MiB (1024 * KiB)
#define GiB (1024 * MiB)

typedef struct Collect {
    ILMapping m[16];
    int n;
} Collect;

static void collect(void *opaque, const ILMapping *m)
{
    Collect *c = opaque;

    CHECK(c->n < 16);
    c->m[c->n++] = *m;
}

static uint64_t lookup(ILS2 *s2, uint64_t iova, unsigned *perm,
                       unsigned *shift)
{
    ILLookup lk;
    ILFaultReason reason;

    CHECK(il_s2_lookup(s2, iova, &lk, &reason));
    *perm = lk.perm;
    *shift = lk.shift;
    return lk.addr;
}

static void test_blocks_and_split(void)
{
    ILS2 s2;
    ILMapping m = { .iova = GiB, .size = GiB + 2 * MiB + 4 * KiB,
                    .addr = 3 * GiB, .perm = IL_PERM_RW };
    unsigned perm, shift;
    uint64_t bytes;
    size_t bad;
    ILLookup lk;
    ILFaultReason reason;
    Collect c = { .n = 0 };

    CHECK_EQ(il_s2_init(&s2, 48), IL_OK);
    CHECK_EQ(s2.levels, 4);
    CHECK_EQ(il_s2_map_batch(&s2, &m, 1, &bad), IL_OK);
    CHECK_EQ(s2.mapped, m.size);
    /* 1 GiB block, then a 2 MiB block, then a 4 KiB page. */
    CHECK_EQ(lookup(&s2, GiB + 0x1234, &perm, &shift), 3 * GiB + 0x1234);
    CHECK_EQ(shift, 30);
    CHECK_EQ(perm, IL_PERM_RW);
    CHECK_EQ(lookup(&s2, 2 * GiB + MiB, &perm, &shift), 4 * GiB + MiB);
    CHECK_EQ(shift, 21);
    CHECK_EQ(lookup(&s2, 2 * GiB + 2 * MiB + 8, &perm, &shift),
             4 * GiB + 2 * MiB + 8);
    CHECK_EQ(shift, 12);
    CHECK(!il_s2_lookup(&s2, 2 * GiB + 2 * MiB + 4 * KiB, &lk, &reason));
    CHECK_EQ(reason, IL_REASON_NOT_PRESENT);
    CHECK(!il_s2_lookup(&s2, 1ULL << 48, &lk, &reason));
    CHECK_EQ(reason, IL_REASON_ADDRESS_SIZE);
    /* root + L3 + L2 (for the 2M block) + L1 for the page */
    CHECK_EQ(s2.tables, 4);

    /* Unmapping one page in the middle of the 1 GiB block splits it. */
    CHECK_EQ(il_s2_unmap(&s2, GiB + 4 * MiB + 4 * KiB, 4 * KiB, &bytes),
             IL_OK);
    CHECK_EQ(bytes, 4 * KiB);
    CHECK(!il_s2_lookup(&s2, GiB + 4 * MiB + 4 * KiB, &lk, &reason));
    CHECK_EQ(lookup(&s2, GiB + 4 * MiB, &perm, &shift), 3 * GiB + 4 * MiB);
    CHECK_EQ(shift, 12);
    CHECK_EQ(lookup(&s2, GiB + 6 * MiB, &perm, &shift), 3 * GiB + 6 * MiB);
    CHECK_EQ(shift, 21);
    CHECK_EQ(s2.mapped, m.size - 4 * KiB);

    /* The walk merges back to two runs around the hole. */
    il_s2_for_each(&s2, collect, &c);
    CHECK_EQ(c.n, 2);
    CHECK_EQ(c.m[0].iova, GiB);
    CHECK_EQ(c.m[0].size, 4 * MiB + 4 * KiB);
    CHECK_EQ(c.m[1].iova, GiB + 4 * MiB + 8 * KiB);
    CHECK_EQ(c.m[1].addr, 3 * GiB + 4 * MiB + 8 * KiB);
    CHECK_EQ(c.m[0].size + c.m[1].size, s2.mapped);

    /* Unmapping a large range with holes counts only mapped bytes. */
    CHECK_EQ(il_s2_unmap(&s2, 0, 1ULL << 40, &bytes), IL_OK);
    CHECK_EQ(bytes, m.size - 4 * KiB);
    CHECK_EQ(s2.mapped, 0);
    CHECK_EQ(s2.tables, 1);     /* empty tables are freed */
    il_s2_destroy(&s2);
}

static void test_validation(void)
{
    ILS2 s2;
    size_t bad = 99;
    ILMapping ok = { .iova = 0x10000, .size = 0x4000, .addr = 0x80000,
                     .perm = IL_PERM_R };
    ILMapping m[3];

    CHECK_EQ(il_s2_init(&s2, 39), IL_OK);
    CHECK_EQ(s2.levels, 3);
    il_s2_destroy(&s2);
    CHECK_EQ(il_s2_init(&s2, 20), IL_ERR_INVAL);
    CHECK_EQ(il_s2_init(&s2, 58), IL_ERR_INVAL);
    CHECK_EQ(il_s2_init(&s2, 39), IL_OK);

    m[0] = ok;
    m[1] = ok;
    m[1].iova += 0x800;
    CHECK_EQ(il_s2_map_batch(&s2, m, 2, &bad), IL_ERR_ALIGN);
    CHECK_EQ(bad, 1);
    m[1] = ok;
    m[1].size = 0;
    CHECK_EQ(il_s2_map_batch(&s2, m, 2, &bad), IL_ERR_SIZE);
    m[1] = ok;
    m[1].addr = UINT64_MAX - 0xfff;
    CHECK_EQ(il_s2_map_batch(&s2, m, 2, &bad), IL_ERR_OVERFLOW);
    m[1] = ok;
    m[1].iova = (1ULL << 39) - 0x1000;
    m[1].size = 0x2000;
    CHECK_EQ(il_s2_map_batch(&s2, m, 2, &bad), IL_ERR_IAS);
    m[1] = ok;
    m[1].iova = UINT64_MAX - 0xfff;
    m[1].size = 0x2000;
    CHECK_EQ(il_s2_map_batch(&s2, m, 2, &bad), IL_ERR_OVERFLOW);
    m[1] = ok;
    m[1].iova = 0x100000;
    m[1].perm = 0;
    CHECK_EQ(il_s2_map_batch(&s2, m, 2, &bad), IL_ERR_PERM);
    /* overlap inside the batch: names the later range */
    m[1] = ok;
    m[1].iova = 0x13000;
    m[2] = ok;
    m[2].iova = 0x100000;
    CHECK_EQ(il_s2_map_batch(&s2, m, 3, &bad), IL_ERR_OVERLAP_BATCH);
    CHECK_EQ(bad, 1);
    /* nothing was applied by any failed batch */
    CHECK_EQ(s2.mapped, 0);
    CHECK_EQ(s2.tables, 1);

    CHECK_EQ(il_s2_map_batch(&s2, &ok, 1, &bad), IL_OK);
    m[0] = ok;
    m[0].iova = 0x200000;
    m[1] = ok;
    m[1].iova = 0x13000;        /* overlaps the existing last page */
    CHECK_EQ(il_s2_map_batch(&s2, m, 2, &bad), IL_ERR_OVERLAP);
    CHECK_EQ(bad, 1);
    CHECK(!il_s2_any_mapped(&s2, 0x200000, 0x203fff));
    CHECK(il_s2_any_mapped(&s2, 0x13fff, 0x13fff));
    CHECK(!il_s2_any_mapped(&s2, 0x14000, UINT64_MAX));
    CHECK_EQ(s2.mapped, 0x4000);
    CHECK_EQ(il_check_range(0, 0x1000, 39), IL_OK);
    CHECK_EQ(il_check_range(0, 0, 39), IL_ERR_SIZE);
    CHECK_EQ(il_check_range(UINT64_MAX - 0xfff, 0x1000, 64), IL_OK);
    CHECK_EQ(il_check_range(UINT64_MAX - 0xfff, 0x2000, 64), IL_ERR_OVERFLOW);
    il_s2_destroy(&s2);
}

/*
 * Over the table budget a batch fails with IL_ERR_NOMEM and leaves the
 * mappings and the tables exactly as they were (a QMP client cannot make
 * QEMU allocate without bound, nor half-apply a batch).
 */
static void test_table_budget(void)
{
    ILS2 s2;
    ILMapping keep = { .iova = 0, .size = 4 * KiB, .addr = 0,
                       .perm = IL_PERM_RW };
    /* 4 KiB leaves (addr unaligned to 2 MiB) across three 2 MiB regions. */
    ILMapping m[2] = {
        { .iova = 4 * MiB, .size = 2 * MiB, .addr = 4 * KiB,
          .perm = IL_PERM_R },
        { .iova = GiB, .size = 4 * MiB, .addr = 4 * KiB + 2 * MiB,
          .perm = IL_PERM_W },
    };
    uint64_t tables;
    size_t bad = 99;
    ILLookup lk;
    ILFaultReason reason;

    CHECK_EQ(il_s2_init(&s2, 48), IL_OK);
    CHECK_EQ(s2.max_tables, IL_S2_MAX_TABLES);
    CHECK_EQ(il_s2_map_batch(&s2, &keep, 1, &bad), IL_OK);
    tables = s2.tables;                 /* root + 3 tables down to 0 */
    CHECK_EQ(tables, 4);
    /* m[0] needs 1 leaf table; m[1] a new L2 table and 2 leaf tables. */
    s2.max_tables = tables + 2;
    CHECK_EQ(il_s2_map_batch(&s2, m, 2, &bad), IL_ERR_NOMEM);
    CHECK_EQ(bad, 1);
    CHECK_EQ(s2.tables, tables);
    CHECK_EQ(s2.mapped, 4 * KiB);
    CHECK(!il_s2_any_mapped(&s2, 4 * MiB, UINT64_MAX));
    CHECK(il_s2_lookup(&s2, 0x123, &lk, &reason));
    /* Failing inside the first range rolls back its own first part. */
    s2.max_tables = tables;
    CHECK_EQ(il_s2_map_batch(&s2, &m[1], 1, &bad), IL_ERR_NOMEM);
    CHECK_EQ(bad, 0);
    CHECK_EQ(s2.tables, tables);
    CHECK(!il_s2_any_mapped(&s2, 4 * MiB, UINT64_MAX));
    /* With the budget back, the same batch maps. */
    s2.max_tables = IL_S2_MAX_TABLES;
    CHECK_EQ(il_s2_map_batch(&s2, m, 2, &bad), IL_OK);
    CHECK_EQ(s2.mapped, 4 * KiB + 6 * MiB);
    CHECK_EQ(s2.tables, tables + 4);
    il_s2_destroy(&s2);
}

/*
 * Unmapping part of a block splits it, which needs tables.  Over the budget
 * the unmap fails with IL_ERR_NOMEM before changing anything (it used to
 * dereference the NULL table); with room for exactly the tables it needs it
 * succeeds, and ranges of one batch inside one block share its split table.
 */
static void test_split_budget(void)
{
    ILS2 s2;
    ILMapping g = { .iova = GiB, .size = GiB, .addr = 0,
                    .perm = IL_PERM_RW };
    ILMapping two[2] = {
        { .iova = GiB + 4 * MiB + 4 * KiB, .size = 4 * KiB },
        { .iova = GiB + 4 * MiB + 12 * KiB, .size = 4 * KiB },
    };
    ILS2Reserve res;
    uint64_t tables, bytes = 99;
    unsigned perm, shift;
    size_t bad;

    CHECK_EQ(il_s2_init(&s2, 48), IL_OK);
    CHECK_EQ(il_s2_map_batch(&s2, &g, 1, &bad), IL_OK);
    tables = s2.tables;
    CHECK_EQ(tables, 2);                    /* root, L3 with a 1 GiB leaf */
    /* 4 KiB out of the 1 GiB block: a table of 2 MiB and one of 4 KiB. */
    s2.max_tables = tables + 1;
    CHECK_EQ(il_s2_unmap(&s2, GiB + 2 * MiB, 4 * KiB, &bytes),
             IL_ERR_NOMEM);
    CHECK_EQ(bytes, 0);
    CHECK_EQ(s2.tables, tables);
    CHECK_EQ(s2.mapped, GiB);
    CHECK_EQ(lookup(&s2, GiB + 2 * MiB, &perm, &shift), 2 * MiB);
    CHECK_EQ(shift, 30);
    /* A 2 MiB piece needs one table only. */
    CHECK_EQ(il_s2_unmap(&s2, GiB, 2 * MiB, &bytes), IL_OK);
    CHECK_EQ(bytes, 2 * MiB);
    CHECK_EQ(s2.tables, tables + 1);
    CHECK_EQ(lookup(&s2, GiB + 2 * MiB, &perm, &shift), 2 * MiB);
    CHECK_EQ(shift, 21);
    /* Two pages of one 2 MiB block in one batch: one table. */
    tables = s2.tables;
    s2.max_tables = tables + 1;
    CHECK_EQ(il_s2_unmap_reserve(&s2, two, 2, &res), IL_OK);
    CHECK_EQ(res.count, 1);
    CHECK_EQ(s2.tables, tables + 1);
    CHECK_EQ(il_s2_unmap_reserved(&s2, two[0].iova, two[0].size, &res),
             4 * KiB);
    CHECK_EQ(il_s2_unmap_reserved(&s2, two[1].iova, two[1].size, &res),
             4 * KiB);
    il_s2_unmap_release(&s2, &res);
    CHECK_EQ(s2.tables, tables + 1);
    CHECK_EQ(lookup(&s2, GiB + 4 * MiB + 8 * KiB, &perm, &shift),
             4 * MiB + 8 * KiB);
    CHECK_EQ(shift, 12);
    CHECK_EQ(s2.mapped, GiB - 2 * MiB - 8 * KiB);
    /* A reservation released unused gives its tables back. */
    s2.max_tables = IL_S2_MAX_TABLES;
    two[0].iova = GiB + 8 * MiB;
    CHECK_EQ(il_s2_unmap_reserve(&s2, two, 1, &res), IL_OK);
    CHECK_EQ(res.count, 1);
    il_s2_unmap_release(&s2, &res);
    CHECK_EQ(s2.tables, tables + 1);
    CHECK_EQ(s2.mapped, GiB - 2 * MiB - 8 * KiB);
    il_s2_destroy(&s2);
    CHECK_EQ(s2.tables, 0);
    CHECK_EQ(il_fail_nth_live(), 0);
}

int main(void)
{
    test_blocks_and_split();
    test_validation();
    test_table_budget();
    test_split_budget();
    printf("ok\n");
    return 0;
}

/*
 * iommulab core: unmapping from a stage-2 table.  Unmapping part of a block
 * splits it, and the tables for that are reserved first (il_s2_unmap_reserve:
 * an upper bound read from the tables as they are) so that the unmap itself
 * cannot fail: either every range of a batch is unmapped or nothing changed.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "il-s2-internal.h"

/* Take a table reserved by il_s2_unmap_reserve() (counted already). */
static ILS2Table *s2_reserve_take(ILS2Reserve *res)
{
    ILS2Table *t = res->pool;

    if (t) {
        res->pool = s2_child(t->e[0]);
        t->e[0] = 0;
        res->count--;
    }
    return t;
}

static uint64_t s2_unmap_table(ILS2 *s2, ILS2Table *t, unsigned shift,
                               uint64_t base, uint64_t first, uint64_t last,
                               ILS2Reserve *res)
{
    unsigned i0 = first > base ? (first - base) >> shift : 0;
    uint64_t li = (last - base) >> shift;
    unsigned i1 = li >= IL_TABLE_ENTRIES ? IL_TABLE_ENTRIES - 1 : li;
    uint64_t bytes = 0;

    for (unsigned i = i0; i <= i1; i++) {
        uint64_t e = t->e[i];
        uint64_t ebase = base + ((uint64_t)i << shift);
        uint64_t elast = ebase + ((1ULL << shift) - 1);
        bool covered = first <= ebase && elast <= last;
        ILS2Table *child;

        if (!(e & S2_V)) {
            continue;
        }
        if (!(e & S2_T) || shift == IL_PAGE_SHIFT) {
            if (covered) {
                t->e[i] = 0;
                t->used--;
                bytes += 1ULL << shift;
                continue;
            }
            /*
             * Split the block into a table of smaller leaves, with a table
             * reserved before anything changed.  The reservation is an upper
             * bound (il_s2_unmap_reserve()); should it ever run dry, the
             * block stays mapped rather than the unmap crashing.
             */
            child = res ? s2_reserve_take(res) : NULL;
            if (!child) {
                continue;
            }
            for (unsigned j = 0; j < IL_TABLE_ENTRIES; j++) {
                child->e[j] = s2_leaf((e & S2_ADDR) +
                                      ((uint64_t)j << (shift - IL_LEVEL_BITS)),
                                      s2_perm(e));
            }
            child->used = IL_TABLE_ENTRIES;
            e = (uint64_t)(uintptr_t)child | S2_V | S2_T;
            t->e[i] = e;
        }
        child = s2_child(e);
        if (covered) {
            bytes += il_s2_free_table(s2, child, shift - IL_LEVEL_BITS);
        } else {
            bytes += s2_unmap_table(s2, child, shift - IL_LEVEL_BITS, ebase,
                                    first, last, res);
            if (child->used) {
                continue;
            }
            il_s2_table_free(s2, child);
        }
        t->e[i] = 0;
        t->used--;
    }
    return bytes;
}

/* Clip [iova, iova + size) to the input address size; false if outside. */
static bool s2_clip(const ILS2 *s2, uint64_t iova, uint64_t size,
                    uint64_t *last)
{
    if (iova >> s2->ias) {
        return false;
    }
    *last = iova + (size - 1);
    if (*last >> s2->ias) {
        *last = (1ULL << s2->ias) - 1;
    }
    return true;
}

uint64_t il_s2_unmap_range(ILS2 *s2, uint64_t iova, uint64_t size,
                           ILS2Reserve *res)
{
    uint64_t last, bytes;

    if (!s2_clip(s2, iova, size, &last)) {
        return 0;
    }
    bytes = s2_unmap_table(s2, s2->root, s2->top_shift, 0, iova, last, res);
    s2->mapped -= bytes;
    return bytes;
}

/* A block an unmap splits: its base and log2 size. */
typedef struct S2Split {
    uint64_t base;
    uint64_t shift;
} S2Split;

static bool s2_split_add(S2Split *v, size_t *n, uint64_t base, unsigned shift)
{
    for (size_t i = 0; i < *n; i++) {
        if (v[i].base == base && v[i].shift == shift) {
            return false;
        }
    }
    v[*n].base = base;
    v[*n].shift = shift;
    (*n)++;
    return true;
}

/*
 * The blocks that unmapping [first, last] splits, appended to v (at most
 * 2 per level above the last, i.e. 4; repeats of a block already in v are
 * not added again).  A block is split when the range covers part of it; the
 * smaller blocks it is split into are split again under the same rule, so
 * every split block contains first or last.  Reading the tables as they are
 * before the unmap gives an upper bound for a batch as well: an earlier
 * range of the batch can only remove blocks, never add one to split.
 */
static void s2_splits(const ILS2 *s2, uint64_t first, uint64_t last,
                      S2Split *v, size_t *n)
{
    const uint64_t edges[2] = { first, last };

    for (unsigned k = 0; k < 2; k++) {
        const ILS2Table *t = s2->root;
        unsigned shift = s2->top_shift;
        uint64_t e;

        for (;;) {
            e = t->e[s2_index(edges[k], shift)];
            if (!(e & S2_V) || !(e & S2_T) || shift == IL_PAGE_SHIFT) {
                break;
            }
            t = s2_child(e);
            shift -= IL_LEVEL_BITS;
        }
        if (!(e & S2_V)) {
            continue;
        }
        for (; shift > IL_PAGE_SHIFT; shift -= IL_LEVEL_BITS) {
            uint64_t base = edges[k] & ~((1ULL << shift) - 1);

            if (first <= base && base + ((1ULL << shift) - 1) <= last) {
                break;          /* covered: removed whole, with what is below */
            }
            s2_split_add(v, n, base, shift);
        }
    }
}

/* Tables needed to split the blocks of an unmap of ranges; 0 if none. */
static ILError s2_count_splits(const ILS2 *s2, const ILMapping *ranges,
                               size_t n, uint64_t *count)
{
    S2Split one[4], *v;
    size_t nv = 0, total = 0;
    uint64_t last;

    /* Most unmaps split nothing: find out without allocating. */
    for (size_t i = 0; i < n; i++) {
        nv = 0;
        if (s2_clip(s2, ranges[i].iova, ranges[i].size, &last)) {
            s2_splits(s2, ranges[i].iova, last, one, &nv);
        }
        total += nv;
    }
    *count = total;
    if (total == 0 || n == 1) {
        return IL_OK;
    }
    /* Ranges of one batch may split the same block: count it once. */
    v = il_zalloc_array(total, sizeof(*v));
    if (!v) {
        return IL_ERR_NOMEM;
    }
    nv = 0;
    for (size_t i = 0; i < n; i++) {
        if (s2_clip(s2, ranges[i].iova, ranges[i].size, &last)) {
            s2_splits(s2, ranges[i].iova, last, v, &nv);
        }
    }
    il_free(v);
    *count = nv;
    return IL_OK;
}

ILError il_s2_unmap_reserve(ILS2 *s2, const ILMapping *ranges, size_t n,
                            ILS2Reserve *res)
{
    uint64_t count;
    ILError err;

    res->pool = NULL;
    res->count = 0;
    err = s2_count_splits(s2, ranges, n, &count);
    if (err != IL_OK) {
        return err;
    }
    err = il_s2_room(s2, count);
    if (err != IL_OK) {
        return err;
    }
    while (res->count < count) {
        ILS2Table *t = il_s2_table_new(s2);

        if (!t) {
            err = s2->fail;
            il_s2_unmap_release(s2, res);
            return err;
        }
        /* A reserved table counts against the budget until released. */
        t->e[0] = (uint64_t)(uintptr_t)res->pool;
        res->pool = t;
        res->count++;
    }
    return IL_OK;
}

uint64_t il_s2_unmap_reserved(ILS2 *s2, uint64_t iova, uint64_t size,
                              ILS2Reserve *res)
{
    return il_s2_unmap_range(s2, iova, size, res);
}

void il_s2_unmap_release(ILS2 *s2, ILS2Reserve *res)
{
    ILS2Table *t;

    while ((t = s2_reserve_take(res))) {
        il_s2_table_free(s2, t);
    }
}

ILError il_s2_unmap(ILS2 *s2, uint64_t iova, uint64_t size,
                    uint64_t *unmapped)
{
    ILMapping r = { .iova = iova, .size = size };
    ILS2Reserve res;
    ILError err;

    *unmapped = 0;
    err = il_s2_unmap_reserve(s2, &r, 1, &res);
    if (err != IL_OK) {
        return err;
    }
    *unmapped = il_s2_unmap_range(s2, iova, size, &res);
    il_s2_unmap_release(s2, &res);
    return IL_OK;
}

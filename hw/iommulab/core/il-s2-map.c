/*
 * iommulab core: mapping into a stage-2 table.  A batch is validated whole
 * (each range, against existing mappings and against the others) before any
 * range is applied, and a range that cannot get its tables is rolled back:
 * all or nothing.  Leaves are 1 GiB or 2 MiB blocks where the range and the
 * output are aligned, 4 KiB pages otherwise.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdlib.h>
#include "il-s2-internal.h"

static bool s2_any_mapped(const ILS2Table *t, unsigned shift, uint64_t base,
                          uint64_t first, uint64_t last)
{
    unsigned i0 = first > base ? (first - base) >> shift : 0;
    uint64_t li = (last - base) >> shift;
    unsigned i1 = li >= IL_TABLE_ENTRIES ? IL_TABLE_ENTRIES - 1 : li;

    for (unsigned i = i0; i <= i1; i++) {
        uint64_t e = t->e[i];
        uint64_t ebase = base + ((uint64_t)i << shift);
        uint64_t elast = ebase + ((1ULL << shift) - 1);

        if (!(e & S2_V)) {
            continue;
        }
        if (!(e & S2_T) || shift == IL_PAGE_SHIFT ||
            (first <= ebase && elast <= last)) {
            return true;    /* a leaf, or a (never empty) table fully inside */
        }
        if (s2_any_mapped(s2_child(e), shift - IL_LEVEL_BITS, ebase,
                          first, last)) {
            return true;
        }
    }
    return false;
}

bool il_s2_any_mapped(const ILS2 *s2, uint64_t first, uint64_t last)
{
    if (first >> s2->ias) {
        return false;
    }
    return s2_any_mapped(s2->root, s2->top_shift, 0, first, last);
}

static bool s2_set_leaf(ILS2 *s2, uint64_t iova, unsigned leaf_shift,
                        uint64_t addr, unsigned perm)
{
    ILS2Table *t = s2->root;
    unsigned shift = s2->top_shift;

    while (shift > leaf_shift) {
        uint64_t *e = &t->e[s2_index(iova, shift)];

        if (!(*e & S2_V)) {
            ILS2Table *child = il_s2_table_new(s2);

            if (!child) {
                return false;
            }
            *e = (uint64_t)(uintptr_t)child | S2_V | S2_T;
            t->used++;
        }
        t = s2_child(*e);
        shift -= IL_LEVEL_BITS;
    }
    t->e[s2_index(iova, shift)] = s2_leaf(addr, perm);
    t->used++;
    return true;
}

/* Free the empty tables on the path to @iova (left by a failed s2_set_leaf). */
static void s2_prune_path(ILS2 *s2, uint64_t iova)
{
    ILS2Table *path[8];
    uint64_t *slot[8];
    unsigned n = 0, shift = s2->top_shift;
    ILS2Table *t = s2->root;

    while (shift > IL_PAGE_SHIFT) {
        uint64_t *e = &t->e[s2_index(iova, shift)];

        if (!(*e & S2_V) || !(*e & S2_T)) {
            break;
        }
        path[n] = t;
        slot[n++] = e;
        t = s2_child(*e);
        shift -= IL_LEVEL_BITS;
    }
    while (n && t->used == 0) {
        il_s2_table_free(s2, t);
        *slot[--n] = 0;
        t = path[n];
        t->used--;
    }
}

/*
 * Map one range; false, with the range and the tables exactly as before,
 * when a table could not be allocated (over budget or out of memory).
 */
static bool s2_map_range(ILS2 *s2, const ILMapping *m)
{
    uint64_t iova = m->iova, addr = m->addr, left = m->size;

    while (left) {
        unsigned shift = IL_PAGE_SHIFT;

        for (unsigned bs = 30; bs >= 21; bs -= IL_LEVEL_BITS) {
            uint64_t bsize = 1ULL << bs;

            if (bs <= s2->top_shift && left >= bsize &&
                !((iova | addr) & (bsize - 1))) {
                shift = bs;
                break;
            }
        }
        if (!s2_set_leaf(s2, iova, shift, addr, m->perm)) {
            s2_prune_path(s2, iova);
            if (iova != m->iova) {
                /* unmapping subtracts it; no block to split in our range */
                s2->mapped += iova - m->iova;
                il_s2_unmap_range(s2, m->iova, iova - m->iova, NULL);
            }
            return false;
        }
        iova += 1ULL << shift;
        addr += 1ULL << shift;
        left -= 1ULL << shift;
    }
    s2->mapped += m->size;
    return true;
}

typedef struct S2Span {
    uint64_t first;
    uint64_t last;
    size_t index;
} S2Span;

static int cmp_span(const void *a, const void *b)
{
    uint64_t x = ((const S2Span *)a)->first;
    uint64_t y = ((const S2Span *)b)->first;

    return x < y ? -1 : x > y;
}

ILError il_s2_map_batch(ILS2 *s2, const ILMapping *maps, size_t n,
                        size_t *bad_index)
{
    ILError err;
    bool sorted = true;

    for (size_t i = 0; i < n; i++) {
        err = il_s2_check_mapping(s2, &maps[i]);
        if (err == IL_OK &&
            il_s2_any_mapped(s2, maps[i].iova,
                             maps[i].iova + (maps[i].size - 1))) {
            err = IL_ERR_OVERLAP;
        }
        if (err != IL_OK) {
            *bad_index = i;
            return err;
        }
    }
    /* A batch in iova order (as control planes send them) needs no sort. */
    for (size_t k = 1; k < n && sorted; k++) {
        sorted = maps[k - 1].iova + (maps[k - 1].size - 1) < maps[k].iova;
    }
    if (!sorted) {
        S2Span *spans = il_zalloc_array(n, sizeof(*spans));

        if (!spans) {
            *bad_index = 0;
            return IL_ERR_NOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            spans[i].first = maps[i].iova;
            spans[i].last = maps[i].iova + (maps[i].size - 1);
            spans[i].index = i;
        }
        qsort(spans, n, sizeof(*spans), cmp_span);
        for (size_t i = 1; i < n; i++) {
            if (spans[i - 1].last >= spans[i].first) {
                *bad_index = spans[i].index > spans[i - 1].index ?
                             spans[i].index : spans[i - 1].index;
                il_free(spans);
                return IL_ERR_OVERLAP_BATCH;
            }
        }
        il_free(spans);
    }
    for (size_t i = 0; i < n; i++) {
        if (!s2_map_range(s2, &maps[i])) {
            /* All or nothing: take back the ranges already mapped. */
            for (size_t j = 0; j < i; j++) {
                il_s2_unmap_range(s2, maps[j].iova, maps[j].size, NULL);
            }
            *bad_index = i;
            return s2->fail;
        }
    }
    return IL_OK;
}

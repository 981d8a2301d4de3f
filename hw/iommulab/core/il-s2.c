/*
 * iommulab core: stage-2 radix table in host memory (il-s2.h).  This file
 * holds the table's memory (allocation against the domain's budget and the
 * engine's pool, init and destroy) and what reads it: the lookup that
 * translation does, validation of ranges, and the ordered walk of the
 * mappings.  Changing it is in il-s2-map.c and il-s2-unmap.c; the layout
 * they share is in il-s2-internal.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <string.h>
#include "il-s2-internal.h"

ILS2Table *il_s2_table_new(ILS2 *s2)
{
    ILS2Table *t;

    s2->fail = il_s2_room(s2, 1);
    if (s2->fail != IL_OK) {
        return NULL;
    }
    t = il_zalloc(sizeof(*t));
    if (!t) {
        s2->fail = IL_ERR_NOMEM;
        return NULL;
    }
    s2->tables++;
    if (s2->pool) {
        s2->pool->tables++;
    }
    return t;
}

const char *il_strerror(ILError err)
{
    switch (err) {
    case IL_OK:
        return "success";
    case IL_ERR_ALIGN:
        return "not aligned to 4 KiB";
    case IL_ERR_SIZE:
        return "size is zero";
    case IL_ERR_OVERFLOW:
        return "range wraps past 2^64";
    case IL_ERR_IAS:
        return "range exceeds the domain's input address size";
    case IL_ERR_PERM:
        return "neither read nor write allowed";
    case IL_ERR_OVERLAP:
        return "overlaps an existing mapping";
    case IL_ERR_OVERLAP_BATCH:
        return "overlaps another mapping of the same request";
    case IL_ERR_EXISTS:
        return "domain id already exists";
    case IL_ERR_NOENT:
        return "no such domain";
    case IL_ERR_TYPE:
        return "wrong domain type";
    case IL_ERR_BUSY:
        return "domain is in use";
    case IL_ERR_INVAL:
        return "invalid argument";
    case IL_ERR_NOMEM:
        return "would exceed the domain's page-table budget or host memory";
    case IL_ERR_NOSPC:
        return "too many domains";
    case IL_ERR_LIMIT:
        return "would exceed the page-table memory limit shared by all "
               "domains";
    }
    return "unknown error";
}

ILError il_s2_init_pool(ILS2 *s2, unsigned ias, ILTablePool *pool)
{
    if (ias < IL_S2_IAS_MIN || ias > IL_S2_IAS_MAX) {
        return IL_ERR_INVAL;
    }
    memset(s2, 0, sizeof(*s2));
    s2->ias = ias;
    s2->levels = (ias - IL_PAGE_SHIFT + IL_LEVEL_BITS - 1) / IL_LEVEL_BITS;
    s2->top_shift = IL_PAGE_SHIFT + IL_LEVEL_BITS * (s2->levels - 1);
    s2->max_tables = IL_S2_MAX_TABLES;
    s2->pool = pool;
    s2->root = il_s2_table_new(s2);
    return s2->root ? IL_OK : s2->fail;
}

ILError il_s2_init(ILS2 *s2, unsigned ias)
{
    return il_s2_init_pool(s2, ias, NULL);
}

uint64_t il_s2_free_table(ILS2 *s2, ILS2Table *t, unsigned shift)
{
    uint64_t bytes = 0;

    for (unsigned i = 0; i < IL_TABLE_ENTRIES && t->used; i++) {
        uint64_t e = t->e[i];

        if (!(e & S2_V)) {
            continue;
        }
        if ((e & S2_T) && shift > IL_PAGE_SHIFT) {
            bytes += il_s2_free_table(s2, s2_child(e), shift - IL_LEVEL_BITS);
        } else {
            bytes += 1ULL << shift;
        }
        t->used--;
    }
    il_s2_table_free(s2, t);
    return bytes;
}

void il_s2_destroy(ILS2 *s2)
{
    if (s2->root) {
        il_s2_free_table(s2, s2->root, s2->top_shift);
        s2->root = NULL;
    }
    s2->mapped = 0;
}

bool il_s2_lookup(const ILS2 *s2, uint64_t iova, ILLookup *out,
                  ILFaultReason *reason)
{
    const ILS2Table *t = s2->root;
    unsigned shift = s2->top_shift;

    if (iova >> s2->ias) {
        *reason = IL_REASON_ADDRESS_SIZE;
        return false;
    }
    for (;;) {
        uint64_t e = t->e[s2_index(iova, shift)];

        if (!(e & S2_V)) {
            *reason = IL_REASON_NOT_PRESENT;
            return false;
        }
        if ((e & S2_T) && shift > IL_PAGE_SHIFT) {
            t = s2_child(e);
            shift -= IL_LEVEL_BITS;
            continue;
        }
        out->addr = (e & S2_ADDR) + (iova & ((1ULL << shift) - 1));
        out->perm = s2_perm(e);
        out->shift = shift;
        return true;
    }
}

ILError il_check_range(uint64_t iova, uint64_t size, unsigned ias)
{
    if (size == 0) {
        return IL_ERR_SIZE;
    }
    if ((iova | size) & IL_PAGE_MASK) {
        return IL_ERR_ALIGN;
    }
    if (size - 1 > UINT64_MAX - iova) {
        return IL_ERR_OVERFLOW;
    }
    if (ias < 64 && ((iova + (size - 1)) >> ias)) {
        return IL_ERR_IAS;
    }
    return IL_OK;
}

ILError il_s2_check_mapping(const ILS2 *s2, const ILMapping *m)
{
    ILError err = il_check_range(m->iova, m->size, 64);

    if (err != IL_OK) {
        return err;
    }
    if (m->addr & IL_PAGE_MASK) {
        return IL_ERR_ALIGN;
    }
    if (m->size - 1 > UINT64_MAX - m->addr) {
        return IL_ERR_OVERFLOW;
    }
    if ((m->iova + (m->size - 1)) >> s2->ias) {
        return IL_ERR_IAS;
    }
    if (m->perm & ~IL_PERM_RW) {
        return IL_ERR_INVAL;
    }
    if (!(m->perm & IL_PERM_RW)) {
        return IL_ERR_PERM;
    }
    return IL_OK;
}

typedef struct S2Walk {
    ILS2WalkFn *fn;
    void *opaque;
    ILMapping run;
    uint64_t start;             /* below: skipped; across it: clipped */
    uint64_t max;               /* runs to report (0: all) */
    uint64_t count;             /* runs reported */
    bool stop;                  /* max reached and another run starts at next */
    uint64_t next;
} S2Walk;

static void s2_walk_leaf(S2Walk *w, uint64_t iova, uint64_t size,
                         uint64_t addr, unsigned perm)
{
    ILMapping *r = &w->run;

    if (r->size && r->iova + r->size == iova && r->addr + r->size == addr &&
        r->perm == perm) {
        r->size += size;
        return;
    }
    if (r->size) {
        w->fn(w->opaque, r);
        if (++w->count == w->max) {
            w->stop = true;     /* no room for the run this leaf starts */
            w->next = iova;
            return;
        }
    }
    r->iova = iova;
    r->size = size;
    r->addr = addr;
    r->perm = perm;
}

/*
 * Leaves at or above w->start, in iova order.  Entries wholly below it are
 * skipped by index, so a page starts after O(levels) work, not after a walk
 * of everything before it.
 */
static void s2_walk_table(S2Walk *w, const ILS2Table *t, unsigned shift,
                          uint64_t base)
{
    uint64_t first = 0;

    if (w->start > base) {
        first = (w->start - base) >> shift;   /* start lies inside this table */
    }
    for (uint64_t i = first; i < IL_TABLE_ENTRIES && !w->stop; i++) {
        uint64_t e = t->e[i];
        uint64_t ebase = base + ((uint64_t)i << shift);
        uint64_t skip;

        if (!(e & S2_V)) {
            continue;
        }
        if ((e & S2_T) && shift > IL_PAGE_SHIFT) {
            s2_walk_table(w, s2_child(e), shift - IL_LEVEL_BITS, ebase);
        } else {
            skip = w->start > ebase ? w->start - ebase : 0;
            s2_walk_leaf(w, ebase + skip, (1ULL << shift) - skip,
                         (e & S2_ADDR) + skip, s2_perm(e));
        }
    }
}

bool il_s2_walk_page(const ILS2 *s2, uint64_t start, uint64_t max,
                     ILS2WalkFn *fn, void *opaque, uint64_t *next)
{
    S2Walk w = { .fn = fn, .opaque = opaque, .start = start, .max = max };

    if (s2->top_shift + IL_LEVEL_BITS >= 64 ||
        start < (1ULL << (s2->top_shift + IL_LEVEL_BITS))) {
        s2_walk_table(&w, s2->root, s2->top_shift, 0);
    }
    if (w.stop) {
        *next = w.next;
        return true;
    }
    if (w.run.size) {
        fn(opaque, &w.run);
    }
    return false;
}

void il_s2_for_each(const ILS2 *s2, ILS2WalkFn *fn, void *opaque)
{
    uint64_t next;

    il_s2_walk_page(s2, 0, 0, fn, opaque, &next);
}

/*
 * iommulab core: stage-2 radix table in host memory.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdlib.h>
#include <string.h>
#include "il-s2.h"
#include "il-alloc.h"

/* Entry bits.  A table entry holds the (4-byte aligned) ILS2Table pointer. */
#define S2_V        1ULL
#define S2_T        2ULL
#define S2_R        4ULL
#define S2_W        8ULL
#define S2_ADDR     (~IL_PAGE_MASK)
#define S2_PTR      (~3ULL)

struct ILS2Table {
    uint64_t e[IL_TABLE_ENTRIES];
    uint32_t used;                  /* valid entries */
};

static inline ILS2Table *s2_child(uint64_t e)
{
    return (ILS2Table *)(uintptr_t)(e & S2_PTR);
}

static inline unsigned s2_index(uint64_t iova, unsigned shift)
{
    return (iova >> shift) & (IL_TABLE_ENTRIES - 1);
}

static inline uint64_t s2_leaf(uint64_t addr, unsigned perm)
{
    return addr | S2_V | ((perm & IL_PERM_R) ? S2_R : 0) |
           ((perm & IL_PERM_W) ? S2_W : 0);
}

static inline unsigned s2_perm(uint64_t e)
{
    return ((e & S2_R) ? IL_PERM_R : 0) | ((e & S2_W) ? IL_PERM_W : 0);
}

/* IL_OK if n more tables fit the domain's budget and the pool. */
static ILError s2_room(const ILS2 *s2, uint64_t n)
{
    if (n > s2->max_tables - s2->tables) {
        return IL_ERR_NOMEM;
    }
    if (s2->pool && n > s2->pool->max_tables - s2->pool->tables) {
        return IL_ERR_LIMIT;
    }
    return IL_OK;
}

/*
 * NULL when over budget, over the pool's limit or out of memory (s2->fail
 * says which): the caller rolls back.
 */
static ILS2Table *s2_table_new(ILS2 *s2)
{
    ILS2Table *t;

    s2->fail = s2_room(s2, 1);
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

static void s2_table_free(ILS2 *s2, ILS2Table *t)
{
    il_free(t);
    s2->tables--;
    if (s2->pool) {
        s2->pool->tables--;
    }
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
    s2->root = s2_table_new(s2);
    return s2->root ? IL_OK : s2->fail;
}

ILError il_s2_init(ILS2 *s2, unsigned ias)
{
    return il_s2_init_pool(s2, ias, NULL);
}

/* Free a subtree; returns the bytes it mapped. */
static uint64_t s2_free_table(ILS2 *s2, ILS2Table *t, unsigned shift)
{
    uint64_t bytes = 0;

    for (unsigned i = 0; i < IL_TABLE_ENTRIES && t->used; i++) {
        uint64_t e = t->e[i];

        if (!(e & S2_V)) {
            continue;
        }
        if ((e & S2_T) && shift > IL_PAGE_SHIFT) {
            bytes += s2_free_table(s2, s2_child(e), shift - IL_LEVEL_BITS);
        } else {
            bytes += 1ULL << shift;
        }
        t->used--;
    }
    s2_table_free(s2, t);
    return bytes;
}

void il_s2_destroy(ILS2 *s2)
{
    if (s2->root) {
        s2_free_table(s2, s2->root, s2->top_shift);
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
            ILS2Table *child = s2_table_new(s2);

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
        s2_table_free(s2, t);
        *slot[--n] = 0;
        t = path[n];
        t->used--;
    }
}

static uint64_t s2_unmap(ILS2 *s2, uint64_t iova, uint64_t size,
                         ILS2Reserve *res);

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
                /* s2_unmap subtracts it; no block to split in our range */
                s2->mapped += iova - m->iova;
                s2_unmap(s2, m->iova, iova - m->iova, NULL);
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
                s2_unmap(s2, maps[j].iova, maps[j].size, NULL);
            }
            *bad_index = i;
            return s2->fail;
        }
    }
    return IL_OK;
}

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
            bytes += s2_free_table(s2, child, shift - IL_LEVEL_BITS);
        } else {
            bytes += s2_unmap_table(s2, child, shift - IL_LEVEL_BITS, ebase,
                                    first, last, res);
            if (child->used) {
                continue;
            }
            s2_table_free(s2, child);
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

static uint64_t s2_unmap(ILS2 *s2, uint64_t iova, uint64_t size,
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
    err = s2_room(s2, count);
    if (err != IL_OK) {
        return err;
    }
    while (res->count < count) {
        ILS2Table *t = s2_table_new(s2);

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
    return s2_unmap(s2, iova, size, res);
}

void il_s2_unmap_release(ILS2 *s2, ILS2Reserve *res)
{
    ILS2Table *t;

    while ((t = s2_reserve_take(res))) {
        s2_table_free(s2, t);
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
    *unmapped = s2_unmap(s2, iova, size, &res);
    il_s2_unmap_release(s2, &res);
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

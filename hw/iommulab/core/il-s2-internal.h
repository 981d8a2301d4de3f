/*
 * iommulab core: what the stage-2 table's files share, and nothing else
 * includes: the table layout and entry format, and the table memory
 * accounting (il-s2.c) that map (il-s2-map.c) and unmap (il-s2-unmap.c)
 * allocate and free through.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_S2_INTERNAL_H
#define IL_S2_INTERNAL_H

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
static inline ILError il_s2_room(const ILS2 *s2, uint64_t n)
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
 * says which): the caller rolls back.  (il-s2.c)
 */
ILS2Table *il_s2_table_new(ILS2 *s2);

static inline void il_s2_table_free(ILS2 *s2, ILS2Table *t)
{
    il_free(t);
    s2->tables--;
    if (s2->pool) {
        s2->pool->tables--;
    }
}

/* Free a subtree; returns the bytes it mapped.  (il-s2.c) */
uint64_t il_s2_free_table(ILS2 *s2, ILS2Table *t, unsigned shift);

/*
 * Unmap [iova, iova + size), clipped to the input address size, splitting
 * blocks with tables from res (NULL: none, a block partly in the range
 * stays); returns the bytes unmapped.  (il-s2-unmap.c)
 */
uint64_t il_s2_unmap_range(ILS2 *s2, uint64_t iova, uint64_t size,
                           ILS2Reserve *res);

#endif

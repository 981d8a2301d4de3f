/*
 * iommulab core: stage-2 radix table in host memory.
 *
 * A table is 512 eight-byte entries plus a count of valid entries, so empty
 * tables are freed on unmap and memory stays proportional to what is mapped.
 * Levels: ceil((ias - 12) / 9), 4 KiB pages at the last level, 2 MiB and
 * 1 GiB blocks at the two levels above it when iova and addr are aligned.
 * A lookup reads one entry per level.
 *
 * Implemented by il-s2.c (table memory, lookup, walk), il-s2-map.c and
 * il-s2-unmap.c, which share il-s2-internal.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_S2_H
#define IL_S2_H

#include "il-types.h"

typedef struct ILS2Table ILS2Table;

/*
 * Page-table memory shared by several stage-2 tables (an engine's paging
 * domains), so that many domains cannot add up to more than the host should
 * give: a table is counted as IL_S2_TABLE_BYTES.
 */
typedef struct ILTablePool {
    uint64_t tables;      /* allocated and reserved by all members */
    uint64_t max_tables;  /* what needs more fails with IL_ERR_LIMIT */
} ILTablePool;

#define IL_S2_TABLE_BYTES 4096u

typedef struct ILS2 {
    ILS2Table *root;
    uint8_t ias;          /* input address bits, 21..57 */
    uint8_t levels;
    uint8_t top_shift;    /* address bit indexed by the root table */
    uint64_t mapped;      /* bytes mapped */
    uint64_t tables;      /* tables allocated, including the root */
    uint64_t max_tables;  /* budget: what needs more fails, changing nothing */
    ILTablePool *pool;    /* NULL: the domain's budget only */
    ILError fail;         /* why the last table allocation failed */
} ILS2;

typedef struct ILMapping {
    uint64_t iova;
    uint64_t size;
    uint64_t addr;
    unsigned perm;        /* IL_PERM_* */
} ILMapping;

typedef struct ILLookup {
    uint64_t addr;        /* output address of the input address */
    unsigned perm;
    uint8_t shift;        /* log2 of the leaf size: 12, 21 or 30 */
} ILLookup;

#define IL_S2_IAS_MIN 21
#define IL_S2_IAS_MAX 57

/*
 * Tables one domain may hold (4 KiB each): 256 MiB, enough for 128 GiB mapped
 * in 4 KiB pages and far more with 2 MiB / 1 GiB blocks.  A QMP client must
 * not be able to make QEMU allocate without bound.
 */
#define IL_S2_MAX_TABLES (1u << 16)

ILError il_s2_init(ILS2 *s2, unsigned ias);
/*
 * The same, the tables also counted in pool (and limited by it): the root
 * table too, so IL_ERR_LIMIT if the pool is full.  Errors of the operations
 * below that allocate tables: IL_ERR_NOMEM (the domain's budget, or host
 * memory) or IL_ERR_LIMIT (the pool), state unchanged either way.
 */
ILError il_s2_init_pool(ILS2 *s2, unsigned ias, ILTablePool *pool);
void il_s2_destroy(ILS2 *s2);

/*
 * Look up one input address.  Returns false with *reason set when it is not
 * mapped (IL_REASON_NOT_PRESENT) or beyond ias (IL_REASON_ADDRESS_SIZE).
 * Permissions are not checked here.
 */
bool il_s2_lookup(const ILS2 *s2, uint64_t iova, ILLookup *out,
                  ILFaultReason *reason);

/* Validate one range of a map (does not look at existing mappings). */
ILError il_s2_check_mapping(const ILS2 *s2, const ILMapping *m);
/* Validate an unmap/invalidate range [iova, iova + size). */
ILError il_check_range(uint64_t iova, uint64_t size, unsigned ias);

/* True if any byte of [first, last] is mapped. */
bool il_s2_any_mapped(const ILS2 *s2, uint64_t first, uint64_t last);

/*
 * Map a batch, all or nothing: every range is validated, against existing
 * mappings and against the others, before any is applied.  On error,
 * *bad_index names the offending range.
 */
ILError il_s2_map_batch(ILS2 *s2, const ILMapping *maps, size_t n,
                        size_t *bad_index);

/*
 * Unmapping part of a 2 MiB or 1 GiB block splits it into a table of
 * smaller leaves, and a table is an allocation that can fail (host memory,
 * or the domain's budget max_tables).  So an unmap first reserves every
 * table its splits may need, before it changes anything: either all are
 * reserved, or it fails with IL_ERR_NOMEM and nothing changed.  Reserved
 * tables count against the budget until used or released.
 *
 *   il_s2_unmap_reserve(s2, ranges, n, &res);     may fail, changes nothing
 *   il_s2_unmap_reserved(s2, iova, size, &res);   per range, cannot fail
 *   il_s2_unmap_release(s2, &res);                frees what was not used
 */
typedef struct ILS2Reserve {
    ILS2Table *pool;
    uint64_t count;
} ILS2Reserve;

ILError il_s2_unmap_reserve(ILS2 *s2, const ILMapping *ranges, size_t n,
                            ILS2Reserve *res);
/* Unmap [iova, iova + size) (already validated); returns bytes unmapped. */
uint64_t il_s2_unmap_reserved(ILS2 *s2, uint64_t iova, uint64_t size,
                              ILS2Reserve *res);
void il_s2_unmap_release(ILS2 *s2, ILS2Reserve *res);
/* One range: reserve, unmap, release.  IL_ERR_NOMEM: nothing changed. */
ILError il_s2_unmap(ILS2 *s2, uint64_t iova, uint64_t size,
                    uint64_t *unmapped);

/*
 * Call fn for every leaf in iova order; contiguous leaves with contiguous
 * output and equal permissions are merged into one call.
 */
typedef void ILS2WalkFn(void *opaque, const ILMapping *m);
void il_s2_for_each(const ILS2 *s2, ILS2WalkFn *fn, void *opaque);
/*
 * One page of that walk: the merged runs at or above @start (a run across
 * @start reported from @start on), at most @max of them (0: no limit).
 * Returns true if more remain, with *next the iova where the next run
 * starts (always a run boundary, so paging from each *next reports exactly
 * the runs of one whole walk).  Cost: O(levels) to reach @start, then the
 * leaves of the page.
 */
bool il_s2_walk_page(const ILS2 *s2, uint64_t start, uint64_t max,
                     ILS2WalkFn *fn, void *opaque, uint64_t *next);

#endif

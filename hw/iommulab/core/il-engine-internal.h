/*
 * iommulab core: what the engine's files share, and nothing else includes.
 *
 * The engine is one file per concept: il-engine.c (engine lifetime,
 * translation), il-domain.c (the domain table, a domain's lifetime,
 * mappings and devices) and il-iotlb.c (IOTLB invalidation).  The IOTLB's
 * per-domain index, below, is used by all three: a translation miss fills a
 * slot, an unmap or a domain's free drops entries, invalidation drops them.
 * It is static inline: it was static in the one file these came from, and
 * calls across files cost the unmap path about 2% more instructions
 * (scripts/bench-core.sh counts them).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_ENGINE_INTERNAL_H
#define IL_ENGINE_INTERNAL_H

#include "il-engine.h"

/* Free a domain that is no longer in the engine's table (il-domain.c). */
void il_domain_destroy(ILDomain *d);

/*
 * The IOTLB's index by domain: each domain lists the slots holding its
 * entries (a doubly linked list through e->tlb_link), so that unmap and
 * invalidation cost what they touch, not a scan of every slot.  The hit path
 * never reads it; a fill links the slot, evicting another domain's entry
 * unlinks it.  The domain is written through a const pointer: the index is
 * the engine's bookkeeping, and every domain is the engine's own allocation.
 */
static inline void il_iotlb_link(ILEngine *e, uint32_t slot,
                                 const ILDomain *dom)
{
    ILDomain *d = (ILDomain *)dom;
    ILTlbLink *l = &e->tlb_link[slot];

    l->prev = IL_TLB_NIL;
    if (d->tlb_count) {
        l->next = d->tlb_head;
        e->tlb_link[d->tlb_head].prev = slot;
    } else {
        l->next = IL_TLB_NIL;
        d->tlb_max_shift = 0;
    }
    d->tlb_head = slot;
    d->tlb_count++;
}

/*
 * Take slot out of its domain's list (the entry stays).  Out of line, a copy
 * per file, as the compiler chose when it was static in one file: inlined
 * into the fill, it costs the translation miss path instructions (GCC and
 * Clang, as QEMU requires).
 */
static __attribute__((noinline, unused))
void il_iotlb_unlink(ILEngine *e, uint32_t slot)
{
    ILDomain *d = (ILDomain *)e->tlb[slot].dom;
    const ILTlbLink *l = &e->tlb_link[slot];

    if (l->prev != IL_TLB_NIL) {
        e->tlb_link[l->prev].next = l->next;
    } else {
        d->tlb_head = l->next;
    }
    if (l->next != IL_TLB_NIL) {
        e->tlb_link[l->next].prev = l->prev;
    }
    d->tlb_count--;
}

/* Only a miss that fills the IOTLB gets here. */
static inline void il_iotlb_fill(ILEngine *e, ILTlbEntry *t,
                                 const ILDomain *d, uint64_t page,
                                 const ILResult *r)
{
    uint32_t slot = (uint32_t)(t - e->tlb);

    if (t->dom != d) {
        if (t->dom) {
            il_iotlb_unlink(e, slot);   /* evicts another domain's entry */
        } else {
            e->tlb_valid++;
        }
        t->dom = d;
        il_iotlb_link(e, slot, d);
    }
    if (r->shift > d->tlb_max_shift) {
        ((ILDomain *)d)->tlb_max_shift = r->shift;
    }
    t->page = page;
    t->mask = (1ULL << r->shift) - 1;
    t->out = r->addr & ~t->mask;
    t->perm = r->perm;
    t->shift = r->shift;
}

/* Every entry of d. */
static inline void il_iotlb_drop_domain(ILEngine *e, const ILDomain *dom)
{
    ILDomain *d = (ILDomain *)dom;
    uint32_t slot = d->tlb_head;

    for (uint32_t n = d->tlb_count; n; n--) {
        e->tlb[slot].dom = NULL;
        slot = e->tlb_link[slot].next;
    }
    e->tlb_valid -= d->tlb_count;
    d->tlb_count = 0;
}

/* Every entry of d's nested children (d paging). */
static inline void il_iotlb_drop_children(ILEngine *e, const ILDomain *d)
{
    for (const ILDomain *c = d->first_child; c; c = c->next_sibling) {
        il_iotlb_drop_domain(e, c);
    }
}

static inline void il_iotlb_drop_slot(ILEngine *e, uint32_t slot)
{
    il_iotlb_unlink(e, slot);
    e->tlb[slot].dom = NULL;
    e->tlb_valid--;
}

/* Does the leaf an entry caches overlap [first, last]? */
static inline bool il_iotlb_overlaps(const ILTlbEntry *t, uint64_t first,
                                     uint64_t last)
{
    uint64_t lo = (t->page << IL_PAGE_SHIFT) & ~t->mask;

    return lo <= last && first <= lo + t->mask;
}

/*
 * The entries of d whose leaf overlaps [first, last].  An entry is filed
 * under the page of the lookup that filled it, at slot il_tlb_index(d, page),
 * and its leaf is at most 1 << d->tlb_max_shift: so the entries sought are
 * at the slots of the pages of the range widened to that alignment.  Probe
 * those slots when they are fewer than d's entries, else walk d's list.
 * Out of line (a copy per file), as the compiler chose in one file.
 */
static __attribute__((noinline, unused))
void il_iotlb_drop_range(ILEngine *e, const ILDomain *d, uint64_t first,
                         uint64_t last)
{
    uint64_t mask, lo, hi;
    uint32_t slot, n;

    if (!d->tlb_count) {
        return;
    }
    mask = (1ULL << d->tlb_max_shift) - 1;
    lo = (first & ~mask) >> IL_PAGE_SHIFT;
    hi = (last | mask) >> IL_PAGE_SHIFT;
    if (hi - lo < d->tlb_count) {
        for (uint64_t page = lo; ; page++) {
            const ILTlbEntry *t;

            slot = il_tlb_index(e, d, page);
            t = &e->tlb[slot];
            if (t->dom == d && t->page == page &&
                il_iotlb_overlaps(t, first, last)) {
                il_iotlb_drop_slot(e, slot);
            }
            if (page == hi) {
                break;
            }
        }
        return;
    }
    slot = d->tlb_head;
    for (n = d->tlb_count; n; n--) {
        uint32_t next = e->tlb_link[slot].next;

        if (il_iotlb_overlaps(&e->tlb[slot], first, last)) {
            il_iotlb_drop_slot(e, slot);
        }
        slot = next;
    }
}

#endif

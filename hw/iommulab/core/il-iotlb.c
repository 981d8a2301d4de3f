/*
 * iommulab core: IOTLB invalidation (of everything, of a domain and its
 * nested children, of a range) and the consistency check of the IOTLB's
 * per-domain index for the tests.
 *
 * The IOTLB is a direct-mapped array of ILTlbEntry: read by the hit path,
 * il_translate() in il-engine.h, filled by a miss (il-engine.c).  Its
 * per-domain index, which every file of the engine updates, is static
 * inline in il-engine-internal.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <string.h>
#include "il-engine-internal.h"

bool il_iotlb_check(const ILEngine *e)
{
    uint32_t listed = 0, valid = 0;

    for (size_t i = 0; i < e->ndomains; i++) {
        const ILDomain *d = e->domains[i];
        uint32_t slot = d->tlb_head, prev = IL_TLB_NIL;

        for (uint32_t n = 0; n < d->tlb_count; n++) {
            if (slot > e->tlb_mask || e->tlb[slot].dom != d ||
                e->tlb_link[slot].prev != prev ||
                e->tlb[slot].shift > d->tlb_max_shift ||
                il_tlb_index(e, d, e->tlb[slot].page) != slot) {
                return false;
            }
            prev = slot;
            slot = e->tlb_link[slot].next;
        }
        if (d->tlb_count && slot != IL_TLB_NIL) {
            return false;
        }
        listed += d->tlb_count;
    }
    for (uint32_t i = 0; i <= e->tlb_mask; i++) {
        valid += e->tlb[i].dom != NULL;
    }
    return listed == valid && valid == e->tlb_valid;
}

void il_invalidate_all(ILEngine *e)
{
    memset(e->tlb, 0, (e->tlb_mask + 1) * sizeof(*e->tlb));
    e->tlb_valid = 0;
    for (size_t i = 0; i < e->ndomains; i++) {
        e->domains[i]->tlb_count = 0;
    }
    e->c.invalidations++;
}

void il_invalidate_domain(ILEngine *e, const ILDomain *d)
{
    il_iotlb_drop_domain(e, d);
    il_iotlb_drop_children(e, d);
    e->c.invalidations++;
}

void il_invalidate_range(ILEngine *e, const ILDomain *d, uint64_t iova,
                         uint64_t size)
{
    uint64_t last = iova + (size - 1);

    if (!d) {
        for (size_t i = 0; i < e->ndomains; i++) {
            il_iotlb_drop_range(e, e->domains[i], iova, last);
        }
    } else {
        il_iotlb_drop_range(e, d, iova, last);
        il_iotlb_drop_children(e, d);
    }
    e->c.invalidations++;
}

/*
 * iommulab core: the engine (its lifetime and page-table limit), translation
 * (the IOTLB miss path: stage-2 and nested walks, fault recording) and the
 * fault queue's accessors.
 *
 * The hit path is il_translate() in il-engine.h; the IOTLB fill a miss does
 * is static inline in il-engine-internal.h, so that translation calls no
 * more functions than when one file held the domains and the IOTLB too
 * (they are in il-domain.c and il-iotlb.c).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdlib.h>
#include <string.h>
#include "il-engine-internal.h"
#include "il-alloc.h"

ILError il_engine_init(ILEngine *e, uint32_t tlb_entries, uint32_t fq_cap,
                       ILReadFn *read, void *read_opaque)
{
    memset(e, 0, sizeof(*e));
    if (tlb_entries == 0 || (tlb_entries & (tlb_entries - 1))) {
        tlb_entries = 4096;
    }
    /* The entries, then the per-slot links of the domain index. */
    e->tlb = il_zalloc_array(tlb_entries,
                             sizeof(*e->tlb) + sizeof(*e->tlb_link));
    if (!e->tlb) {
        return IL_ERR_NOMEM;
    }
    e->tlb_link = (ILTlbLink *)(e->tlb + tlb_entries);
    if (il_fault_queue_init(&e->faults, fq_cap) != IL_OK) {
        il_free(e->tlb);
        memset(e, 0, sizeof(*e));
        return IL_ERR_NOMEM;
    }
    e->tlb_mask = tlb_entries - 1;
    e->read = read;
    e->read_opaque = read_opaque;
    e->tables.max_tables = IL_ENGINE_TABLE_LIMIT_DEFAULT / IL_S2_TABLE_BYTES;
    return IL_OK;
}

ILError il_engine_set_table_limit(ILEngine *e, uint64_t bytes)
{
    uint64_t max = bytes / IL_S2_TABLE_BYTES;

    if (max == 0) {
        return IL_ERR_INVAL;
    }
    if (max < e->tables.tables) {
        return IL_ERR_BUSY;
    }
    e->tables.max_tables = max;
    return IL_OK;
}

void il_engine_reset(ILEngine *e)
{
    for (size_t i = 0; i < e->ndomains; i++) {
        il_domain_destroy(e->domains[i]);
    }
    e->ndomains = 0;
    if (e->tlb) {
        memset(e->tlb, 0, (e->tlb_mask + 1) * sizeof(*e->tlb));
    }
    e->tlb_valid = 0;
    il_faults_clear(e);
    memset(&e->c, 0, sizeof(e->c));
}

void il_engine_destroy(ILEngine *e)
{
    il_engine_reset(e);
    il_free(e->domains);
    il_free(e->tlb);
    il_fault_queue_destroy(&e->faults);
    memset(e, 0, sizeof(*e));
}

/*
 * Out of the walk's way (faults are rare, walks are not): inlined, it cost
 * the nested walk registers.  GCC and Clang, as QEMU requires.
 */
static __attribute__((cold, noinline))
void record_fault(ILEngine *e, const ILDomain *d, uint32_t dev,
                         uint64_t iova, unsigned access, unsigned flags,
                         ILResult *r, bool *recorded)
{
    ILFault nf = {
        .dev = dev, .has_domain = d != NULL, .domain = d ? d->id : 0,
        .access = access, .stage = r->stage, .reason = r->reason,
        .iova = iova,
    };
    uint64_t dropped = e->faults.dropped;

    if (flags & IL_TR_NORECORD) {
        if (!(flags & IL_TR_NOCOUNT)) {
            e->c.faults++;
        }
        return;
    }
    if (!il_fault_record(&e->faults, &nf)) {
        return;                 /* a repeat, coalesced */
    }
    if (!(flags & IL_TR_NOCOUNT)) {
        e->c.faults++;
    }
    if (recorded) {
        *recorded = true;
    }
    e->c.faults_dropped += e->faults.dropped - dropped;
}

static inline bool fail(ILResult *r, ILFaultStage stage, ILFaultReason reason)
{
    r->stage = stage;
    r->reason = reason;
    return false;
}

static inline uint64_t le64(const uint8_t *b)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | b[i];
    }
    return v;
}

/* Walk stage 1 (and stage 2 for each table and the output). */
static bool walk_nested(ILEngine *e, const ILDomain *d, uint64_t iova,
                        ILResult *r, unsigned *s1_perm)
{
    const ILS2 *s2 = &d->parent->s2;
    uint64_t table = d->s1_root;
    unsigned perm = IL_PERM_RW;
    ILFaultReason reason;
    ILLookup lk;
    uint64_t ent = 0;
    unsigned shift;

    if (iova >> IL_S1_IAS) {
        return fail(r, IL_STAGE_1, IL_REASON_ADDRESS_SIZE);
    }
    for (shift = 39; ; shift -= IL_LEVEL_BITS) {
        uint64_t ipa = table + ((iova >> shift) & 511) * 8;
        uint8_t buf[8];

        if (!il_s2_lookup(s2, ipa, &lk, &reason)) {
            return fail(r, IL_STAGE_2, reason);
        }
        if (!(lk.perm & IL_PERM_R)) {
            return fail(r, IL_STAGE_2, IL_REASON_PERMISSION);
        }
        if (!e->read(e->read_opaque, lk.addr, buf, sizeof(buf))) {
            return fail(r, IL_STAGE_1, IL_REASON_WALK_ERROR);
        }
        ent = le64(buf);
        if (!(ent & IL_S1_P)) {
            return fail(r, IL_STAGE_1, IL_REASON_NOT_PRESENT);
        }
        perm &= ((ent & IL_S1_R) ? IL_PERM_R : 0) |
                ((ent & IL_S1_W) ? IL_PERM_W : 0);
        if (shift == IL_PAGE_SHIFT) {
            break;
        }
        if (ent & IL_S1_PS) {
            if (shift == 39 ||
                (ent & IL_S1_ADDR & ((1ULL << shift) - 1))) {
                return fail(r, IL_STAGE_1, IL_REASON_WALK_ERROR);
            }
            break;
        }
        table = ent & IL_S1_ADDR;
    }
    /* The output IPA, through stage 2. */
    if (!il_s2_lookup(s2, (ent & IL_S1_ADDR) + (iova & ((1ULL << shift) - 1)),
                      &lk, &reason)) {
        return fail(r, IL_STAGE_2, reason);
    }
    *s1_perm = perm;
    r->addr = lk.addr;
    r->perm = perm & lk.perm;
    r->shift = lk.shift < shift ? lk.shift : shift;
    return true;
}

bool il_translate_slow(ILEngine *e, ILMode mode, const ILDomain *d,
                       uint32_t dev, uint64_t iova, unsigned access,
                       unsigned flags, ILResult *r, bool *recorded)
{
    uint64_t page = iova >> IL_PAGE_SHIFT;
    ILTlbEntry *t = NULL;
    unsigned s1_perm = IL_PERM_RW;
    ILFaultReason reason;
    ILLookup lk;
    bool ok;

    if (recorded) {
        *recorded = false;
    }
    if (mode == IL_MODE_DOMAIN && d) {
        if (!(flags & IL_TR_NOCACHE)) {
            t = &e->tlb[il_tlb_index(e, d, page)];
            if (!(flags & IL_TR_MISSED_) && t->dom == d && t->page == page &&
                (t->perm & access) == access) {
                if (!(flags & IL_TR_NOCOUNT)) {
                    e->c.hits++;
                }
                r->addr = t->out | (iova & t->mask);
                r->perm = t->perm;
                r->shift = t->shift;
                return true;
            }
        }
        if (!(flags & IL_TR_NOCOUNT)) {
            e->c.misses++;
            e->c.walks++;
        }
        if (d->type == IL_DOMAIN_NESTED) {
            ok = walk_nested(e, d, iova, r, &s1_perm);
        } else if (il_s2_lookup(&d->s2, iova, &lk, &reason)) {
            r->addr = lk.addr;
            r->perm = lk.perm;
            r->shift = lk.shift;
            ok = true;
        } else {
            ok = fail(r, IL_STAGE_2, reason);
        }
        if (ok && (r->perm & access) != access) {
            ok = fail(r, (s1_perm & access) != access ? IL_STAGE_1 : IL_STAGE_2,
                      IL_REASON_PERMISSION);
        }
        if (ok && t) {
            il_iotlb_fill(e, t, d, page, r);
        }
    } else if (mode == IL_MODE_BYPASS) {
        r->addr = iova;
        r->perm = IL_PERM_RW;
        r->shift = IL_PAGE_SHIFT;
        return true;
    } else {
        d = NULL;
        ok = fail(r, IL_STAGE_DEVICE, IL_REASON_BLOCKED);
    }
    if (!ok && access) {
        record_fault(e, d, dev, iova, access, flags, r, recorded);
    }
    return ok;
}

uint32_t il_faults_count(const ILEngine *e)
{
    return il_fault_count(&e->faults);
}

const ILFault *il_faults_get(const ILEngine *e, uint32_t i)
{
    return il_fault_get(&e->faults, i);
}

void il_faults_clear(ILEngine *e)
{
    il_fault_clear(&e->faults);
}

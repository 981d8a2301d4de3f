/*
 * iommulab core: domains, the IOTLB, the fault queue and translation.
 *
 * The engine knows nothing of PCI or QEMU: a device is a caller-chosen
 * uint32 id and an attachment (mode and domain) that the caller keeps.
 * Guest memory is read through a callback.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_ENGINE_H
#define IL_ENGINE_H

#include "il-types.h"
#include "il-s1.h"
#include "il-s2.h"

typedef enum ILDomainType {
    IL_DOMAIN_PAGING = 0,
    IL_DOMAIN_NESTED,
} ILDomainType;

typedef enum ILMode {
    IL_MODE_BLOCKED = 0,
    IL_MODE_BYPASS,
    IL_MODE_DOMAIN,
} ILMode;

typedef struct ILDomain ILDomain;
struct ILDomain {
    uint32_t id;
    ILDomainType type;
    ILS2 s2;                /* paging */
    ILDomain *parent;       /* nested */
    uint64_t s1_root;       /* nested: IPA of the level-4 table */
    uint32_t devices;       /* attached devices (il_domain_ref/unref) */
    uint32_t children;      /* nested domains with this parent */
};

/*
 * Read len bytes of memory at (guest physical) addr into buf; false if the
 * address is not readable memory.
 */
typedef bool ILReadFn(void *opaque, uint64_t addr, void *buf, size_t len);

typedef struct ILTlbEntry {
    uint64_t page;          /* iova >> 12 of the lookup that filled it */
    const ILDomain *dom;    /* NULL: invalid */
    uint64_t out;           /* output address of the leaf (size 1 << shift) */
    uint64_t mask;          /* (1 << shift) - 1 */
    uint8_t perm;
    uint8_t shift;
} ILTlbEntry;

typedef struct ILFault {
    uint32_t dev;
    uint32_t domain;
    bool has_domain;
    uint8_t access;         /* ILAccess */
    uint8_t stage;          /* ILFaultStage */
    uint8_t reason;         /* ILFaultReason */
    uint64_t iova;
} ILFault;

typedef struct ILCounters {
    uint64_t hits;
    uint64_t misses;
    uint64_t walks;
    uint64_t faults;
    uint64_t faults_dropped;
    uint64_t invalidations;
} ILCounters;

typedef struct ILEngine {
    ILDomain **domains;     /* sorted by id */
    size_t ndomains;
    size_t cap;
    ILTlbEntry *tlb;
    uint32_t tlb_mask;
    uint32_t tlb_valid;
    ILFault *fq;
    uint32_t fq_cap;
    uint32_t fq_head;
    uint32_t fq_len;
    uint64_t fq_dropped;    /* since the last il_faults_clear() */
    ILFault last_fault;     /* for coalescing repeats, see il_translate() */
    bool has_last_fault;
    ILCounters c;
    ILReadFn *read;
    void *read_opaque;
} ILEngine;

/* Result of a translation. */
typedef struct ILResult {
    uint64_t addr;          /* output address of iova */
    unsigned perm;          /* permissions of the translation */
    uint8_t shift;          /* valid for the aligned 1 << shift block */
    uint8_t stage;          /* on failure: ILFaultStage */
    uint8_t reason;         /* on failure: ILFaultReason */
} ILResult;

/* il_translate() flags */
/* Domains one engine holds: each costs at least a root table (4 KiB). */
#define IL_MAX_DOMAINS  4096

#define IL_TR_NOCACHE   1u  /* neither use nor fill the IOTLB */
#define IL_TR_NOCOUNT   2u  /* leave the counters alone */
#define IL_TR_NORECORD  4u  /* do not queue a fault */
#define IL_TR_DEBUG     (IL_TR_NOCACHE | IL_TR_NOCOUNT | IL_TR_NORECORD)
#define IL_TR_MISSED_   8u  /* internal: the IOTLB lookup already missed */

/*
 * tlb_entries: a power of two; fq_cap: fault queue capacity (> 0).
 * IL_ERR_NOMEM if the IOTLB or the queue cannot be allocated; the engine is
 * then left zeroed (il_engine_destroy() on it is a no-op).
 */
ILError il_engine_init(ILEngine *e, uint32_t tlb_entries, uint32_t fq_cap,
                       ILReadFn *read, void *read_opaque);
void il_engine_destroy(ILEngine *e);
/* Drop all domains (none may be referenced), faults, IOTLB, counters. */
void il_engine_reset(ILEngine *e);

ILDomain *il_domain_find(const ILEngine *e, uint32_t id);
ILError il_domain_alloc_paging(ILEngine *e, uint32_t id, unsigned ias);
ILError il_domain_alloc_nested(ILEngine *e, uint32_t id, uint32_t parent,
                               uint64_t s1_root);
ILError il_domain_free(ILEngine *e, uint32_t id);

ILError il_domain_map(ILEngine *e, uint32_t id, const ILMapping *maps,
                      size_t n, size_t *bad_index);
/*
 * Unmap ranges (maps[i].addr and .perm ignored), all validated first.  All
 * or nothing: IL_ERR_NOMEM (with *bad_index 0) when the tables to split
 * partly unmapped 2 MiB / 1 GiB blocks cannot be reserved (host memory or
 * the table budget), and then nothing changed.  The IOTLB entries of the
 * domain in the ranges and all entries of its nested
 * children are invalidated before this returns.
 */
ILError il_domain_unmap(ILEngine *e, uint32_t id, const ILMapping *ranges,
                        size_t n, size_t *bad_index, uint64_t *unmapped);

/* Attachment bookkeeping (device counts), NULL allowed. */
void il_domain_ref(ILDomain *d);
void il_domain_unref(ILDomain *d);

void il_invalidate_all(ILEngine *e);
/* A paging domain's children are invalidated with it. */
void il_invalidate_domain(ILEngine *e, const ILDomain *d);
/* d == NULL: every domain.  [iova, iova + size) must be valid. */
void il_invalidate_range(ILEngine *e, const ILDomain *d, uint64_t iova,
                         uint64_t size);

/*
 * Translate a DMA of device dev.  access: IL_ACCESS_READ/WRITE, or 0 for a
 * probe (no permission check, never a fault).  On a fault (return false)
 * r->stage and r->reason say why and, unless IL_TR_NORECORD, the fault is
 * queued (or counted as dropped if the queue is full) and *recorded is set
 * true.  A fault identical to the previous one
 * (device, domain, 4 KiB page, access, stage, reason) is coalesced with it:
 * not counted or queued again.  QEMU retries a refused DMA in small pieces,
 * so one refused transfer would otherwise fill the queue.
 */
bool il_translate_slow(ILEngine *e, ILMode mode, const ILDomain *d,
                       uint32_t dev, uint64_t iova, unsigned access,
                       unsigned flags, ILResult *r, bool *recorded);

static inline uint32_t il_tlb_index(const ILEngine *e, const ILDomain *d,
                                    uint64_t page)
{
    return (uint32_t)(page ^ ((uintptr_t)d >> 4) * 0x9e3779b1u) & e->tlb_mask;
}

/* The hot path, inline: an IOTLB hit; everything else is out of line. */
static inline bool il_translate(ILEngine *e, ILMode mode, const ILDomain *d,
                                uint32_t dev, uint64_t iova, unsigned access,
                                unsigned flags, ILResult *r, bool *recorded)
{
    if (mode == IL_MODE_DOMAIN && d &&
        !(flags & (IL_TR_NOCACHE | IL_TR_NOCOUNT))) {
        uint64_t page = iova >> IL_PAGE_SHIFT;
        const ILTlbEntry *t = &e->tlb[il_tlb_index(e, d, page)];

        if (t->dom == d && t->page == page && (t->perm & access) == access) {
            e->c.hits++;
            r->addr = t->out | (iova & t->mask);
            r->perm = t->perm;
            r->shift = t->shift;
            if (recorded) {
                *recorded = false;
            }
            return true;
        }
        flags |= IL_TR_MISSED_;
    }
    return il_translate_slow(e, mode, d, dev, iova, access, flags, r,
                             recorded);
}

/* Fault queue: oldest first. */
uint32_t il_faults_count(const ILEngine *e);
const ILFault *il_faults_get(const ILEngine *e, uint32_t i);
void il_faults_clear(ILEngine *e);

#endif

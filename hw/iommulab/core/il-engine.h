/*
 * iommulab core: domains, the IOTLB, the fault queue and translation.
 *
 * The engine knows nothing of PCI or QEMU: a device is a caller-chosen
 * uint32 id and an attachment (mode and domain) that the caller keeps.
 * Guest memory is read through a callback.
 *
 * Implemented by il-engine.c (engine, translation), il-domain.c (domains)
 * and il-iotlb.c (invalidation), which share il-engine-internal.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_ENGINE_H
#define IL_ENGINE_H

#include "il-types.h"
#include "il-s1.h"
#include "il-s2.h"
#include "il-fault.h"

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
    uint32_t devices;       /* attachments: devs below + il_domain_ref() */
    uint32_t children;      /* nested domains with this parent */
    uint32_t *devs;         /* attached device ids, sorted */
    uint32_t ndevs;
    uint32_t devs_cap;
    ILDomain *first_child;  /* paging: its nested domains */
    ILDomain *next_sibling; /* nested: the parent's next child */
    /*
     * The engine's index of this domain's IOTLB entries (a list through
     * ILEngine.tlb_link), so that unmap and invalidation visit only them.
     */
    uint32_t tlb_head;      /* first slot; meaningful if tlb_count */
    uint32_t tlb_count;     /* valid IOTLB entries of this domain */
    uint8_t tlb_max_shift;  /* no entry's leaf is larger (if tlb_count) */
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

/* Per IOTLB slot, apart from the entries so that a hit does not see it. */
typedef struct ILTlbLink {
    uint32_t prev;          /* slots of the same domain, IL_TLB_NIL ends */
    uint32_t next;
} ILTlbLink;

#define IL_TLB_NIL UINT32_MAX

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
    ILCounters c;
    ILFaultQueue faults;    /* what il_translate() refused */
    ILReadFn *read;
    void *read_opaque;
    ILTlbLink *tlb_link;    /* per slot (in tlb's allocation) */
    ILTablePool tables;     /* page tables of all paging domains */
} ILEngine;

/* Result of a translation. */
typedef struct ILResult {
    uint64_t addr;          /* output address of iova */
    unsigned perm;          /* permissions of the translation */
    uint8_t shift;          /* valid for the aligned 1 << shift block */
    uint8_t stage;          /* on failure: ILFaultStage */
    uint8_t reason;         /* on failure: ILFaultReason */
} ILResult;

/* Domains one engine holds: each costs at least a root table (4 KiB). */
#define IL_MAX_DOMAINS  4096

/*
 * Page-table memory all paging domains of an engine may hold together,
 * unless il_engine_set_table_limit() says otherwise: 1 GiB (262,144 tables
 * of 4 KiB).  Each domain is also held to IL_S2_MAX_TABLES.
 */
#define IL_ENGINE_TABLE_LIMIT_DEFAULT (1ULL << 30)

/* il_translate() flags */

#define IL_TR_NOCACHE   1u  /* neither use nor fill the IOTLB */
#define IL_TR_NOCOUNT   2u  /* leave the counters alone */
#define IL_TR_NORECORD  4u  /* do not queue a fault */
#define IL_TR_DEBUG     (IL_TR_NOCACHE | IL_TR_NOCOUNT | IL_TR_NORECORD)
#define IL_TR_MISSED_   8u  /* internal: the IOTLB lookup already missed */

/*
 * tlb_entries: a power of two; fq_cap: fault queue capacity (> 0).
 * IL_ERR_NOMEM if the IOTLB or the queue cannot be allocated; the engine is
 * then left zeroed (il_engine_destroy() on it is a no-op).  The page-table
 * limit is IL_ENGINE_TABLE_LIMIT_DEFAULT until il_engine_set_table_limit().
 */
ILError il_engine_init(ILEngine *e, uint32_t tlb_entries, uint32_t fq_cap,
                       ILReadFn *read, void *read_opaque);

/*
 * The engine-wide page-table memory limit, in bytes (rounded down to whole
 * 4 KiB tables; UINT64_MAX: none but each domain's budget).  A domain
 * allocation (its root table), map or block-splitting unmap that would take
 * the paging domains together past it fails with IL_ERR_LIMIT and changes
 * nothing.  Meant to be set right after il_engine_init(); IL_ERR_INVAL if
 * smaller than one table, IL_ERR_BUSY (limit unchanged) if below what the
 * domains hold now.
 */
ILError il_engine_set_table_limit(ILEngine *e, uint64_t bytes);

static inline uint64_t il_engine_table_limit(const ILEngine *e)
{
    return e->tables.max_tables >= UINT64_MAX / IL_S2_TABLE_BYTES ?
           UINT64_MAX : e->tables.max_tables * IL_S2_TABLE_BYTES;
}

/* Page tables the paging domains hold now (and their bytes, 4 KiB each). */
static inline uint64_t il_engine_tables(const ILEngine *e)
{
    return e->tables.tables;
}

static inline uint64_t il_engine_table_bytes(const ILEngine *e)
{
    return e->tables.tables * IL_S2_TABLE_BYTES;
}
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

/*
 * Attachment bookkeeping, anonymous (a count only), NULL allowed.
 * Superseded by il_domain_attach_dev()/il_domain_detach_dev(), which also
 * tell the domain which devices use it.
 */
void il_domain_ref(ILDomain *d);
void il_domain_unref(ILDomain *d);

/*
 * The devices (caller-chosen ids, as in il_translate()) attached to a
 * domain, as virtio-iommu's endpoint lists: so that an unmap or an
 * invalidation notifies only the users of the domain.
 *
 * il_domain_attach_dev(): IL_ERR_EXISTS if dev is already attached to d,
 * IL_ERR_NOMEM (nothing changed) if the list cannot grow.
 * il_domain_detach_dev(): cannot fail; no-op if dev is not attached.
 * il_dev_switch_domain(): detach dev from old and attach it to new (either
 * may be NULL; old == new is a no-op), all or nothing.
 */
ILError il_domain_attach_dev(ILEngine *e, ILDomain *d, uint32_t dev);
void il_domain_detach_dev(ILEngine *e, ILDomain *d, uint32_t dev);
ILError il_dev_switch_domain(ILEngine *e, uint32_t dev, ILDomain *old,
                             ILDomain *new_domain);
bool il_domain_has_dev(const ILDomain *d, uint32_t dev);

/*
 * Call fn for each device attached to d and, with children (a paging
 * domain), to each of its nested domains; dom is the domain the device is
 * attached to.  fn must not attach or detach.
 */
typedef void ILDevFn(void *opaque, uint32_t dev, const ILDomain *dom);
void il_domain_for_each_dev(const ILDomain *d, bool children, ILDevFn *fn,
                            void *opaque);

/* The nested children of a paging domain, in no particular order. */
static inline ILDomain *il_domain_first_child(const ILDomain *d)
{
    return d->first_child;
}

static inline ILDomain *il_domain_next_child(const ILDomain *child)
{
    return child->next_sibling;
}

/* Read-only accessors, so that devices need not know the structures. */
static inline uint32_t il_domain_id(const ILDomain *d)
{
    return d->id;
}

static inline ILDomainType il_domain_type(const ILDomain *d)
{
    return d->type;
}

/* Input address bits: the stage-2 ias, or the stage-1 format's. */
static inline unsigned il_domain_ias(const ILDomain *d)
{
    return d->type == IL_DOMAIN_PAGING ? d->s2.ias : IL_S1_IAS;
}

/* Nested: the paging parent; paging: NULL. */
static inline const ILDomain *il_domain_parent(const ILDomain *d)
{
    return d->parent;
}

static inline uint64_t il_domain_s1_root(const ILDomain *d)
{
    return d->s1_root;
}

/* Attachments (listed devices and il_domain_ref()s). */
static inline uint32_t il_domain_devices(const ILDomain *d)
{
    return d->devices;
}

static inline uint32_t il_domain_children(const ILDomain *d)
{
    return d->children;
}

/* Paging: the mappings, merged as il_s2_for_each(); nested: none. */
void il_domain_for_each_mapping(const ILDomain *d, ILS2WalkFn *fn,
                                void *opaque);
/* One page of them, as il_s2_walk_page(); nested: none, false. */
bool il_domain_walk_page(const ILDomain *d, uint64_t start, uint64_t max,
                         ILS2WalkFn *fn, void *opaque, uint64_t *next);

/* The domains in id order: i < il_domain_count(). */
static inline size_t il_domain_count(const ILEngine *e)
{
    return e->ndomains;
}

static inline ILDomain *il_domain_at(const ILEngine *e, size_t i)
{
    return i < e->ndomains ? e->domains[i] : NULL;
}

static inline uint32_t il_iotlb_size(const ILEngine *e)
{
    return e->tlb_mask + 1;
}

/* IOTLB entries in use. */
static inline uint32_t il_iotlb_valid(const ILEngine *e)
{
    return e->tlb_valid;
}

/* IOTLB entries of one domain (its nested children's not included). */
static inline uint32_t il_domain_iotlb_entries(const ILDomain *d)
{
    return d->tlb_count;
}

/*
 * Tests: true if the per-domain index of the IOTLB is consistent (every
 * valid slot listed once, under its domain, counts and sizes right).
 */
bool il_iotlb_check(const ILEngine *e);

static inline const ILCounters *il_engine_counters(const ILEngine *e)
{
    return &e->c;
}

void il_invalidate_all(ILEngine *e);
/* A paging domain's children are invalidated with it. */
void il_invalidate_domain(ILEngine *e, const ILDomain *d);
/*
 * d == NULL: every domain.  [iova, iova + size) must be valid.  A paging
 * domain's nested children lose all their entries with it (their stage-1
 * tables and outputs may be anywhere in the range).
 */
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

/* The engine's fault queue (il-fault.h), oldest first. */
static inline ILFaultQueue *il_engine_faults(ILEngine *e)
{
    return &e->faults;
}

uint32_t il_faults_count(const ILEngine *e);
const ILFault *il_faults_get(const ILEngine *e, uint32_t i);
void il_faults_clear(ILEngine *e);

static inline uint32_t il_faults_capacity(const ILEngine *e)
{
    return il_fault_capacity(&e->faults);
}

/* Dropped (queue full) since the last il_faults_clear(). */
static inline uint64_t il_faults_dropped(const ILEngine *e)
{
    return il_fault_dropped(&e->faults);
}

/*
 * After il_translate() set *recorded: true if an event is to be sent now
 * (with *suppressed the events held back since the last one), false if the
 * rate limit suppresses it.  now_ms: any monotonic clock.
 */
static inline bool il_faults_event(ILEngine *e, int64_t now_ms,
                                   uint64_t *suppressed)
{
    return il_fault_event(&e->faults, now_ms, suppressed);
}

/* Events suppressed by the rate limit, ever. */
static inline uint64_t il_faults_suppressed(const ILEngine *e)
{
    return il_fault_suppressed(&e->faults);
}

#endif

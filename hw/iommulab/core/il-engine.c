/*
 * iommulab core: domains, the IOTLB, the fault queue and translation.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdlib.h>
#include <string.h>
#include "il-engine.h"
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

static void domain_destroy(ILDomain *d)
{
    if (d->type == IL_DOMAIN_PAGING) {
        il_s2_destroy(&d->s2);
    }
    il_free(d->devs);
    il_free(d);
}

void il_engine_reset(ILEngine *e)
{
    for (size_t i = 0; i < e->ndomains; i++) {
        domain_destroy(e->domains[i]);
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

/* Index of the first domain with id >= id. */
static size_t domain_pos(const ILEngine *e, uint32_t id)
{
    size_t lo = 0, hi = e->ndomains;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (e->domains[mid]->id < id) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

ILDomain *il_domain_find(const ILEngine *e, uint32_t id)
{
    size_t pos = domain_pos(e, id);

    return pos < e->ndomains && e->domains[pos]->id == id ?
           e->domains[pos] : NULL;
}

/* Room for one more domain in the array, so that inserting cannot fail. */
static bool domain_room(ILEngine *e)
{
    size_t cap = e->cap ? e->cap * 2 : 16;
    ILDomain **nd;

    if (e->ndomains < e->cap) {
        return true;
    }
    nd = il_zalloc_array(cap, sizeof(*nd));
    if (!nd) {
        return false;
    }
    if (e->ndomains) {
        memcpy(nd, e->domains, e->ndomains * sizeof(*nd));
    }
    il_free(e->domains);
    e->domains = nd;
    e->cap = cap;
    return true;
}

/* Cannot fail: domain_room() made room. */
static void domain_insert(ILEngine *e, ILDomain *d)
{
    size_t pos = domain_pos(e, d->id);

    memmove(&e->domains[pos + 1], &e->domains[pos],
            (e->ndomains - pos) * sizeof(*e->domains));
    e->domains[pos] = d;
    e->ndomains++;
}

ILError il_domain_alloc_paging(ILEngine *e, uint32_t id, unsigned ias)
{
    ILDomain *d;
    ILError err;

    if (il_domain_find(e, id)) {
        return IL_ERR_EXISTS;
    }
    if (e->ndomains >= IL_MAX_DOMAINS) {
        return IL_ERR_NOSPC;
    }
    if (ias < IL_S2_IAS_MIN || ias > IL_S2_IAS_MAX) {
        return IL_ERR_INVAL;
    }
    d = il_zalloc(sizeof(*d));
    if (!d) {
        return IL_ERR_NOMEM;
    }
    d->id = id;
    d->type = IL_DOMAIN_PAGING;
    err = il_s2_init_pool(&d->s2, ias, &e->tables);
    if (err != IL_OK) {
        il_free(d);
        return err;
    }
    /* Last, so that a failure leaves no allocation behind. */
    if (!domain_room(e)) {
        domain_destroy(d);
        return IL_ERR_NOMEM;
    }
    domain_insert(e, d);
    return IL_OK;
}

ILError il_domain_alloc_nested(ILEngine *e, uint32_t id, uint32_t parent,
                               uint64_t s1_root)
{
    ILDomain *p, *d;

    if (il_domain_find(e, id)) {
        return IL_ERR_EXISTS;
    }
    p = il_domain_find(e, parent);
    if (!p) {
        return IL_ERR_NOENT;
    }
    if (p->type != IL_DOMAIN_PAGING) {
        return IL_ERR_TYPE;
    }
    if (s1_root & IL_PAGE_MASK) {
        return IL_ERR_ALIGN;
    }
    if (e->ndomains >= IL_MAX_DOMAINS) {
        return IL_ERR_NOSPC;
    }
    d = il_zalloc(sizeof(*d));
    if (!d) {
        return IL_ERR_NOMEM;
    }
    if (!domain_room(e)) {
        il_free(d);
        return IL_ERR_NOMEM;
    }
    d->id = id;
    d->type = IL_DOMAIN_NESTED;
    d->parent = p;
    d->s1_root = s1_root;
    p->children++;
    d->next_sibling = p->first_child;
    p->first_child = d;
    domain_insert(e, d);
    return IL_OK;
}

/*
 * The IOTLB's index by domain: each domain lists the slots holding its
 * entries (a doubly linked list through e->tlb_link), so that unmap and
 * invalidation cost what they touch, not a scan of every slot.  The hit path
 * never reads it; a fill links the slot, evicting another domain's entry
 * unlinks it.  The domain is written through a const pointer: the index is
 * the engine's bookkeeping, and every domain is the engine's own allocation.
 */
static void tlb_link(ILEngine *e, uint32_t slot, const ILDomain *dom)
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

static void tlb_unlink(ILEngine *e, uint32_t slot)
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

/* Out of line: only a miss that fills the IOTLB gets here. */
static void tlb_fill(ILEngine *e, ILTlbEntry *t, const ILDomain *d,
                     uint64_t page, const ILResult *r)
{
    uint32_t slot = (uint32_t)(t - e->tlb);

    if (t->dom != d) {
        if (t->dom) {
            tlb_unlink(e, slot);        /* evicts another domain's entry */
        } else {
            e->tlb_valid++;
        }
        t->dom = d;
        tlb_link(e, slot, d);
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

static void tlb_drop_slot(ILEngine *e, uint32_t slot)
{
    tlb_unlink(e, slot);
    e->tlb[slot].dom = NULL;
    e->tlb_valid--;
}

/* Every entry of d. */
static void tlb_drop_domain(ILEngine *e, const ILDomain *dom)
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
static void tlb_drop_children(ILEngine *e, const ILDomain *d)
{
    for (const ILDomain *c = d->first_child; c; c = c->next_sibling) {
        tlb_drop_domain(e, c);
    }
}

/* Does the leaf an entry caches overlap [first, last]? */
static inline bool tlb_overlaps(const ILTlbEntry *t, uint64_t first,
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
 */
static void tlb_drop_range(ILEngine *e, const ILDomain *d, uint64_t first,
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
                tlb_overlaps(t, first, last)) {
                tlb_drop_slot(e, slot);
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

        if (tlb_overlaps(&e->tlb[slot], first, last)) {
            tlb_drop_slot(e, slot);
        }
        slot = next;
    }
}

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
    tlb_drop_domain(e, d);
    tlb_drop_children(e, d);
    e->c.invalidations++;
}

void il_invalidate_range(ILEngine *e, const ILDomain *d, uint64_t iova,
                         uint64_t size)
{
    uint64_t last = iova + (size - 1);

    if (!d) {
        for (size_t i = 0; i < e->ndomains; i++) {
            tlb_drop_range(e, e->domains[i], iova, last);
        }
    } else {
        tlb_drop_range(e, d, iova, last);
        tlb_drop_children(e, d);
    }
    e->c.invalidations++;
}

ILError il_domain_free(ILEngine *e, uint32_t id)
{
    size_t pos = domain_pos(e, id);
    ILDomain *d;

    if (pos >= e->ndomains || e->domains[pos]->id != id) {
        return IL_ERR_NOENT;
    }
    d = e->domains[pos];
    if (d->devices || d->children) {
        return IL_ERR_BUSY;
    }
    tlb_drop_domain(e, d);
    if (d->parent) {
        ILDomain **pp = &d->parent->first_child;

        while (*pp != d) {
            pp = &(*pp)->next_sibling;
        }
        *pp = d->next_sibling;
        d->parent->children--;
    }
    memmove(&e->domains[pos], &e->domains[pos + 1],
            (e->ndomains - pos - 1) * sizeof(*e->domains));
    e->ndomains--;
    domain_destroy(d);
    return IL_OK;
}

ILError il_domain_map(ILEngine *e, uint32_t id, const ILMapping *maps,
                      size_t n, size_t *bad_index)
{
    ILDomain *d = il_domain_find(e, id);

    *bad_index = 0;
    if (!d) {
        return IL_ERR_NOENT;
    }
    if (d->type != IL_DOMAIN_PAGING) {
        return IL_ERR_TYPE;
    }
    /* Mapping an unmapped range cannot make an IOTLB entry stale. */
    return il_s2_map_batch(&d->s2, maps, n, bad_index);
}

ILError il_domain_unmap(ILEngine *e, uint32_t id, const ILMapping *ranges,
                        size_t n, size_t *bad_index, uint64_t *unmapped)
{
    ILDomain *d = il_domain_find(e, id);
    uint64_t bytes = 0;
    ILS2Reserve res;
    ILError err;

    *bad_index = 0;
    *unmapped = 0;
    if (!d) {
        return IL_ERR_NOENT;
    }
    if (d->type != IL_DOMAIN_PAGING) {
        return IL_ERR_TYPE;
    }
    for (size_t i = 0; i < n; i++) {
        err = il_check_range(ranges[i].iova, ranges[i].size, d->s2.ias);
        if (err != IL_OK) {
            *bad_index = i;
            return err;
        }
    }
    /* The tables that splitting blocks needs, before anything changes. */
    err = il_s2_unmap_reserve(&d->s2, ranges, n, &res);
    if (err != IL_OK) {
        return err;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t b = il_s2_unmap_reserved(&d->s2, ranges[i].iova,
                                          ranges[i].size, &res);

        if (b) {
            tlb_drop_range(e, d, ranges[i].iova,
                           ranges[i].iova + (ranges[i].size - 1));
            e->c.invalidations++;
        }
        bytes += b;
    }
    /*
     * Nested children: their stage-1 tables and outputs are IPAs anywhere in
     * this domain, so all of their entries go (once for the batch: nothing
     * translates before it returns).
     */
    if (bytes) {
        tlb_drop_children(e, d);
    }
    il_s2_unmap_release(&d->s2, &res);
    *unmapped = bytes;
    return IL_OK;
}

void il_domain_ref(ILDomain *d)
{
    if (d) {
        d->devices++;
    }
}

void il_domain_unref(ILDomain *d)
{
    if (d) {
        d->devices--;
    }
}

/* Index of the first listed device >= dev. */
static uint32_t dev_pos(const ILDomain *d, uint32_t dev)
{
    uint32_t lo = 0, hi = d->ndevs;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;

        if (d->devs[mid] < dev) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

bool il_domain_has_dev(const ILDomain *d, uint32_t dev)
{
    uint32_t pos = dev_pos(d, dev);

    return pos < d->ndevs && d->devs[pos] == dev;
}

ILError il_domain_attach_dev(ILEngine *e, ILDomain *d, uint32_t dev)
{
    uint32_t pos = dev_pos(d, dev);

    (void)e;
    if (pos < d->ndevs && d->devs[pos] == dev) {
        return IL_ERR_EXISTS;
    }
    if (d->ndevs == d->devs_cap) {
        uint32_t cap = d->devs_cap ? d->devs_cap * 2 : 4;
        uint32_t *nd = il_zalloc_array(cap, sizeof(*nd));

        if (!nd) {
            return IL_ERR_NOMEM;
        }
        if (d->ndevs) {
            memcpy(nd, d->devs, d->ndevs * sizeof(*nd));
        }
        il_free(d->devs);
        d->devs = nd;
        d->devs_cap = cap;
    }
    memmove(&d->devs[pos + 1], &d->devs[pos],
            (d->ndevs - pos) * sizeof(*d->devs));
    d->devs[pos] = dev;
    d->ndevs++;
    d->devices++;
    return IL_OK;
}

void il_domain_detach_dev(ILEngine *e, ILDomain *d, uint32_t dev)
{
    uint32_t pos = dev_pos(d, dev);

    (void)e;
    if (pos == d->ndevs || d->devs[pos] != dev) {
        return;
    }
    memmove(&d->devs[pos], &d->devs[pos + 1],
            (d->ndevs - pos - 1) * sizeof(*d->devs));
    d->ndevs--;
    d->devices--;
}

ILError il_dev_switch_domain(ILEngine *e, uint32_t dev, ILDomain *old,
                             ILDomain *new_domain)
{
    if (old == new_domain) {
        return IL_OK;
    }
    if (new_domain) {
        ILError err = il_domain_attach_dev(e, new_domain, dev);

        if (err != IL_OK) {
            return err;
        }
    }
    if (old) {
        il_domain_detach_dev(e, old, dev);
    }
    return IL_OK;
}

static void domain_devs(const ILDomain *d, ILDevFn *fn, void *opaque)
{
    for (uint32_t i = 0; i < d->ndevs; i++) {
        fn(opaque, d->devs[i], d);
    }
}

void il_domain_for_each_dev(const ILDomain *d, bool children, ILDevFn *fn,
                            void *opaque)
{
    domain_devs(d, fn, opaque);
    if (children) {
        for (const ILDomain *c = d->first_child; c; c = c->next_sibling) {
            domain_devs(c, fn, opaque);
        }
    }
}

void il_domain_for_each_mapping(const ILDomain *d, ILS2WalkFn *fn,
                                void *opaque)
{
    if (d->type == IL_DOMAIN_PAGING) {
        il_s2_for_each(&d->s2, fn, opaque);
    }
}

bool il_domain_walk_page(const ILDomain *d, uint64_t start, uint64_t max,
                         ILS2WalkFn *fn, void *opaque, uint64_t *next)
{
    if (d->type != IL_DOMAIN_PAGING) {
        return false;
    }
    return il_s2_walk_page(&d->s2, start, max, fn, opaque, next);
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
            tlb_fill(e, t, d, page, r);
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

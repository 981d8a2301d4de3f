/*
 * iommulab core: domains.  The engine's table of domains (sorted by id), a
 * domain's lifetime (paging and nested allocation, free), its mappings (map
 * and unmap, which invalidates the IOTLB entries the unmap made stale) and
 * the devices attached to it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <stdlib.h>
#include <string.h>
#include "il-engine-internal.h"
#include "il-alloc.h"

void il_domain_destroy(ILDomain *d)
{
    if (d->type == IL_DOMAIN_PAGING) {
        il_s2_destroy(&d->s2);
    }
    il_free(d->devs);
    il_free(d);
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
        il_domain_destroy(d);
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
    il_iotlb_drop_domain(e, d);
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
    il_domain_destroy(d);
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
            il_iotlb_drop_range(e, d, ranges[i].iova,
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
        il_iotlb_drop_children(e, d);
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

/*
 * iommulab-viommu: the QMP commands that read its state (docs/qmp.md):
 * x-iommulab-query, -query-counters, -translate (a debug walk that
 * records nothing).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/qapi-commands-iommulab.h"
#include "qapi/error.h"
#include "hw/pci/pci.h"
#include "iommulab-internal.h"
#include "iommulab-payload.h"

/*
 * Mappings one answer carries at most: a whole answer (all domains) and a
 * page alike.  At ~125 JSON bytes for the largest mapping that is ~8 MB, so
 * an answer stays a few MB whatever a domain holds (pyctl sizes its read
 * buffer from this, pyctl/qemu/qmp.py).
 */
#define IOMMULAB_QUERY_MAX_MAPPINGS (1u << 16)
/*
 * Packed (32 bytes a mapping, base64): 2^18 mappings are 8 MiB, 11 MB of
 * base64, as large as the largest x-iommulab-spapr-read-tces answer.
 */
#define IOMMULAB_QUERY_MAX_PACKED (1u << 18)

typedef struct MappingPage {
    IommulabMappingList **tail;
    GByteArray *packed;         /* packed records instead of the list */
    uint64_t n;
} MappingPage;

static void iommulab_collect_mapping(void *opaque, const ILMapping *m)
{
    MappingPage *p = opaque;
    IommulabMapping *im;

    p->n++;
    if (p->packed) {
        uint8_t rec[IOMMULAB_PAYLOAD_MAPPING];

        stq_le_p(rec, m->iova);
        stq_le_p(rec + 8, m->size);
        stq_le_p(rec + 16, m->addr);
        stq_le_p(rec + 24, m->perm & IL_PERM_RW);
        g_byte_array_append(p->packed, rec, sizeof(rec));
        return;
    }
    im = g_new0(IommulabMapping, 1);
    im->iova = m->iova;
    im->size = m->size;
    im->addr = m->addr;
    im->read = m->perm & IL_PERM_R;
    im->write = m->perm & IL_PERM_W;
    QAPI_LIST_APPEND(p->tail, im);
}

static IommulabAttachMode mode_to_qapi(ILMode mode)
{
    return mode == IL_MODE_DOMAIN ? IOMMULAB_ATTACH_MODE_DOMAIN :
           mode == IL_MODE_BYPASS ? IOMMULAB_ATTACH_MODE_BYPASS :
           IOMMULAB_ATTACH_MODE_BLOCKED;
}

/* @d, no mappings yet */
static IommulabDomainInfo *domain_info(const ILDomain *d)
{
    IommulabDomainInfo *di = g_new0(IommulabDomainInfo, 1);

    di->domain = il_domain_id(d);
    di->devices = il_domain_devices(d);
    di->children = il_domain_children(d);
    di->ias = il_domain_ias(d);
    if (il_domain_type(d) == IL_DOMAIN_PAGING) {
        di->type = IOMMULAB_DOMAIN_TYPE_PAGING;
    } else {
        di->type = IOMMULAB_DOMAIN_TYPE_NESTED;
        di->has_parent = true;
        di->parent = il_domain_id(il_domain_parent(d));
        di->has_s1_root = true;
        di->s1_root = il_domain_s1_root(d);
    }
    return di;
}

/*
 * Add to @di the mappings of @d at or above @start, at most @max of them,
 * as a list or (@packed) as base64 'data' and 'count'; *@n: how many.
 * Returns true if more remain (*next: where the next page starts).
 */
static bool domain_page(IommulabDomainInfo *di, const ILDomain *d,
                        uint64_t start, uint64_t max, bool packed,
                        uint64_t *next, uint64_t *n)
{
    MappingPage page = { .tail = &di->mappings };
    bool more;

    if (packed) {
        page.packed = g_byte_array_new();
    }
    more = il_domain_walk_page(d, start, max, iommulab_collect_mapping, &page,
                               next);
    if (packed) {
        di->data = iommulab_payload_encode(page.packed->data,
                                           IOMMULAB_PAYLOAD_MAPPING, page.n);
        di->has_count = true;
        di->count = page.n;
        g_byte_array_free(page.packed, true);
    }
    *n = page.n;
    return more;
}

/*
 * Every domain, all mappings: at most IOMMULAB_QUERY_MAX_MAPPINGS in all.
 * A domain's walk stops one past what is left, so a refused answer costs
 * no more than an accepted one.
 */
static bool all_domains(IOMMULabState *s, IommulabInfo *info, bool packed,
                        Error **errp)
{
    IommulabDomainInfoList **dtail = &info->domains;
    uint64_t max = packed ? IOMMULAB_QUERY_MAX_PACKED :
                   IOMMULAB_QUERY_MAX_MAPPINGS;
    uint64_t left = max;

    for (size_t i = 0; i < il_domain_count(&s->engine); i++) {
        const ILDomain *d = il_domain_at(&s->engine, i);
        IommulabDomainInfo *di = domain_info(d);
        uint64_t next, n;

        domain_page(di, d, 0, left + 1, packed, &next, &n);
        QAPI_LIST_APPEND(dtail, di);
        if (n > left) {
            error_setg(errp, "the domains hold more than %" PRIu64 " mappings,"
                       " more than one answer carries: page them with "
                       "'domain', 'start' and 'max-mappings' (domain %u is "
                       "the first over)", max, il_domain_id(d));
            return false;
        }
        left -= n;
    }
    return true;
}

static bool one_domain(IOMMULabState *s, IommulabInfo *info, uint32_t id,
                       uint64_t start, uint32_t max, bool packed,
                       Error **errp)
{
    const ILDomain *d = il_domain_find(&s->engine, id);
    IommulabDomainInfo *di;
    uint64_t next, n;
    bool more;

    if (!d) {
        error_setg(errp, "no domain %u", id);
        return false;
    }
    di = domain_info(d);
    more = domain_page(di, d, start, max, packed, &next, &n);
    di->has_next = more;
    di->next = more ? next : 0;
    QAPI_LIST_PREPEND(info->domains, di);
    return true;
}

/* The domains (all, or @id) without mappings: the list a client pages. */
static bool no_mappings(IOMMULabState *s, IommulabInfo *info, bool has_id,
                        uint32_t id, Error **errp)
{
    IommulabDomainInfoList **dtail = &info->domains;

    if (has_id && !il_domain_find(&s->engine, id)) {
        error_setg(errp, "no domain %u", id);
        return false;
    }
    for (size_t i = 0; i < il_domain_count(&s->engine); i++) {
        const ILDomain *d = il_domain_at(&s->engine, i);

        if (!has_id || il_domain_id(d) == id) {
            QAPI_LIST_APPEND(dtail, domain_info(d));
        }
    }
    return true;
}

static void devices_info(IOMMULabState *s, IommulabInfo *info)
{
    IommulabDeviceInfoList **vtail = &info->devices;

    for (unsigned j = 0; j < s->devs->len; j++) {
        IOMMULabDev *dev = g_ptr_array_index(s->devs, j);
        PCIDevice *pdev = iommulab_dev_pci(dev);
        IommulabDeviceInfo *vi;

        if (!pdev || (PCI_DEVICE(s) == pdev && !s->keep_bus_iommu)) {
            continue;
        }
        vi = g_new0(IommulabDeviceInfo, 1);
        vi->device = object_get_canonical_path(OBJECT(pdev));
        if (DEVICE(pdev)->id) {
            vi->id = g_strdup(DEVICE(pdev)->id);
        }
        vi->requester_id = iommulab_dev_rid(dev);
        vi->mode = mode_to_qapi(dev->mode);
        if (dev->mode == IL_MODE_DOMAIN) {
            vi->has_domain = true;
            vi->domain = il_domain_id(dev->domain);
        }
        QAPI_LIST_APPEND(vtail, vi);
    }
}

IommulabInfo *qmp_x_iommulab_query(const char *iommu, bool has_domain,
                                   uint32_t domain, bool has_start,
                                   uint64_t start, bool has_max_mappings,
                                   uint32_t max_mappings, bool has_mappings,
                                   bool mappings, bool has_packed,
                                   bool packed, Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    uint32_t page_max = packed ? IOMMULAB_QUERY_MAX_PACKED :
                        IOMMULAB_QUERY_MAX_MAPPINGS;
    IommulabInfo *info;
    bool ok;

    if (!s) {
        return NULL;
    }
    if (!has_domain && (has_start || has_max_mappings)) {
        error_setg(errp, "'start' and 'max-mappings' page one domain's "
                   "mappings: they need 'domain'");
        return NULL;
    }
    if (has_mappings && !mappings && (has_start || has_max_mappings)) {
        error_setg(errp, "'start' and 'max-mappings' page mappings: not "
                   "with 'mappings' false");
        return NULL;
    }
    if (has_max_mappings && (!max_mappings || max_mappings > page_max)) {
        error_setg(errp, "max-mappings must be 1 to %u%s", page_max,
                   packed ? " (packed)" : " (up to 262144 with 'packed')");
        return NULL;
    }
    info = g_new0(IommulabInfo, 1);
    info->path = object_get_canonical_path(OBJECT(s));
    info->default_mode = mode_to_qapi(s->default_mode);
    qemu_mutex_lock(&s->lock);
    info->iotlb_size = il_iotlb_size(&s->engine);
    info->generation = s->generation;
    info->fault_queue_size = il_faults_capacity(&s->engine);
    if (has_mappings && !mappings) {
        ok = no_mappings(s, info, has_domain, domain, errp);
    } else if (has_domain) {
        ok = one_domain(s, info, domain, has_start ? start : 0,
                        has_max_mappings ? max_mappings :
                        IOMMULAB_QUERY_MAX_MAPPINGS, packed, errp);
    } else {
        ok = all_domains(s, info, packed, errp);
    }
    if (ok) {
        devices_info(s, info);
    }
    qemu_mutex_unlock(&s->lock);
    if (!ok) {
        qapi_free_IommulabInfo(info);
        return NULL;
    }
    return info;
}

IommulabCounters *qmp_x_iommulab_query_counters(const char *iommu,
                                                Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    const ILCounters *ec;
    IommulabCounters *c;

    if (!s) {
        return NULL;
    }
    c = g_new0(IommulabCounters, 1);
    qemu_mutex_lock(&s->lock);
    ec = il_engine_counters(&s->engine);
    c->hits = ec->hits;
    c->misses = ec->misses;
    c->walks = ec->walks;
    c->faults = ec->faults;
    c->faults_dropped = ec->faults_dropped;
    c->invalidations = ec->invalidations;
    c->iotlb_entries = il_iotlb_valid(&s->engine);
    c->events_suppressed = il_faults_suppressed(&s->engine);
    qemu_mutex_unlock(&s->lock);
    return c;
}

IommulabTranslation *qmp_x_iommulab_translate(const char *iommu,
                                              const char *device,
                                              uint64_t iova,
                                              IommulabAccess access,
                                              Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    IOMMULabDev *dev = s ? iommulab_find_dev(s, device, errp) : NULL;
    IommulabTranslation *t;
    ILResult r;
    bool ok;

    if (!dev) {
        return NULL;
    }
    qemu_mutex_lock(&s->lock);
    ok = il_translate(&s->engine, dev->mode, dev->domain, dev->index, iova,
                      access == IOMMULAB_ACCESS_WRITE ? IL_ACCESS_WRITE :
                      IL_ACCESS_READ, IL_TR_DEBUG, &r, NULL);
    qemu_mutex_unlock(&s->lock);
    t = g_new0(IommulabTranslation, 1);
    t->allowed = ok;
    if (ok) {
        t->has_addr = t->has_read = t->has_write = true;
        t->addr = r.addr;
        t->read = r.perm & IL_PERM_R;
        t->write = r.perm & IL_PERM_W;
    } else {
        t->has_stage = t->has_reason = true;
        t->stage = stage_to_qapi(r.stage);
        t->reason = reason_to_qapi(r.reason);
    }
    return t;
}

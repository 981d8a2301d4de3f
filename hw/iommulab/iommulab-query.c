/*
 * iommulab-viommu: the QMP commands that read its state (docs/qmp.md):
 * x-iommulab-query, -query-counters, -translate (a debug walk that
 * records nothing).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/qapi-commands-iommulab.h"
#include "hw/pci/pci.h"
#include "iommulab-internal.h"

static void iommulab_collect_mapping(void *opaque, const ILMapping *m)
{
    IommulabMappingList ***tail = opaque;
    IommulabMapping *im = g_new0(IommulabMapping, 1);

    im->iova = m->iova;
    im->size = m->size;
    im->addr = m->addr;
    im->read = m->perm & IL_PERM_R;
    im->write = m->perm & IL_PERM_W;
    QAPI_LIST_APPEND(*tail, im);
}

static IommulabAttachMode mode_to_qapi(ILMode mode)
{
    return mode == IL_MODE_DOMAIN ? IOMMULAB_ATTACH_MODE_DOMAIN :
           mode == IL_MODE_BYPASS ? IOMMULAB_ATTACH_MODE_BYPASS :
           IOMMULAB_ATTACH_MODE_BLOCKED;
}

IommulabInfo *qmp_x_iommulab_query(const char *iommu, Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    IommulabInfo *info;
    IommulabDomainInfoList **dtail;
    IommulabDeviceInfoList **vtail;

    if (!s) {
        return NULL;
    }
    info = g_new0(IommulabInfo, 1);
    dtail = &info->domains;
    vtail = &info->devices;

    info->path = object_get_canonical_path(OBJECT(s));
    info->default_mode = mode_to_qapi(s->default_mode);
    qemu_mutex_lock(&s->lock);
    info->iotlb_size = il_iotlb_size(&s->engine);
    info->fault_queue_size = il_faults_capacity(&s->engine);
    for (size_t i = 0; i < il_domain_count(&s->engine); i++) {
        const ILDomain *d = il_domain_at(&s->engine, i);
        IommulabDomainInfo *di = g_new0(IommulabDomainInfo, 1);
        IommulabMappingList **mtail = &di->mappings;

        di->domain = il_domain_id(d);
        di->devices = il_domain_devices(d);
        di->children = il_domain_children(d);
        di->ias = il_domain_ias(d);
        il_domain_for_each_mapping(d, iommulab_collect_mapping, &mtail);
        if (il_domain_type(d) == IL_DOMAIN_PAGING) {
            di->type = IOMMULAB_DOMAIN_TYPE_PAGING;
        } else {
            di->type = IOMMULAB_DOMAIN_TYPE_NESTED;
            di->has_parent = true;
            di->parent = il_domain_id(il_domain_parent(d));
            di->has_s1_root = true;
            di->s1_root = il_domain_s1_root(d);
        }
        QAPI_LIST_APPEND(dtail, di);
    }
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
    qemu_mutex_unlock(&s->lock);
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

/*
 * iommulab-viommu: the QMP commands that program it (docs/qmp.md):
 * x-iommulab-domain-alloc, -domain-free, -map, -unmap, -attach
 * (-invalidate: iommulab-invalidate.c).  Under the BQL; the engine under
 * the device's lock, the IOMMU notifiers called without it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab.h"
#include "hw/pci/pci.h"
#include "iommulab-internal.h"
#include "iommulab-payload.h"
#include "iommulab-owner.h"
#include "trace.h"

/* ---- control commands (QMP, under the BQL) ---- */

IOMMULabState *iommulab_find(const char *name, Error **errp)
{
    Object *obj = iommulab_resolve(name, TYPE_IOMMULAB_VIOMMU,
                                   "an " TYPE_IOMMULAB_VIOMMU, errp);

    return obj ? IOMMULAB_VIOMMU(obj) : NULL;
}

bool iommulab_lock_domain(IOMMULabState *s, bool has_domain, uint32_t domain,
                          ILDomain **d, Error **errp)
{
    qemu_mutex_lock(&s->lock);
    *d = has_domain ? il_domain_find(&s->engine, domain) : NULL;
    if (has_domain && !*d) {
        qemu_mutex_unlock(&s->lock);
        error_setg(errp, "domain %" PRIu32 " does not exist", domain);
        return false;
    }
    return true;
}

static void iommulab_set_error(Error **errp, ILError err, const char *what,
                               uint32_t domain)
{
    error_setg(errp, "%s: domain %" PRIu32 ": %s", what, domain,
               il_strerror(err));
}

/*
 * Map and unmap name a paging domain: its absence or another type is the
 * error, whatever the ranges were (true when @err was one of those).
 */
static bool iommulab_paging_domain_error(Error **errp, uint32_t domain,
                                         ILError err)
{
    if (err != IL_ERR_NOENT && err != IL_ERR_TYPE) {
        return false;
    }
    error_setg(errp, "domain %" PRIu32 " %s", domain,
               err == IL_ERR_NOENT ? "does not exist" :
               "is not a paging domain");
    return true;
}

void qmp_x_iommulab_domain_alloc(const char *iommu, uint32_t domain,
                                 IommulabDomainType type, bool has_parent,
                                 uint32_t parent, bool has_s1_root,
                                 uint64_t s1_root, bool has_ias, uint8_t ias,
                                 const char *owner, Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    ILError err;

    if (!s || !iommulab_owner_check(OBJECT(s), owner, errp)) {
        return;
    }

    if (type == IOMMULAB_DOMAIN_TYPE_PAGING) {
        if (has_parent || has_s1_root) {
            error_setg(errp, "'parent' and 's1-root' are for nested domains");
            return;
        }
        if (has_ias && (ias < IL_S2_IAS_MIN || ias > IL_S2_IAS_MAX)) {
            error_setg(errp, "'ias' must be %d to %d bits, not %u",
                       IL_S2_IAS_MIN, IL_S2_IAS_MAX, ias);
            return;
        }
    } else {
        if (s->no_nesting) {
            error_setg(errp, "%s offers no nested domains",
                       object_get_typename(OBJECT(s)));
            return;
        }
        if (!has_parent || !has_s1_root) {
            error_setg(errp, "a nested domain needs 'parent' and 's1-root'");
            return;
        }
        if (has_ias) {
            error_setg(errp, "'ias' is for paging domains (stage 1 is "
                       "always %d bits)", IL_S1_IAS);
            return;
        }
    }
    qemu_mutex_lock(&s->lock);
    if (type == IOMMULAB_DOMAIN_TYPE_PAGING) {
        err = il_domain_alloc_paging(&s->engine, domain, has_ias ? ias :
                                     IOMMULAB_DEFAULT_IAS);
    } else {
        err = il_domain_alloc_nested(&s->engine, domain, parent, s1_root);
    }
    qemu_mutex_unlock(&s->lock);
    switch (err) {
    case IL_OK:
        s->generation++;
        trace_iommulab_domain_alloc(domain, type);
        return;
    case IL_ERR_NOENT:
        error_setg(errp, "parent domain %" PRIu32 " does not exist", parent);
        return;
    case IL_ERR_TYPE:
        error_setg(errp, "parent domain %" PRIu32 " is not a paging domain",
                   parent);
        return;
    case IL_ERR_ALIGN:
        error_setg(errp, "'s1-root' 0x%" PRIx64 " is not 4 KiB aligned",
                   s1_root);
        return;
    default:
        iommulab_set_error(errp, err, "domain-alloc", domain);
    }
}

void qmp_x_iommulab_domain_free(const char *iommu, uint32_t domain,
                                const char *owner, Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    ILDomain *d;
    ILError err = IL_ERR_NOENT;

    if (!s || !iommulab_owner_check(OBJECT(s), owner, errp)) {
        return;
    }

    qemu_mutex_lock(&s->lock);
    d = il_domain_find(&s->engine, domain);
    if (d && (il_domain_devices(d) || il_domain_children(d))) {
        error_setg(errp, "domain %" PRIu32 " is in use: %" PRIu32
                   " device(s) attached, %" PRIu32 " nested domain(s) on it",
                   domain, il_domain_devices(d), il_domain_children(d));
        qemu_mutex_unlock(&s->lock);
        return;
    }
    if (d) {
        err = il_domain_free(&s->engine, domain);
    }
    qemu_mutex_unlock(&s->lock);
    if (err != IL_OK) {
        iommulab_set_error(errp, err, "domain-free", domain);
        return;
    }
    s->generation++;
    trace_iommulab_domain_free(domain);
}

void qmp_x_iommulab_map(const char *iommu, uint32_t domain,
                        bool has_mappings, IommulabMappingList *mappings,
                        const char *data,
                        const char *fd, bool has_count, uint64_t count,
                        const char *owner, Error **errp)
{
    g_autofree ILMapping *maps = NULL;
    g_autoptr(GArray) users = NULL;
    IOMMULabState *s;
    size_t n = 0, i, bad = 0;
    ILError err;

    maps = iommulab_payload_ranges(has_mappings, mappings, false, "mappings",
                                   data, fd, has_count, count, &n, errp);
    s = maps ? iommulab_find(iommu, errp) : NULL;
    if (!s || !iommulab_owner_check(OBJECT(s), owner, errp)) {
        return;
    }
    qemu_mutex_lock(&s->lock);
    err = il_domain_map(&s->engine, domain, maps, n, &bad);
    if (err == IL_OK) {
        users = iommulab_domain_users(s, il_domain_find(&s->engine, domain),
                                      false);
    }
    qemu_mutex_unlock(&s->lock);
    if (iommulab_paging_domain_error(errp, domain, err)) {
        return;
    }
    if (err != IL_OK) {
        error_setg(errp, "mappings[%zu] (iova 0x%" PRIx64 " size 0x%" PRIx64
                   " addr 0x%" PRIx64 "): %s; nothing was mapped", bad,
                   maps[bad].iova, maps[bad].size, maps[bad].addr,
                   il_strerror(err));
        return;
    }
    s->generation++;
    trace_iommulab_map_batch(domain, n);
    if (trace_event_get_state_backends(TRACE_IOMMULAB_MAP)) {
        for (i = 0; i < n; i++) {
            trace_iommulab_map(domain, maps[i].iova, maps[i].size,
                               maps[i].addr, maps[i].perm);
        }
    }
    /* MAP notifications for the devices attached to this domain. */
    for (unsigned j = 0; j < users->len; j++) {
        IOMMULabDev *dev = g_array_index(users, IOMMULabUser, j).dev;
        IOMMUNotifier *nf;

        IOMMU_NOTIFIER_FOREACH(nf, &dev->iommu_mr) {
            for (i = 0; i < n; i++) {
                iommulab_notify_range(nf, IOMMU_NOTIFIER_MAP, maps[i].iova,
                                      maps[i].iova + (maps[i].size - 1),
                                      maps[i].addr,
                                      perm_to_iommu(maps[i].perm));
            }
        }
    }
}

IommulabUnmapResult *qmp_x_iommulab_unmap(const char *iommu, uint32_t domain,
                                          bool has_ranges,
                                          IommulabRangeList *ranges,
                                          const char *data, const char *fd,
                                          bool has_count, uint64_t count,
                                          const char *owner,
                                          Error **errp)
{
    g_autofree ILMapping *r = NULL;
    g_autoptr(GArray) users = NULL;
    IOMMULabState *s;
    size_t n = 0, i, bad = 0;
    IommulabUnmapResult *res;
    uint64_t bytes = 0;
    ILError err;

    r = iommulab_payload_ranges(has_ranges, ranges, true, "ranges", data, fd,
                                has_count, count, &n, errp);
    s = r ? iommulab_find(iommu, errp) : NULL;
    if (!s || !iommulab_owner_check(OBJECT(s), owner, errp)) {
        return NULL;
    }
    qemu_mutex_lock(&s->lock);
    err = il_domain_unmap(&s->engine, domain, r, n, &bad, &bytes);
    if (err == IL_OK) {
        users = iommulab_domain_users(s, il_domain_find(&s->engine, domain),
                                      true);
    }
    qemu_mutex_unlock(&s->lock);
    if (iommulab_paging_domain_error(errp, domain, err)) {
        return NULL;
    }
    if (err != IL_OK) {
        error_setg(errp, "ranges[%zu] (iova 0x%" PRIx64 " size 0x%" PRIx64
                   "): %s; nothing was unmapped", bad, r[bad].iova,
                   r[bad].size, il_strerror(err));
        return NULL;
    }
    s->generation++;
    trace_iommulab_unmap_batch(domain, n, bytes);
    if (trace_event_get_state_backends(TRACE_IOMMULAB_UNMAP)) {
        for (i = 0; i < n; i++) {
            trace_iommulab_unmap(domain, r[i].iova, r[i].size);
        }
    }
    /*
     * The IOTLB is already clean; now the notifier consumers: the domain's
     * devices for the ranges, its nested children's for everything (their
     * tables and outputs may be anywhere in it).
     */
    for (unsigned j = 0; j < users->len; j++) {
        IOMMULabUser *u = &g_array_index(users, IOMMULabUser, j);

        if (u->child) {
            iommulab_dev_unmap(u->dev, 0, UINT64_MAX);
            continue;
        }
        for (i = 0; i < n; i++) {
            iommulab_dev_unmap(u->dev, r[i].iova, r[i].iova + (r[i].size - 1));
        }
    }
    res = g_new0(IommulabUnmapResult, 1);
    res->unmapped = bytes;
    return res;
}

IOMMULabDev *iommulab_find_dev(IOMMULabState *s, const char *name,
                               Error **errp)
{
    Object *obj = iommulab_resolve(name, TYPE_PCI_DEVICE, "a PCI device",
                                   errp);
    AddressSpace *as;

    if (!obj) {
        return NULL;
    }
    if (obj == OBJECT(s) && !s->keep_bus_iommu) {
        error_setg(errp, "'%s' is the vIOMMU itself", name);
        return NULL;
    }
    as = pci_device_iommu_address_space(PCI_DEVICE(obj));
    for (unsigned i = 0; i < s->devs->len; i++) {
        IOMMULabDev *dev = g_ptr_array_index(s->devs, i);

        /*
         * With keep_bus_iommu the vIOMMU's own requester stands for what
         * it sits beneath (sPAPR: the PHB, whose devices share it).
         */
        if (&dev->as == as ||
            (obj == OBJECT(s) && iommulab_dev_pci(dev) == PCI_DEVICE(s))) {
            return dev;
        }
    }
    error_setg(errp, "PCI device '%s' is not behind this vIOMMU", name);
    return NULL;
}

/*
 * Attach a requester (all or nothing).  The domain's list of devices
 * follows (il_dev_switch_domain()), so that unmap and invalidate notify
 * only the domain's users.
 */
static bool iommulab_attach_requester(IOMMULabDev *dev,
                                      IommulabAttachMode mode,
                                      bool has_domain, uint32_t domain,
                                      Error **errp)
{
    IOMMULabState *s = dev->s;
    ILDomain *d = NULL;
    ILError err;

    if (mode == IOMMULAB_ATTACH_MODE_DOMAIN && !has_domain) {
        error_setg(errp, "mode 'domain' needs 'domain'");
        return false;
    }
    if (mode != IOMMULAB_ATTACH_MODE_DOMAIN && has_domain) {
        error_setg(errp, "'domain' is only valid with mode 'domain'");
        return false;
    }
    if (!iommulab_lock_domain(s, has_domain, domain, &d, errp)) {
        return false;
    }
    err = il_dev_switch_domain(&s->engine, dev->index, dev->domain, d);
    if (err != IL_OK) {
        qemu_mutex_unlock(&s->lock);
        error_setg(errp, "attach: %s; nothing changed", il_strerror(err));
        return false;
    }
    s->generation++;
    dev->domain = d;
    dev->mode = mode == IOMMULAB_ATTACH_MODE_DOMAIN ? IL_MODE_DOMAIN :
                mode == IOMMULAB_ATTACH_MODE_BYPASS ? IL_MODE_BYPASS :
                IL_MODE_BLOCKED;
    qemu_mutex_unlock(&s->lock);
    trace_iommulab_attach(iommulab_dev_rid(dev), mode, domain);
    iommulab_dev_changed(dev);
    return true;
}

void qmp_x_iommulab_attach(const char *iommu, const char *device,
                           IommulabAttachMode mode, bool has_domain,
                           uint32_t domain, const char *owner,
                           Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    IOMMULabDev *dev = s ? iommulab_find_dev(s, device, errp) : NULL;

    if (dev && iommulab_owner_check(OBJECT(s), owner, errp)) {
        iommulab_attach_requester(dev, mode, has_domain, domain, errp);
    }
}

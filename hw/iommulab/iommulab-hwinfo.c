/*
 * iommulab-viommu: x-iommulab-query-hw-info, the hardware facts the
 * control plane sizes its model by (the lab's IOMMU_GET_HW_INFO plus the
 * reserved regions): of a vIOMMU, of one of its requesters, or of a PCI
 * device on a pseries PHB (spapr/iommulab-spapr-hwinfo.c).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab.h"
#include "hw/pci/pci.h"
#include "iommulab-internal.h"
#include "spapr/iommulab-spapr.h"
#include "iommulab-payload.h"

/*
 * Leaf sizes of a walk (stage 2, and the stage-1 format): 4 KiB pages at
 * the last level, blocks at the two levels above it (il-s2.h, il-s1.h).
 */
static uint64_t iommulab_leaf_sizes(void)
{
    return IL_PAGE_SIZE | IL_PAGE_SIZE << IL_LEVEL_BITS |
           IL_PAGE_SIZE << (2 * IL_LEVEL_BITS);
}

static IommulabHwInfo *iommulab_hw_info(IOMMULabState *s, IOMMULabDev *dev)
{
    IOMMULabClass *ic = IOMMULAB_VIOMMU_GET_CLASS(s);
    IommulabHwInfo *info = g_new0(IommulabHwInfo, 1);

    info->type = IOMMULAB_HW_TYPE_PAGING;
    info->iommu = object_get_canonical_path(OBJECT(s));
    if (dev) {
        info->device = iommulab_dev_name(dev);
        info->has_requester_id = true;
        info->requester_id = iommulab_dev_rid(dev);
    }
    info->ias = g_new0(IommulabHwIas, 1);
    info->ias->min = IL_S2_IAS_MIN;
    info->ias->max = IL_S2_IAS_MAX;
    info->ias->q_default = IOMMULAB_DEFAULT_IAS;
    info->page_sizes = iommulab_leaf_sizes();
    info->nesting = !s->no_nesting;
    if (info->nesting) {
        info->stage1 = g_new0(IommulabHwStage1, 1);
        info->stage1->format = IOMMULAB_STAGE1_FORMAT_IOMMULAB;
        info->stage1->ias = IL_S1_IAS;
        info->stage1->levels = IL_S1_LEVELS;
        info->stage1->page_sizes = iommulab_leaf_sizes();
    }
    info->dirty_tracking = false;
    if (s->msi_size) {
        IommulabResvRegion *r = g_new0(IommulabResvRegion, 1);

        info->msi_window = g_new0(IommulabHwRange, 1);
        info->msi_window->start = s->msi_base;
        info->msi_window->size = s->msi_size;
        r->start = s->msi_base;
        r->size = s->msi_size;
        r->type = IOMMULAB_RESV_TYPE_MSI;
        QAPI_LIST_PREPEND(info->reserved_regions, r);
    }
    info->has_iotlb_size = true;
    qemu_mutex_lock(&s->lock);
    info->iotlb_size = il_iotlb_size(&s->engine);
    info->fault_queue_size = il_faults_capacity(&s->engine);
    qemu_mutex_unlock(&s->lock);
    info->limits = g_new0(IommulabHwLimits, 1);
    info->limits->max_domains = IL_MAX_DOMAINS;
    info->limits->max_tables_per_domain = IL_S2_MAX_TABLES;
    info->limits->table_budget_bytes = (uint64_t)IL_S2_MAX_TABLES *
                                       IL_TABLE_ENTRIES * sizeof(uint64_t);
    qemu_mutex_lock(&s->lock);
    info->limits->table_memory_limit = il_engine_table_limit(&s->engine);
    info->limits->table_memory = il_engine_table_bytes(&s->engine);
    info->limits->max_batch = IOMMULAB_PAYLOAD_BATCH_MAX;
    qemu_mutex_unlock(&s->lock);
    if (ic->hw_info) {
        ic->hw_info(s, info);
    }
    return info;
}

/* The requester that is the vIOMMU itself (keep_bus_iommu subclasses) */
static IOMMULabDev *iommulab_self_requester(IOMMULabState *s)
{
    for (unsigned i = 0; i < s->devs->len; i++) {
        IOMMULabDev *dev = g_ptr_array_index(s->devs, i);

        if (iommulab_dev_pci(dev) == PCI_DEVICE(s)) {
            return dev;
        }
    }
    return NULL;
}

typedef struct IOMMULabFindReq {
    AddressSpace *as;
    IOMMULabDev *dev;
} IOMMULabFindReq;

static int iommulab_find_req_one(Object *obj, void *opaque)
{
    IOMMULabFindReq *f = opaque;
    IOMMULabState *s = (IOMMULabState *)
        object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU);

    for (unsigned i = 0; s && s->devs && i < s->devs->len; i++) {
        IOMMULabDev *dev = g_ptr_array_index(s->devs, i);

        if (&dev->as == f->as) {
            f->dev = dev;
            return 1;
        }
    }
    return 0;
}

IommulabHwInfo *qmp_x_iommulab_query_hw_info(const char *device, Error **errp)
{
    Object *obj = iommulab_resolve(device, TYPE_DEVICE, "a device", errp);
    IOMMULabFindReq f = { };
    IommulabHwInfo *info;
    IOMMULabState *s;

    if (!obj) {
        return NULL;
    }
    s = (IOMMULabState *)object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU);
    if (s) {
        /* a stage 2 beneath another IOMMU is its own requester too */
        return iommulab_hw_info(s, s->keep_bus_iommu ?
                                   iommulab_self_requester(s) : NULL);
    }
    if (!object_dynamic_cast(obj, TYPE_PCI_DEVICE)) {
        error_setg(errp, "'%s' is neither an iommulab vIOMMU nor a PCI "
                   "device", device);
        return NULL;
    }
    f.as = pci_device_iommu_address_space(PCI_DEVICE(obj));
    object_child_foreach_recursive(object_get_root(), iommulab_find_req_one,
                                   &f);
    if (f.dev) {
        return iommulab_hw_info(f.dev->s, f.dev);
    }
    info = iommulab_spapr_requester_hw_info(PCI_DEVICE(obj));
    if (!info) {
        error_setg(errp, "PCI device '%s' is behind no iommulab vIOMMU and "
                   "on no pseries PHB", device);
    }
    return info;
}

/*
 * iommulab-viommu: the core's fault records as QMP shows them (the
 * X_IOMMULAB_FAULT event, iommulab-requester.c) and x-iommulab-query-faults,
 * which reads every lab fault queue: the vIOMMUs' and the pseries PHBs'.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab.h"
#include "iommulab-internal.h"
#include "spapr/iommulab-spapr.h"

static IommulabAccess access_to_qapi(unsigned access)
{
    return (access & IL_ACCESS_WRITE) ? IOMMULAB_ACCESS_WRITE :
                                        IOMMULAB_ACCESS_READ;
}

void iommulab_fault_to_qapi(const ILFault *f, IommulabFault *qf)
{
    qf->iova = f->iova;
    qf->access = access_to_qapi(f->access);
    qf->stage = stage_to_qapi(f->stage);
    qf->reason = reason_to_qapi(f->reason);
    qf->has_domain = f->has_domain;
    qf->domain = f->domain;
    if (f->stage == IL_STAGE_TCE) {
        qf->has_liobn = qf->has_tce = true;
        qf->liobn = f->liobn;
        qf->tce = f->tce;
    }
}

/* The record of a requester's fault, as the queue and the event show it */
void iommulab_dev_fault(IOMMULabState *s, IOMMULabDev *dev,
                        const ILFault *f, IommulabFault *qf)
{
    iommulab_fault_to_qapi(f, qf);
    qf->iommu = object_get_canonical_path(OBJECT(s));
    qf->device = iommulab_dev_name(dev);
    qf->has_requester_id = true;
    qf->requester_id = iommulab_dev_rid(dev);
}

/* Append the vIOMMU's fault queue to *tail (and clear it) */
static void iommulab_collect_faults(IOMMULabState *s, bool clear,
                                    IommulabFaultList ***tail,
                                    uint64_t *dropped)
{
    qemu_mutex_lock(&s->lock);
    for (uint32_t i = 0; i < il_faults_count(&s->engine); i++) {
        const ILFault *f = il_faults_get(&s->engine, i);
        IommulabFault *qf = g_new0(IommulabFault, 1);

        iommulab_dev_fault(s, g_ptr_array_index(s->devs, f->dev), f, qf);
        QAPI_LIST_APPEND(*tail, qf);
    }
    *dropped += il_faults_dropped(&s->engine);
    if (clear) {
        il_faults_clear(&s->engine);
    }
    qemu_mutex_unlock(&s->lock);
}

typedef struct IOMMULabFaultsArg {
    bool clear;
    IommulabFaultList **tail;
    uint64_t dropped;
} IOMMULabFaultsArg;

static int iommulab_collect_faults_one(Object *obj, void *opaque)
{
    IOMMULabFaultsArg *a = opaque;
    IOMMULabState *s = (IOMMULabState *)
        object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU);

    if (s && s->devs) {
        iommulab_collect_faults(s, a->clear, &a->tail, &a->dropped);
    }
    return 0;
}

/*
 * Every lab fault is in exactly one queue, its translator's: a vIOMMU's
 * engine, or a pseries PHB's (TCE windows, iommulab-spapr-faults.c).
 */
IommulabFaults *qmp_x_iommulab_query_faults(const char *iommu, bool has_clear,
                                            bool clear, Error **errp)
{
    IommulabFaults *res;
    IOMMULabFaultsArg a = { .clear = has_clear && clear };
    Object *obj = NULL;

    if (iommu) {
        obj = iommulab_resolve(iommu, TYPE_DEVICE,
                               "an iommulab vIOMMU or a pseries PHB", errp);
        if (!obj) {
            return NULL;
        }
        if (!object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU) &&
            !iommulab_spapr_is_phb(obj)) {
            error_setg(errp, "'%s' is neither an iommulab vIOMMU nor a "
                       "pseries PHB", iommu);
            return NULL;
        }
    }
    res = g_new0(IommulabFaults, 1);
    a.tail = &res->faults;
    if (!obj) {
        object_child_foreach_recursive(object_get_root(),
                                       iommulab_collect_faults_one, &a);
        iommulab_spapr_collect_faults(NULL, a.clear, &a.tail, &a.dropped);
    } else if (object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU)) {
        iommulab_collect_faults(IOMMULAB_VIOMMU(obj), a.clear, &a.tail,
                                &a.dropped);
    } else {
        iommulab_spapr_collect_faults(obj, a.clear, &a.tail, &a.dropped);
    }
    res->dropped = a.dropped;
    return res;
}

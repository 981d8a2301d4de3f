/*
 * iommulab: the sPAPR entry points in a QEMU without pseries: the
 * x-iommulab-spapr-* commands fail with a clear error.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab-spapr.h"
#include "hw/iommulab/iommulab-payload.h"
#include "iommulab-spapr.h"

static void il_spapr_absent(Error **errp)
{
    error_setg(errp, "x-iommulab-spapr commands need a pseries machine "
               "(qemu-system-ppc64 -M pseries)");
}

IommulabHwInfo *iommulab_spapr_requester_hw_info(PCIDevice *pdev)
{
    return NULL;
}

bool iommulab_spapr_is_phb(Object *obj)
{
    return false;
}

void iommulab_spapr_collect_faults(Object *phb, bool clear,
                                   IommulabFaultList ***tail,
                                   uint64_t *dropped)
{
}

IommulabSpaprPhbList *qmp_x_iommulab_spapr_query_phbs(Error **errp)
{
    il_spapr_absent(errp);
    return NULL;
}

IommulabSpaprDdwPolicy *qmp_x_iommulab_spapr_set_ddw_policy(
    IommulabSpaprDdwPolicyArgs *arg, Error **errp)
{
    il_spapr_absent(errp);
    return NULL;
}

IommulabSpaprWindow *qmp_x_iommulab_spapr_window_create(
    bool has_phb, uint32_t phb, uint8_t page_shift, uint64_t size,
    bool has_bus_offset, uint64_t bus_offset, const char *owner,
    Error **errp)
{
    il_spapr_absent(errp);
    return NULL;
}

void qmp_x_iommulab_spapr_window_remove(bool has_phb, uint32_t phb,
                                        uint32_t liobn, const char *owner,
                                        Error **errp)
{
    il_spapr_absent(errp);
}

IommulabSpaprWindowList *qmp_x_iommulab_spapr_window_reset(bool has_phb,
                                                           uint32_t phb,
                                                           const char *owner,
                                                           Error **errp)
{
    il_spapr_absent(errp);
    return NULL;
}

IommulabSpaprTces *qmp_x_iommulab_spapr_read_tces(uint32_t liobn,
                                                  bool has_start,
                                                  uint32_t start,
                                                  bool has_count,
                                                  uint32_t count,
                                                  Error **errp)
{
    il_spapr_absent(errp);
    return NULL;
}

IommulabSpaprPutTces *qmp_x_iommulab_spapr_put_tces(uint32_t liobn,
                                                    uint64_t start,
                                                    bool has_tces,
                                                    uint64List *tces,
                                                    const char *data,
                                                    const char *fd,
                                                    bool has_count,
                                                    uint64_t count,
                                                    const char *owner,
                                                    Error **errp)
{
    iommulab_payload_discard(fd);   /* a passed fd is always closed */
    il_spapr_absent(errp);
    return NULL;
}

void qmp_x_iommulab_spapr_set_blocked(bool has_phb, uint32_t phb,
                                      bool blocked, const char *owner,
                                      Error **errp)
{
    il_spapr_absent(errp);
}

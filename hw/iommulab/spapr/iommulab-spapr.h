/*
 * iommulab: sPAPR TCE windows and DDW under QMP control.
 *
 * The QMP commands are part of the common QAPI schema, so they are linked
 * into every qemu-system binary.  iommulab-spapr-qmp.c (built for every
 * target) implements them by calling a backend; the pseries backend
 * (iommulab-spapr.c, built where CONFIG_PSERIES is set) registers itself
 * at start-up.  Without it, or on another machine, the commands fail with
 * a clear error.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef HW_IOMMULAB_SPAPR_H
#define HW_IOMMULAB_SPAPR_H

#include "qapi/qapi-types-iommulab.h"
#include "qapi/qapi-types-iommulab-spapr.h"

typedef struct IommulabSpaprBackend {
    IommulabSpaprPhbList *(*query_phbs)(Error **errp);
    IommulabSpaprDdwPolicy *(*set_ddw_policy)(
        bool has_phb, uint32_t phb, bool has_ddw, bool ddw,
        bool has_windows, uint32_t windows,
        bool has_page_shifts, uint8List *page_shifts,
        bool has_max_tces, uint64_t max_tces,
        bool has_dma64_offset, uint64_t dma64_offset,
        bool has_default_window_size, uint64_t default_window_size,
        bool has_refuse_create, bool refuse_create, Error **errp);
    IommulabSpaprWindow *(*window_create)(
        bool has_phb, uint32_t phb, uint8_t page_shift, uint64_t size,
        bool has_bus_offset, uint64_t bus_offset, Error **errp);
    void (*window_remove)(bool has_phb, uint32_t phb, uint32_t liobn,
                          Error **errp);
    IommulabSpaprWindowList *(*window_reset)(bool has_phb, uint32_t phb,
                                             Error **errp);
    IommulabSpaprTces *(*read_tces)(uint32_t liobn, bool has_start,
                                    uint32_t start, bool has_count,
                                    uint32_t count, Error **errp);
    IommulabSpaprTceFaults *(*query_faults)(bool has_clear, bool clear,
                                            Error **errp);
} IommulabSpaprBackend;

void iommulab_spapr_set_backend(const IommulabSpaprBackend *backend);

/* x-iommulab-spapr-stage2-attach, provided by iommulab-spapr-s2.c */
typedef void IommulabSpaprS2AttachFn(const char *stage2,
                                     IommulabSpaprS2Mode mode,
                                     bool has_domain, uint32_t domain,
                                     Error **errp);
void iommulab_spapr_set_stage2_attach(IommulabSpaprS2AttachFn *fn);

/*
 * x-iommulab-query-hw-info for a PCI device on a pseries PHB: the facts of
 * its PE (the PHB's TCE tables).  NULL when @pdev is on no pseries PHB;
 * always NULL in a QEMU without pseries (iommulab-spapr-stub.c).
 */
IommulabHwInfo *iommulab_spapr_requester_hw_info(PCIDevice *pdev);

/* The PE facts of pseries PHB @phb (a spapr-pci-host-bridge); pseries only */
IommulabHwSpaprPe *iommulab_spapr_pe_info(Object *phb);

#endif

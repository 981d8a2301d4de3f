/*
 * iommulab: sPAPR TCE windows and DDW under QMP control.
 *
 * The x-iommulab-spapr-* QMP commands are part of the common QAPI schema,
 * so every qemu-system binary links them: the pseries code
 * (iommulab-spapr*.c) implements them, and a QEMU without it links
 * iommulab-spapr-stub.c, whose commands fail with a clear error.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef HW_IOMMULAB_SPAPR_H
#define HW_IOMMULAB_SPAPR_H

#include "qapi/qapi-types-iommulab.h"
#include "qapi/qapi-types-iommulab-spapr.h"

/*
 * x-iommulab-query-hw-info for a PCI device on a pseries PHB: the facts of
 * its PE (the PHB's TCE tables).  NULL when @pdev is on no pseries PHB;
 * always NULL in a QEMU without pseries (iommulab-spapr-stub.c).
 */
IommulabHwInfo *iommulab_spapr_requester_hw_info(PCIDevice *pdev);

/* The PE facts of pseries PHB @phb (a spapr-pci-host-bridge); pseries only */
IommulabHwSpaprPe *iommulab_spapr_pe_info(Object *phb);

/* Whether @obj is a pseries PHB (false without pseries) */
bool iommulab_spapr_is_phb(Object *obj);

/*
 * x-iommulab-query-faults: append the TCE faults of pseries PHB @phb (all
 * PHBs if NULL) to *tail, add what they dropped to *dropped, and empty
 * their queues with @clear.  Nothing without pseries.
 */
void iommulab_spapr_collect_faults(Object *phb, bool clear,
                                   IommulabFaultList ***tail,
                                   uint64_t *dropped);

#endif

/*
 * iommulab: the sPAPR entry points in a QEMU without pseries.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "iommulab-spapr.h"

IommulabHwInfo *iommulab_spapr_requester_hw_info(PCIDevice *pdev)
{
    return NULL;
}

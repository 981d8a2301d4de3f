/*
 * iommulab: the facts of a pseries PE for x-iommulab-query-hw-info
 * (docs/spapr.md "Hardware facts of a PE"): of a PCI device on a PHB,
 * and of the iommulab-spapr-s2 beneath one.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "hw/pci/pci_bus.h"
#include "iommulab-spapr-internal.h"

/* The iommulab vIOMMU whose address space the PHB's TCEs output into */
static IOMMULabState *il_spapr_stage2(SpaprPhbState *sphb)
{
    SpaprTceTable *tcet;
    int i;

    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet && tcet->output_as) {
            return (IOMMULabState *)object_dynamic_cast(
                memory_region_owner(tcet->output_as->root),
                TYPE_IOMMULAB_VIOMMU);
        }
    }
    return NULL;
}

IommulabHwSpaprPe *iommulab_spapr_pe_info(Object *phb)
{
    SpaprPhbState *sphb = SPAPR_PCI_HOST_BRIDGE(phb);
    IommulabHwSpaprPe *pe = g_new0(IommulabHwSpaprPe, 1);
    uint32List **ltail = &pe->liobns;
    IOMMULabState *s2 = il_spapr_stage2(sphb);
    SpaprTceTable *tcet;
    int i;

    pe->phb = sphb->index;
    pe->buid = sphb->buid;
    pe->path = object_get_canonical_path(phb);
    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet) {
            QAPI_LIST_APPEND(ltail, tcet->liobn);
        }
    }
    pe->ddw = sphb->ddw_enabled;
    pe->default_window = g_new0(IommulabHwRange, 1);
    pe->default_window->start = sphb->dma_win_addr;
    pe->default_window->size = sphb->dma_win_size;
    pe->page_shifts = il_spapr_page_shift_list(sphb->page_size_mask);
    pe->max_windows = sphb->ddw_max_windows;
    pe->max_tces = sphb->ddw_max_tces;
    /* Directory and leaves (spapr_tce_get()); 1 for a KVM in-kernel table */
    tcet = il_spapr_table(sphb, 0);
    pe->levels = tcet && tcet->table ? 1 : 2;
    pe->table_memory_limit = sphb->tce_mem.limit;
    pe->dma64_offset = sphb->dma64_win_addr;
    if (s2) {
        pe->stage2 = object_get_canonical_path(OBJECT(s2));
    }
    pe->host_windows = il_spapr_host_windows();
    pe->blocked = il_spapr_blocked(sphb);
    return pe;
}

IommulabHwInfo *iommulab_spapr_requester_hw_info(PCIDevice *pdev)
{
    PCIBus *root = pci_device_root_bus(pdev);
    Object *phb = OBJECT(BUS(root)->parent);
    IommulabHwInfo *info;
    ILFaultQueue *q;

    if (!object_dynamic_cast(phb, TYPE_SPAPR_PCI_HOST_BRIDGE)) {
        return NULL;
    }
    info = g_new0(IommulabHwInfo, 1);
    info->type = IOMMULAB_HW_TYPE_SPAPR_TCE;
    info->iommu = object_get_canonical_path(phb);
    info->device = object_get_canonical_path(OBJECT(pdev));
    info->has_requester_id = true;
    info->requester_id = PCI_BUILD_BDF(pci_bus_num(pci_get_bus(pdev)),
                                       pdev->devfn);
    info->page_sizes = SPAPR_PCI_HOST_BRIDGE(phb)->page_size_mask;
    info->nesting = false;
    info->dirty_tracking = false;
    qemu_mutex_lock(&il_spapr_state.lock);
    q = il_spapr_queue(SPAPR_PCI_HOST_BRIDGE(phb)->index, true);
    info->fault_queue_size = q ? il_fault_capacity(q) : 0;
    qemu_mutex_unlock(&il_spapr_state.lock);
    info->spapr_pe = iommulab_spapr_pe_info(phb);
    return info;
}

/*
 * iommulab-spapr-s2: the iommulab stage 2 beneath a pseries PHB's TCE
 * windows.
 *
 * An iommulab-viommu (the engine's device: domains, IOTLB, fault queue,
 * x-iommulab-* QMP) that sits on a pseries PHB's root bus without taking
 * over the bus's IOMMU: the PHB keeps translating bus addresses with its
 * TCE tables, and every TCE table of the PHB sends its output (a guest
 * physical address) into this device's stage-2 address space (patch 0010,
 * spapr_tce_set_output_as()).  QEMU then translates it again there.  A DMA
 * is allowed only if both the TCE and the stage-2 domain allow it.
 *
 * On sPAPR the partitionable endpoint is the PHB: all its devices share its
 * TCE tables, so they share one stage-2 requester, this device.  Its
 * attachment (blocked, bypass or a domain of this vIOMMU) is set with
 * x-iommulab-spapr-stage2-attach; domains are allocated and mapped with the
 * engine's x-iommulab-* commands on this device (by its id), and stage-2
 * faults are the engine's faults with this device as the requester.
 *
 * On PowerNV (POWER9/POWER10, PHB4/PHB5) it puts stage 2 beneath a PHB's
 * IODA TCE tables (patch 0013): TCE and RTT fetches and translated DMA all
 * go through it.  A PHB4/5 root bus takes nothing but its root port, so
 * there the device sits on another PHB's root bus and names its PHB with
 * the "phb" property (the pnv-phb's id).
 *
 * This is a thin adapter over the engine's device (hw/iommulab/
 * iommulab-viommu.h): the engine's realize (with keep_bus_iommu, so the
 * PHB keeps its bus), and the engine's requester API for the PHB's
 * stage-2 address space and its attachment.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "hw/pci/pci_bus.h"
#include "hw/qdev-properties.h"
#include "hw/ppc/spapr.h"
#include "hw/pci-host/spapr.h"
#include CONFIG_DEVICES
#ifdef CONFIG_POWERNV
#include "hw/pci-host/pnv_phb.h"
#include "hw/pci-host/pnv_phb4.h"
#endif
#include "hw/iommulab/iommulab-viommu.h"
#include "iommulab-spapr.h"
#include "trace.h"

#define TYPE_IOMMULAB_SPAPR_S2 "iommulab-spapr-s2"

typedef struct IOMMULabSpaprS2 {
    IOMMULabState parent_obj;
    char *phb_name;             /* property "phb": PHB by id, else our bus */
    uint32_t phb;               /* PHB index (pseries) or id (PowerNV) */
    SpaprPhbState *sphb;        /* pseries: the PHB; NULL on PowerNV */
    IOMMULabDev *req;           /* the PHB's stage-2 requester */
} IOMMULabSpaprS2;

DECLARE_INSTANCE_CHECKER(IOMMULabSpaprS2, IOMMULAB_SPAPR_S2,
                         TYPE_IOMMULAB_SPAPR_S2)

static void (*il_s2_parent_realize)(PCIDevice *pdev, Error **errp);

#ifdef CONFIG_POWERNV
static PnvPHB4 *il_s2_pnv_phb4(DeviceState *host)
{
    PnvPHB *phb = (PnvPHB *)object_dynamic_cast(OBJECT(host), TYPE_PNV_PHB);

    if (!phb || !phb->backend) {
        return NULL;
    }
    return (PnvPHB4 *)object_dynamic_cast(phb->backend, TYPE_PNV_PHB4);
}
#endif

static void il_s2_realize(PCIDevice *pdev, Error **errp)
{
    IOMMULabSpaprS2 *s2 = IOMMULAB_SPAPR_S2(pdev);
    PCIBus *bus = pci_get_bus(pdev);
    DeviceState *host = BUS(bus)->parent;
    SpaprPhbState *sphb = NULL;
    void *pnv = NULL;
    SpaprTceTable *tcet;
    AddressSpace *as;
    Error *local_err = NULL;
    int i;

    if (s2->phb_name) {
        g_autofree char *path = g_strdup_printf("/machine/peripheral/%s",
                                                s2->phb_name);
        Object *obj = object_resolve_path(path, NULL);

        if (!obj) {
            /* A PowerNV PHB is moved under its chip: find it by name */
            obj = object_resolve_path_type(s2->phb_name, TYPE_DEVICE, NULL);
        }
        if (!obj || !object_dynamic_cast(obj, TYPE_DEVICE)) {
            error_setg(errp, "phb '%s' is not a device", s2->phb_name);
            return;
        }
        host = DEVICE(obj);
    } else if (!pci_bus_is_root(bus)) {
        host = NULL;
    }
    if (host) {
        sphb = (SpaprPhbState *)
            object_dynamic_cast(OBJECT(host), TYPE_SPAPR_PCI_HOST_BRIDGE);
#ifdef CONFIG_POWERNV
        pnv = il_s2_pnv_phb4(host);
#endif
    }
    if (!sphb && !pnv) {
        error_setg(errp, "%s must be plugged on the root bus of a pseries "
                   "PHB (spapr-pci-host-bridge) or of a PowerNV PHB4/PHB5",
                   TYPE_IOMMULAB_SPAPR_S2);
        return;
    }
    for (i = 0; sphb && i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = sphb->dma_liobn[i] ?
               spapr_tce_find_by_liobn(sphb->dma_liobn[i]) : NULL;
        if (tcet && tcet->output_as) {
            error_setg(errp, "PHB %" PRIu32 " already has a stage 2",
                       sphb->index);
            return;
        }
    }
#ifdef CONFIG_POWERNV
    if (pnv && ((PnvPHB4 *)pnv)->dma_output_as) {
        error_setg(errp, "this PHB already has a stage 2");
        return;
    }
#endif

    /* The engine's realize; it leaves the bus's IOMMU to the PHB */
    il_s2_parent_realize(pdev, &local_err);
    if (local_err) {
        error_propagate(errp, local_err);
        return;
    }

    /* The requester is this device's own (bus, devfn) */
    s2->req = iommulab_viommu_requester(IOMMULAB_VIOMMU(pdev), bus,
                                        pdev->devfn);
    as = &s2->req->as;
    s2->sphb = sphb;
    for (i = 0; sphb && i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        s2->phb = sphb->index;
        tcet = sphb->dma_liobn[i] ?
               spapr_tce_find_by_liobn(sphb->dma_liobn[i]) : NULL;
        if (tcet && !spapr_tce_set_output_as(tcet, as, errp)) {
            return;
        }
    }
#ifdef CONFIG_POWERNV
    if (pnv) {
        s2->phb = ((PnvPHB4 *)pnv)->phb_id;
        pnv_phb4_set_dma_output_as(pnv, as);
    }
#endif
    trace_iommulab_spapr_s2_realize(s2->phb, s2->req->index);
}

static IOMMULabSpaprS2 *il_s2_find(const char *name, Error **errp)
{
    Object *obj = NULL;

    if (!strchr(name, '/')) {
        g_autofree char *path = g_strdup_printf("/machine/peripheral/%s",
                                                name);

        obj = object_resolve_path_type(path, TYPE_IOMMULAB_SPAPR_S2, NULL);
    }
    if (!obj) {
        obj = object_resolve_path_type(name, TYPE_IOMMULAB_SPAPR_S2, NULL);
    }
    if (!obj) {
        error_setg(errp, "'%s' is not an %s (give its id or QOM path)", name,
                   TYPE_IOMMULAB_SPAPR_S2);
        return NULL;
    }
    return IOMMULAB_SPAPR_S2(obj);
}

/* Attach the PHB's requester, as x-iommulab-attach does a PCI device. */
static void il_s2_attach(const char *stage2, IommulabSpaprS2Mode mode,
                         bool has_domain, uint32_t domain, Error **errp)
{
    IOMMULabSpaprS2 *s2 = il_s2_find(stage2, errp);
    Error *local_err = NULL;

    if (!s2) {
        return;
    }
    iommulab_viommu_attach_requester(s2->req,
        mode == IOMMULAB_SPAPR_S2_MODE_DOMAIN ? IOMMULAB_ATTACH_MODE_DOMAIN :
        mode == IOMMULAB_SPAPR_S2_MODE_BYPASS ? IOMMULAB_ATTACH_MODE_BYPASS :
        IOMMULAB_ATTACH_MODE_BLOCKED, has_domain, domain, &local_err);
    if (local_err) {
        error_propagate(errp, local_err);
        return;
    }
    trace_iommulab_spapr_s2_attach(s2->phb, mode, domain);
}

/*
 * The engine's MSI window (untranslated, for x86's 0xfee00000) has no place
 * here: sPAPR and PowerNV MSIs are taken by the PHB before its TCE tables,
 * and the IPA range it would open is guest RAM on these machines.  Off by
 * default; msi-size on the command line still applies.
 */
static void il_s2_instance_init(Object *obj)
{
    IOMMULabState *s = IOMMULAB_VIOMMU(obj);

    s->msi_size = 0;
    s->keep_bus_iommu = true;
    /* The guest's first stage is the PHB's TCE tables, not the engine's */
    s->no_nesting = true;
}

static void il_s2_hw_info(IOMMULabState *s, IommulabHwInfo *info)
{
    IOMMULabSpaprS2 *s2 = IOMMULAB_SPAPR_S2(s);

    info->type = IOMMULAB_HW_TYPE_SPAPR_STAGE2;
    if (s2->sphb) {
        info->spapr_pe = iommulab_spapr_pe_info(OBJECT(s2->sphb));
    }
}

static const Property il_s2_properties[] = {
    DEFINE_PROP_STRING("phb", IOMMULabSpaprS2, phb_name),
};

static void il_s2_class_init(ObjectClass *klass, void *data)
{
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);
    DeviceClass *dc = DEVICE_CLASS(klass);
    IOMMULabClass *ic = IOMMULAB_VIOMMU_CLASS(klass);

    ic->hw_info = il_s2_hw_info;
    il_s2_parent_realize = k->realize;
    k->realize = il_s2_realize;
    dc->desc = "iommulab stage 2 beneath a pseries PHB's TCE windows";
    /* The TCE tables keep pointing at it: no unplug */
    dc->hotpluggable = false;
    device_class_set_props(dc, il_s2_properties);
}

static const TypeInfo il_s2_type = {
    .name = TYPE_IOMMULAB_SPAPR_S2,
    .parent = TYPE_IOMMULAB_VIOMMU,
    .instance_size = sizeof(IOMMULabSpaprS2),
    .instance_init = il_s2_instance_init,
    .class_init = il_s2_class_init,
};

static void il_s2_register(void)
{
    type_register_static(&il_s2_type);
    iommulab_spapr_set_stage2_attach(il_s2_attach);
}

type_init(il_s2_register)

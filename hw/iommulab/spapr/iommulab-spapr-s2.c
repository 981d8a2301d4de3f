/*
 * iommulab-spapr-s2: the iommulab stage 2 beneath a pseries PHB's TCE
 * windows.
 *
 * An iommulab-viommu (the engine's device: domains, IOTLB, fault queue,
 * x-iommulab-* QMP) that sits on a PHB's root bus without taking over the
 * bus's IOMMU: the PHB keeps translating bus addresses with its TCE
 * tables, and every TCE table of the PHB sends its output (a guest
 * physical address) into this device's stage-2 address space (patch 0010,
 * spapr_tce_set_output_as()).  QEMU then translates it again there.  A DMA
 * is allowed only if both the TCE and the stage-2 domain allow it.
 *
 * On sPAPR the partitionable endpoint is the PHB: all its devices share its
 * TCE tables, so they share one stage-2 requester, this device.  It is
 * attached like any requester, by naming the device:
 * x-iommulab-attach {iommu: s2, device: s2, ...}; domains are allocated
 * and mapped with the engine's x-iommulab-* commands on this device, and
 * stage-2 faults are the engine's faults with this device as the
 * requester.
 *
 * Which PHB: the "phb" property (pseries: the PHB's index or id; PowerNV:
 * the pnv-phb's id), else the PHB whose root bus the device is on.  On
 * PowerNV (POWER9/POWER10, PHB4/PHB5) it puts stage 2 beneath a PHB's IODA
 * TCE tables (patch 0013): TCE and RTT fetches and translated DMA all go
 * through it; a PHB4/5 root bus takes nothing but its root port, so there
 * the device sits on another PHB's root bus and names its PHB.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
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
#include "iommulab-spapr-internal.h"
#include "trace.h"

#define TYPE_IOMMULAB_SPAPR_S2 "iommulab-spapr-s2"

typedef struct IOMMULabSpaprS2 {
    IOMMULabState parent_obj;
    char *phb_name;             /* property "phb"; NULL: the PHB of our bus */
    uint32_t phb;               /* PHB index (pseries) or id (PowerNV) */
    SpaprPhbState *sphb;        /* pseries: the PHB; NULL on PowerNV */
    IOMMULabDev *req;           /* the PHB's stage-2 requester */
    DeviceListener phb_gone;    /* pseries: the PHB unplugged (its tables) */
    bool phb_listening;
} IOMMULabSpaprS2;

typedef struct IOMMULabSpaprS2Class {
    IOMMULabClass parent_class;
    DeviceRealize parent_realize;
    PCIUnregisterFunc *parent_exit;
} IOMMULabSpaprS2Class;

OBJECT_DECLARE_TYPE(IOMMULabSpaprS2, IOMMULabSpaprS2Class, IOMMULAB_SPAPR_S2)

#ifdef CONFIG_POWERNV
static PnvPHB4 *il_s2_pnv_phb4(Object *host)
{
    PnvPHB *phb = (PnvPHB *)object_dynamic_cast(host, TYPE_PNV_PHB);

    if (!phb || !phb->backend) {
        return NULL;
    }
    return (PnvPHB4 *)object_dynamic_cast(phb->backend, TYPE_PNV_PHB4);
}
#endif

/* The PHB named by the "phb" property, or the one of the device's bus */
static Object *il_s2_host(IOMMULabSpaprS2 *s2, PCIBus *bus, Error **errp)
{
    const char *name = s2->phb_name;
    uint64_t index;

    if (!name) {
        if (!pci_bus_is_root(bus)) {
            error_setg(errp, "%s must be plugged on a PHB's root bus",
                       TYPE_IOMMULAB_SPAPR_S2);
            return NULL;
        }
        return OBJECT(BUS(bus)->parent);
    }
    if (!qemu_strtou64(name, NULL, 10, &index) && index <= UINT32_MAX) {
        Object *phb = OBJECT(il_spapr_phb_by_index(index));

        if (!phb) {
            error_setg(errp, "phb=%s: there is no pseries PHB with index %s",
                       name, name);
        }
        return phb;
    }
    /* A PowerNV PHB is moved under its chip: a partial path finds it */
    return iommulab_resolve(name, TYPE_DEVICE, "a PHB (phb=)", errp);
}

/* The iommulab device that the PHB's TCE tables output into, if any */
static Object *il_s2_spapr_stage2_of(SpaprPhbState *sphb)
{
    SpaprTceTable *tcet;
    int i;

    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = sphb->dma_liobn[i] ?
               spapr_tce_find_by_liobn(sphb->dma_liobn[i]) : NULL;
        if (tcet && tcet->output_as) {
            return memory_region_owner(tcet->output_as->root);
        }
    }
    return NULL;
}

static bool il_s2_check_spapr(SpaprPhbState *sphb, Error **errp)
{
    Object *other = il_s2_spapr_stage2_of(sphb);
    SpaprTceTable *tcet;
    int i;

    if (other) {
        g_autofree char *path = object_get_canonical_path(other);

        error_setg(errp, "PHB %" PRIu32 " already has a stage 2 (%s); give "
                   "each %s its PHB with phb=INDEX", sphb->index, path,
                   TYPE_IOMMULAB_SPAPR_S2);
        return false;
    }
    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = sphb->dma_liobn[i] ?
               spapr_tce_find_by_liobn(sphb->dma_liobn[i]) : NULL;
        if (tcet && tcet->need_vfio) {
            error_setg(errp, "PHB %" PRIu32 ": TCE table 0x%" PRIx32 " has "
                       "IOMMU notifiers (VFIO); no stage 2 beneath it",
                       sphb->index, tcet->liobn);
            return false;
        }
    }
    return true;
}

/*
 * Unplug.  The device itself is not hotpluggable, but a pseries PHB is, with
 * what is on its root bus: the PHB whose tables output into this device
 * (phb=) may go while the device stays on another PHB, or the device may go
 * with its bus while the PHB it serves stays.  The first leaves no tables
 * to serve (and no PE to describe); the second sends that PHB's TCE output
 * back to system memory, as a PHB without a stage 2 has it.
 */
static void il_s2_phb_unrealize(DeviceListener *l, DeviceState *ds)
{
    IOMMULabSpaprS2 *s2 = container_of(l, IOMMULabSpaprS2, phb_gone);

    if (s2->sphb && OBJECT(ds) == OBJECT(s2->sphb)) {
        trace_iommulab_spapr_s2_phb_gone(s2->phb);
        s2->sphb = NULL;
    }
}

static void il_s2_realize(DeviceState *ds, Error **errp)
{
    ERRP_GUARD();
    IOMMULabSpaprS2 *s2 = IOMMULAB_SPAPR_S2(ds);
    IOMMULabSpaprS2Class *sc = IOMMULAB_SPAPR_S2_GET_CLASS(ds);
    PCIDevice *pdev = PCI_DEVICE(ds);
    PCIBus *bus = PCI_BUS(qdev_get_parent_bus(ds));
    Object *host = il_s2_host(s2, bus, errp);
    SpaprPhbState *sphb = NULL;
    void *pnv = NULL;
    SpaprTceTable *tcet;
    AddressSpace *as;
    int i;

    if (!host) {
        return;
    }
    sphb = (SpaprPhbState *)
        object_dynamic_cast(host, TYPE_SPAPR_PCI_HOST_BRIDGE);
#ifdef CONFIG_POWERNV
    pnv = il_s2_pnv_phb4(host);
#endif
    if (!sphb && !pnv) {
        error_setg(errp, "%s needs a pseries PHB (spapr-pci-host-bridge) or "
                   "a PowerNV PHB4/PHB5: plug it on its root bus or name it "
                   "with phb=", TYPE_IOMMULAB_SPAPR_S2);
        return;
    }
    if (sphb && !il_s2_check_spapr(sphb, errp)) {
        return;
    }
#ifdef CONFIG_POWERNV
    if (pnv && ((PnvPHB4 *)pnv)->dma_output_as) {
        error_setg(errp, "this PHB already has a stage 2");
        return;
    }
#endif

    /* PCI and the engine's realize; it leaves the bus's IOMMU to the PHB */
    sc->parent_realize(ds, errp);
    if (*errp) {
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
        /* cannot fail: no notifiers (checked above); not hotpluggable */
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
    if (sphb) {
        s2->phb_gone.unrealize = il_s2_phb_unrealize;
        device_listener_register(&s2->phb_gone);
        s2->phb_listening = true;
    }
    trace_iommulab_spapr_s2_realize(s2->phb, s2->req->index);
}

static void il_s2_exit(PCIDevice *pdev)
{
    IOMMULabSpaprS2 *s2 = IOMMULAB_SPAPR_S2(pdev);
    IOMMULabSpaprS2Class *sc = IOMMULAB_SPAPR_S2_GET_CLASS(pdev);
    SpaprTceTable *tcet;
    int i;

    if (s2->phb_listening) {
        device_listener_unregister(&s2->phb_gone);
        s2->phb_listening = false;
    }
    for (i = 0; s2->sphb && i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = s2->sphb->dma_liobn[i] ?
               spapr_tce_find_by_liobn(s2->sphb->dma_liobn[i]) : NULL;
        if (tcet && tcet->output_as == &s2->req->as) {
            /* fails only with VFIO notifiers, refused at realize */
            spapr_tce_set_output_as(tcet, NULL, NULL);
        }
    }
    if (s2->sphb) {
        trace_iommulab_spapr_s2_exit(s2->phb);
        s2->sphb = NULL;
    }
    sc->parent_exit(pdev);
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
    DeviceClass *dc = DEVICE_CLASS(klass);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);
    IOMMULabClass *ic = IOMMULAB_VIOMMU_CLASS(klass);
    IOMMULabSpaprS2Class *sc = IOMMULAB_SPAPR_S2_CLASS(klass);

    ic->hw_info = il_s2_hw_info;
    device_class_set_parent_realize(dc, il_s2_realize, &sc->parent_realize);
    sc->parent_exit = k->exit;
    k->exit = il_s2_exit;
    dc->desc = "iommulab stage 2 beneath a pseries PHB's TCE windows";
    /* Not on its own (its PHB may go, with or without it: il_s2_exit) */
    dc->hotpluggable = false;
    device_class_set_props(dc, il_s2_properties);
}

static const TypeInfo il_s2_type = {
    .name = TYPE_IOMMULAB_SPAPR_S2,
    .parent = TYPE_IOMMULAB_VIOMMU,
    .instance_size = sizeof(IOMMULabSpaprS2),
    .class_size = sizeof(IOMMULabSpaprS2Class),
    .instance_init = il_s2_instance_init,
    .class_init = il_s2_class_init,
};

static void il_s2_register(void)
{
    type_register_static(&il_s2_type);
}

type_init(il_s2_register)

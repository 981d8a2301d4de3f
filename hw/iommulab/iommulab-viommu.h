/*
 * iommulab generic paging vIOMMU (q35): a PCI device that translates the
 * DMA of the devices on its PCI bus with the iommulab core.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef HW_IOMMULAB_VIOMMU_H
#define HW_IOMMULAB_VIOMMU_H

#include "hw/pci/pci_device.h"
#include "exec/memory.h"
#include "qemu/thread.h"
#include "qapi/qapi-types-iommulab.h"
#include "qom/object.h"
#include "core/il-engine.h"

#define TYPE_IOMMULAB_VIOMMU "iommulab-viommu"
#define TYPE_IOMMULAB_IOMMU_MR "iommulab-iommu-memory-region"

OBJECT_DECLARE_TYPE(IOMMULabState, IOMMULabClass, IOMMULAB_VIOMMU)

/* One requester (bus, devfn) seen behind the vIOMMU. */
typedef struct IOMMULabDev {
    IOMMULabState *s;
    PCIBus *bus;                /* NULL once the bus is gone (bridge unplug) */
    uint8_t devfn;
    uint16_t gone_rid;          /* the requester id when the bus went away */
    uint32_t index;             /* device id in the core (fault records) */
    ILMode mode;
    ILDomain *domain;           /* mode == IL_MODE_DOMAIN */
    MemoryRegion root;          /* iommu_mr, with the MSI window over it */
    IOMMUMemoryRegion iommu_mr;
    MemoryRegion msi_mr;        /* alias of system memory, not translated */
    AddressSpace as;
} IOMMULabDev;

struct IOMMULabState {
    PCIDevice parent_obj;

    /* Protects engine and the attachments of devs (DMA vs QMP). */
    QemuMutex lock;
    ILEngine engine;
    GHashTable *bus_devs;       /* PCIBus * -> IOMMULabDev *[256] */
    GPtrArray *devs;            /* IOMMULabDev *, by index */

    /* properties */
    char *default_mode_str;
    uint32_t iotlb_size;
    uint32_t fault_queue_size;
    uint64_t msi_base;
    uint64_t msi_size;
    uint64_t table_memory_limit; /* engine-wide page-table bytes */
    ILMode default_mode;

    Error *migration_blocker;
    /* Hot-unplug of the devices behind it (iommulab_device_unrealize()) */
    DeviceListener unplug_listener;
    bool unplug_listening;

    /*
     * Set by a subclass before realize: leave the bus's IOMMU to its
     * owner (e.g. a PHB's TCE tables) and serve only the requesters the
     * subclass asks for with iommulab_viommu_requester().
     */
    bool keep_bus_iommu;
    /*
     * Set by a subclass before realize: nested domains are refused (and
     * x-iommulab-query-hw-info reports no stage 1), e.g. beneath a PHB
     * whose TCE tables are the guest's own first stage.
     */
    bool no_nesting;
    /*
     * Bumped by every change of domains, mappings or attachments (the
     * commands, hot-unplug), under the BQL: x-iommulab-query reports it,
     * so that a client reading in pages can tell the state moved under it.
     */
    uint64_t generation;
};

/*
 * The QMP commands are implemented by the device code itself (the
 * qmp_x_iommulab_* of iommulab-control.c, -query.c, -faults.c, -hwinfo.c;
 * iommulab-stub.c where the device is not built).  A subclass specialises
 * one thing:
 */
struct IOMMULabClass {
    PCIDeviceClass parent_class;

    /*
     * Optional, for subclasses: complete the facts the engine's device
     * filled in for x-iommulab-query-hw-info (type, the PHB beneath, ...).
     */
    void (*hw_info)(IOMMULabState *s, IommulabHwInfo *info);
};

/*
 * The engine's API for subclasses that put the engine beneath another
 * translator (iommulab-spapr-s2), under the BQL: the requester (bus,
 * devfn), created on first use in the device's default mode; its address
 * space is &dev->as.  x-iommulab-attach attaches it (naming the device).
 */
IOMMULabDev *iommulab_viommu_requester(IOMMULabState *s, PCIBus *bus,
                                       uint8_t devfn);

/* The members of a fault record that the core's record holds */
void iommulab_fault_to_qapi(const ILFault *f, IommulabFault *qf);

/*
 * The one lookup of the lab's QMP commands: @name is a qdev id (of a
 * device under /machine/peripheral) or a QOM path (full or partial) of an
 * object of @type.  Fails with "'NAME' is not WHAT (give its id or QOM
 * path)".
 */
Object *iommulab_resolve(const char *name, const char *type,
                         const char *what, Error **errp);

#endif

/*
 * iommulab-viommu internals: what the pieces of the device share
 * (iommulab-viommu.c lists them).  Not for other devices: a subclass uses
 * iommulab-viommu.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef HW_IOMMULAB_INTERNAL_H
#define HW_IOMMULAB_INTERNAL_H

#include "hw/pci/pci_bus.h"
#include "hw/qdev-core.h"
#include "qapi/qapi-types-iommulab.h"
#include "iommulab-viommu.h"

/* Input address size of a paging domain allocated without 'ias' */
#define IOMMULAB_DEFAULT_IAS 48

/* ---- requesters (iommulab-requester.c) ---- */

/* pci_setup_iommu() of the vIOMMU's bus: a requester per (bus, devfn) */
extern const PCIIOMMUOps iommulab_iommu_ops;

/* QOM path of the device, or a bus:devfn name if it is gone. */
char *iommulab_dev_name(IOMMULabDev *dev);

/*
 * An IOMMU notifier event for [first, last] (output from @addr for a
 * MAP), clipped to the notifier and split into aligned pieces.
 */
void iommulab_notify_range(IOMMUNotifier *n, IOMMUNotifierFlag type,
                           uint64_t first, uint64_t last,
                           uint64_t addr, IOMMUAccessFlags perm);

/* UNMAP of [first, last] to every notifier of @dev */
void iommulab_dev_unmap(IOMMULabDev *dev, uint64_t first, uint64_t last);

/* The device whose attachment changed: everything it had may be gone. */
void iommulab_dev_changed(IOMMULabDev *dev);

static inline IommulabFaultStage stage_to_qapi(unsigned stage)
{
    switch (stage) {
    case IL_STAGE_1:
        return IOMMULAB_FAULT_STAGE_STAGE1;
    case IL_STAGE_2:
        return IOMMULAB_FAULT_STAGE_STAGE2;
    case IL_STAGE_TCE:
        return IOMMULAB_FAULT_STAGE_TCE;
    default:
        return IOMMULAB_FAULT_STAGE_DEVICE;
    }
}

static inline IommulabFaultReason reason_to_qapi(unsigned reason)
{
    switch (reason) {
    case IL_REASON_ADDRESS_SIZE:
        return IOMMULAB_FAULT_REASON_ADDRESS_SIZE;
    case IL_REASON_NOT_PRESENT:
        return IOMMULAB_FAULT_REASON_NOT_PRESENT;
    case IL_REASON_PERMISSION:
        return IOMMULAB_FAULT_REASON_PERMISSION;
    case IL_REASON_WALK_ERROR:
        return IOMMULAB_FAULT_REASON_WALK_ERROR;
    default:
        return IOMMULAB_FAULT_REASON_BLOCKED;
    }
}

static inline PCIDevice *iommulab_dev_pci(IOMMULabDev *dev)
{
    return dev->bus ? dev->bus->devices[dev->devfn] : NULL;
}

static inline uint16_t iommulab_dev_rid(IOMMULabDev *dev)
{
    return dev->bus ? PCI_BUILD_BDF(pci_bus_num(dev->bus), dev->devfn) :
                      dev->gone_rid;
}

/* inline: on every DMA (iommulab_translate()) */
static inline IOMMUAccessFlags perm_to_iommu(unsigned perm)
{
    return IOMMU_ACCESS_FLAG(!!(perm & IL_PERM_R), !!(perm & IL_PERM_W));
}

/* ---- faults (iommulab-faults.c) ---- */

/* The record of a requester's fault, as the queue and the event show it */
void iommulab_dev_fault(IOMMULabState *s, IOMMULabDev *dev,
                        const ILFault *f, IommulabFault *qf);

/* ---- the commands' lookups (iommulab-control.c) ---- */

/* The vIOMMU named @name (qdev id or QOM path) */
IOMMULabState *iommulab_find(const char *name, Error **errp);

/*
 * Take @s->lock; with @has_domain, *@d is domain @domain (else NULL).  False,
 * with the lock released and @errp set, if that domain does not exist.
 */
bool iommulab_lock_domain(IOMMULabState *s, bool has_domain, uint32_t domain,
                          ILDomain **d, Error **errp);

/*
 * The devices to tell about a change of domain @d: its own (child false)
 * and, with @children, those of its nested domains (child true).  From the
 * domain's list (il_domain_for_each_dev()), under the engine lock; the
 * notifiers are then called without it (a listener may translate).  An
 * array of IOMMULabUser (iommulab-invalidate.c).
 */
typedef struct IOMMULabUser {
    IOMMULabDev *dev;
    bool child;
} IOMMULabUser;

GArray *iommulab_domain_users(IOMMULabState *s, const ILDomain *d,
                              bool children);

/* The requester of PCI device @name behind vIOMMU @s */
IOMMULabDev *iommulab_find_dev(IOMMULabState *s, const char *name,
                               Error **errp);

/* ---- hot-unplug (iommulab-unplug.c) ---- */

/* DeviceListener.unrealize of the vIOMMU (registered at realize) */
void iommulab_device_unrealize(DeviceListener *l, DeviceState *ds);

#endif

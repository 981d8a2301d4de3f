/*
 * iommulab-viommu: following the hot-unplug of the devices behind it
 * (a DeviceListener registered at realize).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "hw/pci/pci.h"
#include "hw/pci/pci_bus.h"
#include "hw/pci/pci_bridge.h"
#include "iommulab-internal.h"
#include "trace.h"

/*
 * A requester (bus, devfn) outlives the devices plugged in its slot: its
 * address space is the slot's, and the next device there gets the same one
 * from iommulab_get_address_space().  So when a device leaves, forget what
 * it had: detach it from its domain (whose device list and count drop it,
 * so the domain can be freed), drop the domain's IOTLB entries (the core
 * tags entries by domain, not by device: there is nothing finer to drop),
 * tell the IOMMU notifiers that everything is unmapped, and leave the slot
 * in the vIOMMU's default mode for whatever is plugged there next.
 */
static void iommulab_dev_forget(IOMMULabDev *dev)
{
    IOMMULabState *s = dev->s;
    ILDomain *old;
    ILMode mode;

    qemu_mutex_lock(&s->lock);
    old = dev->domain;
    mode = dev->mode;
    if (old) {
        il_domain_detach_dev(&s->engine, old, dev->index);
        il_invalidate_domain(&s->engine, old);
    }
    dev->domain = NULL;
    dev->mode = s->default_mode;
    s->generation++;
    qemu_mutex_unlock(&s->lock);
    trace_iommulab_unplug(iommulab_dev_rid(dev), dev->index, mode,
                          old ? il_domain_id(old) : 0, s->default_mode);
    iommulab_dev_changed(dev);
}

/*
 * The requester of a device that is leaving is still used if another
 * device's DMA goes through it: the devices behind a PCIe-to-PCI bridge
 * share (secondary bus, 0), those behind a conventional bridge the bridge's
 * own requester (pci_device_get_iommu_bus_devfn()).
 */
static bool iommulab_requester_shared(IOMMULabDev *dev, PCIDevice *gone)
{
    PCIBus *bus = pci_get_bus(gone);
    PCIDevice *own = iommulab_dev_pci(dev);

    if (own && own != gone) {
        return true;
    }
    for (unsigned i = 0; i < PCI_DEVFN_MAX; i++) {
        PCIDevice *p = bus->devices[i];

        if (p && p != gone && pci_device_iommu_address_space(p) == &dev->as) {
            return true;
        }
    }
    return false;
}

/*
 * Device listener (as xen-hvm and remote-obj follow PCI devices): called
 * after a device's unrealize, so its slot (bus->devices[devfn]) is already
 * empty; its bus is not gone yet.  PCIIOMMUOps has no endpoint-removal hook
 * (unset_iommu_device is for host IOMMU devices, called by VFIO only).  A
 * bridge's secondary bus goes with the bridge: its devices were unrealized
 * (and forgotten) first; its requesters stay in s->devs (the fault records
 * name them by index) but no longer point at the bus.
 */
void iommulab_device_unrealize(DeviceListener *l, DeviceState *ds)
{
    IOMMULabState *s = container_of(l, IOMMULabState, unplug_listener);
    PCIDevice *pdev = (PCIDevice *)object_dynamic_cast(OBJECT(ds),
                                                       TYPE_PCI_DEVICE);
    PCIBridge *br = (PCIBridge *)object_dynamic_cast(OBJECT(ds),
                                                     TYPE_PCI_BRIDGE);
    AddressSpace *as;
    IOMMULabDev **devs;

    if (!pdev || pdev == PCI_DEVICE(s)) {
        return;
    }
    /* the requester it used, aliased or not (none if not behind us) */
    as = pci_device_iommu_address_space(pdev);
    for (unsigned i = 0; i < s->devs->len; i++) {
        IOMMULabDev *dev = g_ptr_array_index(s->devs, i);

        if (&dev->as == as) {
            if (!iommulab_requester_shared(dev, pdev)) {
                iommulab_dev_forget(dev);
            }
            break;
        }
    }
    devs = br ? g_hash_table_lookup(s->bus_devs, pci_bridge_get_sec_bus(br))
              : NULL;
    for (unsigned i = 0; devs && i < PCI_DEVFN_MAX; i++) {
        if (devs[i]) {
            iommulab_dev_forget(devs[i]);
            devs[i]->gone_rid = iommulab_dev_rid(devs[i]);
            devs[i]->bus = NULL;
        }
    }
    if (devs) {
        g_hash_table_remove(s->bus_devs, pci_bridge_get_sec_bus(br));
    }
}

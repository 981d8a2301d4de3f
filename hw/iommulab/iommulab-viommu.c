/*
 * iommulab generic paging vIOMMU for q35: the QOM device.
 *
 * A PCI device on the root bus that registers itself with pci_setup_iommu()
 * so that every device on the buses below gets an IOMMU memory region whose
 * translate() goes through the iommulab core: blocked, bypass, a stage-2
 * (paging) domain, or a nested domain (guest stage 1 over stage 2).  The
 * control plane programs it over QMP (docs/qmp.md), devices named through
 * iommulab_resolve() (iommulab-qmp.c).
 *
 * The device is split along its concepts (iommulab-internal.h):
 *   iommulab-viommu.c     this file: realize/exit/reset, properties,
 *                         migration blocker
 *   iommulab-requester.c  requesters, their address spaces, translate(),
 *                         IOMMU notifiers and replay
 *   iommulab-control.c    the commands that program it (domains, map,
 *                         unmap, attach, invalidate)
 *   iommulab-query.c      the commands that read it (query, counters,
 *                         translate)
 *   iommulab-faults.c     fault records as QAPI, x-iommulab-query-faults
 *   iommulab-hwinfo.c     x-iommulab-query-hw-info
 *   iommulab-unplug.c     following the hot-unplug of its devices
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/rcu.h"
#include "qapi/error.h"
#include "hw/pci/pci.h"
#include "hw/pci/pci_bus.h"
#include "hw/qdev-properties.h"
#include "migration/blocker.h"
#include "exec/address-spaces.h"
#include "iommulab-internal.h"
#include "iommulab-owner.h"

/*
 * Guest memory reads of the stage-1 walker: RAM only.  A table pointer the
 * guest aims at MMIO would otherwise run device code (maybe DMA through this
 * vIOMMU, re-entering it) from inside translate(); it is a walk error.
 */
static bool iommulab_read_mem(void *opaque, uint64_t addr, void *buf,
                              size_t len)
{
    MemoryRegion *mr;
    hwaddr xlat, l = len;

    RCU_READ_LOCK_GUARD();
    mr = address_space_translate(&address_space_memory, addr, &xlat, &l,
                                 false, MEMTXATTRS_UNSPECIFIED);
    if (l < len || !memory_region_is_ram(mr) ||
        memory_region_is_ram_device(mr)) {
        return false;
    }
    memcpy(buf, (uint8_t *)memory_region_get_ram_ptr(mr) + xlat, len);
    return true;
}

/* ---- QOM ---- */

static void iommulab_realize(PCIDevice *pdev, Error **errp)
{
    IOMMULabState *s = IOMMULAB_VIOMMU(pdev);
    PCIBus *bus = pci_get_bus(pdev);

    if (!pci_bus_is_root(bus)) {
        error_setg(errp, "%s must be plugged on the root PCI bus",
                   TYPE_IOMMULAB_VIOMMU);
        return;
    }
    if (!s->keep_bus_iommu && bus->iommu_ops) {
        error_setg(errp, "this PCI bus already has an IOMMU");
        return;
    }
    if (!s->default_mode_str || !strcmp(s->default_mode_str, "blocked")) {
        s->default_mode = IL_MODE_BLOCKED;
    } else if (!strcmp(s->default_mode_str, "bypass")) {
        s->default_mode = IL_MODE_BYPASS;
    } else {
        error_setg(errp, "default-mode must be 'blocked' or 'bypass', not "
                   "'%s'", s->default_mode_str);
        return;
    }
    if (!s->iotlb_size || (s->iotlb_size & (s->iotlb_size - 1)) ||
        s->iotlb_size > (1u << 20)) {
        error_setg(errp, "iotlb-size must be a power of two up to 2^20");
        return;
    }
    if (!s->fault_queue_size || s->fault_queue_size > (1u << 16)) {
        error_setg(errp, "fault-queue-size must be 1 to 65536");
        return;
    }
    if ((s->msi_base | s->msi_size) & IL_PAGE_MASK ||
        (s->msi_size && s->msi_size - 1 > UINT64_MAX - s->msi_base)) {
        error_setg(errp, "msi-base and msi-size must be 4 KiB aligned and "
                   "not wrap");
        return;
    }
    error_setg(&s->migration_blocker, "%s: domains, mappings and "
               "attachments are programmed by the control plane over QMP and "
               "are not migrated", TYPE_IOMMULAB_VIOMMU);
    if (migrate_add_blocker(&s->migration_blocker, errp) < 0) {
        return;
    }
    if (s->table_memory_limit < IL_S2_TABLE_BYTES) {
        error_setg(errp, "table-memory-limit must be at least %u (one page "
                   "table), not %" PRIu64, IL_S2_TABLE_BYTES,
                   s->table_memory_limit);
        migrate_del_blocker(&s->migration_blocker);
        return;
    }
    if (il_engine_init(&s->engine, s->iotlb_size, s->fault_queue_size,
                       iommulab_read_mem, s) != IL_OK) {
        error_setg(errp, "cannot allocate an IOTLB of %" PRIu32 " entries "
                   "and a fault queue of %" PRIu32, s->iotlb_size,
                   s->fault_queue_size);
        migrate_del_blocker(&s->migration_blocker);
        return;
    }
    /* >= one table and nothing held yet: cannot fail */
    il_engine_set_table_limit(&s->engine, s->table_memory_limit);
    qemu_mutex_init(&s->lock);
    s->bus_devs = g_hash_table_new_full(NULL, NULL, NULL, g_free);
    s->devs = g_ptr_array_new();
    if (!s->keep_bus_iommu) {
        pci_setup_iommu(bus, &iommulab_iommu_ops, s);
        s->unplug_listener.unrealize = iommulab_device_unrealize;
        device_listener_register(&s->unplug_listener);
        s->unplug_listening = true;
    }
}

/*
 * Not hotpluggable, but unrealized with its bus (a subclass on a pseries PHB
 * that is unplugged).  The engine and the requesters stay allocated: the
 * address spaces handed out for them may still be referenced.
 */
static void iommulab_exit(PCIDevice *pdev)
{
    IOMMULabState *s = IOMMULAB_VIOMMU(pdev);

    if (s->unplug_listening) {
        device_listener_unregister(&s->unplug_listener);
        s->unplug_listening = false;
    }
    migrate_del_blocker(&s->migration_blocker);
    iommulab_owner_forget(OBJECT(s));  /* a new one at this address is not */
}

static void iommulab_reset(DeviceState *ds)
{
    IOMMULabState *s = IOMMULAB_VIOMMU(ds);

    /*
     * Domains and attachments belong to the control plane and survive a
     * machine reset (as iommufd objects survive a guest reboot); cached
     * translations do not.
     */
    if (s->devs) {
        qemu_mutex_lock(&s->lock);
        il_invalidate_all(&s->engine);
        qemu_mutex_unlock(&s->lock);
    }
}

static const Property iommulab_properties[] = {
    DEFINE_PROP_STRING("default-mode", IOMMULabState, default_mode_str),
    DEFINE_PROP_UINT32("iotlb-size", IOMMULabState, iotlb_size, 4096),
    DEFINE_PROP_UINT32("fault-queue-size", IOMMULabState, fault_queue_size,
                       256),
    DEFINE_PROP_UINT64("msi-base", IOMMULabState, msi_base, 0xfee00000),
    DEFINE_PROP_UINT64("msi-size", IOMMULabState, msi_size, 0x100000),
    DEFINE_PROP_SIZE("table-memory-limit", IOMMULabState, table_memory_limit,
                     IL_ENGINE_TABLE_LIMIT_DEFAULT),
};

static void iommulab_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);
    k->realize = iommulab_realize;
    k->exit = iommulab_exit;
    k->vendor_id = PCI_VENDOR_ID_REDHAT;
    k->device_id = 0x00f1;
    k->class_id = 0x0806;       /* base system peripheral: IOMMU */
    dc->desc = "iommulab generic paging vIOMMU";
    dc->hotpluggable = false;
    device_class_set_legacy_reset(dc, iommulab_reset);
    device_class_set_props(dc, iommulab_properties);
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
}

static const TypeInfo iommulab_types[] = {
    {
        .name = TYPE_IOMMULAB_VIOMMU,
        .parent = TYPE_PCI_DEVICE,
        .instance_size = sizeof(IOMMULabState),
        .class_size = sizeof(IOMMULabClass),
        .class_init = iommulab_class_init,
        .interfaces = (InterfaceInfo[]) {
            { INTERFACE_CONVENTIONAL_PCI_DEVICE },
            { },
        },
    },
};

DEFINE_TYPES(iommulab_types)

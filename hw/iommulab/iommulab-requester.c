/*
 * iommulab-viommu: its requesters.  Each (bus, devfn) behind the vIOMMU
 * gets an address space whose IOMMU memory region translates through the
 * core (translate(), one call per DMA), with IOMMU notifiers and replay
 * for the consumers that cache translations.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/timer.h"
#include "qapi/qapi-events-iommulab.h"
#include "hw/pci/pci.h"
#include "hw/pci/pci_bus.h"
#include "exec/address-spaces.h"
#include "iommulab-internal.h"
#include "trace.h"

/* QOM path of the device, or a bus:devfn name if it is gone. */
char *iommulab_dev_name(IOMMULabDev *dev)
{
    PCIDevice *pdev = iommulab_dev_pci(dev);
    uint16_t rid = iommulab_dev_rid(dev);

    if (pdev) {
        return object_get_canonical_path(OBJECT(pdev));
    }
    return g_strdup_printf("%02x:%02x.%x", PCI_BUS_NUM(rid),
                           PCI_SLOT(dev->devfn), PCI_FUNC(dev->devfn));
}

/*
 * IOMMU notifiers.  A notifier watches [start, end]; each event is clipped
 * to it and split into naturally aligned power-of-two pieces, as
 * memory_region_notify_iommu_one() requires.
 */
void iommulab_notify_range(IOMMUNotifier *n, IOMMUNotifierFlag type,
                           uint64_t first, uint64_t last,
                           uint64_t addr, IOMMUAccessFlags perm)
{
    uint64_t lo = MAX(first, n->start), hi = MIN(last, n->end);

    if (lo > hi || !(n->notifier_flags & type)) {
        return;
    }
    addr += lo - first;
    for (;;) {
        unsigned shift = 63;
        uint64_t mask;
        IOMMUTLBEvent ev;

        if (lo) {
            shift = MIN(shift, ctz64(lo));
        }
        if (type == IOMMU_NOTIFIER_MAP && addr) {
            shift = MIN(shift, ctz64(addr));
        }
        if (hi - lo != UINT64_MAX) {
            shift = MIN(shift, 63 - clz64(hi - lo + 1));
        } else {
            shift = 63;
        }
        mask = shift == 63 && hi - lo == UINT64_MAX ? UINT64_MAX :
               (1ULL << shift) - 1;
        ev.type = type;
        ev.entry.target_as = &address_space_memory;
        ev.entry.iova = lo;
        ev.entry.translated_addr = type == IOMMU_NOTIFIER_MAP ? addr : 0;
        ev.entry.addr_mask = mask;
        ev.entry.perm = type == IOMMU_NOTIFIER_MAP ? perm : IOMMU_NONE;
        memory_region_notify_iommu_one(n, &ev);
        if (hi - lo <= mask) {
            break;
        }
        lo += mask + 1;
        addr += mask + 1;
    }
}

void iommulab_dev_unmap(IOMMULabDev *dev, uint64_t first,
                        uint64_t last)
{
    IOMMUNotifier *n;

    IOMMU_NOTIFIER_FOREACH(n, &dev->iommu_mr) {
        iommulab_notify_range(n, IOMMU_NOTIFIER_UNMAP, first, last, 0,
                              IOMMU_NONE);
    }
}

typedef struct ReplayArg {
    IOMMUNotifier *n;
} ReplayArg;

static void iommulab_replay_one(void *opaque, const ILMapping *m)
{
    ReplayArg *ra = opaque;

    iommulab_notify_range(ra->n, IOMMU_NOTIFIER_MAP, m->iova,
                          m->iova + (m->size - 1), m->addr,
                          perm_to_iommu(m->perm));
}

/*
 * Replay the mappings of a paging domain.  Nested domains are not replayed
 * (that would need a full stage-1 walk); their consumers see UNMAPs on
 * invalidation and translate on demand.
 */
static void iommulab_replay(IOMMUMemoryRegion *iommu_mr, IOMMUNotifier *n)
{
    IOMMULabDev *dev = container_of(iommu_mr, IOMMULabDev, iommu_mr);
    IOMMULabState *s = dev->s;
    ReplayArg ra = { .n = n };

    qemu_mutex_lock(&s->lock);
    if (dev->mode == IL_MODE_DOMAIN) {
        il_domain_for_each_mapping(dev->domain, iommulab_replay_one, &ra);
    }
    qemu_mutex_unlock(&s->lock);
}

static int iommulab_notify_flag_changed(IOMMUMemoryRegion *iommu,
                                        IOMMUNotifierFlag old,
                                        IOMMUNotifierFlag new, Error **errp)
{
    return 0;
}

/* The device whose attachment changed: everything it had may be gone. */
void iommulab_dev_changed(IOMMULabDev *dev)
{
    IOMMUNotifier *n;

    IOMMU_NOTIFIER_FOREACH(n, &dev->iommu_mr) {
        iommulab_notify_range(n, IOMMU_NOTIFIER_UNMAP, 0, UINT64_MAX, 0,
                              IOMMU_NONE);
        if (n->notifier_flags & IOMMU_NOTIFIER_MAP) {
            iommulab_replay(&dev->iommu_mr, n);
        }
    }
}

/* A new fault (il_translate() recorded it): an event, rate-limited */
static void iommulab_emit_fault(IOMMULabState *s, IOMMULabDev *dev,
                                uint64_t iova, unsigned access,
                                const ILResult *r)
{
    IommulabFaultEvent ev = { };
    ILFault f = {
        .dev = dev->index,
        .has_domain = dev->mode == IL_MODE_DOMAIN,
        .domain = dev->mode == IL_MODE_DOMAIN ? il_domain_id(dev->domain) : 0,
        .access = access,
        .stage = r->stage,
        .reason = r->reason,
        .iova = iova,
    };

    if (!il_faults_event(&s->engine, qemu_clock_get_ms(QEMU_CLOCK_REALTIME),
                         &ev.suppressed)) {
        return;
    }
    iommulab_dev_fault(s, dev, &f, qapi_IommulabFaultEvent_base(&ev));
    qapi_event_send_x_iommulab_fault(&ev);
    g_free(ev.iommu);
    g_free(ev.device);
}

static IOMMUTLBEntry iommulab_translate(IOMMUMemoryRegion *iommu_mr,
                                       hwaddr addr, IOMMUAccessFlags flag,
                                       int iommu_idx)
{
    IOMMULabDev *dev = container_of(iommu_mr, IOMMULabDev, iommu_mr);
    IOMMULabState *s = dev->s;
    IOMMUTLBEntry entry = {
        .target_as = &address_space_memory,
        .iova = addr & ~(hwaddr)IL_PAGE_MASK,
        .addr_mask = IL_PAGE_MASK,
        .perm = IOMMU_NONE,
    };
    unsigned access = ((flag & IOMMU_RO) ? IL_ACCESS_READ : 0) |
                      ((flag & IOMMU_WO) ? IL_ACCESS_WRITE : 0);
    bool ok, recorded;
    ILResult r;

    qemu_mutex_lock(&s->lock);
    ok = il_translate(&s->engine, dev->mode, dev->domain, dev->index, addr,
                      access, 0, &r, &recorded);
    if (recorded) {
        iommulab_emit_fault(s, dev, addr, access, &r);
    }
    qemu_mutex_unlock(&s->lock);
    if (ok) {
        uint64_t mask = (1ULL << r.shift) - 1;

        entry.iova = addr & ~mask;
        entry.translated_addr = r.addr & ~mask;
        entry.addr_mask = mask;
        entry.perm = perm_to_iommu(r.perm);
        /*
         * The requester id costs a QOM class lookup (pci_bus_num()): only
         * compute it when the event is on.  This is every DMA's path.
         */
        if (trace_event_get_state_backends(TRACE_IOMMULAB_TRANSLATE)) {
            trace_iommulab_translate(iommulab_dev_rid(dev), addr, flag,
                                     r.addr, r.perm);
        }
    } else if (access &&
               trace_event_get_state_backends(TRACE_IOMMULAB_FAULT)) {
        trace_iommulab_fault(iommulab_dev_rid(dev), addr, access, r.stage,
                             r.reason);
    }
    return entry;
}

static AddressSpace *iommulab_get_address_space(PCIBus *bus, void *opaque,
                                                int devfn)
{
    IOMMULabState *s = opaque;
    IOMMULabDev **devs = g_hash_table_lookup(s->bus_devs, bus);
    IOMMULabDev *dev;
    g_autofree char *name = NULL;

    if (!devs) {
        devs = g_new0(IOMMULabDev *, PCI_DEVFN_MAX);
        g_hash_table_insert(s->bus_devs, bus, devs);
    }
    dev = devs[devfn];
    if (dev) {
        return &dev->as;
    }
    dev = g_new0(IOMMULabDev, 1);
    dev->s = s;
    dev->bus = bus;
    dev->devfn = devfn;
    dev->mode = s->default_mode;
    name = g_strdup_printf("%s-%u", TYPE_IOMMULAB_IOMMU_MR, s->devs->len);
    memory_region_init(&dev->root, OBJECT(s), name, UINT64_MAX);
    memory_region_init_iommu(&dev->iommu_mr, sizeof(dev->iommu_mr),
                             TYPE_IOMMULAB_IOMMU_MR, OBJECT(s), name,
                             UINT64_MAX);
    memory_region_add_subregion_overlap(&dev->root, 0,
                                        MEMORY_REGION(&dev->iommu_mr), 0);
    if (s->msi_size) {
        /*
         * No interrupt remapping: MSI writes reach the interrupt controller
         * untranslated, like virtio-iommu's MSI reserved region.
         */
        memory_region_init_alias(&dev->msi_mr, OBJECT(s), "iommulab-msi",
                                 get_system_memory(), s->msi_base,
                                 s->msi_size);
        memory_region_add_subregion_overlap(&dev->root, s->msi_base,
                                            &dev->msi_mr, 1);
    }
    address_space_init(&dev->as, &dev->root, name);
    qemu_mutex_lock(&s->lock);
    dev->index = s->devs->len;
    g_ptr_array_add(s->devs, dev);
    qemu_mutex_unlock(&s->lock);
    devs[devfn] = dev;
    trace_iommulab_add_device(pci_bus_num(bus), devfn, dev->index);
    return &dev->as;
}

const PCIIOMMUOps iommulab_iommu_ops = {
    .get_address_space = iommulab_get_address_space,
};

IOMMULabDev *iommulab_viommu_requester(IOMMULabState *s, PCIBus *bus,
                                       uint8_t devfn)
{
    AddressSpace *as = iommulab_get_address_space(bus, s, devfn);

    return container_of(as, IOMMULabDev, as);
}

static void iommulab_mr_class_init(ObjectClass *klass, void *data)
{
    IOMMUMemoryRegionClass *imrc = IOMMU_MEMORY_REGION_CLASS(klass);

    imrc->translate = iommulab_translate;
    imrc->replay = iommulab_replay;
    imrc->notify_flag_changed = iommulab_notify_flag_changed;
}

static const TypeInfo iommulab_mr_types[] = {
    {
        .name = TYPE_IOMMULAB_IOMMU_MR,
        .parent = TYPE_IOMMU_MEMORY_REGION,
        .class_init = iommulab_mr_class_init,
    },
};

DEFINE_TYPES(iommulab_mr_types)

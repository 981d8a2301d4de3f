/*
 * iommulab generic paging vIOMMU for q35.
 *
 * A PCI device on the root bus that registers itself with pci_setup_iommu()
 * so that every device on the buses below gets an IOMMU memory region whose
 * translate() goes through the iommulab core: blocked, bypass, a stage-2
 * (paging) domain, or a nested domain (guest stage 1 over stage 2).  The
 * control plane programs it over QMP: the qmp_x_iommulab_* commands below
 * (docs/qmp.md), devices named through iommulab_resolve() (iommulab-qmp.c).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/timer.h"
#include "qemu/rcu.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab.h"
#include "qapi/qapi-events-iommulab.h"
#include "hw/pci/pci.h"
#include "hw/pci/pci_bus.h"
#include "hw/pci/pci_bridge.h"
#include "hw/qdev-properties.h"
#include "migration/blocker.h"
#include "exec/address-spaces.h"
#include "iommulab-viommu.h"
#include "spapr/iommulab-spapr.h"
#include "trace.h"

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

static IommulabAccess access_to_qapi(unsigned access)
{
    return (access & IL_ACCESS_WRITE) ? IOMMULAB_ACCESS_WRITE :
                                        IOMMULAB_ACCESS_READ;
}

static IommulabFaultStage stage_to_qapi(unsigned stage)
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

static IommulabFaultReason reason_to_qapi(unsigned reason)
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

static PCIDevice *iommulab_dev_pci(IOMMULabDev *dev)
{
    return dev->bus ? dev->bus->devices[dev->devfn] : NULL;
}

static uint16_t iommulab_dev_rid(IOMMULabDev *dev)
{
    return dev->bus ? PCI_BUILD_BDF(pci_bus_num(dev->bus), dev->devfn) :
                      dev->gone_rid;
}

/* QOM path of the device, or a bus:devfn name if it is gone. */
static char *iommulab_dev_name(IOMMULabDev *dev)
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
static void iommulab_notify_range(IOMMUNotifier *n, IOMMUNotifierFlag type,
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

static void iommulab_dev_unmap(IOMMULabDev *dev, uint64_t first,
                               uint64_t last)
{
    IOMMUNotifier *n;

    IOMMU_NOTIFIER_FOREACH(n, &dev->iommu_mr) {
        iommulab_notify_range(n, IOMMU_NOTIFIER_UNMAP, first, last, 0,
                              IOMMU_NONE);
    }
}

static IOMMUAccessFlags perm_to_iommu(unsigned perm)
{
    return IOMMU_ACCESS_FLAG(!!(perm & IL_PERM_R), !!(perm & IL_PERM_W));
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
static void iommulab_dev_changed(IOMMULabDev *dev)
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

void iommulab_fault_to_qapi(const ILFault *f, IommulabFault *qf)
{
    qf->iova = f->iova;
    qf->access = access_to_qapi(f->access);
    qf->stage = stage_to_qapi(f->stage);
    qf->reason = reason_to_qapi(f->reason);
    qf->has_domain = f->has_domain;
    qf->domain = f->domain;
    if (f->stage == IL_STAGE_TCE) {
        qf->has_liobn = qf->has_tce = true;
        qf->liobn = f->liobn;
        qf->tce = f->tce;
    }
}

/* The record of a requester's fault, as the queue and the event show it */
static void iommulab_dev_fault(IOMMULabState *s, IOMMULabDev *dev,
                               const ILFault *f, IommulabFault *qf)
{
    iommulab_fault_to_qapi(f, qf);
    qf->iommu = object_get_canonical_path(OBJECT(s));
    qf->device = iommulab_dev_name(dev);
    qf->has_requester_id = true;
    qf->requester_id = iommulab_dev_rid(dev);
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

static const PCIIOMMUOps iommulab_iommu_ops = {
    .get_address_space = iommulab_get_address_space,
};

IOMMULabDev *iommulab_viommu_requester(IOMMULabState *s, PCIBus *bus,
                                       uint8_t devfn)
{
    AddressSpace *as = iommulab_get_address_space(bus, s, devfn);

    return container_of(as, IOMMULabDev, as);
}

/* ---- control commands (QMP, under the BQL) ---- */

/*
 * The devices to tell about a change of domain @d: its own (child false)
 * and, with @children, those of its nested domains (child true).  From the
 * domain's list (il_domain_for_each_dev()), under the engine lock; the
 * notifiers are then called without it (a listener may translate).
 */
typedef struct IOMMULabUser {
    IOMMULabDev *dev;
    bool child;
} IOMMULabUser;

typedef struct IOMMULabUsers {
    IOMMULabState *s;
    const ILDomain *d;
    GArray *users;
} IOMMULabUsers;

static void iommulab_collect_user(void *opaque, uint32_t dev,
                                  const ILDomain *dom)
{
    IOMMULabUsers *u = opaque;
    IOMMULabUser user = {
        .dev = g_ptr_array_index(u->s->devs, dev),
        .child = dom != u->d,
    };

    g_array_append_val(u->users, user);
}

static GArray *iommulab_domain_users(IOMMULabState *s, const ILDomain *d,
                                     bool children)
{
    IOMMULabUsers u = {
        .s = s,
        .d = d,
        .users = g_array_new(false, false, sizeof(IOMMULabUser)),
    };

    if (d) {
        il_domain_for_each_dev(d, children, iommulab_collect_user, &u);
    }
    return u.users;
}

static IOMMULabState *iommulab_find(const char *name, Error **errp)
{
    Object *obj = iommulab_resolve(name, TYPE_IOMMULAB_VIOMMU,
                                   "an " TYPE_IOMMULAB_VIOMMU, errp);

    return obj ? IOMMULAB_VIOMMU(obj) : NULL;
}

static void iommulab_set_error(Error **errp, ILError err, const char *what,
                               uint32_t domain)
{
    error_setg(errp, "%s: domain %" PRIu32 ": %s", what, domain,
               il_strerror(err));
}

void qmp_x_iommulab_domain_alloc(const char *iommu, uint32_t domain,
                                 IommulabDomainType type, bool has_parent,
                                 uint32_t parent, bool has_s1_root,
                                 uint64_t s1_root, bool has_ias, uint8_t ias,
                                 Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    ILError err;

    if (!s) {
        return;
    }

    if (type == IOMMULAB_DOMAIN_TYPE_PAGING) {
        if (has_parent || has_s1_root) {
            error_setg(errp, "'parent' and 's1-root' are for nested domains");
            return;
        }
        if (has_ias && (ias < IL_S2_IAS_MIN || ias > IL_S2_IAS_MAX)) {
            error_setg(errp, "'ias' must be %d to %d bits, not %u",
                       IL_S2_IAS_MIN, IL_S2_IAS_MAX, ias);
            return;
        }
    } else {
        if (s->no_nesting) {
            error_setg(errp, "%s offers no nested domains",
                       object_get_typename(OBJECT(s)));
            return;
        }
        if (!has_parent || !has_s1_root) {
            error_setg(errp, "a nested domain needs 'parent' and 's1-root'");
            return;
        }
        if (has_ias) {
            error_setg(errp, "'ias' is for paging domains (stage 1 is "
                       "always %d bits)", IL_S1_IAS);
            return;
        }
    }
    qemu_mutex_lock(&s->lock);
    if (type == IOMMULAB_DOMAIN_TYPE_PAGING) {
        err = il_domain_alloc_paging(&s->engine, domain, has_ias ? ias :
                                     IOMMULAB_DEFAULT_IAS);
    } else {
        err = il_domain_alloc_nested(&s->engine, domain, parent, s1_root);
    }
    qemu_mutex_unlock(&s->lock);
    switch (err) {
    case IL_OK:
        trace_iommulab_domain_alloc(domain, type);
        return;
    case IL_ERR_NOENT:
        error_setg(errp, "parent domain %" PRIu32 " does not exist", parent);
        return;
    case IL_ERR_TYPE:
        error_setg(errp, "parent domain %" PRIu32 " is not a paging domain",
                   parent);
        return;
    case IL_ERR_ALIGN:
        error_setg(errp, "'s1-root' 0x%" PRIx64 " is not 4 KiB aligned",
                   s1_root);
        return;
    default:
        iommulab_set_error(errp, err, "domain-alloc", domain);
    }
}

void qmp_x_iommulab_domain_free(const char *iommu, uint32_t domain,
                                Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    ILDomain *d;
    ILError err = IL_ERR_NOENT;

    if (!s) {
        return;
    }

    qemu_mutex_lock(&s->lock);
    d = il_domain_find(&s->engine, domain);
    if (d && (il_domain_devices(d) || il_domain_children(d))) {
        error_setg(errp, "domain %" PRIu32 " is in use: %" PRIu32
                   " device(s) attached, %" PRIu32 " nested domain(s) on it",
                   domain, il_domain_devices(d), il_domain_children(d));
        qemu_mutex_unlock(&s->lock);
        return;
    }
    if (d) {
        err = il_domain_free(&s->engine, domain);
    }
    qemu_mutex_unlock(&s->lock);
    if (err != IL_OK) {
        iommulab_set_error(errp, err, "domain-free", domain);
        return;
    }
    trace_iommulab_domain_free(domain);
}

void qmp_x_iommulab_map(const char *iommu, uint32_t domain,
                        IommulabMappingList *mappings, Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    g_autofree ILMapping *maps = NULL;
    g_autoptr(GArray) users = NULL;
    size_t n = 0, i = 0, bad = 0;
    IommulabMappingList *l;
    ILError err;

    if (!s) {
        return;
    }

    for (l = mappings; l; l = l->next) {
        n++;
    }
    if (!n) {
        error_setg(errp, "'mappings' is empty");
        return;
    }
    maps = g_new0(ILMapping, n);
    for (l = mappings; l; l = l->next, i++) {
        maps[i].iova = l->value->iova;
        maps[i].size = l->value->size;
        maps[i].addr = l->value->addr;
        maps[i].perm = (l->value->read ? IL_PERM_R : 0) |
                       (l->value->write ? IL_PERM_W : 0);
    }
    qemu_mutex_lock(&s->lock);
    err = il_domain_map(&s->engine, domain, maps, n, &bad);
    if (err == IL_OK) {
        users = iommulab_domain_users(s, il_domain_find(&s->engine, domain),
                                      false);
    }
    qemu_mutex_unlock(&s->lock);
    if (err == IL_ERR_NOENT || err == IL_ERR_TYPE) {
        error_setg(errp, "domain %" PRIu32 " %s", domain,
                   err == IL_ERR_NOENT ? "does not exist" :
                   "is not a paging domain");
        return;
    }
    if (err != IL_OK) {
        error_setg(errp, "mappings[%zu] (iova 0x%" PRIx64 " size 0x%" PRIx64
                   " addr 0x%" PRIx64 "): %s; nothing was mapped", bad,
                   maps[bad].iova, maps[bad].size, maps[bad].addr,
                   il_strerror(err));
        return;
    }
    for (i = 0; i < n; i++) {
        trace_iommulab_map(domain, maps[i].iova, maps[i].size, maps[i].addr,
                           maps[i].perm);
    }
    /* MAP notifications for the devices attached to this domain. */
    for (unsigned j = 0; j < users->len; j++) {
        IOMMULabDev *dev = g_array_index(users, IOMMULabUser, j).dev;
        IOMMUNotifier *nf;

        IOMMU_NOTIFIER_FOREACH(nf, &dev->iommu_mr) {
            for (i = 0; i < n; i++) {
                iommulab_notify_range(nf, IOMMU_NOTIFIER_MAP, maps[i].iova,
                                      maps[i].iova + (maps[i].size - 1),
                                      maps[i].addr,
                                      perm_to_iommu(maps[i].perm));
            }
        }
    }
}

IommulabUnmapResult *qmp_x_iommulab_unmap(const char *iommu, uint32_t domain,
                                          IommulabRangeList *ranges,
                                          Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    g_autofree ILMapping *r = NULL;
    g_autoptr(GArray) users = NULL;
    size_t n = 0, i = 0, bad = 0;
    IommulabRangeList *l;
    IommulabUnmapResult *res;
    uint64_t bytes = 0;
    ILError err;

    if (!s) {
        return NULL;
    }

    for (l = ranges; l; l = l->next) {
        n++;
    }
    if (!n) {
        error_setg(errp, "'ranges' is empty");
        return NULL;
    }
    r = g_new0(ILMapping, n);
    for (l = ranges; l; l = l->next, i++) {
        r[i].iova = l->value->iova;
        r[i].size = l->value->size;
    }
    qemu_mutex_lock(&s->lock);
    err = il_domain_unmap(&s->engine, domain, r, n, &bad, &bytes);
    if (err == IL_OK) {
        users = iommulab_domain_users(s, il_domain_find(&s->engine, domain),
                                      true);
    }
    qemu_mutex_unlock(&s->lock);
    if (err == IL_ERR_NOENT || err == IL_ERR_TYPE) {
        error_setg(errp, "domain %" PRIu32 " %s", domain,
                   err == IL_ERR_NOENT ? "does not exist" :
                   "is not a paging domain");
        return NULL;
    }
    if (err != IL_OK) {
        error_setg(errp, "ranges[%zu] (iova 0x%" PRIx64 " size 0x%" PRIx64
                   "): %s; nothing was unmapped", bad, r[bad].iova,
                   r[bad].size, il_strerror(err));
        return NULL;
    }
    for (i = 0; i < n; i++) {
        trace_iommulab_unmap(domain, r[i].iova, r[i].size);
    }
    /*
     * The IOTLB is already clean; now the notifier consumers: the domain's
     * devices for the ranges, its nested children's for everything (their
     * tables and outputs may be anywhere in it).
     */
    for (unsigned j = 0; j < users->len; j++) {
        IOMMULabUser *u = &g_array_index(users, IOMMULabUser, j);

        if (u->child) {
            iommulab_dev_unmap(u->dev, 0, UINT64_MAX);
            continue;
        }
        for (i = 0; i < n; i++) {
            iommulab_dev_unmap(u->dev, r[i].iova, r[i].iova + (r[i].size - 1));
        }
    }
    res = g_new0(IommulabUnmapResult, 1);
    res->unmapped = bytes;
    return res;
}

static IOMMULabDev *iommulab_find_dev(IOMMULabState *s, const char *name,
                                      Error **errp)
{
    Object *obj = iommulab_resolve(name, TYPE_PCI_DEVICE, "a PCI device",
                                   errp);
    AddressSpace *as;

    if (!obj) {
        return NULL;
    }
    if (obj == OBJECT(s) && !s->keep_bus_iommu) {
        error_setg(errp, "'%s' is the vIOMMU itself", name);
        return NULL;
    }
    as = pci_device_iommu_address_space(PCI_DEVICE(obj));
    for (unsigned i = 0; i < s->devs->len; i++) {
        IOMMULabDev *dev = g_ptr_array_index(s->devs, i);

        /*
         * With keep_bus_iommu the vIOMMU's own requester stands for what
         * it sits beneath (sPAPR: the PHB, whose devices share it).
         */
        if (&dev->as == as ||
            (obj == OBJECT(s) && iommulab_dev_pci(dev) == PCI_DEVICE(s))) {
            return dev;
        }
    }
    error_setg(errp, "PCI device '%s' is not behind this vIOMMU", name);
    return NULL;
}

/*
 * Attach a requester (all or nothing).  The domain's list of devices
 * follows (il_dev_switch_domain()), so that unmap and invalidate notify
 * only the domain's users.
 */
static bool iommulab_attach_requester(IOMMULabDev *dev,
                                      IommulabAttachMode mode,
                                      bool has_domain, uint32_t domain,
                                      Error **errp)
{
    IOMMULabState *s = dev->s;
    ILDomain *d = NULL;
    ILError err;

    if (mode == IOMMULAB_ATTACH_MODE_DOMAIN && !has_domain) {
        error_setg(errp, "mode 'domain' needs 'domain'");
        return false;
    }
    if (mode != IOMMULAB_ATTACH_MODE_DOMAIN && has_domain) {
        error_setg(errp, "'domain' is only valid with mode 'domain'");
        return false;
    }
    qemu_mutex_lock(&s->lock);
    if (has_domain) {
        d = il_domain_find(&s->engine, domain);
        if (!d) {
            qemu_mutex_unlock(&s->lock);
            error_setg(errp, "domain %" PRIu32 " does not exist", domain);
            return false;
        }
    }
    err = il_dev_switch_domain(&s->engine, dev->index, dev->domain, d);
    if (err != IL_OK) {
        qemu_mutex_unlock(&s->lock);
        error_setg(errp, "attach: %s; nothing changed", il_strerror(err));
        return false;
    }
    dev->domain = d;
    dev->mode = mode == IOMMULAB_ATTACH_MODE_DOMAIN ? IL_MODE_DOMAIN :
                mode == IOMMULAB_ATTACH_MODE_BYPASS ? IL_MODE_BYPASS :
                IL_MODE_BLOCKED;
    qemu_mutex_unlock(&s->lock);
    trace_iommulab_attach(iommulab_dev_rid(dev), mode, domain);
    iommulab_dev_changed(dev);
    return true;
}

void qmp_x_iommulab_attach(const char *iommu, const char *device,
                           IommulabAttachMode mode, bool has_domain,
                           uint32_t domain, Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    IOMMULabDev *dev = s ? iommulab_find_dev(s, device, errp) : NULL;

    if (dev) {
        iommulab_attach_requester(dev, mode, has_domain, domain, errp);
    }
}

void qmp_x_iommulab_invalidate(const char *iommu, bool has_domain,
                               uint32_t domain, bool has_iova, uint64_t iova,
                               bool has_size, uint64_t size, Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    const ILDomain *d = NULL;
    g_autoptr(GArray) users = NULL;
    uint64_t first = 0, last = UINT64_MAX;
    ILError err;

    if (!s) {
        return;
    }
    if (has_iova != has_size) {
        error_setg(errp, "'iova' and 'size' go together");
        return;
    }
    if (has_iova) {
        err = il_check_range(iova, size, 64);
        if (err != IL_OK) {
            error_setg(errp, "range iova 0x%" PRIx64 " size 0x%" PRIx64
                       ": %s", iova, size, il_strerror(err));
            return;
        }
        first = iova;
        last = iova + (size - 1);
    }
    qemu_mutex_lock(&s->lock);
    if (has_domain) {
        d = il_domain_find(&s->engine, domain);
        if (!d) {
            qemu_mutex_unlock(&s->lock);
            error_setg(errp, "domain %" PRIu32 " does not exist", domain);
            return;
        }
    }
    /* a paging domain's nested children go with it, entries and users */
    if (has_iova) {
        il_invalidate_range(&s->engine, d, iova, size);
    } else if (d) {
        il_invalidate_domain(&s->engine, d);
    } else {
        il_invalidate_all(&s->engine);
    }
    users = iommulab_domain_users(s, d, true);
    qemu_mutex_unlock(&s->lock);
    trace_iommulab_invalidate(has_domain, domain, first, last);
    if (!d) {
        /* every domain: every attached device */
        for (unsigned j = 0; j < s->devs->len; j++) {
            IOMMULabDev *dev = g_ptr_array_index(s->devs, j);

            if (dev->mode == IL_MODE_DOMAIN) {
                iommulab_dev_unmap(dev, first, last);
            }
        }
        return;
    }
    for (unsigned j = 0; j < users->len; j++) {
        IOMMULabUser *u = &g_array_index(users, IOMMULabUser, j);

        if (u->child) {
            iommulab_dev_unmap(u->dev, 0, UINT64_MAX);
        } else {
            iommulab_dev_unmap(u->dev, first, last);
        }
    }
}

static void iommulab_collect_mapping(void *opaque, const ILMapping *m)
{
    IommulabMappingList ***tail = opaque;
    IommulabMapping *im = g_new0(IommulabMapping, 1);

    im->iova = m->iova;
    im->size = m->size;
    im->addr = m->addr;
    im->read = m->perm & IL_PERM_R;
    im->write = m->perm & IL_PERM_W;
    QAPI_LIST_APPEND(*tail, im);
}

static IommulabAttachMode mode_to_qapi(ILMode mode)
{
    return mode == IL_MODE_DOMAIN ? IOMMULAB_ATTACH_MODE_DOMAIN :
           mode == IL_MODE_BYPASS ? IOMMULAB_ATTACH_MODE_BYPASS :
           IOMMULAB_ATTACH_MODE_BLOCKED;
}

IommulabInfo *qmp_x_iommulab_query(const char *iommu, Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    IommulabInfo *info;
    IommulabDomainInfoList **dtail;
    IommulabDeviceInfoList **vtail;

    if (!s) {
        return NULL;
    }
    info = g_new0(IommulabInfo, 1);
    dtail = &info->domains;
    vtail = &info->devices;

    info->path = object_get_canonical_path(OBJECT(s));
    info->default_mode = mode_to_qapi(s->default_mode);
    qemu_mutex_lock(&s->lock);
    info->iotlb_size = il_iotlb_size(&s->engine);
    info->fault_queue_size = il_faults_capacity(&s->engine);
    for (size_t i = 0; i < il_domain_count(&s->engine); i++) {
        const ILDomain *d = il_domain_at(&s->engine, i);
        IommulabDomainInfo *di = g_new0(IommulabDomainInfo, 1);
        IommulabMappingList **mtail = &di->mappings;

        di->domain = il_domain_id(d);
        di->devices = il_domain_devices(d);
        di->children = il_domain_children(d);
        di->ias = il_domain_ias(d);
        il_domain_for_each_mapping(d, iommulab_collect_mapping, &mtail);
        if (il_domain_type(d) == IL_DOMAIN_PAGING) {
            di->type = IOMMULAB_DOMAIN_TYPE_PAGING;
        } else {
            di->type = IOMMULAB_DOMAIN_TYPE_NESTED;
            di->has_parent = true;
            di->parent = il_domain_id(il_domain_parent(d));
            di->has_s1_root = true;
            di->s1_root = il_domain_s1_root(d);
        }
        QAPI_LIST_APPEND(dtail, di);
    }
    for (unsigned j = 0; j < s->devs->len; j++) {
        IOMMULabDev *dev = g_ptr_array_index(s->devs, j);
        PCIDevice *pdev = iommulab_dev_pci(dev);
        IommulabDeviceInfo *vi;

        if (!pdev || (PCI_DEVICE(s) == pdev && !s->keep_bus_iommu)) {
            continue;
        }
        vi = g_new0(IommulabDeviceInfo, 1);
        vi->device = object_get_canonical_path(OBJECT(pdev));
        if (DEVICE(pdev)->id) {
            vi->id = g_strdup(DEVICE(pdev)->id);
        }
        vi->requester_id = iommulab_dev_rid(dev);
        vi->mode = mode_to_qapi(dev->mode);
        if (dev->mode == IL_MODE_DOMAIN) {
            vi->has_domain = true;
            vi->domain = il_domain_id(dev->domain);
        }
        QAPI_LIST_APPEND(vtail, vi);
    }
    qemu_mutex_unlock(&s->lock);
    return info;
}

IommulabCounters *qmp_x_iommulab_query_counters(const char *iommu,
                                                Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    const ILCounters *ec;
    IommulabCounters *c;

    if (!s) {
        return NULL;
    }
    c = g_new0(IommulabCounters, 1);
    qemu_mutex_lock(&s->lock);
    ec = il_engine_counters(&s->engine);
    c->hits = ec->hits;
    c->misses = ec->misses;
    c->walks = ec->walks;
    c->faults = ec->faults;
    c->faults_dropped = ec->faults_dropped;
    c->invalidations = ec->invalidations;
    c->iotlb_entries = il_iotlb_valid(&s->engine);
    c->events_suppressed = il_faults_suppressed(&s->engine);
    qemu_mutex_unlock(&s->lock);
    return c;
}

IommulabTranslation *qmp_x_iommulab_translate(const char *iommu,
                                              const char *device,
                                              uint64_t iova,
                                              IommulabAccess access,
                                              Error **errp)
{
    IOMMULabState *s = iommulab_find(iommu, errp);
    IOMMULabDev *dev = s ? iommulab_find_dev(s, device, errp) : NULL;
    IommulabTranslation *t;
    ILResult r;
    bool ok;

    if (!dev) {
        return NULL;
    }
    qemu_mutex_lock(&s->lock);
    ok = il_translate(&s->engine, dev->mode, dev->domain, dev->index, iova,
                      access == IOMMULAB_ACCESS_WRITE ? IL_ACCESS_WRITE :
                      IL_ACCESS_READ, IL_TR_DEBUG, &r, NULL);
    qemu_mutex_unlock(&s->lock);
    t = g_new0(IommulabTranslation, 1);
    t->allowed = ok;
    if (ok) {
        t->has_addr = t->has_read = t->has_write = true;
        t->addr = r.addr;
        t->read = r.perm & IL_PERM_R;
        t->write = r.perm & IL_PERM_W;
    } else {
        t->has_stage = t->has_reason = true;
        t->stage = stage_to_qapi(r.stage);
        t->reason = reason_to_qapi(r.reason);
    }
    return t;
}

/* Append the vIOMMU's fault queue to *tail (and clear it) */
static void iommulab_collect_faults(IOMMULabState *s, bool clear,
                                    IommulabFaultList ***tail,
                                    uint64_t *dropped)
{
    qemu_mutex_lock(&s->lock);
    for (uint32_t i = 0; i < il_faults_count(&s->engine); i++) {
        const ILFault *f = il_faults_get(&s->engine, i);
        IommulabFault *qf = g_new0(IommulabFault, 1);

        iommulab_dev_fault(s, g_ptr_array_index(s->devs, f->dev), f, qf);
        QAPI_LIST_APPEND(*tail, qf);
    }
    *dropped += il_faults_dropped(&s->engine);
    if (clear) {
        il_faults_clear(&s->engine);
    }
    qemu_mutex_unlock(&s->lock);
}

typedef struct IOMMULabFaultsArg {
    bool clear;
    IommulabFaultList **tail;
    uint64_t dropped;
} IOMMULabFaultsArg;

static int iommulab_collect_faults_one(Object *obj, void *opaque)
{
    IOMMULabFaultsArg *a = opaque;
    IOMMULabState *s = (IOMMULabState *)
        object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU);

    if (s && s->devs) {
        iommulab_collect_faults(s, a->clear, &a->tail, &a->dropped);
    }
    return 0;
}

/*
 * Every lab fault is in exactly one queue, its translator's: a vIOMMU's
 * engine, or a pseries PHB's (TCE windows, iommulab-spapr.c).
 */
IommulabFaults *qmp_x_iommulab_query_faults(const char *iommu, bool has_clear,
                                            bool clear, Error **errp)
{
    IommulabFaults *res;
    IOMMULabFaultsArg a = { .clear = has_clear && clear };
    Object *obj = NULL;

    if (iommu) {
        obj = iommulab_resolve(iommu, TYPE_DEVICE,
                               "an iommulab vIOMMU or a pseries PHB", errp);
        if (!obj) {
            return NULL;
        }
        if (!object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU) &&
            !iommulab_spapr_is_phb(obj)) {
            error_setg(errp, "'%s' is neither an iommulab vIOMMU nor a "
                       "pseries PHB", iommu);
            return NULL;
        }
    }
    res = g_new0(IommulabFaults, 1);
    a.tail = &res->faults;
    if (!obj) {
        object_child_foreach_recursive(object_get_root(),
                                       iommulab_collect_faults_one, &a);
        iommulab_spapr_collect_faults(NULL, a.clear, &a.tail, &a.dropped);
    } else if (object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU)) {
        iommulab_collect_faults(IOMMULAB_VIOMMU(obj), a.clear, &a.tail,
                                &a.dropped);
    } else {
        iommulab_spapr_collect_faults(obj, a.clear, &a.tail, &a.dropped);
    }
    res->dropped = a.dropped;
    return res;
}

/* ---- hardware facts (x-iommulab-query-hw-info) ---- */

/*
 * Leaf sizes of a walk (stage 2, and the stage-1 format): 4 KiB pages at
 * the last level, blocks at the two levels above it (il-s2.h, il-s1.h).
 */
static uint64_t iommulab_leaf_sizes(void)
{
    return IL_PAGE_SIZE | IL_PAGE_SIZE << IL_LEVEL_BITS |
           IL_PAGE_SIZE << (2 * IL_LEVEL_BITS);
}

static IommulabHwInfo *iommulab_hw_info(IOMMULabState *s, IOMMULabDev *dev)
{
    IOMMULabClass *ic = IOMMULAB_VIOMMU_GET_CLASS(s);
    IommulabHwInfo *info = g_new0(IommulabHwInfo, 1);

    info->type = IOMMULAB_HW_TYPE_PAGING;
    info->iommu = object_get_canonical_path(OBJECT(s));
    if (dev) {
        info->device = iommulab_dev_name(dev);
        info->has_requester_id = true;
        info->requester_id = iommulab_dev_rid(dev);
    }
    info->ias = g_new0(IommulabHwIas, 1);
    info->ias->min = IL_S2_IAS_MIN;
    info->ias->max = IL_S2_IAS_MAX;
    info->ias->q_default = IOMMULAB_DEFAULT_IAS;
    info->page_sizes = iommulab_leaf_sizes();
    info->nesting = !s->no_nesting;
    if (info->nesting) {
        info->stage1 = g_new0(IommulabHwStage1, 1);
        info->stage1->format = IOMMULAB_STAGE1_FORMAT_IOMMULAB;
        info->stage1->ias = IL_S1_IAS;
        info->stage1->levels = IL_S1_LEVELS;
        info->stage1->page_sizes = iommulab_leaf_sizes();
    }
    info->dirty_tracking = false;
    if (s->msi_size) {
        IommulabResvRegion *r = g_new0(IommulabResvRegion, 1);

        info->msi_window = g_new0(IommulabHwRange, 1);
        info->msi_window->start = s->msi_base;
        info->msi_window->size = s->msi_size;
        r->start = s->msi_base;
        r->size = s->msi_size;
        r->type = IOMMULAB_RESV_TYPE_MSI;
        QAPI_LIST_PREPEND(info->reserved_regions, r);
    }
    info->has_iotlb_size = true;
    qemu_mutex_lock(&s->lock);
    info->iotlb_size = il_iotlb_size(&s->engine);
    info->fault_queue_size = il_faults_capacity(&s->engine);
    qemu_mutex_unlock(&s->lock);
    info->limits = g_new0(IommulabHwLimits, 1);
    info->limits->max_domains = IL_MAX_DOMAINS;
    info->limits->max_tables_per_domain = IL_S2_MAX_TABLES;
    info->limits->table_budget_bytes = (uint64_t)IL_S2_MAX_TABLES *
                                       IL_TABLE_ENTRIES * sizeof(uint64_t);
    qemu_mutex_lock(&s->lock);
    info->limits->table_memory_limit = il_engine_table_limit(&s->engine);
    info->limits->table_memory = il_engine_table_bytes(&s->engine);
    qemu_mutex_unlock(&s->lock);
    if (ic->hw_info) {
        ic->hw_info(s, info);
    }
    return info;
}

/* The requester that is the vIOMMU itself (keep_bus_iommu subclasses) */
static IOMMULabDev *iommulab_self_requester(IOMMULabState *s)
{
    for (unsigned i = 0; i < s->devs->len; i++) {
        IOMMULabDev *dev = g_ptr_array_index(s->devs, i);

        if (iommulab_dev_pci(dev) == PCI_DEVICE(s)) {
            return dev;
        }
    }
    return NULL;
}

typedef struct IOMMULabFindReq {
    AddressSpace *as;
    IOMMULabDev *dev;
} IOMMULabFindReq;

static int iommulab_find_req_one(Object *obj, void *opaque)
{
    IOMMULabFindReq *f = opaque;
    IOMMULabState *s = (IOMMULabState *)
        object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU);

    for (unsigned i = 0; s && s->devs && i < s->devs->len; i++) {
        IOMMULabDev *dev = g_ptr_array_index(s->devs, i);

        if (&dev->as == f->as) {
            f->dev = dev;
            return 1;
        }
    }
    return 0;
}

IommulabHwInfo *qmp_x_iommulab_query_hw_info(const char *device, Error **errp)
{
    Object *obj = iommulab_resolve(device, TYPE_DEVICE, "a device", errp);
    IOMMULabFindReq f = { };
    IommulabHwInfo *info;
    IOMMULabState *s;

    if (!obj) {
        return NULL;
    }
    s = (IOMMULabState *)object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU);
    if (s) {
        /* a stage 2 beneath another IOMMU is its own requester too */
        return iommulab_hw_info(s, s->keep_bus_iommu ?
                                   iommulab_self_requester(s) : NULL);
    }
    if (!object_dynamic_cast(obj, TYPE_PCI_DEVICE)) {
        error_setg(errp, "'%s' is neither an iommulab vIOMMU nor a PCI "
                   "device", device);
        return NULL;
    }
    f.as = pci_device_iommu_address_space(PCI_DEVICE(obj));
    object_child_foreach_recursive(object_get_root(), iommulab_find_req_one,
                                   &f);
    if (f.dev) {
        return iommulab_hw_info(f.dev->s, f.dev);
    }
    info = iommulab_spapr_requester_hw_info(PCI_DEVICE(obj));
    if (!info) {
        error_setg(errp, "PCI device '%s' is behind no iommulab vIOMMU and "
                   "on no pseries PHB", device);
    }
    return info;
}

/* ---- hot-unplug ---- */

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
static void iommulab_device_unrealize(DeviceListener *l, DeviceState *ds)
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

static void iommulab_mr_class_init(ObjectClass *klass, void *data)
{
    IOMMUMemoryRegionClass *imrc = IOMMU_MEMORY_REGION_CLASS(klass);

    imrc->translate = iommulab_translate;
    imrc->replay = iommulab_replay;
    imrc->notify_flag_changed = iommulab_notify_flag_changed;
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
    }, {
        .name = TYPE_IOMMULAB_IOMMU_MR,
        .parent = TYPE_IOMMU_MEMORY_REGION,
        .class_init = iommulab_mr_class_init,
    },
};

DEFINE_TYPES(iommulab_types)

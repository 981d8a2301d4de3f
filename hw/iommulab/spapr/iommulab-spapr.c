/*
 * iommulab: pseries backend of the x-iommulab-spapr-* commands.
 *
 * DDW policy: held in the PHB's own fields (ddw, pgsz, ddw-max-windows,
 * ddw-max-tces, dma64_win_addr, dma_win_size), which the RTAS DDW calls
 * read, plus "refuse create" applied by the SpaprDdwOps create hook.
 * Guest window changes: the SpaprDdwOps changed hook sends an event.
 * TCE faults: the tables' fault callback records them (any thread) in the
 * PHB's fault queue, the core's (il-fault.h: coalescing, bounded ring,
 * rate limit), read by x-iommulab-query-faults with the vIOMMUs' ones; a
 * bottom half sends their X_IOMMULAB_FAULT events.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab-spapr.h"
#include "qapi/qapi-events-iommulab-spapr.h"
#include "qemu/main-loop.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "hw/boards.h"
#include "hw/ppc/spapr.h"
#include "hw/pci-host/spapr.h"
#include "system/system.h"
#include "hw/iommulab/iommulab-viommu.h"
#include "iommulab-spapr.h"
#include "trace.h"

/* Capacity of a PHB's TCE fault queue */
#define IL_SPAPR_FAULTS_MAX     256
/* Events waiting for the bottom half; more are counted as suppressed */
#define IL_SPAPR_EVENTS_PENDING 32
/* The largest window the host side creates (reported: host-windows) */
#define IL_SPAPR_HOST_MAX_TCES  (1u << 24)
/* A TCE's permission bits: 0 read, 1 write */
#define IL_SPAPR_TCE_RW         3ULL
#define IL_SPAPR_POLICY_MAX_TCES (1ULL << 37)
/* TCEs per x-iommulab-spapr-read-tces (reported: host-windows) */
#define IL_SPAPR_READ_MAX       (1u << 20)
/* Smallest TCE memory limit of a PHB: a default window and a leaf */
#define IL_SPAPR_MIN_TABLE_MEMORY (64u << 10)

/* The page sizes PAPR defines for DDW that we offer, as shifts */
static const uint8_t il_spapr_page_shifts[] = { 12, 16, 21, 24, 28, 34 };

typedef struct ILSpaprEvent {
    ILFault f;
    uint64_t suppressed;
} ILSpaprEvent;

static struct {
    QemuMutex lock;
    /* Per PHB index: refuse every ibm,create-pe-dma-window */
    GHashTable *refuse_create;
    /* Per LIOBN: faults since the window was enabled */
    GHashTable *window_faults;
    /* Per PHB index: its TCE fault queue (ILFaultQueue *) */
    GHashTable *phb_faults;
    /* Events not sent yet (the bottom half sends them) */
    ILSpaprEvent pending[IL_SPAPR_EVENTS_PENDING];
    uint32_t npending;
    uint64_t lost;              /* pending overflowed: added to the next */
    bool bh_scheduled;
} ils;

static SpaprMachineState *il_spapr_machine(Error **errp)
{
    Object *m = qdev_get_machine();
    SpaprMachineState *spapr =
        (SpaprMachineState *)object_dynamic_cast(m, TYPE_SPAPR_MACHINE);

    if (!spapr) {
        error_setg(errp, "x-iommulab-spapr commands need a pseries machine, "
                   "this is %s", object_get_typename(m));
    }
    return spapr;
}

static SpaprPhbState *il_spapr_find_phb(bool has_phb, uint32_t index,
                                        Error **errp)
{
    SpaprMachineState *spapr = il_spapr_machine(errp);
    SpaprPhbState *sphb;

    if (!spapr) {
        return NULL;
    }
    if (!has_phb) {
        index = 0;
    }
    QLIST_FOREACH(sphb, &spapr->phbs, list) {
        if (sphb->index == index) {
            return sphb;
        }
    }
    error_setg(errp, "no pseries PHB with index %" PRIu32, index);
    return NULL;
}

/* The PHB's TCE tables, enabled or not; NULL where there is none. */
static SpaprTceTable *il_spapr_table(SpaprPhbState *sphb, int i)
{
    if (!sphb->dma_liobn[i]) {
        return NULL;
    }
    return spapr_tce_find_by_liobn(sphb->dma_liobn[i]);
}

static unsigned il_spapr_num_tables(SpaprPhbState *sphb)
{
    unsigned i, n = 0;

    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        n += il_spapr_table(sphb, i) != NULL;
    }
    return n;
}

static uint64_t il_spapr_window_faults(uint32_t liobn)
{
    uint64_t n;

    qemu_mutex_lock(&ils.lock);
    n = (uintptr_t)g_hash_table_lookup(ils.window_faults,
                                       GUINT_TO_POINTER(liobn));
    qemu_mutex_unlock(&ils.lock);
    return n;
}

static void il_spapr_window_faults_reset(uint32_t liobn)
{
    qemu_mutex_lock(&ils.lock);
    g_hash_table_remove(ils.window_faults, GUINT_TO_POINTER(liobn));
    qemu_mutex_unlock(&ils.lock);
}

static IommulabSpaprWindow *il_spapr_window_info(SpaprTceTable *tcet)
{
    IommulabSpaprWindow *w = g_new0(IommulabSpaprWindow, 1);

    w->liobn = tcet->liobn;
    w->bus_offset = tcet->bus_offset;
    w->page_shift = tcet->page_shift;
    w->size = (uint64_t)tcet->nb_table << tcet->page_shift;
    w->entries = tcet->nb_table;
    w->entries_in_use = spapr_tce_count_in_use(tcet);
    w->table_bytes = tcet->bytes;
    w->levels = spapr_tce_table_levels(tcet);
    w->q_default = tcet->def_win;
    w->faults = il_spapr_window_faults(tcet->liobn);
    return w;
}

static IommulabSpaprWindowList *il_spapr_windows(SpaprPhbState *sphb)
{
    IommulabSpaprWindowList *head = NULL, **tail = &head;
    SpaprTceTable *tcet;
    int i;

    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet && tcet->nb_table) {
            QAPI_LIST_APPEND(tail, il_spapr_window_info(tcet));
        }
    }
    return head;
}

static bool il_spapr_refuses_create(SpaprPhbState *sphb)
{
    bool r;

    qemu_mutex_lock(&ils.lock);
    r = g_hash_table_contains(ils.refuse_create,
                              GUINT_TO_POINTER(sphb->index));
    qemu_mutex_unlock(&ils.lock);
    return r;
}

static uint8List *il_spapr_page_shift_list(uint64_t mask)
{
    uint8List *head = NULL, **tail = &head;
    int i;

    for (i = 0; i < 64; i++) {
        if (mask & (1ULL << i)) {
            QAPI_LIST_APPEND(tail, i);
        }
    }
    return head;
}

/*
 * What the host side may create (x-iommulab-spapr-window-create) and read
 * back: the control plane takes these from here, not from a copy.
 */
static IommulabHwSpaprHostWindows *il_spapr_host_windows(void)
{
    IommulabHwSpaprHostWindows *h = g_new0(IommulabHwSpaprHostWindows, 1);
    uint8List **tail = &h->page_shifts;
    int i;

    for (i = 0; i < ARRAY_SIZE(il_spapr_page_shifts); i++) {
        QAPI_LIST_APPEND(tail, il_spapr_page_shifts[i]);
    }
    h->max_tces = IL_SPAPR_HOST_MAX_TCES;
    h->read_tces_max = IL_SPAPR_READ_MAX;
    return h;
}

static IommulabSpaprDdwPolicy *il_spapr_policy(SpaprPhbState *sphb)
{
    IommulabSpaprDdwPolicy *p = g_new0(IommulabSpaprDdwPolicy, 1);

    p->ddw = sphb->ddw_enabled;
    p->windows = sphb->ddw_max_windows;
    p->page_shifts = il_spapr_page_shift_list(sphb->page_size_mask);
    p->max_tces = sphb->ddw_max_tces;
    p->table_memory_limit = sphb->tce_mem.limit;
    p->table_memory = sphb->tce_mem.used;
    p->dma64_offset = sphb->dma64_win_addr;
    p->default_window_size = sphb->dma_win_size;
    p->refuse_create = il_spapr_refuses_create(sphb);
    return p;
}

/* TCE faults */

static void il_spapr_free_queue(gpointer q)
{
    il_fault_queue_destroy(q);
    g_free(q);
}

/* The PHB's fault queue, created on first use (under ils.lock) */
static ILFaultQueue *il_spapr_queue(uint32_t phb, bool create)
{
    ILFaultQueue *q = g_hash_table_lookup(ils.phb_faults,
                                          GUINT_TO_POINTER(phb));

    if (!q && create) {
        q = g_new0(ILFaultQueue, 1);
        if (il_fault_queue_init(q, IL_SPAPR_FAULTS_MAX) != IL_OK) {
            g_free(q);
            return NULL;
        }
        g_hash_table_insert(ils.phb_faults, GUINT_TO_POINTER(phb), q);
    }
    return q;
}

static SpaprPhbState *il_spapr_phb_by_index(uint32_t index)
{
    SpaprMachineState *spapr = (SpaprMachineState *)
        object_dynamic_cast(qdev_get_machine(), TYPE_SPAPR_MACHINE);
    SpaprPhbState *sphb;

    if (spapr) {
        QLIST_FOREACH(sphb, &spapr->phbs, list) {
            if (sphb->index == index) {
                return sphb;
            }
        }
    }
    return NULL;
}

/* A PHB's TCE fault as x-iommulab-query-faults and the event show it */
static void il_spapr_fault_to_qapi(const ILFault *f, IommulabFault *qf)
{
    SpaprPhbState *sphb = il_spapr_phb_by_index(f->dev);

    iommulab_fault_to_qapi(f, qf);
    qf->iommu = sphb ? object_get_canonical_path(OBJECT(sphb)) :
                g_strdup_printf("PHB %" PRIu32, f->dev);
    qf->device = g_strdup(qf->iommu);
    qf->has_phb = true;
    qf->phb = f->dev;
}

static void il_spapr_fault_bh(void *opaque)
{
    ILSpaprEvent ev[IL_SPAPR_EVENTS_PENDING];
    uint32_t i, n;
    uint64_t lost;

    qemu_mutex_lock(&ils.lock);
    n = ils.npending;
    memcpy(ev, ils.pending, n * sizeof(ev[0]));
    ils.npending = 0;
    ils.bh_scheduled = false;
    lost = ils.lost;
    ils.lost = 0;
    qemu_mutex_unlock(&ils.lock);

    for (i = 0; i < n; i++) {
        IommulabFaultEvent e = { };

        il_spapr_fault_to_qapi(&ev[i].f, qapi_IommulabFaultEvent_base(&e));
        e.suppressed = ev[i].suppressed + (i ? 0 : lost);
        qapi_event_send_x_iommulab_fault(&e);
        g_free(e.iommu);
        g_free(e.device);
    }
}

/* Called from translation, in any thread, under RCU. */
static void il_spapr_tce_fault(void *opaque, SpaprTceTable *tcet, hwaddr addr,
                               IOMMUAccessFlags flag, uint64_t tce)
{
    SpaprPhbState *sphb = opaque;
    ILFault f = {
        .dev = sphb->index,
        .access = (flag & IOMMU_WO) ? IL_ACCESS_WRITE : IL_ACCESS_READ,
        .stage = IL_STAGE_TCE,
        .reason = (tce & IL_SPAPR_TCE_RW) ?
                  IL_REASON_PERMISSION : IL_REASON_NOT_PRESENT,
        .iova = tcet->bus_offset + addr,
        .page_shift = tcet->page_shift,
        .liobn = tcet->liobn,
        .tce = tce,
    };
    gpointer key = GUINT_TO_POINTER(tcet->liobn);
    ILFaultQueue *q;
    ILFaultEvent ev;
    uintptr_t count;

    trace_iommulab_spapr_tce_fault(f.dev, f.liobn, f.iova,
                                   f.access == IL_ACCESS_WRITE, tce);
    qemu_mutex_lock(&ils.lock);
    q = il_spapr_queue(sphb->index, false);
    if (!q) {
        /* hooked tables always have one (il_spapr_hook_tables()) */
        qemu_mutex_unlock(&ils.lock);
        return;
    }
    il_fault_report(q, &f, qemu_clock_get_ms(QEMU_CLOCK_REALTIME), &ev);
    if (ev.recorded) {
        /* not the rest of the same refused access (same page, same TCE) */
        count = (uintptr_t)g_hash_table_lookup(ils.window_faults, key);
        g_hash_table_insert(ils.window_faults, key, (gpointer)(count + 1));
    }
    if (ev.emit && ils.npending < IL_SPAPR_EVENTS_PENDING) {
        ils.pending[ils.npending].f = f;
        ils.pending[ils.npending].suppressed = ev.suppressed;
        ils.npending++;
        if (!ils.bh_scheduled) {
            ils.bh_scheduled = true;
            aio_bh_schedule_oneshot(qemu_get_aio_context(), il_spapr_fault_bh,
                                    NULL);
        }
    } else if (ev.emit) {
        ils.lost += ev.suppressed + 1;
    }
    qemu_mutex_unlock(&ils.lock);
}

bool iommulab_spapr_is_phb(Object *obj)
{
    return object_dynamic_cast(obj, TYPE_SPAPR_PCI_HOST_BRIDGE);
}

static void il_spapr_collect_phb(SpaprPhbState *sphb, bool clear,
                                 IommulabFaultList ***tail,
                                 uint64_t *dropped)
{
    ILFaultQueue *q;
    uint32_t i;

    qemu_mutex_lock(&ils.lock);
    q = il_spapr_queue(sphb->index, false);
    for (i = 0; q && i < il_fault_count(q); i++) {
        IommulabFault *qf = g_new0(IommulabFault, 1);

        il_spapr_fault_to_qapi(il_fault_get(q, i), qf);
        QAPI_LIST_APPEND(*tail, qf);
    }
    if (q) {
        *dropped += il_fault_dropped(q);
        if (clear) {
            il_fault_clear(q);
        }
    }
    qemu_mutex_unlock(&ils.lock);
}

void iommulab_spapr_collect_faults(Object *phb, bool clear,
                                   IommulabFaultList ***tail,
                                   uint64_t *dropped)
{
    SpaprMachineState *spapr = (SpaprMachineState *)
        object_dynamic_cast(qdev_get_machine(), TYPE_SPAPR_MACHINE);
    SpaprPhbState *sphb;

    if (phb) {
        il_spapr_collect_phb(SPAPR_PCI_HOST_BRIDGE(phb), clear, tail,
                             dropped);
        return;
    }
    if (spapr) {
        QLIST_FOREACH(sphb, &spapr->phbs, list) {
            il_spapr_collect_phb(sphb, clear, tail, dropped);
        }
    }
}

static void il_spapr_hook_tables(SpaprPhbState *sphb)
{
    SpaprTceTable *tcet;
    bool have_queue;
    int i;

    qemu_mutex_lock(&ils.lock);
    have_queue = il_spapr_queue(sphb->index, true);
    qemu_mutex_unlock(&ils.lock);
    if (!have_queue) {
        return;
    }
    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet) {
            tcet->fault_fn = il_spapr_tce_fault;
            tcet->fault_opaque = sphb;
        }
    }
}

static void il_spapr_hook_all_tables(SpaprMachineState *spapr)
{
    SpaprPhbState *sphb;

    QLIST_FOREACH(sphb, &spapr->phbs, list) {
        il_spapr_hook_tables(sphb);
    }
}

/* QMP backend */

IommulabSpaprPhbList *qmp_x_iommulab_spapr_query_phbs(Error **errp)
{
    SpaprMachineState *spapr = il_spapr_machine(errp);
    IommulabSpaprPhbList *head = NULL, **tail = &head;
    SpaprPhbState *sphb;
    SpaprTceTable *tcet;
    int i;

    if (!spapr) {
        return NULL;
    }
    QLIST_FOREACH(sphb, &spapr->phbs, list) {
        IommulabSpaprPhb *p = g_new0(IommulabSpaprPhb, 1);
        uint32List **ltail = &p->liobns;

        il_spapr_hook_tables(sphb);
        p->phb = sphb->index;
        p->buid = sphb->buid;
        p->path = object_get_canonical_path(OBJECT(sphb));
        for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
            tcet = il_spapr_table(sphb, i);
            if (tcet) {
                QAPI_LIST_APPEND(ltail, tcet->liobn);
            }
        }
        p->policy = il_spapr_policy(sphb);
        p->windows = il_spapr_windows(sphb);
        p->host_windows = il_spapr_host_windows();
        QAPI_LIST_APPEND(tail, p);
    }
    return head;
}

static bool il_spapr_valid_page_shift(uint64_t shift)
{
    int i;

    for (i = 0; i < ARRAY_SIZE(il_spapr_page_shifts); i++) {
        if (il_spapr_page_shifts[i] == shift) {
            return true;
        }
    }
    return false;
}

IommulabSpaprDdwPolicy *qmp_x_iommulab_spapr_set_ddw_policy(
    IommulabSpaprDdwPolicyArgs *arg, Error **errp)
{
    SpaprPhbState *sphb = il_spapr_find_phb(arg->has_phb, arg->phb, errp);
    uint64_t mask = 0;
    uint8List *l;

    if (!sphb) {
        return NULL;
    }
    /* Check everything, then change */
    if (arg->has_windows &&
        (arg->windows < 1 || arg->windows > il_spapr_num_tables(sphb))) {
        error_setg(errp, "windows must be 1..%u for PHB %" PRIu32
                   " (it has %u TCE tables)", il_spapr_num_tables(sphb),
                   sphb->index, il_spapr_num_tables(sphb));
        return NULL;
    }
    if (arg->has_page_shifts) {
        if (!arg->page_shifts) {
            error_setg(errp, "page-shifts must not be empty");
            return NULL;
        }
        for (l = arg->page_shifts; l; l = l->next) {
            if (!il_spapr_valid_page_shift(l->value)) {
                error_setg(errp, "page-shifts: %u is not one of 12, 16, 21, "
                           "24, 28, 34", l->value);
                return NULL;
            }
            if (mask & (1ULL << l->value)) {
                error_setg(errp, "page-shifts: %u given twice", l->value);
                return NULL;
            }
            mask |= 1ULL << l->value;
        }
    }
    if (arg->has_max_tces &&
        (arg->max_tces < 1 || arg->max_tces > IL_SPAPR_POLICY_MAX_TCES)) {
        error_setg(errp, "max-tces must be 1..2^37");
        return NULL;
    }
    if (arg->has_dma64_offset && arg->dma64_offset != (1ULL << 32) &&
        arg->dma64_offset != (1ULL << 59)) {
        error_setg(errp, "dma64-offset must be 4294967296 (4 GiB) or "
                   "576460752303423488 (1<<59)");
        return NULL;
    }
    if (arg->has_default_window_size &&
        (!arg->default_window_size ||
         arg->default_window_size % SPAPR_TCE_PAGE_SIZE ||
         arg->default_window_size > (1ULL << 31))) {
        error_setg(errp, "default-window-size must be a non-zero multiple of "
                   "4 KiB, at most 2 GiB");
        return NULL;
    }

    if (arg->has_table_memory_limit &&
        (arg->table_memory_limit < IL_SPAPR_MIN_TABLE_MEMORY ||
         arg->table_memory_limit < sphb->tce_mem.used)) {
        error_setg(errp, "table-memory-limit must be at least %u and at "
                   "least what the TCE tables of PHB %" PRIu32 " hold now "
                   "(%" PRIu64 " bytes)", IL_SPAPR_MIN_TABLE_MEMORY,
                   sphb->index, sphb->tce_mem.used);
        return NULL;
    }

    if (arg->has_ddw) {
        sphb->ddw_enabled = arg->ddw;
    }
    if (arg->has_windows) {
        sphb->ddw_max_windows = arg->windows;
    }
    if (arg->has_page_shifts) {
        sphb->page_size_mask = mask;
    }
    if (arg->has_max_tces) {
        sphb->ddw_max_tces = arg->max_tces;
    }
    if (arg->has_dma64_offset) {
        sphb->dma64_win_addr = arg->dma64_offset;
    }
    if (arg->has_default_window_size) {
        sphb->dma_win_size = arg->default_window_size;
    }
    if (arg->has_table_memory_limit) {
        sphb->tce_mem.limit = arg->table_memory_limit;
    }
    if (arg->has_refuse_create) {
        qemu_mutex_lock(&ils.lock);
        if (arg->refuse_create) {
            g_hash_table_add(ils.refuse_create,
                             GUINT_TO_POINTER(sphb->index));
        } else {
            g_hash_table_remove(ils.refuse_create,
                                GUINT_TO_POINTER(sphb->index));
        }
        qemu_mutex_unlock(&ils.lock);
    }
    trace_iommulab_spapr_policy(sphb->index, sphb->ddw_enabled,
                                sphb->ddw_max_windows, sphb->page_size_mask,
                                sphb->ddw_max_tces, sphb->dma64_win_addr,
                                sphb->dma_win_size);
    return il_spapr_policy(sphb);
}

static bool il_spapr_overlaps(SpaprPhbState *sphb, uint64_t start,
                              uint64_t size)
{
    SpaprTceTable *tcet;
    uint64_t s, e;
    int i;

    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet && tcet->nb_table) {
            s = tcet->bus_offset;
            e = s + ((uint64_t)tcet->nb_table << tcet->page_shift);
            if (start < e && s < start + size) {
                return true;
            }
        }
    }
    return false;
}

IommulabSpaprWindow *qmp_x_iommulab_spapr_window_create(
    bool has_phb, uint32_t phb, uint8_t page_shift, uint64_t size,
    bool has_bus_offset, uint64_t bus_offset, Error **errp)
{
    SpaprPhbState *sphb = il_spapr_find_phb(has_phb, phb, errp);
    SpaprTceTable *tcet, *free_tcet = NULL;
    unsigned active = 0;
    uint64_t entries;
    int i;

    if (!sphb) {
        return NULL;
    }
    if (!il_spapr_valid_page_shift(page_shift)) {
        error_setg(errp, "page-shift %u is not one of 12, 16, 21, 24, 28, 34",
                   page_shift);
        return NULL;
    }
    if (!size || size & ((1ULL << page_shift) - 1)) {
        error_setg(errp, "size 0x%" PRIx64 " is not a non-zero multiple of "
                   "the page size 0x%llx", size, 1ULL << page_shift);
        return NULL;
    }
    entries = size >> page_shift;
    if (entries > IL_SPAPR_HOST_MAX_TCES) {
        error_setg(errp, "size 0x%" PRIx64 " needs %" PRIu64 " TCEs, more "
                   "than %u", size, entries, IL_SPAPR_HOST_MAX_TCES);
        return NULL;
    }
    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet && tcet->nb_table) {
            active++;
        } else if (tcet && !free_tcet) {
            free_tcet = tcet;
        }
    }
    if (!free_tcet) {
        error_setg(errp, "PHB %" PRIu32 " has no free LIOBN (%u windows "
                   "exist)", sphb->index, active);
        return NULL;
    }
    if (!has_bus_offset) {
        bus_offset = active ? sphb->dma64_win_addr : sphb->dma_win_addr;
    }
    if (bus_offset & ((1ULL << page_shift) - 1)) {
        error_setg(errp, "bus-offset 0x%" PRIx64 " is not aligned to the "
                   "page size", bus_offset);
        return NULL;
    }
    if (bus_offset + size < bus_offset) {
        error_setg(errp, "bus-offset + size exceeds 2^64");
        return NULL;
    }
    if (il_spapr_overlaps(sphb, bus_offset, size)) {
        error_setg(errp, "window [0x%" PRIx64 ", 0x%" PRIx64 ") overlaps an "
                   "existing window", bus_offset, bus_offset + size);
        return NULL;
    }

    free_tcet->skipping_replay = true;
    spapr_tce_table_enable(free_tcet, page_shift, bus_offset, entries);
    free_tcet->skipping_replay = false;
    if (!free_tcet->nb_table) {
        error_setg(errp, "a table of %" PRIu64 " TCEs does not fit in the "
                   "table-memory-limit of PHB %" PRIu32 " (%" PRIu64
                   " bytes, %" PRIu64 " in use)", entries, sphb->index,
                   sphb->tce_mem.limit, sphb->tce_mem.used);
        return NULL;
    }
    free_tcet->def_win = false;
    il_spapr_hook_tables(sphb);
    il_spapr_window_faults_reset(free_tcet->liobn);
    trace_iommulab_spapr_host_create(sphb->index, free_tcet->liobn,
                                     bus_offset, page_shift, size);
    return il_spapr_window_info(free_tcet);
}

static SpaprTceTable *il_spapr_phb_window(SpaprPhbState *sphb, uint32_t liobn,
                                          Error **errp)
{
    SpaprTceTable *tcet;
    int i;

    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet && tcet->liobn == liobn) {
            if (!tcet->nb_table) {
                error_setg(errp, "window 0x%" PRIx32 " of PHB %" PRIu32
                           " is not enabled", liobn, sphb->index);
                return NULL;
            }
            return tcet;
        }
    }
    error_setg(errp, "PHB %" PRIu32 " has no window with LIOBN 0x%" PRIx32,
               sphb->index, liobn);
    return NULL;
}

void qmp_x_iommulab_spapr_window_remove(bool has_phb, uint32_t phb,
                                        uint32_t liobn, Error **errp)
{
    SpaprPhbState *sphb = il_spapr_find_phb(has_phb, phb, errp);
    SpaprTceTable *tcet;

    if (!sphb) {
        return;
    }
    tcet = il_spapr_phb_window(sphb, liobn, errp);
    if (!tcet) {
        return;
    }
    spapr_tce_table_disable(tcet);
    trace_iommulab_spapr_host_remove(sphb->index, liobn);
}

IommulabSpaprWindowList *qmp_x_iommulab_spapr_window_reset(bool has_phb,
                                                           uint32_t phb,
                                                           Error **errp)
{
    SpaprPhbState *sphb = il_spapr_find_phb(has_phb, phb, errp);

    if (!sphb) {
        return NULL;
    }
    spapr_phb_dma_reset(sphb);
    il_spapr_hook_tables(sphb);
    trace_iommulab_spapr_host_reset(sphb->index);
    return il_spapr_windows(sphb);
}

IommulabSpaprTces *qmp_x_iommulab_spapr_read_tces(uint32_t liobn,
                                                  bool has_start,
                                                  uint32_t start,
                                                  bool has_count,
                                                  uint32_t count,
                                                  Error **errp)
{
    SpaprTceTable *tcet;
    IommulabSpaprTces *r;
    uint64_t *buf;
    uint32_t i;

    if (!il_spapr_machine(errp)) {
        return NULL;
    }
    tcet = spapr_tce_find_by_liobn(liobn);
    if (!tcet) {
        error_setg(errp, "no TCE table with LIOBN 0x%" PRIx32, liobn);
        return NULL;
    }
    if (!tcet->nb_table) {
        error_setg(errp, "window 0x%" PRIx32 " is not enabled", liobn);
        return NULL;
    }
    if (!has_start) {
        start = 0;
    }
    if (start >= tcet->nb_table) {
        error_setg(errp, "start %" PRIu32 " is outside the window (%" PRIu32
                   " TCEs)", start, tcet->nb_table);
        return NULL;
    }
    if (!has_count) {
        count = MIN(tcet->nb_table - start, IL_SPAPR_READ_MAX);
    }
    if (count < 1 || count > IL_SPAPR_READ_MAX) {
        error_setg(errp, "count must be 1..%u", IL_SPAPR_READ_MAX);
        return NULL;
    }
    if (count > tcet->nb_table - start) {
        error_setg(errp, "TCEs %" PRIu32 "..%" PRIu64 " are outside the "
                   "window (%" PRIu32 " TCEs)", start,
                   (uint64_t)start + count - 1, tcet->nb_table);
        return NULL;
    }

    buf = g_new(uint64_t, count);
    for (i = 0; i < count; i++) {
        buf[i] = cpu_to_be64(spapr_tce_get(tcet, (uint64_t)start + i));
    }
    r = g_new0(IommulabSpaprTces, 1);
    r->liobn = liobn;
    r->start = start;
    r->count = count;
    r->data = g_base64_encode((const guchar *)buf, count * sizeof(buf[0]));
    g_free(buf);
    return r;
}


/* Hardware facts (x-iommulab-query-hw-info) */

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
    qemu_mutex_lock(&ils.lock);
    q = il_spapr_queue(SPAPR_PCI_HOST_BRIDGE(phb)->index, true);
    info->fault_queue_size = q ? il_fault_capacity(q) : 0;
    qemu_mutex_unlock(&ils.lock);
    info->spapr_pe = iommulab_spapr_pe_info(phb);
    return info;
}


/* RTAS DDW hooks */

static int il_spapr_ddw_create(void *opaque, SpaprPhbState *sphb,
                               uint32_t page_shift, uint32_t window_shift)
{
    if (il_spapr_refuses_create(sphb)) {
        trace_iommulab_spapr_refuse(sphb->index, page_shift, window_shift);
        return RTAS_OUT_HW_ERROR;
    }
    return RTAS_OUT_SUCCESS;
}

static void il_spapr_ddw_changed(void *opaque, SpaprPhbState *sphb,
                                 SpaprDdwChange change, uint32_t liobn)
{
    IommulabSpaprWindowAction action;
    IommulabSpaprWindow *w = NULL;
    SpaprTceTable *tcet;

    il_spapr_hook_tables(sphb);
    switch (change) {
    case SPAPR_DDW_CREATE:
        action = IOMMULAB_SPAPR_WINDOW_ACTION_CREATE;
        il_spapr_window_faults_reset(liobn);
        break;
    case SPAPR_DDW_REMOVE:
        action = IOMMULAB_SPAPR_WINDOW_ACTION_REMOVE;
        break;
    default:
        action = IOMMULAB_SPAPR_WINDOW_ACTION_RESET;
        liobn = sphb->dma_liobn[0];
        il_spapr_window_faults_reset(liobn);
        break;
    }
    tcet = spapr_tce_find_by_liobn(liobn);
    if (change != SPAPR_DDW_REMOVE && tcet && tcet->nb_table) {
        w = il_spapr_window_info(tcet);
    }
    trace_iommulab_spapr_guest_window(sphb->index, change, liobn);
    qapi_event_send_x_iommulab_spapr_window(sphb->index, action, liobn, w);
    qapi_free_IommulabSpaprWindow(w);
}

static const SpaprDdwOps il_spapr_ddw_ops = {
    .create = il_spapr_ddw_create,
    .changed = il_spapr_ddw_changed,
};

static void il_spapr_machine_done(Notifier *n, void *data)
{
    SpaprMachineState *spapr = (SpaprMachineState *)
        object_dynamic_cast(qdev_get_machine(), TYPE_SPAPR_MACHINE);

    if (spapr) {
        il_spapr_hook_all_tables(spapr);
    }
}

static Notifier il_spapr_machine_done_notifier = {
    .notify = il_spapr_machine_done,
};

static void iommulab_spapr_register(void)
{
    qemu_mutex_init(&ils.lock);
    ils.refuse_create = g_hash_table_new(NULL, NULL);
    ils.window_faults = g_hash_table_new(NULL, NULL);
    ils.phb_faults = g_hash_table_new_full(NULL, NULL, NULL,
                                           il_spapr_free_queue);
    spapr_ddw_set_ops(&il_spapr_ddw_ops, NULL);
    qemu_add_machine_init_done_notifier(&il_spapr_machine_done_notifier);
}

type_init(iommulab_spapr_register)

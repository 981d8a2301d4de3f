/*
 * iommulab: pseries backend of the x-iommulab-spapr-* commands.
 *
 * Split along its concepts (iommulab-spapr-internal.h):
 *   iommulab-spapr.c          this file: the lab's pseries state, PHB and
 *                             window lookups, x-iommulab-spapr-query-phbs,
 *                             the RTAS DDW hooks (create veto, window
 *                             events), registration
 *   iommulab-spapr-windows.c  DDW policy, host-side windows, TCE reads
 *   iommulab-spapr-faults.c   TCE faults (the core's fault queue per PHB)
 *   iommulab-spapr-hwinfo.c   the PE facts of x-iommulab-query-hw-info
 *   iommulab-spapr-pe.c       window owners (host, guest), BLOCKED
 *   iommulab-spapr-put.c      host-side TCE writes in bulk
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
#include "hw/boards.h"
#include "system/system.h"
#include "iommulab-spapr-internal.h"
#include "trace.h"

ILSpaprState il_spapr_state;

SpaprMachineState *il_spapr_machine(Error **errp)
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

SpaprPhbState *il_spapr_phb_by_index(uint32_t index)
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

SpaprPhbState *il_spapr_find_phb(bool has_phb, uint32_t index,
                                 Error **errp)
{
    SpaprPhbState *sphb;

    if (!il_spapr_machine(errp)) {
        return NULL;
    }
    if (!has_phb) {
        index = 0;
    }
    sphb = il_spapr_phb_by_index(index);
    if (!sphb) {
        error_setg(errp, "no pseries PHB with index %" PRIu32, index);
    }
    return sphb;
}

/* The PHB's TCE tables, enabled or not; NULL where there is none. */
SpaprTceTable *il_spapr_table(SpaprPhbState *sphb, int i)
{
    if (!sphb->dma_liobn[i]) {
        return NULL;
    }
    return spapr_tce_find_by_liobn(sphb->dma_liobn[i]);
}

unsigned il_spapr_num_tables(SpaprPhbState *sphb)
{
    unsigned i, n = 0;

    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        n += il_spapr_table(sphb, i) != NULL;
    }
    return n;
}

IommulabSpaprWindow *il_spapr_window_info(SpaprTceTable *tcet)
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
    w->owner = il_spapr_window_owner(tcet->liobn);
    return w;
}

IommulabSpaprWindowList *il_spapr_windows(SpaprPhbState *sphb)
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

bool il_spapr_refuses_create(SpaprPhbState *sphb)
{
    bool r;

    qemu_mutex_lock(&il_spapr_state.lock);
    r = g_hash_table_contains(il_spapr_state.refuse_create,
                              GUINT_TO_POINTER(sphb->index));
    qemu_mutex_unlock(&il_spapr_state.lock);
    return r;
}

uint8List *il_spapr_page_shift_list(uint64_t mask)
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

IommulabSpaprDdwPolicy *il_spapr_policy(SpaprPhbState *sphb)
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
        p->blocked = il_spapr_blocked(sphb);
        QAPI_LIST_APPEND(tail, p);
    }
    return head;
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
        il_spapr_set_window_owner(liobn, IOMMULAB_SPAPR_WINDOW_OWNER_GUEST);
        break;
    case SPAPR_DDW_REMOVE:
        action = IOMMULAB_SPAPR_WINDOW_ACTION_REMOVE;
        il_spapr_set_window_owner(liobn, IOMMULAB_SPAPR_WINDOW_OWNER_HOST);
        break;
    default:
        action = IOMMULAB_SPAPR_WINDOW_ACTION_RESET;
        liobn = sphb->dma_liobn[0];
        il_spapr_window_faults_reset(liobn);
        /* the default window the guest's reset made is the guest's */
        il_spapr_set_phb_owner(sphb, IOMMULAB_SPAPR_WINDOW_OWNER_GUEST);
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
        il_spapr_pe_machine_done();
    }
}

static Notifier il_spapr_machine_done_notifier = {
    .notify = il_spapr_machine_done,
};

static void iommulab_spapr_register(void)
{
    qemu_mutex_init(&il_spapr_state.lock);
    il_spapr_state.refuse_create = g_hash_table_new(NULL, NULL);
    il_spapr_pe_init();
    il_spapr_state.window_faults = g_hash_table_new(NULL, NULL);
    il_spapr_state.phb_faults = g_hash_table_new_full(NULL, NULL, NULL,
                                           il_spapr_free_queue);
    spapr_ddw_set_ops(&il_spapr_ddw_ops, NULL);
    qemu_add_machine_init_done_notifier(&il_spapr_machine_done_notifier);
}

type_init(iommulab_spapr_register)

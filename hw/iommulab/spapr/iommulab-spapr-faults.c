/*
 * iommulab: TCE faults of a pseries PHB.  The tables' fault callback
 * records them (any thread) in the PHB's fault queue, the core's
 * (il-fault.h: coalescing, bounded ring, rate limit), read by
 * x-iommulab-query-faults with the vIOMMUs' ones; a bottom half sends
 * their X_IOMMULAB_FAULT events.  Faults are counted per window too.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/qapi-events-iommulab.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "hw/boards.h"
#include "iommulab-spapr-internal.h"
#include "trace.h"

/* Capacity of a PHB's TCE fault queue */
#define IL_SPAPR_FAULTS_MAX     256
/* A TCE's permission bits: 0 read, 1 write */
#define IL_SPAPR_TCE_RW         3ULL

uint64_t il_spapr_window_faults(uint32_t liobn)
{
    uint64_t n;

    qemu_mutex_lock(&il_spapr_state.lock);
    n = (uintptr_t)g_hash_table_lookup(il_spapr_state.window_faults,
                                       GUINT_TO_POINTER(liobn));
    qemu_mutex_unlock(&il_spapr_state.lock);
    return n;
}

void il_spapr_window_faults_reset(uint32_t liobn)
{
    qemu_mutex_lock(&il_spapr_state.lock);
    g_hash_table_remove(il_spapr_state.window_faults, GUINT_TO_POINTER(liobn));
    qemu_mutex_unlock(&il_spapr_state.lock);
}

void il_spapr_free_queue(gpointer q)
{
    il_fault_queue_destroy(q);
    g_free(q);
}

/* The PHB's fault queue, created on first use (under il_spapr_state.lock) */
ILFaultQueue *il_spapr_queue(uint32_t phb, bool create)
{
    ILFaultQueue *q = g_hash_table_lookup(il_spapr_state.phb_faults,
                                          GUINT_TO_POINTER(phb));

    if (!q && create) {
        q = g_new0(ILFaultQueue, 1);
        if (il_fault_queue_init(q, IL_SPAPR_FAULTS_MAX) != IL_OK) {
            g_free(q);
            return NULL;
        }
        g_hash_table_insert(il_spapr_state.phb_faults, GUINT_TO_POINTER(phb),
                            q);
    }
    return q;
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

    qemu_mutex_lock(&il_spapr_state.lock);
    n = il_spapr_state.npending;
    memcpy(ev, il_spapr_state.pending, n * sizeof(ev[0]));
    il_spapr_state.npending = 0;
    il_spapr_state.bh_scheduled = false;
    lost = il_spapr_state.lost;
    il_spapr_state.lost = 0;
    qemu_mutex_unlock(&il_spapr_state.lock);

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
        .reason = qatomic_read(&tcet->blocked) ? IL_REASON_BLOCKED :
                  (tce & IL_SPAPR_TCE_RW) ?
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
    qemu_mutex_lock(&il_spapr_state.lock);
    q = il_spapr_queue(sphb->index, false);
    if (!q) {
        /* hooked tables always have one (il_spapr_hook_tables()) */
        qemu_mutex_unlock(&il_spapr_state.lock);
        return;
    }
    il_fault_report(q, &f, qemu_clock_get_ms(QEMU_CLOCK_REALTIME), &ev);
    if (ev.recorded) {
        /* not the rest of the same refused access (same page, same TCE) */
        count = (uintptr_t)g_hash_table_lookup(il_spapr_state.window_faults,
                                               key);
        g_hash_table_insert(il_spapr_state.window_faults, key,
                            (gpointer)(count + 1));
    }
    if (ev.emit && il_spapr_state.npending < IL_SPAPR_EVENTS_PENDING) {
        il_spapr_state.pending[il_spapr_state.npending].f = f;
        il_spapr_state.pending[il_spapr_state.npending].suppressed =
            ev.suppressed;
        il_spapr_state.npending++;
        if (!il_spapr_state.bh_scheduled) {
            il_spapr_state.bh_scheduled = true;
            aio_bh_schedule_oneshot(qemu_get_aio_context(), il_spapr_fault_bh,
                                    NULL);
        }
    } else if (ev.emit) {
        il_spapr_state.lost += ev.suppressed + 1;
    }
    qemu_mutex_unlock(&il_spapr_state.lock);
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

    qemu_mutex_lock(&il_spapr_state.lock);
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
    qemu_mutex_unlock(&il_spapr_state.lock);
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

void il_spapr_hook_tables(SpaprPhbState *sphb)
{
    SpaprTceTable *tcet;
    bool have_queue;
    int i;

    qemu_mutex_lock(&il_spapr_state.lock);
    have_queue = il_spapr_queue(sphb->index, true);
    qemu_mutex_unlock(&il_spapr_state.lock);
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

void il_spapr_hook_all_tables(SpaprMachineState *spapr)
{
    SpaprPhbState *sphb;

    QLIST_FOREACH(sphb, &spapr->phbs, list) {
        il_spapr_hook_tables(sphb);
    }
}

/*
 * iommulab core: the fault queue shared by every iommulab device.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <string.h>
#include "il-fault.h"
#include "il-alloc.h"

ILError il_fault_queue_init(ILFaultQueue *q, uint32_t cap)
{
    memset(q, 0, sizeof(*q));
    q->ring = il_zalloc_array(cap ? cap : 1, sizeof(*q->ring));
    if (!q->ring) {
        return IL_ERR_NOMEM;
    }
    q->cap = cap ? cap : 1;
    q->max_events = IL_FAULT_EVENTS_PER_WINDOW;
    q->window_ms = IL_FAULT_WINDOW_MS;
    return IL_OK;
}

void il_fault_queue_destroy(ILFaultQueue *q)
{
    il_free(q->ring);
    memset(q, 0, sizeof(*q));
}

void il_fault_set_rate(ILFaultQueue *q, uint32_t max_events,
                       uint32_t window_ms)
{
    q->max_events = max_events;
    q->window_ms = window_ms ? window_ms : 1;
    q->window_open = false;
}

static bool fault_repeats(const ILFault *a, const ILFault *b)
{
    unsigned shift = b->page_shift ? b->page_shift : IL_PAGE_SHIFT;

    return a->dev == b->dev && a->has_domain == b->has_domain &&
           (!a->has_domain || a->domain == b->domain) &&
           a->access == b->access && a->stage == b->stage &&
           a->reason == b->reason && a->liobn == b->liobn &&
           a->tce == b->tce && a->page_shift == b->page_shift &&
           (shift >= 64 || (a->iova >> shift) == (b->iova >> shift));
}

bool il_fault_record(ILFaultQueue *q, const ILFault *f)
{
    if (q->has_last && fault_repeats(&q->last, f)) {
        return false;
    }
    q->last = *f;
    q->has_last = true;
    q->recorded++;
    if (q->len == q->cap) {
        q->dropped++;
        q->dropped_total++;
        return true;
    }
    q->ring[(q->head + q->len) % q->cap] = *f;
    q->len++;
    return true;
}

bool il_fault_event(ILFaultQueue *q, int64_t now_ms, uint64_t *suppressed)
{
    /* A clock going backwards also starts a new window. */
    if (!q->window_open || now_ms < q->window_start ||
        now_ms - q->window_start >= q->window_ms) {
        q->window_open = true;
        q->window_start = now_ms;
        q->in_window = 0;
    }
    if (q->in_window >= q->max_events) {
        q->pending++;
        q->suppressed++;
        *suppressed = 0;
        return false;
    }
    q->in_window++;
    *suppressed = q->pending;
    q->pending = 0;
    return true;
}

void il_fault_report(ILFaultQueue *q, const ILFault *f, int64_t now_ms,
                     ILFaultEvent *ev)
{
    ev->suppressed = 0;
    ev->emit = false;
    ev->recorded = il_fault_record(q, f);
    if (ev->recorded) {
        ev->emit = il_fault_event(q, now_ms, &ev->suppressed);
    }
}

void il_fault_clear(ILFaultQueue *q)
{
    q->head = 0;
    q->len = 0;
    q->dropped = 0;
    q->has_last = false;
}

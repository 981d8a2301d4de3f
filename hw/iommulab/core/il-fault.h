/*
 * iommulab core: the fault queue shared by every iommulab device.
 *
 * One refused DMA becomes one record, whichever translator refused it (the
 * engine's stage 1 / stage 2, a requester blocked by its device mode, an
 * sPAPR TCE window): a bounded ring (oldest first, overflow counted as
 * dropped), coalescing of repeats, and a rate limiter for the events a
 * device sends about them.  Time is passed in by the caller (milliseconds
 * of any monotonic clock), so this stays free of QEMU and unit-tested.
 * Not thread-safe: the caller holds its lock around every call.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_FAULT_H
#define IL_FAULT_H

#include "il-types.h"

typedef struct ILFault {
    uint32_t dev;           /* source: the caller's device id */
    uint32_t domain;        /* valid if has_domain */
    bool has_domain;
    uint8_t access;         /* ILAccess */
    uint8_t stage;          /* ILFaultStage */
    uint8_t reason;         /* ILFaultReason */
    uint64_t iova;          /* input address (sPAPR: the bus address) */
    /*
     * Repeats are coalesced per 1 << page_shift bytes of iova (0: 4 KiB);
     * a TCE window passes its page shift.
     */
    uint8_t page_shift;
    /* IL_STAGE_TCE: the window (LIOBN) and the TCE that refused it. */
    uint32_t liobn;
    uint64_t tce;
} ILFault;

/* What il_fault_report() tells the caller to do. */
typedef struct ILFaultEvent {
    bool recorded;          /* a new fault (queued, or dropped if full) */
    bool emit;              /* send an event for it now */
    uint64_t suppressed;    /* with emit: events suppressed since the last */
} ILFaultEvent;

#define IL_FAULT_EVENTS_PER_WINDOW 10
#define IL_FAULT_WINDOW_MS 1000

typedef struct ILFaultQueue {
    ILFault *ring;
    uint32_t cap;
    uint32_t head;
    uint32_t len;
    uint64_t dropped;       /* since the last clear */
    uint64_t recorded;      /* new faults, ever (not reset by clear) */
    uint64_t dropped_total; /* ever */
    ILFault last;           /* for coalescing repeats */
    bool has_last;
    /* Rate limit: at most max_events per window_ms. */
    uint32_t max_events;
    uint32_t window_ms;
    int64_t window_start;
    uint32_t in_window;
    bool window_open;
    uint64_t pending;       /* suppressed since the last event sent */
    uint64_t suppressed;    /* suppressed, ever */
} ILFaultQueue;

/*
 * A queue of cap records (cap > 0), rate limit 10 events a second.
 * IL_ERR_NOMEM if the ring cannot be allocated (q is then zeroed).
 */
ILError il_fault_queue_init(ILFaultQueue *q, uint32_t cap);
void il_fault_queue_destroy(ILFaultQueue *q);
/* At most max_events (0: none) per window_ms (> 0) milliseconds. */
void il_fault_set_rate(ILFaultQueue *q, uint32_t max_events,
                       uint32_t window_ms);

/*
 * Record a fault.  A repeat of the last recorded one (same dev, domain,
 * access, stage, reason, liobn, tce and iova page) is coalesced: not
 * queued or counted again (QEMU retries a refused DMA in small pieces).
 * Returns true if it was new: queued, or counted as dropped when the ring
 * is full.  Does not touch the rate limiter.
 */
bool il_fault_record(ILFaultQueue *q, const ILFault *f);

/*
 * The rate limiter, for a fault il_fault_record() found new: true if an
 * event is to be sent now, with *suppressed the events suppressed since
 * the last one sent (then reset); false if this one is suppressed.
 */
bool il_fault_event(ILFaultQueue *q, int64_t now_ms, uint64_t *suppressed);

/* Both: record, and if new, ask the rate limiter. */
void il_fault_report(ILFaultQueue *q, const ILFault *f, int64_t now_ms,
                     ILFaultEvent *ev);

/* The queue, oldest first. */
static inline uint32_t il_fault_count(const ILFaultQueue *q)
{
    return q->len;
}

static inline const ILFault *il_fault_get(const ILFaultQueue *q, uint32_t i)
{
    return i < q->len ? &q->ring[(q->head + i) % q->cap] : NULL;
}

static inline uint32_t il_fault_capacity(const ILFaultQueue *q)
{
    return q->cap;
}

/* Faults dropped because the ring was full, since the last clear. */
static inline uint64_t il_fault_dropped(const ILFaultQueue *q)
{
    return q->dropped;
}

/* Events suppressed by the rate limiter, ever. */
static inline uint64_t il_fault_suppressed(const ILFaultQueue *q)
{
    return q->suppressed;
}

/*
 * Empty the ring, reset dropped, forget the last fault (the next one is
 * new).  The rate limiter and the totals are kept.
 */
void il_fault_clear(ILFaultQueue *q);

#endif

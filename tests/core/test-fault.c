/*
 * Unit test: the fault queue (il-fault.h): coalescing of repeats, the
 * bounded ring and its dropped count, the event rate limit, clear.
 */
#include "check.h"
#include "il-fault.h"
#include "il-alloc.h"

static ILFault fault(uint32_t dev, uint64_t iova, unsigned access)
{
    ILFault f = {
        .dev = dev, .has_domain = true, .domain = 5, .access = access,
        .stage = IL_STAGE_2, .reason = IL_REASON_NOT_PRESENT, .iova = iova,
    };

    return f;
}

static void test_coalesce(void)
{
    ILFaultQueue q;
    ILFault f = fault(1, 0x7000, IL_ACCESS_READ), g;

    CHECK_EQ(il_fault_queue_init(&q, 8), IL_OK);
    CHECK(il_fault_record(&q, &f));
    /* the same page, cause and source: one refused DMA retried piecewise */
    f.iova = 0x7ff8;
    CHECK(!il_fault_record(&q, &f));
    CHECK_EQ(il_fault_count(&q), 1);
    CHECK_EQ(il_fault_get(&q, 0)->iova, 0x7000);
    /* anything else differing is a new fault */
    g = f;
    g.iova = 0x8000;
    CHECK(il_fault_record(&q, &g));
    g = f;
    g.access = IL_ACCESS_WRITE;
    CHECK(il_fault_record(&q, &g));
    g.dev = 2;
    CHECK(il_fault_record(&q, &g));
    g.domain = 6;
    CHECK(il_fault_record(&q, &g));
    g.stage = IL_STAGE_1;
    CHECK(il_fault_record(&q, &g));
    g.reason = IL_REASON_PERMISSION;
    CHECK(il_fault_record(&q, &g));
    CHECK_EQ(il_fault_count(&q), 7);
    /* only the last one is remembered: A B A is three faults */
    CHECK(il_fault_record(&q, &f));
    CHECK_EQ(il_fault_count(&q), 8);
    CHECK_EQ(q.recorded, 8);
    /* after a clear the same fault is new again */
    il_fault_clear(&q);
    CHECK_EQ(il_fault_count(&q), 0);
    CHECK(il_fault_get(&q, 0) == NULL);
    CHECK(il_fault_record(&q, &f));
    il_fault_queue_destroy(&q);
}

/* A TCE window coalesces per its own page size, and by LIOBN and TCE. */
static void test_coalesce_tce(void)
{
    ILFaultQueue q;
    ILFault f = {
        .dev = 0, .access = IL_ACCESS_WRITE, .stage = IL_STAGE_TCE,
        .reason = IL_REASON_PERMISSION, .iova = 0x80000000ULL,
        .page_shift = 16, .liobn = 0x80000001, .tce = 0x12340001,
    };

    CHECK_EQ(il_fault_queue_init(&q, 4), IL_OK);
    CHECK(il_fault_record(&q, &f));
    f.iova += 0xf000;               /* same 64 KiB TCE page */
    CHECK(!il_fault_record(&q, &f));
    f.iova += 0x1000;               /* next TCE page */
    CHECK(il_fault_record(&q, &f));
    f.liobn++;
    CHECK(il_fault_record(&q, &f));
    f.tce = 0;
    CHECK(il_fault_record(&q, &f));
    CHECK_EQ(il_fault_count(&q), 4);
    CHECK_EQ(il_fault_get(&q, 0)->liobn, 0x80000001);
    CHECK_EQ(il_fault_get(&q, 3)->tce, 0);
    il_fault_queue_destroy(&q);
}

static void test_overflow(void)
{
    ILFaultQueue q;

    CHECK_EQ(il_fault_queue_init(&q, 3), IL_OK);
    CHECK_EQ(il_fault_capacity(&q), 3);
    for (unsigned i = 0; i < 5; i++) {
        ILFault f = fault(1, 0x1000 * i, IL_ACCESS_READ);

        CHECK(il_fault_record(&q, &f));     /* new, even when dropped */
    }
    CHECK_EQ(il_fault_count(&q), 3);
    CHECK_EQ(il_fault_dropped(&q), 2);
    CHECK_EQ(il_fault_get(&q, 0)->iova, 0);         /* oldest first */
    CHECK_EQ(il_fault_get(&q, 2)->iova, 0x2000);
    CHECK(il_fault_get(&q, 3) == NULL);
    il_fault_clear(&q);
    CHECK_EQ(il_fault_dropped(&q), 0);
    CHECK_EQ(q.dropped_total, 2);
    /* the ring wraps: head moves */
    for (unsigned i = 0; i < 3; i++) {
        ILFault f = fault(2, 0x1000 * i, IL_ACCESS_READ);

        il_fault_record(&q, &f);
    }
    q.head = 2;                             /* as if 2 had been consumed */
    CHECK_EQ(il_fault_get(&q, 0)->iova, 0x2000);
    CHECK_EQ(il_fault_get(&q, 1)->iova, 0);
    il_fault_queue_destroy(&q);
    /* a zero capacity is one record */
    CHECK_EQ(il_fault_queue_init(&q, 0), IL_OK);
    CHECK_EQ(il_fault_capacity(&q), 1);
    il_fault_queue_destroy(&q);
}

static void test_rate_limit(void)
{
    ILFaultQueue q;
    ILFaultEvent ev;
    uint64_t sup = 99;

    CHECK_EQ(il_fault_queue_init(&q, 64), IL_OK);
    il_fault_set_rate(&q, 3, 1000);
    /* window [1000, 2000): 3 events, then suppressed */
    for (unsigned i = 0; i < 5; i++) {
        ILFault f = fault(1, 0x1000 * i, IL_ACCESS_READ);

        il_fault_report(&q, &f, 1000 + i, &ev);
        CHECK(ev.recorded);
        CHECK_EQ(ev.emit, i < 3);
        CHECK_EQ(ev.suppressed, 0);
    }
    /* a repeat is neither recorded nor rate-limited */
    {
        ILFault f = fault(1, 0x4008, IL_ACCESS_READ);

        il_fault_report(&q, &f, 1500, &ev);
        CHECK(!ev.recorded);
        CHECK(!ev.emit);
    }
    CHECK_EQ(il_fault_suppressed(&q), 2);
    /* still the same window at 1999 */
    CHECK(!il_fault_event(&q, 1999, &sup));
    CHECK_EQ(sup, 0);
    /* a new window: the first event carries the 3 suppressed */
    CHECK(il_fault_event(&q, 2000, &sup));
    CHECK_EQ(sup, 3);
    CHECK(il_fault_event(&q, 2001, &sup));
    CHECK_EQ(sup, 0);
    CHECK_EQ(il_fault_suppressed(&q), 3);
    /* the clock going backwards opens a new window too */
    CHECK(il_fault_event(&q, 10, &sup));
    CHECK(il_fault_event(&q, 11, &sup));
    CHECK(il_fault_event(&q, 12, &sup));
    CHECK(!il_fault_event(&q, 13, &sup));
    /* clear empties the ring, not the limiter */
    il_fault_clear(&q);
    CHECK(!il_fault_event(&q, 14, &sup));
    CHECK(il_fault_event(&q, 1010, &sup));
    CHECK_EQ(sup, 2);
    /* no events at all */
    il_fault_set_rate(&q, 0, 1000);
    CHECK(!il_fault_event(&q, 5000, &sup));
    CHECK_EQ(il_fault_suppressed(&q), 6);
    il_fault_queue_destroy(&q);
}

/* Out of memory: a clean error, nothing allocated. */
static void test_nomem(void)
{
    ILFaultQueue q;
    long live = il_fail_nth_live();

    il_fail_nth_set(1);
    CHECK_EQ(il_fault_queue_init(&q, 16), IL_ERR_NOMEM);
    CHECK(il_fail_nth_fired());
    CHECK(q.ring == NULL);
    CHECK_EQ(il_fail_nth_live(), live);
    il_fault_queue_destroy(&q);
    il_fail_nth_set(0);
}

int main(void)
{
    test_coalesce();
    test_coalesce_tce();
    test_overflow();
    test_rate_limit();
    test_nomem();
    printf("ok\n");
    return 0;
}

/*
 * iommulab core: allocation-failure injection for the unit tests.
 *
 * Built only into the unit tests' copy of the core (IL_FAIL_NTH, see
 * il-alloc.h); QEMU never compiles this file.  Not thread-safe: the core's
 * tests are single-threaded.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "il-alloc.h"

#ifdef IL_FAIL_NTH
static unsigned long fail_nth;      /* 0: never fail */
static unsigned long alloc_count;
static bool fired;
static long live;

bool il_fail_nth_should_fail(void)
{
    alloc_count++;
    if (fail_nth && alloc_count == fail_nth) {
        fired = true;
        return true;
    }
    live++;
    return false;
}

void il_fail_nth_freed(void)
{
    live--;
}

void il_fail_nth_set(unsigned long nth)
{
    fail_nth = nth;
    alloc_count = 0;
    fired = false;
}

unsigned long il_fail_nth_count(void)
{
    return alloc_count;
}

bool il_fail_nth_fired(void)
{
    return fired;
}

long il_fail_nth_live(void)
{
    return live;
}
#endif

/*
 * Helpers shared by the core's randomized and fault-injection tests: a
 * seeded xorshift generator and the IOTLB exactness check.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_TEST_UTIL_H
#define IL_TEST_UTIL_H

#include "check.h"
#include "il-engine.h"

static uint64_t rng = 1;

static inline void rng_seed(uint64_t seed)
{
    rng = seed ? seed : 1;
}

static inline uint64_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1DULL;
}

static inline uint64_t below(uint64_t n)
{
    return rnd() % n;
}

/*
 * The IOTLB's domain index is consistent, every valid entry is what a walk
 * of the tables gives now, and the valid count is right.
 */
static inline void check_iotlb_exact(ILEngine *e)
{
    uint32_t valid = 0;

    CHECK(il_iotlb_check(e));
    for (uint32_t i = 0; i < il_iotlb_size(e); i++) {
        const ILTlbEntry *t = &e->tlb[i];
        ILResult r;

        if (!t->dom) {
            continue;
        }
        valid++;
        CHECK(il_domain_find(e, il_domain_id(t->dom)) == t->dom);
        CHECK(il_translate(e, IL_MODE_DOMAIN, t->dom, 0,
                           t->page << IL_PAGE_SHIFT, 0, IL_TR_DEBUG, &r,
                           NULL));
        CHECK_EQ(r.addr & ~t->mask, t->out);
        CHECK_EQ(r.perm, t->perm);
        CHECK_EQ(r.shift, t->shift);
    }
    CHECK_EQ(valid, il_iotlb_valid(e));
}

#endif

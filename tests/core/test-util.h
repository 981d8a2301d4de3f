/*
 * Helpers shared by the core's randomized and fault-injection tests: a
 * seeded xorshift generator and the IOTLB exactness check.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_TEST_UTIL_H
#define IL_TEST_UTIL_H

#include <string.h>
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

#ifdef TEST_MEM_SIZE
/* The test's guest memory: stage-1 tables live here, read by the engine */
static uint8_t mem[TEST_MEM_SIZE];

static bool mem_read(void *opaque, uint64_t addr, void *buf, size_t len)
{
    (void)opaque;
    if (addr >= TEST_MEM_SIZE || len > TEST_MEM_SIZE - addr) {
        return false;
    }
    memcpy(buf, &mem[addr], len);
    return true;
}

/* Write the little-endian 64-bit table entry @v at @pa */
static void put(uint64_t pa, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        mem[pa + i] = v >> (8 * i);
    }
}
#endif

#endif

/*
 * iommulab core: allocation.
 *
 * Every allocation of the core can fail and every caller handles it: the
 * operation returns IL_ERR_NOMEM and leaves the state as it was (a QMP
 * client must not be able to crash QEMU, nor leave a half-applied change).
 *
 * Unit tests build the core with IL_FAIL_NTH defined: each allocation then
 * goes through il_fail_nth_should_fail() (il-alloc.c), which can make the
 * Nth allocation fail, as the kernel's iommufd_fail_nth selftest does.  The
 * QEMU build does not define it: there il_zalloc() is calloc().
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_ALLOC_H
#define IL_ALLOC_H

#include <stdbool.h>
#include <stdlib.h>

#ifdef IL_FAIL_NTH
/* Test hook: true when this allocation must fail (see il_fail_nth_set()). */
bool il_fail_nth_should_fail(void);
void il_fail_nth_freed(void);

/*
 * Fail the nth allocation from now on (1 = the next one), and only that
 * one; 0 switches failures off.  Resets the allocation count.
 */
void il_fail_nth_set(unsigned long nth);
/* Allocations attempted since il_fail_nth_set(). */
unsigned long il_fail_nth_count(void);
/* True once the armed failure has happened. */
bool il_fail_nth_fired(void);
/* Blocks currently allocated by the core (allocations minus frees). */
long il_fail_nth_live(void);
#endif

/* Zeroed memory, or NULL: the caller undoes what it did and fails. */
static inline void *il_zalloc(size_t size)
{
#ifdef IL_FAIL_NTH
    if (il_fail_nth_should_fail()) {
        return NULL;
    }
#endif
    return calloc(1, size ? size : 1);
}

static inline void *il_zalloc_array(size_t n, size_t size)
{
    if (size && n > (size_t)-1 / size) {
        return NULL;
    }
    return il_zalloc(n * size);
}

static inline void il_free(void *p)
{
#ifdef IL_FAIL_NTH
    if (p) {
        il_fail_nth_freed();
    }
#endif
    free(p);
}

#endif

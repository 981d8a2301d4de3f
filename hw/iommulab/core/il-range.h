/*
 * iommulab core: checked address ranges.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_RANGE_H
#define IL_RANGE_H

#include <stdbool.h>
#include <stdint.h>

/*
 * [start, start + size) with size > 0 that does not wrap past 2^64.  The last
 * byte is returned in *last so callers never compute start + size themselves.
 */
bool il_range_valid(uint64_t start, uint64_t size, uint64_t *last);

/* Both ranges given by inclusive first/last bytes. */
static inline bool il_range_overlaps(uint64_t a_first, uint64_t a_last,
                                     uint64_t b_first, uint64_t b_last)
{
    return a_first <= b_last && b_first <= a_last;
}

#endif

/*
 * iommulab core: checked address ranges.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "il-range.h"

bool il_range_valid(uint64_t start, uint64_t size, uint64_t *last)
{
    if (size == 0 || start + (size - 1) < start) {
        return false;
    }
    *last = start + (size - 1);
    return true;
}

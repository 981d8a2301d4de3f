/* Unit test: checked ranges reject empty and wrapping ranges. */
#include <assert.h>
#include <stdio.h>
#include "il-range.h"

int main(void)
{
    uint64_t last = 0;

    assert(!il_range_valid(0x1000, 0, &last));
    assert(!il_range_valid(UINT64_MAX, 2, &last));
    assert(il_range_valid(UINT64_MAX, 1, &last) && last == UINT64_MAX);
    assert(il_range_valid(0, UINT64_MAX, &last) && last == UINT64_MAX - 1);
    assert(il_range_valid(0x1000, 0x2000, &last) && last == 0x2fff);
    assert(il_range_overlaps(0, 0xfff, 0xfff, 0x1fff));
    assert(!il_range_overlaps(0, 0xfff, 0x1000, 0x1fff));
    printf("ok\n");
    return 0;
}

/*
 * iommulab core: allocation.  Like QEMU's g_malloc0, running out of memory
 * aborts: callers never see a half-applied operation because of it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_ALLOC_H
#define IL_ALLOC_H

#include <stdio.h>
#include <stdlib.h>

static inline void *il_zalloc(size_t size)
{
    void *p = calloc(1, size ? size : 1);

    if (!p) {
        fprintf(stderr, "iommulab: out of memory (%zu bytes)\n", size);
        abort();
    }
    return p;
}

#endif

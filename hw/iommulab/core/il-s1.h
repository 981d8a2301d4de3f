/*
 * iommulab core: the stage-1 table format (owned by the guest).
 *
 * A radix table in guest memory: 4 KiB granule, 4 levels, 48-bit input,
 * 512 little-endian 8-byte entries per table.  Entry bits:
 *
 *   bit 0      P   present
 *   bit 1      R   reads allowed (below this entry)
 *   bit 2      W   writes allowed (below this entry)
 *   bit 7      PS  leaf at level 3 (1 GiB) or level 2 (2 MiB);
 *                  must be 0 at level 4; ignored at level 1 (always a leaf)
 *   bits 12-51 ADDR intermediate physical address of the next table, or of
 *                  the output page/block (aligned to its size)
 *   other bits ignored (available to software)
 *
 * Levels 4, 3, 2, 1 are indexed by input bits 47:39, 38:30, 29:21, 20:12.
 * The effective permission is the AND of R/W over all entries of the walk,
 * and then with stage 2.  Table addresses and the output are intermediate
 * physical addresses, translated through the parent stage-2 domain (a table
 * read needs stage-2 read permission).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_S1_H
#define IL_S1_H

#include "il-types.h"

#define IL_S1_P     (1ULL << 0)
#define IL_S1_R     (1ULL << 1)
#define IL_S1_W     (1ULL << 2)
#define IL_S1_PS    (1ULL << 7)
#define IL_S1_ADDR  0x000ffffffffff000ULL
#define IL_S1_IAS   48
#define IL_S1_LEVELS 4

#endif

/*
 * iommulab core: common types and error codes.
 *
 * The core is plain C (no QEMU or GLib headers) so that it is built and
 * unit-tested on its own; QEMU compiles the same files into the device.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef IL_TYPES_H
#define IL_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IL_PAGE_SHIFT   12
#define IL_PAGE_SIZE    (1ULL << IL_PAGE_SHIFT)
#define IL_PAGE_MASK    (IL_PAGE_SIZE - 1)
#define IL_LEVEL_BITS   9
#define IL_TABLE_ENTRIES 512

/* Permission bits, used by both stages and by the IOTLB. */
#define IL_PERM_R 1u
#define IL_PERM_W 2u
#define IL_PERM_RW (IL_PERM_R | IL_PERM_W)

typedef enum ILAccess {
    IL_ACCESS_READ = IL_PERM_R,
    IL_ACCESS_WRITE = IL_PERM_W,
} ILAccess;

/* Errors of control operations; see il_strerror(). */
typedef enum ILError {
    IL_OK = 0,
    IL_ERR_ALIGN,        /* iova, addr or size not 4 KiB aligned */
    IL_ERR_SIZE,         /* size is zero */
    IL_ERR_OVERFLOW,     /* iova + size or addr + size wraps past 2^64 */
    IL_ERR_IAS,          /* iova + size beyond the input address size */
    IL_ERR_PERM,         /* neither read nor write */
    IL_ERR_OVERLAP,      /* overlaps an existing mapping */
    IL_ERR_OVERLAP_BATCH, /* overlaps another range of the same batch */
    IL_ERR_EXISTS,       /* domain id already in use */
    IL_ERR_NOENT,        /* no such domain */
    IL_ERR_TYPE,         /* wrong domain type for the operation */
    IL_ERR_BUSY,         /* domain in use (devices or nested children) */
    IL_ERR_INVAL,        /* other invalid argument */
    IL_ERR_NOMEM,        /* over the domain's table budget (IL_S2_MAX_TABLES) */
    IL_ERR_NOSPC,        /* too many domains (IL_MAX_DOMAINS) */
    IL_ERR_LIMIT,        /* over the engine-wide page-table memory limit */
} ILError;

const char *il_strerror(ILError err);

typedef enum ILFaultStage {
    IL_STAGE_DEVICE = 0,    /* the requester is blocked (its mode) */
    IL_STAGE_1,
    IL_STAGE_2,
    IL_STAGE_TCE,           /* an sPAPR TCE window */
} ILFaultStage;

typedef enum ILFaultReason {
    IL_REASON_BLOCKED = 0,
    IL_REASON_ADDRESS_SIZE,
    IL_REASON_NOT_PRESENT,
    IL_REASON_PERMISSION,
    IL_REASON_WALK_ERROR,
} ILFaultReason;

#endif

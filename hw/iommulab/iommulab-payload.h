/*
 * iommulab: bulk payloads of the lab's QMP commands (docs/qmp.md,
 * "Bulk payloads").
 *
 * A command that takes many fixed-size records accepts them in one of
 * three forms: an inline QAPI list (JSON), 'data' = base64 of the packed
 * little-endian records, or 'fd' = the name of a file descriptor passed
 * before with QMP 'getfd' (SCM_RIGHTS), a regular file or memfd holding
 * the packed records from offset 0, with 'count' giving how many.  The
 * JSON form costs QEMU's parser per byte; the packed forms cost a decode
 * (base64) or one pread (fd).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef HW_IOMMULAB_PAYLOAD_H
#define HW_IOMMULAB_PAYLOAD_H

#include "qemu/bswap.h"
#include "core/il-s2.h"

/*
 * Ranges one x-iommulab-map, -unmap or -invalidate takes at most, in any
 * form (hw-info limits max-batch): all 4 KiB pages of 4 GiB at once.
 */
#define IOMMULAB_PAYLOAD_BATCH_MAX (1u << 20)

/* Packed records (docs/qmp.md "Bulk payloads"): little-endian u64 words */
#define IOMMULAB_PAYLOAD_MAPPING 32  /* iova, size, addr, flags (1 r, 2 w) */
#define IOMMULAB_PAYLOAD_RANGE 16    /* iova, size */

/* Longest qdev id or QOM path a lab command accepts (iommulab_resolve()) */
#define IOMMULAB_NAME_MAX 255

/*
 * Check that a command got exactly one source of its records: the inline
 * list @what (@has_inline: given, even empty), @data or @fdname, and
 * 'count' only with @fdname or @data.  Errors name the arguments; on an
 * error the fd @fdname (if any) is closed (iommulab_payload_discard()).
 */
bool iommulab_payload_one_source(bool has_inline, const char *what,
                                 const char *data, const char *fdname,
                                 bool has_count, Error **errp);

/*
 * Load the packed records of @data (base64) or @fdname (a 'getfd' name of
 * the current monitor), exactly one of them non-NULL:
 * - at most @max_count records of @record_size bytes, at least one;
 * - @fdname: @has_count required; the fd must be a regular file or memfd
 *   of at least @count * @record_size bytes, read from offset 0 with
 *   pread; it is ALWAYS closed (removed from the monitor), on success and
 *   on error;
 * - @data: its length is checked before decoding, it must be canonical
 *   base64 (no whitespace), and decode to a non-zero multiple of
 *   @record_size bytes; @count, if given, must match.
 * On success *@records is a g_malloc'ed array of *@nr_records records in
 * little-endian layout (read them with ldq_le_p() or
 * iommulab_payload_u64()).  On failure nothing is returned, and the
 * error names the argument ('fd', 'data', 'count') and @what.
 */
bool iommulab_payload_load(const char *data, const char *fdname,
                           bool has_count, uint64_t count,
                           size_t record_size, uint64_t max_count,
                           const char *what, void **records,
                           uint64_t *nr_records, Error **errp);

/*
 * Close the fd passed as @fdname (NULL: none) without reading it: for a
 * command refused before iommulab_payload_load(), so that an fd argument
 * is closed whatever the outcome.
 */
void iommulab_payload_discard(const char *fdname);

/* The @word'th little-endian 64-bit word of record @i of @records */
static inline uint64_t iommulab_payload_u64(const void *records,
                                            size_t record_size, uint64_t i,
                                            unsigned word)
{
    return ldq_le_p((const uint8_t *)records + i * record_size + word * 8);
}

/*
 * The ranges of a map, unmap or invalidate, in whichever form they came:
 * the inline QAPI list @list (@has_list: given; its first element; with
 * @ranges an IommulabRangeList, else an IommulabMappingList) or the packed
 * records of @data / @fd (with @count), IOMMULAB_PAYLOAD_MAPPING or
 * _RANGE bytes each.  At least one, at most IOMMULAB_PAYLOAD_BATCH_MAX.
 * Packed mapping flags other than read (1) and write (2) are refused.
 * Returns a g_new'ed array of *@n ranges (perm set for mappings); takes
 * and closes @fd whatever the outcome.  Errors name the argument.
 */
ILMapping *iommulab_payload_ranges(bool has_list, const void *list,
                                   bool ranges,
                                   const char *what, const char *data,
                                   const char *fd, bool has_count,
                                   uint64_t count, size_t *n, Error **errp);

/*
 * base64 of @n records of @record_size bytes at @records (already
 * little-endian), for answers that carry packed records.
 */
char *iommulab_payload_encode(const void *records, size_t record_size,
                              uint64_t n);

#endif

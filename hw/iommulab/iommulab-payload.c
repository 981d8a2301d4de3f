/*
 * iommulab: bulk payloads of the lab's QMP commands (iommulab-payload.h,
 * docs/qmp.md "Bulk payloads").  In every system emulator: the sPAPR
 * commands use it as well as the paging vIOMMU's.
 *
 * What a client sends can only make QEMU allocate what the command's
 * maximum allows: the fd's records are read up to @max_count, a base64
 * string longer than @max_count records is refused before decoding.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "monitor/monitor.h"
#include "qapi/qapi-types-iommulab.h"
#include "iommulab-payload.h"
#include "trace.h"

void iommulab_payload_discard(const char *fdname)
{
    Monitor *mon = monitor_cur();
    int fd;

    if (fdname && mon) {
        fd = monitor_get_fd(mon, fdname, NULL);
        if (fd >= 0) {
            close(fd);
        }
    }
}

bool iommulab_payload_one_source(bool has_inline, const char *what,
                                 const char *data, const char *fdname,
                                 bool has_count, Error **errp)
{
    int sources = has_inline + !!data + !!fdname;

    if (sources != 1) {
        error_setg(errp, "give the %s exactly one way: '%s' (inline), "
                   "'data' (base64) or 'fd' with 'count' (%s)", what, what,
                   sources ? "several were given" : "none was given");
    } else if (has_count && has_inline) {
        error_setg(errp, "'count' goes with 'fd' or 'data', not with '%s'",
                   what);
    } else {
        return true;
    }
    iommulab_payload_discard(fdname);
    return false;
}

static bool base64_char(char c)
{
    return g_ascii_isalnum(c) || c == '+' || c == '/';
}

/* Canonical base64 of @len bytes: groups of 4, '=' only as padding. */
static bool base64_valid(const char *s, size_t len, size_t *bad)
{
    size_t i;

    if (len % 4) {
        *bad = len;
        return false;
    }
    for (i = 0; i < len; i++) {
        if (base64_char(s[i])) {
            continue;
        }
        /* '=' only in the last two places, '==' or 'X=' */
        if (s[i] == '=' && i + 2 >= len &&
            (i + 1 == len || s[i + 1] == '=')) {
            continue;
        }
        *bad = i;
        return false;
    }
    return true;
}

static bool payload_from_data(const char *data, bool has_count,
                              uint64_t count, size_t record_size,
                              uint64_t max_count, const char *what,
                              void **records, uint64_t *nr, Error **errp)
{
    /* checked before decoding: the string may be huge */
    size_t len = strnlen(data, 4 * DIV_ROUND_UP(max_count * record_size, 3)
                         + 1);
    size_t max_len = 4 * DIV_ROUND_UP(max_count * record_size, 3);
    size_t bad, out_len;
    guchar *buf;

    if (len > max_len) {
        error_setg(errp, "'data' is longer than %" PRIu64 " %s of %zu "
                   "bytes in base64 (%zu characters); send them in several "
                   "commands", max_count, what, record_size, max_len);
        return false;
    }
    if (!len) {
        error_setg(errp, "'data' is empty: give at least one of the %s",
                   what);
        return false;
    }
    if (!base64_valid(data, len, &bad)) {
        if (bad == len) {
            error_setg(errp, "'data' is not base64: its length %zu is not a "
                       "multiple of 4", len);
        } else {
            error_setg(errp, "'data' is not base64: character %zu is not "
                       "of the base64 alphabet", bad);
        }
        return false;
    }
    buf = g_base64_decode(data, &out_len);
    if (out_len % record_size) {
        error_setg(errp, "'data' holds %zu bytes, not a whole number of %s "
                   "(%zu bytes each)", out_len, what, record_size);
        g_free(buf);
        return false;
    }
    if (has_count && count != out_len / record_size) {
        error_setg(errp, "'count' is %" PRIu64 " but 'data' holds %zu %s",
                   count, out_len / record_size, what);
        g_free(buf);
        return false;
    }
    *records = buf;
    *nr = out_len / record_size;
    return true;
}

/* Read [0, @size) of @fd; false with errno (0: end of file) if short */
static bool read_all(int fd, void *buf, size_t size)
{
    size_t done = 0;

    while (done < size) {
        ssize_t n = pread(fd, (char *)buf + done, size - done, done);

        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            if (!n) {
                errno = 0;
            }
            return false;
        }
        done += n;
    }
    return true;
}

static bool payload_from_fd(int fd, const char *fdname, uint64_t count,
                            size_t record_size, const char *what,
                            void **records, Error **errp)
{
    uint64_t size = count * record_size;
    struct stat st;
    void *buf;

    if (fstat(fd, &st) < 0) {
        error_setg_errno(errp, errno, "'fd' '%s': cannot stat it", fdname);
        return false;
    }
    if (!S_ISREG(st.st_mode)) {
        error_setg(errp, "'fd' '%s' is not a regular file or memfd (a pipe "
                   "or socket cannot be read at an offset)", fdname);
        return false;
    }
    if ((uint64_t)st.st_size < size) {
        error_setg(errp, "'fd' '%s' holds %" PRIu64 " bytes, too short for "
                   "'count' %" PRIu64 " %s of %zu bytes (%" PRIu64 ")",
                   fdname, (uint64_t)st.st_size, count, what, record_size,
                   size);
        return false;
    }
    buf = g_malloc(size);
    if (!read_all(fd, buf, size)) {
        if (errno) {
            error_setg_errno(errp, errno, "'fd' '%s': read failed", fdname);
        } else {
            error_setg(errp, "'fd' '%s' ended before %" PRIu64 " bytes "
                       "(truncated while read)", fdname, size);
        }
        g_free(buf);
        return false;
    }
    *records = buf;
    return true;
}

bool iommulab_payload_load(const char *data, const char *fdname,
                           bool has_count, uint64_t count,
                           size_t record_size, uint64_t max_count,
                           const char *what, void **records,
                           uint64_t *nr_records, Error **errp)
{
    Monitor *mon;
    bool ok;
    int fd;

    assert(record_size && max_count && max_count <= SIZE_MAX / record_size);
    *records = NULL;
    *nr_records = 0;
    if (!!data == !!fdname) {
        error_setg(errp, "give the %s as 'data' (base64) or as 'fd' with "
                   "'count', exactly one", what);
        return false;
    }
    if (data) {
        ok = payload_from_data(data, has_count, count, record_size,
                               max_count, what, records, nr_records, errp);
        if (ok) {
            trace_iommulab_payload_load(what, "data", *nr_records);
        }
        return ok;
    }

    /* monitor fd names are short; a long one cannot name a passed fd */
    if (strnlen(fdname, IOMMULAB_NAME_MAX + 1) > IOMMULAB_NAME_MAX) {
        error_setg(errp, "'fd' is longer than %d bytes", IOMMULAB_NAME_MAX);
        return false;
    }
    mon = monitor_cur();
    if (!mon) {
        error_setg(errp, "'fd' needs a monitor connection (pass the fd with "
                   "getfd first)");
        return false;
    }
    /* taken from the monitor now: every return below closes it */
    fd = monitor_get_fd(mon, fdname, NULL);
    if (fd < 0) {
        error_setg(errp, "'fd': no file descriptor named '%s' on this "
                   "monitor (pass it with getfd first)", fdname);
        return false;
    }
    if (!has_count) {
        error_setg(errp, "'fd' needs 'count' (the number of %s)", what);
        ok = false;
    } else if (count < 1 || count > max_count) {
        error_setg(errp, "'count' must be 1 to %" PRIu64 " %s, not %" PRIu64,
                   max_count, what, count);
        ok = false;
    } else {
        ok = payload_from_fd(fd, fdname, count, record_size, what, records,
                             errp);
    }
    close(fd);
    if (ok) {
        *nr_records = count;
        trace_iommulab_payload_load(what, "fd", count);
    }
    return ok;
}

char *iommulab_payload_encode(const void *records, size_t record_size,
                              uint64_t n)
{
    return g_base64_encode(records, n * record_size);
}

/*
 * The ranges of a map, unmap or invalidate, in whichever form they came
 * (docs/qmp.md "Bulk payloads"): the inline list (@list: its first
 * element; @ranges: a list of IommulabRange, else of IommulabMapping) or
 * the packed records of @data / @fd.  At most IOMMULAB_PAYLOAD_BATCH_MAX,
 * at least one.  Takes (and closes) @fd whatever the outcome.
 */
ILMapping *iommulab_payload_ranges(bool has_list, const void *list,
                                   bool ranges,
                                   const char *what, const char *data,
                                   const char *fd, bool has_count,
                                   uint64_t count, size_t *n, Error **errp)
{
    size_t rec = ranges ? IOMMULAB_PAYLOAD_RANGE : IOMMULAB_PAYLOAD_MAPPING;
    g_autofree void *packed = NULL;
    ILMapping *r;
    uint64_t nr = 0, i;

    if (!iommulab_payload_one_source(has_list, what, data, fd, has_count,
                                     errp)) {
        return NULL;
    }
    if (has_list && !list) {
        error_setg(errp, "'%s' is empty", what);
        return NULL;
    }
    if (list) {
        if (ranges) {
            const IommulabRangeList *l = list;

            for (; l && nr <= IOMMULAB_PAYLOAD_BATCH_MAX; l = l->next, nr++) {
                continue;
            }
        } else {
            const IommulabMappingList *l = list;

            for (; l && nr <= IOMMULAB_PAYLOAD_BATCH_MAX; l = l->next, nr++) {
                continue;
            }
        }
        if (nr > IOMMULAB_PAYLOAD_BATCH_MAX) {
            error_setg(errp, "'%s' has more than %u entries; send them in "
                       "several commands", what, IOMMULAB_PAYLOAD_BATCH_MAX);
            return NULL;
        }
    } else if (!iommulab_payload_load(data, fd, has_count, count, rec,
                                      IOMMULAB_PAYLOAD_BATCH_MAX, what, &packed,
                                      &nr, errp)) {
        return NULL;
    }

    r = g_new0(ILMapping, nr);
    if (list && ranges) {
        const IommulabRangeList *l = list;

        for (i = 0; l; l = l->next, i++) {
            r[i].iova = l->value->iova;
            r[i].size = l->value->size;
        }
    } else if (list) {
        const IommulabMappingList *l = list;

        for (i = 0; l; l = l->next, i++) {
            r[i].iova = l->value->iova;
            r[i].size = l->value->size;
            r[i].addr = l->value->addr;
            r[i].perm = (l->value->read ? IL_PERM_R : 0) |
                        (l->value->write ? IL_PERM_W : 0);
        }
    } else {
        for (i = 0; i < nr; i++) {
            r[i].iova = iommulab_payload_u64(packed, rec, i, 0);
            r[i].size = iommulab_payload_u64(packed, rec, i, 1);
            if (ranges) {
                continue;
            }
            r[i].addr = iommulab_payload_u64(packed, rec, i, 2);
            if (iommulab_payload_u64(packed, rec, i, 3) & ~(uint64_t)3) {
                error_setg(errp, "%s[%" PRIu64 "] of '%s': flags 0x%" PRIx64
                           " has bits other than read (1) and write (2); "
                           "nothing changed", what, i, data ? "data" : "fd",
                           iommulab_payload_u64(packed, rec, i, 3));
                g_free(r);
                return NULL;
            }
            r[i].perm = iommulab_payload_u64(packed, rec, i, 3);
        }
    }
    *n = nr;
    return r;
}

/*
 * iommulab: host-side TCE writes in bulk (x-iommulab-spapr-put-tces), what
 * VFIO's MAP_DMA / UNMAP_DMA or an iommufd IOAS map do to a PE's table.
 *
 * All or nothing: the TCEs are loaded (inline list, base64 or a passed fd:
 * iommulab-payload.h), the window and the range are checked, then every
 * TCE, and only then patch 0018's spapr_tce_put_bulk() allocates the
 * leaves they need within the PHB's TCE memory limit and writes them; a
 * failure at any step leaves the table as it was.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab-spapr.h"
#include "exec/address-spaces.h"
#include "exec/memory.h"
#include "hw/iommulab/iommulab-owner.h"
#include "hw/iommulab/iommulab-payload.h"
#include "iommulab-spapr-internal.h"
#include "trace.h"

/* A TCE's bits: 0 read, 1 write, 2..11 reserved, the address above */
#define IL_TCE_RW           ((uint64_t)3)
#define IL_TCE_RESERVED     ((uint64_t)0xffc)

/* The last stretch of guest RAM found, so that a run of TCEs looks once */
typedef struct ILSpaprRam {
    uint64_t start, end;        /* [start, end); empty at first */
} ILSpaprRam;

/* Whether guest RAM holds all of [addr, addr + size) */
static bool il_spapr_is_ram(ILSpaprRam *c, uint64_t addr, uint64_t size)
{
    MemoryRegionSection s;
    bool ram;

    if (addr + size < addr) {
        return false;
    }
    if (addr >= c->start && addr + size <= c->end) {
        return true;
    }
    /* the section holding @addr, as far as it goes */
    s = memory_region_find(get_system_memory(), addr, UINT64_MAX - addr);
    if (!s.mr) {
        return false;
    }
    ram = memory_region_is_ram(s.mr) && !memory_region_is_ram_device(s.mr) &&
          !memory_region_is_rom(s.mr) &&
          s.offset_within_address_space == addr;
    if (ram) {
        c->start = addr;
        c->end = addr + int128_get64(s.size);
    }
    memory_region_unref(s.mr);
    return ram && addr + size <= c->end;
}

/*
 * Check TCE @i of the run (@what names where it came from); an error names
 * the argument, the entry and the window index.
 */
static bool il_spapr_check_tce(SpaprTceTable *tcet, ILSpaprRam *ram,
                               const char *what, uint64_t i, uint64_t index,
                               uint64_t tce, Error **errp)
{
    uint64_t page = 1ULL << tcet->page_shift;
    uint64_t addr = tce & ~(page - 1);

    if (!tce) {
        return true;
    }
    if (tce & IL_TCE_RESERVED) {
        error_setg(errp, "%s[%" PRIu64 "] (TCE %" PRIu64 "): 0x%" PRIx64
                   " has reserved bits set (0x%" PRIx64 "; a TCE is "
                   "address | 2 (write) | 1 (read))", what, i, index, tce,
                   tce & IL_TCE_RESERVED);
        return false;
    }
    if (!(tce & IL_TCE_RW)) {
        error_setg(errp, "%s[%" PRIu64 "] (TCE %" PRIu64 "): 0x%" PRIx64
                   " grants neither read nor write; write 0 to clear an "
                   "entry", what, i, index, tce);
        return false;
    }
    if (tce & (page - 1) & ~(IL_TCE_RW | IL_TCE_RESERVED)) {
        error_setg(errp, "%s[%" PRIu64 "] (TCE %" PRIu64 "): address 0x%"
                   PRIx64 " is not aligned to the window's page size 0x%"
                   PRIx64, what, i, index, tce & ~(IL_TCE_RW |
                   IL_TCE_RESERVED), page);
        return false;
    }
    if (!il_spapr_is_ram(ram, addr, page)) {
        error_setg(errp, "%s[%" PRIu64 "] (TCE %" PRIu64 "): page [0x%"
                   PRIx64 ", +0x%" PRIx64 ") is not guest RAM", what, i,
                   index, addr, page);
        return false;
    }
    return true;
}

/*
 * The enabled host-side window of a PHB with LIOBN @liobn, whose PHB @owner
 * may change, or an error
 */
static SpaprTceTable *il_spapr_host_window(uint32_t liobn, const char *owner,
                                           Error **errp)
{
    SpaprTceTable *tcet = spapr_tce_find_by_liobn(liobn);

    if (!tcet) {
        error_setg(errp, "'liobn': no TCE table with LIOBN 0x%" PRIx32,
                   liobn);
        return NULL;
    }
    if (!object_dynamic_cast(OBJECT(tcet)->parent,
                             TYPE_SPAPR_PCI_HOST_BRIDGE)) {
        error_setg(errp, "'liobn': 0x%" PRIx32 " is not a window of a PHB "
                   "(a VIO device's table is the guest's)", liobn);
        return NULL;
    }
    if (!iommulab_owner_check(OBJECT(tcet)->parent, owner, errp)) {
        return NULL;
    }
    if (!tcet->nb_table) {
        error_setg(errp, "'liobn': window 0x%" PRIx32 " is not enabled",
                   liobn);
        return NULL;
    }
    if (!il_spapr_host_may_change(tcet, "'liobn'", errp)) {
        return NULL;
    }
    return tcet;
}

/* The TCEs of the inline list, in host order, or an error */
static uint64_t *il_spapr_inline_tces(uint64List *list, uint64_t *n,
                                      Error **errp)
{
    uint64List *l;
    uint64_t *buf, i = 0;

    for (l = list; l; l = l->next) {
        if (++i > IL_SPAPR_PUT_MAX) {
            error_setg(errp, "'tces' holds more than put-tces-max (%u) "
                       "TCEs; send them in several commands",
                       IL_SPAPR_PUT_MAX);
            return NULL;
        }
    }
    if (!i) {
        error_setg(errp, "'tces' is empty: give at least one TCE");
        return NULL;
    }
    buf = g_new(uint64_t, i);
    for (l = list, i = 0; l; l = l->next) {
        buf[i++] = l->value;
    }
    *n = i;
    return buf;
}

IommulabSpaprPutTces *qmp_x_iommulab_spapr_put_tces(uint32_t liobn,
                                                    uint64_t start,
                                                    bool has_tces,
                                                    uint64List *tces,
                                                    const char *data,
                                                    const char *fd,
                                                    bool has_count,
                                                    uint64_t count,
                                                    const char *owner,
                                                    Error **errp)
{
    const char *what = has_tces ? "tces" : data ? "data" : "fd";
    ILSpaprRam ram = { 0, 0 };
    SpaprTceTable *tcet;
    IommulabSpaprPutTces *r = NULL;
    uint64_t *buf = NULL, n = 0, i;
    void *records;

    if (!il_spapr_machine(errp)) {
        iommulab_payload_discard(fd);   /* a passed fd is always closed */
        return NULL;
    }
    /* 1. The TCEs, from exactly one source (a passed fd is always closed) */
    if (!iommulab_payload_one_source(has_tces, "tces", data, fd, has_count,
                                     errp)) {
        return NULL;
    }
    if (has_tces) {
        buf = il_spapr_inline_tces(tces, &n, errp);
        if (!buf) {
            return NULL;
        }
    } else {
        if (!iommulab_payload_load(data, fd, has_count, count,
                                   sizeof(uint64_t), IL_SPAPR_PUT_MAX,
                                   "TCEs", &records, &n, errp)) {
            return NULL;
        }
        buf = records;
        for (i = 0; i < n; i++) {
            buf[i] = le64_to_cpu(buf[i]);
        }
    }

    /* 2. The window and the range */
    tcet = il_spapr_host_window(liobn, owner, errp);
    if (!tcet) {
        goto out;
    }
    if (start >= tcet->nb_table || n > tcet->nb_table - start) {
        error_setg(errp, "'start': TCEs %" PRIu64 "..%" PRIu64 " are "
                   "outside window 0x%" PRIx32 " (%" PRIu32 " TCEs)", start,
                   start + n - 1, liobn, tcet->nb_table);
        goto out;
    }

    /* 3. Every TCE */
    for (i = 0; i < n; i++) {
        if (buf[i] && !il_spapr_check_tce(tcet, &ram, what, i, start + i,
                                          buf[i], errp)) {
            goto out;
        }
    }

    /* 4. The leaves within the PHB's limit, then the TCEs */
    if (!spapr_tce_put_bulk(tcet, start, n, buf)) {
        SpaprPhbState *sphb = SPAPR_PCI_HOST_BRIDGE(OBJECT(tcet)->parent);

        error_setg(errp, "the TCE table leaves for TCEs %" PRIu64 "..%"
                   PRIu64 " of window 0x%" PRIx32 " do not fit in the "
                   "table-memory-limit of PHB %" PRIu32 " (%" PRIu64
                   " bytes, %" PRIu64 " in use); nothing was written", start,
                   start + n - 1, liobn, sphb->index, sphb->tce_mem.limit,
                   sphb->tce_mem.used);
        goto out;
    }
    trace_iommulab_spapr_put_tces(liobn, start, n, what);
    r = g_new0(IommulabSpaprPutTces, 1);
    r->liobn = liobn;
    r->start = start;
    r->count = n;
out:
    g_free(buf);
    return r;
}

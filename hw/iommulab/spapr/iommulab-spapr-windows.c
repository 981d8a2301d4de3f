/*
 * iommulab: the host side of a pseries PHB's DMA windows: its DDW policy
 * (x-iommulab-spapr-set-ddw-policy), host-created windows
 * (x-iommulab-spapr-window-create, -remove, -reset: VFIO's
 * SPAPR_TCE_CREATE/REMOVE) and TCE reads (x-iommulab-spapr-read-tces).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab-spapr.h"
#include "iommulab-spapr-internal.h"
#include "trace.h"

/* The largest window the host side creates (reported: host-windows) */
#define IL_SPAPR_HOST_MAX_TCES  (1u << 24)
#define IL_SPAPR_POLICY_MAX_TCES (1ULL << 37)
/* TCEs per x-iommulab-spapr-read-tces (reported: host-windows) */
#define IL_SPAPR_READ_MAX       (1u << 20)
/* Smallest TCE memory limit of a PHB: a default window and a leaf */
#define IL_SPAPR_MIN_TABLE_MEMORY (64u << 10)

/* The page sizes PAPR defines for DDW that we offer, as shifts */
static const uint8_t il_spapr_page_shifts[] = { 12, 16, 21, 24, 28, 34 };

/*
 * What the host side may create (x-iommulab-spapr-window-create) and read
 * back: the control plane takes these from here, not from a copy.
 */
IommulabHwSpaprHostWindows *il_spapr_host_windows(void)
{
    IommulabHwSpaprHostWindows *h = g_new0(IommulabHwSpaprHostWindows, 1);
    uint8List **tail = &h->page_shifts;
    int i;

    for (i = 0; i < ARRAY_SIZE(il_spapr_page_shifts); i++) {
        QAPI_LIST_APPEND(tail, il_spapr_page_shifts[i]);
    }
    h->max_tces = IL_SPAPR_HOST_MAX_TCES;
    h->read_tces_max = IL_SPAPR_READ_MAX;
    h->put_tces_max = IL_SPAPR_PUT_MAX;
    return h;
}

static bool il_spapr_valid_page_shift(uint64_t shift)
{
    int i;

    for (i = 0; i < ARRAY_SIZE(il_spapr_page_shifts); i++) {
        if (il_spapr_page_shifts[i] == shift) {
            return true;
        }
    }
    return false;
}

IommulabSpaprDdwPolicy *qmp_x_iommulab_spapr_set_ddw_policy(
    IommulabSpaprDdwPolicyArgs *arg, Error **errp)
{
    SpaprPhbState *sphb = il_spapr_find_owned_phb(arg->has_phb, arg->phb,
                                                  arg->owner, errp);
    uint64_t mask = 0;
    uint8List *l;

    if (!sphb) {
        return NULL;
    }
    /* Check everything, then change */
    if (arg->has_windows &&
        (arg->windows < 1 || arg->windows > il_spapr_num_tables(sphb))) {
        error_setg(errp, "windows must be 1..%u for PHB %" PRIu32
                   " (it has %u TCE tables)", il_spapr_num_tables(sphb),
                   sphb->index, il_spapr_num_tables(sphb));
        return NULL;
    }
    if (arg->has_page_shifts) {
        if (!arg->page_shifts) {
            error_setg(errp, "page-shifts must not be empty");
            return NULL;
        }
        for (l = arg->page_shifts; l; l = l->next) {
            if (!il_spapr_valid_page_shift(l->value)) {
                error_setg(errp, "page-shifts: %u is not one of 12, 16, 21, "
                           "24, 28, 34", l->value);
                return NULL;
            }
            if (mask & (1ULL << l->value)) {
                error_setg(errp, "page-shifts: %u given twice", l->value);
                return NULL;
            }
            mask |= 1ULL << l->value;
        }
    }
    if (arg->has_max_tces &&
        (arg->max_tces < 1 || arg->max_tces > IL_SPAPR_POLICY_MAX_TCES)) {
        error_setg(errp, "max-tces must be 1..2^37");
        return NULL;
    }
    if (arg->has_dma64_offset && arg->dma64_offset != (1ULL << 32) &&
        arg->dma64_offset != (1ULL << 59)) {
        error_setg(errp, "dma64-offset must be 4294967296 (4 GiB) or "
                   "576460752303423488 (1<<59)");
        return NULL;
    }
    if (arg->has_default_window_size &&
        (!arg->default_window_size ||
         arg->default_window_size % SPAPR_TCE_PAGE_SIZE ||
         arg->default_window_size > (1ULL << 31))) {
        error_setg(errp, "default-window-size must be a non-zero multiple of "
                   "4 KiB, at most 2 GiB");
        return NULL;
    }

    if (arg->has_table_memory_limit &&
        (arg->table_memory_limit < IL_SPAPR_MIN_TABLE_MEMORY ||
         arg->table_memory_limit < sphb->tce_mem.used)) {
        error_setg(errp, "table-memory-limit must be at least %u and at "
                   "least what the TCE tables of PHB %" PRIu32 " hold now "
                   "(%" PRIu64 " bytes)", IL_SPAPR_MIN_TABLE_MEMORY,
                   sphb->index, sphb->tce_mem.used);
        return NULL;
    }

    if (arg->has_ddw) {
        sphb->ddw_enabled = arg->ddw;
    }
    if (arg->has_windows) {
        sphb->ddw_max_windows = arg->windows;
    }
    if (arg->has_page_shifts) {
        sphb->page_size_mask = mask;
    }
    if (arg->has_max_tces) {
        sphb->ddw_max_tces = arg->max_tces;
    }
    if (arg->has_dma64_offset) {
        sphb->dma64_win_addr = arg->dma64_offset;
    }
    if (arg->has_default_window_size) {
        sphb->dma_win_size = arg->default_window_size;
    }
    if (arg->has_table_memory_limit) {
        sphb->tce_mem.limit = arg->table_memory_limit;
    }
    if (arg->has_refuse_create) {
        qemu_mutex_lock(&il_spapr_state.lock);
        if (arg->refuse_create) {
            g_hash_table_add(il_spapr_state.refuse_create,
                             GUINT_TO_POINTER(sphb->index));
        } else {
            g_hash_table_remove(il_spapr_state.refuse_create,
                                GUINT_TO_POINTER(sphb->index));
        }
        qemu_mutex_unlock(&il_spapr_state.lock);
    }
    trace_iommulab_spapr_policy(sphb->index, sphb->ddw_enabled,
                                sphb->ddw_max_windows, sphb->page_size_mask,
                                sphb->ddw_max_tces, sphb->dma64_win_addr,
                                sphb->dma_win_size);
    return il_spapr_policy(sphb);
}

static bool il_spapr_overlaps(SpaprPhbState *sphb, uint64_t start,
                              uint64_t size)
{
    SpaprTceTable *tcet;
    uint64_t s, e;
    int i;

    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet && tcet->nb_table) {
            s = tcet->bus_offset;
            e = s + ((uint64_t)tcet->nb_table << tcet->page_shift);
            if (start < e && s < start + size) {
                return true;
            }
        }
    }
    return false;
}

IommulabSpaprWindow *qmp_x_iommulab_spapr_window_create(
    bool has_phb, uint32_t phb, uint8_t page_shift, uint64_t size,
    bool has_bus_offset, uint64_t bus_offset, const char *owner,
    Error **errp)
{
    SpaprPhbState *sphb = il_spapr_find_owned_phb(has_phb, phb, owner, errp);
    SpaprTceTable *tcet, *free_tcet = NULL;
    unsigned active = 0;
    uint64_t entries;
    int i;

    if (!sphb) {
        return NULL;
    }
    if (!il_spapr_valid_page_shift(page_shift)) {
        error_setg(errp, "page-shift %u is not one of 12, 16, 21, 24, 28, 34",
                   page_shift);
        return NULL;
    }
    if (!size || size & ((1ULL << page_shift) - 1)) {
        error_setg(errp, "size 0x%" PRIx64 " is not a non-zero multiple of "
                   "the page size 0x%llx", size, 1ULL << page_shift);
        return NULL;
    }
    entries = size >> page_shift;
    if (entries > IL_SPAPR_HOST_MAX_TCES) {
        error_setg(errp, "size 0x%" PRIx64 " needs %" PRIu64 " TCEs, more "
                   "than %u", size, entries, IL_SPAPR_HOST_MAX_TCES);
        return NULL;
    }
    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet && tcet->nb_table) {
            active++;
        } else if (tcet && !free_tcet) {
            free_tcet = tcet;
        }
    }
    if (!free_tcet) {
        error_setg(errp, "PHB %" PRIu32 " has no free LIOBN (%u windows "
                   "exist)", sphb->index, active);
        return NULL;
    }
    if (!has_bus_offset) {
        bus_offset = active ? sphb->dma64_win_addr : sphb->dma_win_addr;
    }
    if (bus_offset & ((1ULL << page_shift) - 1)) {
        error_setg(errp, "bus-offset 0x%" PRIx64 " is not aligned to the "
                   "page size", bus_offset);
        return NULL;
    }
    if (bus_offset + size < bus_offset) {
        error_setg(errp, "bus-offset + size exceeds 2^64");
        return NULL;
    }
    if (il_spapr_overlaps(sphb, bus_offset, size)) {
        error_setg(errp, "window [0x%" PRIx64 ", 0x%" PRIx64 ") overlaps an "
                   "existing window", bus_offset, bus_offset + size);
        return NULL;
    }

    free_tcet->skipping_replay = true;
    spapr_tce_table_enable(free_tcet, page_shift, bus_offset, entries);
    free_tcet->skipping_replay = false;
    if (!free_tcet->nb_table) {
        error_setg(errp, "a table of %" PRIu64 " TCEs does not fit in the "
                   "table-memory-limit of PHB %" PRIu32 " (%" PRIu64
                   " bytes, %" PRIu64 " in use)", entries, sphb->index,
                   sphb->tce_mem.limit, sphb->tce_mem.used);
        return NULL;
    }
    free_tcet->def_win = false;
    il_spapr_set_window_owner(free_tcet->liobn,
                              IOMMULAB_SPAPR_WINDOW_OWNER_HOST);
    il_spapr_hook_tables(sphb);
    il_spapr_window_faults_reset(free_tcet->liobn);
    trace_iommulab_spapr_host_create(sphb->index, free_tcet->liobn,
                                     bus_offset, page_shift, size);
    return il_spapr_window_info(free_tcet);
}

static SpaprTceTable *il_spapr_phb_window(SpaprPhbState *sphb, uint32_t liobn,
                                          Error **errp)
{
    SpaprTceTable *tcet;
    int i;

    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet && tcet->liobn == liobn) {
            if (!tcet->nb_table) {
                error_setg(errp, "window 0x%" PRIx32 " of PHB %" PRIu32
                           " is not enabled", liobn, sphb->index);
                return NULL;
            }
            return tcet;
        }
    }
    error_setg(errp, "PHB %" PRIu32 " has no window with LIOBN 0x%" PRIx32,
               sphb->index, liobn);
    return NULL;
}

void qmp_x_iommulab_spapr_window_remove(bool has_phb, uint32_t phb,
                                        uint32_t liobn, const char *owner,
                                        Error **errp)
{
    SpaprPhbState *sphb = il_spapr_find_owned_phb(has_phb, phb, owner, errp);
    SpaprTceTable *tcet;

    if (!sphb) {
        return;
    }
    tcet = il_spapr_phb_window(sphb, liobn, errp);
    if (!tcet || !il_spapr_host_may_change(tcet, "'liobn'", errp)) {
        return;
    }
    spapr_tce_table_disable(tcet);
    trace_iommulab_spapr_host_remove(sphb->index, liobn);
}

IommulabSpaprWindowList *qmp_x_iommulab_spapr_window_reset(bool has_phb,
                                                           uint32_t phb,
                                                           const char *owner,
                                                           Error **errp)
{
    SpaprPhbState *sphb = il_spapr_find_owned_phb(has_phb, phb, owner, errp);

    if (!sphb) {
        return NULL;
    }
    spapr_phb_dma_reset(sphb);
    il_spapr_set_phb_owner(sphb, IOMMULAB_SPAPR_WINDOW_OWNER_HOST);
    il_spapr_hook_tables(sphb);
    trace_iommulab_spapr_host_reset(sphb->index);
    return il_spapr_windows(sphb);
}

IommulabSpaprTces *qmp_x_iommulab_spapr_read_tces(uint32_t liobn,
                                                  bool has_start,
                                                  uint32_t start,
                                                  bool has_count,
                                                  uint32_t count,
                                                  Error **errp)
{
    SpaprTceTable *tcet;
    IommulabSpaprTces *r;
    uint64_t *buf;
    uint32_t i;

    if (!il_spapr_machine(errp)) {
        return NULL;
    }
    tcet = spapr_tce_find_by_liobn(liobn);
    if (!tcet) {
        error_setg(errp, "no TCE table with LIOBN 0x%" PRIx32, liobn);
        return NULL;
    }
    if (!tcet->nb_table) {
        error_setg(errp, "window 0x%" PRIx32 " is not enabled", liobn);
        return NULL;
    }
    if (!has_start) {
        start = 0;
    }
    if (start >= tcet->nb_table) {
        error_setg(errp, "start %" PRIu32 " is outside the window (%" PRIu32
                   " TCEs)", start, tcet->nb_table);
        return NULL;
    }
    if (!has_count) {
        count = MIN(tcet->nb_table - start, IL_SPAPR_READ_MAX);
    }
    if (count < 1 || count > IL_SPAPR_READ_MAX) {
        error_setg(errp, "count must be 1..%u", IL_SPAPR_READ_MAX);
        return NULL;
    }
    if (count > tcet->nb_table - start) {
        error_setg(errp, "TCEs %" PRIu32 "..%" PRIu64 " are outside the "
                   "window (%" PRIu32 " TCEs)", start,
                   (uint64_t)start + count - 1, tcet->nb_table);
        return NULL;
    }

    buf = g_new(uint64_t, count);
    for (i = 0; i < count; i++) {
        buf[i] = cpu_to_be64(spapr_tce_get(tcet, (uint64_t)start + i));
    }
    r = g_new0(IommulabSpaprTces, 1);
    r->liobn = liobn;
    r->start = start;
    r->count = count;
    r->data = g_base64_encode((const guchar *)buf, count * sizeof(buf[0]));
    g_free(buf);
    return r;
}

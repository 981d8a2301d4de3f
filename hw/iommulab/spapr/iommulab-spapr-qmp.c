/*
 * iommulab: QMP entry points of the x-iommulab-spapr-* commands, for every
 * system emulator.  They forward to the pseries backend when there is one.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab-spapr.h"
#include "iommulab-spapr.h"

static const IommulabSpaprBackend *spapr_backend;
static IommulabSpaprS2AttachFn *spapr_s2_attach;

void iommulab_spapr_set_stage2_attach(IommulabSpaprS2AttachFn *fn)
{
    spapr_s2_attach = fn;
}

void qmp_x_iommulab_spapr_stage2_attach(const char *stage2,
                                        IommulabSpaprS2Mode mode,
                                        bool has_domain, uint32_t domain,
                                        Error **errp)
{
    if (!spapr_s2_attach) {
        error_setg(errp, "this QEMU has no iommulab-spapr-s2 device "
                   "(qemu-system-ppc64 with pseries and iommulab needed)");
        return;
    }
    spapr_s2_attach(stage2, mode, has_domain, domain, errp);
}

void iommulab_spapr_set_backend(const IommulabSpaprBackend *backend)
{
    spapr_backend = backend;
}

static bool have_backend(Error **errp)
{
    if (!spapr_backend) {
        error_setg(errp, "x-iommulab-spapr commands need a pseries machine "
                   "(qemu-system-ppc64 -M pseries)");
        return false;
    }
    return true;
}

IommulabSpaprPhbList *qmp_x_iommulab_spapr_query_phbs(Error **errp)
{
    return have_backend(errp) ? spapr_backend->query_phbs(errp) : NULL;
}

IommulabSpaprDdwPolicy *qmp_x_iommulab_spapr_set_ddw_policy(
    bool has_phb, uint32_t phb, bool has_ddw, bool ddw,
    bool has_windows, uint32_t windows,
        bool has_page_shifts, uint8List *page_shifts,
    bool has_max_tces, uint64_t max_tces,
    bool has_dma64_offset, uint64_t dma64_offset,
    bool has_default_window_size, uint64_t default_window_size,
    bool has_refuse_create, bool refuse_create, Error **errp)
{
    if (!have_backend(errp)) {
        return NULL;
    }
    return spapr_backend->set_ddw_policy(has_phb, phb, has_ddw, ddw,
                                         has_windows, windows,
                                         has_page_shifts, page_shifts,
                                         has_max_tces, max_tces,
                                         has_dma64_offset, dma64_offset,
                                         has_default_window_size,
                                         default_window_size,
                                         has_refuse_create, refuse_create,
                                         errp);
}

IommulabSpaprWindow *qmp_x_iommulab_spapr_window_create(
    bool has_phb, uint32_t phb, uint8_t page_shift, uint64_t size,
    bool has_bus_offset, uint64_t bus_offset, Error **errp)
{
    if (!have_backend(errp)) {
        return NULL;
    }
    return spapr_backend->window_create(has_phb, phb, page_shift, size,
                                        has_bus_offset, bus_offset, errp);
}

void qmp_x_iommulab_spapr_window_remove(bool has_phb, uint32_t phb,
                                        uint32_t liobn, Error **errp)
{
    if (have_backend(errp)) {
        spapr_backend->window_remove(has_phb, phb, liobn, errp);
    }
}

IommulabSpaprWindowList *qmp_x_iommulab_spapr_window_reset(bool has_phb,
                                                           uint32_t phb,
                                                           Error **errp)
{
    return have_backend(errp) ?
           spapr_backend->window_reset(has_phb, phb, errp) : NULL;
}

IommulabSpaprTces *qmp_x_iommulab_spapr_read_tces(uint32_t liobn,
                                                  bool has_start,
                                                  uint32_t start,
                                                  bool has_count,
                                                  uint32_t count,
                                                  Error **errp)
{
    if (!have_backend(errp)) {
        return NULL;
    }
    return spapr_backend->read_tces(liobn, has_start, start, has_count, count,
                                    errp);
}

IommulabSpaprTceFaults *qmp_x_iommulab_spapr_query_faults(bool has_clear,
                                                          bool clear,
                                                          Error **errp)
{
    return have_backend(errp) ?
           spapr_backend->query_faults(has_clear, clear, errp) : NULL;
}

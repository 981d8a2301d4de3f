/*
 * iommulab: the x-iommulab-* commands in a QEMU without the iommulab
 * vIOMMU (CONFIG_IOMMULAB off): they fail with a clear error.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab.h"
#include "iommulab-payload.h"

static void iommulab_absent(Error **errp)
{
    error_setg(errp, "this QEMU has no iommulab-viommu device");
}

void qmp_x_iommulab_domain_alloc(const char *iommu, uint32_t domain,
                                 IommulabDomainType type, bool has_parent,
                                 uint32_t parent, bool has_s1_root,
                                 uint64_t s1_root, bool has_ias, uint8_t ias,
                                 const char *owner, Error **errp)
{
    iommulab_absent(errp);
}

void qmp_x_iommulab_domain_free(const char *iommu, uint32_t domain,
                                const char *owner, Error **errp)
{
    iommulab_absent(errp);
}

void qmp_x_iommulab_map(const char *iommu, uint32_t domain,
                        bool has_mappings, IommulabMappingList *mappings,
                        const char *data,
                        const char *fd, bool has_count, uint64_t count,
                        const char *owner, Error **errp)
{
    iommulab_payload_discard(fd);
    iommulab_absent(errp);
}

IommulabUnmapResult *qmp_x_iommulab_unmap(const char *iommu, uint32_t domain,
                                          bool has_ranges,
                                          IommulabRangeList *ranges,
                                          const char *data, const char *fd,
                                          bool has_count, uint64_t count,
                                          const char *owner, Error **errp)
{
    iommulab_payload_discard(fd);
    iommulab_absent(errp);
    return NULL;
}

void qmp_x_iommulab_attach(const char *iommu, const char *device,
                           IommulabAttachMode mode, bool has_domain,
                           uint32_t domain, const char *owner, Error **errp)
{
    iommulab_absent(errp);
}

void qmp_x_iommulab_invalidate(const char *iommu, bool has_domain,
                               uint32_t domain, bool has_iova, uint64_t iova,
                               bool has_size, uint64_t size, bool has_ranges,
                               IommulabRangeList *ranges, const char *data,
                               const char *fd, bool has_count, uint64_t count,
                               const char *owner, Error **errp)
{
    iommulab_payload_discard(fd);
    iommulab_absent(errp);
}

IommulabInfo *qmp_x_iommulab_query(const char *iommu, bool has_domain,
                                   uint32_t domain, bool has_start,
                                   uint64_t start, bool has_max_mappings,
                                   uint32_t max_mappings, bool has_mappings,
                                   bool mappings, bool has_packed,
                                   bool packed, Error **errp)
{
    iommulab_absent(errp);
    return NULL;
}

IommulabCounters *qmp_x_iommulab_query_counters(const char *iommu,
                                                Error **errp)
{
    iommulab_absent(errp);
    return NULL;
}

IommulabTranslation *qmp_x_iommulab_translate(const char *iommu,
                                              const char *device,
                                              uint64_t iova,
                                              IommulabAccess access,
                                              Error **errp)
{
    iommulab_absent(errp);
    return NULL;
}

IommulabFaults *qmp_x_iommulab_query_faults(const char *iommu, bool has_clear,
                                            bool clear, Error **errp)
{
    iommulab_absent(errp);
    return NULL;
}

IommulabHwInfo *qmp_x_iommulab_query_hw_info(const char *device, Error **errp)
{
    iommulab_absent(errp);
    return NULL;
}

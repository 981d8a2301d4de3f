/*
 * iommulab QMP commands.  The schema (iommulab.json) is part of every
 * qemu-system binary, so this file is always compiled; it finds the vIOMMU
 * through QOM and calls it through its class, so it links without it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab.h"
#include "qom/object.h"
#include "iommulab-viommu.h"

Object *iommulab_resolve(const char *name, const char *type,
                         const char *what, Error **errp)
{
    Object *obj = NULL;

    if (!strchr(name, '/')) {
        g_autofree char *path = g_strdup_printf("/machine/peripheral/%s",
                                                name);

        obj = object_resolve_path_type(path, type, NULL);
    }
    if (!obj) {
        obj = object_resolve_path_type(name, type, NULL);
    }
    if (!obj) {
        error_setg(errp, "'%s' is not %s (give its id or QOM path)", name,
                   what);
    }
    return obj;
}

static IOMMULabState *iommulab_find(const char *name, Error **errp)
{
    Object *obj = iommulab_resolve(name, TYPE_IOMMULAB_VIOMMU,
                                   "an " TYPE_IOMMULAB_VIOMMU, errp);

    return obj ? IOMMULAB_VIOMMU(obj) : NULL;
}

#define IOMMULAB_CALL(iommu, method, ...) \
    IOMMULabState *s = iommulab_find(iommu, errp); \
    if (!s) { \
        return; \
    } \
    IOMMULAB_VIOMMU_GET_CLASS(s)->method(s, __VA_ARGS__)

#define IOMMULAB_CALL_RET(iommu, method, ...) \
    IOMMULabState *s = iommulab_find(iommu, errp); \
    if (!s) { \
        return NULL; \
    } \
    return IOMMULAB_VIOMMU_GET_CLASS(s)->method(s, __VA_ARGS__)

void qmp_x_iommulab_domain_alloc(const char *iommu, uint32_t domain,
                                 IommulabDomainType type, bool has_parent,
                                 uint32_t parent, bool has_s1_root,
                                 uint64_t s1_root, bool has_ias, uint8_t ias,
                                 Error **errp)
{
    IOMMULAB_CALL(iommu, domain_alloc, domain, type, has_parent, parent,
                  has_s1_root, s1_root, has_ias, ias, errp);
}

void qmp_x_iommulab_domain_free(const char *iommu, uint32_t domain,
                                Error **errp)
{
    IOMMULAB_CALL(iommu, domain_free, domain, errp);
}

void qmp_x_iommulab_map(const char *iommu, uint32_t domain,
                        IommulabMappingList *mappings, Error **errp)
{
    IOMMULAB_CALL(iommu, map, domain, mappings, errp);
}

IommulabUnmapResult *qmp_x_iommulab_unmap(const char *iommu, uint32_t domain,
                                          IommulabRangeList *ranges,
                                          Error **errp)
{
    IOMMULAB_CALL_RET(iommu, unmap, domain, ranges, errp);
}

void qmp_x_iommulab_attach(const char *iommu, const char *device,
                           IommulabAttachMode mode, bool has_domain,
                           uint32_t domain, Error **errp)
{
    IOMMULAB_CALL(iommu, attach, device, mode, has_domain, domain, errp);
}

void qmp_x_iommulab_invalidate(const char *iommu, bool has_domain,
                               uint32_t domain, bool has_iova, uint64_t iova,
                               bool has_size, uint64_t size, Error **errp)
{
    IOMMULAB_CALL(iommu, invalidate, has_domain, domain, has_iova, iova,
                  has_size, size, errp);
}

IommulabInfo *qmp_x_iommulab_query(const char *iommu, Error **errp)
{
    IOMMULAB_CALL_RET(iommu, query, errp);
}

IommulabCounters *qmp_x_iommulab_query_counters(const char *iommu,
                                                Error **errp)
{
    IOMMULAB_CALL_RET(iommu, query_counters, errp);
}

IommulabTranslation *qmp_x_iommulab_translate(const char *iommu,
                                              const char *device,
                                              uint64_t iova,
                                              IommulabAccess access,
                                              Error **errp)
{
    IOMMULAB_CALL_RET(iommu, translate, device, iova, access, errp);
}

IommulabFaults *qmp_x_iommulab_query_faults(const char *iommu, bool has_clear,
                                            bool clear, Error **errp)
{
    IOMMULAB_CALL_RET(iommu, query_faults, has_clear && clear, errp);
}

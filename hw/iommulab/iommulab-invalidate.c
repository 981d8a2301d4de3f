/*
 * iommulab-viommu: who is told of a change of a domain's mappings (the
 * devices using it, directly or through a nested domain), and the
 * x-iommulab-invalidate command, which tells them (docs/qmp.md).  Under the
 * BQL; the engine under the device's lock, the IOMMU notifiers called
 * without it.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab.h"
#include "iommulab-internal.h"
#include "iommulab-payload.h"
#include "iommulab-owner.h"
#include "trace.h"

typedef struct IOMMULabUsers {
    IOMMULabState *s;
    const ILDomain *d;
    GArray *users;
} IOMMULabUsers;

static void iommulab_collect_user(void *opaque, uint32_t dev,
                                  const ILDomain *dom)
{
    IOMMULabUsers *u = opaque;
    IOMMULabUser user = {
        .dev = g_ptr_array_index(u->s->devs, dev),
        .child = dom != u->d,
    };

    g_array_append_val(u->users, user);
}

GArray *iommulab_domain_users(IOMMULabState *s, const ILDomain *d,
                              bool children)
{
    IOMMULabUsers u = {
        .s = s,
        .d = d,
        .users = g_array_new(false, false, sizeof(IOMMULabUser)),
    };

    if (d) {
        il_domain_for_each_dev(d, children, iommulab_collect_user, &u);
    }
    return u.users;
}

/* UNMAP notifications of an invalidation of @r[0..n) (n == 0: everything) */
static void iommulab_invalidate_notify(IOMMULabState *s, const ILDomain *d,
                                       GArray *users, const ILMapping *r,
                                       size_t n)
{
    for (unsigned j = 0; j < (d ? users->len : s->devs->len); j++) {
        IOMMULabDev *dev;
        bool child = false;

        if (d) {
            dev = g_array_index(users, IOMMULabUser, j).dev;
            child = g_array_index(users, IOMMULabUser, j).child;
        } else {
            /* every domain: every attached device */
            dev = g_ptr_array_index(s->devs, j);
            if (dev->mode != IL_MODE_DOMAIN) {
                continue;
            }
        }
        if (child || !n) {
            iommulab_dev_unmap(dev, 0, UINT64_MAX);
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            iommulab_dev_unmap(dev, r[i].iova, r[i].iova + (r[i].size - 1));
        }
    }
}

void qmp_x_iommulab_invalidate(const char *iommu, bool has_domain,
                               uint32_t domain, bool has_iova, uint64_t iova,
                               bool has_size, uint64_t size, bool has_ranges,
                               IommulabRangeList *ranges, const char *data,
                               const char *fd, bool has_count, uint64_t count,
                               const char *owner, Error **errp)
{
    g_autofree ILMapping *r = NULL;
    g_autoptr(GArray) users = NULL;
    ILDomain *d = NULL;
    IOMMULabState *s;
    size_t n = 0, i;
    ILError err;

    if (has_iova != has_size) {
        error_setg(errp, "'iova' and 'size' go together");
        iommulab_payload_discard(fd);
        return;
    }
    if (has_iova && (has_ranges || data || fd)) {
        error_setg(errp, "give one range as 'iova' and 'size', or several "
                   "as 'ranges', 'data' or 'fd', not both");
        iommulab_payload_discard(fd);
        return;
    }
    if (has_iova) {
        r = g_new0(ILMapping, 1);
        r->iova = iova;
        r->size = size;
        n = 1;
    } else if (has_ranges || data || fd) {
        r = iommulab_payload_ranges(has_ranges, ranges, true, "ranges", data,
                                    fd, has_count, count, &n, errp);
        if (!r) {
            return;
        }
    } else if (has_count) {
        error_setg(errp, "'count' goes with 'fd' or 'data'");
        return;
    }
    for (i = 0; i < n; i++) {
        err = il_check_range(r[i].iova, r[i].size, 64);
        if (err != IL_OK) {
            g_autofree char *which = has_iova ? g_strdup("range") :
                                     g_strdup_printf("ranges[%zu]", i);

            error_setg(errp, "%s iova 0x%" PRIx64 " size 0x%" PRIx64 ": %s",
                       which, r[i].iova, r[i].size, il_strerror(err));
            return;
        }
    }
    s = iommulab_find(iommu, errp);
    if (!s || !iommulab_owner_check(OBJECT(s), owner, errp)) {
        return;
    }
    if (!iommulab_lock_domain(s, has_domain, domain, &d, errp)) {
        return;
    }
    /* a paging domain's nested children go with it, entries and users */
    for (i = 0; i < n; i++) {
        il_invalidate_range(&s->engine, d, r[i].iova, r[i].size);
    }
    if (!n && d) {
        il_invalidate_domain(&s->engine, d);
    } else if (!n) {
        il_invalidate_all(&s->engine);
    }
    users = iommulab_domain_users(s, d, true);
    qemu_mutex_unlock(&s->lock);
    for (i = 0; i < MAX(n, 1); i++) {
        trace_iommulab_invalidate(has_domain, domain, n ? r[i].iova : 0,
                                  n ? r[i].iova + (r[i].size - 1) :
                                  UINT64_MAX);
    }
    iommulab_invalidate_notify(s, d, users, r, n);
}

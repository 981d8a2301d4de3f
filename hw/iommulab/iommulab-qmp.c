/*
 * iommulab: the one lookup of the lab's QMP commands.
 *
 * How a QMP command reaches a device: the command is implemented by the
 * code it drives (qmp_x_iommulab_* in the pieces of iommulab-viommu, the
 * x-iommulab-spapr-* ones in spapr/iommulab-spapr*.c), and a QEMU built
 * without that code links a stub that fails with a clear error
 * (iommulab-stub.c, spapr/iommulab-spapr-stub.c), as QEMU does for
 * query-pci without PCI.  Every command names its devices through
 * iommulab_resolve().  This file is in every system emulator.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qom/object.h"
#include "iommulab-viommu.h"
#include "iommulab-payload.h"

Object *iommulab_resolve(const char *name, const char *type,
                         const char *what, Error **errp)
{
    Object *obj = NULL;

    /* refused before any lookup, and never echoed: it may be megabytes */
    if (strnlen(name, IOMMULAB_NAME_MAX + 1) > IOMMULAB_NAME_MAX) {
        error_setg(errp, "a name longer than %d bytes is not %s (give its "
                   "id or QOM path)", IOMMULAB_NAME_MAX, what);
        return NULL;
    }
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

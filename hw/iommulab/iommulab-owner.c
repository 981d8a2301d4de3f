/*
 * iommulab: one owner per vIOMMU (iommulab-owner.h): the owner records
 * and the commands x-iommulab-owner-claim, -owner-release,
 * -owner-transfer and x-iommulab-query-owner.  In every system emulator
 * (the devices it serves are named by QOM type).
 *
 * An owner is a token and the QMP connection that last used it
 * (monitor_qmp_connection(), hw/qemu-patches/0019): the token says who may
 * change the device, the connection whether that client is still there.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab.h"
#include "monitor/monitor.h"
#include "hw/qdev-core.h"
#include "iommulab-viommu.h"
#include "iommulab-owner.h"
#include "trace.h"

typedef struct IOMMULabOwner {
    char *token;
    uint64_t connection;        /* that last used the token; 0: none */
} IOMMULabOwner;

/* Object * -> IOMMULabOwner *, for the devices that are owned now */
static GHashTable *owners;

static IOMMULabOwner *owner_of(Object *dev)
{
    return owners ? g_hash_table_lookup(owners, dev) : NULL;
}

static void owner_free(gpointer p)
{
    IOMMULabOwner *o = p;

    g_free(o->token);
    g_free(o);
}

static uint64_t current_connection(void)
{
    return monitor_qmp_connection(monitor_cur());
}

static bool owner_connected(const IOMMULabOwner *o)
{
    return monitor_qmp_connection_open(o->connection);
}

static void owner_refuse(Object *dev, const IOMMULabOwner *o, Error **errp)
{
    g_autofree char *path = object_get_canonical_path(dev);

    error_setg(errp, "%s is owned by '%s' (%s): pass its token as 'owner'",
               path, o->token, owner_connected(o) ?
               "its QMP connection is open" :
               "its QMP connection is closed: x-iommulab-owner-claim with "
               "'force' takes it over");
}

bool iommulab_owner_check(Object *dev, const char *owner, Error **errp)
{
    IOMMULabOwner *o = owner_of(dev);

    if (!o) {
        return true;
    }
    if (!owner || strcmp(owner, o->token)) {
        owner_refuse(dev, o, errp);
        return false;
    }
    /* the token moves with the client that uses it (a handed-over one) */
    o->connection = current_connection();
    return true;
}

void iommulab_owner_forget(Object *dev)
{
    if (owners) {
        g_hash_table_remove(owners, dev);
    }
}

/* What can be owned: the lab's vIOMMUs and a pseries PHB's host side */
static Object *owner_device(const char *device, Error **errp)
{
    Object *obj = iommulab_resolve(device, TYPE_DEVICE,
                                   "an iommulab vIOMMU or a pseries PHB",
                                   errp);

    if (obj && !object_dynamic_cast(obj, TYPE_IOMMULAB_VIOMMU) &&
        !object_dynamic_cast(obj, "spapr-pci-host-bridge")) {
        error_setg(errp, "'%s' is not an iommulab vIOMMU or a pseries PHB",
                   device);
        return NULL;
    }
    return obj;
}

static bool token_valid(const char *what, const char *token, Error **errp)
{
    size_t len = strnlen(token, IOMMULAB_OWNER_MAX + 1);

    if (!len || len > IOMMULAB_OWNER_MAX) {
        error_setg(errp, "'%s' must be 1 to %d bytes", what,
                   IOMMULAB_OWNER_MAX);
        return false;
    }
    return true;
}

static IommulabOwnerInfo *owner_info(Object *dev)
{
    IommulabOwnerInfo *info = g_new0(IommulabOwnerInfo, 1);
    IOMMULabOwner *o = owner_of(dev);

    info->device = object_get_canonical_path(dev);
    if (o) {
        info->owner = g_strdup(o->token);
        info->connected = owner_connected(o);
    }
    return info;
}

IommulabOwnerInfo *qmp_x_iommulab_owner_claim(const char *device,
                                              const char *owner,
                                              bool has_force, bool force,
                                              Error **errp)
{
    Object *dev = owner_device(device, errp);
    IOMMULabOwner *o;

    if (!dev || !token_valid("owner", owner, errp)) {
        return NULL;
    }
    o = owner_of(dev);
    if (o && strcmp(o->token, owner)) {
        if (!force) {
            owner_refuse(dev, o, errp);
            return NULL;
        }
        if (owner_connected(o)) {
            g_autofree char *path = object_get_canonical_path(dev);

            error_setg(errp, "%s is owned by '%s', whose QMP connection is "
                       "still open: 'force' takes over only from an owner "
                       "that is gone", path, o->token);
            return NULL;
        }
        trace_iommulab_owner_takeover(device, o->token, owner);
    }
    if (!owners) {
        owners = g_hash_table_new_full(NULL, NULL, NULL, owner_free);
    }
    o = g_new0(IOMMULabOwner, 1);
    o->token = g_strdup(owner);
    o->connection = current_connection();
    g_hash_table_replace(owners, dev, o);
    trace_iommulab_owner_claim(device, owner, o->connection);
    return owner_info(dev);
}

void qmp_x_iommulab_owner_release(const char *device, const char *owner,
                                  Error **errp)
{
    Object *dev = owner_device(device, errp);

    if (!dev || !iommulab_owner_check(dev, owner, errp)) {
        return;
    }
    if (!owner_of(dev)) {
        error_setg(errp, "'%s' is not owned", device);
        return;
    }
    iommulab_owner_forget(dev);
    trace_iommulab_owner_release(device, owner);
}

void qmp_x_iommulab_owner_transfer(const char *device, const char *owner,
                                   const char *to, Error **errp)
{
    Object *dev = owner_device(device, errp);
    IOMMULabOwner *o;

    if (!dev || !token_valid("to", to, errp) ||
        !iommulab_owner_check(dev, owner, errp)) {
        return;
    }
    o = owner_of(dev);
    if (!o) {
        error_setg(errp, "'%s' is not owned: claim it", device);
        return;
    }
    /* the connection stays until the new owner uses its token */
    g_free(o->token);
    o->token = g_strdup(to);
    trace_iommulab_owner_transfer(device, owner, to);
}

IommulabOwnerInfo *qmp_x_iommulab_query_owner(const char *device,
                                              Error **errp)
{
    Object *dev = owner_device(device, errp);

    return dev ? owner_info(dev) : NULL;
}

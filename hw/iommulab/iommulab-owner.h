/*
 * iommulab: one owner per vIOMMU (docs/qmp.md "Ownership",
 * docs/reliability.md).
 *
 * A control plane claims a device (an iommulab-viommu, an
 * iommulab-spapr-s2, or a pseries PHB's host side) with a token of its
 * choosing (x-iommulab-owner-claim).  While it is owned, every command
 * that changes the device's state must carry that token as 'owner' or is
 * refused with an error naming the owner.  Read-only queries stay open.
 * The owner can release the device or transfer it to another token; once
 * the QMP connection that last used the token is closed, another client
 * can take the device over with 'force'.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef HW_IOMMULAB_OWNER_H
#define HW_IOMMULAB_OWNER_H

#include "qom/object.h"

/* Longest owner token */
#define IOMMULAB_OWNER_MAX 64

/*
 * For a command that changes the state of @dev (an ownable device): true
 * if @dev is not owned, or @owner (the command's 'owner' argument, NULL if
 * absent) is its owner's token; the current QMP connection then becomes
 * the owner's (a token passed to a new client moves with it).  Otherwise
 * false, with an error naming the owner and whether its connection is
 * still open.  Under the BQL.
 */
bool iommulab_owner_check(Object *dev, const char *owner, Error **errp);

/* Forget @dev's owner (@dev is being destroyed) */
void iommulab_owner_forget(Object *dev);

#endif

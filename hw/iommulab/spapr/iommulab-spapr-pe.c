/*
 * iommulab: a pseries PE's host-side state: who made each DMA window
 * (owner host or guest: guest windows are read-only to the host side)
 * and the PE's BLOCKED state (x-iommulab-spapr-set-blocked).
 *
 * Owners: windows are the host's (the platform's) unless the guest made
 * them with RTAS, so the lab keeps the set of guest-made LIOBNs.  The
 * RTAS hooks add to it, the host side's create, remove and reset take
 * from it, and a machine reset empties it (its default windows are the
 * platform's).
 *
 * BLOCKED: a flag of each of the PHB's TCE tables (patch 0018), so that
 * it covers the windows created later too; the translation refuses every
 * access while it is set, and the fault hook records the reason.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-commands-iommulab-spapr.h"
#include "system/reset.h"
#include "hw/iommulab/iommulab-owner.h"
#include "iommulab-spapr-internal.h"
#include "trace.h"

IommulabSpaprWindowOwner il_spapr_window_owner(uint32_t liobn)
{
    bool guest;

    qemu_mutex_lock(&il_spapr_state.lock);
    guest = g_hash_table_contains(il_spapr_state.guest_windows,
                                  GUINT_TO_POINTER(liobn));
    qemu_mutex_unlock(&il_spapr_state.lock);
    return guest ? IOMMULAB_SPAPR_WINDOW_OWNER_GUEST :
                   IOMMULAB_SPAPR_WINDOW_OWNER_HOST;
}

void il_spapr_set_window_owner(uint32_t liobn, IommulabSpaprWindowOwner owner)
{
    qemu_mutex_lock(&il_spapr_state.lock);
    if (owner == IOMMULAB_SPAPR_WINDOW_OWNER_GUEST) {
        g_hash_table_add(il_spapr_state.guest_windows,
                         GUINT_TO_POINTER(liobn));
    } else {
        g_hash_table_remove(il_spapr_state.guest_windows,
                            GUINT_TO_POINTER(liobn));
    }
    qemu_mutex_unlock(&il_spapr_state.lock);
}

void il_spapr_set_phb_owner(SpaprPhbState *sphb,
                            IommulabSpaprWindowOwner owner)
{
    SpaprTceTable *tcet;
    int i;

    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet) {
            il_spapr_set_window_owner(tcet->liobn,
                                      tcet->nb_table ? owner :
                                      IOMMULAB_SPAPR_WINDOW_OWNER_HOST);
        }
    }
}

bool il_spapr_host_may_change(SpaprTceTable *tcet, const char *what,
                              Error **errp)
{
    if (il_spapr_window_owner(tcet->liobn) ==
        IOMMULAB_SPAPR_WINDOW_OWNER_GUEST) {
        error_setg(errp, "%s: window 0x%" PRIx32 " was made by the guest "
                   "(RTAS); guest windows are read-only to the host side "
                   "(x-iommulab-spapr-window-reset takes the PE back)",
                   what, tcet->liobn);
        return false;
    }
    return true;
}

SpaprPhbState *il_spapr_find_owned_phb(bool has_phb, uint32_t index,
                                       const char *owner, Error **errp)
{
    SpaprPhbState *sphb = il_spapr_find_phb(has_phb, index, errp);

    if (sphb && !iommulab_owner_check(OBJECT(sphb), owner, errp)) {
        return NULL;
    }
    return sphb;
}

bool il_spapr_blocked(SpaprPhbState *sphb)
{
    SpaprTceTable *tcet = il_spapr_table(sphb, 0);

    return tcet && qatomic_read(&tcet->blocked);
}

void qmp_x_iommulab_spapr_set_blocked(bool has_phb, uint32_t phb,
                                      bool blocked, const char *owner,
                                      Error **errp)
{
    SpaprPhbState *sphb = il_spapr_find_owned_phb(has_phb, phb, owner, errp);
    SpaprTceTable *tcet;
    int i;

    if (!sphb) {
        return;
    }
    /* the faults of a blocked PE are recorded: every table is hooked */
    il_spapr_hook_tables(sphb);
    for (i = 0; i < SPAPR_PCI_DMA_MAX_WINDOWS; i++) {
        tcet = il_spapr_table(sphb, i);
        if (tcet) {
            spapr_tce_table_set_blocked(tcet, blocked);
        }
    }
    trace_iommulab_spapr_set_blocked(sphb->index, blocked);
}

/* Machine reset: the default windows it makes are the platform's */
static void il_spapr_owner_reset(void *opaque)
{
    qemu_mutex_lock(&il_spapr_state.lock);
    g_hash_table_remove_all(il_spapr_state.guest_windows);
    qemu_mutex_unlock(&il_spapr_state.lock);
}

void il_spapr_pe_init(void)
{
    il_spapr_state.guest_windows = g_hash_table_new(NULL, NULL);
}

/* Once the machine exists (reset handlers are QOM objects) */
void il_spapr_pe_machine_done(void)
{
    qemu_register_reset(il_spapr_owner_reset, NULL);
}

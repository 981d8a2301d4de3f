/*
 * iommulab pseries internals: what the pieces of the x-iommulab-spapr-*
 * backend share (iommulab-spapr.c lists them).  Not for other devices:
 * they use iommulab-spapr.h.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef HW_IOMMULAB_SPAPR_INTERNAL_H
#define HW_IOMMULAB_SPAPR_INTERNAL_H

#include "qemu/thread.h"
#include "hw/ppc/spapr.h"
#include "hw/pci-host/spapr.h"
#include "hw/iommulab/iommulab-viommu.h"
#include "iommulab-spapr.h"

/* Events waiting for the bottom half; more are counted as suppressed */
#define IL_SPAPR_EVENTS_PENDING 32

typedef struct ILSpaprEvent {
    ILFault f;
    uint64_t suppressed;
} ILSpaprEvent;

typedef struct ILSpaprState {
    QemuMutex lock;
    /* Per PHB index: refuse every ibm,create-pe-dma-window */
    GHashTable *refuse_create;
    /* Per LIOBN: faults since the window was enabled */
    GHashTable *window_faults;
    /* LIOBNs of the windows the guest made (RTAS): read-only to the host */
    GHashTable *guest_windows;
    /* Per PHB index: its TCE fault queue (ILFaultQueue *) */
    GHashTable *phb_faults;
    /* Events not sent yet (the bottom half sends them) */
    ILSpaprEvent pending[IL_SPAPR_EVENTS_PENDING];
    uint32_t npending;
    uint64_t lost;              /* pending overflowed: added to the next */
    bool bh_scheduled;
} ILSpaprState;

/* The lab's pseries state: one per process (iommulab-spapr.c) */
extern ILSpaprState il_spapr_state;

/* ---- lookups and listings (iommulab-spapr.c) ---- */

/* The pseries machine, or an error naming what this machine is */
SpaprMachineState *il_spapr_machine(Error **errp);

/* PHB @index (0 without @has_phb), or an error */
/* The pseries PHB with index @index; NULL if none (or not pseries) */
SpaprPhbState *il_spapr_phb_by_index(uint32_t index);
SpaprPhbState *il_spapr_find_phb(bool has_phb, uint32_t index,
                                 Error **errp);

/* The PHB's TCE tables, enabled or not; NULL where there is none. */
SpaprTceTable *il_spapr_table(SpaprPhbState *sphb, int i);
unsigned il_spapr_num_tables(SpaprPhbState *sphb);

IommulabSpaprWindow *il_spapr_window_info(SpaprTceTable *tcet);
IommulabSpaprWindowList *il_spapr_windows(SpaprPhbState *sphb);
bool il_spapr_refuses_create(SpaprPhbState *sphb);
uint8List *il_spapr_page_shift_list(uint64_t mask);
IommulabSpaprDdwPolicy *il_spapr_policy(SpaprPhbState *sphb);

/* ---- host windows (iommulab-spapr-windows.c) ---- */

/* What the host side may create and read back (host-windows) */
IommulabHwSpaprHostWindows *il_spapr_host_windows(void);

/* TCEs per x-iommulab-spapr-put-tces (reported: host-windows) */
#define IL_SPAPR_PUT_MAX        (1u << 19)

/* ---- window owners and BLOCKED (iommulab-spapr-pe.c) ---- */

IommulabSpaprWindowOwner il_spapr_window_owner(uint32_t liobn);
void il_spapr_set_window_owner(uint32_t liobn,
                               IommulabSpaprWindowOwner owner);
/* Every enabled window of the PHB to @owner (disabled ones: host) */
void il_spapr_set_phb_owner(SpaprPhbState *sphb,
                            IommulabSpaprWindowOwner owner);
/* Whether the host side may change window @tcet (not the guest's) */
bool il_spapr_host_may_change(SpaprTceTable *tcet, const char *what,
                              Error **errp);
bool il_spapr_blocked(SpaprPhbState *sphb);
/*
 * il_spapr_find_phb() for a command that changes the PHB's host side: also
 * refused unless @owner is the token of its owner, if it has one
 * (iommulab-owner.h)
 */
SpaprPhbState *il_spapr_find_owned_phb(bool has_phb, uint32_t index,
                                       const char *owner, Error **errp);
void il_spapr_pe_init(void);
void il_spapr_pe_machine_done(void);

/* ---- TCE faults (iommulab-spapr-faults.c) ---- */

/* Faults of window @liobn since it was enabled; reset when it is */
uint64_t il_spapr_window_faults(uint32_t liobn);
void il_spapr_window_faults_reset(uint32_t liobn);

/* The PHB's fault queue, created on first use (under il_spapr_state.lock) */
ILFaultQueue *il_spapr_queue(uint32_t phb, bool create);
void il_spapr_free_queue(gpointer q);

/* Record the faults of the PHB's TCE tables (each table, once enabled) */
void il_spapr_hook_tables(SpaprPhbState *sphb);
void il_spapr_hook_all_tables(SpaprMachineState *spapr);

#endif

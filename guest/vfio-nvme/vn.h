/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfio-nvme: a small userspace NVMe driver over VFIO (iommufd cdev, type1
 * container, sPAPR TCE v2 container).  Shared declarations.
 */
#ifndef VFIO_NVME_VN_H
#define VFIO_NVME_VN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum vn_iommu {
    VN_IOMMUFD,     /* /dev/vfio/devices/vfioN + /dev/iommu */
    VN_TYPE1,       /* /dev/vfio/vfio container, VFIO_TYPE1v2_IOMMU */
    VN_SPAPR,       /* /dev/vfio/vfio container, VFIO_SPAPR_TCE_v2_IOMMU + DDW */
};

/* What the DMA layer knows: device fd, how buffers are mapped. */
struct vn_dma {
    enum vn_iommu mode;
    char pci[32];
    int dev_fd;
    /* iommufd */
    int iommufd;
    uint32_t devid, ioas_id, hwpt_id;
    bool attached;
    bool joined;        /* iommufd and IOAS borrowed from the first device */
    /* containers */
    int container_fd, group_fd, group;
    /* sPAPR: the window the buffers go to */
    uint64_t win_start, win_size, win_next;
    unsigned win_shift;
    bool win_created;
    /* type1: next free IOVA */
    uint64_t t1_next, t1_end;
    /* what was mapped, for teardown */
    struct { void *va; size_t len; uint64_t iova; } maps[4];
    int nr_maps;
    char info[256]; /* how the IOVA space looked, for the report */
};

/* A DMA buffer: host memory + the IOVA the device sees (fixed_iova: asked for). */

struct vn_buf {
    void *va;
    size_t len;
    uint64_t iova;
    bool fixed_iova;
};

/* Controller state. */
struct vn_ctrl {
    struct vn_dma *dma; /* how its buffers are mapped; its device fd */
    volatile uint8_t *bar;  /* BAR0 mapping: device memory, every access counts */
    size_t bar_len;
    int bar_fd;         /* no mmap: registers through pread/pwrite of the region */
    uint64_t bar_off;
    uint32_t dstrd;     /* doorbell stride in bytes */
    uint32_t mqes;      /* max queue entries (CAP.MQES + 1) */
    uint32_t timeout_ms;
    struct vn_buf ctl;  /* queues, identify page, PRP lists */
    uint8_t *asq, *acq, *iosq, *iocq, *ident;
    uint64_t asq_iova, acq_iova, iosq_iova, iocq_iova, ident_iova;
    uint8_t *prp;       /* qd pages of PRP lists */
    uint64_t prp_iova;
    uint32_t aq_size, ioq_size;
    uint32_t asq_tail, acq_head, iosq_tail, iocq_head;
    int acq_phase, iocq_phase;
    uint16_t next_cid;
    bool enabled, ioq_created;
    /* identify */
    char model[41], serial[21], fw[9];
    uint32_t mdts_bytes;  /* 0 = no limit */
    uint32_t nn;
    uint64_t nsze;
    uint32_t lba_size;
    uint16_t vid;
};

/* One driven function: [0] is --pci, the others came with --with. */
struct vn_dev {
    struct vn_dma dma;
    struct vn_ctrl ctrl;
    struct vn_buf data;
    uint8_t *state;
    uint64_t wns, rns, verified, mismatched, bad_chunks, failed_chunks;
    int rc;
    char err[512];
};
#define VN_MAX_DEVS 4

/* The I/O every function does: the same on each, its own namespace and buffer. */
struct vn_io {
    uint64_t lba0, count, seed;
    uint32_t bs, qd;
};

/* main.c */
void vn_fail(const char *stage, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
uint64_t vn_now_ns(void);

/* sysfs.c */
#define SYSPCI "/sys/bus/pci/devices"
/* The NVMe function is there and held by vfio-pci, or the run fails saying why. */
void vn_check_owned(const char *pci);
/* basename of the symlink SYSPCI/pci/link, or "" */
void vn_link_name(const char *pci, const char *link, char *out, size_t len);
uint64_t vn_phys(const void *va); /* guest physical address (pagemap), 0 if unknown */

/* dma.c */
void vn_dma_open(struct vn_dma *d, const char *pci, enum vn_iommu mode, uint64_t want);
/* iommufd only: bind pci to first's iommufd, attach it to first's HWPT. */
void vn_dma_join(struct vn_dma *d, const char *pci, const struct vn_dma *first);
void vn_dma_map(struct vn_dma *d, struct vn_buf *b);
void vn_dma_close(struct vn_dma *d);

/* nvme.c */
void vn_ctrl_open(struct vn_ctrl *c, struct vn_dma *d, uint32_t qd);
void vn_ctrl_identify(struct vn_ctrl *c);
void vn_ctrl_create_ioq(struct vn_ctrl *c);
/*
 * Run count commands of bs bytes each from lba0 with at most qd in flight,
 * command i's data at data->iova + i * bs; state[i] says how it ended.
 * Returns 0, or -1 with err describing the first failure (a failed command
 * stops submission; those in flight are drained).
 */
int vn_ctrl_io(struct vn_ctrl *c, bool write, uint64_t lba0, uint32_t bs,
               uint64_t count, uint32_t qd, const struct vn_buf *data,
               uint8_t *state, char *err, size_t errlen);
/* phase.c */
void vn_fill_pattern(struct vn_dev *v, const struct vn_io *io);
/* The write or read phase on devs[0..n) at once; each one's rc, err, state, time. */
void vn_run_phase(struct vn_dev *devs, int n, const struct vn_io *io, bool write);
void vn_verify(struct vn_dev *v, const struct vn_io *io);
bool vn_dev_ok(const struct vn_dev *v);

#define VN_NOT_RUN 0
#define VN_DONE 1
#define VN_FAILED 2
void vn_ctrl_close(struct vn_ctrl *c);

#endif

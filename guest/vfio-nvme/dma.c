/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfio-nvme DMA layer: owning the PCI function through VFIO and mapping the
 * driver's buffers for it, three ways:
 *   iommufd  /dev/vfio/devices/vfioN bound to /dev/iommu, an IOAS of its own,
 *            buffers mapped with IOMMU_IOAS_MAP (the kernel picks the IOVA
 *            inside the ranges the attached device allows); more functions
 *            can join: bound to the same iommufd, attached to the same HWPT
 *            (one iommu_domain for all), their buffers in the same IOAS;
 *   type1    the legacy container, VFIO_TYPE1v2_IOMMU, IOVAs from the
 *            container's reported ranges;
 *   spapr    the legacy container, VFIO_SPAPR_TCE_v2_IOMMU: memory
 *            preregistered, a dynamic DMA window created, TCEs mapped in it.
 * Every refusal says what is wrong with the device or the kernel.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "uapi.h"
#include "vn.h"

static int open_dev(const char *path, const char *what)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);

    if (fd < 0) {
        int e = errno;
        vn_fail("open", "cannot open %s (%s): %s%s", path, what, strerror(e),
                e == EBUSY ? " (another process or the kernel owns it)" : "");
    }
    return fd;
}

/* The function's VFIO device cdev, opened, and bound to d->iommufd. */
static void bind_cdev(struct vn_dma *d)
{
    char dir[PATH_MAX], cdev[PATH_MAX] = "", devattr[PATH_MAX + 64] = "";
    struct dirent *e;
    DIR *dp;
    struct vn_vfio_device_bind_iommufd bind = { .argsz = sizeof(bind) };

    snprintf(dir, sizeof(dir), SYSPCI "/%s/vfio-dev", d->pci);
    dp = opendir(dir);
    if (!dp) {
        vn_fail("cdev", "%s has no VFIO device cdev (%s missing: the kernel has no "
                "CONFIG_VFIO_DEVICE_CDEV, or vfio-pci does not hold it)", d->pci, dir);
    }
    while ((e = readdir(dp))) {
        if (!strncmp(e->d_name, "vfio", 4) && strlen(e->d_name) < 32) {
            snprintf(cdev, sizeof(cdev), "/dev/vfio/devices/%s", e->d_name);
            snprintf(devattr, sizeof(devattr), "%s/%s/dev", dir, e->d_name);
        }
    }
    closedir(dp);
    if (!cdev[0]) {
        vn_fail("cdev", "%s lists no vfioN device", dir);
    }
    /* the vfio-dev device exists either way; only a cdev gives it a dev_t */
    if (access(devattr, F_OK) < 0) {
        vn_fail("cdev", "no VFIO device cdev for %s: %s has no dev_t (the kernel has no "
                "CONFIG_VFIO_DEVICE_CDEV)", d->pci, cdev + strlen("/dev/vfio/devices/"));
    }
    if (access(cdev, F_OK) < 0) {
        vn_fail("cdev", "missing cdev node %s (sysfs gives it a dev_t; devtmpfs has no "
                "node)", cdev);
    }
    d->dev_fd = open_dev(cdev, "VFIO device cdev");
    if (d->iommufd < 0) {
        if (access("/dev/iommu", F_OK) < 0) {
            vn_fail("iommufd", "no /dev/iommu: the kernel has no CONFIG_IOMMUFD");
        }
        d->iommufd = open_dev("/dev/iommu", "iommufd");
    }
    bind.iommufd = d->iommufd;
    if (ioctl(d->dev_fd, VN_VFIO_DEVICE_BIND_IOMMUFD, &bind) < 0) {
        int e = errno;
        vn_fail("bind", "VFIO_DEVICE_BIND_IOMMUFD %s: %s%s", cdev, strerror(e),
                e == EPERM ? " (its MSIs are not isolated, e.g. no interrupt remapping: "
                "iommufd.allow_unsafe_interrupts=1 allows it)" : "");
    }
    d->devid = bind.out_devid;
}

/*
 * Attach the bound device to pt_id (an IOAS: iommufd picks or makes the
 * domain; a HWPT: exactly that domain) and describe the IOAS's ranges.
 */
static void attach_pt(struct vn_dma *d, uint32_t pt_id, const char *what)
{
    struct vn_vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = pt_id };
    struct vn_iommu_iova_range ranges[8];
    struct vn_iommu_ioas_iova_ranges rq = {
        .size = sizeof(rq), .num_iovas = 8, .ioas_id = d->ioas_id,
        .allowed_iovas = (uintptr_t)ranges,
    };
    size_t off = 0;

    if (ioctl(d->dev_fd, VN_VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at) < 0) {
        vn_fail("attach", "VFIO_DEVICE_ATTACH_IOMMUFD_PT %s %u: %s", what, pt_id,
                strerror(errno));
    }
    d->attached = true;
    d->hwpt_id = at.pt_id;
    if (ioctl(d->iommufd, VN_IOMMU_IOAS_IOVA_RANGES, &rq) < 0) {
        vn_fail("ioas", "IOMMU_IOAS_IOVA_RANGES: %s", strerror(errno));
    }
    off += snprintf(d->info, sizeof(d->info), "devid %u ioas %u hwpt %u%s ranges",
                    d->devid, d->ioas_id, d->hwpt_id, d->joined ? " (joined)" : "");
    for (uint32_t i = 0; i < rq.num_iovas && i < 8 && off < sizeof(d->info); i++) {
        off += snprintf(d->info + off, sizeof(d->info) - off, " 0x%llx-0x%llx",
                        (unsigned long long)ranges[i].start,
                        (unsigned long long)ranges[i].last);
    }
}

static void open_iommufd(struct vn_dma *d)
{
    struct vn_iommu_ioas_alloc alloc = { .size = sizeof(alloc) };

    bind_cdev(d);
    if (ioctl(d->iommufd, VN_IOMMU_IOAS_ALLOC, &alloc) < 0) {
        vn_fail("ioas", "IOMMU_IOAS_ALLOC: %s", strerror(errno));
    }
    d->ioas_id = alloc.out_ioas_id;
    attach_pt(d, d->ioas_id, "ioas");
}

void vn_dma_join(struct vn_dma *d, const char *pci, const struct vn_dma *first)
{
    memset(d, 0, sizeof(*d));
    d->mode = VN_IOMMUFD;
    d->dev_fd = d->container_fd = d->group_fd = -1;
    d->iommufd = first->iommufd;
    d->ioas_id = first->ioas_id;
    d->joined = true;
    snprintf(d->pci, sizeof(d->pci), "%s", pci);
    vn_check_owned(pci);
    bind_cdev(d);
    attach_pt(d, first->hwpt_id, "hwpt");
}

/* The group, a container with the given IOMMU type, the device fd. */
static void open_container(struct vn_dma *d, int type, const char *tname)
{
    char grp[32], path[64];
    struct vfio_group_status st = { .argsz = sizeof(st) };

    vn_link_name(d->pci, "iommu_group", grp, sizeof(grp));
    if (!grp[0]) {
        vn_fail("group", "%s is in no IOMMU group (no IOMMU translates it)", d->pci);
    }
    d->group = atoi(grp);
    d->container_fd = open_dev("/dev/vfio/vfio", "VFIO container");
    if (ioctl(d->container_fd, VFIO_GET_API_VERSION) != VFIO_API_VERSION) {
        vn_fail("container", "/dev/vfio/vfio speaks another VFIO API version");
    }
    if (ioctl(d->container_fd, VFIO_CHECK_EXTENSION, type) <= 0) {
        vn_fail("container", "the container has no %s IOMMU in this kernel", tname);
    }
    snprintf(path, sizeof(path), "/dev/vfio/%d", d->group);
    if (access(path, F_OK) < 0) {
        vn_fail("group", "no group device %s (kernel without the VFIO group API?)", path);
    }
    d->group_fd = open_dev(path, "VFIO group");
    if (ioctl(d->group_fd, VFIO_GROUP_GET_STATUS, &st) < 0) {
        vn_fail("group", "VFIO_GROUP_GET_STATUS: %s", strerror(errno));
    }
    if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE)) {
        vn_fail("group", "IOMMU group %d is not viable: another device in it is bound to "
                "a host driver", d->group);
    }
    if (ioctl(d->group_fd, VFIO_GROUP_SET_CONTAINER, &d->container_fd) < 0) {
        vn_fail("group", "VFIO_GROUP_SET_CONTAINER: %s", strerror(errno));
    }
    if (ioctl(d->container_fd, VFIO_SET_IOMMU, type) < 0) {
        vn_fail("container", "VFIO_SET_IOMMU %s: %s", tname, strerror(errno));
    }
    d->dev_fd = ioctl(d->group_fd, VFIO_GROUP_GET_DEVICE_FD, d->pci);
    if (d->dev_fd < 0) {
        vn_fail("group", "VFIO_GROUP_GET_DEVICE_FD %s: %s", d->pci, strerror(errno));
    }
}

static void open_type1(struct vn_dma *d)
{
    char buf[4096];
    struct vfio_iommu_type1_info *info = (void *)buf;
    struct vfio_info_cap_header *h;

    open_container(d, VFIO_TYPE1v2_IOMMU, "type1v2");
    memset(buf, 0, sizeof(buf));
    info->argsz = sizeof(buf);
    if (ioctl(d->container_fd, VFIO_IOMMU_GET_INFO, info) < 0) {
        vn_fail("container", "VFIO_IOMMU_GET_INFO: %s", strerror(errno));
    }
    /* The first allowed range from 1 MiB up holds the buffers. */
    d->t1_next = 0;
    if ((info->flags & VFIO_IOMMU_INFO_CAPS) && info->cap_offset) {
        for (uint32_t o = info->cap_offset; o && o + sizeof(*h) <= sizeof(buf);
             o = h->next) {
            h = (void *)(buf + o);
            if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
                struct vfio_iommu_type1_info_cap_iova_range *r = (void *)h;
                for (uint32_t i = 0; i < r->nr_iovas; i++) {
                    uint64_t s = r->iova_ranges[i].start < 0x100000 ?
                                 0x100000 : r->iova_ranges[i].start;
                    if (r->iova_ranges[i].end > s + (64u << 20)) {
                        d->t1_next = s;
                        d->t1_end = r->iova_ranges[i].end;
                        break;
                    }
                }
            }
            if (!h->next) {
                break;
            }
        }
    }
    if (!d->t1_next) { /* no range capability: the low 4 GiB minus the MSI window */
        d->t1_next = 0x100000;
        d->t1_end = 0xfedfffffULL;
    }
    snprintf(d->info, sizeof(d->info),
             "group %d type1v2 iova 0x%llx-0x%llx pgsizes 0x%llx", d->group,
             (unsigned long long)d->t1_next, (unsigned long long)d->t1_end,
             (unsigned long long)info->iova_pgsizes);
}

static void open_spapr(struct vn_dma *d, uint64_t want)
{
    struct vfio_iommu_spapr_tce_info info = { .argsz = sizeof(info) };
    struct vfio_iommu_spapr_tce_create cr = { .argsz = sizeof(cr) };
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t size = 1ULL << 24;

    open_container(d, VFIO_SPAPR_TCE_v2_IOMMU, "sPAPR TCE v2");
    if (ioctl(d->container_fd, VFIO_IOMMU_SPAPR_TCE_GET_INFO, &info) < 0) {
        vn_fail("spapr", "VFIO_IOMMU_SPAPR_TCE_GET_INFO: %s", strerror(errno));
    }
    if (!(info.flags & VFIO_IOMMU_SPAPR_INFO_DDW) ||
        !info.ddw.max_dynamic_windows_supported) {
        vn_fail("spapr", "the PHB offers no dynamic DMA window (max_dynamic_windows "
                "%u; is the PHB ddw=off?)", info.ddw.max_dynamic_windows_supported);
    }
    /* The largest IOMMU page size the window offers that a host page holds. */
    d->win_shift = 0;
    for (unsigned s = 12; s <= 16; s++) {
        if ((info.ddw.pgsizes & (1ULL << s)) && (1L << s) <= pg) {
            d->win_shift = s;
        }
    }
    if (!d->win_shift) {
        vn_fail("spapr", "no window page size of 4K..64K in pgsizes 0x%llx",
                (unsigned long long)info.ddw.pgsizes);
    }
    while (size < 2 * want) {
        size <<= 1;
    }
    cr.page_shift = d->win_shift;
    cr.window_size = size;
    cr.levels = 1;
    if (ioctl(d->container_fd, VFIO_IOMMU_SPAPR_TCE_CREATE, &cr) < 0) {
        vn_fail("spapr", "VFIO_IOMMU_SPAPR_TCE_CREATE (page shift %u, %llu MiB): %s",
                d->win_shift, (unsigned long long)(size >> 20), strerror(errno));
    }
    d->win_created = true;
    d->win_start = d->win_next = cr.start_addr;
    d->win_size = size;
    snprintf(d->info, sizeof(d->info), "group %d spapr-v2 dma32 0x%llx+0x%llx ddw "
             "0x%llx+0x%llx page shift %u (pgsizes 0x%llx, max windows %u)", d->group,
             (unsigned long long)info.dma32_window_start,
             (unsigned long long)info.dma32_window_size,
             (unsigned long long)cr.start_addr, (unsigned long long)size, d->win_shift,
             (unsigned long long)info.ddw.pgsizes,
             info.ddw.max_dynamic_windows_supported);
}

void vn_dma_open(struct vn_dma *d, const char *pci, enum vn_iommu mode, uint64_t want)
{
    memset(d, 0, sizeof(*d));
    d->mode = mode;
    d->dev_fd = d->iommufd = d->container_fd = d->group_fd = -1;
    snprintf(d->pci, sizeof(d->pci), "%s", pci);
    vn_check_owned(pci);
    switch (mode) {
    case VN_IOMMUFD:
        open_iommufd(d);
        break;
    case VN_TYPE1:
        open_type1(d);
        break;
    case VN_SPAPR:
        open_spapr(d, want);
        break;
    }
}

void vn_dma_map(struct vn_dma *d, struct vn_buf *b)
{
    if (d->nr_maps == (int)(sizeof(d->maps) / sizeof(d->maps[0]))) {
        vn_fail("map", "too many DMA maps");
    }
    if (d->mode == VN_IOMMUFD) {
        struct vn_iommu_ioas_map m = {
            .size = sizeof(m), .ioas_id = d->ioas_id,
            .flags = VN_IOMMU_IOAS_MAP_READABLE | VN_IOMMU_IOAS_MAP_WRITEABLE,
            .user_va = (uintptr_t)b->va, .length = b->len,
        };
        if (b->fixed_iova) {
            m.flags |= VN_IOMMU_IOAS_MAP_FIXED_IOVA;
            m.iova = b->iova;
        }
        if (ioctl(d->iommufd, VN_IOMMU_IOAS_MAP, &m) < 0) {
            vn_fail("map", "IOMMU_IOAS_MAP %zu bytes%s at 0x%llx: %s (allowed: %s)",
                    b->len, b->fixed_iova ? "" : " (kernel's choice)", (unsigned long long)m.iova,
                    strerror(errno), d->info);
        }
        b->iova = m.iova;
    } else if (d->mode == VN_TYPE1) {
        struct vfio_iommu_type1_dma_map m = {
            .argsz = sizeof(m), .vaddr = (uintptr_t)b->va, .size = b->len,
            .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        };
        m.iova = b->fixed_iova ? b->iova : (d->t1_next + 0x1fffff) & ~0x1fffffULL;
        if (m.iova + b->len - 1 > d->t1_end) {
            vn_fail("map", "no IOVA room for %zu bytes below 0x%llx", b->len,
                    (unsigned long long)d->t1_end);
        }
        if (ioctl(d->container_fd, VFIO_IOMMU_MAP_DMA, &m) < 0) {
            vn_fail("map", "VFIO_IOMMU_MAP_DMA %zu bytes at 0x%llx: %s", b->len,
                    (unsigned long long)m.iova, strerror(errno));
        }
        b->iova = m.iova;
        d->t1_next = m.iova + b->len;
    } else {
        struct vfio_iommu_spapr_register_memory r = {
            .argsz = sizeof(r), .vaddr = (uintptr_t)b->va, .size = b->len,
        };
        struct vfio_iommu_type1_dma_map m = {
            .argsz = sizeof(m), .vaddr = (uintptr_t)b->va, .size = b->len,
            .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        };
        uint64_t pg = 1ULL << d->win_shift;

        if (b->fixed_iova) {
            vn_fail("args",
                    "--iova: the spapr mode places buffers in the window it creates");
        }
        m.iova = (d->win_next + pg - 1) & ~(pg - 1);
        if (m.iova + b->len > d->win_start + d->win_size) {
            vn_fail("map", "%zu bytes do not fit the window", b->len);
        }
        if (ioctl(d->container_fd, VFIO_IOMMU_SPAPR_REGISTER_MEMORY, &r) < 0) {
            vn_fail("map", "VFIO_IOMMU_SPAPR_REGISTER_MEMORY %zu bytes: %s", b->len,
                    strerror(errno));
        }
        if (ioctl(d->container_fd, VFIO_IOMMU_MAP_DMA, &m) < 0) {
            vn_fail("map", "VFIO_IOMMU_MAP_DMA (TCEs) %zu bytes at 0x%llx: %s", b->len,
                    (unsigned long long)m.iova, strerror(errno));
        }
        b->iova = m.iova;
        d->win_next = m.iova + b->len;
    }
    d->maps[d->nr_maps].va = b->va;
    d->maps[d->nr_maps].len = b->len;
    d->maps[d->nr_maps].iova = b->iova;
    d->nr_maps++;
}

/* Undo in reverse; errors are reported on stderr, teardown goes on. */
void vn_dma_close(struct vn_dma *d)
{
    for (int i = d->nr_maps - 1; i >= 0; i--) {
        int rc;
        if (d->mode == VN_IOMMUFD) {
            struct vn_iommu_ioas_unmap u = {
                .size = sizeof(u), .ioas_id = d->ioas_id,
                .iova = d->maps[i].iova, .length = d->maps[i].len,
            };
            rc = ioctl(d->iommufd, VN_IOMMU_IOAS_UNMAP, &u);
        } else {
            struct vfio_iommu_type1_dma_unmap u = {
                .argsz = sizeof(u), .iova = d->maps[i].iova, .size = d->maps[i].len,
            };
            rc = ioctl(d->container_fd, VFIO_IOMMU_UNMAP_DMA, &u);
            if (!rc && d->mode == VN_SPAPR) {
                struct vfio_iommu_spapr_register_memory r = {
                    .argsz = sizeof(r), .vaddr = (uintptr_t)d->maps[i].va,
                    .size = d->maps[i].len,
                };
                rc = ioctl(d->container_fd, VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY, &r);
            }
        }
        if (rc < 0) {
            fprintf(stderr, "vfio-nvme: unmap 0x%llx: %s\n",
                    (unsigned long long)d->maps[i].iova, strerror(errno));
        }
    }
    d->nr_maps = 0;
    if (d->win_created) {
        struct vfio_iommu_spapr_tce_remove rm = {
            .argsz = sizeof(rm), .start_addr = d->win_start,
        };
        if (ioctl(d->container_fd, VFIO_IOMMU_SPAPR_TCE_REMOVE, &rm) < 0) {
            fprintf(stderr, "vfio-nvme: remove window: %s\n", strerror(errno));
        }
        d->win_created = false;
    }
    if (d->attached) {
        struct vn_vfio_device_detach_iommufd_pt dt = { .argsz = sizeof(dt) };
        if (ioctl(d->dev_fd, VN_VFIO_DEVICE_DETACH_IOMMUFD_PT, &dt) < 0) {
            fprintf(stderr, "vfio-nvme: detach: %s\n", strerror(errno));
        }
        d->attached = false;
    }
    if (d->dev_fd >= 0) {
        close(d->dev_fd);
    }
    if (d->joined) { /* the IOAS and the iommufd are the first device's */
        d->ioas_id = 0;
        d->iommufd = -1;
    }
    if (d->ioas_id) {
        struct vn_iommu_destroy x = { .size = sizeof(x), .id = d->ioas_id };
        ioctl(d->iommufd, VN_IOMMU_DESTROY, &x);
        d->ioas_id = 0;
    }
    if (d->group_fd >= 0) {
        ioctl(d->group_fd, VFIO_GROUP_UNSET_CONTAINER);
        close(d->group_fd);
    }
    if (d->container_fd >= 0) {
        close(d->container_fd);
    }
    if (d->iommufd >= 0) {
        close(d->iommufd);
    }
    d->dev_fd = d->group_fd = d->container_fd = d->iommufd = -1;
}

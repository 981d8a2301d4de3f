/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The iommufd and VFIO-cdev user ABI this driver uses, for build hosts whose
 * linux-libc-dev predates them (Debian 12 ships 6.1 headers: no
 * <linux/iommufd.h>, no VFIO_DEVICE_BIND_IOMMUFD).  Definitions as in Linux
 * include/uapi/linux/iommufd.h and include/uapi/linux/vfio.h (6.6 and later,
 * unchanged in 6.19 for the fields used here: later kernels append optional
 * fields that a smaller argsz/size leaves out).
 */
#ifndef VFIO_NVME_UAPI_H
#define VFIO_NVME_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>
#include <linux/vfio.h>

#define IOMMUFD_TYPE (';')
#define IOMMUFD_CMD_DESTROY 0x80
#define IOMMUFD_CMD_IOAS_ALLOC 0x81
#define IOMMUFD_CMD_IOAS_IOVA_RANGES 0x84
#define IOMMUFD_CMD_IOAS_MAP 0x85
#define IOMMUFD_CMD_IOAS_UNMAP 0x86

struct vn_iommu_destroy {
    __u32 size;
    __u32 id;
};
#define VN_IOMMU_DESTROY _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)

struct vn_iommu_ioas_alloc {
    __u32 size;
    __u32 flags;
    __u32 out_ioas_id;
};
#define VN_IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)

struct vn_iommu_iova_range {
    __aligned_u64 start;
    __aligned_u64 last;
};

struct vn_iommu_ioas_iova_ranges {
    __u32 size;
    __u32 ioas_id;
    __u32 num_iovas;
    __u32 __reserved;
    __aligned_u64 allowed_iovas;
    __aligned_u64 out_iova_alignment;
};
#define VN_IOMMU_IOAS_IOVA_RANGES _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)

#define VN_IOMMU_IOAS_MAP_FIXED_IOVA (1 << 0)
#define VN_IOMMU_IOAS_MAP_WRITEABLE (1 << 1)
#define VN_IOMMU_IOAS_MAP_READABLE (1 << 2)

struct vn_iommu_ioas_map {
    __u32 size;
    __u32 flags;
    __u32 ioas_id;
    __u32 __reserved;
    __aligned_u64 user_va;
    __aligned_u64 length;
    __aligned_u64 iova;
};
#define VN_IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)

struct vn_iommu_ioas_unmap {
    __u32 size;
    __u32 ioas_id;
    __aligned_u64 iova;
    __aligned_u64 length;
};
#define VN_IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)

/* VFIO device cdev (/dev/vfio/devices/vfioN) */
struct vn_vfio_device_bind_iommufd {
    __u32 argsz;
    __u32 flags;
    __s32 iommufd;
    __u32 out_devid;
};
#define VN_VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)

struct vn_vfio_device_attach_iommufd_pt {
    __u32 argsz;
    __u32 flags;
    __u32 pt_id;
};
#define VN_VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)

struct vn_vfio_device_detach_iommufd_pt {
    __u32 argsz;
    __u32 flags;
};
#define VN_VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 20)

#endif

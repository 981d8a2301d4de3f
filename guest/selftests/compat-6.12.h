/*
 * Force-included (-include) when building tools/testing/selftests/iommu of
 * Debian's linux 6.12.107.  The 6.12 stable series backported selftest
 * changes from 6.17 without the kernel changes they test, so the tree's own
 * selftest does not compile against its own UAPI headers.  These are the
 * upstream (6.17) names with their upstream values (but one, below); the
 * kernel under test does not implement them, so the tests that use them fail
 * at run time and are listed as known failures in
 * tests/boot/test_iommufd_selftests.py.
 */
#ifndef IOMMULAB_SELFTEST_COMPAT_612_H
#define IOMMULAB_SELFTEST_COMPAT_612_H

/* include/uapi/linux/iommufd.h (6.17): IOMMU_HW_INFO_TYPE_NONE renamed. */
#define IOMMU_HW_INFO_TYPE_DEFAULT 0
/* 6.17: IOMMU_GET_HW_INFO takes an input type when this flag is set. */
#define IOMMU_HW_INFO_FLAG_INPUT_TYPE (1 << 0)
/* 6.17: in_data_type shares out_data_type's place (an anonymous union). */
#define in_data_type out_data_type

/*
 * drivers/iommu/iommufd/iommufd_test.h (6.17): the PASID-capable mock device
 * (1 << 2 upstream).  6.12's mock device has no such flag and refuses unknown
 * ones, which would fail the whole iommufd_ioas.mock_domain variant in its
 * set-up (it adds a PASID-capable device next to its mock domain).  Asking
 * for no flag gives that second device as 6.12 has it, without PASID: the
 * variant's tests run, and get_hw_info, the one test that reads the PASID
 * width back (expecting MOCK_PASID_WIDTH), fails, a known failure.
 */
#define MOCK_FLAGS_DEVICE_PASID 0
#define MOCK_PASID_WIDTH 20

#endif

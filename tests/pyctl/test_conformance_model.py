"""The model side of the conformance run: the selftest's mock device on the model,
the selftest data type, and the generator (pyctl.conformance).

Expected answers follow Linux 6.12's drivers/iommu/iommufd (selftest.c's
iommufd_test_mock_domain, device.c, hw_pagetable.c, io_pagetable.c), and 6.19's
where the facts say the kernel's mock driver has 6.19's additions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from pyctl.conformance import Answer, ModelSide, Op, RunStats, Session, Src, differential
from pyctl.conformance.generator import Generator
from pyctl.conformance.loopback import HELLO, PPC64LE_FACTS, X86_FACTS, LoopbackRunner
from pyctl.conformance.mockhw import MockFacts, MockHardware
from pyctl.conformance.model import IOMMU_HWPT_DATA_SELFTEST, kernel_options
from pyctl.iommufd import IommufdContext, IommufdError, ModelOptions

U64 = (1 << 64) - 1
APERTURE = X86_FACTS.aperture[0]
RW, FIXED = 6, 1


def run(model: ModelSide, *ops: Op) -> list[Answer]:
    return [model.run(op) for op in ops]


@pytest.fixture
def model() -> ModelSide:
    m = ModelSide(X86_FACTS, HELLO)
    m.run(Op("S"))
    return m


def test_mock_domain_ids_in_the_kernels_order(model: ModelSide) -> None:
    # selftest object, then the bound device, then the automatic HWPT
    assert run(model, Op("ia", (0,)), Op("md", (1,))) == [
        Answer(None, (1,)),
        Answer(None, (2, 4, 3)),
    ]
    # a second mock device on the same IOAS shares the automatic HWPT
    assert model.run(Op("md", (1,))) == Answer(None, (5, 4, 6))


def test_a_failed_mock_domain_frees_its_ids(model: ModelSide) -> None:
    assert model.run(Op("md", (9,))) == Answer("ENOENT")
    assert model.run(Op("ia", (0,))) == Answer(None, (1,))
    assert model.run(Op("md", (1,))) == Answer(None, (2, 4, 3))
    assert model.run(Op("md", (3,))) == Answer("EINVAL")  # a DEVICE is no page table
    assert model.run(Op("ia", (0,))) == Answer(None, (5,))


def test_destroying_the_selftest_object_detaches_and_unbinds(model: ModelSide) -> None:
    run(model, Op("ia", (0,)), Op("md", (1,)))
    assert model.run(Op("d", (3,))) == Answer("EBUSY")  # the DEVICE: its binding holds it
    assert model.run(Op("d", (1,))) == Answer("EBUSY")  # the IOAS: the HWPT holds it
    assert model.run(Op("d", (2,))) == Answer(None)
    assert model.ctx is not None and list(model.ctx.objects()) == [1]  # HWPT 4 went too
    assert model.run(Op("d", (1,))) == Answer(None)


def test_replace(model: ModelSide) -> None:
    run(model, Op("ia", (0,)), Op("md", (1,)), Op("ia", (0,)))  # IOAS 5
    assert model.run(Op("mr", (2, 5))) == Answer(None, (6,))  # a new automatic HWPT
    assert model.ctx is not None and 4 not in model.ctx.objects()  # the old one went
    assert model.run(Op("mr", (3, 1))) == Answer("ENOENT")  # the DEVICE is not SELFTEST
    assert model.run(Op("mr", (2, 99))) == Answer("ENOENT")


def test_aperture_and_alignment_from_the_facts(model: ModelSide) -> None:
    run(model, Op("ia", (0,)), Op("md", (1,)))
    end = X86_FACTS.aperture[1]
    assert model.run(Op("r", (1, 8))) == Answer(None, (X86_FACTS.pgsize, 1, APERTURE, end))
    assert model.run(Op("r", (1, 0))) == Answer("EMSGSIZE", (1,))
    # FIXED below the aperture: reserved (EINVAL, iopt_check_iova)
    assert model.run(Op("m", (1, RW | FIXED, 0x10000, Src(0, 0), 0x800))) == Answer("EINVAL")
    # 2 KiB pages: a 2 KiB map at a 2 KiB aligned IOVA is fine
    ans = model.run(Op("m", (1, RW | FIXED, APERTURE + 0x800, Src(0, 0x800), 0x800)))
    assert ans == Answer(None, (APERTURE + 0x800,))
    assert model.run(Op("m", (1, RW | FIXED, APERTURE + 0x400, Src(0, 0), 0x800))) == Answer(
        "EINVAL"
    )
    # an IOAS whose areas lie below the aperture cannot take a mock domain
    run(model, Op("ia", (0,)))  # 5
    assert model.run(Op("m", (5, RW | FIXED, 0x10000, Src(1, 0), 0x1000))) == Answer(
        None, (0x10000,)
    )
    assert model.run(Op("md", (5,))) == Answer("EADDRINUSE")


def test_hwpt_alloc_with_the_selftest_data(model: ModelSide) -> None:
    run(model, Op("ia", (0,)), Op("md", (1,)))  # dev 3
    parent = model.run(Op("h", (3, 1, 1, 0, 0, 0)))  # NEST_PARENT paging HWPT
    plain = model.run(Op("h", (3, 1, 0, 0, 0, 0)))
    assert parent == Answer(None, (5,)) and plain == Answer(None, (6,))
    assert model.run(Op("h", (3, 5, 0, IOMMU_HWPT_DATA_SELFTEST, 4, 0xBADBEEF))) == Answer(
        None, (7,)
    )
    assert model.run(Op("h", (3, 6, 0, IOMMU_HWPT_DATA_SELFTEST, 4, 0))) == Answer("EINVAL")
    assert model.run(Op("h", (3, 5, 0, 1, 4, 0))) == Answer("EOPNOTSUPP")  # VT-d data
    assert model.run(Op("h", (3, 5, 0, 0, 4, 0))) == Answer("EINVAL")  # NONE with data
    assert model.run(Op("h", (3, 5, 0, IOMMU_HWPT_DATA_SELFTEST, 0, 0))) == Answer("EINVAL")
    assert model.run(Op("h", (3, 1, 1 << 3, 0, 0, 0))) == Answer("EOPNOTSUPP")
    assert model.run(Op("h", (3, 99, 0, 0, 0, 0))) == Answer("EINVAL")  # no such pt
    assert model.run(Op("d", (5,))) == Answer("EBUSY")  # the nested child holds it
    # the mock device moves to the nested HWPT and back
    assert model.run(Op("mr", (2, 7))) == Answer(None, (7,))
    assert model.run(Op("mr", (2, 1))) == Answer(None, (4,))
    assert model.run(Op("gi", (3,))) == Answer(None, (X86_FACTS.hw_info_type,))
    assert model.run(Op("gi", (2,))) == Answer("ENOENT")


def test_generator_is_seeded_and_covers_every_operation() -> None:
    def ops(seed: int, n: int) -> list[Op]:
        m = ModelSide(X86_FACTS, HELLO)
        m.run(Op("S"))
        g = Generator(seed, m)
        out = []
        for _ in range(n):
            out.append(g.next_op())
            m.run(out[-1])
        return out

    a = ops(11, 3000)
    assert a == ops(11, 3000)
    assert a != ops(12, 3000)
    names = Counter(o.name for o in a)
    assert set(names) == {"ia", "d", "m", "u", "c", "r", "a", "o", "h", "md", "mr", "gi"}
    # invalid calls are in the mix: unknown flags, overflowing lengths, misaligned IOVAs
    assert any(o.name == "ia" and o.args[0] for o in a)
    assert any(o.name == "m" and o.args[4] == U64 for o in a)
    assert any(o.name == "m" and isinstance(o.args[2], int) and o.args[2] % 0x800 for o in a)


@pytest.mark.parametrize(
    ("seed", "facts"), [(1, X86_FACTS), (2, X86_FACTS), (3, PPC64LE_FACTS), (4, PPC64LE_FACTS)]
)
def test_the_model_answers_every_generated_call(seed: int, facts: MockFacts) -> None:
    """Only IommufdErrors: no other exception, no EIO from the mock hardware."""
    m = ModelSide(facts, HELLO)
    m.run(Op("S"))
    g = Generator(seed, m)
    errs: Counter[str | None] = Counter()
    for _ in range(3000):
        errs[m.run(g.next_op()).errno] += 1
    assert "EIO" not in errs
    assert errs[None] > 1000
    assert m.ctx is not None and not m.ctx.check_hardware()


def test_the_kernels_page_size_decides_whether_a_mock_domain_fits() -> None:
    """A 64 KiB-page kernel's mock domain has 32 KiB pages: fine there, but more than
    a 4 KiB PAGE_SIZE allows (iopt_table_add_domain: EINVAL)."""
    m = ModelSide(PPC64LE_FACTS, HELLO)
    m.run(Op("S"))
    assert run(m, Op("ia", (0,)), Op("md", (1,))) == [Answer(None, (1,)), Answer(None, (2, 4, 3))]
    assert m.run(Op("r", (1, 1))) == Answer(None, (1 << 15, 1, *PPC64LE_FACTS.aperture))
    hw = MockHardware(PPC64LE_FACTS)
    four_k = replace(kernel_options(PPC64LE_FACTS), page_size=4096)
    ctx = IommufdContext(hw, options=four_k)
    assert isinstance(ctx.options, ModelOptions)
    ioas = ctx.ioas_alloc()
    dev = ctx.bind(hw.new_device())
    with pytest.raises(IommufdError) as e:
        ctx.attach(dev, ioas)
    assert e.value.errno == "EINVAL"


def test_the_conformance_model_takes_the_kernels_options() -> None:
    opts = kernel_options(PPC64LE_FACTS)
    assert (opts.atomic_unmap, opts.pin_per_guest_page) == (False, False)
    assert (opts.page_size, opts.max_iova_alignment) == (1 << 16, 2 << 20)
    assert kernel_options(replace(X86_FACTS, hpage_size=0)).max_iova_alignment == 4096
    runner = LoopbackRunner(PPC64LE_FACTS)
    assert runner.model.facts is PPC64LE_FACTS


def test_a_mock_domain_cannot_attach_to_its_own_unfinished_selftest_object(
    model: ModelSide,
) -> None:
    """Found by the run: the new SELFTEST object's id is taken but not finalized while
    the device attaches, so naming it as the page table is ENOENT, not EINVAL."""
    assert model.run(Op("md", (1,))) == Answer("ENOENT")
    assert model.run(Op("ia", (0,))) == Answer(None, (1,))
    assert model.run(Op("md", (2,))) == Answer("ENOENT")  # id 2 is the new SELFTEST object
    assert model.run(Op("md", (1,))) == Answer(None, (2, 4, 3))


def test_no_documented_difference_is_left_on_the_lab_kernel() -> None:
    """6.12 refused an IOAS_MAP whose length is above SIZE_MAX - PAGE_SIZE and whose
    user_va + length overflows with EINVAL (length first); 6.19.11, the lab kernel,
    answers EOVERFLOW as the model does, so that difference is no longer excused."""
    from pyctl.conformance.known import KNOWN, known_difference

    assert KNOWN == ()
    long = U64 - 4095  # above SIZE_MAX - PAGE_SIZE
    op = Op("m", (1, RW | FIXED, APERTURE, Src(1, 0), long))
    assert known_difference(op, Answer("EINVAL"), Answer("EOVERFLOW"), HELLO, 4096) is None


def test_the_619_mock_driver_as_the_facts_describe_it() -> None:
    """6.19's mock driver: a paging HWPT takes struct iommu_hwpt_selftest (8 bytes,
    pagetable_type 0: the default page table) and IOMMU_HWPT_ALLOC_PASID; data of a
    wrong length is EINVAL in the driver, after the checks before it."""
    facts = replace(X86_FACTS, paging_data=True, pasid_flag=True, selftest_data_len=8)
    m = ModelSide(facts, HELLO)
    m.run(Op("S"))
    run(m, Op("ia", (0,)), Op("md", (1,)))  # dev 3, auto HWPT 4
    assert m.run(Op("h", (3, 1, 0, IOMMU_HWPT_DATA_SELFTEST, 4, 0))) == Answer(None, (5,))
    assert m.run(Op("h", (3, 1, 1, IOMMU_HWPT_DATA_SELFTEST, 8, 0))) == Answer(None, (6,))
    assert m.run(Op("h", (3, 1, 1 << 3, 0, 0, 0))) == Answer(None, (7,))  # PASID
    assert m.run(Op("h", (3, 1, 0, IOMMU_HWPT_DATA_SELFTEST, 2, 0))) == Answer("EINVAL")
    assert m.run(Op("h", (3, 1, 1 << 7, IOMMU_HWPT_DATA_SELFTEST, 2, 0))) == Answer(
        "EOPNOTSUPP"
    )  # an unknown flag is refused before the driver
    assert m.run(Op("h", (3, 6, 1 << 3, IOMMU_HWPT_DATA_SELFTEST, 8, 0))) == Answer(None, (8,))
    assert m.run(Op("h", (3, 6, 0, IOMMU_HWPT_DATA_SELFTEST, 16, 0))) == Answer("EINVAL")
    # 6.12's mock driver (the defaults): all of these are refused
    old = ModelSide(X86_FACTS, HELLO)
    old.run(Op("S"))
    run(old, Op("ia", (0,)), Op("md", (1,)))
    assert old.run(Op("h", (3, 1, 0, IOMMU_HWPT_DATA_SELFTEST, 4, 0))) == Answer("EOPNOTSUPP")
    assert old.run(Op("h", (3, 1, 1 << 3, 0, 0, 0))) == Answer("EOPNOTSUPP")


def test_a_kernel_without_mock_devices_runs_the_ioas_calls() -> None:
    """pseries and PowerNV: the mock device gets no IOMMU (powerpc has no IOMMU_DMA,
    so the core asks for an IDENTITY default domain the mock IOMMU's BLOCKED one is
    not) and its bind is EINVAL; the model answers mock-domain calls with the kernel's
    errno, and the run goes on with the IOAS calls (64 KiB pages)."""
    facts = replace(PPC64LE_FACTS, mock_errno="EINVAL")
    m = ModelSide(facts, HELLO)
    m.run(Op("S"))
    assert run(m, Op("ia", (0,)), Op("md", (1,)), Op("md", (7,)), Op("ia", (0,))) == [
        Answer(None, (1,)),
        Answer("EINVAL"),
        Answer("EINVAL"),  # bind fails before the page table is looked up
        Answer(None, (2,)),  # the SELFTEST and DEVICE ids were given back
    ]
    stats = RunStats()
    assert differential(Session(LoopbackRunner(facts)), 5, 2000, stats=stats) is None
    assert stats.errors["ok"] > 500


def test_automatic_iova_starts_from_the_span_head_like_the_kernel() -> None:
    """Found by the run on pseries (64 KiB pages): with an in-page offset the kernel
    first moves the allowed span's start to ALIGN_UP(start) | offset and looks for
    holes from there, so 1-byte areas at the span's head do not push the IOVA up."""
    m = ModelSide(replace(PPC64LE_FACTS, mock_errno="EINVAL"), HELLO)
    m.run(Op("S"))
    m.run(Op("ia", (0,)))
    for i in range(3):  # 1-byte areas at 0x10000, 0x10001, 0x10002
        assert m.run(Op("m", (1, RW, 0, Src(0, 0), 1))) == Answer(None, (0x10000 + i,))
    # user address ...0x39: alignment 1, page offset 0x39: the kernel answers 0x10039
    assert m.run(Op("m", (1, RW, 0, Src(0, 0x500039), 0xE0000))) == Answer(None, (0x10039,))

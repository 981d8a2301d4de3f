"""Differential conformance of the iommufd model against the kernel's iommufd.

A small static program in the guest (guest/conformance) runs iommufd calls
against /dev/iommu with the selftest's mock devices (CONFIG_IOMMUFD_TEST);
this package generates seeded call sequences, runs each call on the model
too, and compares the answers call by call (docs/iommufd.md, "Conformance
against the kernel").
"""

from .differ import Divergence, RunnerFailure, RunStats, Session, compare, differential
from .mockhw import MockFacts, MockHardware, facts_from_probe
from .model import ModelSide
from .protocol import Answer, Hello, Op, ProtocolError, Src

__all__ = [
    "Answer",
    "Divergence",
    "Hello",
    "MockFacts",
    "MockHardware",
    "ModelSide",
    "Op",
    "ProtocolError",
    "RunStats",
    "RunnerFailure",
    "Session",
    "Src",
    "compare",
    "differential",
    "facts_from_probe",
]

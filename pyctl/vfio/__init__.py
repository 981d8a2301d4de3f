"""VFIO's container ioctls on the lab's iommufd model (type1 and sPAPR TCE v2 compat)."""

from .container import VfioContainer
from .spapr_tce import SpaprTceV2Driver
from .type1 import Type1Driver

__all__ = ["SpaprTceV2Driver", "Type1Driver", "VfioContainer"]

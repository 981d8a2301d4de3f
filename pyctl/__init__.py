"""iommulab control plane: the Linux iommufd object model driving a vIOMMU in QEMU."""

__version__ = "0.1.0"

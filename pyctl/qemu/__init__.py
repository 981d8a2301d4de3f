"""Running the project's QEMU: machine command lines and a process launcher with QMP."""

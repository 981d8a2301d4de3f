"""Guest images built from Debian packages: kernel, modules, busybox and the agent.

The pieces are separate modules: :mod:`.cpio` writes the initramfs,
:mod:`.modinfo` reads a kernel module's ``.modinfo``, :mod:`.modules`
resolves dependencies, :mod:`.kernel` checks the kernel image, :mod:`.debs`
downloads and unpacks packages, :mod:`.image` puts it together and caches it,
:mod:`.results` parses what the agent prints on the console.
"""


class GuestBuildError(Exception):
    """A guest image cannot be built; the message says why and what to do."""

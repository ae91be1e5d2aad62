"""edgekernel: an operating system for fleets of edge AI boxes."""

from edgekernel.errors import EdgeKernelError

__all__ = ["EdgeKernelError", "__version__"]
__version__ = "0.1.0"

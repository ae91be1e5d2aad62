"""Errors of the transports."""

from edgekernel.errors import EdgeKernelError


class LinkError(EdgeKernelError):
    """The broker or another transport failed us."""


class BrokerError(LinkError):
    """A private Mosquitto could not be found, started or stopped."""


class NotConnectedError(LinkError):
    """The session is not connected and the operation needs it to be."""

"""Errors an agent sees from its kernel calls, and the supervisor's own."""

from __future__ import annotations

from edgekernel.errors import EdgeKernelError


class AgentError(EdgeKernelError):
    """An agent cannot be loaded, configured or served (.agent)."""

    def __init__(self, agent: str, message: str) -> None:
        super().__init__(message)
        self.agent = agent


class AgentNotFoundError(AgentError):
    """No agent of that kind is installed (entry point group `edgekernel.agents`)."""


class AgentConfigError(AgentError):
    """The agent's settings do not validate against its Config model."""


class AgentQuotaError(AgentError):
    """A kernel call over the agent's quota (.quota: infer-rate, publish-rate, state-bytes, ...)."""

    def __init__(self, agent: str, quota: str, message: str) -> None:
        super().__init__(agent, message)
        self.quota = quota


class AgentStoppedError(AgentError):
    """A kernel call after the agent was told to stop, or after the kernel stopped."""

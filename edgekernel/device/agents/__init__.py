"""Agents: the workloads a kernel runs, under a supervisor, through the kernel calls of `Context`."""

from edgekernel.device.agents.context import Agent, Context, State
from edgekernel.device.agents.errors import (
    AgentConfigError,
    AgentError,
    AgentNotFoundError,
    AgentQuotaError,
    AgentStoppedError,
)

__all__ = [
    "Agent",
    "AgentConfigError",
    "AgentError",
    "AgentNotFoundError",
    "AgentQuotaError",
    "AgentStoppedError",
    "Context",
    "State",
]

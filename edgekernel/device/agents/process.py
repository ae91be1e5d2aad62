"""An agent run in a child process, speaking the kernel calls over a Unix socket (see `child`).

A crash, a leak or an endless loop there cannot take the kernel down: the child's memory is capped
(cgroup v2 `memory.max` when the kernel may create a cgroup, else RLIMIT_AS set by the child), its CPU
weighted (cgroup `cpu.weight`, else a nice value), it beats every second and is killed when silent
for `heartbeat_timeout_s`, and killed when a stop does not finish in `stop_timeout_s`. It dies with
the kernel (parent-death signal, and its socket closing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekernel.config.agents import AgentSpec
from edgekernel.device.agents.errors import AgentConfigError, AgentError, AgentQuotaError
from edgekernel.device.agents.wire import WireError, encode_frame, pack_array, read_frame, unpack_array
from edgekernel.lifeline import child_env
from edgekernel.protocol import Sample

if TYPE_CHECKING:
    from edgekernel.device.agents.host import AgentHost

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 60.0  # a cold Python with NumPy on a busy 2-core box
MAX_PUSH = 256


class ProcessExecution:
    def __init__(self, spec: AgentSpec, host: AgentHost) -> None:
        self.spec = spec
        self._host = host
        self._dir = Path(tempfile.mkdtemp(prefix="ek-agent-"))
        self._path = self._dir / "s"
        self._proc: asyncio.subprocess.Process | None = None
        self._connected: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ended: dict[str, Any] | None = None
        self._last_beat = time.monotonic()
        self._hung: str | None = None
        self._cgroup: Path | None = None
        self.limit_kind = ""

    # -- Execution ------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._kill()
            await self._cleanup()
            raise

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._connected = loop.create_future()
        self._server = await asyncio.start_unix_server(self._accept, path=str(self._path))
        env = child_env()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgekernel.device.agents.child",
            str(self._path),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=self._preexec(),
        )
        self._apply_cgroup(self._proc.pid)
        try:
            reader, writer = await asyncio.wait_for(asyncio.shield(self._connected), CONNECT_TIMEOUT_S)
        except TimeoutError as err:
            await self._kill()
            raise AgentError(
                self.spec.name, f"the agent process did not connect within {CONNECT_TIMEOUT_S:g} s"
            ) from err
        self._writer = writer
        saved = await asyncio.to_thread(self._host.states.load, self.spec.name)
        memory = self.spec.quotas.memory_mb if self._cgroup is None else None
        self.limit_kind = "cgroup" if self._cgroup is not None else "rlimit" if memory else ""
        hello = {
            "name": self.spec.name,
            "agent": self.spec.agent,
            "config": self.spec.config,
            "state": saved,
            "device": self._host.device,
            "memory_mb": memory,
        }
        writer.write(encode_frame({"hello": hello}))
        first = await self._first(reader)
        if "fatal" in first:
            await self._reap(5.0)
            fatal = first["fatal"]
            cls = AgentConfigError if fatal.get("kind") == "config" else AgentError
            raise cls(self.spec.name, str(fatal.get("message", "the agent could not start")))
        self._last_beat = time.monotonic()
        self._spawn(self._serve(reader))
        self._spawn(self._watch())

    async def _first(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        try:
            message = await asyncio.wait_for(read_frame(reader), CONNECT_TIMEOUT_S)
        except (TimeoutError, WireError) as err:
            await self._kill()
            raise AgentError(
                self.spec.name, f"the agent process did not start: {err or 'no answer'}"
            ) from err
        if message is None or not ("ready" in message or "fatal" in message):
            await self._reap(5.0)
            raise AgentError(self.spec.name, f"the agent process did not start ({self._exit_text()})")
        return message

    async def wait(self) -> None:
        assert self._proc is not None
        await self._proc.wait()
        await self._cleanup()
        if self._hung is not None:
            raise AgentError(self.spec.name, self._hung)
        if self._ended is not None:
            if self._ended.get("error"):
                raise AgentError(self.spec.name, str(self._ended["error"]))
            return
        raise AgentError(self.spec.name, f"the agent process died ({self._exit_text()})")

    async def stop(self, timeout_s: float) -> bool:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            await self._cleanup()
            return True
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(encode_frame({"stop": 1}))
        stopped = await self._reap(timeout_s)
        await self._cleanup()
        return stopped

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # -- the socket -----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connected is not None and not self._connected.done():
            self._connected.set_result((reader, writer))
            if self._server is not None:
                self._server.close()
        else:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_frame(reader)
                if message is None:
                    return
                self._last_beat = time.monotonic()
                if "ended" in message:
                    self._ended = message["ended"] if isinstance(message["ended"], dict) else {}
                elif "call" in message:
                    self._spawn(self._call(message))
        except WireError as err:
            self._hung = f"broke the kernel-agent protocol: {err}"
            await self._kill()

    async def _call(self, message: dict[str, Any]) -> None:
        call_id, call, args = message.get("id"), message.get("call"), message.get("args")
        name = self.spec.name
        try:
            if not isinstance(args, dict) or not isinstance(call_id, int):
                raise WireError(name, "a call needs an int id and a map of args")
            result = await self._dispatch(call, args, call_id)
            reply: dict[str, Any] = {"id": call_id, "ok": result}
        except AgentQuotaError as err:
            reply = {
                "id": call_id,
                "err": {"type": type(err).__name__, "agent": name, "quota": err.quota, "message": str(err)},
            }
        except (AgentError, ValueError, TypeError, KeyError) as err:
            reply = {"id": call_id, "err": {"type": type(err).__name__, "agent": name, "message": str(err)}}
        except Exception as err:  # the kernel's own refusals (scheduler, model) go back to the agent
            reply = {"id": call_id, "err": {"type": type(err).__name__, "agent": name, "message": str(err)}}
        self._send(reply)

    async def _dispatch(self, call: object, args: dict[str, Any], call_id: int) -> Any:
        host, name = self._host, self.spec.name
        if call == "infer":
            inputs = [unpack_array(a) for a in args["inputs"]]
            deadline = args.get("deadline_s")
            if deadline is not None and not (isinstance(deadline, int | float) and math.isfinite(deadline)):
                raise WireError(name, "deadline_s must be a number")
            outputs = await host.infer(
                name, str(args["model"]), inputs, int(args.get("priority", 0)), deadline
            )
            return [pack_array(o) for o in outputs]
        if call == "publish":
            samples = [Sample.model_validate({"ts": ts, "value": value}) for ts, value in args["samples"]]
            await host.publish(name, str(args["stream"]), samples, bool(args.get("best_effort", False)))
        elif call == "event":
            await host.event(name, str(args["type"]), args.get("body"))
        elif call == "subscribe":
            self._subscribe(call_id, str(args["stream"]), int(args.get("depth", 1024)))
        elif call == "state_set":
            await host.state_set(name, str(args["key"]), args.get("value"))
        elif call == "state_delete":
            await host.state_delete(name, str(args["key"]))
        elif call == "kernel_stats":
            return await host.kernel_stats(name)
        elif call == "actuate":
            value = args.get("value")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise WireError(name, "actuate takes a number")
            await host.actuate(name, str(args["stream"]), float(value))
        else:
            raise WireError(name, f"no kernel call {call!r}")
        return None

    def _subscribe(self, sub_id: int, stream: str, depth: int) -> None:
        try:
            sub = self._host.subscribe(self.spec.name, stream, depth)
        except AgentError as err:
            self._send({"sub": sub_id, "closed": str(err)})
            return

        async def pump() -> None:
            try:
                while True:
                    first = await sub.get()
                    batch = [first]
                    while len(batch) < MAX_PUSH and (more := sub.get_nowait()) is not None:
                        batch.append(more)
                    self._send({"sub": sub_id, "samples": [[s.ts, s.value] for s in batch]})
                    if self._writer is not None:
                        await self._writer.drain()
            except (StopAsyncIteration, ConnectionError):
                return
            finally:
                sub.close()

        self._spawn(pump())

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode_frame(message))

    async def _watch(self) -> None:
        timeout = self.spec.heartbeat_timeout_s
        while self._proc is not None and self._proc.returncode is None:
            await asyncio.sleep(min(1.0, timeout / 4))
            silent = time.monotonic() - self._last_beat
            if silent > timeout:
                self._hung = f"hung: no heartbeat for {silent:.1f} s (killed)"
                log.error("agent %s is %s", self.spec.name, self._hung)
                await self._kill()
                return

    # -- the process ----------------------------------------------------------------------------

    def _preexec(self) -> Any:
        weight = self.spec.quotas.cpu_weight

        def preexec() -> None:
            if weight is not None and weight < 100:
                os.nice(min(19, round(10 * math.log10(100 / weight) * 1.5)))

        return preexec

    def _apply_cgroup(self, pid: int) -> None:
        quotas = self.spec.quotas
        if quotas.memory_mb is None and quotas.cpu_weight is None:
            return
        group = _own_cgroup()
        if group is None:
            return
        path = group / f"ek-agent-{self.spec.name}-{pid}"
        try:
            path.mkdir()
            if quotas.memory_mb is not None:
                (path / "memory.max").write_text(str(int(quotas.memory_mb * 1024 * 1024)))
                (path / "memory.swap.max").write_text("0") if (path / "memory.swap.max").exists() else None
            if quotas.cpu_weight is not None and (path / "cpu.weight").exists():
                (path / "cpu.weight").write_text(str(quotas.cpu_weight))
            (path / "cgroup.procs").write_text(str(pid))
        except OSError as err:
            log.debug("no cgroup for agent %s (%s): the child limits itself", self.spec.name, err)
            with contextlib.suppress(OSError):
                path.rmdir()
            return
        self._cgroup = path

    async def _reap(self, timeout_s: float) -> bool:
        """Wait for the child to exit; kill it after `timeout_s`. True when it exited by itself."""
        proc = self._proc
        if proc is None:
            return True
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
            return True
        except TimeoutError:
            await self._kill()
            return False

    def kill_now(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await proc.wait()

    def _exit_text(self) -> str:
        code = None if self._proc is None else self._proc.returncode
        if code is None:
            return "still running"
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (over its memory limit?)" if -code == signal.SIGKILL and self._cgroup else ""
            return f"killed by {name}{hint}"
        return f"exit code {code}"

    async def _cleanup(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                await self._server.wait_closed()
        if self._cgroup is not None:
            with contextlib.suppress(OSError):
                self._cgroup.rmdir()
            self._cgroup = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _own_cgroup() -> Path | None:
    """This process's cgroup v2 folder, when it can hold a child cgroup we may write."""
    try:
        line = next(
            (
                entry
                for entry in Path("/proc/self/cgroup").read_text().splitlines()
                if entry.startswith("0::")
            ),
            None,
        )
    except OSError:
        return None
    if line is None:
        return None
    path = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    if not (path / "cgroup.subtree_control").exists() or not os.access(path, os.W_OK):
        return None
    try:
        controllers = (path / "cgroup.subtree_control").read_text().split()
    except OSError:
        return None
    return path if "memory" in controllers else None

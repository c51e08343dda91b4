"""The message bridge both ways: long polling (`wait_for_messages`, legacy) and MCP elicitation (candidate).

One MCP server (the real `mcp` package, `MCPServer`) is the bridge. Agents are MCP clients connected to it
through the package's in-memory transport (`mcp.Client(server, mode="legacy")`), each with two connections:

- the legacy one calls the tool `wait_for_messages` in a loop (a long poll) and acknowledges what it got with
  the tool `ack`;
- the modern one holds the tool call `listen` open, and the bridge pushes each message to it as an
  elicitation (`ctx.elicit`), which the agent answers with a receipt.

Either way a delivery returns once the agent has the message. The agent's inbox is idempotent: every message
carries its id (the write's idempotency key), and a message delivered twice (both ways in a dual write, or
again after a lost answer) is processed once. `LOSSY` marks the elicitation path's bug of the example: it
acknowledges one message in fifty (2%) without delivering it.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel

CANARY_AGENTS = ["test_agent_alpha", "test_agent_beta", "monitoring_agent"]
# Seconds an elicitation may wait for the agent's receipt: as long as a long poll's ack may take on a loaded
# machine (a CI host's p99 reached 2.4 s), so that the new path is not failed for the machine's load.
ELICIT_TIMEOUT = 8.0


class Receipt(BaseModel):
    """What an agent answers to an elicitation: the id of the message it now has."""

    received: str


class PathDown(ConnectionError):
    """The elicitation path cannot reach the agent (no `listen` call open, or the path was killed)."""


@dataclass
class Inbox:
    """One agent's messages, processed once each whichever way and however often they arrive."""

    processed: dict[str, dict[str, Any]] = field(default_factory=dict)
    via: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0

    def take(self, message: dict[str, Any], via: str) -> None:
        if message["id"] in self.processed:
            self.duplicates += 1
            return
        self.processed[message["id"]] = message
        self.via[via] += 1


class Bridge:
    """The MCP server and both delivery paths; `deliver_long_poll` and `deliver_elicitation` are the arms."""

    def __init__(self, *, lossy: bool = False) -> None:
        self.lossy = lossy
        self.server = MCPServer("message-bridge")
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._listeners: dict[str, tuple[Context, asyncio.Event]] = {}
        self.silently_dropped = 0
        self.in_flight = 0  # elicitations sent and not yet answered
        self._tools()

    def _queue(self, agent_id: str) -> asyncio.Queue[dict[str, Any]]:
        return self._queues.setdefault(agent_id, asyncio.Queue())

    def _tools(self) -> None:
        server = self.server

        @server.tool()
        async def wait_for_messages(agent_id: str, timeout: float = 1.0) -> list[dict[str, Any]]:
            """Long poll: the agent's waiting messages, as soon as there is one, or none after `timeout`."""
            queue = self._queue(agent_id)
            try:
                first = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                return []
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            return batch

        @server.tool()
        async def ack(agent_id: str, ids: list[str]) -> int:
            """The agent has these messages."""
            for message_id in ids:
                future = self._acks.pop(f"{agent_id}/{message_id}", None)
                if future is not None and not future.done():
                    future.set_result(None)
            return len(ids)

        @server.tool()
        async def listen(agent_id: str, ctx: Context) -> str:
            """Held open by an agent on elicitation: its messages are pushed to it as elicitations."""
            closed = asyncio.Event()
            self._listeners[agent_id] = (ctx, closed)
            await closed.wait()
            return "closed"

    # -- the two arms ------------------------------------------------------------------------------------

    async def deliver_long_poll(self, message: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Legacy: queue the message for the agent's next poll and wait for its ack."""
        agent = message["to"]
        key = f"{agent}/{message['id']}"
        acked = self._acks.get(key)
        if acked is None or acked.done():
            acked = self._acks[key] = asyncio.get_running_loop().create_future()
        await self._queue(agent).put(message)
        await asyncio.wait_for(asyncio.shield(acked), 10.0)
        return {"id": message["id"], "via": "long-poll"}

    async def deliver_elicitation(self, message: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Candidate: push the message to the agent's open `listen` call as an elicitation; its receipt returns."""
        listener = self._listeners.get(message["to"])
        if listener is None or listener[1].is_set():
            raise PathDown(f"{message['to']} has no elicitation channel open")
        if self.lossy and zlib.crc32(message["id"].encode()) % 50 == 0:
            # The bug: a message that arrives while the agent's previous elicitation is being answered is
            # acknowledged to the sender and never sent.
            self.silently_dropped += 1
            return {"id": message["id"], "via": "elicitation"}
        ctx, _ = listener
        self.in_flight += 1
        try:
            with anyio.fail_after(ELICIT_TIMEOUT):
                result = await ctx.elicit(json.dumps(message), schema=Receipt)
        finally:
            self.in_flight -= 1
        if result.action != "accept" or result.data.received != message["id"]:
            raise PathDown(f"{message['to']} answered {result.action}")
        return {"id": message["id"], "via": "elicitation"}

    def listening(self, agent_id: str) -> bool:
        """Whether the agent holds a `listen` call open."""
        return agent_id in self._listeners

    def forget_listener(self, agent_id: str) -> None:
        """The agent's elicitation connection is gone: its `listen` call ends."""
        listener = self._listeners.pop(agent_id, None)
        if listener is not None:
            listener[1].set()

    def close_listeners(self) -> None:
        """Let every open `listen` call return (the agents are shutting down)."""
        for _, closed in self._listeners.values():
            closed.set()


class Agent:
    """An agent: two MCP client connections to the bridge (long poll and elicitation) and its inbox."""

    def __init__(self, agent_id: str, bridge: Bridge) -> None:
        self.id = agent_id
        self.bridge = bridge
        self.inbox = Inbox()
        self.elicitation: anyio.CancelScope | None = None

    async def _on_elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        message = json.loads(params.message)
        await anyio.sleep(0.005)  # the agent reads the message before it answers
        self.inbox.take(message, "elicitation")
        return types.ElicitResult(action="accept", content={"received": message["id"]})

    async def poll(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The legacy connection: long poll, take, acknowledge, forever."""
        async with Client(self.bridge.server, mode="legacy") as client:
            task_status.started()
            while True:
                result = await client.call_tool("wait_for_messages", {"agent_id": self.id, "timeout": 5.0})
                batch = (result.structured_content or {}).get("result") or []
                for message in batch:
                    self.inbox.take(message, "long-poll")
                if batch:
                    await client.call_tool("ack", {"agent_id": self.id, "ids": [m["id"] for m in batch]})

    async def listen(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The modern connection: one `listen` call held open; messages arrive as elicitations."""
        with anyio.CancelScope() as scope:
            self.elicitation = scope
            async with Client(self.bridge.server, mode="legacy", elicitation_callback=self._on_elicit) as client:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(client.call_tool, "listen", {"agent_id": self.id})
                    while not self.bridge.listening(self.id):
                        await anyio.sleep(0.001)
                    task_status.started()

    def kill_elicitation(self) -> None:
        """Chaos: the agent's elicitation connection dies at once, whatever is in flight on it."""
        if self.elicitation is not None:
            self.elicitation.cancel()
        self.bridge.forget_listener(self.id)

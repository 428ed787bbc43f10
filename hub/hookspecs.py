"""Every omnihub hook, in one place.

Implementations may accept fewer arguments than the specification, so a later argument
breaks no plugin. Registration hooks are synchronous; event hooks may be `async def` and
are awaited by the hub, each implementation isolated: one that raises is logged with its
plugin's name and the others still run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from hub.adapter import Account, Adapter
    from hub.models import Conversation, Message
    from scrm.models import Customer

hookspec = pluggy.HookspecMarker("omnihub")


# ---- registration (at start-up, synchronous) ----------------------------------------------

@hookspec
def register_adapters(register: Callable[[Adapter], None]) -> None:
    """Call `register(adapter)` for each channel adapter this plugin provides.

    Two adapters with the same name stop start-up with an error.
    """


@hookspec
def background_tasks(hub: Any, role: str) -> list[Callable[[], Awaitable[None]]] | None:
    """Long-running coroutines to run while the hub runs (a mail receiver, a poller).

    `role` is "web" in the HTTP process and "worker" in a job worker (`omnihub serve` is
    both). Return coroutine functions; they are started after start-up and cancelled at
    shutdown. Each must survive its own errors: one that raises is logged and not restarted.
    """


# ---- events (in the follow-up job, after the message is stored) --------------------------

@hookspec
def message_received(message: Message, customer: Customer, conversation: Conversation,
                     account: Account | None, settings: Any, hub: Any) -> None:
    """An inbound message was stored. Called once per message, in the background job.

    `account` is the channel account it came in on (None if it is no longer configured);
    `hub` is the running hub, for plugins that need its services.

    May be `async def`. Return values are ignored.
    """


@hookspec
def conversation_opened(conversation: Conversation, customer: Customer,
                        message: Message) -> None:
    """A new conversation was opened (or a resolved one reopened) by `message`.

    May be `async def`. Called before `message_received` for the same message.
    """


@hookspec
def customers_merged(merge: Any, source_id: Any, target_id: Any) -> None:
    """Two customers became one (`merge` is the audit record; the source survives as a
    pointer to the target). May be `async def`.
    """


@hookspec
def handoff_resolved(handoff: Any, message: Message, conversation: Conversation) -> None:
    """A customer arrived on another channel with an app's handoff; `message` brought it and
    `conversation` now carries its context. May be `async def`.
    """


@hookspec
def message_status_changed(message: Message, old_status: str, new_status: str) -> None:
    """An outbound message moved on: queued → sent → delivered/read, or → failed.

    May be `async def`. Return values are ignored.
    """

"""A Grid that collects replies as they arrive.

Flower's grid to a remote SuperLink checks for replies every 3 s, so each exchange of a round
(training, evaluation, each SecAgg+ stage) ends on average 1.5 s after its last reply. This one
checks after 0.1 s and doubles the wait up to Flower's 3 s: a short exchange ends promptly, and a
long one costs the SuperLink no more requests than Flower's own loop. Everything else is the
wrapped grid's; ``send_and_receive`` keeps Flower's contract (push, then pull until every reply
or the timeout, and return what arrived).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

FIRST_WAIT_S = 0.1
LONGEST_WAIT_S = 3.0  # Flower's own interval


class PromptGrid(Grid):
    def __init__(
        self, grid: Grid, *, clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.grid = grid
        self.clock, self.sleep = clock, sleep

    def set_run(self, run: Any) -> None:  # Flower's Run
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # fmt: skip
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:  # Flower's NodeInfo records
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        end = self.clock() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        wait = FIRST_WAIT_S
        while timeout is None or self.clock() < end:
            arrived = list(self.pull_messages(waiting))
            replies.extend(arrived)
            waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if not waiting:
                break
            self.sleep(wait if timeout is None else max(0.0, min(wait, end - self.clock())))
            wait = min(2 * wait, LONGEST_WAIT_S)
        return replies

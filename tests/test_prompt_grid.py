"""server/prompt_grid.py: replies are collected soon after they arrive, with Flower's contract
for send_and_receive kept (every reply, or what arrived by the timeout), and every other call
left to the wrapped grid."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import pytest

from server.prompt_grid import LONGEST_WAIT_S, PromptGrid

pytestmark = pytest.mark.unit


class FakeGrid:
    """Replies to message ``i`` become available at ``ready[i]`` seconds on a fake clock."""

    def __init__(self, ready: list[float]) -> None:
        self.ready, self.now, self.looks = ready, 0.0, []
        self.calls: list[str] = []

    def push_messages(self, messages: Iterable[object]) -> list[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids: Iterable[str]) -> list[object]:
        wanted = set(ids)
        self.looks.append(self.now)
        out = [f"m{i}" for i, t in enumerate(self.ready) if t <= self.now and f"m{i}" in wanted]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m)) for m in out]

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.now += s

    def __getattr__(self, name: str):  # noqa: ANN204 - records what PromptGrid hands on
        return lambda *a, **k: self.calls.append(name) or name


def exchange(ready: list[float], timeout: float | None) -> tuple[list[str], FakeGrid]:
    fake = FakeGrid(ready)
    grid = PromptGrid(fake, clock=lambda: fake.now, sleep=fake.sleep)  # type: ignore[arg-type]
    replies = grid.send_and_receive([object() for _ in ready], timeout=timeout)
    return sorted(r.metadata.reply_to_message_id for r in replies), fake


def test_a_quick_reply_is_collected_within_a_fraction_of_a_second() -> None:
    """Looks at 0, 0.1, 0.3, 0.7 s: a reply ready at 0.35 s is taken at 0.7 s (Flower: 3 s)."""
    replies, fake = exchange([0.2, 0.35], timeout=60)
    assert replies == ["m0", "m1"]
    assert fake.looks == pytest.approx([0.0, 0.1, 0.3, 0.7])


def test_waits_double_up_to_flowers_interval_and_no_further() -> None:
    replies, fake = exchange([100.0], timeout=None)
    waits = [b - a for a, b in zip(fake.looks, fake.looks[1:], strict=False)]
    assert replies == ["m0"] and max(waits) == pytest.approx(LONGEST_WAIT_S)
    assert waits[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.0])
    assert len(fake.looks) < 40  # about Flower's one look per 3 s over a long wait, not one per 0.1 s


def test_the_timeout_returns_what_arrived_and_is_not_overslept() -> None:
    replies, fake = exchange([1.0, 1e9], timeout=5.0)
    assert replies == ["m0"] and fake.now == pytest.approx(5.0)


def test_everything_but_the_exchange_is_the_wrapped_grids() -> None:
    fake = FakeGrid([])
    grid = PromptGrid(fake)  # type: ignore[arg-type]
    grid.set_run(1)
    grid.create_message(None, "train", 1, "1")  # type: ignore[arg-type]
    grid.get_node_ids()
    grid.get_nodes()
    assert grid.run is not None
    assert fake.calls == ["set_run", "create_message", "get_node_ids", "get_nodes"]

"""The output side of a session, with a fake runtime: a turn's final pass does not hold back the next turn's deltas."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from chorus_server.engine.adapters import Vocabulary
from chorus_server.live.ctc_stream import IncrementalCTC
from chorus_server.live.results import Results, Turn
from chorus_server.live.steps import TurnSteps

VOCAB = Vocabulary(("<pad>", "|", "a", "b"), blank_id=0, word_delimiter_id=1)


class SlowFinalPass:
    """A turn's backbone work whose final pass waits for `release` (as one queued behind file windows would)."""

    vocab = VOCAB

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def transcribe(self, audio: Any, decoding: Any = None) -> Any:
        await self.gate.wait()
        return SimpleNamespace(transcript=SimpleNamespace(text="a"))

    def release(self) -> None:
        pass


def turn(name: str, gate: asyncio.Event) -> Turn:
    steps = TurnSteps(3200, 0, 320)
    audio = [np.zeros(3520, np.float32)]
    return Turn(name, None, SlowFinalPass(gate), "", steps, IncrementalCTC(VOCAB), 0, audio=audio)  # type: ignore[arg-type]


def step_item(token: int) -> asyncio.Future[torch.Tensor]:
    logits = torch.full((10, len(VOCAB.tokens)), -5.0)
    logits[:, token] = 5.0
    future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
    future.set_result(logits)
    return future


def test_the_next_turns_deltas_do_not_wait_for_a_turns_final_pass():
    async def scenario() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        got_delta = asyncio.Event()

        async def send(event: dict[str, Any]) -> None:
            sent.append(event)
            if event["type"].endswith(".delta") and event["item_id"] == "second":
                got_delta.set()

        gate = asyncio.Event()
        runtime = SimpleNamespace(metrics=SimpleNamespace(observe_realtime_delta=lambda s: 0))
        results = Results(runtime, SimpleNamespace(tenant="t"), send, 16000)  # type: ignore[arg-type]
        results.start("test")
        first, second = turn("first", gate), turn("second", gate)
        [step] = first.steps.extend(np.zeros(3520, np.float32))
        results.step(first, step_item(2), step, 0.0)
        results.end(first, 0.22)
        [step] = second.steps.extend(np.zeros(3520, np.float32))
        results.step(second, step_item(3), step, 0.0)
        await asyncio.wait_for(got_delta.wait(), 5)  # while the first turn's final pass is still waiting
        gate.set()
        await results.close()
        return sent

    sent = asyncio.run(scenario())
    assert [(e["type"].rsplit(".", 1)[-1], e["item_id"]) for e in sent] == [
        ("delta", "first"),
        ("delta", "second"),
        ("completed", "first"),
    ]

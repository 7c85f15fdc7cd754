"""Several streams at once: each wave is one Stage run over a table of rows,
consumed by its own thread, and every finished batch of every wave lands in one
queue that the driver reads.

A run's rows are not all known when it starts: the second turn of an MT-Bench
question exists once the model answered the first, and a judgement once the
answers it judges exist. Ray Data streams a fixed table, so the driver starts
a new wave with the rows that became ready while the waves before it run:
generation and judging overlap, and the model stays loaded throughout.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from raveval.stream.stage import Stage

# How long stop() waits for the waves' threads to reach their next batch and close their streams.
STOP_WAIT_S = 5.0


@dataclass(eq=False)
class Wave:
    kind: str          # what the driver does with its batches ("model", "judge")
    stage: Stage
    table: pa.Table
    thread: Optional[threading.Thread] = None
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class Event:
    wave: Wave
    batch: Optional[pa.Table] = None           # a finished batch
    error: Optional[BaseException] = None      # the wave failed
    # neither: the wave is done


class Waves:
    def __init__(self):
        self.events: queue.Queue[Event] = queue.Queue()
        self.running: list[Wave] = []

    def start(self, kind: str, stage: Stage, table: pa.Table) -> Wave:
        wave = Wave(kind, stage, table)
        wave.thread = threading.Thread(target=self._consume, args=(wave,), name=f"raveval-{stage.name}", daemon=True)
        self.running.append(wave)
        wave.thread.start()
        return wave

    def count(self, kind: str) -> int:
        return sum(w.kind == kind for w in self.running)

    def next(self, timeout: float) -> Optional[Event]:
        """The next event of any wave, or None after `timeout` seconds; a wave that
        is done or failed is no longer running when its event is returned."""
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event.batch is None:
            self.running.remove(event.wave)
        return event

    def stop(self, wait: bool = True) -> None:
        """Every running wave closes its stream (Ray Data's executor with it) at its
        next batch; with `wait`, waits a bounded time for that (Ray may be shut down next)."""
        for w in self.running:
            w.stop.set()
        deadline = time.monotonic() + (STOP_WAIT_S if wait else 0.0)
        for w in self.running:
            w.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.running.clear()

    def _consume(self, wave: Wave) -> None:
        try:
            batches = wave.stage.run(wave.table)
            try:
                for batch in batches:
                    if wave.stop.is_set():
                        return
                    self.events.put(Event(wave, batch))
            finally:
                batches.close()  # in this thread: the generator is not running now
            self.events.put(Event(wave))
        except BaseException as e:  # the driver decides; a stopped wave's error is nobody's concern
            if not wave.stop.is_set():
                self.events.put(Event(wave, error=e))

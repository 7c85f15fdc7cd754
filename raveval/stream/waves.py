"""Several streams at once: each wave is one Stage run over a table of rows,
consumed by its own thread, and every finished batch of every wave lands in one
queue that the driver reads.

A run's rows are not all known when it starts: the second turn of an MT-Bench
question exists once the model answered the first, and a judgement once the
answers it judges exist. Ray Data streams a fixed table, so the driver starts
a new wave with the rows that became ready while the waves before it run:
generation and judging overlap, and the model stays loaded throughout.

Rows come back two ways: what each call returns (through Ray Data) and the
rows that finished while their call still ran (through the run's sink, taken
by one more thread every TAKE_S). Both reach the queue the same way, each row
once, and a wave's end only after all its rows.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import pyarrow as pa

from raveval.stream.sink import TAKE_S, start_sink, take
from raveval.stream.stage import ROW_INDEX, Stage

# How long stop() waits for the waves' threads to end after their streams are shut down
# (a signal's stop must be quick: `ray job stop` kills the driver 3 s after SIGTERM).
STOP_WAIT_S = 5.0
STOP_FAST_S = 2.0


@dataclass(eq=False)
class Wave:
    kind: str          # what the driver does with its batches ("model", "judge")
    stage: Stage
    table: pa.Table
    channel: int = 0   # its rows' channel in the sink
    thread: Optional[threading.Thread] = None
    stop: threading.Event = field(default_factory=threading.Event)
    seen: set = field(default_factory=set)  # ROW_INDEX of the rows delivered
    streams: set = field(default_factory=set)  # its Ray Data dataset's id, once its stream starts


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
        self.sink = None  # started with the first wave (Ray runs by then)
        self.channels: dict[int, Wave] = {}  # the waves whose rows may still be in the sink
        self.numbers = itertools.count()
        # One deliverer at a time, so that a wave's early rows are queued before its end.
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.taker: Optional[threading.Thread] = None

    def start(self, kind: str, stage: Stage, table: pa.Table) -> Wave:
        if self.sink is None:
            self.sink = start_sink()
            self.taker = threading.Thread(target=self._take_early, name="raveval-sink", daemon=True)
            self.taker.start()
        wave = Wave(kind, stage, table, channel=next(self.numbers))
        wave.thread = threading.Thread(target=self._consume, args=(wave,), name=f"raveval-{stage.name}", daemon=True)
        with self.lock:
            self.channels[wave.channel] = wave
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
        if event.batch is None and event.wave in self.running:
            self.running.remove(event.wave)
        return event

    def stop(self, wait: bool = True) -> None:
        """End every running wave: shut down its stream (Ray Data's executor) and wait a
        bounded time for its thread, and the sink's, to end. Ray is shut down next, and
        a thread still inside Ray then makes Ray end the whole process with status 1.
        `wait` False (a signal): a shorter bound, and the sink actor is left to Ray's end."""
        self.closing.set()
        for w in self.running:
            w.stop.set()
        if not wait:
            # A stream cut short while it starts would be logged as a stack trace.
            logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        threads = [t for t in [w.thread for w in self.running] + [self.taker] if t is not None]
        deadline = time.monotonic() + (STOP_WAIT_S if wait else STOP_FAST_S)
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            # Again each time: a wave's thread may have started its stream since.
            _shut_down_streams({s for w in self.running for s in w.streams})
            next(t for t in threads if t.is_alive()).join(timeout=0.1)
        self.running.clear()
        if wait and self.sink is not None:
            import ray

            ray.kill(self.sink)
            self.sink = None

    def _consume(self, wave: Wave) -> None:
        try:
            batches = wave.stage.run(wave.table, (self.sink, wave.channel), wave.streams)
            try:
                for batch in batches:
                    if wave.stop.is_set():
                        return
                    with self.lock:
                        self._deliver(wave, batch)
            finally:
                batches.close()  # in this thread: the generator is not running now
            if wave.stop.is_set():  # its stream was shut down: no more calls to Ray
                return
            with self.lock:  # every call has returned: the sink holds the wave's last early rows
                for _, table in take(self.sink, wave.channel):
                    self._deliver(wave, table)
                del self.channels[wave.channel]
                self.events.put(Event(wave))
        except BaseException as e:  # the driver decides; a stopped wave's error is nobody's concern
            if not wave.stop.is_set():
                self.events.put(Event(wave, error=e))

    def _take_early(self) -> None:
        """Every TAKE_S, the rows the calls sent early, one batch per wave."""
        while not self.closing.wait(TAKE_S):
            with self.lock:
                try:
                    by_channel = defaultdict(list)
                    for channel, table in take(self.sink):
                        by_channel[channel].append(table)
                    for channel, tables in by_channel.items():
                        if channel in self.channels:  # else a late copy of an ended wave's rows
                            self._deliver(self.channels[channel], pa.concat_tables(tables))
                except Exception as e:  # the run cannot go on without its rows: any running wave reports it
                    if self.channels and not self.closing.is_set():
                        self.events.put(Event(next(iter(self.channels.values())), error=e))
                    return

    def _deliver(self, wave: Wave, batch: pa.Table) -> None:
        """Queue the rows of `batch` not delivered before (a call computed again sends them twice)."""
        index = batch.column(ROW_INDEX).to_pylist()
        fresh = [i not in wave.seen for i in index]
        wave.seen.update(index)
        if not all(fresh):
            batch = batch.filter(pa.array(fresh))
        batch = batch.drop_columns([ROW_INDEX])
        if batch.num_rows:
            wave.stage.check_output(batch)
            self.events.put(Event(wave, batch))


def _shut_down_streams(ids: set[str]) -> None:
    """Shut down the running Ray Data executors of the datasets `ids` (not other runs'
    in this process): their wave threads, waiting for the next batch, then see their
    stream end at once instead of after the batch being computed. An executor is the
    thread Ray Data names after its dataset's id and execution index."""
    try:
        from ray.data._internal.execution.streaming_executor import StreamingExecutor
    except ImportError:  # another Ray Data: the waves then end at their next batch (stop's bound)
        return
    names = {f"StreamingExecutor-{i}" for i in ids}
    for t in threading.enumerate():
        if isinstance(t, StreamingExecutor) and t.name.rsplit("_", 1)[0] in names:
            t.shutdown(force=True)

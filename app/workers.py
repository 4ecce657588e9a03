"""Several server processes on one port (``ALEXNET_WORKERS`` > 1): the supervisor and its workers.

One process parses HTTP, multipart and JPEGs on one core at a time (the GIL), far fewer
uploads a second than a GPU classifies. Each worker is the whole single-process server (its
own engine, batcher, drain) in a fresh interpreter (spawned, not forked: no torch or CUDA state
is inherited); the parent binds the socket once and hands it to every worker, and the kernel
gives each new connection to one of the processes accepting on it. The parent imports no torch.

- **Start-up.** Worker 0 starts alone and listens at once, so /healthz answers and /readyz says
  503 while it warms up, as a single server does. Once it is ready the others start together,
  and each listens only when warm (``Startup.warm_before_listening``): after the server first
  says ready, no connection ever reaches a worker still warming up. Starting one first also
  means a checkpoint or a warm-up that fails is reported once, by one process, and that
  torch.compile fills its cache once, the others starting from it.
- **Stop.** SIGTERM or SIGINT to the parent is sent on as SIGTERM to every worker, which drains
  as a single server does (``app.server``: every admitted request is answered); the parent
  exits 0 when all have. (Never SIGINT: a second SIGINT makes uvicorn skip its drain, and
  Ctrl-C in a terminal already sends one to every process of the group.)
- **Failure.** A worker that ends before it is ready stops the others; the parent exits 3 when
  it exited 3 (it has logged why, in one line), else 1. A worker that dies after it was ready
  is logged as an error, the others drain, and the parent exits 1: the orchestrator restarts
  the whole server (with its backoff, counting restarts) instead of the server living on at
  part of its capacity unnoticed. A worker whose parent dies drains and stops.
- **Metrics.** prometheus_client's multiprocess mode, in a folder the parent creates and removes:
  every scrape, whichever worker answers it, reports the sum over the workers (``app.metrics``).
- **CPU.** Unless ``ALEXNET_TORCH_THREADS`` is set, each worker's model gets cores ÷ workers
  threads (at least 1). The CPU turns of ``app.gate`` are per process: a worker's decodes wait
  for its own batches, not for another worker's.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Literal

from app.config import Settings
from app.startup import EXIT_NEVER_READY

logger = logging.getLogger(__name__)

EXIT_WORKER_DIED = 1
METRICS_DIR_PREFIX = "alexnet-metrics-"  # then the supervisor's pid: a folder whose process is gone is stale
_spawn = multiprocessing.get_context("spawn")


def worker_settings(settings: Settings, cores: int | None = None) -> Settings:
    """``settings`` for each worker: the cores (default: those this process may run on) shared
    out among the workers' models, unless ``torch_threads`` says how many each takes."""
    if settings.torch_threads:
        return settings
    cores = cores or len(os.sched_getaffinity(0))
    return settings.model_copy(update={"torch_threads": max(1, cores // settings.workers)})


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    says_ready: Connection | None  # None once it has said so, or died without saying
    ready: bool = False
    ended: bool = False


class Supervisor:
    """Runs ``settings.workers`` workers on one socket until they stop; ``run()`` returns the exit status."""

    def __init__(self, settings: Settings, log_format: Literal["json", "text"], started: float) -> None:
        self.settings = worker_settings(settings)
        self.log_format = log_format
        self.started = started  # time.monotonic() at the process start: the same clock in every process
        self.workers: list[_Worker] = []
        self.stopping = False
        self.status = 0
        self._signals: list[int] = []

    def run(self, sock: socket.socket) -> int:
        """Serve on ``sock`` (listening already, ``app.startup.listen``: a port clash has exited 2)."""
        remove_stale_metrics_dirs(Path(tempfile.gettempdir()))
        metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client when a worker imports it
        wake_read, wake_write = socket.socketpair()
        wake_write.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_write.fileno())
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            logger.info(
                "starting %d workers (torch threads: %d each)",
                self.settings.workers,
                self.settings.torch_threads,
                extra={"fields": {"workers": self.settings.workers, "torch_threads": self.settings.torch_threads}},
            )
            self._start(0, sock)
            self._supervise(sock, wake_read)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            wake_read.close()
            wake_write.close()
            sock.close()
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return self.status

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals.append(sig)  # the wake-up socket has woken the loop; it acts on it

    def _start(self, index: int, sock: socket.socket) -> None:
        says_ready, tells_ready = _spawn.Pipe(duplex=False)
        process = _spawn.Process(
            target=_worker_main,
            args=(index, self.settings, sock, self.log_format, self.started, tells_ready),
            name=f"alexnet-worker-{index}",
        )
        process.start()
        tells_ready.close()  # the worker's end: reading says EOF when it is gone
        self.workers.append(_Worker(index, process, says_ready))
        logger.info("worker %d started (pid %d)", index, process.pid, extra={"fields": {"pid": process.pid}})
        if self.stopping:  # a signal came while it was being started
            _terminate(process)

    def _supervise(self, sock: socket.socket, wake: socket.socket) -> None:
        while live := [worker for worker in self.workers if not worker.ended]:
            listening = [worker.says_ready for worker in live if worker.says_ready is not None]
            woken = wait([wake, *listening, *(worker.process.sentinel for worker in live)])
            if wake in woken:
                with suppress(BlockingIOError):
                    wake.recv(64)
            while self._signals:
                self._stop(f"received {signal.Signals(self._signals.pop(0)).name}: draining the workers", 0)
            for worker in live:
                if worker.says_ready is not None and worker.says_ready in woken:
                    self._heard(worker, sock)
            for worker in live:
                if worker.process.sentinel in woken:
                    worker.process.join()
                    self._ended(worker)

    def _heard(self, worker: _Worker, sock: socket.socket) -> None:
        assert worker.says_ready is not None
        try:
            worker.says_ready.recv()
        except EOFError:  # it died without being ready: its exit tells the rest
            worker.says_ready = None
            return
        worker.says_ready.close()
        worker.says_ready, worker.ready = None, True
        if self.stopping:
            return
        if worker.index == 0:
            for index in range(1, self.settings.workers):
                self._start(index, sock)
            sock.close()  # the workers hold it now: it stops listening when the last of them does
        if all(w.ready for w in self.workers) and len(self.workers) == self.settings.workers:
            logger.info(
                "all %d workers ready", self.settings.workers, extra={"fields": {"workers": self.settings.workers}}
            )

    def _ended(self, worker: _Worker) -> None:
        from prometheus_client import multiprocess

        worker.ended = True
        multiprocess.mark_process_dead(worker.process.pid)  # its live gauges leave the sums
        code, pid = worker.process.exitcode, worker.process.pid
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        if self.stopping:
            logger.info("worker %d (pid %s) stopped (%s)", worker.index, pid, how)
        elif not worker.ready and code == EXIT_NEVER_READY:  # it has said why
            self._stop(f"worker {worker.index} (pid {pid}) can never become ready; stopping", EXIT_NEVER_READY)
        else:
            when = "while serving" if worker.ready else "before it was ready"
            self._stop(f"worker {worker.index} (pid {pid}) died {when} ({how}); stopping the server", EXIT_WORKER_DIED)

    def _stop(self, why: str, status: int) -> None:
        """Stop every worker (each drains) and exit with ``status``; an error when ``status`` says one."""
        if self.stopping:
            return
        logger.log(logging.ERROR if status == EXIT_WORKER_DIED else logging.INFO, "%s", why)
        self.stopping, self.status = True, status
        self._terminate_all()

    def _terminate_all(self) -> None:
        for worker in self.workers:
            _terminate(worker.process)


def remove_stale_metrics_dirs(parent: Path) -> list[Path]:
    """Remove the metrics folders in ``parent`` whose server process is gone (a supervisor killed
    with SIGKILL cannot remove its own); returns them."""
    stale = []
    for folder in parent.glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid = folder.name.removeprefix(METRICS_DIR_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            stale.append(folder)
    if stale:
        logger.info("removed %d metrics folders left by servers that were killed: %s", len(stale), stale[0].parent)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _terminate(process: BaseProcess) -> None:
    if process.exitcode is None:
        process.terminate()  # SIGTERM: the worker drains


def _worker_main(
    index: int,
    settings: Settings,
    sock: socket.socket,
    log_format: Literal["json", "text"],
    started: float,
    tells_ready: Connection,
) -> None:
    """One worker, in its own process: the single-process server on the parent's socket."""
    # As in a single server, the platform's start method for the libraries' own subprocesses
    # (a spawned child inherits "spawn", whose semaphores the parent's resource tracker would
    # report as leaked when the worker ends on its re-raised SIGTERM).
    multiprocessing.set_start_method(None, force=True)
    from app.logs import configure_logging, quiet_native_logs

    quiet_native_logs(log_format)  # before torch is imported
    from app.server import build_server
    from app.startup import Startup, quiet_foreign_logs

    configure_logging(settings.log_level, log_format)
    quiet_foreign_logs()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(index))
    threading.Thread(target=_stop_with_parent, name="parent-watch", daemon=True).start()
    startup = Startup(started=started, warm_before_listening=index > 0)
    startup.on_ready = lambda: tells_ready.send(True)
    server = build_server(settings, startup)
    with suppress(KeyboardInterrupt):  # Ctrl-C in a terminal: uvicorn re-raises it after draining
        server.run(sockets=[sock])
    if startup.failure is not None or not server.started:
        sys.exit(EXIT_NEVER_READY)


class _WorkerField(logging.Filter):
    """Adds ``worker`` (its index) to the fields of every log line the worker writes."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = {"worker": self.index, **(getattr(record, "fields", None) or {})}
        return True


def _stop_with_parent() -> None:
    """Drain and stop (as on SIGTERM) when the parent is gone, so no orphan keeps the port."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

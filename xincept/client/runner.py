"""The site's own ClientApp runner: the installed xincept code answers every message, never server-supplied code.

Flower's default SuperNode launches a fresh ``flwr-clientapp`` process per message, which unpacks the app
bundle (FAB) the server submitted and imports the ClientApp it names, so the server decides what code
runs at the site. ``xincept-client join`` instead starts Flower's SuperNode with ``--isolation process`` and this
runner beside it, which answers every task with :func:`answer_task`. The runner takes each task from the
SuperNode's local Runtime API (127.0.0.1; the SuperNode hands tasks only to requests signed with join's per-start
secret, which only this runner holds),
reads the FAB only as data (a zip whose files and declared components are checked, never unpacked onto
``sys.path`` or imported) and answers with :data:`xincept.client.app.app` from the installed package.
A FAB that holds code or names other components is refused before anything runs.

One process serves the whole run: torch, the backbones and the site's cached features stay in memory
between messages (a fresh process per message re-imported torch and reloaded the cache every round).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from xincept.common.fab import COMPONENTS, FAB_FILES, FabRefused, check_fab  # noqa: F401 (the site's check, re-exported)

log = logging.getLogger(__name__)

POLL_S = 0.02
# How long one request of a task to the SuperNode may be retried. A task whose run ended meanwhile (the server
# restarted and the SuperNode dropped the run's message) is then abandoned instead of holding the runner forever:
# the runner takes one task at a time, and the next run's messages wait behind it.
TASK_REQUEST_LIMIT_S = 120.0


@dataclass
class Runner:
    """Takes ClientApp tasks from the SuperNode at ``address`` (its Runtime API on 127.0.0.1) and answers them."""

    address: str
    stop: bool = False

    def run(self) -> None:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.constant import TaskType

        from xincept import flower_compat
        from xincept.client.app import app  # the installed code: imported once, before any task arrives

        # the SuperNode hands over a task before it holds the message's arrays: retry in ms, not Flower's 1 s, 2 s ...
        flower_compat.apply("runner")

        client = self._client(None)
        signal.signal(signal.SIGTERM, self._stop)
        log.info("site runner: answering ClientApp tasks from %s with the installed xincept code", self.address)
        while not self.stop:
            try:
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value],
                                                            agentapp_fab_hashes=[]))
            except Exception as exc:  # noqa: BLE001 (the SuperNode restarts while it reconnects to the server)
                log.debug("site runner: the SuperNode's Runtime API is not answering (%s); retrying", exc)
                time.sleep(1.0)
                continue
            if res.HasField("task") and res.token:
                log.debug("site runner: task %s of run %s", res.task.task_id, res.task.run_id)
                self._serve(app, res.token)
                log.debug("site runner: task %s done", res.task.task_id)
            else:
                time.sleep(POLL_S)
        client.close()

    def _stop(self, signum: int, frame: object) -> None:
        """SIGTERM (join stopping, or its death: PR_SET_PDEATHSIG): stop now, even in the middle of a task."""
        self.stop = True
        raise KeyboardInterrupt

    def _client(self, token: str | None):
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        interceptors = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp" if token else "SuperExec")]
        retry = make_simple_http_retry_invoker()
        if token:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
            retry.max_time = TASK_REQUEST_LIMIT_S
            retry.should_giveup = task_giveup(retry.should_giveup)
        else:  # AcquireTask: signed with the SuperNode's local secret (xincept.client.supernode.run_supernode)
            interceptors += acquire_signer()
        return RuntimeHttpClient.from_server_address(server_address=self.address, insecure=True, root_certificates=None,
                                                     interceptors=interceptors, retry_invoker=retry)

    def _serve(self, app, token: str) -> None:
        """One task over the SuperNode's Runtime API."""
        client = self._client(token)
        try:
            answer_task(app, client)
        finally:
            client.close()


def task_giveup(flowers: Callable[[Exception], bool] | None) -> Callable[[Exception], bool]:
    """A task's requests give up on 401 (the SuperNode finished the task: its run ended while its message was being
    received), where Flower's retry, written for a ClientApp process per task, sends SIGINT to its own process: here
    that would stop the runner, and with it the site, for one abandoned task. Everything else as Flower decides."""

    def giveup(exc: Exception) -> bool:
        if _unauthorized(exc):
            return True
        return bool(flowers(exc)) if flowers is not None else False

    return giveup


def _unauthorized(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED


def until_finished(heartbeat_fn: Callable[[], bool]) -> Callable[[], bool]:
    """A task's heartbeat that stops reporting once the SuperNode has finished the task (401: its run ended), instead
    of a traceback from Flower's heartbeat thread; the task itself is abandoned by its own next request."""
    finished = False

    def beat() -> bool:
        nonlocal finished
        if finished:
            return True
        try:
            return heartbeat_fn()
        except Exception as exc:  # noqa: BLE001 (re-raised unless it is the 401 of a finished task)
            if not _unauthorized(exc):
                raise
            finished = True
            log.debug("site runner: the SuperNode finished this task (its run ended); no more heartbeats")
            return True

    return beat


def acquire_signer() -> list:
    """The interceptor that signs AcquireTask with the secret named by ``XINCEPT_RUNTIME_SECRET_FILE`` (none without)."""
    import os
    from pathlib import Path

    from xincept.common.runtime_secret import RUNNER_SECRET_ENV

    path = os.environ.get(RUNNER_SECRET_ENV)
    if not path:
        return []
    from flwr.supercore.interceptors import SuperExecAuthHttpInterceptor

    return [SuperExecAuthHttpInterceptor(master_secret=Path(path).read_bytes(),
                                         protected_methods=["/flwr.proto.Runtime/AcquireTask"])]


def answer_task(app, client) -> None:
    """One ClientApp task: pull the message, check the FAB as data, answer with the installed app, push the reply.

    ``client`` is the SuperNode's Runtime API (Flower's ``RuntimeHttpClient``, holding the task's token).
    """
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    from xincept.client.mods import sanitise

    heartbeat = HeartbeatSender(until_finished(make_task_heartbeat_fn_http(client)))
    heartbeat.start()
    context, status, details = None, SubStatus.FAILED, "task failed"
    try:
        message, context, _run, fab = pull_task_input(client)
        try:
            check_fab(fab.content)
            reply = app(message, context)
            status, details = SubStatus.COMPLETED, ""
        except FabRefused as exc:
            log.error("site refuses the run: %s", exc)
            reply = Message(Error(code=ErrorCode.LOAD_CLIENT_APP_EXCEPTION, reason=sanitise(f"site refuses the run: {exc}")),
                            reply_to=message)
            details = "refused: the server's app bundle"
        except Exception as exc:  # noqa: BLE001 (the ClientApp's own mods answer errors; this is the last net)
            log.exception("site: the ClientApp raised")
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                  reason=sanitise(f"{type(exc).__name__}: {exc}")), reply_to=message)
        push_message(client, reply, context)
    except Exception as exc:  # noqa: BLE001 (a broken task must not stop the site)
        if context is None and _unauthorized(exc):  # the SuperNode finished the task: its run ended (a server restart)
            log.warning("site runner: a task's run ended before its message arrived; the task is abandoned")
        elif context is None:  # the message never arrived, or the SuperNode dropped it
            log.warning("site runner: a task's message could not be read (%s: %s); the task is abandoned",
                        type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        else:
            log.exception("site: task failed")
    finally:
        if heartbeat.is_running:
            heartbeat.stop()
        push_task_output(client=client, context=context, sub_status=status, details=details)


def main() -> None:
    """``python -m xincept.client.runner ADDRESS [PARENT_PID]``: run until SIGTERM or until the parent process is gone
    (started and stopped by ``xincept-client join``)."""
    import sys

    level = logging.DEBUG if os.environ.get("XINCEPT_RUNNER_DEBUG") else logging.INFO  # each task's steps, for diagnosis
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Runtime API request (every 20 ms) otherwise
    from xincept.common.cli import restore_interrupt

    restore_interrupt()  # the parent monitor stops this process with SIGINT
    if len(sys.argv) > 2:  # the parent (xincept-client join): stop when it is gone, however it ended
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(int(sys.argv[2]))
    try:
        Runner(sys.argv[1]).run()
    except KeyboardInterrupt:
        log.info("site runner: stopped")
    finally:
        # no waiting for worker threads (a task's heartbeat, an HTTP pool) at interpreter exit: an interrupted task
        # could leave one behind, and the process would then outlive its SuperNode, blocked in that wait
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()

"""Where the run and exec event streams resume: one rule, ``Last-Event-ID`` over ``?after=``.

Both routes take the same two inputs and read them the same way (``hearth.api.routes.execs``'s
``Resume``): the header, when sent, wins over the query; an id that is not one is 422
``invalid_input``, not a 500. In process on the fake backend, a run's events written to the
real store as its pump writes them.
"""

from __future__ import annotations

from hearth.api.app import create_app
from hearth.config import Settings
from tests.integration.api_fixtures import *  # noqa: F403
from tests.integration.api_fixtures import Api, assert_error
from tests.integration.test_run_events_kept import (
    EVENTS_PATH,
    append,
    complete,
    running_run,
    stream_ids,
)

EXEC_EVENTS_PATH = "/api/vms/{vm_id}/exec/{exec_id}/events"


async def test_the_run_stream_resumes_after_last_event_id_over_after(api: Api) -> None:
    vm_id, run_id, headers = await running_run(api, "ivy")
    await append(api, run_id, range(1, 4))
    await complete(api, run_id, 4)
    url = EVENTS_PATH.format(vm_id=vm_id, run_id=run_id)
    assert await stream_ids(api, url, headers) == [1, 2, 3, 4]
    assert await stream_ids(api, f"{url}?after=1", headers) == [2, 3, 4]
    assert await stream_ids(api, f"{url}?after=1", {**headers, "Last-Event-ID": "3"}) == [4]


async def test_the_run_stream_refuses_a_last_event_id_that_is_no_event_id(api: Api) -> None:
    vm_id, run_id, headers = await running_run(api, "jon")
    await append(api, run_id, range(1, 3))
    await complete(api, run_id, 3)
    url = EVENTS_PATH.format(vm_id=vm_id, run_id=run_id)
    for bad in (b"\xb2", b"-1", b"1e3", b"abc", str(2**63).encode()):
        refused = await api.client.get(url, headers={**headers, "Last-Event-ID": bad})
        assert_error(refused, 422, "invalid_input")
    assert_error(
        await api.client.get(f"{url}?after={2**63}", headers=headers), 422, "invalid_input"
    )


def test_both_event_streams_document_the_same_resume_parameters() -> None:
    spec = create_app(Settings.from_env({"HEARTH_STATE_DIR": "/nonexistent"})).openapi()

    def resume_parameters(path: str) -> list[dict[str, object]]:
        parameters = spec["paths"][path]["get"]["parameters"]
        return [p for p in parameters if p["in"] != "path"]

    run = resume_parameters(EVENTS_PATH)
    assert [(p["name"], p["in"]) for p in run] == [("after", "query"), ("last-event-id", "header")]
    assert resume_parameters(EXEC_EVENTS_PATH) == run

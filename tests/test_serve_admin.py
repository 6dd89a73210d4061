"""The admin actions inside one server process, without HTTP: what each swap and rollback lets go.

The HTTP routes are tested on real servers (test_serve*.py); this checks the memory side of
the actions, which a client cannot see: the engine a rollback swaps out is free the moment
the action ends, so the action does not wait for it (a snapshot kept in an action's locals
once made every rollback wait out the full settle timeout, 10 s, with no request in flight).
"""

from __future__ import annotations

import gc
import logging
import weakref

import pytest

pytest.importorskip("fastapi")

from lancedb_baai.engines import cache as _cache  # noqa: E402
from lancedb_baai.serve._admin import Admin  # noqa: E402
from lancedb_baai.serve._service import Service  # noqa: E402
from lancedb_baai.serve._settings import ModelOptions, ServeConfig  # noqa: E402


@pytest.fixture
def admin(tmp_path, st_model):
    config = ServeConfig(models=[ModelOptions(name=str(st_model), kind="embed")], state_dir=str(tmp_path / "state"),
                         admin_token="t" * 32)
    service = Service(config)
    service.start()
    yield Admin(service)
    service.stop()


def test_rollback_lets_the_swapped_out_engine_go_at_once(admin, st_model, zh_model, caplog):
    model_id = admin.service.models[str(st_model)].id
    caplog.set_level(logging.WARNING, logger="lancedb_baai.serve._service")
    for _ in range(2):  # the second round once caught what the first did not
        assert admin.swap(model_id, None, str(zh_model))["served"] == str(zh_model)
        swapped_in = weakref.ref(admin.service.models[model_id].current.engine)
        assert admin.rollback(model_id)["served"] == str(st_model)
        gc.collect()
        assert swapped_in() is None  # released and gone, not only dropped from the cache
        assert [e["model"] for e in _cache.CACHE.info() if e["loaded"]] == [str(st_model)]
    assert not [r for r in caplog.records if "still held" in r.getMessage()]


def test_an_acknowledgement_keeps_the_time_its_generation_was_first_served(admin, st_model, zh_model):
    """What /admin/engines shows as when each worker served a change: acknowledging the same
    generation again (as a replica told of its own swap does) does not move it."""
    service = admin.service
    model_id = service.models[str(st_model)].id
    admin.swap(model_id, None, str(zh_model))
    [first] = service.store.workers()
    service.acknowledge()
    [again] = service.store.workers()
    assert again["generation"] == first["generation"] and again["time"] == first["time"]
    assert again["load_s"][model_id] > 0  # the swap's load, as the worker measured it
    admin.rollback(model_id)
    [after] = service.store.workers()
    assert after["generation"] == first["generation"] + 1 and after["time"] > first["time"]

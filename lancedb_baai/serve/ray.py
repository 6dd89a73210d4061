"""``lancedb-baai serve --ray``: the same service on Ray Serve, swaps and rollbacks reaching every replica.

Each replica runs the app :func:`lancedb_baai.serve.create_app` builds (same routes, shapes,
micro-batching and engines), around its own :class:`~._service.Service`. What the single-host
server keeps in ``state.json`` is kept here in the Ray cluster: :class:`RayStore` records the
served state in the cluster's key-value store (GCS), mirrored to ``state_dir``'s file when one
is given, and broadcasts it as the deployment's ``user_config``.

An admin swap, sent to any replica, runs the single-host admin action (:mod:`._admin`): the
candidate is loaded warm on that replica and checked (readable, memory budget, vector width);
only then is the state recorded and pushed as the new ``user_config``. Ray Serve calls
``reconfigure`` on every running replica (and gives the config to every replica it starts
later); each loads the new model while its old one keeps answering, then installs it with one
assignment and acknowledges. The swap answers once every running replica serves the new model;
if one cannot load it, the recorded state and every replica go back to the old model and the
swap fails (all or nothing). A replica started later, after a crash or by autoscaling, reads
the recorded state in its constructor and comes up on the last good model; so does the
application deployed again from its config.

Needs the ``ray-serve`` extra: ``pip install 'lancedb_baai[ray-serve]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from copy import deepcopy
from typing import Any

import ray
from pydantic import BaseModel, Field, model_validator
from ray import serve
from ray.experimental import internal_kv

from .._version import __version__
from ..engines.choice import WORKERS_ENV
from ..runtimes.streams import throughput_by_default
from ._service import ServeError, Service, version_header
from ._settings import ADMIN_TOKEN_ENV, API_KEYS_ENV, ServeConfig
from ._state import Busy, StateStore, _write_atomically

logger = logging.getLogger(__name__)

APP_NAME = "lancedb-baai"
DEPLOYMENT = "LanceDBBAAI"
KV_NAMESPACE = "lancedb_baai"
SWAP_TIMEOUT_S = 600.0
"""Longest an admin action waits for every replica to serve what it recorded."""


class Placement(BaseModel):
    """How many replicas, and the CPUs and threads of each.

    ``replicas`` fixes the count; ``autoscale`` (MIN, MAX) lets Ray Serve's autoscaler follow
    the ongoing requests. ``num_cpus`` per replica may be fractional; by default the cluster's
    CPUs are shared out over the most replicas there may be, and each replica runs
    ``max(1, floor(num_cpus))`` threads, so replicas x threads <= cores.
    """

    replicas: int = Field(default=1, ge=1)
    autoscale: tuple[int, int] | None = None
    num_cpus: float | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, ge=1)
    name: str = APP_NAME
    route_prefix: str = "/"
    target_ongoing_requests: float = Field(default=8, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Placement:
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 0 <= low <= high or high < 1:
                raise ValueError(f"autoscale {low}:{high} must be MIN:MAX with 0 <= MIN <= MAX and MAX >= 1")
        return self

    @classmethod
    def parse_autoscale(cls, text: str) -> tuple[int, int]:
        """``"MIN:MAX"`` as the CLI's --autoscale takes it."""
        low, sep, high = text.partition(":")
        try:
            return int(low), int(high if sep else low)
        except ValueError:
            raise ValueError(f"--autoscale {text!r}: write it as MIN:MAX, e.g. 1:4") from None

    @property
    def most_replicas(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas

    def cpus(self) -> float:
        """CPUs per replica: given, else the cluster's (this host's before Ray starts) over the most replicas."""
        if self.num_cpus is not None:
            return self.num_cpus
        cores = ray.cluster_resources().get("CPU") if ray.is_initialized() else None
        cores = cores or os.cpu_count() or 1
        return max(0.01, int(100 * cores / self.most_replicas) / 100)

    def thread_count(self) -> int:
        return self.threads or max(1, int(self.cpus()))

    def replicas_per_node(self, node_cpus: float) -> int:
        """How many replicas may run on a node of ``node_cpus`` CPUs: they are the worker processes
        that could share one copy of the weights there."""
        return max(1, min(self.most_replicas, int(node_cpus / self.cpus() + 1e-9)))

    def deployment_options(self) -> dict[str, Any]:
        scale: dict[str, Any] = {"num_replicas": self.replicas}
        if self.autoscale is not None:
            low, high = self.autoscale
            scale = {"num_replicas": "auto", "autoscaling_config": {
                "min_replicas": low, "max_replicas": high,
                "target_ongoing_requests": self.target_ongoing_requests}}
        return {**scale, "ray_actor_options": {"num_cpus": self.cpus()}, "health_check_period_s": 2,
                "health_check_timeout_s": 30, "graceful_shutdown_timeout_s": 30}


# ---------------------------------------------------------------------------------- the record


def _kv_get(key: str) -> bytes | None:
    return internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)


def _kv_put(key: str, value: bytes, overwrite: bool = True) -> bool:
    """Store ``value``; with ``overwrite=False`` only if ``key`` is absent. True when it was present."""
    return bool(internal_kv._internal_kv_put(key, value, overwrite=overwrite, namespace=KV_NAMESPACE))


def _kv_del(key: str) -> None:
    internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)


class RayStore(StateStore):
    """The served state of one Ray Serve application, recorded in the cluster and broadcast to its replicas.

    The record lives in Ray's key-value store (GCS), so it outlives replicas and redeploys;
    with ``state_dir`` it is also written to ``state.json`` there, which outlives the cluster
    (read when the cluster has no record). ``push`` (set by a replica) broadcasts a recorded
    state to every replica and returns once they serve it.
    """

    def __init__(self, app_name: str, directory: str | os.PathLike | None = None,
                 replica: str | None = None) -> None:
        super().__init__(directory)
        self.app_name, self.replica = app_name, replica
        self.push: Callable[[dict[str, Any]], None] | None = None

    def _key(self, *parts: str) -> str:
        return "/".join(("serve", self.app_name, *parts))

    def read(self) -> dict[str, Any]:
        raw = _kv_get(self._key("state")) if ray.is_initialized() else None
        return json.loads(raw) if raw is not None else super().read()

    def record(self, state: dict[str, Any]) -> None:
        """Make ``state`` the recorded one (no broadcast)."""
        _kv_put(self._key("state"), json.dumps(state).encode())
        if self.path is not None:
            _write_atomically(self.path, state)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One change of the record at a time across every replica (a key held while it runs)."""
        with self._thread_lock, self._held(self._key("lock"), {}, wait_s=SWAP_TIMEOUT_S):
            yield

    @contextlib.contextmanager
    def _file_busy(self, model_id: str, record: dict[str, Any]) -> Iterator[None]:
        """One admin action per model across every replica; a second is refused at once."""
        with self._held(self._key("busy", model_id), record, wait_s=0):
            yield

    @contextlib.contextmanager
    def _held(self, key: str, record: dict[str, Any], wait_s: float) -> Iterator[None]:
        deadline = time.monotonic() + wait_s
        record = {**record, "replica": self.replica, "app": self.app_name}
        while _kv_put(key, json.dumps(record).encode(), overwrite=False):
            holder = _kv_get(key)
            if holder is not None and _stale(json.loads(holder)):
                _kv_del(key)  # its replica is gone; it can finish nothing
                continue
            if time.monotonic() >= deadline:
                raise Busy(json.loads(holder) if holder else record)
            time.sleep(0.05)
        try:
            yield
        finally:
            _kv_del(key)

    def write(self, state: dict[str, Any]) -> dict[str, Any]:
        """Record ``state`` as the next generation and bring every replica to it; all or nothing."""
        before = self.read()
        state = {**deepcopy(state), "generation": before["generation"] + 1}
        self.record(state)
        if self.push is None:
            return state
        try:
            self.push(state)
        except Exception as exc:
            logger.exception("generation %d did not reach every replica; going back", state["generation"])
            restored = {**before, "generation": state["generation"] + 1}
            self.record(restored)
            try:
                self.push(restored)
            except Exception:
                logger.exception("could not bring every replica back to generation %d", before["generation"])
            raise ServeError(503, f"not applied, every replica stays on what it served: {exc}",
                             "not_applied_on_every_replica") from exc
        return state

    def forget(self) -> None:
        """Drop the cluster's record of this application (its ``state_dir`` file stays)."""
        for key in internal_kv._internal_kv_list(self._key(""), namespace=KV_NAMESPACE):
            _kv_del(key.decode() if isinstance(key, bytes) else key)

    def changed(self) -> bool:
        return False  # replicas hear of changes through reconfigure, not by watching a file

    def acknowledge(self, record: dict[str, Any]) -> None:
        if self.replica is not None:
            _kv_put(self._key("replicas", self.replica), json.dumps({**record, "replica": self.replica}).encode())

    def forget_worker(self, pid: int) -> None:
        if self.replica is not None:
            _kv_del(self._key("replicas", self.replica))

    def acknowledgements(self) -> dict[str, dict[str, Any]]:
        """What each replica last acknowledged, by replica id (dead ones included)."""
        keys = internal_kv._internal_kv_list(self._key("replicas", ""), namespace=KV_NAMESPACE)
        found = {}
        for key in keys:
            raw = _kv_get(key.decode() if isinstance(key, bytes) else key)
            if raw is not None:
                record = json.loads(raw)
                found[record["replica"]] = record
        return found

    def workers(self) -> list[dict[str, Any]]:
        """What each running replica of the application has applied."""
        running = running_replicas(self.app_name)
        return [r for replica, r in sorted(self.acknowledgements().items()) if replica in running]


def _stale(record: dict[str, Any]) -> bool:
    """True when the replica that holds a key is no longer running."""
    replica, app = record.get("replica"), record.get("app")
    if replica is None or app is None:
        return False
    try:
        return replica not in running_replicas(app)
    except Exception:
        return False


def forget(name: str = APP_NAME) -> None:
    """Forget what application ``name`` recorded in the cluster: the next deploy serves its config's models."""
    RayStore(name).forget()


def running_replicas(app_name: str) -> set[str]:
    """The ids of the replicas of ``app_name``'s deployment that Ray Serve runs or starts now (not stopping ones).

    A replica being reconfigured shows as UPDATING, one being started as STARTING: both are
    waited for by a swap (a starting one reads the recorded state in its constructor).
    """
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    deployment = details.get("applications", {}).get(app_name, {}).get("deployments", {}).get(DEPLOYMENT, {})
    return {r["replica_id"] for r in deployment.get("replicas", []) if r.get("state") != "STOPPING"}


def expected_headers(state: dict[str, Any]) -> dict[str, str]:
    """What ``X-Model-Version`` each recorded model answers with once a replica serves ``state``."""
    return {model_id: version_header(entry["served"], entry["version"])
            for model_id, entry in state["models"].items() if "served" in entry}


def initial_state(config: ServeConfig, name: str = APP_NAME) -> dict[str, Any]:
    """The recorded state of application ``name`` (the last good models), or generation 0."""
    store = RayStore(name, config.state_dir)
    return store.read()


# ---------------------------------------------------------------------------------- the replica


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()
class Replica:
    """One replica: a :class:`Service` on the recorded state and the app the single-host server runs."""

    def __init__(self, config: dict[str, Any], placement: dict[str, Any]) -> None:
        from ._run import set_threads

        self.config = ServeConfig(**config)
        self.placement = Placement(**placement)
        set_threads(self.placement.thread_count())
        # "auto" puts backends that share weights between processes first only where replicas share a node
        os.environ.setdefault(WORKERS_ENV, str(self.placement.replicas_per_node(_node_cpus())))
        throughput_by_default()
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        if context.app_name != self.placement.name:  # serve.run(app(config), name=...) names it
            self.placement = self.placement.model_copy(update={"name": context.app_name})
        self.store = RayStore(self.placement.name, self.config.state_dir, self.replica_id)
        self.store.push = self._push
        self.service = Service(self.config, store=self.store)  # loads the recorded models
        self._applied = threading.Lock()
        _register_metrics(self)

    def __serve_build_asgi_app__(self) -> Any:
        from ._app import create_app

        app = create_app(service=self.service)

        @app.middleware("http")
        async def replica_header(request: Any, call_next: Any) -> Any:
            response = await call_next(request)
            response.headers["X-Replica-Id"] = self.replica_id
            return response

        return app

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A new recorded state: load what it names in the background, old models answering meanwhile.

        Returns at once, so Ray Serve reconfigures every replica together; the replica that
        took the admin action waits for the acknowledgements. A ``user_config`` older than the
        record (a config deployed again after swaps) yields to the record.
        """
        recorded = self.store.read()
        if user_config and user_config.get("generation", 0) > recorded["generation"]:
            self.store.record(user_config)  # a changed config file: it is the new record
            recorded = user_config
        threading.Thread(target=self._apply, args=(recorded,), name="reconfigure", daemon=True).start()
        await asyncio.sleep(0)

    def _apply(self, state: dict[str, Any]) -> None:
        with self._applied:
            if state["generation"] <= self.service.generation and self.service.generation:
                self.service.acknowledge()
                return
            self.service.apply(state)  # under the service lock: waits for an admin action here
            self.service.settle()

    def check_health(self) -> None:
        problems = self.service.problems()
        if problems:
            raise RuntimeError("; ".join(problems))

    def _push(self, state: dict[str, Any]) -> None:
        """Deploy the application again with ``state`` as its ``user_config``; wait for every other replica.

        An application deployed from a config file (``serve deploy``) gets the config it runs
        with, ``user_config`` replaced; one deployed by ``serve.run`` is run again so.
        """
        from ray.serve.context import _get_global_client

        start = time.perf_counter()
        client = _get_global_client()
        name = self.placement.name
        configs = ray.get(client._controller.get_app_configs.remote())
        if name in configs:
            client.deploy_apps(with_user_config(configs, name, state))
        else:  # the route prefix it runs under, whatever serve.run was given
            prefix = client.get_serve_details()["applications"][name].get("route_prefix")
            target = serve.RunTarget(app(self.config, self.placement, state=state), name=name, route_prefix=prefix)
            serve.run_many([target], wait_for_applications_running=False)  # the acks below are the wait
        deployed = time.perf_counter()
        wait_for_replicas(self.store, state, exclude={self.replica_id})
        logger.info("generation %d reached every replica in %.2f s (the deploy call took %.2f s)",
                    state["generation"], time.perf_counter() - start, deployed - start)


def _node_cpus() -> float:
    """The CPUs Ray gives the node this process runs on (the host's count when Ray does not say)."""
    node = ray.get_runtime_context().get_node_id()
    for entry in ray.nodes():
        if entry.get("NodeID") == node and entry.get("Alive", True):
            return float(entry.get("Resources", {}).get("CPU", os.cpu_count() or 1))
    return float(os.cpu_count() or 1)


def with_user_config(configs: dict[str, Any], name: str, state: dict[str, Any]) -> Any:
    """The declarative config of every application, ``name``'s deployment given ``state`` as ``user_config``."""
    from ray.serve.schema import ServeDeploySchema

    applications = []
    for app_name, schema in configs.items():
        entry = schema.model_dump(exclude_unset=True)
        if app_name == name:
            deployments = entry.get("deployments", [])
            ours = next((d for d in deployments if d["name"] == DEPLOYMENT), {"name": DEPLOYMENT})
            entry["deployments"] = [*(d for d in deployments if d["name"] != DEPLOYMENT),
                                    {**ours, "user_config": state}]
        applications.append(entry)
    return ServeDeploySchema(applications=applications)


def wait_for_replicas(store: RayStore, state: dict[str, Any], exclude: set[str] = frozenset(),
                      timeout_s: float = SWAP_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Wait until every running replica (but ``exclude``) serves ``state``; raise if one cannot."""
    want = expected_headers(state)
    deadline = time.monotonic() + timeout_s
    while True:
        running = running_replicas(store.app_name) - set(exclude)
        acks = {r: a for r, a in store.acknowledgements().items() if r in running}
        behind = [r for r in running if r not in acks or acks[r]["generation"] < state["generation"]]
        failed = {r: a["served"] for r, a in acks.items()
                  if a["generation"] >= state["generation"] and any(a["served"].get(k) != v for k, v in want.items())}
        if failed:
            raise RuntimeError(f"replica(s) {sorted(failed)} could not serve generation {state['generation']} "
                               f"({want}); they serve {failed}")
        if not behind:
            return acks
        if time.monotonic() > deadline:
            raise TimeoutError(f"replica(s) {sorted(behind)} did not reach generation {state['generation']} "
                               f"in {timeout_s:.0f}s")
        time.sleep(0.05)


def _register_metrics(replica: Replica) -> None:
    """``/metrics`` adds this replica's id and the deployment's swap state to the server's own."""
    from prometheus_client.core import GaugeMetricFamily

    class SwapState:
        def describe(self) -> list[Any]:
            return []  # nothing to collect when registered

        def collect(self) -> Iterator[Any]:
            recorded = replica.store.read()
            want = expected_headers(recorded)
            generation = GaugeMetricFamily("lancedb_baai_ray_generation", "State generation each replica serves",
                                           labels=["replica"])
            generation.add_metric([replica.replica_id], replica.service.generation)
            yield generation
            yield GaugeMetricFamily("lancedb_baai_ray_recorded_generation",
                                    "The deployment's recorded state generation", value=recorded["generation"])
            try:
                acks = {r: a for r, a in replica.store.acknowledgements().items()
                        if r in running_replicas(replica.placement.name)}
            except Exception:
                acks = {}
            on = sum(a["generation"] >= recorded["generation"] and
                     all(a["served"].get(k) == v for k, v in want.items()) for a in acks.values())
            yield GaugeMetricFamily("lancedb_baai_ray_replicas", "Running replicas", value=len(acks))
            yield GaugeMetricFamily("lancedb_baai_ray_replicas_on_recorded",
                                    "Running replicas serving the recorded state", value=on)

    replica.service.metrics.registry.register(SwapState())


# ---------------------------------------------------------------------------------- building


def _code_version(config: ServeConfig, placement: Placement) -> str:
    """Same package, config and placement: the same replicas, reconfigured in place when only the state changes."""
    text = json.dumps([__version__, config.model_dump(mode="json"), placement.model_dump(mode="json")],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def app(config: ServeConfig, placement: Placement | None = None, *, state: dict[str, Any] | None = None,
        **options: Any) -> Any:
    """The Ray Serve application serving ``config``: ``serve.run(app(config, replicas=2))``.

    ``options`` are :class:`Placement`'s fields (``replicas``, ``autoscale``, ``num_cpus``,
    ``threads``, ``name``, ``route_prefix``). It starts on the recorded state of the
    application's name (the last good models) when the cluster, or ``state_dir``, has one.
    """
    placement = placement or Placement(**options)
    if state is None:
        if not ray.is_initialized():
            ray.init(namespace="serve")
        state = initial_state(config, placement.name)
    # Ray Serve's default of 5 requests per replica would queue the rest in the proxy: there an admin
    # action waits behind the data requests, and the micro-batcher never sees more than 5 to merge.
    # Each replica takes as many as its batcher queues (beyond them it answers 503, as one host does).
    deployment = Replica.options(user_config=state, version=_code_version(config, placement), _internal=True,
                                 max_ongoing_requests=config.max_queue, **placement.deployment_options())
    return deployment.bind(config.model_dump(mode="json"), placement.model_dump(mode="json"))


def build(args: dict[str, Any]) -> Any:
    """The application builder for ``serve deploy``: ``import_path: lancedb_baai.serve.ray:build``.

    ``args`` are :class:`~lancedb_baai.serve.ServeConfig`'s fields plus :class:`Placement`'s.
    The admin token and the API keys, unless in ``args``, come from the replicas' environment
    (``LANCEDB_BAAI_ADMIN_TOKEN``, ``LANCEDB_BAAI_API_KEYS``: the config's ``runtime_env``
    ``env_vars``, or the cluster's), so the config file need not hold them.
    """
    fields = set(Placement.model_fields)
    placement = Placement(**{k: v for k, v in args.items() if k in fields})
    options = {k: v for k, v in args.items() if k not in fields}
    if "admin_token" not in options and os.environ.get(ADMIN_TOKEN_ENV):
        options["admin_token"] = os.environ[ADMIN_TOKEN_ENV]
    if "api_keys" not in options:
        options["api_keys"] = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    return app(ServeConfig(**options), placement)


def config_file(config: ServeConfig, placement: Placement) -> dict[str, Any]:
    """A Serve config (what ``serve deploy`` takes; write it as YAML) for this application.

    It holds neither the admin token nor the API keys: give them to the replicas as
    ``runtime_env: {env_vars: {LANCEDB_BAAI_ADMIN_TOKEN: ..., LANCEDB_BAAI_API_KEYS: ...}}``.
    """
    args = {**config.model_dump(mode="json", exclude_defaults=True, exclude={"admin_token", "api_keys"}),
            **placement.model_dump(mode="json", exclude_defaults=True)}
    return {"http_options": {"host": config.host, "port": config.port},
            "applications": [{"name": placement.name, "route_prefix": placement.route_prefix,
                              "import_path": "lancedb_baai.serve.ray:build", "args": args}]}


def run(config: ServeConfig, placement: Placement) -> None:
    """Deploy on the configured Ray cluster (``RAY_ADDRESS``) or a local one, and serve until SIGTERM/SIGINT.

    Either signal deletes the application; its record stays in the cluster (and ``state_dir``),
    so the next deploy comes up on the last good models.
    """
    import signal

    from ._logs import configure

    configure(config.log_format, config.log_level)
    if not ray.is_initialized():
        ray.init(namespace="serve")
    signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which installs its own
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(app(config, placement), name=placement.name, route_prefix=placement.route_prefix)
        logger.info("serving %s on Ray: %s replica(s) x %d thread(s) at http://%s:%d%s", placement.name,
                    f"{placement.autoscale[0]}-{placement.autoscale[1]}" if placement.autoscale
                    else placement.replicas, placement.thread_count(), config.host, config.port,
                    placement.route_prefix)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):
            serve.delete(placement.name)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM ends the server as Ctrl-C does

"""`lancedb-baai`: inspect the host, download models, embed and rerank from the shell, serve, re-embed.

Also runs as ``python -m lancedb_baai``. Results go to stdout (JSON lines for ``embed``
and ``rerank``, so they compose with ``jq`` and friends); messages and errors go to stderr.
An error exits non-zero with a one-line message; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from itertools import chain, islice
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

import lancedb_baai

from .engines import choice as _choice, kinds, progress as _progress
from .models import catalog as _catalog, exports as _export, fidelity as _fidelity, hub as _hub
from .runtimes import base as _runtimes, device as _device
from .runtimes.openvino import native_bf16 as openvino_native_bf16
from .functions.inputs import check_query
from .engines.report import text_table

CHUNK = 256
"""Texts per model call in ``embed``/``rerank``: output streams out chunk by chunk."""

app = typer.Typer(
    name="lancedb-baai",
    help="Local BAAI bge embedders and rerankers for LanceDB, from the shell.\n\n"
         "Start with `lancedb-baai info`; every command has --help with an example.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

_verbose = False


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lancedb_baai {lancedb_baai.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log model loads; show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the package version and exit."),
) -> None:
    global _verbose
    _verbose = verbose
    _log_to_stderr(verbose)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr(on: bool) -> None:
    """The package's INFO lines (one per model load) on stderr with --verbose, and only then."""
    logger = logging.getLogger("lancedb_baai")
    ours = [h for h in logger.handlers if isinstance(h, _StderrHandler)]
    if on and not ours:
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)
    elif not on and ours:  # an earlier --verbose command in this process (a test run, say)
        for handler in ours:
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _errors(hint: Callable[[Exception], str] = lambda exc: "") -> Iterator[None]:
    """Turn an exception into one line on stderr and exit status 1 (``--verbose``: the traceback)."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        _silence_stdout()
        raise typer.Exit(0) from None
    except Exception as exc:
        if _verbose:
            raise
        extra = hint(exc)
        _fail(_message(exc) + (f"\n{extra}" if extra else ""))


_FLAGS = {"name": "-m/--model", "device": "--device", "dtype": "--dtype", "batch_size": "--batch-size",
          "normalize": "--normalize"}
_KEYWORD_ADVICE = re.compile(r"\b(" + "|".join(_FLAGS) + r")=(?=\s)")


def _message(exc: Exception) -> str:
    """The error's message for a shell user: library keywords given as advice become CLI flags."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":  # pydantic: the message, not the dump
        text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors())
    else:
        text = str(exc) or type(exc).__name__
    return _KEYWORD_ADVICE.sub(lambda m: _FLAGS[m.group(1)], text)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _check(check: Callable[[str], str]) -> Callable[[str], str]:
    """A typer callback that validates with the package's own check and its message."""

    def callback(value: str) -> str:
        try:
            return check(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return callback


_DEVICE = typer.Option("auto", "--device", "-d", callback=_check(_device.check_device),
                       help="auto, cpu, cuda, cuda:N or mps.")
_DTYPE = typer.Option("auto", "--dtype", callback=_check(_device.check_dtype),
                      help="auto, float32, float16 or bfloat16.")
_BACKEND = typer.Option("auto", "--backend", callback=_check(_choice.check_backend),
                        help="auto, torch, onnx or openvino (the CPU backends need the onnx / openvino extra).")
_PRECISION = typer.Option(None, "--precision", callback=_check(_choice.check_precision),
                          help="fp32, bf16 or int8 on onnx / openvino (default: the fastest faithful one here).")
_BATCH = typer.Option(32, "--batch-size", min=1, help="Most texts per forward pass.")
_PROGRESS = typer.Option(None, "--progress/--no-progress",
                         help="Progress bar on stderr; default: for 1000+ texts in a terminal, never when CI is set.")
_INPUT = typer.Argument(None, show_default=False, metavar="FILE",
                        help="Text file, one text per line (blank lines are skipped); '-' or nothing reads stdin.")


# ---------------------------------------------------------------------------------------- info

def _versions() -> dict[str, str | None]:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    packages = ("torch", "transformers", "sentence-transformers", "lancedb")
    return {"lancedb_baai": lancedb_baai.__version__, **{p: version(p) for p in packages}}


def _device_reason(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"CUDA is available: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    if device == "mps":
        return "Apple MPS is available"
    build = "this torch build has no CUDA support" if torch.version.cuda is None else "torch has CUDA but sees no GPU"
    return f"no CUDA or MPS device ({build})"


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def host_report() -> dict[str, Any]:
    """What ``info`` shows: versions, the "auto" device and dtype with reasons, the catalog."""
    device = _device.resolve_device("auto")
    dtype, dtype_reason = _device.auto_dtype(device)
    models = []
    for spec in _catalog.CATALOG.values():
        path = _hub.cached_dir(spec.name, None)
        models.append({"name": spec.name, "kind": spec.kind, "dims": spec.dims, "max_length": spec.max_length,
                       "cached": path is not None, "path": str(path) if path else None})
    return {
        "versions": _versions(),
        "python": sys.version.split()[0],
        "device": device, "device_reason": _device_reason(device),
        "dtype": dtype, "dtype_reason": dtype_reason,
        "backends": _backend_report(device),
        "hub_cache": str(_hub.hub_cache_dir()), "offline": _offline(),
        "models": models,
        "exports": _exports(),
    }


def _backend_report(device: str) -> dict[str, Any]:
    """What ``backend="auto"`` tries here, in order, and which runtimes are installed."""
    order = _choice.candidates("embed", device, None, "auto")
    optional = [_runtimes.get(name) for name in _runtimes.names()[1:] if _runtimes.get(name).extra]
    installed = {runtime.name: runtime.missing() is None for runtime in optional}
    return {"installed": installed,
            "openvino_bf16": openvino_native_bf16(), "native_bf16": list(_device.native_bf16_flags()),
            "auto_order": [f"{b} {d or 'auto dtype'}" for b, d in order if _runtimes.get(b).missing() is None],
            "export_cache": str(_export.cache_root())}


def _exports() -> list[dict[str, Any]]:
    """The exports on this machine, with the fidelity figures measured for them on this host."""
    rows = []
    for manifest_file in sorted((_export.cache_root() / "exports").glob(f"*/*/{_export.MANIFEST}")):
        manifest = _hub.read_json(manifest_file)
        records = _fidelity.read_all(manifest_file.parent)
        for key, figures in sorted(records.items()):
            host, _, precision = key.partition("/")
            if host == _fidelity.host_id():
                rows.append({"model": manifest.get("model"), "kind": manifest.get("kind"),
                             "backend": manifest.get("backend"), "precision": precision,
                             "fidelity": _fidelity.describe(figures)})
    return rows


def _format_report(report: dict[str, Any]) -> str:
    versions = report["versions"]
    others = ", ".join(f"{name} {v or 'not installed'}" for name, v in versions.items() if name != "lancedb_baai")
    hub = report["hub_cache"] + ("  (HF_HUB_OFFLINE is set: no downloads)" if report["offline"] else "")
    return "\n".join([
        f"lancedb_baai {versions['lancedb_baai']}  (python {report['python']}, {others})",
        "",
        f"device \"auto\" -> {report['device']}: {report['device_reason']}",
        f"dtype  \"auto\" -> {report['dtype']}: {report['dtype_reason']}",
        f"backend \"auto\" tries: {', '.join(report['backends']['auto_order'])}",
        f"hub cache: {hub}",
        f"export cache: {report['backends']['export_cache']}",
        "",
        "known models (`lancedb-baai download NAME` puts one in the hub cache):",
        text_table(report["models"], ("name", "kind", "dims", "max_length", "cached")),
        "",
        "exports on this machine, with their fidelity against torch float32 on this host:",
        text_table(report["exports"], ("model", "kind", "backend", "precision", "fidelity"))
        if report["exports"] else "(none yet)",
    ])


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
         table: Optional[tuple[str, str]] = typer.Option(
             None, "--table", metavar="URI NAME",
             help="Show which model made each vector column of this table, and whether it drifted."),
         model: Optional[str] = typer.Option(
             None, "--model", help="Load this model here and show what runs it and where its weights live: "
                                   "mapped from files (one copy per host) or private to each process."),
         backend: str = _BACKEND) -> None:
    """Versions, the device and dtype "auto" picks on this host and why, and the known bge models.

    Example: `lancedb-baai info --json | jq .dtype`; `lancedb-baai info --table ./db docs`;
    `lancedb-baai info --model BAAI/bge-small-en-v1.5`
    """
    with _errors():
        if model:
            kind = _catalog.model_kind(model, None) or "embed"
            kinds.get(kind).function()(name=model, backend=backend, show_progress=False).loaded()
            records = lancedb_baai.cache_info()
            typer.echo(json.dumps(records, indent=2) if as_json else _format_memory(records))
            return
        if table and all(table):
            import lancedb

            models = lancedb_baai.describe(lancedb.connect(table[0]).open_table(table[1]))
            typer.echo(json.dumps(models, indent=2) if as_json else str(models))
            return
        report = host_report()
        typer.echo(json.dumps(report, indent=2) if as_json else _format_report(report))


def _format_memory(records: list[dict[str, Any]]) -> str:
    lines = [str(records), ""]
    for record in records:
        shared = "shared by every process on this host" if record.get("shared_weights") else "one copy per process"
        lines.append(f"{record['model']} on {record['backend']} {record['dtype']}: "
                     f"{record.get('weights_mapped_bytes', 0) / 2**20:.1f} MiB mapped from files, "
                     f"{record.get('weights_private_bytes', 0) / 2**20:.1f} MiB private ({shared}: "
                     f"{record.get('shared_weights_reason')})")
        lines.append(f"  why this backend: {record['backend_reason']}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- export

@app.command()
def export(
    name: str = typer.Argument(..., help="Hub id or local model directory."),
    backend: str = _BACKEND,
    precision: Optional[str] = _PRECISION,
    kind: Optional[str] = typer.Option(None, "--kind", help="embed or rerank (default: what the model's files say)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of a hub model."),
) -> None:
    """Prepare this machine for a model ahead of time: export it for a CPU backend and run the fidelity gate.

    What the first use of the model would otherwise do (once per machine), for an image
    build or a deploy step. Prints what runs the model here and the gate's figures; exits 1
    when the export falls short of its precision's threshold.

    Example: `lancedb-baai export BAAI/bge-small-en-v1.5 --backend openvino`
    """
    with _errors(_offline_hint):
        kind = kind or _catalog.model_kind(name, revision) or "embed"
        function = kinds.get(kind).function()
        explicit = {} if backend == "auto" else {"min_fidelity": 0}  # figures first, then the verdict
        loaded = function(name=name, backend=backend, precision=precision, revision=revision,
                          show_progress=False, **explicit).loaded()
        key, figures = loaded.key, loaded.fidelity
        verdict = None if figures is None else _fidelity.passes(figures, key.dtype, None)
        typer.echo(json.dumps({"model": key.model, "kind": key.kind, "backend": key.backend, "dtype": key.dtype,
                               "export": str(loaded.export) if loaded.export else None, "fidelity": figures,
                               "passes": verdict, "reason": loaded.reason}, indent=2))
        if verdict is False:
            _fail(f"{name} on {key.backend} {key.dtype} falls short of the fidelity gate "
                  f"({_fidelity.describe(figures)} < {_fidelity.threshold(key.dtype, None)}): functions refuse it "
                  "unless created with min_fidelity=0")


# ------------------------------------------------------------------------------------ download

def _offline_hint(exc: Exception) -> str:
    if isinstance(exc, _hub.ModelNotAvailableError) and _offline():
        return "HF_HUB_OFFLINE is set in this environment: unset it to download."
    return ""


@app.command()
def download(
    name: str = typer.Argument(..., help="Hub id such as BAAI/bge-small-en-v1.5."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit (default: main)."),
) -> None:
    """Fetch a model into the local hub cache, so it loads offline later; prints its directory.

    Concurrent downloads of one model (several shells or workers) share one transfer.

    Example: `lancedb-baai download BAAI/bge-reranker-base`
    """
    with _errors(_offline_hint):
        if _hub.is_local(name):
            path = _hub.local_dir(name)
            typer.echo(f"{name} is a local directory: nothing to download", err=True)
        elif (path := _hub.cached_dir(name, revision)) is not None:
            typer.echo(f"{name} is already in the hub cache", err=True)
        else:
            if _catalog.lookup(name) is None:
                typer.echo(f"note: {name} is not one of the known bge models (`lancedb-baai info`); "
                           "downloading it anyway", err=True)
            if not _offline():
                typer.echo(f"downloading {name} into {_hub.hub_cache_dir()} ...", err=True)
            path = _hub.resolve(name, revision)
        typer.echo(str(path))


# ------------------------------------------------------------------------------- embed, rerank

def _read_lines(source: Optional[str]) -> Iterator[str]:
    """Non-blank lines of a file, or of stdin for None/'-', without their line endings."""
    if source in (None, "-"):
        if sys.stdin.isatty():
            typer.echo("reading texts from the terminal, one per line; end with Ctrl-D", err=True)
        yield from _texts(sys.stdin.buffer, "stdin")
        return
    path = Path(source)
    if not path.is_file():
        _fail(f"input file {source!r} does not exist (pass a text file, '-' or nothing for stdin)")
    with path.open("rb") as stream:
        yield from _texts(stream, repr(source))


def _texts(lines: Iterable[bytes], where: str) -> Iterator[str]:
    """Non-blank lines decoded as UTF-8; a line that is not UTF-8 stops the run, named by number."""
    for number, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            _fail(f"line {number} of {where} is not valid UTF-8 (byte {raw[exc.start]:#04x} at column "
                  f"{exc.start + 1}); convert the input first, e.g. `iconv -f latin1 -t utf-8`")
        if line.strip():
            yield line


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(islice(items, size)):
        yield chunk


def _stream(source: Optional[str], progress: Optional[bool], desc: str,
            process: Callable[[list[str]], Iterable[dict[str, Any]]]) -> None:
    """Read texts, run ``process`` a chunk at a time and write its records as JSON lines.

    The first ``AUTO_MIN_TEXTS`` lines are read before deciding on a progress bar, so the
    automatic bar follows the same rule as the library's (large inputs, someone watching).
    """
    lines = _read_lines(source)
    head = list(islice(lines, _progress.AUTO_MIN_TEXTS))
    out = sys.stdout
    with _progress.bar(_progress.wanted(progress, len(head)), None, desc) as bar:
        for chunk in _chunks(chain(head, lines), CHUNK):
            for record in process(chunk):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            if bar is not None:
                bar.update(len(chunk))


@app.command()
def embed(
    source: Optional[str] = _INPUT,
    model: str = typer.Option("BAAI/bge-small-en-v1.5", "--model", "-m", help="Hub id or local model directory."),
    query: bool = typer.Option(False, "--query", help="The texts are search queries: prepend the model's query "
                                                     "instruction (passages get none)."),
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    backend: str = _BACKEND,
    precision: Optional[str] = _PRECISION,
    batch_size: int = _BATCH,
    progress: Optional[bool] = _PROGRESS,
) -> None:
    """Embed texts, one per line, and write JSON lines `{"text": ..., "vector": [...]}` to stdout.

    Example: `cut -f2 docs.tsv | lancedb-baai embed -m BAAI/bge-small-en-v1.5 > vectors.jsonl`
    """
    from .functions.embeddings import BAAIEmbeddings

    with _errors(_offline_hint):
        fn = BAAIEmbeddings(name=model, device=device, dtype=dtype, backend=backend, precision=precision,
                            batch_size=batch_size, show_progress=False)
        fn.engine()  # a missing model fails here, before any input is read
        encode = fn.compute_query_embeddings if query else fn.generate_embeddings

        def process(texts: list[str]) -> Iterator[dict[str, Any]]:
            for text, vector in zip(texts, encode(texts)):
                yield {"text": text, "vector": vector.tolist()}

        _stream(source, progress, "embedding", process)


@app.command()
def rerank(
    source: Optional[str] = _INPUT,
    query: str = typer.Option(..., "--query", "-q", help="The text the passages are scored against."),
    model: str = typer.Option("BAAI/bge-reranker-base", "--model", "-m", help="Hub id or local reranker directory."),
    normalize: bool = typer.Option(False, "--normalize", help="Scores as sigmoid(logit) in [0, 1]."),
    sort: bool = typer.Option(False, "--sort", help="Best first (reads all passages before writing)."),
    batch_size: int = _BATCH,
    progress: Optional[bool] = _PROGRESS,
    backend: str = _BACKEND,
    precision: Optional[str] = _PRECISION,
    device: str = _DEVICE,
    dtype: str = _DTYPE,
) -> None:
    """Score passages, one per line, against a query; write JSON lines `{"text": ..., "score": ...}`.

    Scores are the cross-encoder's raw logits (higher is more relevant), as FlagEmbedding gives them.

    Example: `grep -i lambda notes.txt | lancedb-baai rerank -q "anonymous functions" --sort | head -3`
    """
    from .functions.reranker import BAAIRerankFunction

    with _errors(_offline_hint):
        fn = BAAIRerankFunction(name=model, device=device, dtype=dtype, backend=backend, precision=precision,
                                batch_size=batch_size, normalize=normalize, show_progress=False)
        check_query(query, "--query", "the text the passages should be scored against")
        fn.engine()  # a missing model fails here, before any input is read
        kept: list[dict[str, Any]] = []

        def process(texts: list[str]) -> list[dict[str, Any]]:
            records = [{"text": t, "score": s} for t, s in zip(texts, fn.score(query, texts))]
            if sort:
                kept.extend(records)
                return []
            return records

        _stream(source, progress, "reranking", process)
        for record in sorted(kept, key=lambda r: r["score"], reverse=True):
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


@app.command()
def serve(
    embed: Optional[list[str]] = typer.Option(None, "--embed", help="Embedding model to serve (repeatable): "
                                              "NAME, or ALIAS=NAME to serve it under the model id ALIAS."),
    rerank: Optional[list[str]] = typer.Option(None, "--rerank", help="Reranker to serve (repeatable), NAME or ALIAS=NAME."),
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    backend: str = _BACKEND,
    precision: Optional[str] = _PRECISION,
    max_length: Optional[int] = typer.Option(None, "--max-length", min=1, help="Token limit (default: the model's)."),
    batch_size: int = _BATCH,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes; more than 1 runs gunicorn, models preloaded."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads per worker (default: cores / workers)."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Records swaps; a restart serves the last good models."),
    micro_batching: bool = typer.Option(True, "--micro-batching/--no-micro-batching",
                                        help="Merge concurrent requests into shared forward passes."),
    batch_wait_ms: float = typer.Option(2.0, "--batch-wait-ms", min=0, help="Longest wait for requests to merge."),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Waiting requests per model before 503."),
    max_texts: int = typer.Option(512, "--max-texts", min=1, help="Texts per request (413 beyond)."),
    max_chars: int = typer.Option(100_000, "--max-chars", min=1, help="Characters per text (413 beyond)."),
    api_key: Optional[list[str]] = typer.Option(None, "--api-key", help="Key the data routes accept as "
                                                "'Authorization: Bearer KEY' (repeatable; also "
                                                "LANCEDB_BAAI_API_KEYS=key1,key2)."),
    allow_no_api_key: bool = typer.Option(False, "--allow-no-api-key",
                                          help="Listen beyond loopback with the data routes open (a proxy checks callers)."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="Most model weight memory per process, "
                                                "e.g. 6GiB: a load or swap beyond it is refused (409)."),
    log_format: str = typer.Option("text", "--log-format", help="Log lines, access log included: text or json."),
    table: Optional[list[str]] = typer.Option(None, "--table", help="A LanceDB table as URI:NAME (repeatable): "
                                              "swaps and rollbacks list those they leave behind."),
    on_ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve (RAY_ADDRESS's cluster, else a local "
                                "one): swaps reach every replica. Needs the 'ray-serve' extra."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="With --ray: replicas of the service."),
    autoscale: Optional[str] = typer.Option(None, "--autoscale", help="With --ray: MIN:MAX replicas, "
                                            "scaled on ongoing requests (instead of --replicas)."),
    num_cpus: Optional[float] = typer.Option(None, "--num-cpus", min=0.01, help="With --ray: CPUs per replica, "
                                             "may be fractional (default: the cluster's CPUs / most replicas)."),
    ray_config: Optional[Path] = typer.Option(None, "--ray-config", help="With --ray: write a Serve config file "
                                              "for `serve deploy` to this path and exit."),
) -> None:
    """Serve embedders and rerankers over HTTP (OpenAI-compatible /v1/embeddings, /rerank, /metrics).

    Admin routes (/admin/swap, /admin/rollback, /admin/load, /admin/unload, /admin/engines) are
    on only when LANCEDB_BAAI_ADMIN_TOKEN is set; they need `Authorization: Bearer <token>`.
    With --api-key (or LANCEDB_BAAI_API_KEYS) every other route but /healthz and /readyz needs a key.

    Example: `lancedb-baai serve --embed BAAI/bge-small-en-v1.5 --rerank BAAI/bge-reranker-base --port 8000`
    """
    from .serve import ADMIN_TOKEN_ENV, API_KEYS_ENV, ModelOptions, ServeConfig, run

    with _errors(_offline_hint):
        options = {"device": device, "dtype": dtype, "max_length": max_length, "batch_size": batch_size,
                   "backend": backend, "precision": precision}
        models = [ModelOptions.parse("embed", spec, **options) for spec in embed or []]
        models += [ModelOptions.parse("rerank", spec, **options) for spec in rerank or []]
        keys = [*(api_key or []), *(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())]
        config = ServeConfig(models=models, host=host, port=port, workers=workers, threads=threads,
                        state_dir=state_dir, admin_token=os.environ.get(ADMIN_TOKEN_ENV),
                        micro_batching=micro_batching, batch_wait_ms=batch_wait_ms, max_queue=max_queue,
                        max_texts=max_texts, max_chars=max_chars, api_keys=keys,
                        allow_no_api_key=allow_no_api_key, memory_budget=memory_budget,
                        log_format=log_format, tables=table or [], load_defaults=options)
        ray_options = {"--replicas": replicas != 1, "--autoscale": autoscale, "--num-cpus": num_cpus,
                       "--ray-config": ray_config}
        if not on_ray:
            given = [name for name, value in ray_options.items() if value]
            if given:
                _fail(f"{', '.join(given)} only go with --ray")
            run(config)
            return
        if workers != 1:
            _fail("--workers is for one host; on Ray pass --replicas N or --autoscale MIN:MAX")
        if autoscale and replicas != 1:
            _fail("pass --replicas N or --autoscale MIN:MAX, not both")
        _serve_on_ray(config, autoscale, replicas, num_cpus, threads, ray_config)


def _serve_on_ray(config, autoscale: Optional[str], replicas: int, num_cpus: Optional[float],
                  threads: Optional[int], ray_config: Optional[Path]) -> None:
    from importlib.util import find_spec

    if find_spec("ray") is None or find_spec("ray.serve") is None:
        _fail("--ray needs Ray Serve: pip install 'lancedb_baai[ray-serve]'")
    from .serve import ray as serve_ray

    placement = serve_ray.Placement(replicas=replicas, num_cpus=num_cpus, threads=threads,
                                    autoscale=serve_ray.Placement.parse_autoscale(autoscale) if autoscale else None)
    if ray_config is not None:
        import yaml

        ray_config.write_text(yaml.safe_dump(serve_ray.config_file(config, placement), sort_keys=False))
        typer.echo(f"wrote {ray_config}: deploy it with `serve deploy {ray_config}`; give the replicas "
                   "LANCEDB_BAAI_ADMIN_TOKEN / LANCEDB_BAAI_API_KEYS in its runtime_env env_vars")
        return
    serve_ray.run(config, placement)


# ------------------------------------------------------------------------------------- reembed

@app.command()
def reembed(
    uri: str = typer.Argument(..., help="LanceDB database directory."),
    table: str = typer.Argument(..., help="Table name."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="The new model (hub id or directory)."),
    source: Optional[str] = typer.Option(None, "--source", help="Attach: the text column to embed."),
    column: Optional[str] = typer.Option(None, "--column", help="The vector column (default: the only one)."),
    rollback: bool = typer.Option(False, "--rollback", help="Switch back to the vectors the last re-embed kept."),
    drop_old: bool = typer.Option(False, "--drop-old", help="Keep no old vectors (alone: drop the kept ones)."),
    missing_only: bool = typer.Option(False, "--missing-only", help="Fill null vectors with the column's model."),
    key: Optional[str] = typer.Option(None, "--key", help="With --missing-only: a unique column to write back by "
                                      "(default: Lance's row ids, rows keep their order)."),
    ray_actors: Optional[int] = typer.Option(None, "--ray-actors", min=1, help="Embed on this many Ray actors."),
    dtype: str = _DTYPE,
    batch_size: int = typer.Option(256, "--batch-size", help="Rows per checkpointed batch."),
) -> None:
    """Re-embed a table's column to a new model in one commit (resumable: run it again after a kill),
    roll back, attach, or fill.

    Example: `lancedb-baai reembed ./db docs --model BAAI/bge-base-en-v1.5`
    """
    import lancedb

    with _errors(_offline_hint):
        opened = lancedb.connect(uri).open_table(table)
        if missing_only:
            result = lancedb_baai.fill_missing(opened, key=key, column=column, batch_size=batch_size)
        elif rollback:
            result = lancedb_baai.rollback_reembed(opened, column=column, drop_old=drop_old, batch_size=batch_size)
        elif model:
            function = lancedb_baai.BAAIEmbeddings(name=model, dtype=dtype)
            result = lancedb_baai.reembed(opened, function, column=column, source=source, batch_size=batch_size,
                                          drop_old=drop_old, ray_actors=ray_actors)
        elif drop_old:
            from .tables.reembed import drop_kept

            result = {"status": "dropped", "dropped": drop_kept(opened, column)}
        else:
            _fail("pass --model NAME (the new model), --rollback, --drop-old, or --missing-only")
        typer.echo(json.dumps(result))


def main() -> None:
    """Console-script entry point."""
    app()

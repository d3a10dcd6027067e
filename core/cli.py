"""Command line: ``python -m core COMMAND``; every command has ``--help``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from typing import Any

from core.errors import ConfigError, LabError
from core.store import is_run_id

log = logging.getLogger("core.cli")


def parse_set_value(text: str) -> Any:
    """Parse a --set value as JSON (numbers, lists, true/false, null), else keep it as text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(model_config: dict[str, Any], train_config: dict[str, Any], items: list[str]) -> None:
    """Apply ``key=value`` overrides in place.

    A key is a training setting (``lr``, ``epochs``) or a model setting, dotted
    into lists and dicts (``stages.0.kernel_size=[1,7]``); ``*`` selects every
    list item (``stages.*.kernel_size=[1,7]``). ``model.`` and ``train.`` prefixes
    make the target explicit.
    """
    from core.training import TrainConfig

    train_fields = set(TrainConfig.__dataclass_fields__)
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}; e.g. --set lr=0.01 or --set stages.0.kernel_size=[1,7]")
        value = parse_set_value(raw.strip())
        parts = key.split(".")
        if parts[0] == "train" and len(parts) == 2:
            target, parts = train_config, parts[1:]
        elif parts[0] == "model" and len(parts) >= 2:
            target, parts = model_config, parts[1:]
        elif parts[0] in train_fields and len(parts) == 1:
            target = train_config
        else:
            target = model_config
        if target is train_config and parts[0] not in train_fields:
            raise ConfigError(f"unknown training setting {parts[0]!r} in --set {item}; valid: {', '.join(sorted(train_fields))}")
        if target is model_config and parts[0] == "arch":
            raise ConfigError("use --arch to choose the architecture, not --set arch=...")
        if target is model_config and parts[0] not in model_config:
            raise ConfigError(
                f"unknown setting {parts[0]!r} in --set {item}; model settings: {', '.join(k for k in model_config if k != 'arch')}; "
                f"training settings: {', '.join(sorted(train_fields))}"
            )
        if target is train_config:
            # Training settings are flat, and train_config holds only the options given so far.
            train_config[parts[0]] = value
        else:
            _assign(target, parts, value, item)


def _assign(container: Any, parts: list[str], value: Any, item: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(container, list):
        if head == "*":
            targets = range(len(container))
        elif head.isascii() and head.isdigit() and int(head) < len(container):
            targets = [int(head)]
        else:
            raise ConfigError(f"--set {item}: index {head!r} is not in 0..{len(container) - 1} (or *)")
        for index in targets:
            if rest:
                _assign(container[index], rest, value, item)
            else:
                container[index] = value
        return
    if not isinstance(container, dict) or head not in container:
        valid = ", ".join(container) if isinstance(container, dict) else "none"
        raise ConfigError(f"--set {item}: unknown key {head!r}; valid keys here: {valid}")
    if rest:
        _assign(container[head], rest, value, item)
    else:
        container[head] = value


def _store(args: argparse.Namespace):
    from core.store import RunStore

    return RunStore(args.store)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


# -- commands -------------------------------------------------------------


def cmd_archs(args: argparse.Namespace) -> int:
    from core.analysis import format_count, model_cost
    from core.budget import fit_budget, parse_budget
    from core.models import ARCHITECTURES, default_model_config

    budget = parse_budget(args.budget) if args.budget is not None else None
    rows = []
    for name, spec in ARCHITECTURES.items():
        config = default_model_config(name)
        row: dict[str, Any] = {"name": name, "title": spec.title}
        if budget is not None:
            fit = fit_budget(config, budget)
            config = fit.config
            row.update({"budget": budget, "within_budget": fit.within, "budget_error": round(fit.error, 4),
                        "width_mult": config["width_mult"]})
            if not fit.within:
                row["note"] = fit.describe()
        cost = model_cost(config)
        row.update(cost.summary())
        row.update({"description": spec.description, "paper": spec.paper, "model_config": config})
        rows.append(row)

    lines = [f"{'name':<14} {'params':>8} {'FLOPs':>7}  {'RF (h x w)':<10}  description"]
    for r in rows:
        flag = "" if r.get("within_budget", True) else "  [off budget: " + r["note"] + "]"
        field = "x".join(map(str, r["receptive_field"]))
        lines.append(f"{r['name']:<14} {r['params']:>8,} {format_count(r['flops']):>7}  {field:<10}  {r['description']}{flag}")
    if budget is not None:
        lines.insert(0, f"fitted to a budget of {budget:,} parameters (within 3%); FLOPs are multiply-adds per image")
    _print(args, rows, "\n".join(lines))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from core.devices import configure_threads
    from core.store import MAX_SEEDS, StoreError

    configure_threads(args.threads)
    if args.seeds is not None and not 1 <= args.seeds <= MAX_SEEDS:
        raise LabError(f"--seeds must be between 1 and {MAX_SEEDS}, got {args.seeds}")
    if (args.seeds or 1) > 1 and args.export:
        raise LabError("--export writes one model, but --seeds trains several; export a run afterwards with: python -m core export RUN PATH")
    store, run_ids = _resume_run(args) if args.resume is not None else _create_runs(args)

    results, code = [], 0
    for index, run_id in enumerate(run_ids):
        if index > 0:
            try:
                store.mark_running(run_id, os.getpid())
            except StoreError as error:  # the app's worker took it: it trains there, not twice
                log.warning("run %d: %s; skipping it here", run_id, error)
                continue
        run_code, result = _train_one(args, store, run_id)
        if run_code == 130:
            for waiting in run_ids[index + 1 :]:
                store.request_cancel(waiting)  # queued runs would otherwise wait for the app's worker
            if run_ids[index + 1 :]:
                print(f"the group's runs {', '.join(map(str, run_ids[index + 1:]))} were cancelled before they started", file=sys.stderr)
            return 130
        results.append(result)
        code = max(code, run_code)

    if len(run_ids) == 1:
        if args.json:
            print(json.dumps(results[0], indent=2))
        elif results and results[0]["status"] == "completed":
            print(_run_line(results[0]))
        return code
    _print(args, _group_result(run_ids[0], results), _group_text(run_ids[0], results))
    return code


def _train_one(args: argparse.Namespace, store: Any, run_id: int) -> tuple[int, dict[str, Any]]:
    """Train one stored run in the foreground with a progress bar; return the exit code and the result."""
    from tqdm import tqdm

    from core.runner import execute_run, export_run

    arch = store.get_run(run_id)["arch"]
    bar = tqdm(total=None, unit="step", disable=args.json or not sys.stderr.isatty() and not args.progress, file=sys.stderr)

    def on_progress(event: dict[str, Any]) -> None:
        if event["event"] == "start":
            bar.reset(total=event["total_steps"])
            bar.set_description(f"run {run_id} {arch}")
            if event.get("resumed_after_epoch") is not None:
                bar.n = event["resumed_after_epoch"] * event["steps_per_epoch"]
                bar.refresh()
        elif event["event"] == "steps":
            bar.n = event["step"]
            bar.set_postfix(loss=f"{event['train_loss']:.4f}")
            bar.refresh()
        elif event["event"] == "epoch":
            bar.write(
                f"epoch {event['epoch']}: train_loss {event['train_loss']:.4f}  val_loss {event['val_loss']:.4f}  "
                f"val_accuracy {event['val_accuracy']:.4f}  ({event['epoch_time_s']:.1f} s)",
                file=sys.stderr,  # tqdm.write defaults to stdout, which --json keeps for the result alone
            )

    try:
        run = execute_run(store, run_id, data_dir=args.data_dir, on_progress=on_progress)
    except KeyboardInterrupt:
        bar.close()
        print(
            f"run {run_id} interrupted; its completed epochs are kept in {store.root}. "
            f"Continue it with: python -m core --store {store.root} train --resume {run_id}",
            file=sys.stderr,
        )
        return 130, {}
    bar.close()

    if run["status"] != "completed":
        print(f"run {run_id} {run['status']}: {run['error']}", file=sys.stderr)
        return 1, {"run_id": run_id, "arch": arch, "status": run["status"], "error": run["error"]}

    if args.export:
        exported = export_run(store, run_id, args.export, command=" ".join(["python -m core"] + sys.argv[1:]))
        log.info("run %d: exported weights to %s", run_id, exported)

    keys = ("name", "arch", "params", "device", "status", "epochs_completed", "best_val_accuracy", "test_accuracy",
            "test_loss", "wall_time_s", "checkpoint")
    result = {"run_id": run_id, **{key: run[key] for key in keys}, "seed": run["train_config"].get("seed")}
    if (args.seeds or 1) > 1:
        print(_run_line(result), file=sys.stderr)  # each seed's line as it finishes; stdout gets the group summary
    return 0, result


def _run_line(result: dict[str, Any]) -> str:
    return (
        f"run {result['run_id']} ({result['arch']}, {result['params']:,} params) completed: "
        f"test_accuracy {result['test_accuracy']:.4f}, test_loss {result['test_loss']:.4f}, {result['wall_time_s']:.1f} s"
    )


def _group_result(group_id: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    from core.stats import mean_and_std

    accuracies = [r["test_accuracy"] for r in results if r.get("status") == "completed"]
    mean, std = mean_and_std(accuracies) if accuracies else (None, None)
    return {
        "group": group_id, "group_name": f"g{group_id}", "runs": results, "completed": len(accuracies),
        "test_accuracy_mean": mean, "test_accuracy_std": std,
    }


def _group_text(group_id: int, results: list[dict[str, Any]]) -> str:
    summary = _group_result(group_id, results)
    if summary["test_accuracy_mean"] is None:
        return f"seed group g{group_id}: no run completed"
    return (
        f"seed group g{group_id}: {summary['completed']} of {len(results)} runs completed, test_accuracy "
        f"{summary['test_accuracy_mean']:.4f} +- {summary['test_accuracy_std']:.4f} (mean +- standard deviation over seeds); "
        f"compare it with: python -m core compare g{group_id} OTHER"
    )


def _create_runs(args: argparse.Namespace) -> tuple[Any, list[int]]:
    """Validate the requested config, then store its run (or one per seed) with the first marked running here."""
    from core.data import load_raw
    from core.models import default_model_config, default_train_settings
    from core.models.config import config_to_dict
    from core.training import MAX_SEED, prepare_run

    if args.arch is None:
        raise LabError("train needs --arch ARCH for a new run, or --resume RUN to continue a stopped one")
    model_config = default_model_config(args.arch)
    train_config: dict[str, Any] = default_train_settings(args.arch)  # the architecture's recipe, then the options
    for option, key in (("epochs", "epochs"), ("device", "device"), ("seed", "seed"), ("train_subset", "train_subset"),
                        ("lr", "lr"), ("batch_size", "batch_size"), ("augment", "augment"), ("elastic", "elastic"),
                        ("compile", "compile")):
        if getattr(args, option) is not None:
            train_config[key] = getattr(args, option)
    apply_overrides(model_config, train_config, args.set or [])
    if args.budget is not None:
        model_config = _fit_to_budget(model_config, args)
    model_config, parsed = prepare_run(model_config, train_config)  # reject bad configs before creating a run
    train_config = config_to_dict(parsed)
    load_raw(args.data_dir)  # missing or broken MNIST fails here, before a run is stored
    store = _store(args)
    if (args.seeds or 1) == 1:
        run_id = store.create_run(model_config, train_config, name=args.name, status="running", source="cli", pid=os.getpid())
        log.info("run %d: created in %s", run_id, store.root)
        return store, [run_id]
    seeds = [train_config["seed"] + offset for offset in range(args.seeds)]
    if seeds[-1] > MAX_SEED:
        raise LabError(f"--seeds {args.seeds} from seed {seeds[0]} goes past the largest seed {MAX_SEED}; start from a smaller --seed")
    run_ids = store.create_seed_group(model_config, train_config, seeds, name=args.name, status="running", source="cli", pid=os.getpid())
    log.info("seed group g%d: runs %s with seeds %s created in %s", run_ids[0], run_ids, seeds, store.root)
    return store, run_ids


def _fit_to_budget(model_config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Fit the width of ``model_config`` (after any --set) to --budget, or fail naming the nearest count."""
    from core.budget import fit_budget

    if any(item.split("=", 1)[0].strip() == "width_mult" for item in args.set or []):
        raise LabError("--budget chooses width_mult itself; drop --set width_mult=... or drop --budget")
    fit = fit_budget(model_config, args.budget)
    if not fit.within:
        raise LabError(fit.describe())
    log.info("%s", fit.describe())
    return fit.config


# Options that set a config; a resumed run keeps the config it was started with.
RESUME_CONFLICTS = ("arch", "epochs", "device", "seed", "lr", "batch_size", "train_subset", "name", "set", "budget",
                    "augment", "elastic", "compile", "seeds")


def _resume_run(args: argparse.Namespace) -> tuple[Any, list[int]]:
    """Mark a stopped run as running in this process; training continues from its saved state."""
    from core.data import load_raw

    given = [f"--{name.replace('_', '-')}" for name in RESUME_CONFLICTS if getattr(args, name) not in (None, [])]
    if given:
        raise LabError(
            f"--resume continues run {args.resume} with its stored config, so {', '.join(given)} cannot be given; "
            "start a new run to train with other settings"
        )
    load_raw(args.data_dir)
    store = _store(args)
    store.recover_stale_runs()  # a run whose process died is still "running" until this notices
    run = store.reopen_for_resume(args.resume, status="running", pid=os.getpid())
    log.info("run %d: resuming in %s after epoch %d", run["id"], store.root, run["epochs_completed"])
    return store, [run["id"]]


def cmd_runs(args: argparse.Namespace) -> int:
    store = _store(args)
    store.recover_stale_runs()
    keys = ("id", "name", "arch", "params", "device", "status", "epochs_completed", "best_val_accuracy", "test_accuracy", "wall_time_s",
            "seed_group", "error")
    runs = [{k: run[k] for k in keys} for run in store.list_runs()]

    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if value is not None else "-"

    lines = [f"{'id':>4}  {'name':<24} {'arch':<13} {'params':>8} {'status':<11} {'epochs':>6} {'val_acc':>8} {'test_acc':>8} {'time_s':>8}  group"]
    for r in runs:
        lines.append(
            f"{r['id']:>4}  {r['name'][:24]:<24} {r['arch']:<13} {fmt(r['params'], ',d'):>8} {r['status']:<11} "
            f"{r['epochs_completed']:>6} {fmt(r['best_val_accuracy'], '.4f'):>8} {fmt(r['test_accuracy'], '.4f'):>8} "
            f"{fmt(r['wall_time_s'], '.1f'):>8}  {'g' + str(r['seed_group']) if r['seed_group'] else '-'}"
        )
    ensembles = store.list_ensembles()
    if ensembles:  # text only: --json keeps printing the list of runs
        lines += ["", "ensembles (compare them as e1, e2, ...):"]
        lines += [f"  e{e['id']}  {e['name']}: {', '.join(e['members'])}" for e in ensembles]
    _print(args, runs, "\n".join(lines) if runs else f"no runs in {store.root}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.checkpoints import load_checkpoint
    from core.data import load_mnist
    from core.inference import resolve_model_path
    from core.training import evaluate

    path = resolve_model_path(args.model, _store(args) if is_run_id(args.model) else None)
    loaded = load_checkpoint(path)
    data = load_mnist(args.data_dir)
    result = evaluate(loaded.model, data.test_images, data.test_labels)
    output = {
        "model": str(path),
        "arch": loaded.arch,
        "params": loaded.params,
        "test_accuracy": result.accuracy,
        "test_loss": result.loss,
        "test_images": len(data.test_images),
    }
    text = (
        f"{path}: {loaded.arch}, {loaded.params:,} params, test_accuracy {result.accuracy:.4f}, "
        f"test_loss {result.loss:.4f} on {len(data.test_images):,} test images"
    )
    _print(args, output, text)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from core.inference import load_cached, predict_probabilities, resolve_model_path
    from core.preprocess import NO_DIGIT_MESSAGE, decode_image, to_mnist

    path = resolve_model_path(args.model, _store(args) if is_run_id(args.model) else None)
    loaded = load_cached(path)
    results, failed = [], 0
    for file in args.images:
        try:
            decoded = decode_image(file)
        except LabError as error:
            print(f"error: {error}", file=sys.stderr)  # the message names the file
            results.append({"file": file, "prediction": None, "probabilities": None, "error": str(error), "notes": []})
            failed += 1
            continue
        for note in decoded.notes:
            print(f"note: {note}", file=sys.stderr)
        digit = to_mnist(decoded.pixels)
        if digit is None:
            print(f"{file}: {NO_DIGIT_MESSAGE}", file=sys.stderr)
            results.append({"file": file, "prediction": None, "probabilities": None, "error": NO_DIGIT_MESSAGE, "notes": decoded.notes})
            failed += 1
            continue
        probabilities = predict_probabilities(loaded, digit.tensor)[0]
        results.append({
            "file": file,
            "prediction": int(probabilities.argmax()),
            "probabilities": [round(float(p), 6) for p in probabilities],
            "notes": decoded.notes,
        })

    lines = [f"{r['file']}: {r['prediction']} ({max(r['probabilities']):.1%})" for r in results if r["prediction"] is not None]
    _print(args, results, "\n".join(lines))
    return 1 if failed else 0


def cmd_cancel(args: argparse.Namespace) -> int:
    status = _store(args).request_cancel(args.run)
    print(f"run {args.run}: {'cancelled' if status == 'cancelled' else 'cancel requested' if status == 'running' else 'already ' + status}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.runner import export_run

    path = export_run(_store(args), args.run, args.path, command=args.command_line)
    print(f"run {args.run}: weights written to {path} and {path.with_suffix('.json')}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from core.results import write_results

    path = write_results(args.checkpoints, args.output)
    print(f"wrote the results of {args.checkpoints} into {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from core.bench import markdown_report, run_benchmark, write_report
    from core.devices import configure_threads

    configure_threads(args.threads)
    options = {"checkpoints": args.checkpoints} if args.checkpoints else {}
    results = run_benchmark(args.data_dir, quick=args.quick, device=args.device, **options)
    command = " ".join(["python -m core"] + sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "python -m core bench"
    command = re.sub(r"--data-dir \S+", "--data-dir DATA_DIR", command)  # no machine-specific path in the report
    if args.markdown:
        path = write_report(results, command, args.markdown)
        print(f"wrote the benchmark report into {path}", file=sys.stderr)
    _print(args, results, markdown_report(results, command))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from core.worker import worker_main

    return worker_main(str(_store(args).root), args.data_dir, parent_pid=None)


# -- compare and report ---------------------------------------------------


def _resolve_compared(store: Any, specs: list[str]) -> list[Any]:
    from core.compare import resolve_subjects
    from core.inference import shipped_models

    return resolve_subjects(store, specs, shipped_models())


def cmd_compare(args: argparse.Namespace) -> int:
    from core.report import compare_subjects, comparison_json, comparison_text

    if len(args.runs) < 2:
        raise LabError(
            f"compare needs at least 2 models, got {len(args.runs)} ({' '.join(args.runs)}); "
            "e.g. python -m core compare cnn dense, or 12 g14 e3"
        )
    store = _store(args)
    subjects = _resolve_compared(store, args.runs)
    comparison = compare_subjects(store, subjects, data_dir=args.data_dir, on_progress=_log_progress)
    _print(args, comparison_json(comparison), comparison_text(comparison))
    return 0


def _log_progress(fraction: float, message: str) -> None:
    log.info("%3.0f%% %s", fraction * 100, message)


def _command_line(args: argparse.Namespace) -> str:
    """Return the command that started this process, or an equivalent one when main() was called in-process."""
    import shlex
    from pathlib import Path

    if Path(sys.argv[0]).parts[-2:] == ("core", "__main__.py"):
        argv = sys.argv[1:]
    else:
        argv = ["report", *args.runs, "-o", args.output] + (["--title", args.title] if args.title else [])
        if args.invariance:
            argv += ["--invariance"] + ([f"--invariance-images={args.invariance_images}"] if args.invariance_images else [])
    return shlex.join(["python", "-m", "core", *argv])


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.report import build_report, count_text, measure_invariance

    if args.invariance_images is not None and not args.invariance:
        raise LabError(f"--invariance-images {args.invariance_images} needs --invariance; add --invariance or drop the option")
    output = Path(args.output).expanduser()
    if output.is_dir():
        raise LabError(f"-o {args.output} is a folder; give a file path such as {output / 'report.html'}")
    if not output.parent.is_dir():
        raise LabError(
            f"the folder {output.parent} of -o {args.output} does not exist; create it first (mkdir -p {output.parent}) "
            "or write the report elsewhere"
        )
    store = _store(args)
    subjects = _resolve_compared(store, args.runs)
    invariance = None
    if args.invariance:
        invariance = measure_invariance(
            store, subjects, images=args.invariance_images, data_dir=args.data_dir, on_progress=_log_progress
        )
    document = build_report(
        store, subjects, data_dir=args.data_dir, title=args.title, invariance=invariance,
        generated_by=_command_line(args), on_progress=_log_progress,
    )

    temporary = output.with_name(output.name + ".tmp")
    try:
        temporary.write_text(document, encoding="utf-8")
        os.replace(temporary, output)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise LabError(f"cannot write the report to {output}: {error.strerror or error}; choose a writable path with -o") from error
    print(f"wrote the report of {count_text(len(subjects), 'model')} to {output}")
    return 0


# -- invariance -------------------------------------------------------------


def cmd_invariance(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tqdm import tqdm

    from core.compare import resolve_subjects
    from core.inference import shipped_models
    from core.invariance import InvarianceSettings, describe_invariance, measure_subjects

    defaults = InvarianceSettings()
    settings = InvarianceSettings(
        images=defaults.images if args.images is None else args.images,
        max_shift_px=defaults.max_shift_px if args.max_shift is None else args.max_shift,
        max_angle_deg=defaults.max_angle_deg if args.max_angle is None else args.max_angle,
        angle_step_deg=defaults.angle_step_deg if args.angle_step is None else args.angle_step,
    )
    settings.validate()
    store = _store(args)
    subjects = resolve_subjects(store, args.runs, shipped_models())

    bar = tqdm(total=100, bar_format="{percentage:3.0f}% |{bar}| {desc}", disable=args.json or not sys.stderr.isatty() and not args.progress,
               file=sys.stderr)

    def on_progress(fraction: float, message: str) -> None:
        bar.n = round(fraction * 100)
        bar.set_description_str(message, refresh=False)
        bar.refresh()

    results = measure_subjects(subjects, store, settings, data_dir=args.data_dir, on_progress=on_progress)
    bar.close()
    data = {
        "settings": asdict(settings),
        "subjects": [{**result.to_dict(), "summary": describe_invariance(result)} for result in results],
    }
    _print(args, data, _invariance_text(results))
    return 0


def _invariance_text(results: list[Any]) -> str:
    """Return one accuracy table per transform (a row per value, a column per model), then the summaries."""
    from core.invariance import AXES, AXIS_NAMES, AXIS_UNITS, describe_invariance

    width = 22
    settings = results[0].settings
    lines = [
        f"test accuracy on the first {settings.images:,} test images; + moves the ink right (x) or down (y), "
        "+ turns it counter-clockwise"
    ]
    for axis in AXES:
        header = f"{AXIS_NAMES[axis]} ({AXIS_UNITS[axis]})"
        lines += ["", f"{header:<16}" + "".join(f"{result.label[:width]:>{width + 2}}" for result in results)]
        values = results[0].curves[axis].values
        for index, value in enumerate(values):
            cells = "".join(f"{result.curves[axis].accuracy[index]:>{width + 2}.1%}" for result in results)
            lines.append(f"{value:>+16d}{cells}")
    lines.append("")
    lines += [describe_invariance(result) for result in results]
    return "\n".join(lines)


# -- parser ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from core.data import DATA_DIR_ENV
    from core.devices import DEVICE_CHOICES
    from core.models import ARCHITECTURES
    from core.store import STORE_ENV

    def global_options(default: object) -> argparse.ArgumentParser:
        options = argparse.ArgumentParser(add_help=False)
        options.add_argument("--data-dir", default=default, help=f"folder with MNIST/raw/ (default: ${DATA_DIR_ENV} or ./data)")
        options.add_argument("--store", default=default, help=f"run store folder (default: ${STORE_ENV} or ./runs)")
        options.add_argument("-v", "--verbose", action="store_true", default=default or False, help="log debug messages")
        return options

    # The global options work before or after the command. Subcommands must not reset a value
    # given before them, so their copies default to SUPPRESS (argparse then leaves it alone).
    common = global_options(argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="python -m core", description="MNIST Architecture Lab: train, compare and use MNIST models.", parents=[global_options(None)]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("archs", parents=[common], help="list architectures with parameters, FLOPs and receptive field")
    p.add_argument("--budget", default=None, metavar="PARAMS",
                   help="fit every architecture's width to this parameter count first: 8k, 68k, 210k or any number")
    p.add_argument("--json", action="store_true",
                   help="print JSON: a list of {name, params, flops, receptive_field, model_config, ...}")
    p.set_defaults(func=cmd_archs)

    p = sub.add_parser("train", parents=[common], help="train a model in the foreground and store the run",
                       epilog="examples:\n  python -m core train --arch cnn --epochs 3\n"
                              "  python -m core train --arch cnn --set stages.*.kernel_size=[1,7]\n"
                              "  python -m core train --arch mobilenetv2 --set stages.1.groups=1 --set lr=0.01\n"
                              "  python -m core train --arch vit --budget 68k --augment\n"
                              "  python -m core train --arch dense --seeds 3\n"
                              "  python -m core train --resume 12",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=list(ARCHITECTURES), help="architecture to train (required unless --resume)")
    p.add_argument("--resume", type=int, default=None, metavar="RUN",
                   help="continue stopped run RUN (interrupted, failed, cancelled or out_of_memory) after its last completed epoch")
    p.add_argument("--epochs", type=int, default=None, help="passes over the 55,000 training images (default 5)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default=None, help="training device (default auto: cuda, then mps, then cpu)")
    p.add_argument("--seed", type=int, default=None, help="random seed for weights and batch order (default 0)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="train N runs of this config with seeds SEED, SEED+1, ... one after another, as one seed group "
                        "that Compare shows as mean and spread (default 1)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.003)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 128)")
    p.add_argument("--train-subset", type=int, default=None, help="train on the first N of the 55,000 training images")
    p.add_argument("--name", default=None, help="run name shown in the app (default ARCH-ID)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a model or training setting; repeatable")
    p.add_argument("--budget", default=None, metavar="PARAMS",
                   help="fit the model's width to this parameter count (8k, 68k, 210k or any number), within 3%%")
    p.add_argument("--augment", action="store_true", default=None,
                   help="random affine augmentation per batch (rotation, shift, scale, shear; tune with --set rotate_deg=...)")
    p.add_argument("--elastic", action="store_true", default=None, help="add elastic distortion to --augment")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model at the first step; meant for CUDA, slower than eager on a 2-core CPU")
    p.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default $MNIST_LAB_THREADS or one per core)")
    p.add_argument("--export", default=None, metavar="PATH", help="also write the weights to PATH (.safetensors, with a .json beside it)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.add_argument("--json", action="store_true", help="print one JSON object with run_id, arch, params, test_accuracy, wall_time_s")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("runs", parents=[common], help="list stored runs")
    p.add_argument("--json", action="store_true", help="print JSON: a list of runs")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("evaluate", parents=[common], help="test accuracy of a model on the official 10,000 test images")
    p.add_argument("model", help="run id, shipped model name (e.g. cnn) or path of a .safetensors file")
    p.add_argument("--json", action="store_true", help="print JSON with test_accuracy, test_loss, params, arch")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[common], help="classify image files with the canvas preprocessing")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...) of single digits")
    p.add_argument("--model", required=True, help="run id, shipped model name (e.g. cnn) or path of a .safetensors file")
    p.add_argument("--json", action="store_true", help="print JSON: a list of {file, prediction, probabilities}")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cancel", parents=[common], help="cancel a queued or running run")
    p.add_argument("run", type=int, help="run id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("export", parents=[common], help="copy a completed run's weights, results and curves to a .safetensors file")
    p.add_argument("run", type=int, help="run id")
    p.add_argument("path", help="output path (.safetensors; a .json with the same name is written beside it)")
    p.add_argument("--command-line", default=None, help="the training command to record in the file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("results", parents=[common], help="write the shipped checkpoints' results table into docs/results.md")
    p.add_argument("--checkpoints", default="checkpoints", help="folder of .safetensors files with .json records (default checkpoints)")
    p.add_argument("--output", default="docs/results.md", help="Markdown file whose results section is replaced (default docs/results.md)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("bench", parents=[common], help="time training, inference, the Draw path and the store on this machine",
                       description="Train the dense net and the CNN with this engine and with the PyTorch tutorial's "
                                   "pipeline in one process, time the CNN preset to 99%% test accuracy over 3 seeds, "
                                   "and time every shipped model's inference, the Draw path and a store of 1,000 runs. "
                                   "About 10 minutes on a 2-core CPU; --quick takes under a minute.")
    p.add_argument("--quick", action="store_true", help="every part on a small scale, to check that all figures come out")
    p.add_argument("--json", action="store_true", help="print all figures as JSON with the hardware, versions and thread count")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="training device (default auto: cuda, then mps, then cpu)")
    p.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default $MNIST_LAB_THREADS or one per core)")
    p.add_argument("--checkpoints", default=None, help="folder of the models to time (default: the shipped checkpoints/)")
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="also write the report between the <!-- bench:begin/end --> markers of FILE, e.g. docs/benchmarks.md")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("worker", parents=[common], help="run the background worker in the foreground (the app starts one itself)")
    p.set_defaults(func=cmd_worker)

    models_help = "run id (12), seed group (g12: first run id of the group), ensemble (e3) or shipped model name (cnn)"
    p = sub.add_parser("compare", parents=[common], help="test whether models differ in test accuracy beyond chance",
                       description="Print each model's test accuracy (mean and spread over seeds for groups),\n"
                                   "McNemar's exact test and a paired bootstrap 95% interval for every pair,\n"
                                   "and the accuracy of the ensemble of all their models.",
                       epilog="example:\n  python -m core compare cnn dense g12 e3 --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help=f"two or more models: {models_help}")
    p.add_argument("--json", action="store_true",
                   help="print JSON: {runs: [...], pairs: [{a, b, p_value, ci_low, ci_high, ...}], ensemble_accuracy}")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", parents=[common], help="write a self-contained HTML report comparing models",
                       description="Write one HTML file that opens offline: the models, pairwise statistics,\n"
                                   "figures, test images they disagree on, their configs and the environment.",
                       epilog="example:\n  python -m core report cnn dense vit -o report.html --title 'Small models'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help=f"one or more models: {models_help}")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="HTML file to write; its folder must exist")
    p.add_argument("--title", default=None, help="title at the top of the report (default: MNIST Architecture Lab report)")
    p.add_argument("--invariance", action="store_true",
                   help="add accuracy curves under x/y shifts and rotations (measured once, then read from the store's cache)")
    p.add_argument("--invariance-images", type=int, default=None, metavar="N",
                   help="with --invariance: measure on the first N test images, 1 to 10000 (default 2000)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("invariance", parents=[common], help="test accuracy as the test digits are shifted along x or y and rotated",
                       description="Measure test accuracy with the digits shifted along x only, along y only and rotated,\n"
                                   "and say in one sentence per model how far its accuracy holds. Curves are cached in\n"
                                   "the run store, so a second call with the same settings returns at once.",
                       epilog="examples:\n  python -m core invariance cnn dense\n  python -m core invariance 12 g14 e3 --images 10000 --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help=f"one or more models: {models_help}")
    p.add_argument("--images", type=int, default=None, metavar="N", help="measure on the first N test images, 1 to 10000 (default 2000)")
    p.add_argument("--max-shift", type=int, default=None, metavar="PX",
                   help="largest shift along x and along y, in pixels, 1 to 14 (default 6)")
    p.add_argument("--max-angle", type=int, default=None, metavar="DEG", help="largest rotation either way, in degrees, 1 to 180 (default 45)")
    p.add_argument("--angle-step", type=int, default=None, metavar="DEG", help="degrees between measured angles (default 5)")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.add_argument("--json", action="store_true",
                   help="print JSON: {settings, subjects: [{key, label, kind, rows, curves: {x_shift, y_shift, rotation}, summary}]}")
    p.set_defaults(func=cmd_invariance)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

"""Command line: subcommands map onto the Python API; a ThawError becomes one line and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import os
import signal
import sys
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from thaw import __version__
from thaw.config import ADVISE_MAX_IMAGES, FitConfig, parse_duration
from thaw.errors import ThawError
from thaw.textfmt import fixed, table

__all__ = ["main"]

log = logging.getLogger("thaw")

EXAMPLES = """examples:
  thaw demo                                   # offline: built-in weights + embedded sample data
  thaw layers efficientnet_lite0              # layer groups with parameter counts
  thaw fit data/train --test data/test --time-budget 5m    # auto (the default): measures, then decides
  thaw fit data/train --val data/val --test data/test --strategy last-k --k 2 --out runs/pets
  thaw fit data/train --strategy lp-ft --img-size 128 --epochs 20
  thaw fit --resume runs/pets                 # continue an interrupted run
  thaw evaluate runs/pets data/test
  thaw predict runs/pets img1.jpg some_folder/ --top-k 3 --csv preds.csv
  thaw advise data/train --models efficientnet_lite0,resnet18   # what to thaw, and why
  thaw compare data/train --test data/test --strategies linear,lp-ft --fractions 0.25,1
  thaw export runs/pets --onnx && thaw predict runs/pets img.jpg --onnx
"""


class _ConsoleHandler(logging.Handler):
    """Plain lines on the *current* sys.stderr; warnings prefixed. Rank 0 of a distributed run alone prints."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"\x1b[33mwarning:\x1b[0m {msg}" if _tty() else f"warning: {msg}"
        # tqdm.write clears a live progress bar, prints the line and redraws the bar below it
        tqdm.write(msg, file=sys.stderr)


def _tty() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


class _StepBar:
    """The live per-epoch progress bar (tqdm): ``fit`` calls it after every training step."""

    def __init__(self) -> None:
        self._bar: tqdm[Any] | None = None
        self._phase = ""

    def __call__(self, phase: str, step: int, total: int, loss: float, acc: float, ips: float) -> None:
        if self._bar is None or phase != self._phase or step <= self._bar.n:  # a new epoch
            self.close()
            self._bar = tqdm(total=total, desc=f"  {phase}", unit="step", leave=False, file=sys.stderr)
            self._phase = phase
        self._bar.set_postfix_str(f"loss {loss:.3f} acc {acc:.3f} {ips:.0f} img/s", refresh=False)
        self._bar.update(step - self._bar.n)
        if step >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@contextlib.contextmanager
def _step_bar(quiet: bool = False) -> Iterator[_StepBar | None]:
    """A progress bar for ``fit(on_step=...)`` on terminals; None (nothing printed) when stderr is a file or pipe."""
    bar = _StepBar() if _tty() and not quiet else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def _setup_logging(quiet: bool) -> Callable[[], None]:
    """Attach the console handler to the ``thaw`` logger; returns a function that undoes it (in-process callers,
    such as tests, get their logging back unchanged)."""
    saved = (list(log.handlers), log.level, log.propagate)
    log.handlers[:] = [_ConsoleHandler()]
    if int(os.environ.get("RANK", "0")) != 0:
        log.setLevel(logging.ERROR)  # under torchrun, rank 0 alone prints
    else:
        log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False

    def restore() -> None:
        log.handlers[:], level, log.propagate = saved[0], saved[1], saved[2]
        log.setLevel(level)

    return restore


def _option_type(annotation: Any) -> type:
    """The argparse type of a FitConfig field: ``int | None`` -> int; anything but str/int/float/bool -> str."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return args[0] if len(args) == 1 and args[0] in (str, int, float, bool) else str


def _add_fit_options(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One --option per FitConfig field, help text from the field's doc."""
    defaults = FitConfig()
    hints = typing.get_type_hints(FitConfig)
    for f in dataclasses.fields(FitConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        doc = f.metadata.get("doc", "")
        typ = _option_type(hints[f.name])
        default = getattr(defaults, f.name)
        if typ is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{doc} (default: {'on' if default else 'off'})",
            )
        elif f.name == "time_budget":
            parser.add_argument(flag, dest=f.name, type=parse_duration, default=None, metavar="DURATION", help=doc)
        else:
            parser.add_argument(
                flag,
                dest=f.name,
                type=typ,
                default=None,
                metavar=f.name.upper(),
                help=f"{doc} (default: {default})",
            )


def _config_values(ns: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(FitConfig)}
    return {k: v for k, v in vars(ns).items() if k in names and v is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="thaw",
        description="Fine-tune pretrained image classifiers, choosing which layers to thaw.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"thaw {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results and warnings")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "fit",
        help="fine-tune a model on an image folder or CSV manifest",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("train_path", nargs="?", metavar="TRAIN", help="training data: folder of class subfolders or CSV")
    p.add_argument("--config", type=Path, help="YAML file of options (command-line options win)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout at the end")
    _add_fit_options(p, skip=("train",))

    p = sub.add_parser("demo", help="fine-tune the built-in EfficientNet-Lite0 on the embedded sample data (offline)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/demo-<timestamp>)")
    p.add_argument(
        "--strategy",
        default="lp-ft",
        help="strategy to demonstrate (default: lp-ft, 8 epochs, about 40 s on 2 cores; auto, fit's default, "
        "chooses its own budget of a minute or more)",
    )
    p.add_argument("--json", action="store_true", help="print summary.json to stdout at the end")

    p = sub.add_parser("layers", help="show a model's layer groups with parameter counts")
    p.add_argument("model", help="timm architecture name, e.g. efficientnet_lite0, resnet50, vit_small_patch16_224")

    p = sub.add_parser("evaluate", help="evaluate a run's model on labelled data; writes eval JSON")
    p.add_argument("run_dir", type=Path)
    p.add_argument("data", type=Path, help="folder of class subfolders or CSV manifest")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: RUN_DIR/eval-<data>.json)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("predict", help="classify images with a run's model")
    p.add_argument("run_dir", type=Path)
    p.add_argument("paths", nargs="+", help="image files and/or folders")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--csv", type=Path, default=None, help="also write predictions to this CSV file")
    p.add_argument("--json", action="store_true", help="print predictions as JSON lines")
    p.add_argument("--onnx", action="store_true", help="use RUN_DIR/model.onnx through onnxruntime (no torch model)")

    p = sub.add_parser("report", help="rebuild report.html of a run directory")
    p.add_argument("run_dir", type=Path)

    p = sub.add_parser(
        "advise",
        help="measure candidate models on your data and recommend what to thaw",
        epilog="example:\n  thaw advise data/train --models efficientnet_lite0,resnet18 --out advise.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("train", type=Path, help="training data: folder of class subfolders or CSV")
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated timm names (default: the built-in offline models efficientnet_lite0,efficientnet_lite1,"
        "efficientnet_lite2)",
    )
    p.add_argument(
        "--weights", action="append", default=[], metavar="MODEL=FILE", help="local weights for a candidate, repeatable"
    )
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument(
        "--max-images",
        type=int,
        default=ADVISE_MAX_IMAGES,
        help=f"stratified subsample measured (default: {ADVISE_MAX_IMAGES})",
    )
    p.add_argument("--time-budget", type=parse_duration, default=None, metavar="DURATION")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("advise.json"), help="JSON report (default: advise.json)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the tables")

    p = sub.add_parser(
        "compare",
        help="test accuracy vs. training-set size for several strategies (data-efficiency grid)",
        epilog="example:\n  thaw compare data/train --test data/test --strategies linear,last-k,full,auto "
        "--fractions 0.1,0.25,0.5,1 --seeds 0,1 --scratch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("compare_train", type=Path, metavar="TRAIN")
    p.add_argument("--strategies", default="linear,last-k,full,auto")
    p.add_argument("--fractions", default="0.1,0.25,0.5,1")
    p.add_argument("--seeds", default="0")
    p.add_argument("--scratch", action="store_true", help="add a from-scratch baseline (same model, random init)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true", help="print compare.json")
    _add_fit_options(p, skip=("train", "strategy", "seed"))

    p = sub.add_parser("export", help="export a run's model to ONNX and verify it with onnxruntime")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--onnx", action="store_true", required=True, help="write RUN_DIR/model.onnx (needs thaw[onnx])")
    p.add_argument("--num-images", type=int, default=32, help="real images used for the parity check")

    p = sub.add_parser(
        "app",
        help="local web app: add images, train, inspect and try models in the browser (needs thaw[app])",
        epilog="example:\n  thaw app --data runs/ --port 9000 --no-browser",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=Path("thaw-app"), help="projects, images, runs (default: %(default)s)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s: this computer)")
    p.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    return parser


def _print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    print(f"run directory: {run_dir}")
    print(
        f"strategy {summary['strategy']} on {summary['model']}: {summary['epochs']} epochs, "
        f"{summary['wall_seconds']:.0f}s wall, {summary['train_images_per_second']:.0f} train img/s"
    )
    rows = [
        [
            str(ph["index"] + 1),
            ph["name"],
            str(ph["epochs"]),
            fixed(ph["best_val_accuracy"], 4),
            str(len(ph["trainable_groups"])),
            ph["stopped"],
        ]
        for ph in summary["phases"]
    ]
    print(
        table(["phase", "name", "epochs", "best val", "groups trainable", "stopped"], rows, align="rlrrrl", indent="  ")
    )
    print(f"best validation accuracy: {fixed(summary['best_val_accuracy'], 4)}")
    if summary.get("test_accuracy") is not None:
        print(
            f"test accuracy: {fixed(summary['test_accuracy'], 4)}  (macro-F1 {fixed(summary.get('test_macro_f1'), 4)})"
        )
    for w in summary.get("warnings", []):
        print(f"warning: {w}")


def _cmd_fit(ns: argparse.Namespace) -> int:
    from thaw import api

    values = _config_values(ns)
    if ns.resume is not None:
        with _step_bar(ns.quiet) as bar:
            result = api.fit(resume=ns.resume, on_step=bar, **values)
    else:
        if ns.config is not None:
            if ns.train_path:
                values["train"] = ns.train_path
            cfg = FitConfig.from_yaml(ns.config, **values)
        else:
            if not ns.train_path:
                raise ThawError("thaw fit needs training data: thaw fit data/train [options] (see thaw fit --help)")
            cfg = FitConfig.from_dict({"train": ns.train_path, **values})
        with _step_bar(ns.quiet) as bar:
            result = api.fit(config=cfg, overwrite=ns.overwrite, on_step=bar)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 prints the summary
    if ns.json:
        print(json.dumps(result.summary, indent=2))
    else:
        _print_summary(result.summary, result.run_dir)
    return 0


def _cmd_demo(ns: argparse.Namespace) -> int:
    from thaw import api
    from thaw.data.sample import SAMPLE_CREDIT, sample_data_dir

    data = sample_data_dir()
    out = ns.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    log.info("demo: fine-tuning the built-in EfficientNet-Lite0 (ImageNet weights, offline) on %s", data)
    log.info("data: %s", SAMPLE_CREDIT)
    # a fixed strategy gets 8 epochs (lp-ft: about 40 s on 2 cores); auto sizes itself from the data and says so
    fixed: dict[str, Any] = {} if ns.strategy == "auto" else {"epochs": 8}
    with _step_bar() as bar:
        result = api.fit(
            data / "train",
            val=str(data / "val"),
            test=str(data / "test"),
            strategy=ns.strategy,
            img_size=96,
            **fixed,
            out=str(out),
            overwrite=True,
            on_step=bar,
        )
    if ns.json:
        print(json.dumps(result.summary, indent=2))
        return 0
    _print_summary(result.summary, result.run_dir)
    if result.linear_probe_test_accuracy is not None and result.test_accuracy is not None:
        delta = result.test_accuracy - result.linear_probe_test_accuracy
        print(
            f"linear probe test accuracy: {result.linear_probe_test_accuracy:.4f}  ->  after fine-tuning: "
            f"{result.test_accuracy:.4f} ({delta:+.4f})"
        )
    print(f"report: {result.run_dir / 'report.html'}")
    print(f"reload with timm: timm.create_model('local-dir:{result.run_dir / 'model'}', pretrained=True)")
    return 0


def _cmd_layers(ns: argparse.Namespace) -> int:
    from thaw.models.groups import format_groups, layer_groups
    from thaw.models.load import load_model

    # the architecture alone (random init, ImageNet-sized head); load_model reports unknown names with suggestions
    model = load_model(ns.model, 1000, random_init=True).model
    print(f"{ns.model}: layer groups, input -> output (names for --groups; last-k counts up from the head)")
    print(format_groups(layer_groups(model)))
    return 0


def _cmd_evaluate(ns: argparse.Namespace) -> int:
    from thaw import api
    from thaw.report.metrics import format_metrics_table

    res = api.evaluate(ns.run_dir, ns.data, out=ns.out)
    if ns.json:
        print(json.dumps(res.metrics, indent=2))
        return 0
    for s in res.skipped:
        print(f"skipped {s.path}: {s.reason}")
    print(format_metrics_table(res.metrics))
    print(f"wrote {res.path}")
    return 0


def _cmd_predict(ns: argparse.Namespace) -> int:
    from thaw import api

    if ns.onnx:
        from thaw.onnx_run import predict_onnx

        preds, skipped = predict_onnx(ns.run_dir, ns.paths, top_k=ns.top_k)
    else:
        preds, skipped = api.predict(ns.run_dir, ns.paths, top_k=ns.top_k)
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    for p in preds:
        if ns.json:
            print(json.dumps({"path": p.path, "top": [{"label": lab, "probability": pr} for lab, pr in p.top]}))
        else:
            print(f"{p.path}: " + ", ".join(f"{lab} {pr:.3f}" for lab, pr in p.top))
    if ns.csv is not None:
        with open(ns.csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            k = max((len(p.top) for p in preds), default=0)
            header = ["path"]
            for i in range(1, k + 1):
                header += [f"label_{i}", f"probability_{i}"]
            w.writerow(header)
            for p in preds:
                w.writerow([p.path, *[v for lab, pr in p.top for v in (lab, f"{pr:.6f}")]])
            for s in skipped:
                w.writerow([s.path, "", f"skipped: {s.reason}"])
        print(f"wrote {ns.csv}", file=sys.stderr)
    return 0


def _cmd_report(ns: argparse.Namespace) -> int:
    from thaw.errors import CheckpointError
    from thaw.report.html import write_report
    from thaw.rundir import SUMMARY, RunDir

    if not RunDir(ns.run_dir).summary_json.exists():
        raise CheckpointError(f"{ns.run_dir} has no {SUMMARY}: is it a finished thaw run directory?")
    print(write_report(ns.run_dir))
    return 0


def _csv_list(text: str, cast: Callable[[str], Any], what: str) -> list[Any]:
    try:
        return [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ThawError(f"cannot read --{what} '{text}': give a comma-separated list") from exc


def _cmd_advise(ns: argparse.Namespace) -> int:
    from thaw.advise import advise

    weights = {}
    for item in ns.weights:
        name, sep, path = item.partition("=")
        if not sep:
            raise ThawError(f"--weights '{item}': use MODEL=FILE, e.g. --weights resnet18=resnet18.safetensors")
        weights[name] = path
    res = advise(
        str(ns.train),
        models=_csv_list(ns.models, str, "models") if ns.models else None,
        weights=weights or None,
        img_size=ns.img_size,
        max_images=ns.max_images,
        seed=ns.seed,
        time_budget=ns.time_budget,
        progress=log.info,
    )
    path = res.write_json(ns.out)
    if ns.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        print(res.format_table())
        print(f"wrote {path}")
    return 0


def _cmd_compare(ns: argparse.Namespace) -> int:
    from thaw.compare import compare

    values = _config_values(ns)
    if ns.test is None:
        raise ThawError("thaw compare needs --test DATA: accuracy is measured on a fixed test set")
    values.pop("test")
    out = values.pop("out", None)
    res = compare(
        ns.compare_train,
        test=ns.test,
        strategies=_csv_list(ns.strategies, str, "strategies"),
        fractions=_csv_list(ns.fractions, float, "fractions"),
        seeds=_csv_list(ns.seeds, int, "seeds"),
        scratch=ns.scratch,
        out=out,
        overwrite=ns.overwrite,
        progress=log.info,
        command="thaw " + " ".join(sys.argv[1:]),
        **values,
    )
    if ns.json:
        print((res.out / "compare.json").read_text(encoding="utf-8"))
    else:
        print(res.format_table())
        print(f"wrote {res.out / 'compare.json'} and {res.plot}")
    return 0


def _cmd_export(ns: argparse.Namespace) -> int:
    from thaw.onnx_run import export_run_onnx

    info = export_run_onnx(ns.run_dir, num_images=ns.num_images)
    print(
        f"wrote {info['path']}: onnxruntime vs PyTorch on {info['num_images']} real images: max |logit difference| "
        f"{info['max_abs_diff']:.2e}, predictions equal: {info['predictions_equal']}"
    )
    return 0


def _cmd_app(ns: argparse.Namespace) -> int:
    from thaw.app import serve

    serve(ns.data, host=ns.host, port=ns.port, open_browser=not ns.no_browser)
    return 0


COMMANDS = {
    "fit": _cmd_fit,
    "demo": _cmd_demo,
    "layers": _cmd_layers,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
    "report": _cmd_report,
    "advise": _cmd_advise,
    "compare": _cmd_compare,
    "export": _cmd_export,
    "app": _cmd_app,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``thaw`` command; returns the exit code."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    restore_logging = _setup_logging(ns.quiet)
    # SIGTERM (schedulers, `kill`) ends a run like Ctrl-C: the last epoch's checkpoint is already on disk
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        previous = None
    try:
        return COMMANDS[ns.command](ns)
    except ThawError as exc:
        print(("\x1b[31mthaw: error:\x1b[0m " if _tty() else "thaw: error: ") + str(exc), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `thaw predict ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(
            "thaw: interrupted; the last finished epoch is checkpointed: continue with `thaw fit --resume RUN_DIR`",
            file=sys.stderr,
        )
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        restore_logging()
        if ns.command == "fit":
            from thaw.train.dist import shutdown

            shutdown()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

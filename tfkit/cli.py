"""The ``tfkit`` command: parse arguments, then call the Python API.

Nothing here computes anything; every command is one call into the same
functions a notebook uses. Stage modules are imported inside each command so
``tfkit --help`` does not pay for importing TensorFlow.

Errors that are the user's to fix (:class:`tfkit.utils.TfkitError`) are
printed as one line, ``tfkit: error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from typing import Any, Callable, Sequence

from tfkit import __version__
# Choices and defaults come from the modules that own them; these import no TensorFlow, so --help stays fast.
from tfkit.backend import BACKENDS, select_backend
from tfkit.datasets import DATASETS
from tfkit.records.images import VERIFY_MODES
from tfkit.records.spec import SPLITS, BuildSpec
from tfkit.report_page import DEFAULT_FORMAT, FORMATS
from tfkit.search_space import DEFAULT_TUNER, TUNERS
from tfkit.utils import TfkitError


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,2, got {text!r}")


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",")]


def defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """The default of each parameter of ``func`` that has one: the CLI's defaults are the API's.

    Example:
        >>> defaults(lambda a, b=2, *, c="x": None)
        {'b': 2, 'c': 'x'}
    """
    return {k: v.default for k, v in inspect.signature(func).parameters.items() if v.default is not inspect.Parameter.empty}


BUILD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(BuildSpec)}  # tfkit build-records' defaults


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (every option has a default; see README)")
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config keys; values are YAML, e.g. --set train.lr=3e-4 train.metrics=[accuracy,f1] "
        "(several pairs after one flag, and the flag repeated, both work)",
    )


def _add_backend_arg(p: argparse.ArgumentParser, default_from: str) -> None:
    p.add_argument(
        "--backend", choices=BACKENDS, default=None,
        help=f"Keras backend: auto (JAX on a TPU VM whose TensorFlow cannot see the chips, else TensorFlow), "
        f"tensorflow or jax (default {default_from})",
    )


def _select_backend(args: argparse.Namespace) -> str:
    # Before any stage module is imported: Keras fixes its backend at its first import.
    return select_backend(args.backend or "auto", "--backend")


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="show everything TensorFlow prints (by default its C++ start-up lines are held back)")


def _load_cfg(args: argparse.Namespace):
    from tfkit.config import load_config

    overrides = list(args.overrides) + ([f"train.backend={args.backend}"] if getattr(args, "backend", None) else [])
    cfg = load_config(args.config, overrides)
    if hasattr(args, "backend"):
        select_backend(cfg.train.backend, "--backend" if args.backend else "train.backend")
    return cfg


# --------------------------------------------------------------------------- commands


def cmd_datasets_export(args: argparse.Namespace) -> int:
    from tfkit.datasets import export_dataset

    paths = export_dataset(args.name, args.out, test_size=args.test_size, seed=args.seed, overwrite=args.overwrite)
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


def cmd_folds(args: argparse.Namespace) -> int:
    from tfkit.folds import folds_from_csv

    folds_from_csv(
        args.csv, args.out, id_col=args.id_col, label_col=args.label_col, group_col=args.group_col,
        n_folds=args.folds, seed=args.seed, n_bins=args.bins, label_sep=args.label_sep,
        label_cols=args.label_cols, target_cols=args.target_cols,
    )
    return 0


def cmd_build_records(args: argparse.Namespace) -> int:
    from tfkit.records import build_records

    build_records(
        csv=args.csv, images=args.images, out=args.out, id_col=args.id_col, path_col=args.path_col,
        label_col=args.label_col, group_col=args.group_col, meta_cols=args.meta, n_folds=args.folds,
        seed=args.seed, size=args.size, quality=args.quality, workers=args.workers, split=args.split,
        shard_size=args.shard_size, skip_bad=args.skip_bad, overwrite=args.overwrite,
        classes_from=args.classes_from, verify=args.verify, label_sep=args.label_sep, label_cols=args.label_cols,
        target_cols=args.target_cols, channels=args.channels, exclude=args.exclude, ordinal=args.ordinal,
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)  # selects the backend before the stage imports Keras
    from tfkit.show import show

    for path in show(args.records, cfg, args.out, n_images=args.n, n_draws=args.draws):
        print(path)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)
    from tfkit.train import train

    train(cfg, args.records, args.out, folds=args.folds)
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)
    from tfkit.lr_find import lr_find

    lr_find(cfg, args.records, args.out, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from tfkit.scheduler import plot_schedule

    print(plot_schedule(_load_cfg(args).train, steps_per_epoch=args.steps_per_epoch, path=args.out))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    cfg = _load_cfg(args)
    from tfkit.tune import tune

    tune(
        cfg, args.space, args.records, args.out, tuner=args.tuner, max_trials=args.trials,
        objective=args.objective, fold=args.fold, cv=args.cv, overwrite=args.overwrite,
        isolate=False if args.in_process else None,  # None: by machine (tfkit.tune.default_isolation)
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _select_backend(args)
    from tfkit.predict import oof_tta, predict

    if args.oof:
        if args.records is None:
            raise TfkitError("predict --oof: give the training records with --records")
        if args.out is not None:
            raise TfkitError("predict --oof writes RUN/oof_tta.csv and RUN/cv_tta.json; --out is for submissions")
        oof_tta(args.run, args.records, tta=args.tta, overrides=args.overrides)
        return 0
    predict(
        args.run, out=args.out or "submission.csv", records=args.records, images=args.images, csv=args.csv, tta=args.tta,
        overrides=args.overrides,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _select_backend(args)
    from tfkit.report import report

    print(report(args.run, out=args.out, n_worst=args.worst, gradcam_ids=args.gradcam, records=args.records,
                 fmt=args.format))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _select_backend(args)
    from tfkit.demo import demo

    demo(args.out, overwrite=args.overwrite, quick=args.quick, task=args.task)
    return 0


# --------------------------------------------------------------------------- after training (ensemble, clean, runs)


def cmd_ensemble(args: argparse.Namespace) -> int:
    from tfkit.ensemble import ensemble

    ensemble(args.runs, args.out, method=args.method, metric=args.metric, subs=args.subs,
             test_records=args.test_records, tta=args.tta, steps=args.steps, overwrite=args.overwrite)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from tfkit.clean import clean

    clean(args.run, args.out, threshold=args.threshold, csv=args.csv, records=args.records,
          max_images=args.max_images, overwrite=args.overwrite)
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from tfkit.runs import runs_table

    runs_table(args.dirs, out=args.out, metric=args.metric)
    return 0


def _add_after_training(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Parsers of ensemble, clean and runs (one block, beside their cmd_* functions)."""
    from tfkit.clean import clean
    from tfkit.ensemble import DEFAULT_METHOD, GREEDY_STEPS, METHODS

    p = add("ensemble", cmd_ensemble, "blend runs trained on the same records from their OOF predictions "
            "(mean, rank, fitted weights, greedy selection) with an honest nested CV")
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="two or more run folders (same records and folds)")
    p.add_argument("--out", required=True, help="output folder: oof.csv, cv.json, weights.json, correlation.png, submission.csv")
    p.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help="blend written (every method is scored and printed; default %(default)s; weights: "
                        "non-negative, summing to 1, fitted on the OOF log loss)")
    p.add_argument("--metric", default=None, help="metric scored and optimised by greedy (default the first run's primary)")
    p.add_argument("--subs", nargs="+", default=None, metavar="CSV",
                   help="one tfkit predict probability CSV per run, in --runs order: blended into submission.csv")
    p.add_argument("--test-records", default=None, help="instead of --subs: test records every run predicts")
    p.add_argument("--tta", type=int, default=None, help="views per image with --test-records (default each run's predict.tta)")
    p.add_argument("--steps", type=int, default=GREEDY_STEPS, help="bag size of greedy selection (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    p = add("clean", cmd_clean, "label-noise candidates: training images whose OOF prediction is confidently another class")
    p.add_argument("--run", required=True, help="run folder written by tfkit train")
    p.add_argument("--out", required=True, help="output folder: flagged.csv, flagged.png, <csv>_clean.csv, clean.json")
    clean_defaults = defaults(clean)
    p.add_argument("--threshold", type=float, default=clean_defaults["threshold"],
                   help="flag when another class is predicted with at least this probability (default %(default)s)")
    p.add_argument("--csv", default=None, help="the training CSV the records were built from: written without the flagged rows")
    p.add_argument("--records", default=None, help="the run's training records: images of the contact sheet (left out without)")
    p.add_argument("--max-images", type=int, default=clean_defaults["max_images"],
                   help="most images on the contact sheet (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")

    p = add("runs", cmd_runs, "experiment table: one row per run (CV with and without TTA, differing config keys, "
            "model, size, epochs, time)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run folders, or folders holding runs (tune folders, ensembles)")
    p.add_argument("--out", default="runs_table", help="folder for runs.csv and runs.png (default runs_table/)")
    p.add_argument("--metric", default=None, help="CV metric shown (default the runs' most common primary metric)")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from tfkit.datasets import export_dataset
    from tfkit.demo import DEMO_TASKS, demo
    from tfkit.folds import folds_from_csv

    parser = argparse.ArgumentParser(
        prog="tfkit",
        description="Kaggle-grade image classification: records, folds, augmentation, training, tuning, TTA.",
    )
    parser.add_argument("--version", action="version", version=f"tfkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        _add_verbose(p)
        return p

    # datasets
    p = sub.add_parser("datasets", help="embedded datasets that need no download", description="embedded datasets")
    dsub = p.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)
    e = dsub.add_parser("export", help="write an embedded dataset as image files plus train.csv and test.csv")
    e.add_argument("name", choices=list(DATASETS),
                   help="digits: scikit-learn's 1,797 handwritten digit scans (10 classes); digits-multilabel: "
                        "2x2 mosaics of them tagged with the digits present; digits-regression: the scans with "
                        "numeric targets (digit value, ink fraction); digits-channels: 4 grey files per scan")
    e.add_argument("--out", required=True, help="folder to create")
    export = defaults(export_dataset)
    e.add_argument("--test-size", type=float, default=export["test_size"],
                   help="held-out fraction of the scans for test.csv (default %(default)s)")
    e.add_argument("--seed", type=int, default=export["seed"], help="seed of the stratified train/test split")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    _add_verbose(e)
    e.set_defaults(func=cmd_datasets_export)

    # folds
    p = add("folds", cmd_folds, "triple-stratified K-fold assignment (groups isolated, classes and group sizes balanced)")
    p.add_argument("--csv", required=True, help="input CSV")
    fold_defaults = defaults(folds_from_csv)
    p.add_argument("--id-col", default=fold_defaults["id_col"], help="id column (default %(default)s)")
    p.add_argument("--label-col", default=fold_defaults["label_col"],
                   help="label column; a numeric target with many values is binned; tags with --label-sep")
    p.add_argument("--group-col", default=None, help="group column, e.g. patient_id; without it each row is its own group")
    p.add_argument("--folds", type=int, default=fold_defaults["n_folds"], help="number of folds (default %(default)s)")
    p.add_argument("--seed", type=int, default=fold_defaults["seed"], help="random seed (same seed, same folds)")
    p.add_argument(
        "--bins", type=int, default=fold_defaults["n_bins"],
        help="quantile bins for a numeric label with non-integer values or more than 50 distinct values "
        "(default %(default)s); 0 never bins, e.g. for integer-coded labels of more than 50 classes",
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--label-sep", default=None,
                        help="multi-label: the label column holds tags split on this separator, e.g. ' '")
    target.add_argument("--label-cols", type=_str_list, default=None,
                        help="multi-label: comma-separated 0/1 columns, one per label, e.g. healthy,rust,scab")
    target.add_argument("--target-cols", type=_str_list, default=None,
                        help="regression: comma-separated numeric target columns, each binned into --bins quantiles")
    p.add_argument("--out", required=True, help="output CSV of id,fold (the id column keeps its --id-col name)")

    # build-records
    p = add("build-records", cmd_build_records, "images + CSV -> fold-sharded TFRecords with a manifest")
    p.add_argument("--csv", required=True, help="CSV with one row per image")
    p.add_argument("--images", required=True, help="images folder; every path must stay inside it")
    p.add_argument("--out", default=str(BUILD_DEFAULTS["out"]), help="output folder (default %(default)s/)")
    p.add_argument("--id-col", default=BUILD_DEFAULTS["id_col"], help="id column (default %(default)s)")
    p.add_argument("--path-col", default=None, help="column of image paths relative to --images; "
                   "without it an image is <id>.<ext> for the first extension found")
    p.add_argument("--label-col", default=BUILD_DEFAULTS["label_col"], help="label column (train split)")
    p.add_argument("--label-sep", default=None, metavar="SEP",
                   help='multi-label: --label-col holds tags separated by SEP, e.g. " " (Planet, Plant Pathology 2021)')
    p.add_argument("--label-cols", type=_names, default=None, metavar="A,B,...",
                   help="multi-label: one 0/1 column per class, e.g. healthy,rust,scab (Plant Pathology 2020, RANZCR)")
    p.add_argument("--target-cols", type=_names, default=None, metavar="X,Y,...",
                   help="regression on these numeric columns; several make a distribution target")
    p.add_argument("--channels", type=_names, default=None, metavar="C1,C2,...",
                   help="one grey file per channel, <id>_<channel>.<ext>, e.g. red,green,blue,yellow; "
                        "stored losslessly as a PNG per channel (8- or 16-bit)")
    p.add_argument("--ordinal", action="store_true",
                   help="the classes are ordered grades (in the manifest's class order, natural sort): "
                        "training then reports quadratic weighted kappa (QWK)")
    p.add_argument("--group-col", default=None, help="group column kept together in one fold, e.g. patient_id")
    p.add_argument("--meta", nargs="*", default=[], metavar="COL", help="extra metadata columns to store: numeric when every value is a number "
                   "(float, NaN when missing), else categorical (index into the manifest's vocab)")
    p.add_argument("--folds", type=int, default=BUILD_DEFAULTS["n_folds"], help="number of folds (default %(default)s)")
    p.add_argument("--seed", type=int, default=BUILD_DEFAULTS["seed"], help="fold seed (default %(default)s)")
    p.add_argument("--size", type=int, default=None, help="store SIZE x SIZE images: the shorter side is resized to SIZE (bicubic) and the centre "
                   "cropped to a square (nothing squashed). Default keeps each image's size, and RGB upright "
                   "JPEGs are stored byte-for-byte")
    p.add_argument("--quality", type=int, default=BUILD_DEFAULTS["quality"],
                   help="JPEG quality when re-encoding (default %(default)s)")
    p.add_argument("--workers", type=int, default=BUILD_DEFAULTS["workers"], help="processes that re-encode images, and threads that run --verify decode (default 0 = all cores); output bytes do not depend on it")
    p.add_argument("--split", choices=SPLITS, default=BUILD_DEFAULTS["split"],
                   help="train (labels, folds) or test (no labels)")
    p.add_argument("--shard-size", type=int, default=BUILD_DEFAULTS["shard_size"],
                   help="max examples per shard (default %(default)s)")
    p.add_argument("--classes-from", default=None, help="test split: manifest.json of the train records, for the class list")
    p.add_argument("--verify", choices=VERIFY_MODES, default=BUILD_DEFAULTS["verify"],
                   help="integrity check of JPEGs stored untouched (default %(default)s): decode (reads every byte) or "
                        "markers (JPEG structure and end marker only: catches truncation, not bit errors; copy speed)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad rows instead of failing; they are listed in the manifest")
    p.add_argument("--exclude", default=None, metavar="LIST.csv",
                   help="CSV of ids to leave out (an id column), e.g. tfkit clean's flagged.csv")
    p.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")

    # show
    p = add("show", cmd_show, "PNG plots: augmented image grid, class counts per fold, EDA of the records")
    p.add_argument("--records", default="records", help="records folder")
    p.add_argument("--out", default="show", help="folder for the PNGs")
    p.add_argument("--n", type=int, default=8, help="images in the augmentation grid")
    p.add_argument("--draws", type=int, default=4, help="augmentation draws per image")
    _add_config_args(p)
    _add_backend_arg(p, "train.backend of the config: auto")

    # train
    p = add("train", cmd_train, "train one model per fold; writes best models, oof.csv, cv.json and curves")
    p.add_argument("--records", default="records", help="records folder")
    p.add_argument("--out", required=True, help="run folder (re-running resumes)")
    p.add_argument("--folds", type=_int_list, default=None, help="folds to train, e.g. 0,2 (default all)")
    _add_config_args(p)
    _add_backend_arg(p, "train.backend of the config: auto")

    # lr-find
    p = add("lr-find", cmd_lr_find, "exponential learning-rate sweep; plots loss vs LR and prints a suggestion")
    p.add_argument("--records", default="records", help="records folder")
    p.add_argument("--out", required=True, help="folder for lr_find.png and lr_find.csv")
    p.add_argument("--min-lr", type=float, default=1e-7, help="first learning rate of the sweep (default 1e-7)")
    p.add_argument("--max-lr", type=float, default=1.0, help="last learning rate of the sweep (default 1)")
    p.add_argument("--steps", type=int, default=100, help="training steps in the sweep (default 100)")
    _add_config_args(p)
    _add_backend_arg(p, "train.backend of the config: auto")

    # schedule
    p = add("schedule", cmd_schedule, "plot the learning-rate schedule a config describes")
    p.add_argument("--steps-per-epoch", type=int, default=100, help="steps per epoch the schedule is drawn for")
    p.add_argument("--out", default="schedule.png", help="PNG to write")
    _add_config_args(p)

    # tune
    p = add("tune", cmd_tune, "Keras Tuner search over the K-fold setup; re-running resumes")
    p.add_argument("--records", default="records", help="records folder")
    p.add_argument("--space", required=True, help="YAML search space")
    p.add_argument("--out", required=True, help="tuning folder")
    p.add_argument("--tuner", choices=TUNERS, default=DEFAULT_TUNER, help="search algorithm (default %(default)s)")
    p.add_argument("--trials", type=int, default=10, help="max trials in all (re-run with more to extend a search)")
    p.add_argument("--objective", default=None,
                   help="metric to optimise, e.g. val_auc or val_log_loss; *loss* is minimised, "
                   "else maximised, or say so: val_qwk:max (default: the run's monitor, which fits the task)")
    p.add_argument("--fold", type=int, default=0, help="the fold scored when --cv is off")
    p.add_argument("--cv", action="store_true", help="score each trial by the mean over all folds (train.folds)")
    p.add_argument("--overwrite", action="store_true", help="discard the search in --out and start afresh")
    p.add_argument("--in-process", action="store_true",
                   help="train trials in this process (saves a TensorFlow import per trial, but memory grows "
                   "~20 MiB per trial); by default each trial runs in a fresh process on a CPU machine, and in "
                   "this one on a TPU VM or beside a GPU (a TPU admits one process)")
    _add_config_args(p)
    _add_backend_arg(p, "train.backend of the config: auto")

    # predict
    p = add("predict", cmd_predict, "TTA + fold-ensemble predictions into a submission CSV")
    p.add_argument("--run", required=True, help="run folder written by tfkit train")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--records", help="test records folder")
    src.add_argument("--images", help="folder of images")
    p.add_argument("--csv", help="with --images: CSV of ids to predict (default every image)")
    p.add_argument("--tta", type=int, default=None, help="views per image (default from the run's config)")
    p.add_argument("--out", default=None, help="submission CSV (default submission.csv)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override predict.* keys, e.g. --set predict.average=gmean predict.tta=4")
    p.add_argument("--oof", action="store_true",
                   help="instead: recompute the out-of-fold predictions of the training --records with the same TTA "
                        "and print the CV score with and without TTA (writes RUN/oof_tta.csv, RUN/cv_tta.json)")
    _add_backend_arg(p, "auto: KERAS_BACKEND if set, else detected; models load on either backend")

    # report
    p = add("report", cmd_report, "confusion matrix, per-class metrics, top losses, Grad-CAM, calibration; "
                                  "PR curves per class (multi-label), residuals (regression)")
    p.add_argument("--run", required=True, help="run folder written by tfkit train")
    p.add_argument("--out", default=None, help="report folder (default RUN/report)")
    p.add_argument("--worst", type=int, default=16, help="most confidently wrong images to show")
    p.add_argument("--gradcam", type=lambda s: s.split(","), default=None, help="comma-separated ids for Grad-CAM")
    p.add_argument("--records", default=None,
                   help="training records of the run: images for the top-losses grid and Grad-CAM (left out without)")
    p.add_argument("--format", choices=FORMATS, default=DEFAULT_FORMAT, help="the page: report.html or report.md "
                   "(default %(default)s)")
    _add_backend_arg(p, "auto: KERAS_BACKEND if set, else detected")

    # demo
    p = add("demo", cmd_demo, "the whole workflow offline on the embedded digits datasets")
    demo_defaults = defaults(demo)
    p.add_argument("--out", default=demo_defaults["out"], help="demo folder (default %(default)s/)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--quick", action="store_true", help="tiny setting (seconds, for smoke tests)")
    p.add_argument("--task", choices=list(DEMO_TASKS), default=demo_defaults["task"],
                   help="classification (digits), multilabel (digit mosaics, tags) or regression (the digit as a number)")

    _add_backend_arg(p, "auto: KERAS_BACKEND if set, else detected")

    _add_after_training(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "verbose", False):
        # Before any stage imports TensorFlow (tfkit.quiet held its start-up lines back).
        from tfkit.quiet import show_everything

        show_everything()
    try:
        return int(args.func(args) or 0)
    except TfkitError as e:
        print(f"tfkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

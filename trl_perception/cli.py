"""The `trl-perception` command: `demo`, `train`, `data preview`, `eval` and `push`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .frames import BOX_FORMATS

__all__ = ["build_parser", "main"]

_OFFLINE_HINT = "Set HF_HUB_OFFLINE=1 to stay offline; every subcommand works on local files."


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="Train a tiny model with GRPO on synthetic data and write a before/after report (CPU, minutes).",
        description="Build (or load) a tiny vision-language model and a synthetic perception dataset, evaluate it, "
        "train it with GRPO and evaluate again. Writes a report, metrics.json (before/after), sample images and a "
        "reward curve to --output-dir. " + _OFFLINE_HINT,
    )
    p.add_argument("--output-dir", default="demo-output", help="Where the report goes (default: demo-output).")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="GRPO steps (default: the demo's setting).")
    p.add_argument("--eval-samples", type=_positive_int, default=None, help="Held-out images evaluated before and after.")
    p.add_argument("--train-samples", type=_positive_int, default=None, help="Synthetic training images (default: the demo's).")
    p.add_argument(
        "--max-completion-length",
        type=_positive_int,
        default=None,
        help="Longest answer, in tokens, in training and evaluation (default: the demo's). Small values make a "
        "quick smoke run.",
    )
    p.add_argument("--checkpoint", default=None, help="Start from this checkpoint instead of the bundled one.")
    p.add_argument("--seed", type=int, default=0, help="Seed of data, sampling and training.")
    p.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        eval_samples=args.eval_samples,
        train_samples=args.train_samples,
        max_completion_length=args.max_completion_length,
        checkpoint=args.checkpoint,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(json.dumps({"before": result["before"], "after": result["after"]}, indent=2, default=str))
    print(f"Report written to {os.path.join(args.output_dir, 'report.md')}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="Run the GRPO script with a YAML config (same as `python trl_perception/scripts/grpo.py --config CONFIG`).",
        description="Run the GRPO script, trl_perception/scripts/grpo.py (copy it to change a step). CONFIG is a "
        "YAML (see recipes/); any key can be overridden on the command line, e.g. `trl-perception train config.yaml "
        "--learning_rate 2e-6 --max_steps 10`. Every argument of PerceptionScriptArguments, PerceptionGRPOConfig and "
        "trl.ModelConfig is accepted; run `trl-perception train --help-args` to list them. For several GPUs: "
        "`accelerate launch --config_file ACCELERATE_YAML -m trl_perception.scripts.grpo --config CONFIG`.",
    )
    p.add_argument("config", nargs="?", help="Recipe YAML file (or --config CONFIG, as the script takes it).")
    p.add_argument("--help-args", action="store_true", help="List every argument of the script and exit.")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .scripts import grpo

    parser = grpo.make_parser()
    if args.help_args:
        parser.print_help()
        return 0
    config = args.config
    if not config:
        raise SystemExit("trl-perception train: a recipe YAML is required (see recipes/)")
    if not os.path.isfile(config):
        raise SystemExit(
            f"trl-perception train: {config}: no such recipe file (usage: trl-perception train CONFIG [--key value ...])"
        )
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(["--config", config, *extra])
    except ValueError as err:  # the arguments' own checks (__post_init__), unknown YAML keys
        raise SystemExit(f"trl-perception train: {err}") from None
    summary = grpo.main(script_args, training_args, model_args)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _config_first(argv: Sequence[str]) -> list[str]:
    """`train` arguments with `--config PATH` (as the script takes it) turned into the leading positional."""
    argv = list(argv)
    found = [i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")]
    if not found:
        return argv
    if len(found) > 1 or (argv and not argv[0].startswith("-") and found[0] != 0):
        raise SystemExit("trl-perception train: give the recipe YAML once (positionally or with --config)")
    i = found[0]
    if "=" in argv[i]:
        config, rest = argv[i].split("=", 1)[1], argv[:i] + argv[i + 1 :]
    elif i + 1 < len(argv):
        config, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
    else:
        raise SystemExit("trl-perception train: --config needs a recipe YAML")
    return [config, *rest]


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="Dataset tools.", description="Dataset tools.")
    data_sub = p.add_subparsers(dest="data_command", metavar="{preview}")
    data_sub.required = True
    prev = data_sub.add_parser(
        "preview",
        help="Render a grid of dataset rows with their ground truth drawn on them.",
        description="Build a dataset with trl_perception.data and render a grid of rows with the ground truth drawn "
        "on them, to check a build by eye.",
    )
    prev.add_argument("--task", required=True, choices=["grounding", "counting", "ocr", "detection", "ovd"])
    prev.add_argument("--source", required=True, help="Data file or folder, or 'synthetic'.")
    prev.add_argument("--split", default=None, help="Split name where the source has several.")
    prev.add_argument("--image-dir", default=None, help="Image folder for sources that reference files.")
    prev.add_argument(
        "--box-format",
        default=None,
        choices=BOX_FORMATS,
        help="Model family: its prompt format, and images resized to its patch grid as training sees them.",
    )
    prev.add_argument("--min-pixels", type=_positive_int, default=None, help="Smallest image area (with --box-format).")
    prev.add_argument("--max-pixels", type=_positive_int, default=None, help="Largest image area (with --box-format).")
    prev.add_argument("--n", type=_positive_int, default=16, help="Rows to show (default 16).")
    prev.add_argument("--ncols", type=_positive_int, default=4, help="Grid columns (default 4).")
    prev.add_argument("--seed", type=int, default=0, help="Seed of the row sample.")
    prev.add_argument("--out", default="preview.png", help="Output PNG (default preview.png).")
    prev.set_defaults(func=_run_preview)


def _run_preview(args: argparse.Namespace) -> int:
    from .data import build_dataset
    from .data.preview import render_preview

    kwargs = {}
    if args.split is not None:
        kwargs["split"] = args.split
    if args.image_dir is not None:
        kwargs["image_dir"] = args.image_dir
    for key in ("box_format", "min_pixels", "max_pixels"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    dataset = build_dataset(args.task, args.source, num_samples=args.n, seed=args.seed, **kwargs)
    path = render_preview(dataset, args.out, n=args.n, ncols=args.ncols)
    print(f"Wrote {path} ({min(args.n, len(dataset))} rows of {args.task} from {args.source})")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .evaluation import add_eval_arguments

    p = sub.add_parser(
        "eval",
        help="Evaluate a model with the paper's protocol and write predictions, metrics and a visual report.",
        description="Run a model over a dataset built by trl_perception.data, parse its answers with the rewards' "
        "formats, map boxes back to original pixels and compute the task's metrics. " + _OFFLINE_HINT,
    )
    add_eval_arguments(p)
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluation import run_eval_from_args

    run_eval_from_args(args)  # prints the metrics and the files it wrote
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="Push a trained model folder to the Hugging Face Hub with its model card.",
        description="Upload a saved model folder to the Hub. The model card is the folder's README.md, written by the "
        "recipe, or built from its trl_perception_card.json.",
    )
    p.add_argument("folder", help="The training output directory.")
    p.add_argument("--repo-id", required=True, help="Hub repository, e.g. me/qwen2-vl-2b-grounding.")
    p.add_argument("--private", action="store_true", help="Create the repository as private.")
    p.add_argument("--token", default=None, help="Hub token (default: the cached login).")
    p.set_defaults(func=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    url = push_to_hub(args.folder, args.repo_id, private=args.private or None, token=args.token)
    print(url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `trl-perception` argument parser.

    Example:
    ```python
    >>> parser = build_parser()
    >>> parser.parse_args(["demo", "--max-steps", "3"]).max_steps
    3

    ```
    """
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="trl-perception",
        description="GRPO post-training of vision-language models on perception tasks (grounding, counting, OCR, "
        "detection), on top of TRL.",
    )
    parser.add_argument("--version", action="version", version=f"trl-perception {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,train,data,eval,push}")
    sub.required = True
    _add_demo(sub)
    _add_train(sub)
    _add_data(sub)
    _add_eval(sub)
    _add_push(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trl-perception` console script: run one subcommand with `argv` (default: the
    command line) and return its exit status.

    Example:
    ```python
    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "preview.png")
    >>> main(["data", "preview", "--task", "counting", "--source", "synthetic", "--n", "2", "--out", out])
    Wrote ... (2 rows of counting from synthetic)
    0

    ```
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "train":
        args, extra = parser.parse_known_args(["train", *_config_first(argv[1:])])
        return _run_train(args, extra)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

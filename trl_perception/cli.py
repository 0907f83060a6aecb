"""The `trl-perception` command: `demo`, `train` (GRPO), `sft`, `data preview`, `eval` and `push`.

Arguments are checked before any model is loaded or any data is built. A user error (a bad argument, a
missing file, malformed data) is one line on stderr and exit status 2; `--debug` (or
`TRL_PERCEPTION_DEBUG=1`) shows the traceback instead."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import traceback
from collections.abc import Sequence

from .frames import BOX_FORMATS, TASKS

__all__ = ["DEBUG_ENV", "build_parser", "main"]

DEBUG_ENV = "TRL_PERCEPTION_DEBUG"
"""Environment variable that, set to 1, makes every error show its traceback (as `--debug` does)."""

_OFFLINE_HINT = "Set HF_HUB_OFFLINE=1 to stay offline; every subcommand works on local files."
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Errors a user can fix (arguments, files, data, missing optional packages): one line, exit status 2.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ModuleNotFoundError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `prog: error: message (see prog --help)`, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the subcommand it sets `debug`, absent it leaves the top level's value alone.
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="Show the traceback of an error."
    )


def _usage_error(command: str, message: str) -> SystemExit:
    """A `SystemExit` that prints one line and exits with status 2 (argparse's convention)."""
    print(f"trl-perception {command}: error: {message}", file=sys.stderr)
    return SystemExit(2)


def _check_image_out(command: str, out: str) -> None:
    """`--out` must name an image file (a known extension, or none for PNG) in a folder that can exist."""
    if os.path.isdir(out):
        raise _usage_error(
            command, f"--out {out}: is a folder; give a file name, e.g. {os.path.join(out, 'preview.png')}"
        )
    suffix = os.path.splitext(out)[1].lower()
    if suffix and suffix not in _IMAGE_SUFFIXES:
        raise _usage_error(
            command,
            f"--out {out}: unknown image extension {suffix!r}; use one of {', '.join(_IMAGE_SUFFIXES)}",
        )
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise _usage_error(command, f"--out {out}: {parent} is a file, not a folder")


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
    p.add_argument(
        "--output-dir", default="demo-output", help="Where the report goes (default: demo-output)."
    )
    p.add_argument(
        "--max-steps", type=_positive_int, default=None, help="GRPO steps (default: the demo's setting)."
    )
    p.add_argument(
        "--eval-samples", type=_positive_int, default=None, help="Held-out images evaluated before and after."
    )
    p.add_argument(
        "--train-samples",
        type=_positive_int,
        default=None,
        help="Synthetic training images (default: the demo's).",
    )
    p.add_argument(
        "--max-completion-length",
        type=_positive_int,
        default=None,
        help="Longest answer, in tokens, in training and evaluation (default: the demo's). Small values make a "
        "quick smoke run.",
    )
    p.add_argument(
        "--checkpoint", default=None, help="Start from this checkpoint instead of the bundled one."
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of data, sampling and training.")
    p.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    _add_debug(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise _usage_error("demo", f"--output-dir {args.output_dir}: exists and is not a folder")
    if args.checkpoint is not None and not os.path.isdir(args.checkpoint):
        raise _usage_error("demo", f"--checkpoint {args.checkpoint}: no such checkpoint folder")
    try:  # before minutes of training, not after
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as err:
        raise _usage_error(
            "demo", f"--output-dir {args.output_dir}: cannot create it ({err.strerror})"
        ) from None

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


_RECIPE_COMMANDS = {
    # command: (script module, what it runs, its training config, an example override)
    "train": ("grpo", "GRPO", "PerceptionGRPOConfig", "--learning_rate 2e-6 --max_steps 10"),
    "sft": ("sft", "SFT", "PerceptionSFTConfig", "--learning_rate 1e-5 --max_steps 10"),
}


def _add_recipe_command(sub: argparse._SubParsersAction, command: str) -> None:
    script, method, config_class, example = _RECIPE_COMMANDS[command]
    arguments = "PerceptionScriptArguments" if script == "grpo" else "PerceptionSFTScriptArguments"
    p = sub.add_parser(
        command,
        help=f"Run the {method} script with a YAML config (same as `python trl_perception/scripts/{script}.py "
        "--config CONFIG`).",
        description=f"Run the {method} script, trl_perception/scripts/{script}.py (copy it to change a step). CONFIG "
        f"is a YAML (see recipes/); any key can be overridden on the command line, e.g. `trl-perception {command} "
        f"config.yaml {example}`. Every argument of {arguments}, {config_class} and trl.ModelConfig is accepted; "
        f"run `trl-perception {command} --help-args` to list them. For several GPUs: `accelerate launch "
        f"--config_file ACCELERATE_YAML -m trl_perception.scripts.{script} --config CONFIG`.",
    )
    p.add_argument("config", nargs="?", help="Recipe YAML file (or --config CONFIG, as the script takes it).")
    p.add_argument("--help-args", action="store_true", help="List every argument of the script and exit.")
    p.set_defaults(func=_run_recipe)


def _run_recipe(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from .scripts import grpo, sft

    command = args.command
    script = {"grpo": grpo, "sft": sft}[_RECIPE_COMMANDS[command][0]]
    parser = script.make_parser()
    if args.help_args:
        parser.print_help()
        return 0
    config = args.config
    if not config:
        raise SystemExit(f"trl-perception {command}: a recipe YAML is required (see recipes/)")
    if not os.path.isfile(config):
        raise SystemExit(
            f"trl-perception {command}: {config}: no such recipe file (usage: trl-perception {command} CONFIG "
            "[--key value ...])"
        )
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(["--config", config, *extra])
    except ValueError as err:  # the arguments' own checks (__post_init__), unknown YAML keys
        raise SystemExit(f"trl-perception {command}: {err}") from None
    summary = script.main(script_args, training_args, model_args)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _config_first(argv: Sequence[str], command: str = "train") -> list[str]:
    """Recipe-command arguments with `--config PATH` (as the script takes it) turned into the leading positional."""
    argv = list(argv)
    found = [i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config=")]
    if not found:
        return argv
    if len(found) > 1 or (argv and not argv[0].startswith("-") and found[0] != 0):
        raise SystemExit(f"trl-perception {command}: give the recipe YAML once (positionally or with --config)")
    i = found[0]
    if "=" in argv[i]:
        config, rest = argv[i].split("=", 1)[1], argv[:i] + argv[i + 1 :]
    elif i + 1 < len(argv):
        config, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
    else:
        raise SystemExit(f"trl-perception {command}: --config needs a recipe YAML")
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
    prev.add_argument("--task", required=True, choices=TASKS)
    prev.add_argument("--source", required=True, help="Data file or folder, or 'synthetic'.")
    prev.add_argument("--split", default=None, help="Split name where the source has several.")
    prev.add_argument("--image-dir", default=None, help="Image folder for sources that reference files.")
    prev.add_argument(
        "--box-format",
        default=None,
        choices=BOX_FORMATS,
        help="Model family: its prompt format, and images resized to its patch grid as training sees them.",
    )
    prev.add_argument(
        "--min-pixels", type=_positive_int, default=None, help="Smallest image area (with --box-format)."
    )
    prev.add_argument(
        "--max-pixels", type=_positive_int, default=None, help="Largest image area (with --box-format)."
    )
    prev.add_argument("--n", type=_positive_int, default=16, help="Rows to show (default 16).")
    prev.add_argument("--ncols", type=_positive_int, default=4, help="Grid columns (default 4).")
    prev.add_argument("--seed", type=int, default=0, help="Seed of the row sample.")
    prev.add_argument(
        "--out",
        default="preview.png",
        help="Output image (default preview.png; PNG when it has no extension).",
    )
    _add_debug(prev)
    prev.set_defaults(func=_run_preview)


def _run_preview(args: argparse.Namespace) -> int:
    from .data import build_dataset
    from .data.preview import render_preview

    command = "data preview"
    if args.source != "synthetic" and not os.path.exists(args.source):
        raise _usage_error(command, f"--source {args.source}: no such file or folder")
    if args.image_dir is not None and not os.path.isdir(args.image_dir):
        raise _usage_error(command, f"--image-dir {args.image_dir}: no such folder")
    if args.box_format is None and (args.min_pixels is not None or args.max_pixels is not None):
        raise _usage_error(
            command, "--min-pixels / --max-pixels resize to a model's grid: give --box-format too"
        )
    if args.min_pixels is not None and args.max_pixels is not None and args.min_pixels > args.max_pixels:
        raise _usage_error(
            command, f"--min-pixels ({args.min_pixels}) exceeds --max-pixels ({args.max_pixels})"
        )
    _check_image_out(command, args.out)

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
    _add_debug(p)
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
    _add_debug(p)
    p.set_defaults(func=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    if not os.path.isdir(args.folder):
        raise _usage_error("push", f"{args.folder}: no such model folder")
    owner, slash, name = args.repo_id.partition("/")
    if not slash or not owner or not name or "/" in name or any(c.isspace() for c in args.repo_id):
        raise _usage_error(
            "push", f"--repo-id {args.repo_id!r}: expected OWNER/NAME, e.g. me/qwen2-vl-2b-grounding"
        )

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
    parser = _Parser(
        prog="trl-perception",
        description="GRPO (and SFT) post-training of vision-language models on perception tasks (grounding, counting, OCR, "
        "detection), on top of TRL.",
    )
    parser.add_argument("--version", action="version", version=f"trl-perception {_version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"Show the traceback of an error (also {DEBUG_ENV}=1); before `train` and `sft`, after the others.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,train,sft,data,eval,push}")
    sub.required = True
    _add_demo(sub)
    _add_recipe_command(sub, "train")
    _add_recipe_command(sub, "sft")
    _add_data(sub)
    _add_eval(sub)
    _add_push(sub)
    return parser


def _version() -> str:
    # The installed distribution's version (the package root, which also holds it, is a layer above the CLI).
    try:
        return importlib.metadata.version("trl-perception")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trl-perception` console script: run one subcommand with `argv` (default: the
    command line) and return its exit status: 0 on success, 2 for a user error (one line on stderr), 1 for
    an unexpected one (one line, `--debug` for the traceback), 130 when interrupted.

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
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    while argv and argv[0] == "--debug":  # top-level flags before the subcommand
        debug, argv = True, argv[1:]
    parser = build_parser()
    command = argv[0] if argv and argv[0] in _RECIPE_COMMANDS else None
    try:
        if command is not None:  # `train`, `sft`: unknown options are the script's own, parsed by TrlParser
            args, extra = parser.parse_known_args([command, *_config_first(argv[1:], command)])
            return _run_recipe(args, extra)
        args = parser.parse_args(argv)
        debug = debug or getattr(args, "debug", False)
        command = " ".join(a for a in (args.command, getattr(args, "data_command", None)) if a)
        return args.func(args)
    except KeyboardInterrupt:
        print(f"trl-perception {command or ''}: interrupted".replace("  ", " "), file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the command line reports every error in one line
        if debug:
            traceback.print_exc()
        prefix = f"trl-perception {command}: error" if command else "trl-perception: error"
        if isinstance(err, _USER_ERRORS):
            print(f"{prefix}: {_one_line(err)}", file=sys.stderr)
            return 2
        hint = "" if debug else f" (rerun with --debug or {DEBUG_ENV}=1 for the traceback)"
        print(f"{prefix}: {type(err).__name__}: {_one_line(err)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

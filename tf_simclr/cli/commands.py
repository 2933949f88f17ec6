"""The helper commands: `tf_simclr <command> --flag=value ...`, absl flags like the trainer's.

    fashion_mnist  prepare TFDS fashion_mnist offline from Debian's files
    digits         write scikit-learn's digits as an image folder (a transfer target)
    export         export a checkpoint as a TF-Hub module
    convert        a google-research/simclr model (SavedModel or checkpoint) -> tf_simclr checkpoint and export
    visualize      views: a grid of augmented views; embedding: a 2-D map of features;
                   curve: redraw a run's learning curve

Each command owns its flags (its own `absl.flags.FlagValues`), so `--help` lists
only them and `--flagfile` works as everywhere.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from absl import flags


class Command:
    """A named command: how to define its flags and what to run with them."""

    def __init__(self, name: str, summary: str, define: Callable, run: Callable, positional: str | None = None):
        self.name, self.summary, self._define, self._run = name, summary, define, run
        self.positional = positional  # A flag that may also be given as the first bare word.

    def __call__(self, argv: Sequence[str]) -> int:
        values = flags.FlagValues()
        self._define(values)
        prog = f"tf_simclr {self.name}"
        argv = list(argv)
        if self.positional and argv and not argv[0].startswith("-"):
            argv = [f"--{self.positional}={argv[0]}", *argv[1:]]
        if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
            print(f"usage: {prog} [--flag=value ...]\n\n{self.summary}\n\n{values.get_help()}")
            return 0
        try:
            rest = values([prog, *argv])
        except flags.Error as e:
            print(f"{prog}: error: {e}\nPass --help for this command's flags.", file=sys.stderr)
            return 2
        if len(rest) > 1:
            print(f"{prog}: error: unexpected arguments {rest[1:]} (flags are written --name=value).", file=sys.stderr)
            return 2
        try:
            return self._run(values) or 0
        except (ValueError, FileNotFoundError) as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2


# ------------------------------------------------------------------ fashion_mnist
def _define_fashion_mnist(f):
    from tf_simclr.data import fashion_mnist

    flags.DEFINE_string("data_dir", None, "TFDS data folder (default: TFDS's).", flag_values=f)
    flags.DEFINE_string("source_dir", fashion_mnist.DEFAULT_SOURCE_DIR, "Folder of the idx .gz files.", flag_values=f)


def _run_fashion_mnist(f):
    from tf_simclr.data import fashion_mnist

    builder = fashion_mnist.prepare_fashion_mnist(f.data_dir, f.source_dir)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f"{fashion_mnist.DATASET_NAME} ready in {builder.data_dir}: {splits}")


# ------------------------------------------------------------------ digits
def _define_digits(f):
    from tf_simclr.data import digits

    flags.DEFINE_string("out", None, "Folder to write (replaced if it exists).", flag_values=f, required=False)
    flags.DEFINE_float("test_fraction", digits.TEST_FRACTION, "Share of each class held out as test.", flag_values=f)
    flags.DEFINE_integer("seed", digits.SPLIT_SEED, "Seed of the stratified split.", flag_values=f)


def _run_digits(f):
    from tf_simclr.data import digits

    if not f.out:
        raise ValueError("--out is required: the folder to write the digits to (e.g. --out=data/digits).")
    counts = digits.write_digits_folder(f.out, f.test_fraction, f.seed)
    print(f"Wrote {counts['train']} train and {counts['test']} test digits to {f.out} "
          f"(use --dataset=folder:{f.out} --train_split=train --eval_split=test)")


# ------------------------------------------------------------------ export
def _define_export(f):
    flags.DEFINE_string("checkpoint", None, "A ckpt-<step> folder or a model_dir (its newest checkpoint).", flag_values=f)
    flags.DEFINE_string("out", None, "Base folder (default: exported_models/<run name>).", flag_values=f)
    flags.DEFINE_integer("keep_max", 1, "Modules kept in the base folder (0 keeps all).", flag_values=f)


def _run_export(f):
    from tf_simclr.export import hub_module

    if not f.checkpoint:
        raise ValueError("--checkpoint is required: a ckpt-<step> folder or a model_dir.")
    print(hub_module.export_from_checkpoint(f.checkpoint, f.out, keep_max=f.keep_max))


# ------------------------------------------------------------------ convert
def _define_convert(f):
    flags.DEFINE_string("checkpoint", None, "A google-research/simclr model: a SavedModel folder (the official "
                        "models), or a model_dir / ckpt-N prefix written by its tf.train.CheckpointManager.",
                        flag_values=f)
    flags.DEFINE_string("model_dir", None, "A new or empty folder for the tf_simclr checkpoint (ckpt-<step>/).",
                        flag_values=f)
    flags.DEFINE_string("export_dir", None, "Base folder of the TF-Hub export (default: exported_models/<model_dir "
                        "name>); the module goes to <export_dir>/<step>/.", flag_values=f)
    flags.DEFINE_integer("image_size", None, "The model's training image size (its variables do not record it; "
                         "default 224, or 32 for the CIFAR stem).", flag_values=f)
    flags.DEFINE_integer("ft_proj_selector", None, "Projection layer feeding the supervised head (default: the one "
                         "the SavedModel's graph reads, else 0).", flag_values=f)
    flags.DEFINE_integer("keep_max", 1, "Modules kept in the export's base folder (0 keeps all).", flag_values=f)
    flags.DEFINE_bool("verify", False, "Compare the export's outputs with the reference SavedModel's on random "
                      "images (loads the SavedModel: slow for big models).", flag_values=f)


def _run_convert(f):
    from tf_simclr.reference import convert, files

    if not f.checkpoint or not f.model_dir:
        raise ValueError("--checkpoint (the reference model) and --model_dir (where the tf_simclr checkpoint goes) "
                         "are required.")
    located = files.locate(f.checkpoint)
    if f.verify and (located is None or not located.saved_model_dir):
        raise ValueError(f"--verify compares with a reference SavedModel; --checkpoint={f.checkpoint} is not one.")
    done = convert.convert(f.checkpoint, f.model_dir, export_dir=f.export_dir, image_size=f.image_size,
                           ft_proj_selector=f.ft_proj_selector, keep_max=f.keep_max)
    print(f"Converted {f.checkpoint}: {done.architecture.describe()}")
    print(f"Architecture flags: {done.architecture.flags()}")
    print(f"Checkpoint (--checkpoint / --model_dir): {done.checkpoint}")
    print(f"Export (TF-Hub module, encoder.keras): {done.export}")
    if not f.verify:
        return 0
    differences = convert.compare_with_saved_model(located.saved_model_dir, done.export, done.config.model.image_size)
    print("Largest difference to the reference's outputs, relative to their scale: "
          + " ".join(f"{k}={v:.1e}" for k, v in differences.items()))
    worst = max(differences.values())
    if worst > convert.EQUAL_OUTPUTS_TOLERANCE:
        print(f"tf_simclr convert: error: outputs differ by up to {worst:.1e} (more than "
              f"{convert.EQUAL_OUTPUTS_TOLERANCE:g}); the conversion is wrong for this model.", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------ visualize
def _define_visualize(f):
    flags.DEFINE_enum("what", "views", ["views", "embedding", "curve"],
                      "views: augmented views of --images; embedding: a 2-D map of --checkpoint's features on "
                      "--dataset beside the raw pixels'; curve: redraw <model_dir>/learning_curve.png.",
                      flag_values=f)
    flags.DEFINE_list("images", [], "views: image files (JPEG, PNG, ...).", flag_values=f)
    flags.DEFINE_string("out", None, "Output PNG path.", flag_values=f)
    flags.DEFINE_integer("image_size", 96, "views: cell size in pixels.", flag_values=f)
    flags.DEFINE_integer("num_views", 4, "views: augmented views per image.", flag_values=f)
    flags.DEFINE_float("color_jitter_strength", 1.0, "views: jitter strength.", flag_values=f)
    flags.DEFINE_float("min_crop_area", 0.08, "views: smallest crop, as a share of the image.", flag_values=f)
    flags.DEFINE_bool("blur", True, "views: include the random Gaussian blur.", flag_values=f)
    flags.DEFINE_integer("seed", None, "Random seed for a repeatable picture.", flag_values=f)
    flags.DEFINE_string("checkpoint", None, "embedding: a model_dir, ckpt-<step> folder or exported module.",
                        flag_values=f)
    flags.DEFINE_string("dataset", "fashion_mnist", "embedding: dataset whose eval split is drawn.", flag_values=f)
    flags.DEFINE_string("split", "test", "embedding: split to draw.", flag_values=f)
    flags.DEFINE_string("data_dir", None, "embedding: TFDS data folder.", flag_values=f)
    flags.DEFINE_integer("examples", 2000, "embedding: examples drawn.", flag_values=f)
    flags.DEFINE_enum("method", "tsne", ["tsne", "pca"], "embedding: t-SNE (scikit-learn) or PCA (fast).",
                      flag_values=f)
    flags.DEFINE_string("model_dir", None, "curve: the run whose learning_curve.json to draw.", flag_values=f)


def _run_visualize(f):
    from tf_simclr import visualize

    return visualize.run_command(f)


COMMANDS = {
    "fashion_mnist": Command("fashion_mnist", "Prepare the genuine TFDS fashion_mnist offline from Debian's "
                             "dataset-fashion-mnist files.", _define_fashion_mnist, _run_fashion_mnist),
    "digits": Command("digits", "Write scikit-learn's 8x8 digits as an image folder with a stratified 80/20 split.",
                      _define_digits, _run_digits),
    "export": Command("export", "Export a tf_simclr checkpoint as a TF-Hub module under <out>/<step>/.",
                      _define_export, _run_export),
    "convert": Command("convert", "Convert a google-research/simclr model (official SavedModel or its own "
                       "checkpoint) into a tf_simclr checkpoint and TF-Hub export.", _define_convert, _run_convert,
                       positional="checkpoint"),
    "visualize": Command("visualize", "Pictures: augmented views, a 2-D embedding of features, a learning curve.",
                         _define_visualize, _run_visualize, positional="what"),
}

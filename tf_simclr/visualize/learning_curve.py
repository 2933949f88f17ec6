"""A run's learning curve as a picture: `model_dir/learning_curve.png`, from `learning_curve.json` beside it.

Three panels, against the global step:

1. the training loss and accuracy (contrastive for pretraining, supervised for
   fine-tuning): the running means the run logs to TensorBoard;
2. the kNN monitor's top-1 accuracy (`--knn_monitor_examples`), with the same
   kNN on the raw pixels of the same images as a dashed line: the curve must
   climb above it;
3. the collapse monitor: the mean per-dimension standard deviation of the
   l2-normalized projections. A healthy, spread-out embedding sits near 1/sqrt(d)
   (dashed); a collapsed one (every image mapped to one point) falls to 0.

The JSON holds exactly what was logged; the PNG is redrawn from it at every
checkpoint and at the end (`tf_simclr visualize curve --model_dir=...` redraws it).
"""

from __future__ import annotations

import math
from typing import Optional

from tf_simclr.storage import atomic, fs
from tf_simclr.visualize import figures

CURVE_FILE = "learning_curve.json"
PLOT_FILE = "learning_curve.png"


def empty_curve() -> dict:
    """The JSON's layout: `train` rows of logged scalars, `knn` rows, and the reference lines."""
    return {"train": [], "knn": [], "raw_pixel_knn": None, "embedding_dim": None}


def read_curve(model_dir: str) -> dict:
    return atomic.read_json(fs.join(model_dir, CURVE_FILE))


def write_curve(model_dir: str, curve: dict, *, plot: bool = True) -> str:
    """Writes `learning_curve.json` and (by default) redraws `learning_curve.png`; returns the PNG's path."""
    atomic.write_json(fs.join(model_dir, CURVE_FILE), curve)
    path = fs.join(model_dir, PLOT_FILE)
    if plot:
        atomic.write_bytes(path, render(curve))
    return path


def _series(rows: list, key: str) -> tuple[list, list]:
    pairs = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def render(curve: dict, title: Optional[str] = None) -> bytes:
    """The PNG bytes of the three-panel figure (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    train = curve.get("train") or []
    # The training objective's loss and accuracy: contrastive, distillation (agreement with the teacher), supervised.
    kinds = [("contrast_loss", "contrast_acc", "contrastive"), ("distill_loss", "teacher_agreement", "distillation"),
             ("sup_loss", "sup_acc", "supervised")]
    loss_key, acc_key, kind = next((k for k in kinds if any(k[0] in r for r in train)), kinds[-1])
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.6))

    ax = axes[0]
    steps, values = _series(train, loss_key)
    ax.plot(steps, values, color="tab:blue", label=loss_key.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel(loss_key.replace("_", " "), color="tab:blue")
    twin = ax.twinx()
    steps, values = _series(train, acc_key)
    twin.plot(steps, values, color="tab:orange", label=acc_key.replace("_", " "))
    twin.set_ylabel(acc_key.replace("_", " "), color="tab:orange")
    ax.set_title(f"training ({kind})")

    ax = axes[1]
    steps, values = _series(curve.get("knn") or [], "knn_top_1")
    if steps:
        ax.plot(steps, [100 * v for v in values], "o-", color="tab:green", label="encoder")
    raw = curve.get("raw_pixel_knn")
    if raw is not None:
        ax.axhline(100 * raw, color="gray", linestyle="--", label=f"raw pixels ({100 * raw:.1f}%)")
    ax.set_xlabel("step")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title("kNN monitor" if steps else "kNN monitor (off: --knn_monitor_examples)")
    if steps or raw is not None:
        ax.legend(loc="lower right", fontsize=8)

    ax = axes[2]
    steps, values = _series(train, "embedding_std")
    if steps:
        ax.plot(steps, values, color="tab:purple", label="std of normalized projections")
    dim = curve.get("embedding_dim")
    if dim:
        ax.axhline(1 / math.sqrt(dim), color="gray", linestyle="--", label=f"1/sqrt(d), d={dim}")
    top = max(values + ([1 / math.sqrt(dim)] if dim else []), default=1.0)
    ax.set_ylim(0, 1.3 * top)
    ax.set_xlabel("step")
    ax.set_title("collapse monitor")
    if steps or dim:
        ax.legend(loc="lower right", fontsize=8)

    return figures.png_bytes(fig, title, dpi=90)

"""A 2-D map of an encoder's features on labelled images, beside the same map of their raw pixels.

    tf_simclr visualize embedding --checkpoint=runs/quickstart --dataset=fashion_mnist --out=emb.png

Each point is one test image, coloured and labelled by its class. Features are
`final_avg_pool` in inference mode; the map is t-SNE (scikit-learn) or, with
`--method=pca`, the first two principal components (seconds instead of a
minute). Classes that form separate islands on the left and a mush on the right
are what pretraining bought.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from tf_simclr.storage import atomic
from tf_simclr.visualize import figures

log = logging.getLogger("tf_simclr")

METHODS = ("tsne", "pca")


def project_2d(features: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """`[N, 2]` coordinates of standardized features: t-SNE, or the top-2 principal components."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Received: method={method!r}")
    x = np.asarray(features, np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 1e-12, x.std(0), 1.0)
    if method == "pca":
        _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
        return (x @ vt[:2].T).astype(np.float32)
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    reduced = PCA(n_components=min(50, x.shape[1], x.shape[0]), random_state=seed).fit_transform(x)
    return TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed).fit_transform(
        reduced).astype(np.float32)


def render(panels: list[tuple[str, np.ndarray]], labels: np.ndarray, class_names=(), title: Optional[str] = None) -> bytes:
    """PNG bytes: one scatter per `(title, [N, 2] points)` panel, points coloured by class, class names at centroids."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = np.unique(labels)
    colors = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 6))
    axes = np.atleast_1d(axes)
    for ax, (name, points) in zip(axes, panels):
        for i, c in enumerate(classes):
            chosen = labels == c
            label = class_names[c] if len(class_names) > c else str(c)
            ax.scatter(points[chosen, 0], points[chosen, 1], s=4, color=colors(i % colors.N), label=label, alpha=0.7)
            cx, cy = np.median(points[chosen], axis=0)
            ax.annotate(label, (cx, cy), fontsize=9, weight="bold", ha="center",
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.7, lw=0))
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=4, fontsize=8, frameon=False)
    return figures.png_bytes(fig, title, dpi=80)


def load_features_model(path: str):
    """`(model, image_size)` for a model_dir, a `ckpt-<step>` folder or an exported module."""
    from tf_simclr.export import exports_dir
    from tf_simclr.storage import checkpoint as ckpt_lib

    if not ckpt_lib.checkpoint_steps(path) and not ckpt_lib.is_checkpoint(path) and exports_dir.is_export(path):
        from tf_simclr.export import load

        meta = exports_dir.read_export_meta(path)
        return load.load_encoder(path), int(meta["input"]["image_size"])
    from tf_simclr.export import hub_module

    model, meta = hub_module.model_from_checkpoint(path)
    return model, int(meta["config"]["model"]["image_size"])


def embedding_figure(path: str, out: str, *, dataset: str = "fashion_mnist", split: str = "test",
                     data_dir: Optional[str] = None, examples: int = 2000, method: str = "tsne", seed: int = 0) -> str:
    """Writes the two-panel PNG (encoder features | raw pixels) for `examples` images of a split; returns `out`."""
    from tf_simclr.data import sources
    from tf_simclr.evaluation.features import extract_features, raw_pixels

    model, image_size = load_features_model(path)
    source = sources.load_source(dataset, data_dir, splits=[split])
    if not source.num_classes:
        raise ValueError(f"{source.name} has no labels to colour the map by; pick a labelled dataset.")
    batches = -(-int(examples) // 250)
    ds = sources.eval_batches(source, split, image_size, 250)
    features, labels = extract_features(model, ds, max_batches=batches)
    pixels, _ = extract_features(raw_pixels, ds, max_batches=batches)
    features, pixels, labels = features[:examples], pixels[:examples], labels[:examples]
    log.info("Projecting %d examples (%s)", len(labels), method)
    panels = [(f"encoder features ({features.shape[1]}-d)", project_2d(features, method, seed)),
              (f"raw pixels ({pixels.shape[1]}-d)", project_2d(pixels, method, seed))]
    title = f"{method.upper() if method == 'pca' else 't-SNE'} of {len(labels)} {source.name} {split} images: {path}"
    return atomic.write_bytes(out, render(panels, labels, tuple(getattr(source, "class_names", ())), title))

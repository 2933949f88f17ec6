"""Pictures where a person would rather look than read.

    learning_curve  model_dir/learning_curve.png: loss, kNN vs raw pixels, collapse monitor
    embedding       a 2-D map of an encoder's features beside the raw pixels'
    (augment.grid   a grid of augmented views)

    tf_simclr visualize views --images=a.jpg,b.png --out=views.png
    tf_simclr visualize embedding --checkpoint=runs/quickstart --dataset=fashion_mnist --out=emb.png
    tf_simclr visualize curve --model_dir=runs/quickstart
"""

from __future__ import annotations


def run_command(f) -> int:
    """`tf_simclr visualize <what>` with parsed flags `f` (see `cli.commands`)."""
    if f.what == "views":
        from tf_simclr.augment import grid
        from tf_simclr.augment.spec import AugmentSpec

        if not f.images:
            raise ValueError("visualize views needs --images=a.jpg,b.png (image files to augment).")
        spec = AugmentSpec(f.image_size, color_jitter_strength=f.color_jitter_strength, blur=f.blur,
                           min_crop_area=f.min_crop_area)
        out = f.out or "augmentations.png"
        grid.save_augmentation_grid([grid.load_image(p) for p in f.images], out, spec, num_views=f.num_views,
                                    seed=f.seed)
        print(f"Wrote {out}: {len(f.images)} images x {f.num_views} views.")
    elif f.what == "embedding":
        from tf_simclr.visualize import embedding

        if not f.checkpoint:
            raise ValueError("visualize embedding needs --checkpoint=<model_dir, ckpt-<step> folder or export>.")
        out = embedding.embedding_figure(f.checkpoint, f.out or "embedding.png", dataset=f.dataset, split=f.split,
                                         data_dir=f.data_dir, examples=f.examples, method=f.method, seed=f.seed or 0)
        print(f"Wrote {out}")
    else:
        from tf_simclr.visualize import learning_curve

        if not f.model_dir:
            raise ValueError("visualize curve needs --model_dir=<a training run's folder>.")
        curve = learning_curve.read_curve(f.model_dir)
        out = learning_curve.write_curve(f.model_dir, curve)
        if f.out:
            from tf_simclr.storage import atomic

            out = atomic.write_bytes(f.out, learning_curve.render(curve))
        print(f"Wrote {out}")
    return 0

"""Keras callbacks that give a run its bookkeeping: checkpoints, stopping, summaries.

They count steps with `optimizer.iterations`, the true global step, so curves and
checkpoints stay aligned when a run resumes (Keras's own TensorBoard callback
restarts its batch counter at every `fit`).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import keras
import numpy as np

from tf_simclr.storage import checkpoint as ckpt_lib

log = logging.getLogger("tf_simclr")


def _global_step(model) -> int:
    return int(np.asarray(model.optimizer.iterations))


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stopped without saving the bad weights."""

    def __init__(self, step: int, last_checkpoint: Optional[str], hint: str = ""):
        self.step = step
        self.last_checkpoint = last_checkpoint
        super().__init__(
            f"The loss became NaN/Inf at step {step} (or in the {hint or 'steps'} before it); the run stopped "
            f"and kept its last good checkpoint ({last_checkpoint or 'none written yet'}). Likely causes: a "
            "learning rate too high for this batch size (lower --learning_rate or raise --warmup_epochs), "
            "float16 overflow (use --precision=bfloat16 or float32), or a corrupt input batch. "
            "--skip_nonfinite_steps skips such steps instead of stopping."
        )


def _finite(logs) -> bool:
    if not logs:
        return True
    return all(np.all(np.isfinite(np.asarray(logs[k], dtype=np.float64))) for k in ("total_loss", "loss") if k in logs)


class _CountsSteps(keras.callbacks.Callback):
    """Knows the global step at every batch without reading the model.

    Under JAX, `self.model` in a callback during `fit` writes every variable back to
    the model first (Keras's state sync: 0.79 ms a step for ResNet-18 on 2 CPU cores,
    `benchmarks/callback_overhead.py`), so the batch callbacks read the step once per
    epoch, where fit has synced the state anyway, and count from there.
    """

    _epoch_start_step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start_step = _global_step(self.model)

    def step_after(self, batch: int) -> int:
        """The global step once batch `batch` of this epoch (numbered from 0, as fit numbers them) is done."""
        return self._epoch_start_step + int(batch) + 1


class CheckpointAndStop(_CountsSteps):
    """Saves a checkpoint every `every_steps` global steps and stops at `total_steps`.

    Also the run's safety stops: a non-finite loss stops it without saving (the
    last good checkpoint stays the newest), and a SIGTERM (see `preemption`) makes
    it save at the end of the current step and stop.

    Args:
        model_dir: Where checkpoints go.
        every_steps: Steps between checkpoints.
        total_steps: The run ends here (the last checkpoint is written then).
        keep_checkpoint_max: Checkpoints kept on disk.
        meta: Extra JSON written into each checkpoint (config, dataset, ...).
        on_save: Called with (path, step) after each checkpoint (exports hook in here).
        write: Whether this process writes files (False on non-chief workers, which
            still stop where the chief stops).
        sigterm: A `preemption.SigtermFlag` to watch, or None.
        background: Write the files in a background thread (`storage.checkpoint.CheckpointWriter`):
            the step waits only for the copy of the values. `flush()` waits for the files; the end of
            training (the last checkpoint, the SIGTERM one) and `on_save` do so themselves.
    """

    def __init__(self, model_dir: str, every_steps: int, total_steps: int, keep_checkpoint_max: int = 5,
                 meta: Optional[dict] = None, on_save: Optional[Callable] = None, write: bool = True, sigterm=None,
                 background: bool = True):
        super().__init__()
        self.model_dir = model_dir
        self.every_steps = max(1, int(every_steps))
        self.total_steps = int(total_steps)
        self.keep_checkpoint_max = keep_checkpoint_max
        self.meta = meta or {}
        self.on_save = on_save
        self.write = write
        self.sigterm = sigterm
        self.writer = ckpt_lib.CheckpointWriter() if background else None
        self._last_saved = None
        self.last_path: Optional[str] = None
        self.nonfinite_step: Optional[int] = None
        self.preempted_step: Optional[int] = None

    def on_train_begin(self, logs=None):
        self._last_saved = _global_step(self.model)
        self.last_path = ckpt_lib.latest_checkpoint(self.model_dir)
        if self._last_saved >= self.total_steps:
            self.model.stop_training = True

    def save(self, step: int) -> Optional[str]:
        self._last_saved = step
        if not self.write:
            return None
        path = ckpt_lib.save_checkpoint(self.model_dir, step, self.model, self.model.optimizer, meta=self.meta,
                                        max_to_keep=self.keep_checkpoint_max, writer=self.writer)
        self.last_path = path
        if self.writer is None:
            log.info("Saved checkpoint %s", path)
        if self.on_save is not None:
            self.flush()  # The hook reads the checkpoint (a JAX run's export does, from disk).
            self.on_save(path, step)
        return path

    def flush(self, raise_errors: bool = True) -> None:
        """Waits until every checkpoint saved so far is committed.

        Raises:
            storage.checkpoint.CheckpointWriteError: a background write failed (only logged with
                `raise_errors=False`, for a run already failing with another error).
        """
        if self.writer is None:
            return
        try:
            self.writer.flush()
        except ckpt_lib.CheckpointWriteError as e:
            if raise_errors:
                raise
            log.error("%s", e)

    def on_train_batch_end(self, batch, logs=None):
        step = self.step_after(batch)
        if not _finite(logs):
            self.nonfinite_step = step
            self.model.stop_training = True
            return
        if self.sigterm is not None and self.sigterm.requested:
            if step != self._last_saved:
                self.save(step)
            self.preempted_step = step
            self.model.stop_training = True
            return
        if step // self.every_steps > self._last_saved // self.every_steps or step >= self.total_steps:
            if step != self._last_saved:
                self.save(step)
        if step >= self.total_steps:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        step = _global_step(self.model)
        if self.nonfinite_step is None and step != self._last_saved:
            self.save(step)
        self.flush()  # The last checkpoint (or the SIGTERM one) is on disk before the run reports or exits.


class Summaries(_CountsSteps):
    """Writes TensorBoard scalars every `every_steps` and a grid of augmented views once.

    Without TensorFlow (a JAX-only machine) there is no TensorBoard writer; the
    rows still go to the learning curve.

    Args:
        log_dir: Summary folder (TensorBoard `--logdir`).
        every_steps: Steps between scalar summaries.
        sample_images: Optional `[N, H, W, 3*k]` batch of augmented views (float in
            [0, 1]) written as images at the start, so users see what the model sees.
    """

    def __init__(self, log_dir: str, every_steps: int, sample_images=None, prefix: str = "train",
                 curve: Optional[dict] = None):
        super().__init__()
        from tf_simclr.distribute import jax_parallel

        self._tf, self.writer = None, None
        if jax_parallel.has_tensorflow():
            import tensorflow as tf  # TensorBoard writing is TensorFlow glue.

            self._tf, self.writer = tf, tf.summary.create_file_writer(log_dir)
        self.every_steps = max(1, int(every_steps))
        self.sample_images = sample_images
        self.prefix = prefix
        self.curve = curve  # A learning curve (`visualize.learning_curve`) the written rows go to as well.
        self._last_written = -1
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = (time.time(), _global_step(self.model))
        if self.sample_images is not None and self.writer is not None:
            images = np.asarray(self.sample_images)
            views = np.concatenate(np.split(images, images.shape[-1] // 3, axis=-1), axis=2)  # side by side
            with self.writer.as_default():
                self._tf.summary.image(f"{self.prefix}/augmented_views", views, step=_global_step(self.model), max_outputs=8)
            self.writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        step = self.step_after(batch)
        if logs and step // self.every_steps > self._last_written // self.every_steps:
            self.write(step, logs)

    def write(self, step, logs):
        row = {name: float(np.asarray(value).reshape(-1)[0]) for name, value in logs.items()}
        if self.writer is not None:
            with self.writer.as_default():
                for name, value in row.items():
                    self._tf.summary.scalar(f"{self.prefix}/{name}", value, step=step)
                t0, s0 = self._start
                if time.time() > t0 and step > s0:
                    self._tf.summary.scalar(f"{self.prefix}/steps_per_second", (step - s0) / (time.time() - t0),
                                            step=step)
            self.writer.flush()
        self._last_written = step
        if self.curve is not None:
            self.curve["train"].append({"step": int(step), **row})

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.flush()


class KnnMonitor(keras.callbacks.Callback):
    """Weighted kNN accuracy of the frozen encoder at the end of every fit epoch (checkpoint period).

    A cheap learning curve for pretraining (the reference evaluates only at the
    end): features of a labelled train subset fill the memory bank, a test subset
    is classified with InstDisc's weighted cosine kNN (k=200, T=0.1).

    Args:
        train_dataset, test_dataset: Batched `(images, labels)` eval-mode datasets (finite).
        num_classes: Number of classes.
        log_dir: Optional TensorBoard folder for the `knn_top_1` curve.
        curve: A learning curve (`visualize.learning_curve`) to record into: each
            score, and once, the same kNN on the images' raw pixels (the line the
            encoder must beat).
    """

    def __init__(self, train_dataset, test_dataset, num_classes: int, log_dir: Optional[str] = None,
                 curve: Optional[dict] = None):
        super().__init__()
        self.train_dataset = train_dataset
        self.test_dataset = test_dataset
        self.num_classes = num_classes
        self.log_dir = log_dir
        self.curve = curve
        self.history: list[tuple[int, float]] = []

    def _score(self, encoder) -> tuple[float, int, int]:
        from tf_simclr.evaluation import features as features_lib
        from tf_simclr.evaluation import knn

        x_train, y_train = features_lib.extract_features(encoder, self.train_dataset, log_every=10**9)
        x_test, y_test = features_lib.extract_features(encoder, self.test_dataset, log_every=10**9)
        keep_train, keep_test = y_train >= 0, y_test >= 0
        accuracy = knn.knn_accuracy(
            x_train[keep_train], y_train[keep_train], x_test[keep_test], y_test[keep_test], num_classes=self.num_classes
        )
        return accuracy, int(keep_train.sum()), int(keep_test.sum())

    def on_train_begin(self, logs=None):
        if self.curve is not None and self.curve.get("raw_pixel_knn") is None:
            from tf_simclr.evaluation.features import raw_pixels

            self.curve["raw_pixel_knn"], _, _ = self._score(raw_pixels)
            log.info("kNN monitor on the raw pixels of the same images: top-1 %.4f", self.curve["raw_pixel_knn"])

    def on_epoch_end(self, epoch, logs=None):
        accuracy, num_train, num_test = self._score(self.model)
        step = _global_step(self.model)
        self.history.append((step, accuracy))
        if self.curve is not None:
            self.curve["knn"].append({"step": int(step), "knn_top_1": float(accuracy)})
        log.info("kNN monitor at step %d: top-1 %.4f (%d train / %d test examples)", step, accuracy, num_train, num_test)
        if logs is not None:
            logs["knn_top_1"] = accuracy
        from tf_simclr.distribute import jax_parallel

        if self.log_dir and jax_parallel.has_tensorflow():
            import tensorflow as tf

            writer = tf.summary.create_file_writer(self.log_dir)
            with writer.as_default():
                tf.summary.scalar("eval/knn_top_1", accuracy, step=step)
            writer.flush()


class LearningCurve(keras.callbacks.Callback):
    """Writes `learning_curve.json` and `.png` (`visualize.learning_curve`) at every checkpoint and at the end.

    The rows come from `Summaries` and `KnnMonitor`, which record into the same
    `curve`; this callback runs after them. A resumed run keeps the rows of the
    steps it resumes from.
    """

    def __init__(self, model_dir: str, curve: dict):
        super().__init__()
        self.model_dir = model_dir
        self.curve = curve

    def on_train_begin(self, logs=None):
        step = _global_step(self.model)
        for key in ("train", "knn"):
            self.curve[key] = [row for row in self.curve[key] if row["step"] <= step]
        head = self.model.projection_head
        dims = [layer.units for layer in head.dense_layers]
        self.curve["embedding_dim"] = int(dims[-1]) if dims else None

    def on_epoch_end(self, epoch, logs=None):
        self.write()

    def on_train_end(self, logs=None):
        self.write()

    def write(self) -> None:
        from tf_simclr.visualize import learning_curve

        try:
            learning_curve.write_curve(self.model_dir, self.curve)
        except ImportError as e:  # matplotlib missing: keep the JSON, say why there is no picture.
            learning_curve.write_curve(self.model_dir, self.curve, plot=False)
            log.warning("learning_curve.png not drawn (%s); learning_curve.json has the data.", e)


def run_reports(config, source, plan) -> list:
    """The chief's reporting callbacks of a training run: summaries, the kNN curve when asked for, the plot."""
    from tf_simclr.storage import fs
    from tf_simclr.visualize import learning_curve

    model_dir = config.train.model_dir
    curve = learning_curve.empty_curve()
    if fs.exists(fs.join(model_dir, learning_curve.CURVE_FILE)):  # Resuming: continue the same curve.
        curve.update(learning_curve.read_curve(model_dir))
    reports = [Summaries(fs.join(model_dir, "train"), plan.summary_every, _sample_views(config, source), curve=curve)]
    n = config.train.knn_monitor_examples
    if n and source.num_classes:
        from tf_simclr.data import arrays, sources, subsets

        d = config.data
        full = source.source if isinstance(source, (subsets.SubsetSource, subsets.MaskedLabelSource)) else source  # The whole splits.

        def subset(split):
            batches = sources.eval_batches(full, split, config.model.image_size, batch_size=250)
            if arrays.is_array_source(full):
                return batches.take_labelled(n)
            return batches.unbatch().filter(lambda image, label: label >= 0).take(n).batch(250).cache()

        reports.append(KnnMonitor(subset(d.train_split), subset(d.eval_split), source.num_classes,
                                  log_dir=fs.join(model_dir, "eval"), curve=curve))
    reports.append(LearningCurve(model_dir, curve))
    return reports


def _sample_views(config, source):
    """A few augmented training examples for the image summary (pretraining only)."""
    from tf_simclr.distribute import jax_parallel

    if config.train.train_mode != "pretrain" or not jax_parallel.has_tensorflow():
        return None  # Without TensorFlow there is no TensorBoard to show them in.
    from tf_simclr.augment.spec import spec_from_config
    from tf_simclr.data import pipeline

    views = pipeline.Views("pretrain", spec_from_config(config.data, config.model.image_size))
    ds = pipeline.build_dataset(source, config.data.train_split, views, 4, shuffle_buffer=16)
    images, _ = next(iter(ds))
    return images.numpy()

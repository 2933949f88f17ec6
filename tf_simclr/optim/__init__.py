"""Optimization: LARS, optimizers by name, learning-rate schedules, weight decay, mixed precision.

    lars          the LARS optimizer (You et al. 2017), as SimCLR uses it
    optimizers    --optimizer names -> optimizers (register_optimizer adds one)
    schedules     learning-rate scaling with the batch, warmup + cosine decay, step counts
    plan          a run's steps, warmup, checkpoint period and peak learning rate, derived once
    weight_decay  which variables decay, and whether the optimizer or the loss does it
    precision     --precision -> Keras dtype policy, float16 loss scaling

Backend-neutral: keras and keras.ops only.
"""

from tf_simclr.optim.lars import LARS
from tf_simclr.optim.optimizers import OPTIMIZERS, build_optimizer, register_optimizer, uses_optimizer_weight_decay
from tf_simclr.optim.schedules import WarmUpAndCosineDecay, scale_learning_rate

__all__ = ["LARS", "OPTIMIZERS", "build_optimizer", "register_optimizer", "uses_optimizer_weight_decay",
           "WarmUpAndCosineDecay", "scale_learning_rate"]

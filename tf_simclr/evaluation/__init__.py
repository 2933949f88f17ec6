"""Scoring encoders: frozen-feature probes, the supervised head, and the eval loop.

    features      extract features of a dataset in inference mode (and raw pixels)
    knn           weighted kNN (InstDisc's protocol)
    linear_probe  logistic regression on standardized features
    report        the frozen-feature report: pretrained vs random init vs raw pixels
    supervised    the supervised head's accuracy at a checkpoint (result.json)
    eval_loop     follow a model_dir and score every checkpoint (--mode=eval)
    trained       a run's model with a checkpoint loaded
"""

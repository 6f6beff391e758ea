"""Result rows for the report's tests: written by hand (exact numbers) or from tiny real trials."""
from __future__ import annotations

import json
import math

import torch

KS = (5, 10, 20, 50)
METRICS = ("recall", "ndcg", "precision", "map", "hit")


def row(dataset="toy", model="FREEDOM", condition="baseline", fill="none", phase="retrain", seed=0,
        status="finished", value=0.1, encoders=None, hparams=None, reason="", modalities=("image", "text"),
        scores_read_features=True):
    """One result row; every test metric is `value` scaled by a fixed factor per metric, valid = test."""
    out = {"key": f"{dataset}-{model}-{condition}-{fill}-{phase}-{seed}-{json.dumps(encoders or {})}",
           "dataset": dataset, "model": model, "condition": condition, "fill": fill, "phase": phase, "seed": seed,
           "encoders": json.dumps(encoders or {"image": "default", "text": "default"}, sort_keys=True),
           "hparams": json.dumps(hparams or {}), "modalities": json.dumps(list(modalities)),
           "scores_read_features": scores_read_features, "status": status, "reason": reason, "best_epoch": 3,
           "epochs": 5, "seconds_per_epoch": 0.1, "finished_at": f"2025-01-01T00:00:{seed:02d}Z",
           "curve": json.dumps([{"epoch": e, "loss": 1.0 / (e + 1), "valid_recall@20": value * e / 4}
                                for e in range(5)])}
    for split in ("valid", "test"):
        for i, metric in enumerate(METRICS):
            for k in KS:
                out[f"{split}_{metric}@{k}"] = (value * (1 + i) * k / 20) if status == "finished" else math.nan
    return out


def run_grid(dataset, models, conditions, seeds, fill="noise", epochs=12):
    """Real trials on `dataset`, one row each (few epochs, one thread so parallel tests do not fight)."""
    from ablate.train import TrainConfig
    from ablate.trial import TrialConfig, run_trial

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for model in models:
            for seed in seeds:
                for condition in conditions:
                    config = TrialConfig(model=model, condition=condition, fill=fill, seed=seed,
                                         train=TrainConfig(epochs=epochs, patience=3, eval_every=3, batch_size=256,
                                                           lr=0.01))
                    rows.append(run_trial(dataset, config))
    finally:
        torch.set_num_threads(threads)
    return rows

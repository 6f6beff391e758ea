"""The one training loop every model uses: BPR sampling, Adam, periodic full-ranking evaluation, early stop.

Protocol (MMRec's): each epoch pairs every training interaction (u, i+) with one item i- drawn uniformly
from the items u has not interacted with in training, shuffles, and takes Adam steps on batches; the learning
rate after epoch e is ``lr * gamma ** (e / every)`` with ``lr_decay = (gamma, every)`` (MMRec's
``learning_rate_scheduler``; constant without one); every ``eval_every`` epochs the model ranks all items for
the validation users; training stops when the count of evaluations without improvement of ``valid_metric``
exceeds ``patience`` (MMRec's ``cur_step > stopping_step``), and the reported test metrics are those of the best
validation epoch, computed on its restored state (parameters, buffers and the model's extra state, such as a
per-epoch sampled graph). Every evaluation runs under its own fixed random seed, outside the training random
stream, so a model that draws at evaluation (LGMRec's Gumbel noise) scores the same state the same way.
A non-finite loss, or scores that are non-finite or all equal, end the run with status ``collapsed`` and the
reason: a collapse is never reported as a score.

Checkpoints: with ``checkpoint_every = K``, every K-th evaluation that does not end training hands
``on_checkpoint`` the whole training state (`training_state`: model, optimizer, learning-rate schedule, best
weights, early-stopping counter, result so far with its curve, and every random generator's state).
``fit(..., resume=state)`` continues from it; on CPU the resumed run ends with exactly the metrics of the
uninterrupted one.
"""
from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from . import options
from .graphs import InteractionGraph
from .metrics import DEFAULT_KS, RankingEvaluator, popularity_scores
from .models import Recommender

FINISHED, COLLAPSED = "finished", "collapsed"


@dataclass
class TrainConfig:
    epochs: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    lr_decay: tuple[float, int] | None = None  # (gamma, every): lr * gamma ** (epoch / every); None: constant
    weight_decay: float = 0.0
    eval_every: int = 1
    patience: int = 20  # stop when more evaluations than this pass without improvement of valid_metric
    valid_metric: str = "recall@20"
    ks: tuple[int, ...] = DEFAULT_KS
    eval_chunk: int = 4096
    mask_valid_at_test: bool = False  # MMRec masks training items only
    profile: bool = False  # synchronise the device around each phase for exact timings (slower on GPU)

    def __post_init__(self):
        """Every field checked and normalised: an `OptionError` names the first wrong one."""
        for name in ("epochs", "batch_size", "eval_every", "patience", "eval_chunk"):
            setattr(self, name, options.integer(name, getattr(self, name), 1))
        self.lr = options.number("lr", self.lr, 0.0, above=True)
        self.weight_decay = options.number("weight_decay", self.weight_decay, 0.0)
        for name in ("mask_valid_at_test", "profile"):
            options.flag(name, getattr(self, name))
        if not isinstance(self.ks, (list, tuple)) or not self.ks or not all(options.is_int(k) and k >= 1
                                                                          for k in self.ks):
            raise options.OptionError("ks", "a non-empty list of integers >= 1 (cut-offs K of the metrics)", self.ks)
        self.ks = tuple(int(k) for k in self.ks)
        if self.lr_decay is not None:
            if (not isinstance(self.lr_decay, (list, tuple)) or len(self.lr_decay) != 2
                    or not options.is_number(self.lr_decay[0]) or not 0 < self.lr_decay[0] <= 1
                    or not options.is_int(self.lr_decay[1]) or self.lr_decay[1] < 1):
                raise options.OptionError("lr_decay", "(gamma in (0, 1], every >= 1 epochs) or none", self.lr_decay)
            self.lr_decay = (float(self.lr_decay[0]), int(self.lr_decay[1]))
        metric, _, k = self.valid_metric.partition("@") if isinstance(self.valid_metric, str) else ("", "", "")
        if metric not in ("recall", "ndcg", "precision", "map", "hit") or not k.isdigit() or int(k) not in self.ks:
            raise options.OptionError("valid_metric", f"<recall|ndcg|precision|map|hit>@K with K in {self.ks}",
                                      self.valid_metric)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """From a mapping of field names (a grid spec's `train`), unknown names an `OptionError` too."""
        known = [f.name for f in fields(cls)]
        if not isinstance(values, dict):
            raise options.OptionError("train", "a mapping of training options", values)
        for name in values:
            if name not in known:
                raise options.OptionError(str(name), f"a training option, one of {known}", name)
        return cls(**values)


    def with_model_hparams(self, hparams: dict) -> "TrainConfig":
        """This config with a model's trainer hyper-parameters applied (``learning_rate``, ``lr_decay``)."""
        changes = {}
        if "learning_rate" in hparams:
            changes["lr"] = float(hparams["learning_rate"])
        if "lr_decay" in hparams:
            changes["lr_decay"] = hparams["lr_decay"]
        return replace(self, **changes) if changes else self


@dataclass
class FitResult:
    status: str = FINISHED
    reason: str = ""
    best_epoch: int = -1
    epochs: int = 0
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)  # sample, forward, backward, step, epoch_start
    curve: list[dict] = field(default_factory=list)  # one entry per evaluation

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds / max(1, self.epochs)


class NegativeSampler:
    """Uniform negatives outside each user's training items, vectorised (resampling only the rejected)."""

    def __init__(self, graph: InteractionGraph):
        self.n_items = graph.n_items
        self.keys = torch.sort(graph.users * graph.n_items + graph.items).values

    def is_positive(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users * self.n_items + items
        pos = torch.searchsorted(self.keys, keys).clamp_max(self.keys.numel() - 1)
        return self.keys[pos] == keys

    def sample(self, users: Tensor) -> Tensor:
        neg = torch.randint(self.n_items, users.shape, device=users.device)
        bad = self.is_positive(users, neg)
        while bad.any():
            neg[bad] = torch.randint(self.n_items, (int(bad.sum()),), device=users.device)
            bad[bad.clone()] = self.is_positive(users[bad], neg[bad])
        return neg


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch; on CPU also pick deterministic kernels (multi-threaded index accumulation otherwise sums
    in a varying order, and Adam turns those last-bit differences of near-zero gradients into visible ones).

    Deterministic mode would also fill every new uninitialised tensor with NaN (a debugging aid against
    kernels that read memory they did not write): one extra pass over each allocation, embedding-table and
    feature-table gradients included (VBPR on Amazon Baby: about 4% of its CPU epoch). No kernel used here
    reads unwritten memory (the fixed-seed rows would show it), so the fill is turned off."""
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False


# The environment of a process whose training runs in a thread (a Ray worker: a Tune trial runs in a thread of
# it; `ablate.tune.start_ray` sets it in every worker unless the driver's environment sets it otherwise).
# glibc gives a thread an arena of its own whose heaps hold at most 64 MiB: a larger tensor (a fine-tuned
# 7,050 x 4,096 feature table's gradient, 115 MB, at every batch) is mapped afresh at each allocation and
# faulted in and zeroed by the kernel, whatever `retain_freed_memory` asks of the main heap. With
# THP_MEM_ALLOC_ENABLE, torch aligns tensors of 2 MiB and more to 2 MiB and asks for huge pages: such a tensor
# is faulted in 2 MiB at a time (607 faults instead of 28,201; 13 ms instead of 48), and where the kernel's
# transparent huge pages are off the advice is ignored. Measured on the Amazon Baby shape in a thread, CPU
# seconds per epoch: BM3 8.2-9.6 -> 6.1, FREEDOM 9.2 -> 7.2-7.4 (`benchmarks/epoch.py --in-thread`;
# `benchmarks/worker_allocations.py`).
THREADED_TRAINING_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}


def retain_freed_memory() -> bool:
    """With glibc, let freed tensor memory be reused instead of handed back to the system and faulted in again.

    glibc maps every allocation above its threshold (128 KiB, rising with use) afresh and unmaps it when
    freed, so the table-sized tensors a batch allocates (embeddings, gradients) cost page faults and zeroing
    by the kernel at every step; served from the heap, and the heap not trimmed, they are reused. Measured on
    the Amazon Baby shape: LightGCN 10-20% fewer CPU seconds per batch. Allocations above glibc's largest
    threshold (32 MiB; a fine-tuned 7,050 x 4,096 feature table's gradient is 115 MB) come from the heap too:
    mapping is turned off, and such a gradient costs 5-6 ms to allocate and zero instead of 55-65 ms (BM3 on
    Amazon Baby: about 3 s of its 8 s CPU epoch). The process keeps its peak memory. This holds for glibc's
    main heap, i.e. the main thread's allocations; a thread with its own arena still maps its largest tensors
    (a Tune trial's: `THREADED_TRAINING_ENV` has them faulted in as huge pages).
    Returns whether glibc took the settings (False, and nothing changed, with another C library).
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    trim_threshold, top_pad, mmap_threshold, mmap_max = -1, -2, -3, -4  # glibc's M_* parameter numbers
    # glibc's largest mmap threshold: tensors up to 32 MiB come from the heap; mallopt returns 1 on success
    return all([mallopt(mmap_threshold, 32 * 2**20) == 1, mallopt(trim_threshold, 2**31 - 1) == 1,
                mallopt(top_pad, 256 * 2**20) == 1, mallopt(mmap_max, 0) == 1])


def make_optimizer(model: Recommender, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, in its fused form: the same update in one kernel per device (measured 7x faster than the
    per-tensor form on a 7,050 x 4,096 fine-tuned feature table on CPU, where the step is memory-bound)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """MMRec's LambdaLR: the factor gamma ** (epoch / every), stepped after each epoch; None without decay."""
    if cfg.lr_decay is None or cfg.lr_decay[0] == 1.0:
        return None
    gamma, every = cfg.lr_decay
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda epoch: gamma ** (epoch / every))


def frozen_features(model: Recommender) -> set[str]:
    """The state keys of the feature tables the model keeps frozen (buffers from `Recommender.register_feature`):
    never trained, rebuilt with the model from its features, and on the CPU often views of tables shared with
    other trials (Ray's object store), which a copy would make the trial's own."""
    buffers = {name for name, _ in model.named_buffers()}
    return model.feature_keys & buffers


def trained_state(model: Recommender) -> dict:
    """The model's `state_dict` (live tensors) less its frozen feature tables."""
    frozen = frozen_features(model)
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_trained_state(model: Recommender, state: dict) -> None:
    """Load `state` (from `trained_state` or `snapshot`) into `model`: every key but the frozen feature tables must
    be there (a frozen table the state has, as a full `state_dict` does, is not written into the model)."""
    frozen = frozen_features(model)
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in frozen}, strict=False)
    missing = sorted(set(missing) - frozen)
    if missing or unexpected:
        raise RuntimeError(f"{type(model).__name__}: the saved state does not fit the model (missing {missing}, "
                           f"unexpected {sorted(unexpected)}; only the frozen feature tables {sorted(frozen)} may "
                           f"be left out)")


def snapshot(model: Recommender) -> dict:
    """A copy of the model's trained state (parameters, buffers, extra state; not the frozen feature tables)
    that later training cannot change."""
    return _copy_state(trained_state(model))


def _copy_state(value):
    if isinstance(value, Tensor):
        return value.detach().clone()  # sparse tensors too (they cannot be deep-copied)
    if isinstance(value, dict):
        return {k: _copy_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_state(v) for v in value)
    return copy.deepcopy(value)


def make_evaluators(dataset, cfg: TrainConfig, device) -> tuple[RankingEvaluator, RankingEvaluator]:
    from .data import TEST, TRAIN, VALID

    train, valid, test = dataset.pairs(TRAIN), dataset.pairs(VALID), dataset.pairs(TEST)
    common = dict(ks=cfg.ks, chunk_size=cfg.eval_chunk, device=device)
    return (
        RankingEvaluator(dataset.n_users, dataset.n_items, train, valid, **common),
        RankingEvaluator(dataset.n_users, dataset.n_items, train, test,
                         exclude_pairs=valid if cfg.mask_valid_at_test else None, **common),
    )


_POPULARITY: dict[tuple, dict[str, float]] = {}


def popularity_metrics(dataset, evaluator: RankingEvaluator) -> dict[str, float]:
    """The metrics of the popularity ranking (training-interaction counts) under `evaluator`: the floor a model
    that learned anything beats. Computed once per dataset and evaluator settings in a process."""
    from .data import TRAIN

    key = (dataset.name, dataset.n_users, dataset.n_items, dataset.n_interactions,
           int(np.bincount(dataset.split, minlength=3)[TRAIN]), evaluator.ks, evaluator.users.size,
           int(evaluator.mask_indices.size), int(evaluator.target_indices.size))
    if key not in _POPULARITY:
        counts = popularity_scores(dataset.pairs(TRAIN)[1], dataset.n_items).to(evaluator.device)
        _POPULARITY[key], _ = evaluator.evaluate(lambda users, out: out.copy_(counts.expand_as(out)))
    return _POPULARITY[key]


@torch.no_grad()
def evaluate(model: Recommender, evaluator: RankingEvaluator, seed: int = 0) -> tuple[dict[str, float], str]:
    """(metrics, collapse reason or '') of `model` on one split.

    Runs under random seed `seed` with the caller's random state saved and restored: the scores are a function
    of the model's state alone, and evaluating does not shift the training random stream.
    """
    was_training = model.training
    model.eval()
    device = evaluator.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        state = model.eval_state()
        metrics, diag = evaluator.evaluate(lambda users, out: model.score(users, state, out))
    model.train(was_training)
    if diag["non_finite_users"]:
        return metrics, f"non-finite scores for {diag['non_finite_users']} of {diag['users']} users"
    if diag["constant_users"] == diag["users"]:
        return metrics, f"all-equal scores for all {diag['users']} users"
    return metrics, ""


def fit(
    model: Recommender,
    graph: InteractionGraph,
    valid: RankingEvaluator,
    test: RankingEvaluator,
    cfg: TrainConfig,
    on_eval: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
) -> FitResult:
    """Train `model` (already seeded and on its device) and evaluate it; see the module docstring.

    `on_eval(point)` gets every evaluation; `on_checkpoint(state)` every `checkpoint_every`-th one (before its
    `on_eval`, the state including that evaluation) unless it ends training; `resume` is such a state.
    """
    device = graph.device
    retain_freed_memory()
    sync = (lambda: torch.cuda.synchronize(device)) if cfg.profile and device.type == "cuda" else (lambda: None)
    result = FitResult(phase_seconds={k: 0.0 for k in ("epoch_start", "sample", "forward", "backward", "step")})
    phases = result.phase_seconds
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    eval_seed = torch.initial_seed()  # the trial's seed: every evaluation of this run draws the same way
    sampler = NegativeSampler(graph)
    n = graph.num_edges
    best_score, best_state, stale = -np.inf, None, 0
    first_epoch = 0
    if resume is not None:
        first_epoch, best_score, best_state, stale = restore_training_state(resume, model, optimizer, scheduler,
                                                                            result, cfg, device)

    def clock(phase, start):
        sync()
        now = time.perf_counter()
        phases[phase] += now - start
        return now

    model.train()
    for epoch in range(first_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.on_epoch_start(epoch)
        t = clock("epoch_start", t0)
        order = torch.randperm(n, device=device)
        users_all, pos_all = graph.users[order], graph.items[order]
        neg_all = sampler.sample(users_all) if model.uses_negatives else None
        t = clock("sample", t)
        epoch_loss, collapsed = 0.0, ""
        for start in range(0, n, cfg.batch_size):
            stop = min(n, start + cfg.batch_size)
            users, pos = users_all[start:stop], pos_all[start:stop]
            neg = neg_all[start:stop] if neg_all is not None else None
            t = clock("sample", t)
            loss = model.loss(users, pos, neg)
            t = clock("forward", t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t = clock("backward", t)
            optimizer.step()
            t = clock("step", t)
            value = float(loss.detach())
            if not np.isfinite(value):
                collapsed = f"non-finite loss ({value}) at epoch {epoch}, batch {start // cfg.batch_size}"
                break
            epoch_loss += value * (stop - start)
        result.epochs = epoch + 1
        result.train_seconds += time.perf_counter() - t0
        if collapsed:
            result.status, result.reason = COLLAPSED, collapsed
            break
        if scheduler is not None:
            scheduler.step()
        if (epoch + 1) % cfg.eval_every and epoch + 1 < cfg.epochs:
            continue
        t_eval = time.perf_counter()
        metrics, reason = evaluate(model, valid, eval_seed)
        result.eval_seconds += time.perf_counter() - t_eval
        point = {"epoch": epoch, "loss": epoch_loss / n, **{f"valid_{k}": v for k, v in metrics.items()}}
        result.curve.append(point)
        ends = bool(reason)
        if reason:
            result.status, result.reason = COLLAPSED, f"{reason} at epoch {epoch}"
        else:
            score = metrics[cfg.valid_metric]
            if score > best_score:
                best_score, stale, result.best_epoch, result.valid = score, 0, epoch, metrics
                best_state = snapshot(model)
            else:
                stale += 1
                ends = stale > cfg.patience
        if (on_checkpoint is not None and checkpoint_every > 0 and not ends and epoch + 1 < cfg.epochs
                and len(result.curve) % checkpoint_every == 0):
            on_checkpoint(training_state(epoch + 1, model, optimizer, scheduler, result, best_score, best_state,
                                         stale, cfg, device))
        if on_eval is not None:
            on_eval(point)
        if ends:
            break
    if result.status == COLLAPSED:
        return result
    if best_state is not None:
        load_trained_state(model, best_state)
    t_eval = time.perf_counter()
    result.test, reason = evaluate(model, test, eval_seed)
    result.eval_seconds += time.perf_counter() - t_eval
    if reason:
        result.status, result.reason = COLLAPSED, f"{reason} on the test split"
    return result


# ---------------------------------------------------------------- checkpoints
def rng_states(device: torch.device) -> dict:
    """Every random generator a trial draws from: torch's (CPU, and the trial's CUDA device), numpy's, Python's
    (as tensors, numbers and lists only, so that ``torch.load(weights_only=True)`` reads them back)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
              "python": random.getstate()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


def training_state(next_epoch: int, model: Recommender, optimizer: torch.optim.Optimizer, scheduler,
                   result: FitResult, best_score: float, best_state: dict | None, stale: int, cfg: TrainConfig,
                   device: torch.device) -> dict:
    """What `fit` needs to continue from `next_epoch` exactly (tensors are the live ones: serialise the state,
    for example with `torch.save`, before training goes on)."""
    return {"next_epoch": next_epoch, "train_config": asdict(cfg), "model": trained_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "best_score": float(best_score), "best_state": best_state,
            "stale": stale, "result": asdict(result), "rng": rng_states(device)}


def restore_training_state(state: dict, model: Recommender, optimizer: torch.optim.Optimizer, scheduler,
                           result: FitResult, cfg: TrainConfig,
                           device: torch.device) -> tuple[int, float, dict | None, int]:
    """Load `state` (from `training_state`) into the model, optimizer, result and random generators; returns
    (next epoch, best score, best weights, early-stopping counter)."""
    saved, current = dict(state["train_config"]), asdict(cfg)
    for name in ("ks", "lr_decay"):
        saved[name] = tuple(saved[name]) if saved.get(name) is not None else None
        current[name] = tuple(current[name]) if current.get(name) is not None else None
    saved.pop("profile", None), current.pop("profile", None)
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise ValueError(f"checkpoint of another training configuration (differs in {changed}); "
                         f"it cannot continue this run")
    load_trained_state(model, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    for name, value in state["result"].items():
        setattr(result, name, value)
    set_rng_states(state["rng"], device)
    return state["next_epoch"], state["best_score"], state["best_state"], state["stale"]

import math

import numpy as np
import torch

from ablate.metrics import RankingEvaluator, metrics_from_hits


def test_hand_computed_case():
    # one user, 2 relevant items, hits at ranks 1 and 3 of the top 5
    hits = torch.tensor([[1, 0, 1, 0, 0]])
    m = metrics_from_hits(hits, torch.tensor([2]), ks=(1, 3, 5))
    assert math.isclose(m["recall@1"], 0.5) and math.isclose(m["recall@3"], 1.0)
    assert math.isclose(m["precision@3"], 2 / 3) and math.isclose(m["precision@5"], 2 / 5)
    assert math.isclose(m["hit@1"], 1.0)
    dcg3 = 1 + 1 / math.log2(4)
    assert math.isclose(m["ndcg@3"], dcg3 / (1 + 1 / math.log2(3)))
    assert math.isclose(m["ndcg@1"], 1.0)
    assert math.isclose(m["map@3"], (1 + 2 / 3) / 2)
    assert math.isclose(m["map@1"], 1.0)  # min(|G|, K) = 1


def brute_force(scores, train, target, k):
    """Reference: per user, plain Python."""
    out = {"recall": [], "ndcg": [], "precision": [], "map": [], "hit": []}
    for u in range(scores.shape[0]):
        rel = target.get(u, set())
        if not rel:
            continue
        candidates = [i for i in np.argsort(-scores[u], kind="stable") if i not in train.get(u, set())][:k]
        hits = [1 if i in rel else 0 for i in candidates]
        out["recall"].append(sum(hits) / len(rel))
        out["precision"].append(sum(hits) / k)
        out["hit"].append(float(any(hits)))
        dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
        idcg = sum(1 / math.log2(j + 2) for j in range(min(len(rel), k)))
        out["ndcg"].append(dcg / idcg)
        ap = sum(h * sum(hits[: j + 1]) / (j + 1) for j, h in enumerate(hits))
        out["map"].append(ap / min(len(rel), k))
    return {f"{m}@{k}": float(np.mean(v)) for m, v in out.items()}


def test_against_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    n_users, n_items = 37, 61
    scores = rng.standard_normal((n_users, n_items)).astype(np.float32)  # distinct: no ties
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, n_users, 900), rng.integers(0, n_items, 900))}
    pairs = sorted(pairs)
    labels = rng.choice([0, 0, 0, 1, 2], size=len(pairs))
    train, target = {}, {}
    for (u, i), label in zip(pairs, labels):
        (train if label == 0 else target if label == 2 else {}).setdefault(u, set()).add(i)
    tr = np.array([(u, i) for u, s in train.items() for i in s]).T
    te = np.array([(u, i) for u, s in target.items() for i in s]).T
    evaluator = RankingEvaluator(n_users, n_items, (tr[0], tr[1]), (te[0], te[1]), ks=(5, 10, 20), chunk_size=8)
    # scores written into the evaluator's buffer, as the models do: one buffer, masked in place, serves every chunk
    got, diag = evaluator.evaluate(lambda users, out: out.copy_(torch.from_numpy(scores[users.numpy()])))
    assert diag["non_finite_users"] == 0 and diag["constant_users"] == 0
    for k in (5, 10, 20):
        expected = brute_force(scores, train, target, k)
        for name, value in expected.items():
            assert math.isclose(got[name], value, rel_tol=1e-9, abs_tol=1e-12), name


def test_masking_valid_items_and_diagnostics():
    # user 0: train item 0, valid item 1, test item 2
    train, valid, test = (np.array([0]), np.array([0])), (np.array([0]), np.array([1])), (np.array([0]), np.array([2]))
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0]])
    plain = RankingEvaluator(1, 5, train, test, ks=(1,))
    masked = RankingEvaluator(1, 5, train, test, exclude_pairs=valid, ks=(1,))
    assert plain.evaluate(lambda u, out: scores.clone())[0]["hit@1"] == 0.0
    assert masked.evaluate(lambda u, out: scores.clone())[0]["hit@1"] == 1.0
    _, diag = plain.evaluate(lambda u, out: torch.zeros(1, 5))
    assert diag["constant_users"] == 1
    _, diag = plain.evaluate(lambda u, out: torch.full((1, 5), float("nan")))
    assert diag["non_finite_users"] == 1

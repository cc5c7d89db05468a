"""Metrics of the MMRec protocol.

MMRec (``TopKEvaluator``) reports Recall, NDCG, Precision and MAP at K in {5, 10, 20, 50}, averaged over evaluated
users and rounded to 4 decimals (mambarec spec §4). RecBole 1.2.1's built-in classes compute exactly these:

* Recall@K    = hits@K / |P_u|                 (denominator |P_u|, not min(|P_u|, K))
* NDCG@K      = DCG@K / IDCG over min(|P_u|, K) ideal positions, binary gains 1/log2(rank+1)
* Precision@K = hits@K / K
* MAP@K       = (1 / min(|P_u|, K)) * sum_{i<=K} rel_i * Precision@i

``tests/test_multimodal_protocol.py`` checks each against hand-computed values, so no replacement class is registered.
The one difference is |P_u| for a (user, item) pair repeated inside one split: MMRec counts rows, RecBole counts
distinct items. ``prepare mmrec`` reports such duplicates (``duplicate_pairs_within_split`` in the manifest); the
MMRec datasets have none that matter.
"""
from __future__ import annotations

METRICS: list = []

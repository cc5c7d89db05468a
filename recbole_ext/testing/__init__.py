"""Test doubles and synthetic data for the tests and benchmarks; not part of the model zoo or of a run.

* ``multimodal_toy``: in-memory planted-cluster multimodal data and a minimal training loop for the models;
* ``medrec_synthetic``: synthetic patients and VisitBatches for the medication models;
* ``product_media``: product-like pictures and texts for the feature extractors' tests and benchmark;
* ``fake_runs``: a deterministic stand-in for ``quick_start.run`` that the leaderboard tests run in its place
  (``--run-fn recbole_ext.testing.fake_runs:run``).

Nothing outside this package imports it except tests/ and bench/.
"""

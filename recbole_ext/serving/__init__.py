"""Serving a trained run: load its checkpoint (through ``quick_start.load_run``) and answer top-K or medication-set
requests with the retrieval library (``recbole_ext.retrieval``). ``recommend`` is the Python entry point (also
``recbole_ext.recommend``); ``cli`` is the ``python run.py recommend`` command."""

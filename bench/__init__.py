"""trainjobs' benchmarks: ``python -m bench`` (``make bench``), ``--quick`` for a smoke run (``make bench-quick``).

One module per benchmark: ``training`` (against ``reference_loop``, the article's loop),
``service``, ``dispatch``, ``api`` (with ``loadgen``), ``metrics``, ``checkpoints``; ``stats``
interleaves variants and summarises them, ``servers`` starts the real API and worker processes,
``report`` writes the table and the results file. docs/benchmarks.md has the latest numbers.
"""

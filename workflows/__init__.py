"""The workflows a researcher runs: train, evaluate, compare and benchmark.

Each is a module with a ``main(argv)`` that ``scripts/<name>.py`` calls, and all four share
one command-line style (:mod:`workflows.cli`): typed dataclass settings whose field
docstrings are the help, ``--help``, ``--print_config``, ``--config FILE`` and one-sentence
errors with exit code 2.
"""

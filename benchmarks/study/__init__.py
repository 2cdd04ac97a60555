"""The memorization study's engine, outside the installed package: its families, constructions and analysis.

`study.experiments` trains and records one run of a family (the MLP of `lightning_infomem.demos.runs`, the
staged CNN and the [CLS] transformer of `study.families`) and scores the rules a user could select models
and checkpoints by; ``benchmarks/checkpoint_selection.py`` and ``benchmarks/memorization_kind.py`` run it.
The scripts in ``benchmarks/`` import it as ``study`` (their folder is on ``sys.path``).
"""

"""The package's demonstrations and experiments on real data (scikit-learn's 8x8 digits).

``python -m lightning_infomem.demo`` (or ``lightning_infomem.demos.demo``) runs the main demo;
`lightning_infomem.demos.runs` holds the demo's model, data and runs (the MLP family of the study, whose
engine lives outside the package in ``benchmarks/study``).
Needs the ``demo`` extra (scikit-learn, matplotlib).
"""

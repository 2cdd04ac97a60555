"""The package's demonstrations and experiments on real data (scikit-learn's 8x8 digits).

``python -m lightning_infomem.demo`` (or ``lightning_infomem.demos.demo``) runs the main demo;
`lightning_infomem.demos.experiments` holds the constructions that the demo and the benchmarks share.
Needs the ``demo`` extra (scikit-learn, matplotlib).
"""

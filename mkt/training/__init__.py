"""Training side of mkt: data cleaning, splits, baselines, fine-tuning, evaluation.

Everything here needs the ``train`` extra (torch, pandas, scikit-learn, ...). Nothing in
``mkt.runtime`` may import from this package.
"""

"""movrec: the Python package that runs inside PostgreSQL backends.

Importing it is cheap on purpose: nothing here imports numpy or torch.  The
serving paths (recommend, predict, the rating trigger) use numpy only; torch is
imported by training and deploy alone (it costs ~1.1 s per new backend).
"""

__version__ = "0.3.0"

"""tfkit: the Kaggle image-classification workflow as a library.

The data flows one way through one module per stage::

    records -> data -> augment -> models -> train -> tune -> predict -> report

Heavy modules (TensorFlow) are imported lazily by each stage, so
``import tfkit`` and ``tfkit --help`` stay fast.
"""

__version__ = "0.1.0"

from tfkit import quiet as _quiet

# Before anything imports TensorFlow: its C++ start-up lines are held back
# (tfkit.quiet; `--verbose` or a TF_CPP_MIN_LOG_LEVEL of your own shows them).
_quiet.install()

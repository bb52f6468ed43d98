"""tfkit: the Kaggle image-classification workflow as a library.

The data flows one way through one module per stage::

    records -> data -> augment -> models -> train -> tune -> predict -> report

Heavy modules (TensorFlow) are imported lazily by each stage, so
``import tfkit`` and ``tfkit --help`` stay fast.
"""

__version__ = "0.1.0"

"""Classifiers defined at run time: heads on the shared encoder's embedding, stored, spread, scored."""

"""data: the pipeline's first steps and the images themselves: sources into ``data/raw``
(ingest), opening files safely (one allow-list of decoders), the audit, near duplicates, the
split and cross-validation's folds, sizes from the data, and decoding splits into tensors.

Imports: ``recipe.core``.
"""

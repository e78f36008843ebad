"""Corpus -> per-user shards: readers, tokenizer, vocabulary, windows, on-disk store.

Entry points: :func:`fedkb.datasets.prepare.prepare` and
:class:`fedkb.datasets.store.Dataset`.
"""

"""Language-model scorers behind one interface, for ``perplexity_v1``.

A scorer turns texts into :class:`DocScore` (total negative log-likelihood in nats
over the scored tokens, how many tokens, how many UTF-8 bytes they cover). The stage
derives perplexity and bits per byte from those, so every backend is compared on the
same arithmetic. Backends import their libraries lazily (``load_scorer``), so this
package imports nothing heavy.
"""

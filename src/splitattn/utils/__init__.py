"""Utilities below every other layer but :mod:`splitattn.errors`: atomic file writing (:mod:`.fileio`),
autocast and grad scaling (:mod:`.amp`), process groups (:mod:`.distributed`), training-checkpoint files
(:mod:`.checkpoint`), FLOP counting (:mod:`.flops`) and the validation vocabulary (:mod:`.validation`).

Import the module you need; this package re-exports nothing.
"""

"""Reproductions of the papers' experiments, built on the public library (:func:`ebmkit.fit`,
:func:`ebmkit.load`) and the built-in components."""

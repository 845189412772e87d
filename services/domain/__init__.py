"""The domain's shared words and rules: what several rooms must agree on, stated once.

Datatypes and attribute specs, the rules every stored value obeys (for JSON
values, CSV cells and whole columns alike), customer ids and personal data,
the registry's read model, batches of rows and their errors, and the audience
condition language. Nothing here does I/O or imports a room: rooms import it.
"""

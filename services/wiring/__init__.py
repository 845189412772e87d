"""Assembling processes: which service runs where, and how each reaches the others.

The only place that decides whether a collaborator is reached over gRPC or in
the same process; any room may be imported here.
"""

"""How the services' short-lived copies of each other's data are kept fresh."""

REFRESH_AHEAD = 0.75
"""A cached copy used past this fraction of its time to live is fetched again in the background, so that
steady traffic never waits for a fetch; past its whole time to live it is not used at all."""

"""The controller's loops: node lifecycle, GC, image caches, namespaces, leadership."""

# Seconds the leader lease lasts by default (shoal.controllers.leadership); here so that the CLI
# names it without importing the server side.
LEADER_TTL = 15.0

"""The fleet drill: rollouts, scaling, a crash and a broken replica under steady load, behind HAProxy.

``python -m bench.fleet --out FILE.json`` (deploy/fleet/README.md). ``report`` holds the pure
parts (figures and targets), ``control`` drives Docker and reads HAProxy, ``drill`` runs the
scenarios.
"""

#!/usr/bin/env python3
"""Writes a ghz configuration of ghz/ with changes for one run.

Usage: ghz_config.py BASE OUT CHANGES_JSON EVENT_ID HOST
CHANGES_JSON is merged into BASE (objects key by key); the event id and the
host are set last. Standard library only.
"""
import json
import sys

base, out, changes, event, host = sys.argv[1:6]


def merge(into, more):
    for k, v in more.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


config = json.load(open(base))
merge(config, json.loads(changes))
config["data"]["event_id"] = event
config["host"] = host
json.dump(config, open(out, "w"), indent=2)

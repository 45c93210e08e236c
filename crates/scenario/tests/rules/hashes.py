#!/usr/bin/env python3
"""Recomputes the split variants and holdout groups expected by tests/split*.test.yaml
and tests/holdout.test.yaml, with the published formula (language section 6)."""


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def variant(journey, step, customer, weights):
    h = fnv1a64(f"{journey}:{step}:{customer}") % sum(w for _, w in weights)
    running = 0
    for name, weight in weights:
        running += weight
        if running > h:
            return h, name


for c in ["c227", "c64", "c54", "c31", "c38", "c13"]:
    print("ab_three", c, variant("ab_three", "choose", c, [("alpha", 30), ("beta", 50), ("gamma", 20)]))
for c in ["c5", "c9", "c12", "c3"]:
    print("coin", c, variant("coin", "flip", c, [("heads", 1), ("tails", 2)]))
for c in ["c73", "c122", "c22", "c29"]:
    h = fnv1a64(f"holdout_promo:holdout:{c}") % 100
    print("holdout_promo", c, h, "control" if h < 30 else "treated")

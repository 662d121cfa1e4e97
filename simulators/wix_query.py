"""The part of Wix's query language the simulator's Query Posts understands (a post against a filter)."""
from __future__ import annotations


def match_filter(post: dict, filt: dict) -> bool:
    """Tiny subset of Wix query language: {field: value}, {field: {$eq|$ne|$in|$hasSome: ...}}, $and/$or."""
    for key, cond in filt.items():
        if key == "$and":
            if not all(match_filter(post, c) for c in cond):
                return False
            continue
        if key == "$or":
            if not any(match_filter(post, c) for c in cond):
                return False
            continue
        val = post.get(key)
        if isinstance(cond, dict):
            for op, arg in cond.items():
                if op == "$eq" and val != arg:
                    return False
                if op == "$ne" and val == arg:
                    return False
                if op == "$in" and val not in (arg or []):
                    return False
                if op in ("$hasSome", "$hasAll"):
                    vals = val if isinstance(val, list) else [val]
                    fn = any if op == "$hasSome" else all
                    if not fn(a in vals for a in (arg or [])):
                        return False
        elif val != cond:
            return False
    return True

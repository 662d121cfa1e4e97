"""Deterministic fake content: text seeded by a hash of the prompt, JSON-schema filling."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from typing import Any, Optional

STOPWORDS = set("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours ourselves out over own same she should so some such than
that the their theirs them themselves then there these they this those through to too under until up very
was we were what when where which while who whom why will with would you your yours yourself yourselves
write article blog post please generate return json about words word using use make following given
should must include including format output schema field fields title slug excerpt body tags image prompt
alt text markdown paragraph paragraphs language english request id site user system assistant based
""".split())

VOCAB = """
growth strategy garden morning practice community kitchen journey planning balance energy habit
design craft season market budget travel coffee health rhythm focus project story culture method
river mountain city harvest learning teamwork customer quality simple modern classic weekend
detail insight routine workshop collection seasonal local natural fresh creative practical
mindful steady bright careful patient curious thoughtful honest generous resilient clever
approach framework idea lesson moment pattern question answer season recipe trail window light
""".split()

ADJ = ["Practical", "Quiet", "Essential", "Surprising", "Simple", "Complete", "Honest", "Modern",
       "Everyday", "Smart", "Fresh", "Hidden", "Timeless", "Bold", "Gentle", "Curious"]
NOUNS = ["Guide", "Playbook", "Notes", "Lessons", "Field Guide", "Primer", "Handbook", "Story",
         "Blueprint", "Checklist"]
STYLES = ["editorial photograph", "soft watercolor illustration", "minimal flat illustration",
          "cinematic wide shot", "warm lifestyle photograph", "isometric 3D render"]

LONG_FIELDS = re.compile(r"(^|_)(body|content|article|markdown|html|text|story|post)(_|$)", re.I)


def prompt_chars(messages: Any) -> int:
    total = 0
    if not isinstance(messages, list):
        return 0
    for m in messages:
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, str):
            total += len(c)
        elif isinstance(c, list):
            for part in c:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
    return total


def messages_text(messages: Any, roles: tuple[str, ...] = ("user",)) -> str:
    out = []
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in roles:
                continue
            c = m.get("content")
            if isinstance(c, str):
                out.append(c)
            elif isinstance(c, list):
                out.extend(p["text"] for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(out)


def tokens_for(chars: int) -> int:
    return math.ceil(chars / 4)


def slugify(text: str, max_len: int = 80) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    s = s[:max_len].rstrip("-")
    return s or "post"


class TextGen:
    """Deterministic text generator keyed by an arbitrary seed string; vocabulary from the prompt."""

    def __init__(self, seed: str, prompt: str):
        h = hashlib.sha256(seed.encode("utf-8", "replace")).digest()
        self.rng = random.Random(int.from_bytes(h[:8], "big"))
        self.digest = h.hex()
        words = re.findall(r"[A-Za-z][A-Za-z'-]{3,}", prompt)
        kws: list[str] = []
        for w in words:
            lw = w.lower().strip("'-")
            if lw in STOPWORDS or lw in kws or len(lw) < 4:
                continue
            kws.append(lw)
        self.keywords = kws[:16] or self.rng.sample(VOCAB, 4)
        self._title: Optional[str] = None

    # -- small pieces -------------------------------------------------------------------------
    def word(self) -> str:
        if self.rng.random() < 0.18:
            return self.rng.choice(self.keywords)
        return self.rng.choice(VOCAB)

    def topic(self) -> str:
        return " ".join(self.keywords[:3])

    def sentence(self, lo: int = 8, hi: int = 16) -> str:
        n = self.rng.randint(lo, hi)
        words = [self.word() for _ in range(n)]
        connectors = ["and", "with", "for", "because", "while", "so", "through", "without"]
        for i in range(3, n - 2, 5):
            words[i] = self.rng.choice(connectors)
        s = " ".join(words)
        return s[0].upper() + s[1:] + "."

    def paragraph(self, lo: int = 3, hi: int = 6) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(lo, hi)))

    def text(self, target_chars: int, markdown: bool = False) -> str:
        """Paragraphs separated by blank lines, trimmed to <= target_chars at a sentence boundary."""
        target_chars = max(0, int(target_chars))
        if target_chars == 0:
            return ""
        paras: list[str] = []
        size = 0
        while size < target_chars:
            p = self.paragraph()
            if markdown and paras and self.rng.random() < 0.25:
                p = f"## {self.title_case(self.word() + ' ' + self.word())}\n\n{p}"
            paras.append(p)
            size += len(p) + 2
        out = "\n\n".join(paras)
        if len(out) > target_chars:
            cut = out[:target_chars]
            idx = cut.rfind(". ")
            idx2 = cut.rfind(".\n")
            idx = max(idx, idx2)
            out = cut[: idx + 1] if idx > target_chars // 2 else cut.rstrip()
        return out

    @staticmethod
    def title_case(s: str) -> str:
        return " ".join(w[:1].upper() + w[1:] for w in s.split())

    # -- article fields ---------------------------------------------------------------------
    def title(self) -> str:
        if self._title is None:
            kw = self.title_case(" ".join(self.keywords[:2]))
            self._title = f"The {self.rng.choice(ADJ)} {self.rng.choice(NOUNS)} to {kw}"
        return self._title

    def slug(self) -> str:
        return slugify(self.title())

    def excerpt(self, max_chars: int = 200) -> str:
        s = f"A {self.rng.choice(ADJ).lower()} look at {self.topic()}: " + self.sentence(10, 18)
        return s[:max_chars].rstrip()

    def tags(self, n: Optional[int] = None) -> list[str]:
        n = n or self.rng.randint(3, 5)
        pool = list(dict.fromkeys(self.keywords + VOCAB[:10]))
        return pool[:n]

    def image_prompt(self) -> str:
        # A scene of its own per article, as a model describes one (not only the brief's first words): two
        # requests on one site with the same keywords still get different prompts.
        scene = f"{self.word()} {self.word()} and {self.word()}"
        return (f"A {self.rng.choice(STYLES)} of {scene}, about {self.topic()}, natural light, "
                f"rich detail, no text, 16:9 composition")

    def image_alt(self) -> str:
        return f"Illustration of {self.topic()}"


# ------------------------------------------------------------------------------------------
# JSON schema filling
# ------------------------------------------------------------------------------------------

_LONG = "\x00LONG\x00"  # placeholder for long text fields, replaced once the budget is known


class SchemaFiller:
    def __init__(self, gen: TextGen, root: dict):
        self.gen = gen
        self.root = root
        self.long_paths: list[tuple] = []

    def _resolve(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            ref = schema["$ref"]
            node: Any = self.root
            if ref.startswith("#"):
                for part in ref.lstrip("#/").split("/"):
                    if part:
                        node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
            else:
                node = {}
            schema = node
            seen += 1
        return schema

    def fill(self, schema: Any, name: str = "", path: tuple = (), depth: int = 0) -> Any:
        schema = self._resolve(schema)
        if not isinstance(schema, dict) or depth > 12:
            return self._string(name, {}, path)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                opts = [self._resolve(o) for o in schema[key]]
                non_null = [o for o in opts if not (isinstance(o, dict) and o.get("type") == "null")]
                return self.fill((non_null or opts)[0], name, path, depth + 1)
        if schema.get("allOf"):
            merged: dict = {}
            for o in schema["allOf"]:
                o = self._resolve(o)
                if isinstance(o, dict):
                    merged.update({k: v for k, v in o.items() if k != "properties"})
                    merged.setdefault("properties", {}).update(o.get("properties", {}))
            return self.fill(merged, name, path, depth + 1)
        typ = schema.get("type")
        if isinstance(typ, list):
            non_null = [t for t in typ if t != "null"]
            typ = non_null[0] if non_null else "null"
        if typ is None:
            typ = "object" if "properties" in schema else ("array" if "items" in schema else "string")
        if typ == "object":
            props = schema.get("properties") or {}
            return {k: self.fill(v, k, path + (k,), depth + 1) for k, v in props.items()}
        if typ == "array":
            return self._array(name, schema, path, depth)
        if typ == "integer":
            return self._number(name, schema, True)
        if typ == "number":
            return self._number(name, schema, False)
        if typ == "boolean":
            return bool(self.gen.rng.random() < 0.5)
        if typ == "null":
            return None
        return self._string(name, schema, path)

    def _array(self, name: str, schema: dict, path: tuple, depth: int) -> list:
        items = self._resolve(schema.get("items", {"type": "string"}))
        lo = int(schema.get("minItems", 0))
        hi = int(schema.get("maxItems", max(lo, 5)))
        n = max(lo, min(hi, self.gen.rng.randint(3, 5)))
        lname = name.lower()
        if isinstance(items, dict) and items.get("type") == "string" and not items.get("enum") \
                and any(k in lname for k in ("tag", "keyword", "hashtag", "categor", "topic")):
            tags = self.gen.tags(n)
            while len(tags) < n:
                tags.append(f"{self.gen.word()}-{len(tags)}")
            return tags[:n]
        singular = lname[:-1] if lname.endswith("s") else lname
        return [self.fill(items, singular, path + (i,), depth + 1) for i in range(n)]

    def _number(self, name: str, schema: dict, integer: bool) -> Any:
        lo = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", max(lo, 0) + 10))
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            lo = lo + (1 if integer else 1e-6)
        if "exclusiveMaximum" in schema and "maximum" not in schema:
            hi = hi - (1 if integer else 1e-6)
        if hi < lo:
            hi = lo
        if integer:
            return int(self.gen.rng.randint(math.ceil(lo), max(math.ceil(lo), math.floor(hi))))
        return round(self.gen.rng.uniform(lo, hi), 3)

    def _string(self, name: str, schema: dict, path: tuple) -> str:
        g = self.gen
        n = name.lower()
        fmt = schema.get("format")
        if fmt == "date-time":
            s = "2025-01-01T00:00:00Z"
        elif fmt == "date":
            s = "2025-01-01"
        elif fmt in ("uri", "url") or n in ("url", "link", "canonical_url"):
            s = f"https://example.com/{g.slug()}"
        elif fmt == "email" or "email" in n:
            s = "author@example.com"
        elif "slug" in n:
            s = g.slug()
        elif n in ("title", "headline", "seo_title", "name", "heading") or n.endswith("_title"):
            s = g.title()
        elif "alt" in n.split("_") or n in ("alt", "alt_text", "image_alt", "imagealt"):
            s = g.image_alt()
        elif "prompt" in n:
            s = g.image_prompt()
        elif any(k in n for k in ("excerpt", "summary", "description", "subtitle", "teaser", "lede")):
            s = g.excerpt(160 if "meta" in n or "seo" in n else 220)
        elif n in ("language", "lang", "locale"):
            s = "en"
        elif "author" in n:
            s = "Staff Writer"
        elif LONG_FIELDS.search(n):
            self.long_paths.append(path)
            return _LONG
        else:
            s = g.sentence(4, 10)
        max_len = schema.get("maxLength")
        if isinstance(max_len, int) and len(s) > max_len:
            s = s[:max_len]
        min_len = schema.get("minLength")
        if isinstance(min_len, int) and len(s) < min_len:
            s = (s + " " + g.text(min_len * 2))[:max(min_len, len(s))]
        return s


def _set_path(obj: Any, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


ARTICLE_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "slug": {"type": "string"},
        "excerpt": {"type": "string"},
        "body": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "image_prompt": {"type": "string"},
        "image_alt": {"type": "string"},
    },
}


def structured_content(gen: TextGen, schema: dict, max_tokens: int, long_fraction: float = 0.75) -> tuple[str, bool]:
    """JSON text for ``schema`` that fits in ``max_tokens`` (4 chars/token). Returns (text, truncated)."""
    filler = SchemaFiller(gen, schema)
    obj = filler.fill(schema)
    if not filler.long_paths:
        text = json.dumps(obj, ensure_ascii=False)
    else:
        for p in filler.long_paths:
            _set_path(obj, p, "")
        base = len(json.dumps(obj, ensure_ascii=False))
        budget_chars = max(0, max_tokens * 4 - base)
        per_field = int(budget_chars * long_fraction / len(filler.long_paths))
        texts = [gen.text(per_field, markdown=True) for _ in filler.long_paths]
        for _ in range(40):
            for p, t in zip(filler.long_paths, texts):
                _set_path(obj, p, t)
            text = json.dumps(obj, ensure_ascii=False)
            if len(text) <= max_tokens * 4:
                break
            texts = [t[: int(len(t) * 0.85)] for t in texts]
        else:
            for p in filler.long_paths:
                _set_path(obj, p, "")
            text = json.dumps(obj, ensure_ascii=False)
    limit = max_tokens * 4
    if len(text) > limit:
        return text[:limit], True
    return text, False


def plain_content(gen: TextGen, max_tokens: int) -> tuple[str, bool]:
    """Plain answer of a prompt-determined "natural" length (200-800 tokens), cut at max_tokens."""
    natural_tokens = gen.rng.randint(200, 800)
    text = gen.text(natural_tokens * 4) or gen.sentence()
    limit = max_tokens * 4
    if len(text) > limit:
        return text[:limit], True
    return text, False

"""Language codes for Moses tokenization and detokenization (sacremoses).

sacremoses takes any language code: for the languages it has data for it uses that language's
non-breaking prefixes (``Mr.``, ``z.B.``: a full stop after them does not end a sentence or get
split off), and its detokenizer has special rules for a few (English and others' apostrophes,
French and Italian elisions, Czech and Finnish). For any other code it applies its generic
rules: punctuation split off and joined back, no prefixes, which is reasonable for most
languages written with spaces between words and poor for languages written without them
(Chinese, Japanese, Thai). A code that is neither ISO 639-1 nor one sacremoses knows is most
likely a typo, and is refused rather than silently scored with the generic rules.
"""

ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da
de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz
ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln
lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi
pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti
tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())


def sacremoses_languages():
    """The codes sacremoses has non-breaking-prefix data for."""
    from sacremoses.corpus import NonbreakingPrefixes

    return frozenset(NonbreakingPrefixes().available_langs)


def moses_rules(lang):
    """'specific' when sacremoses has data for ``lang``, else 'generic'."""
    return "specific" if lang in sacremoses_languages() else "generic"


def language_code_problem(lang):
    """Why ``lang`` is not a language code to give sacremoses, or None."""
    if lang in ISO_639_1 or lang in sacremoses_languages():
        return None
    return (f"'{lang}' is not an ISO 639-1 language code (en, de, fi, ...) nor one sacremoses "
            "knows")


def detokenizer_language_problem(lang):
    """--detokenize-lang: a language code, or 'none' for no detokenization."""
    if lang in (None, "", "none"):
        return None
    problem = language_code_problem(lang)
    return None if problem is None else f"--detokenize-lang: {problem}; use 'none' to skip detokenization"

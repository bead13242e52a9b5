"""A synthetic English-like corpus whose vocabulary has near-synonyms, generated offline.

SKD pulls probability mass towards words whose output embeddings lie near the target's; that
only helps when the embedding space has meaningful neighbours. Here every concept is spelled by
2-3 interchangeable synonyms (``big``/``large``/``huge``), drawn with unequal frequencies so
some are rare, inside a small grammar with topical preferences (cats chase balls, birds fly
over rivers, ...). A language model that learns the corpus can predict the concept but not the
synonym, which is the situation SKD's soft targets describe.

For translation, ``ParallelCorpusGenerator`` renders the same kind of sentence in English and
in a made-up target language with its own synonyms for every concept (chosen independently of
the source's synonym, so the target word is predictable only up to its synonym set), verbs at
the end of their clause, adjectives after nouns and postpositions.

    python -m fairseq_skd.data.synthetic OUT_DIR          # writes train/valid/test.txt
    python -m fairseq_skd.data.synthetic OUT_DIR --parallel   # train/valid/test.{en,xx}
"""

import argparse
import random
from pathlib import Path

# concept -> synonyms, most frequent first
ANIMALS = {
    "cat": ["cat", "kitty", "feline"],
    "dog": ["dog", "puppy", "hound"],
    "bird": ["bird", "sparrow", "finch"],
    "horse": ["horse", "pony", "stallion"],
}
PEOPLE = {
    "teacher": ["teacher", "instructor", "tutor"],
    "child": ["child", "kid", "youngster"],
    "doctor": ["doctor", "physician"],
    "friend": ["friend", "pal", "buddy"],
}
OBJECTS = {
    "ball": ["ball", "sphere"],
    "house": ["house", "home", "dwelling"],
    "car": ["car", "automobile", "vehicle"],
    "book": ["book", "novel", "volume"],
    "garden": ["garden", "yard"],
    "river": ["river", "stream", "creek"],
    "tree": ["tree", "oak"],
    "road": ["road", "street", "lane"],
}
ADJECTIVES = {
    "big": ["big", "large", "huge"],
    "small": ["small", "little", "tiny"],
    "happy": ["happy", "glad", "cheerful"],
    "old": ["old", "ancient", "aged"],
    "red": ["red", "crimson"],
    "quick": ["quick", "fast", "rapid"],
}
TRANSITIVE = {
    "see": ["sees", "watches", "observes"],
    "like": ["likes", "enjoys", "loves"],
    "find": ["finds", "discovers"],
    "carry": ["carries", "holds"],
    "chase": ["chases", "pursues"],
}
INTRANSITIVE = {
    "run": ["runs", "sprints", "dashes"],
    "sleep": ["sleeps", "rests", "naps"],
    "sing": ["sings", "hums"],
}
ADVERBS = {"quickly": ["quickly", "rapidly", "swiftly"], "slowly": ["slowly", "gradually"]}
PREPOSITIONS = {"near": ["near", "beside", "by"], "in": ["in", "inside"],
                "under": ["under", "beneath", "below"]}
DETERMINERS = ["the", "the", "the", "a", "my", "this"]
# Topical preferences: what each subject concept tends to act on and where.
PREFERRED_OBJECTS = {
    "cat": ["ball", "tree"], "dog": ["ball", "garden", "car"], "bird": ["tree", "river"],
    "horse": ["road", "river"], "teacher": ["book", "house"], "child": ["ball", "book", "garden"],
    "doctor": ["car", "house"], "friend": ["book", "car", "road"],
}
SYNONYM_WEIGHTS = [0.6, 0.3, 0.1]


class CorpusGenerator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def word(self, concepts, concept=None):
        concept = concept or self.rng.choice(sorted(concepts))
        synonyms = concepts[concept]
        return self.rng.choices(synonyms, weights=SYNONYM_WEIGHTS[: len(synonyms)])[0]

    def noun_phrase(self, concepts, concept=None, adjective_rate=0.4):
        words = [self.rng.choice(DETERMINERS)]
        if self.rng.random() < adjective_rate:
            words.append(self.word(ADJECTIVES))
        words.append(self.word(concepts, concept))
        return words

    def clause(self):
        subject_pool = ANIMALS if self.rng.random() < 0.5 else PEOPLE
        subject = self.rng.choice(sorted(subject_pool))
        words = self.noun_phrase(subject_pool, subject)
        if self.rng.random() < 0.65:
            words.append(self.word(TRANSITIVE))
            if self.rng.random() < 0.75:
                obj = self.rng.choice(PREFERRED_OBJECTS[subject])
                words += self.noun_phrase(OBJECTS, obj)
            else:
                words += self.noun_phrase(ANIMALS)
        else:
            words.append(self.word(INTRANSITIVE))
            if self.rng.random() < 0.5:
                words.append(self.word(ADVERBS))
        if self.rng.random() < 0.4:
            place = self.rng.choice(PREFERRED_OBJECTS[subject])
            words += [self.word(PREPOSITIONS)] + self.noun_phrase(OBJECTS, place, 0.2)
        return words

    def sentence(self):
        words = self.clause()
        if self.rng.random() < 0.3:
            words += ["and"] + self.clause()
        return " ".join(words)


TARGET_DETERMINERS = {"the": "lo", "a": "un", "my": "mi", "this": "ce"}
TARGET_FUNCTION_WORDS = {"and": "e"}
SYLLABLES = ["ka", "ti", "mo", "ru", "se", "na", "lo", "pi", "ve", "zu", "do", "fa", "gu",
             "he", "ji", "ko", "ma", "no", "po", "ri", "sa", "tu", "vi", "wa", "ye"]


def target_lexicon(seed=12345):
    """(table name, concept) -> target synonyms, as many as the source has; deterministic."""
    rng = random.Random(seed)
    used = set(TARGET_DETERMINERS.values()) | set(TARGET_FUNCTION_WORDS.values())
    lexicon = {}
    for name, table in CONCEPT_TABLES.items():
        for concept in sorted(table):
            words = []
            while len(words) < len(table[concept]):
                word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
                if word not in used:
                    used.add(word)
                    words.append(word)
            lexicon[name, concept] = words
    return lexicon


CONCEPT_TABLES = {"animal": ANIMALS, "person": PEOPLE, "object": OBJECTS, "adjective": ADJECTIVES,
                  "transitive": TRANSITIVE, "intransitive": INTRANSITIVE, "adverb": ADVERBS,
                  "preposition": PREPOSITIONS}


class ParallelCorpusGenerator:
    """(English, target) sentence pairs over the same concepts; see the module docstring."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.lexicon = target_lexicon()

    def pick(self, name, concept=None):
        """One concept of table ``name``: (source word, target word), synonyms drawn apart."""
        table = CONCEPT_TABLES[name]
        concept = concept or self.rng.choice(sorted(table))
        src = self.rng.choices(table[concept], weights=SYNONYM_WEIGHTS[: len(table[concept])])[0]
        targets = self.lexicon[name, concept]
        tgt = self.rng.choices(targets, weights=SYNONYM_WEIGHTS[: len(targets)])[0]
        return src, tgt

    def noun_phrase(self, name, concept=None, adjective_rate=0.4):
        det = self.rng.choice(DETERMINERS)
        adjective = self.pick("adjective") if self.rng.random() < adjective_rate else None
        noun = self.pick(name, concept)
        src = [det] + ([adjective[0]] if adjective else []) + [noun[0]]
        tgt = [TARGET_DETERMINERS[det], noun[1]] + ([adjective[1]] if adjective else [])
        return src, tgt

    def clause(self):
        name = "animal" if self.rng.random() < 0.5 else "person"
        subject = self.rng.choice(sorted(CONCEPT_TABLES[name]))
        src, tgt = self.noun_phrase(name, subject)
        if self.rng.random() < 0.65:
            verb = self.pick("transitive")
            if self.rng.random() < 0.75:
                obj = self.noun_phrase("object", self.rng.choice(PREFERRED_OBJECTS[subject]))
            else:
                obj = self.noun_phrase("animal")
            src, tgt = src + [verb[0]] + obj[0], tgt + obj[1] + [verb[1]]
        else:
            verb = self.pick("intransitive")
            adverb = self.pick("adverb") if self.rng.random() < 0.5 else None
            src = src + [verb[0]] + ([adverb[0]] if adverb else [])
            tgt = tgt + ([adverb[1]] if adverb else []) + [verb[1]]
        if self.rng.random() < 0.4:
            prep = self.pick("preposition")
            place = self.noun_phrase("object", self.rng.choice(PREFERRED_OBJECTS[subject]), 0.2)
            src, tgt = src + [prep[0]] + place[0], place[1] + [prep[1]] + tgt
        return src, tgt

    def sentence_pair(self):
        src, tgt = self.clause()
        if self.rng.random() < 0.3:
            src2, tgt2 = self.clause()
            src, tgt = src + ["and"] + src2, tgt + [TARGET_FUNCTION_WORDS["and"]] + tgt2
        return " ".join(src), " ".join(tgt)


def write_parallel_corpus(out_dir, n_train=4000, n_valid=300, n_test=300, seed=1,
                          src="en", tgt="xx"):
    """Write {train,valid,test}.{src,tgt} (one sentence per line, a line at a time: any size
    fits in memory) and return out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = ParallelCorpusGenerator(seed)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        with open(out_dir / f"{split}.{src}", "w") as fs, open(out_dir / f"{split}.{tgt}", "w") as ft:
            for _ in range(n):
                source, target = gen.sentence_pair()
                fs.write(source + "\n")
                ft.write(target + "\n")
    return out_dir


def write_lm_corpus(out_dir, n_train=8000, n_valid=500, n_test=500, seed=1):
    """Write train.txt / valid.txt / test.txt (one sentence per line, a line at a time) and
    return out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = CorpusGenerator(seed)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        with open(out_dir / f"{split}.txt", "w") as f:
            for _ in range(n):
                f.write(gen.sentence() + "\n")
    return out_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--valid", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parallel", action="store_true",
                        help="write an English -> made-up-language parallel corpus instead")
    parser.add_argument("--tgt", default="xx", help="with --parallel: the target files' suffix")
    args = parser.parse_args()
    if args.parallel:
        write_parallel_corpus(args.out_dir, args.train, args.valid, args.test, args.seed, tgt=args.tgt)
    else:
        write_lm_corpus(args.out_dir, args.train, args.valid, args.test, args.seed)


if __name__ == "__main__":
    main()

"""A synthetic English-like corpus whose vocabulary has near-synonyms, generated offline.

SKD pulls probability mass towards words whose output embeddings lie near the target's; that
only helps when the embedding space has meaningful neighbours. Here every concept is spelled by
2-3 interchangeable synonyms (``big``/``large``/``huge``), drawn with unequal frequencies so
some are rare, inside a small grammar with topical preferences (cats chase balls, birds fly
over rivers, ...). A language model that learns the corpus can predict the concept but not the
synonym, which is the situation SKD's soft targets describe.

    python -m fairseq_skd.data.synthetic OUT_DIR   # writes train/valid/test.txt
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


def write_lm_corpus(out_dir, n_train=8000, n_valid=500, n_test=500, seed=1):
    """Write train.txt / valid.txt / test.txt (one sentence per line) and return out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = CorpusGenerator(seed)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        lines = [gen.sentence() for _ in range(n)]
        (out_dir / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return out_dir


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--valid", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    write_lm_corpus(args.out_dir, args.train, args.valid, args.test, args.seed)


if __name__ == "__main__":
    main()

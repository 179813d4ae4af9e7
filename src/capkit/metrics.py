"""Caption metrics: corpus BLEU-1..4 (sacrebleu and COCO-caption), METEOR, ROUGE-L and CIDEr-D.

Published captioning tables (Show and Tell, Show Attend and Tell on Flickr8k) use the
COCO-caption toolkit (pycocoevalcap): its PTB tokenizer (Java) lowercases and drops punctuation,
then BLEU, METEOR (Java), ROUGE-L and CIDEr-D are computed against all references of each
image. We report those, and sacrebleu's corpus BLEU on the same references for a second,
widely reproducible BLEU. All scores are ×100.

Without Java the COCO numbers cannot be reproduced exactly: a Python tokenizer stands in for
the PTB tokenizer, METEOR is left out (None), and `notes` says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRIC_NAMES = {
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "coco_bleu1": "COCO BLEU-1",
    "coco_bleu2": "COCO BLEU-2",
    "coco_bleu3": "COCO BLEU-3",
    "coco_bleu4": "COCO BLEU-4",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider_d": "CIDEr-D",
}
JAVA_MISSING = (
    "Java not found: METEOR skipped and a Python tokenizer used instead of the PTB tokenizer, "
    "so the COCO numbers are close to, not exactly, the published protocol (install Java 8+ to fix)"
)


def java_available() -> bool:
    return shutil.which("java") is not None


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """COCO-caption tokenization: Stanford PTBTokenizer, lowercased, punctuation tokens removed.

    Runs the jar shipped with pycocoevalcap on a temporary file of our own (the library's wrapper
    writes into its install folder, which may be read-only).
    """
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    # Empty lines would be dropped by the tokenizer and shift every later line: send non-empty only.
    lines = [s.replace("\n", " ").strip() for s in sentences]
    keep = [i for i, s in enumerate(lines) if s]
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "sentences.txt"
        text_file.write_text("\n".join(lines[i] for i in keep) + "\n", encoding="utf-8")
        cmd = [
            "java",
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
        ]
        result = subprocess.run([*cmd, str(text_file)], capture_output=True, check=True)
    out_lines = result.stdout.decode("utf-8").split("\n")
    tokenized = [""] * len(lines)
    for i, line in zip(keep, out_lines, strict=False):
        tokenized[i] = " ".join(w for w in line.rstrip().split(" ") if w and w not in punctuation)
    return tokenized


_PUNCT = re.compile(r"[^\w\s']|_")


def simple_tokenize(sentences: Sequence[str]) -> list[str]:
    """Python stand-in for the PTB tokenizer: lowercase, punctuation removed, "dog's" → "dog 's"."""
    out = []
    for s in sentences:
        s = _PUNCT.sub(" ", s.lower()).replace("'s ", " 's ")
        out.append(" ".join(w for w in s.split() if w != "'"))
    return out


def compute_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    meteor: bool = True,
) -> dict[str, Any]:
    """Corpus metrics of one caption per image against that image's references (×100).

    Returns the keys of `METRIC_NAMES` (METEOR None when skipped) and `notes` (a list of strings).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from sacrebleu.metrics import BLEU

    if len(predictions) != len(references) or not predictions:
        raise ValueError(
            f"need one prediction per image and at least one image, got {len(predictions)} and {len(references)}"
        )
    notes: list[str] = []
    have_java = java_available()
    tokenize = ptb_tokenize if have_java else simple_tokenize
    if not have_java:
        notes.append(JAVA_MISSING)
    flat_refs = [r for refs in references for r in refs]
    tokens = tokenize([*predictions, *flat_refs])
    hyp_tok, ref_tok_flat = tokens[: len(predictions)], tokens[len(predictions) :]
    res: dict[int, list[str]] = {i: [h] for i, h in enumerate(hyp_tok)}
    gts: dict[int, list[str]] = {}
    offset = 0
    for i, refs in enumerate(references):
        gts[i] = ref_tok_flat[offset : offset + len(refs)]
        offset += len(refs)

    scores: dict[str, Any] = {}
    # sacrebleu: the same tokenized text (so both BLEUs see the same words); references are
    # streams, with None where an image has fewer references than the most.
    most = max(len(r) for r in gts.values())
    streams = [[gts[i][j] if j < len(gts[i]) else None for i in range(len(hyp_tok))] for j in range(most)]
    for n in range(1, 5):
        scores[f"bleu{n}"] = BLEU(max_ngram_order=n).corpus_score(hyp_tok, streams).score
    coco_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(1, 5):
        scores[f"coco_bleu{n}"] = 100 * coco_bleu[n - 1]
    scores["meteor"] = None
    if meteor and have_java:
        scores["meteor"] = 100 * _meteor(gts, res)
    elif meteor is False:
        notes.append("METEOR not computed (switched off)")
    scores["rouge_l"] = 100 * Rouge().compute_score(gts, res)[0]
    scores["cider_d"] = 100 * Cider().compute_score(gts, res)[0]
    return {key: (None if scores[key] is None else float(scores[key])) for key in METRIC_NAMES} | {
        "notes": notes
    }


_meteor_scorer = None


def _meteor(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """METEOR 1.5 through one Java process per Python process (its start-up takes ~20 s)."""
    global _meteor_scorer
    if _meteor_scorer is None:
        import atexit

        from pycocoevalcap.meteor.meteor import Meteor

        _meteor_scorer = Meteor()
        atexit.register(_close_meteor)
    return _meteor_scorer.compute_score(gts, res)[0]


def _close_meteor() -> None:
    global _meteor_scorer
    if _meteor_scorer is not None:
        # pycocoevalcap closes its Java process only in __del__; close it deterministically.
        with _meteor_scorer.lock:
            _meteor_scorer.meteor_p.stdin.close()
            _meteor_scorer.meteor_p.kill()
            _meteor_scorer.meteor_p.wait()
        _meteor_scorer = None

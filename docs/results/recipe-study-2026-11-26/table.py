"""The recipe-study table: each run's held-out loss, chrF (with a paired-bootstrap 95% interval of its
difference from the base model over the 110 questions), stop rate, prompt echo, training time."""
import json, os, random
import numpy as np
from sacrebleu.metrics import CHRF
S = os.environ.get("STUDY", "/tmp/study")  # the folder holding the runs and their eval JSONs
ROWS = [  # (label, key): the run folder is S/key, its scores S/key.json
 ("base model", "base"),
 ("default before the study (251 rows, q/v)", "default"),
 ("2 epochs", "epochs2"),
 ("all-linear targets", "alllinear"),
 ("NEFTune α 5", "neftune5"),
 ("600 rows", "rows600"),
 ("600 rows, lr 2e-3 †", "rows600_lr2e3"),
 ("600 rows, all-linear †", "rows600_alllinear"),
 ("600 rows, Persian system prompt", "rows600_system"),
 ("800 rows †", "rows800"),
 ("800 rows, all-linear (the default chosen first) †", "rows800_alllinear"),
 ("700 rows, all-linear (the default of the first round)", "rows700_alllinear"),
 # second day (run.sh's second part); † = trained beside another job, so "train s" is too high
 ("**650 rows, all-linear (the default)**", "rows650_alllinear"),
 ("650 rows, all-linear, seed 1 †", "rows650_alllinear_seed1"),
 ("650 rows, all-linear, Persian system prompt †", "rows650_alllinear_system"),
 ("3 epochs (251 rows, q/v) †", "epochs3"),
 ("all-linear, r 64, alpha 128 (251 rows) †", "r64_alllinear"),
 ("prompt tuning (251 rows; lr 3e-2, 20 virtual tokens) †", "prompt"),
 ("prompt tuning, soft prompt started from the system prompt's text †", "prompt_init"),
 ("freeze (251 rows; lr 5e-5) †", "freeze"),
 ("freeze, lr 2e-4 †", "freeze_lr2e4"),
]
RUN_FOLDERS = {"base": None, "default": "/tmp/defruns/lora"}  # no run folder / trained elsewhere
chrf = CHRF()
def stats(key):
    a = json.load(open(f"{S}/{key}.json"))["heldout_answers"]["run"]
    return np.array(chrf._extract_corpus_statistics([x["answer"] for x in a], [[x["reference"] for x in a]]), dtype=float)
def score(st, idx):
    return chrf._compute_score_from_stats(list(st[idx].sum(axis=0))).score
base_st = stats("base"); n = len(base_st)
rng = random.Random(0); samples = [[rng.randrange(n) for _ in range(n)] for _ in range(1000)]
base = json.load(open(f"{S}/base.json"))["run"]
print("| setting | held-out loss | vs base | chrF | vs base (95% interval) | stop rate | prompt echo | train s | steps |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for label, key in ROWS:
    if not os.path.exists(f"{S}/{key}.json"): continue
    r = json.load(open(f"{S}/{key}.json"))["run"]
    run = RUN_FOLDERS.get(key, f"{S}/{key}")
    m = json.load(open(f"{run}/metrics.json")) if run else {}
    st = stats(key)
    d = sorted(score(st, i) - score(base_st, i) for i in samples)
    ci = f"{r['chrf']-base['chrf']:+.1f} ({d[25]:+.1f} .. {d[974]:+.1f})" if key != "base" else ""
    print(f"| {label} | {r['loss']:.3f} | {r['loss']/base['loss']:.3f}× | {r['chrf']:.1f} | {ci} | {r['heldout_stop_rate']:.2f} | {r['heldout_prompt_echo']:.3f} | {m.get('wall_time_s', 0):.0f} | {m.get('steps', '')} |")

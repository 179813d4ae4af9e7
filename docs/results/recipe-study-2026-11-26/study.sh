# The recipe study of 2026-11-26 (docs/fa_adapt.md, "Answer quality: the recipe study"), as run:
# one run after another, each trained then scored on the 110 packaged held-out conversations.
set -e
cd "${STUDY:-/tmp/study}"
EV="--max-new-tokens 128 --batch-size 8"
SYS="تو یک دستیار مفید هستی. به پرسش کاربر به فارسی، مستقیم و دقیق پاسخ بده و پرسش را تکرار نکن."
adapt evaluate base $EV --output base.json
train() { name=$1; shift; method=$1; shift
  adapt finetune --method "$method" --output "$name" "$@" && adapt evaluate "$name" $EV --output "$name.json"; }
# flags as of the study (before it, the defaults were 251 rows and --target-modules q_proj,v_proj)
Q="--target-modules q_proj,v_proj"
train default lora --max-train-rows 251 $Q
train epochs2 lora --max-train-rows 251 $Q --epochs 2
train alllinear lora --max-train-rows 251 --target-modules all-linear
train neftune5 lora --max-train-rows 251 $Q --neftune-noise-alpha 5
train rows600 lora --max-train-rows 600 $Q
train rows600_lr2e3 lora --max-train-rows 600 $Q --lr 2e-3
train rows600_alllinear lora --max-train-rows 600 --target-modules all-linear
train rows600_system lora --max-train-rows 600 $Q --system-prompt "$SYS"
train rows800 lora --max-train-rows 800 $Q
train rows800_alllinear lora --max-train-rows 800 --target-modules all-linear
# the default since the idle timing (the 800-row command took 11 min 13 s, over the 10-minute budget):
train rows700_alllinear lora --max-train-rows 700 --target-modules all-linear
# not finished on 2026-11-26 (stopped at step 84 of 167 for lack of time):
train rows800_alllinear_system lora --max-train-rows 800 --target-modules all-linear --system-prompt "$SYS"
# second day: the 650-row candidate timed alone (the README's command with --max-train-rows 650), then the
# rows still owed, with one thread per job beside a capkit job (their "train s" are marked † in the table)
train rows650_alllinear lora --max-train-rows 650 --target-modules all-linear
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
train r64_alllinear lora --max-train-rows 251 --target-modules all-linear --lora-r 64 --lora-alpha 128
train epochs3 lora --max-train-rows 251 $Q --epochs 3
train prompt prompt --max-train-rows 251
train prompt_init prompt --max-train-rows 251 --prompt-init-text "$SYS"
train freeze freeze --max-train-rows 251
train freeze_lr2e4 freeze --max-train-rows 251 --lr 2e-4
train rows650_alllinear_system lora --max-train-rows 650 --target-modules all-linear --system-prompt "$SYS"
train rows650_alllinear_seed1 lora --max-train-rows 650 --target-modules all-linear --seed 1
python table.py > table.md

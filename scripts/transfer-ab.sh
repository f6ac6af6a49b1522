#!/usr/bin/env bash
# The A/B transfer measurement of docs/reproduction.md#transfer-learning, at the size one session
# of a 2-core CPU allows: CIFAR-10 split into A = {airplane, automobile, bird, cat, deer} and
# B = {dog, frog, horse, ship, truck}; the cifar10 preset trained on A's training split, then on B
# with N labelled training images a class: from scratch (the cifar10 recipe, the same epochs as
# fine-tuning), fine-tuned from A (all layers; conv1..conv5 frozen), and the linear probe of A's
# pool5, fc6 and fc7. Test accuracy on B's test split, centre crop. Finished runs are reused, so a
# killed script picks up where it stopped.
#
#   scripts/transfer-ab.sh CIFAR_JPEG_TREE OUT [PER_CLASS...]        (default: 100)
#   SEEDS=3 SOURCE_EPOCHS=30 EPOCHS=30 scripts/transfer-ab.sh /data/cifar10-jpeg results/transfer 100 1000
#
# CIFAR_JPEG_TREE holds train/<class>/*.jpg and test/<class>/*.jpg (the official archive works too,
# unpacked into that layout). Results: OUT/results.tsv (arm, per_class, seed, test accuracy, seconds).
set -euo pipefail
tree=${1:?usage: transfer-ab.sh CIFAR_JPEG_TREE OUT [PER_CLASS...]}
out=${2:?usage: transfer-ab.sh CIFAR_JPEG_TREE OUT [PER_CLASS...]}
shift 2
sizes=("${@:-100}")
seeds=${SEEDS:-3}
source_epochs=${SOURCE_EPOCHS:-30}
epochs=${EPOCHS:-30}
alexnet=${ALEXNET:-alexnet}
mkdir -p "$out"
results="$out/results.tsv"
[ -f "$results" ] || printf 'arm\tper_class\tseed\ttest_accuracy\tseconds\n' > "$results"

# the two halves as class-per-folder trees of links, then stores with a tenth of train held out
for half in A:airplane,automobile,bird,cat,deer B:dog,frog,horse,ship,truck; do
  name=${half%%:*}
  if [ ! -d "$out/data-$name/train" ]; then
    for split in train test; do
      mkdir -p "$out/tree-$name/$split"
      for cls in $(echo "${half#*:}" | tr , ' '); do
        ln -sfn "$(cd "$tree/$split/$cls" && pwd)" "$out/tree-$name/$split/$cls"
      done
    done
    $alexnet prepare "$out/tree-$name" "$out/data-$name" --val-fraction 0.1 --no-progress
  fi
done

record() {  # arm per_class seed accuracy seconds, once
  grep -q "^$1	$2	$3	" "$results" || printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$results"
}

accuracy() {  # the test split's top-1 accuracy of a run
  $alexnet evaluate --checkpoint "$1/last.pt" --data "$out/data-B" --split test --json \
    | python3 -c 'import json, sys; print(round(json.load(sys.stdin)["top1_accuracy"], 4))'
}

train_arm() {  # arm per_class seed extra args...
  local arm=$1 n=$2 seed=$3 run="$out/runs/$1-$2-seed$3"
  shift 3
  if [ ! -f "$run/done" ]; then
    local t0=$SECONDS
    if [ -f "$run/last.pt" ]; then
      $alexnet train --resume "$run" --no-progress --no-report
    else
      rm -rf "$run"
      # batches of at most a fifth of the subset (N images), so that every epoch takes 5 steps or more
      local batch=$(( n < 128 ? n : 128 ))
      $alexnet train "$@" --data "$out/data-B" --out "$run" --no-progress --no-report \
        "data.train_subset=$((5 * n))" "seed=$seed" "batch_size=$batch"
    fi
    echo $(( SECONDS - t0 )) > "$run/done"
  fi
  record "$arm" "$n" "$seed" "$(accuracy "$run")" "$(cat "$run/done")"
}

# the source: the cifar10 preset on A (its own val split watches it)
src="$out/runs/source-A"
if [ ! -f "$src/done" ]; then
  t0=$SECONDS
  if [ -f "$src/last.pt" ]; then $alexnet train --resume "$src" --no-progress --no-report
  else $alexnet train --preset cifar10 --data "$out/data-A" --out "$src" --no-progress --no-report "epochs=$source_epochs"; fi
  echo $(( SECONDS - t0 )) > "$src/done"
fi

for n in "${sizes[@]}"; do
  for seed in $(seq 0 $((seeds - 1))); do
    train_arm scratch "$n" "$seed" --preset cifar10 "epochs=$epochs"
    train_arm finetune "$n" "$seed" --preset finetune --init "$src" "epochs=$epochs"
    train_arm finetune-frozen-conv "$n" "$seed" --preset finetune --init "$src" --freeze conv5 "epochs=$epochs"
  done
  for layer in pool5 fc6 fc7; do
    if ! grep -q "^probe-$layer	$n	" "$results"; then
      t0=$SECONDS
      $alexnet probe "$src" --data "$out/data-B" --layer "$layer" --per-class "$n" --seeds "$seeds" \
        --cache "$out/features" --json --no-progress > "$out/probe-$layer-$n.json"
      python3 - "$out/probe-$layer-$n.json" "$layer" "$n" "$(( SECONDS - t0 ))" >> "$results" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for s in r["results"]:
    print(f"probe-{sys.argv[2]}\t{sys.argv[3]}\t{s['seed']}\t{round(s['test_accuracy'], 4)}\t{int(sys.argv[4]) // len(r['results'])}")
EOF
    fi
  done
done

python3 - "$results" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("| arm | images a class | test accuracy (mean +- sd) | seeds | seconds a run |")
print("|---|---|---|---|---|")
for key in dict.fromkeys((r["arm"], r["per_class"]) for r in rows):
    acc = [float(r["test_accuracy"]) for r in rows if (r["arm"], r["per_class"]) == key]
    sec = [float(r["seconds"]) for r in rows if (r["arm"], r["per_class"]) == key]
    sd = f" +- {100 * statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
    print(f"| {key[0]} | {key[1]} | {100 * statistics.mean(acc):.2f}%{sd} | {len(acc)} | {statistics.mean(sec):.0f} |")
EOF

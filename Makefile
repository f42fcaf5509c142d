# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs requirements, builds the sample data, trains Phase 1 briefly on it
#   make test   creates .venv, installs requirements, runs the CPU test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv sample-data clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

sample-data: $(STAMP)
	$(PY) tools/make_sample_data.py

# A short Phase-1 run on the sample data (CPU-friendly: about two minutes on 2 cores), its benchmark report with
# the frame-average baseline and one labelled image per test triplet (log/demo_phase1/images/), then one line that
# explains the run: data set and size, untrained -> trained PSNR, frame average.
# The demo is a throwaway experiment by design: it starts fresh every time, so it explicitly deletes its own
# previous checkpoints and logs (and nothing else) before training. Settings, as measured (README, "Two commands"):
# batch 2 makes twice the updates of batch 4 in the same time, which lifts the short run above frame averaging;
# --num_workers 0 because starting loader workers every epoch costs more than reading 128-pixel crops in-process.
demo: sample-data
	rm -f ckpt/demo_phase1_last.pt ckpt/demo_phase1_best.pt
	rm -rf log/demo_phase1
	$(PY) train.py --phase 1 --data_path data/sample_vimeo --exp_name demo_phase1 \
		--batch_size 2 --crop_size 128 --epochs 6 --eval_interval 2 \
		--warmup_steps 10 --lr 1e-3 --num_workers 0 --log_every 5
	$(PY) benchmark/Vimeo90K.py --model demo_phase1_best --path data/sample_vimeo --device cpu --no_progress \
		--out log/demo_phase1/benchmark.json --save_images log/demo_phase1/images
	$(PY) benchmark/demo_summary.py --report log/demo_phase1/benchmark.json --name "Big Buck Bunny sample"

clean-demo:
	rm -rf ckpt/demo_phase1_* log/demo_phase1
